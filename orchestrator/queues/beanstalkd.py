"""Reliable consumer of a beanstalkd tube (`target = "orchestrator.queues.beanstalkd:QueueConsumer"`).

beanstalkd does the bookkeeping itself: a reserved job belongs to the connection that
reserved it. When a consumer is SIGKILLed its socket closes and beanstalkd puts its reserved
job back to ready at once; only when the connection does not close (host or network gone)
does the job wait for its TTR (set by the producer at `put`; keep it modest, e.g. 30-120 s).
While the handler runs, a heartbeat thread `touch`es the job every `touch_every` seconds, so
a handler longer than the TTR keeps its job. Success deletes the job; failure releases it
with a delay (doubling from `retry_delay`, whole seconds); after `max_attempts` reserves
(stats-job `reserves`, which also counts deaths while handling) the job is buried, and
`orch queues retry TUBE` kicks it back.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from .base import ConsumerConfigError, Delivery, Heartbeat, QueueWorker, positive_float, retry_delay

try:  # optional extra: pip install 'orch-fleet[beanstalkd]'
    import greenstalk
except ImportError:  # pragma: no cover - exercised only without the extra
    greenstalk = None


def address(url: str) -> tuple[str, int]:
    """(host, port) from `beanstalk://HOST[:PORT]` (port 11300 by default)."""
    parts = urlsplit(url)
    if parts.scheme not in ("beanstalk", "beanstalkd") or not parts.hostname:
        raise ConsumerConfigError(f"invalid url {url!r}: expected beanstalk://HOST[:PORT]")
    try:
        return parts.hostname, parts.port or 11300
    except ValueError as exc:
        raise ConsumerConfigError(f"invalid url {url!r}: {exc}") from None


def open_client(url: str, tube: str, timeout: float) -> Any:
    """A greenstalk client (bytes bodies) using and watching `tube`, with socket timeouts."""
    if greenstalk is None:
        raise ConsumerConfigError(
            "the beanstalkd consumer needs greenstalk: pip install 'orch-fleet[beanstalkd]'")
    sock = socket.create_connection(address(url), timeout=2)
    sock.settimeout(timeout)
    return greenstalk.Client(sock, encoding=None, use=tube, watch=tube)


class QueueConsumer(QueueWorker):
    """Consume a beanstalkd tube; kwargs: url, tube, handler, max_attempts, retry_delay."""

    server_errors = (OSError,)

    def configure(self, kwargs: dict[str, Any]) -> None:
        super().configure(kwargs)
        address(self.url)
        self.tube = str(kwargs.get("tube") or "")
        if not self.tube:
            raise ConsumerConfigError("kwargs.tube is required")
        self.touch_every = positive_float(kwargs, "touch_every", 1.0)
        self.client: Any = None
        self.lock = threading.Lock()  # one socket: the heartbeat touches only between our calls
        self.holding: Any = None

    def describe(self) -> str:
        return f"tube {self.tube!r}"

    def connect(self) -> None:
        self.client = open_client(self.url, self.tube, self.block + 10)
        self.heartbeat = Heartbeat(self.touch, self.touch_every)
        self.heartbeat.start()

    def _client(self) -> Any:
        if self.client is None:
            self.client = open_client(self.url, self.tube, self.block + 10)
        return self.client

    def touch(self) -> None:
        """Refresh the TTR of the job in hand (from the heartbeat thread)."""
        with self.lock:
            if self.holding is not None and self.client is not None:
                try:
                    self.client.touch(self.holding)
                except greenstalk.NotFoundError:
                    pass

    def fetch(self) -> Delivery | None:
        with self.lock:
            try:
                job = self._client().reserve(timeout=max(1, round(self.block)))
            except greenstalk.TimedOutError:
                return None
            except OSError:
                self._drop()
                raise
            self.holding = job
        return Delivery(job.body, job)

    def _step(self, action: str, job: Any, **args: Any) -> None:
        with self.lock:
            self.holding = None
            try:
                getattr(self._client(), action)(job, **args)
            except greenstalk.NotFoundError:
                pass  # our reservation ended with a lost connection: the job is back in the tube
            except OSError:
                self._drop()
                raise

    def _drop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
        self.client = None

    def ack(self, delivery: Delivery) -> None:
        self._step("delete", delivery.ref)

    def fail(self, delivery: Delivery, error: str) -> None:
        with self.lock:
            try:
                tries = int(self._client().stats_job(delivery.ref)["reserves"])
            except greenstalk.NotFoundError:
                return
            except OSError:
                self._drop()
                raise
        if tries >= self.max_attempts:
            self.log.warning("buried job %s after %d attempts: %s", delivery.ref.id, tries, error)
            self._step("bury", delivery.ref)
            return
        delay = math.ceil(retry_delay(tries, self.retry_initial, self.retry_max))
        self._step("release", delivery.ref, delay=delay)

    def release(self, delivery: Delivery) -> None:
        self._step("release", delivery.ref)

    def close(self) -> None:
        self.heartbeat.stop()
        with self.lock:
            self._drop()


def inspect_tube(url: str, tube: str) -> dict[str, Any]:
    """Ready, delayed (retrying), reserved, buried and watching counts of one tube."""
    client = open_client(url, "default", 5)
    try:
        stats = client.stats_tube(tube)
    except greenstalk.NotFoundError:
        stats = {}
    finally:
        client.close()
    reserved = stats.get("current-jobs-reserved", 0)
    return {"ready": stats.get("current-jobs-ready", 0), "retrying": stats.get("current-jobs-delayed", 0),
            "in_flight": {"(reserved)": reserved} if reserved else {},
            "dead": stats.get("current-jobs-buried", 0), "consumers": stats.get("current-watching", 0)}


def kick_tube(url: str, tube: str) -> int:
    """Kick every buried job of the tube back to ready; returns how many."""
    client = open_client(url, tube, 5)
    try:
        # One kick of the jobs buried now: a poison job a consumer buries again at once must
        # not be kicked (and counted) twice.
        buried = client.stats_tube(tube).get("current-jobs-buried", 0)
        return client.kick(buried) if buried else 0
    finally:
        client.close()
