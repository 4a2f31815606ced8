"""A tiny job queue in one SQLite file, safe for many processes (WAL, atomic claim)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("""CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY, queue TEXT NOT NULL, payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'new', worker TEXT, created REAL, done REAL)""")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_queue_state ON jobs (queue, state)")
    return db


def put(db: sqlite3.Connection, queue: str, payload: str) -> None:
    db.execute("INSERT INTO jobs (queue, payload, created) VALUES (?, ?, ?)", (queue, payload, time.time()))


def claim(db: sqlite3.Connection, queue: str, worker: str) -> tuple[int, str] | None:
    """Atomically take the oldest new job of a queue."""
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT id, payload FROM jobs WHERE queue = ? AND state = 'new' ORDER BY id LIMIT 1",
                         (queue,)).fetchone()
        if row:
            db.execute("UPDATE jobs SET state = 'taken', worker = ? WHERE id = ?", (worker, row[0]))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return row


def finish(db: sqlite3.Connection, job_id: int) -> None:
    db.execute("UPDATE jobs SET state = 'done', done = ? WHERE id = ?", (time.time(), job_id))
