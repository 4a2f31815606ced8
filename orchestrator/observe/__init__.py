"""Observation: instance logs, /proc sampling, metrics and the status table."""
