"""Spawning: the single-threaded spawner, zygotes, child set-up, orphans and the pidfile."""
