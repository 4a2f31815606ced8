"""A self-contained demo: a producer and consumers sharing a SQLite job queue."""
