"""orch: a declarative, config-driven process orchestrator."""

__version__ = "0.1.0"
