"""`target = "orchestrator.tasks:TaskWorker"`: a reliable queue consumer whose handler runs tasks.

kwargs: url (`redis://…` or `beanstalk://…`), queues (one name per instance; use a matrix for
more), imports (modules whose `@queue.task` functions this worker may run), result_url (Redis;
required on beanstalkd, defaults to url on Redis), max_attempts (1..1000: deaths while
running, default 5, never more than the task's own max_attempts, which bounds its failures),
retry_delay / retry_max_delay, block. Everything the queue consumers guarantee (processing
lists, leases, reclaim, delayed retries with backoff, dead letters) holds; on top, each success
is stored and acknowledged in one Lua script on Redis (stored first-writer-wins on
beanstalkd), an unknown task name or a body that fails tasks/envelope.py's checks is
dead-lettered on its first attempt with the reason, and a task over its `timeout` is one
failed attempt.
"""

from __future__ import annotations

import importlib
import signal
import time
import traceback
from typing import Any, Callable

from ..queues.base import ConsumerConfigError, Delivery, Handler, dead_letter_record
from ..queues.beanstalkd import QueueConsumer as BeanstalkConsumer
from ..queues.redis import REFUSED, QueueConsumer as RedisConsumer, digest, open_redis
from .envelope import BadEnvelope, job_id_of, parse_envelope, result_ttl_of
from .store import QUEUE_PREFIX, REGISTRY, STORE_AND_ACK, STORE_ONLY, dead_record, result_keys, success_record

TRACEBACK_MAX = 8000  # characters of traceback kept in a dead letter and a dead result


class TaskTimeout(Exception):
    """The task ran past its `timeout` (one failed attempt)."""


class Fatal(Exception):
    """A message that no retry can fix: dead-lettered at once (unknown task, not a task)."""


class TaskMixin:
    """What both backends share: the handler that runs a task, the result writes, the limits."""

    kwargs: dict[str, Any]
    log: Any
    max_attempts: int
    url: str

    def task_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Check the task kwargs; returns the consumer kwargs for the backend's configure()."""
        queues = kwargs.get("queues")
        if isinstance(queues, str):
            queues = [queues]
        if not isinstance(queues, list) or len(queues) != 1 or not isinstance(queues[0], str) \
                or not queues[0]:
            raise ConsumerConfigError(f"kwargs.queues must name exactly one queue per instance "
                                      f"(use a matrix for more), not {queues!r}")
        imports = kwargs.get("imports", [])
        if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
            raise ConsumerConfigError(f"kwargs.imports must be a list of module names, not {imports!r}")
        self.task_queue, self.imports = queues[0], imports
        self.result_url = str(kwargs.get("result_url") or "")
        return {"block": 0.25, **kwargs}

    def make_handler(self) -> Handler:
        for module in self.imports:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - any import error is a config error
                raise ConsumerConfigError(f"kwargs.imports: cannot import {module!r}: "
                                          f"{type(exc).__name__}: {exc}") from None
        self.results = open_redis(self.result_url or self.url)
        self.store = self.results.register_script(STORE_ONLY)
        self.fatal = False
        self.limit = self.max_attempts
        signal.signal(signal.SIGALRM, _alarm)
        return self.run_task

    def run_task(self, body: bytes) -> None:
        """Decode, look up, run under the task's timeout; keep the JSON result for ack()."""
        self.fatal, self.limit, self.outcome = False, self.max_attempts, ""
        try:
            envelope = parse_envelope(body)
        except BadEnvelope as exc:  # no retry can fix the bytes: dead-lettered on this attempt
            self.fatal = True
            raise Fatal(f"not a valid task envelope: {exc}") from None
        self.envelope, self.limit = envelope, envelope.max_attempts
        task = REGISTRY.get(envelope.task)
        if task is None:
            self.fatal = True
            raise Fatal(f"unknown task {envelope.task!r}: no module in this worker's imports "
                        f"{self.imports} defines it")
        if envelope.timeout:
            signal.setitimer(signal.ITIMER_REAL, envelope.timeout)
        try:
            value = task.fn(**envelope.kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.outcome = success_record(value)

    def error_text(self, exc: BaseException) -> str:
        if isinstance(exc, Fatal):
            return f"Fatal: {exc}"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        head = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        return f"{head}\n{text[-TRACEBACK_MAX:]}"

    def with_limit(self, step: Callable[[], None]) -> None:
        """Run a fail step with this message's attempt limit (1 when it can never succeed)."""
        saved, self.max_attempts = self.max_attempts, 1 if self.fatal else self.limit
        try:
            step()
        finally:
            self.max_attempts = saved

    def death_limit(self, body: bytes) -> int:
        """Deaths while running a body that end it: the worker's max_attempts, and no more
        than the task's own (1 for a body that is not a valid envelope)."""
        try:
            return min(self.max_attempts, parse_envelope(body).max_attempts)
        except BadEnvelope:
            return 1

    def store_dead(self, body: bytes, error: str, attempts: int, client: Any = None) -> None:
        """Write the dead record of a job (so result() raises) before it is dead-lettered
        (`client`: a MULTI pipeline to make it part of). A malformed body with a usable id
        still gets one, kept for the default TTL, so its producer learns why."""
        job_id = job_id_of(body)
        if job_id is None:
            return
        ttl_ms = int(result_ttl_of(body) * 1000)
        try:
            self.store(keys=result_keys(job_id), args=[dead_record(error, attempts), ttl_ms], client=client)
        except REFUSED as exc:  # the dead letter matters more than the dead result: go on
            self.log.warning("could not store the dead result of job %s: %s", job_id, exc)


def _alarm(signum: int, frame: Any) -> None:
    raise TaskTimeout("the task ran past its timeout")


class RedisTaskWorker(TaskMixin, RedisConsumer):
    """Tasks on a Redis list `tasks:QUEUE` (the list consumer's keys and guarantees)."""

    def configure(self, kwargs: dict[str, Any]) -> None:
        consumer = self.task_kwargs(kwargs)
        super().configure({**consumer, "queue": QUEUE_PREFIX + self.task_queue})
        self.housekeeping_interval = 0.2  # delayed tasks start within ~0.25 s of their time
        self.same_server = not self.result_url or self.result_url == self.url

    def connect(self) -> None:
        super().connect()
        self.store_ack = self.redis.register_script(STORE_AND_ACK)

    def ack(self, delivery: Delivery) -> None:
        ttl = self.envelope.ttl_ms
        keys = result_keys(self.envelope.id)
        take_next = "0" if self.stopping or self._down_since else "1"
        if self.same_server:  # one script: stored and acknowledged, or neither
            _, self.next = self.store_ack(
                keys=[*keys, self.processing, self.attempts, self.queue],
                args=[self.outcome, ttl, delivery.body, digest(delivery.body), take_next])
            return
        self.store(keys=keys, args=[self.outcome, ttl])  # first writer wins if this runs twice
        super().ack(delivery)

    def fail(self, delivery: Delivery, error: str) -> None:
        self.with_limit(lambda: RedisConsumer.fail(self, delivery, error))

    def _bury(self, body: bytes, tries: int, error: str, tail: bool) -> None:
        if not self.same_server:
            self.store_dead(body, error, tries)
            super()._bury(body, tries, error, tail)
            return
        record = dead_letter_record(body, queue=self.queue, error=error, attempts=tries,
                                    instance=self.name, now=time.time())
        pipe = self.redis.pipeline(transaction=True)  # dead result and dead letter, or neither
        self.store_dead(body, error, tries, client=pipe)
        pipe.lrem(self.processing, -1 if tail else 1, body)
        pipe.lpush(self.dead_letter, record)
        pipe.hdel(self.attempts, digest(body))
        # A command the server refuses inside MULTI (the dead result's key clobbered, say)
        # does not stop the others: the message is dead-lettered either way, so log, not raise.
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                self.log.warning("dead-lettering a message: the server refused a step: %s", reply)


class BeanstalkTaskWorker(TaskMixin, BeanstalkConsumer):
    """Tasks on a beanstalkd tube named QUEUE; results in the Redis at result_url."""

    def configure(self, kwargs: dict[str, Any]) -> None:
        consumer = self.task_kwargs(kwargs)
        if not self.result_url:
            raise ConsumerConfigError("kwargs.result_url is required with a beanstalk:// url: "
                                      "task results are kept in Redis (result_url = \"redis://HOST:6379/0\")")
        super().configure({**consumer, "tube": self.task_queue})
        self.last_error = ""

    def ack(self, delivery: Delivery) -> None:
        keys = result_keys(self.envelope.id)
        self.store(keys=keys, args=[self.outcome, self.envelope.ttl_ms])
        super().ack(delivery)

    def fail(self, delivery: Delivery, error: str) -> None:
        self.last_error = error
        self.with_limit(lambda: BeanstalkConsumer.fail(self, delivery, error))

    def _step(self, action: str, job: Any, **args: Any) -> None:
        if action == "bury":
            tries = self.max_attempts
            self.store_dead(job.body, self.last_error, tries)
        super()._step(action, job, **args)


class TaskWorker(RedisTaskWorker):
    """The workers.toml target: a Redis or beanstalkd task worker, chosen by kwargs.url."""

    def __new__(cls, name: str, kwargs: dict[str, Any], log: Any) -> Any:
        url = str(kwargs.get("url") or "")
        chosen = BeanstalkTaskWorker if url.startswith(("beanstalk://", "beanstalkd://")) else RedisTaskWorker
        worker = object.__new__(chosen)
        if not isinstance(worker, cls):  # type() calls __init__ only on instances of cls
            worker.__init__(name, kwargs, log)
        return worker
