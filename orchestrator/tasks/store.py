"""The result store (Redis): key names, the first-writer-wins store scripts, the wait a
producer does in `Job.result()`, and the producer's JSON check of arguments (what travels
on the queue, and how a worker checks it, is tasks/envelope.py).

A result record is JSON: `{"ok": true, "value": ...}` or, for a task that was dead-lettered,
`{"ok": false, "error": ..., "traceback": ..., "attempts": ...}`. A success is written once
and never replaced (a task that ran twice keeps its first result); a dead record may be
replaced by a later success (after `orch queues retry`). Next to each result a short list
`…:ready` gets one element, so a waiter blocks on BLPOP instead of polling.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..queues.safe_json import too_deep
from .envelope import MAX_DEPTH

RESULT_PREFIX = "tasks:result:"
QUEUE_PREFIX = "tasks:"          # a Redis task queue NAME lives in the list `tasks:NAME`
REGISTRY: dict[str, Any] = {}   # task name -> Task, filled by @queue.task as modules import
WAKE_CAP = 1.0                   # longest single BLPOP: a lost wake-up costs at most this

# Store a record unless a success is already there. KEYS: result, ready. ARGV: record, ttl ms.
STORE = """
local cur = redis.call('GET', KEYS[1])
local stored = 0
if (not cur) or (not cjson.decode(cur)['ok']) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  stored = 1
end
"""

# The store plus the list consumer's ack, atomically: a worker killed before this script ran
# leaves the task to run again; after it, both the result and the ack are done.
# KEYS: result, ready, processing, attempts, queue. ARGV: record, ttl ms, body, digest, take next.
STORE_AND_ACK = STORE + """
redis.call('LREM', KEYS[3], 1, ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[4])
local nxt = false
if ARGV[5] == '1' then nxt = redis.call('LMOVE', KEYS[5], KEYS[3], 'RIGHT', 'LEFT') end
return {stored, nxt}
"""

STORE_ONLY = STORE + "\nreturn stored\n"


class TaskFailed(Exception):
    """The task raised on every attempt and was dead-lettered; the message carries its traceback."""

    def __init__(self, task: str, job_id: str, error: str, tb: str):
        super().__init__(f"task {task} (job {job_id}) failed: {error}\n{tb}".rstrip())
        self.task, self.job_id, self.error, self.traceback = task, job_id, error, tb


def result_keys(job_id: str) -> list[str]:
    """[result key, ready-list key] of one job."""
    return [RESULT_PREFIX + job_id, RESULT_PREFIX + job_id + ":ready"]


def check_json(task: str, kwargs: dict[str, Any]) -> None:
    """Raise TypeError naming the first argument JSON cannot carry faithfully."""
    for key, value in kwargs.items():
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"{task}.put(): argument {key!r} cannot travel as JSON "
                            f"({type(value).__name__}): {exc}") from None
        if too_deep(text.encode(), MAX_DEPTH - 2):  # inside the envelope and its kwargs object
            raise TypeError(f"{task}.put(): argument {key!r} nests deeper than {MAX_DEPTH - 2} "
                            f"levels; workers refuse deeper envelopes")
        if json.loads(text) != value:  # tuples, non-str dict keys: would arrive changed
            raise TypeError(f"{task}.put(): argument {key!r} would not arrive unchanged as JSON "
                            f"({type(value).__name__}); pass lists, dicts with str keys, "
                            f"str, int, float, bool or None")


def success_record(value: Any) -> str:
    """The stored JSON of a task's return value; TypeError when JSON cannot carry it."""
    try:
        return json.dumps({"ok": True, "value": value}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the task's return value cannot travel as JSON: {exc}") from None


def dead_record(error: str, attempts: int) -> str:
    """The stored JSON of a dead-lettered task (error is `Type: message` + traceback)."""
    first, _, rest = error.partition("\n")
    return json.dumps({"ok": False, "error": first, "traceback": rest, "attempts": attempts})


def wait_result(client: Any, task: str, job_id: str, timeout: float | None) -> Any:
    """Block until the job's record exists; return its value or raise TaskFailed / TimeoutError."""
    key, ready = result_keys(job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        raw = client.get(key)
        if raw is not None:
            return _outcome(task, job_id, raw)
        left = WAKE_CAP if deadline is None else min(WAKE_CAP, deadline - time.monotonic())
        if left <= 0:
            raise TimeoutError(f"task {task} (job {job_id}): no result within {timeout:g}s")
        client.blpop([ready], timeout=max(0.01, left))


def _outcome(task: str, job_id: str, raw: bytes) -> Any:
    record = json.loads(raw)
    if record.get("ok"):
        return record.get("value")
    raise TaskFailed(task, job_id, record.get("error", "?"), record.get("traceback", ""))
