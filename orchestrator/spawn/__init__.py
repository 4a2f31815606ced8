"""Spawning: the spawner (single-threaded but for its parallel posix_spawn runs), zygotes,
child set-up, orphans and the pidfile."""
