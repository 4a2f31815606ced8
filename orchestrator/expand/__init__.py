"""Expansion: templates x matrices rendered into frozen ProcessSpecs (pure)."""
