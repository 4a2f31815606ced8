"""Exporters: one module per target format (specs in, files out)."""
