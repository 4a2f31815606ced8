"""Supervision: instances, states, backoff, rollouts and limits, run by the master's loop."""
