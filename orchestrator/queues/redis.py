"""Reliable consumer of a Redis list (`target = "orchestrator.queues.redis:QueueConsumer"`).

Producers `LPUSH` raw bytes onto `queue`. Each consumer instance moves one message at a time
with BLMOVE into its own processing list `{queue}:processing:{instance}`, runs the handler,
then LREMs it; nothing is ever only in a process's memory. Who recovers a message:
- the instance's replacement (same name) moves its processing list back at start-up, so a
  SIGKILLed consumer's message is handled again as soon as the replacement runs;
- for an instance that will not come back (removed by a reload), a lease key
  `{queue}:consumer:{instance}` kept alive by a heartbeat thread expires `lease` seconds after
  the process dies, and any live consumer's once-a-second pass (one Lua script, atomic, so
  two reclaimers never duplicate) moves the orphaned list back.
Failed attempts are counted in the hash `{queue}:attempts` by the message's SHA-1 (handler
errors and deaths while handling both count); retries wait in the ZSET `{queue}:delayed`
(scored by due time) so they never block the messages behind them; after `max_attempts`
the message goes to `dead_letter` as a JSON record with the error, attempts and instance.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from .base import (ConsumerConfigError, Delivery, Heartbeat, QueueWorker, dead_letter_record, positive_float,
                   retry_delay)

try:  # optional extra: pip install 'orch-fleet[redis]'
    import redis as redis_py
    from redis.exceptions import (ConnectionError as _ConnectionError, ResponseError as _ResponseError,
                                  TimeoutError as _TimeoutError)
    SERVER_ERRORS: tuple[type[BaseException], ...] = (_ConnectionError, _TimeoutError)
    # The server answered but refused the command (WRONGTYPE, a script error, OOM): retrying
    # the same command will not help, unlike SERVER_ERRORS.
    REFUSED: tuple[type[BaseException], ...] = (_ResponseError,)
except ImportError:  # pragma: no cover - exercised only without the extra
    redis_py = None
    SERVER_ERRORS = (OSError,)
    REFUSED = ()

TOKEN = 16  # hex characters prefixed to a delayed message so identical bodies stay distinct

# Reclaim orphaned processing lists (lease expired) and move due retries back to the queue.
# KEYS: queue, consumers set, delayed zset. ARGV: now (s), own instance name.
RECLAIM = """
local moved = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if name ~= ARGV[2] and redis.call('EXISTS', KEYS[1] .. ':consumer:' .. name) == 0 then
    local plist = KEYS[1] .. ':processing:' .. name
    while redis.call('LMOVE', plist, KEYS[1], 'RIGHT', 'RIGHT') do moved = moved + 1 end
    redis.call('SREM', KEYS[2], name)
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, m in ipairs(due) do
  redis.call('RPUSH', KEYS[1], string.sub(m, 17))
  redis.call('ZREM', KEYS[3], m)
end
return {moved, #due}
"""

# Acknowledge a message and, in the same round trip, take the next one if any is ready
# (the consumer falls back to a blocking BLMOVE when none is). KEYS: processing, attempts,
# queue. ARGV: body, digest, "1" to take the next one.
ACK = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[3] == '1' then return redis.call('LMOVE', KEYS[3], KEYS[1], 'RIGHT', 'LEFT') end
return false
"""


def keys(queue: str) -> dict[str, str]:
    """The Redis keys a list queue uses besides itself (also read by `orch queues`)."""
    return {"consumers": f"{queue}:consumers", "delayed": f"{queue}:delayed",
            "attempts": f"{queue}:attempts", "processing": f"{queue}:processing:",
            "lease": f"{queue}:consumer:"}


def open_redis(url: str, block: float = 1.0, single: bool = False) -> Any:
    """A client for `url` with no hidden retries (the consumer loop owns reconnecting);
    `single`: one dedicated connection, no pool round trip per command (the hot loop)."""
    if redis_py is None:
        raise ConsumerConfigError("the Redis consumers need redis-py: pip install 'orch-fleet[redis]'")
    from redis.retry import Retry
    from redis.backoff import NoBackoff
    try:
        return redis_py.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=block + 10,
                                       retry=Retry(NoBackoff(), 0), health_check_interval=0,
                                       single_connection_client=single)
    except ValueError as exc:
        raise ConsumerConfigError(f"invalid url {url!r}: {exc}") from None


def glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern (queue names may hold * ? [ ])."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def digest(body: bytes) -> str:
    """The attempts-hash field of a message (raw bytes carry no id of their own)."""
    return hashlib.sha1(body).hexdigest()


class QueueConsumer(QueueWorker):
    """Consume a Redis list reliably; kwargs: url, queue, handler, max_attempts, dead_letter."""

    server_errors = SERVER_ERRORS

    def configure(self, kwargs: dict[str, Any]) -> None:
        super().configure(kwargs)
        self.queue = str(kwargs.get("queue") or "")
        if not self.queue:
            raise ConsumerConfigError("kwargs.queue is required")
        self.dead_letter = str(kwargs.get("dead_letter") or f"{self.queue}:dead")
        self.lease = positive_float(kwargs, "lease", 5.0)
        if self.lease < 2 * self.housekeeping_interval:
            raise ConsumerConfigError(f"kwargs.lease must be >= {2 * self.housekeeping_interval:g}s")
        k = keys(self.queue)
        self.consumers, self.delayed, self.attempts = k["consumers"], k["delayed"], k["attempts"]
        self.processing = k["processing"] + self.name
        self.lease_key = k["lease"] + self.name

    def describe(self) -> str:
        return f"list {self.queue!r}"

    def connect(self) -> None:
        self.redis = open_redis(self.url, self.block, single=True)
        self.lease_client = open_redis(self.url)  # the heartbeat thread's own connection
        self.redis.ping()
        self.reclaim = self.redis.register_script(RECLAIM)
        self.ack_script = self.redis.register_script(ACK)
        self.next: bytes | None = None  # taken by the last ack, already in our processing list
        self.beat()
        recovered = self.recover(count_attempts=True)
        if recovered:
            self.log.info("put back %d message(s) a previous %s was handling", recovered, self.name)
        self.heartbeat = Heartbeat(self.beat, self.lease / 5)
        self.heartbeat.start()

    def beat(self) -> None:
        """Refresh this instance's lease (pid as the value, for `orch queues`)."""
        pipe = self.lease_client.pipeline(transaction=False)
        pipe.set(self.lease_key, os.getpid(), px=int(self.lease * 1000))
        pipe.sadd(self.consumers, self.name)  # again: a reclaimer drops names whose lease lapsed
        pipe.execute()

    def recover(self, count_attempts: bool) -> int:
        """Move what this instance's processing list holds back to the head of the queue."""
        moved = 0
        while (body := self.redis.lindex(self.processing, -1)) is not None:
            if count_attempts:  # it was in hand when the previous incarnation died
                tries = self.redis.hincrby(self.attempts, digest(body), 1)
                if tries >= self.death_limit(body):
                    self._bury(body, tries, "the consumer died while handling it (killed: "
                                            "timeout, memory limit, or a crash)", tail=True)
                    continue
            if self.redis.lmove(self.processing, self.queue, "RIGHT", "RIGHT") is not None:
                moved += 1
        return moved

    def fetch(self) -> Delivery | None:
        body, self.next = self.next, None
        if body is None:
            body = self.redis.blmove(self.queue, self.processing, self.block, "RIGHT", "LEFT")
        return None if body is None else Delivery(body)

    def ack(self, delivery: Delivery) -> None:
        # One round trip per message when the queue is busy: the ack also takes the next
        # message into our processing list (never while stopping, so a stop takes none).
        take_next = "0" if self.stopping or self._down_since else "1"  # after an outage: re-sync first
        self.next = self.ack_script(keys=[self.processing, self.attempts, self.queue],
                                    args=[delivery.body, digest(delivery.body), take_next])

    def fail(self, delivery: Delivery, error: str) -> None:
        tries = self.redis.hincrby(self.attempts, digest(delivery.body), 1)
        if tries >= self.max_attempts:
            self._bury(delivery.body, tries, error, tail=False)
            self.log.warning("dead-lettered a message after %d attempts: %s", tries, error)
            return
        due = time.time() + retry_delay(tries, self.retry_initial, self.retry_max)
        member = os.urandom(TOKEN // 2).hex().encode() + delivery.body
        pipe = self.redis.pipeline(transaction=True)  # MULTI: out of processing and into delayed, or neither
        pipe.lrem(self.processing, 1, delivery.body)
        pipe.zadd(self.delayed, {member: due})
        pipe.execute()

    def _bury(self, body: bytes, tries: int, error: str, tail: bool) -> None:
        record = dead_letter_record(body, queue=self.queue, error=error, attempts=tries,
                                    instance=self.name, now=time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(self.processing, -1 if tail else 1, body)
        pipe.lpush(self.dead_letter, record)
        pipe.hdel(self.attempts, digest(body))
        pipe.execute()

    def release(self, delivery: Delivery) -> None:
        self.redis.lmove(self.processing, self.queue, "LEFT", "RIGHT")

    def housekeeping(self) -> None:
        self.reclaim(keys=[self.queue, self.consumers, self.delayed], args=[time.time(), self.name])

    def reconnected(self) -> None:
        # A BLMOVE whose reply was lost with the connection may have moved a message into our
        # processing list that we never saw; we hold nothing now, so put everything back.
        self.next = None
        self.beat()
        self.recover(count_attempts=False)

    def close(self) -> None:
        self.heartbeat.stop()
        self.recover(count_attempts=False)  # empty unless a step failed; never strand a message
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.consumers, self.name)
        pipe.delete(self.lease_key)
        pipe.execute()


# Move one dead-letter record back only if it is still the oldest (two `retry`s never duplicate).
# KEYS: dead letter list, queue, attempts hash. ARGV: the record, its original bytes, its digest.
RETRY = """
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[1] then return 0 end
redis.call('RPOP', KEYS[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
return 1
"""


def inspect_queue(url: str, queue: str, dead_letter: str) -> dict[str, Any]:
    """Ready, retrying, in flight per instance, dead and live consumers of one list queue."""
    client = open_redis(url)
    k = keys(queue)
    processing = list(client.scan_iter(match=glob_escape(k["processing"]) + "*", count=1000))
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.zcard(k["delayed"])
    pipe.llen(dead_letter)
    for key in processing:
        pipe.llen(key)
    ready, retrying, dead, *held = pipe.execute()
    prefix = len(k["processing"])
    in_flight = {key.decode()[prefix:]: n for key, n in zip(processing, held) if n}
    consumers = sum(1 for _ in client.scan_iter(match=glob_escape(k["lease"]) + "*", count=1000))
    return {"ready": ready, "retrying": retrying, "in_flight": in_flight, "dead": dead,
            "consumers": consumers}


def retry_queue(url: str, queue: str, dead_letter: str) -> int:
    """Move every dead-lettered message's original bytes back onto the queue; returns how many."""
    from .base import original_bytes
    client = open_redis(url)
    script = client.register_script(RETRY)
    moved = 0
    while (record := client.lindex(dead_letter, -1)) is not None:
        body = original_bytes(record)
        moved += script(keys=[dead_letter, queue, keys(queue)["attempts"]],
                        args=[record, body, digest(body)])
    return moved
