"""Configuration: keys and their parsers, loading workers.toml, located problems."""
