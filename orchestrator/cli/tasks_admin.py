"""What `orch queues` does with task queues: count them, and move dead tasks back (clearing
their dead result, so `result()` waits for the new run instead of raising the old error)."""

from __future__ import annotations

from typing import Any

from ..queues.base import original_bytes
from ..queues.redis import digest, inspect_queue, keys, open_redis
from ..tasks.envelope import job_id_of
from ..tasks.store import QUEUE_PREFIX, result_keys

# Move the oldest dead record back only if it still is the oldest (two retries never
# duplicate), and drop the job's dead result. KEYS: dead list, queue, attempts, result.
# ARGV: the record, its original bytes, their digest.
RETRY = """
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[1] then return 0 end
redis.call('RPOP', KEYS[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
local cur = redis.call('GET', KEYS[4])
if cur and not cjson.decode(cur)['ok'] then redis.call('DEL', KEYS[4]) end
return 1
"""


def _beanstalk(url: str) -> bool:
    return url.startswith(("beanstalk://", "beanstalkd://"))


def inspect_tasks(url: str, queue: str) -> dict[str, Any]:
    """Ready, delayed (retries and `delay=` puts), in flight, dead and consumers of a task queue."""
    if _beanstalk(url):
        from ..queues.beanstalkd import inspect_tube
        return inspect_tube(url, queue)
    return inspect_queue(url, QUEUE_PREFIX + queue, QUEUE_PREFIX + queue + ":dead")


def retry_tasks(url: str, queue: str, result_url: str) -> int:
    """Re-queue every dead task of `queue`; returns how many."""
    if _beanstalk(url):
        return _kick_tasks(url, queue, result_url)
    key = QUEUE_PREFIX + queue
    client = open_redis(url)
    script = client.register_script(RETRY)
    moved = 0
    while (record := client.lindex(key + ":dead", -1)) is not None:
        body = original_bytes(record)
        job_id = job_id_of(body) or "-"
        moved += script(keys=[key + ":dead", key, keys(key)["attempts"], result_keys(job_id)[0]],
                        args=[record, body, digest(body)])
    return moved


def _kick_tasks(url: str, tube: str, result_url: str) -> int:
    """Kick buried task jobs one by one, dropping each one's dead result first."""
    import greenstalk
    from ..queues.beanstalkd import open_client
    results = open_redis(result_url) if result_url else None
    client = open_client(url, tube, 5)
    kicked: set[int] = set()
    try:
        while True:
            try:
                job = client.peek_buried()
            except greenstalk.NotFoundError:
                return len(kicked)
            if job.id in kicked:  # a worker took it and buried it again: kick each job once
                return len(kicked)
            job_id = job_id_of(job.body)
            if results is not None and job_id is not None:
                results.eval(RETRY_DEAD_ONLY, 1, result_keys(job_id)[0])
            client.kick_job(job)
            kicked.add(job.id)
    finally:
        client.close()


RETRY_DEAD_ONLY = """
local cur = redis.call('GET', KEYS[1])
if cur and not cjson.decode(cur)['ok'] then redis.call('DEL', KEYS[1]) end
return 0
"""
