"""Reliable consumer of a Redis stream through a consumer group
(`target = "orchestrator.queues.redis_stream:StreamConsumer"`).

The consumer name in the group is the instance name, so the entries a killed instance had
read but not acknowledged (its pending entries) are read again by its replacement at
start-up (XREADGROUP from id 0). An instance that will not come back (removed by a reload)
lets its lease `{stream}:consumer:{instance}` expire; a live consumer's once-a-second Lua pass
then XCLAIMs its pending entries (atomic: two reclaimers never both get one). A busy live
consumer's lease is kept alive by a heartbeat thread, so its entries are never taken.
Attempts are the group's delivery count (XPENDING): a failed entry stays pending and is
claimed again when its backoff (ZSET `{stream}:delayed:{group}`) is due; after
`max_attempts` it is acknowledged and a JSON record goes to the `dead_letter` list.
The handler gets the entry's `field` value (default "data"), or its fields as JSON.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .base import (ConsumerConfigError, Delivery, Heartbeat, QueueWorker, dead_letter_record, positive_float,
                   retry_delay)
from .redis import SERVER_ERRORS, glob_escape, open_redis

# Claim the pending entries of consumers whose lease expired; forget consumers with none.
# KEYS: stream, lease prefix. ARGV: group, own name. Returns XCLAIMed [id, fields] entries.
RECLAIM = """
local claimed = {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
  if c['name'] ~= ARGV[2] and redis.call('EXISTS', KEYS[2] .. c['name']) == 0 then
    if c['pending'] > 0 then
      local ids = {}
      for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100, c['name'])) do
        table.insert(ids, p[1])
      end
      for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))) do
        table.insert(claimed, e)
      end
    else
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    end
  end
end
return claimed
"""

# Move one dead-letter record back as a new entry, only if it is still the oldest.
RETRY = """
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[1] then return 0 end
redis.call('RPOP', KEYS[1])
redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
return 1
"""


def stream_keys(stream: str, group: str) -> dict[str, str]:
    """The Redis keys a stream consumer uses besides the stream (also read by `orch queues`)."""
    return {"lease": f"{stream}:consumer:", "delayed": f"{stream}:delayed:{group}"}


class StreamConsumer(QueueWorker):
    """Consume a Redis stream via a consumer group; kwargs: url, stream, group, handler, ..."""

    server_errors = SERVER_ERRORS

    def configure(self, kwargs: dict[str, Any]) -> None:
        super().configure(kwargs)
        self.stream = str(kwargs.get("stream") or "")
        if not self.stream:
            raise ConsumerConfigError("kwargs.stream is required")
        self.group = str(kwargs.get("group") or "orch")
        self.field = str(kwargs.get("field") or "data")
        self.dead_letter = str(kwargs.get("dead_letter") or f"{self.stream}:dead")
        self.lease = positive_float(kwargs, "lease", 5.0)
        if self.lease < 2 * self.housekeeping_interval:
            raise ConsumerConfigError(f"kwargs.lease must be >= {2 * self.housekeeping_interval:g}s")
        k = stream_keys(self.stream, self.group)
        self.lease_key, self.lease_prefix, self.delayed = k["lease"] + self.name, k["lease"], k["delayed"]
        self.backlog: list[tuple[bytes, dict[bytes, bytes] | None]] = []

    def describe(self) -> str:
        return f"stream {self.stream!r} as {self.name!r} in group {self.group!r}"

    def connect(self) -> None:
        self.redis = open_redis(self.url, self.block)
        self.redis.ping()
        self.reclaim = self.redis.register_script(RECLAIM)
        self.beat()
        self._ensure_group()
        self._read_own_pending()
        if self.backlog:
            self.log.info("re-reading %d entr(ies) a previous %s had not acknowledged",
                          len(self.backlog), self.name)
        self.heartbeat = Heartbeat(self.beat, self.lease / 5)
        self.heartbeat.start()

    def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_own_pending(self) -> None:
        reply = self.redis.xreadgroup(self.group, self.name, {self.stream: "0"}, count=1000)
        for _, entries in reply or []:
            self.backlog.extend(entries)

    def beat(self) -> None:
        """Refresh this instance's lease."""
        self.redis.set(self.lease_key, os.getpid(), px=int(self.lease * 1000))

    def fetch(self) -> Delivery | None:
        if not self.backlog:
            reply = self.redis.xreadgroup(self.group, self.name, {self.stream: ">"}, count=1,
                                          block=int(self.block * 1000))
            for _, entries in reply or []:
                self.backlog.extend(entries)
        while self.backlog:
            entry_id, fields = self.backlog.pop(0)
            if not fields:  # trimmed or deleted while pending: nothing left to handle
                self.redis.xack(self.stream, self.group, entry_id)
                continue
            return Delivery(self._body(fields), entry_id)
        return None

    def _body(self, fields: dict[bytes, bytes]) -> bytes:
        value = fields.get(self.field.encode())
        if value is not None:
            return value
        return json.dumps({k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                           for k, v in fields.items()}, sort_keys=True).encode()

    def ack(self, delivery: Delivery) -> None:
        self.redis.xack(self.stream, self.group, delivery.ref)

    def fail(self, delivery: Delivery, error: str) -> None:
        pending = self.redis.xpending_range(self.stream, self.group, delivery.ref, delivery.ref, 1)
        if not pending or pending[0]["consumer"].decode() != self.name:
            return  # acknowledged or claimed elsewhere meanwhile (our lease lapsed): theirs now
        tries = pending[0]["times_delivered"]
        if tries >= self.max_attempts:
            record = json.loads(dead_letter_record(delivery.body, queue=self.stream, error=error,
                                                   attempts=tries, instance=self.name, now=time.time()))
            record["id"] = delivery.ref.decode()
            pipe = self.redis.pipeline(transaction=True)
            pipe.lpush(self.dead_letter, json.dumps(record, sort_keys=True))
            pipe.xack(self.stream, self.group, delivery.ref)
            pipe.zrem(self.delayed, delivery.ref)
            pipe.execute()
            self.log.warning("dead-lettered entry %s after %d attempts: %s", record["id"], tries, error)
            return
        due = time.time() + retry_delay(tries, self.retry_initial, self.retry_max)
        self.redis.zadd(self.delayed, {delivery.ref: due})  # stays pending (ours) meanwhile

    def release(self, delivery: Delivery) -> None:
        pass  # still pending for this instance: its replacement re-reads it at start-up

    def housekeeping(self) -> None:
        for entry_id, fields in self.reclaim(keys=[self.stream, self.lease_prefix],
                                             args=[self.group, self.name]):
            self.backlog.append((entry_id, _pairs(fields)))
        due = self.redis.zrangebyscore(self.delayed, "-inf", time.time(), start=0, num=100)
        if due:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in due:
                pipe.zrem(self.delayed, entry_id)
            mine = [entry_id for entry_id, removed in zip(due, pipe.execute()) if removed]  # one winner each
            if mine:
                self.backlog.extend(self.redis.xclaim(self.stream, self.group, self.name, 0, mine))

    def reconnected(self) -> None:
        self.beat()
        self._ensure_group()
        self.backlog.clear()
        self._read_own_pending()  # a reply lost with the connection left entries pending for us

    def close(self) -> None:
        self.heartbeat.stop()
        self.redis.delete(self.lease_key)


def _pairs(fields: Any) -> dict[bytes, bytes] | None:
    """Lua returns an entry's fields as a flat list; make the dict redis-py would."""
    if not fields:
        return None
    return {fields[i]: fields[i + 1] for i in range(0, len(fields), 2)}


def inspect_stream(url: str, stream: str, group: str, dead_letter: str) -> dict[str, Any]:
    """Ready (not yet delivered), retrying, in flight per consumer, dead and live consumers."""
    client = open_redis(url)
    k = stream_keys(stream, group)
    groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)} if client.exists(stream) else {}
    info = groups.get(group)
    consumers = client.xinfo_consumers(stream, group) if info else []
    delayed = client.zcard(k["delayed"])
    if info is None:  # no group yet: every entry is still to be read
        ready = client.xlen(stream) if client.exists(stream) else 0
    else:
        ready = info.get("lag") or 0  # entries never delivered to the group (Redis >= 7)
    in_flight = {c["name"].decode(): c["pending"] for c in consumers if c["pending"]}
    leases = sum(1 for _ in client.scan_iter(match=glob_escape(k["lease"]) + "*", count=1000))
    return {"ready": ready, "retrying": delayed, "in_flight": in_flight,
            "dead": client.llen(dead_letter), "consumers": leases}


def retry_stream(url: str, stream: str, dead_letter: str, field: str = "data") -> int:
    """XADD every dead-lettered message back onto the stream as a new entry; returns how many."""
    from .base import original_bytes
    client = open_redis(url)
    script = client.register_script(RETRY)
    moved = 0
    while (record := client.lindex(dead_letter, -1)) is not None:
        moved += script(keys=[dead_letter, stream], args=[record, field, original_bytes(record)])
    return moved
