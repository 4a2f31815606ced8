"""Side-by-side benchmark of orch, supervisord and circus on one generated fleet.

Run `python -m bench` from the repository root; see `bench/README.md` for the options.
"""
