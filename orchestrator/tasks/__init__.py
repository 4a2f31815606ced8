"""Functions queued by name, run by an orch fleet, results awaited from any process:

    queue = TaskQueue("redis://127.0.0.1:6379/0")     # or "beanstalk://HOST:11300", result_url=...
    @queue.task("emails", max_attempts=5, timeout="30s")
    def send_email(to, subject): ...
    send_email.put(to="a@b.c", subject="hi").result(timeout=10)

Producers (this module) push a JSON envelope onto the queue; `TaskWorker` (tasks/worker.py,
a reliable queue consumer) runs it and stores the result in Redis. Delivery is at least once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

from ..units import parse_duration
from .envelope import DEFAULT_TTL, RESULT_TTL, TIMEOUT, Envelope, check_attempts, check_seconds, new_id
from .store import QUEUE_PREFIX, REGISTRY, TaskFailed, check_json, wait_result

__all__ = ["TaskQueue", "Task", "Job", "TaskFailed", "TaskWorker", "REGISTRY"]


class Job:
    """A handle on one queued call: its id, and `result()` to wait for what it returned."""

    def __init__(self, queue: "TaskQueue", task: str, job_id: str):
        self.queue, self.task, self.id = queue, task, job_id

    def result(self, timeout: float | str | None = None) -> Any:
        """Wait for the result; raises TaskFailed (dead-lettered) or TimeoutError."""
        seconds = None if timeout is None else parse_duration(timeout)
        return wait_result(self.queue.results(), self.task, self.id, seconds)

    def __repr__(self) -> str:
        return f"<Job {self.task} {self.id}>"


class Task:
    """A function registered under a name: call it plainly, or `.put()` it onto its queue."""

    def __init__(self, queue: "TaskQueue", fn: Callable[..., Any], queue_name: str, name: str,
                 max_attempts: int, timeout: float | None):
        self.queue, self.fn, self.queue_name, self.name = queue, fn, queue_name, name
        self.max_attempts, self.timeout = max_attempts, timeout
        self.__doc__, self.__name__, self.__wrapped__ = fn.__doc__, fn.__name__, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def put(self, *, delay: float | str | None = None, **kwargs: Any) -> Job:
        """Queue one call with JSON keyword arguments (`delay`: start no sooner than this)."""
        check_json(self.name, kwargs)
        envelope = Envelope(new_id(), self.name, kwargs, self.max_attempts, self.timeout,
                            self.queue.result_ttl)
        seconds = parse_duration(delay) if delay else 0.0
        self.queue.push(self.queue_name, envelope, seconds, self.timeout)
        return Job(self.queue, self.name, envelope.id)

    def map(self, calls: Iterable[dict[str, Any]], timeout: float | str | None = None) -> list[Any]:
        """Queue one call per kwargs dict, then wait for all results (in order) within `timeout`."""
        jobs = [self.put(**kwargs) for kwargs in calls]
        deadline = None if timeout is None else time.monotonic() + parse_duration(timeout)
        results = []
        for job in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(job.result(timeout=left))
        return results


class TaskQueue:
    """Where tasks are queued (`redis://` or `beanstalk://`) and results kept (Redis)."""

    def __init__(self, url: str, *, result_url: str | None = None,
                 result_ttl: float | str = DEFAULT_TTL):
        # the bounds a worker checks in every envelope, checked here so put() never sends
        # a task that would only be dead-lettered
        self.url = url
        self.result_ttl = check_seconds("result_ttl", parse_duration(result_ttl), RESULT_TTL)
        self.beanstalk = url.startswith(("beanstalk://", "beanstalkd://"))
        self.result_url = result_url or (None if self.beanstalk else url)
        self._lock = threading.Lock()
        self._redis: Any = None      # connected on first use: defining tasks needs no server
        self._results: Any = None
        self._tubes: dict[str, Any] = {}

    def task(self, queue: str, *, name: str | None = None, max_attempts: int = 5,
             timeout: float | str | None = None) -> Callable[[Callable[..., Any]], Task]:
        """Decorator: register `fn` (as `module.qualname`, or `name`) to run on `queue`
        (max_attempts 1..1000, timeout 1 ms to 7 days: the bounds workers enforce)."""
        check_attempts(max_attempts)
        seconds = check_seconds("timeout", parse_duration(timeout), TIMEOUT) if timeout else None

        def register(fn: Callable[..., Any]) -> Task:
            task = Task(self, fn, queue, name or f"{fn.__module__}.{fn.__qualname__}",
                        max_attempts, seconds)
            REGISTRY[task.name] = task
            return task
        return register

    def results(self) -> Any:
        """The Redis client results are read from (raises when a beanstalk queue has none)."""
        if self.result_url is None:
            raise ValueError(f"results of tasks on {self.url} need a Redis: "
                             "TaskQueue(url, result_url='redis://HOST:6379/0')")
        with self._lock:
            if self._results is None:
                from ..queues.redis import open_redis
                self._results = open_redis(self.result_url, block=WAIT_SOCKET)
            return self._results

    def push(self, queue: str, envelope: Envelope, delay: float, timeout: float | None) -> None:
        """Send one envelope to the server (delayed by `delay` seconds when > 0)."""
        body = envelope.encode()
        if self.beanstalk:
            self._push_beanstalk(queue, body, delay, timeout)
            return
        with self._lock:
            if self._redis is None:
                from ..queues.redis import open_redis
                self._redis = open_redis(self.url)
        key = QUEUE_PREFIX + queue
        if delay > 0:  # the workers' housekeeping moves it to the queue when due
            token = new_id()[:16].encode()
            self._redis.zadd(key + ":delayed", {token + body: time.time() + delay})
        else:
            self._redis.lpush(key, body)

    def _push_beanstalk(self, tube: str, body: bytes, delay: float, timeout: float | None) -> None:
        import math
        from ..queues.beanstalkd import open_client
        with self._lock:  # one greenstalk connection per tube; greenstalk is not thread-safe
            client = self._tubes.get(tube)
            if client is None:
                client = self._tubes[tube] = open_client(self.url, tube, 10)
            ttr = int(max(60, (timeout or 0) + 30))  # the worker touches the job while it runs
            client.put(body, delay=math.ceil(delay), ttr=ttr)


WAIT_SOCKET = 5.0  # a result wait's socket timeout beyond its BLPOP (open_redis adds 10 s)


def __getattr__(name: str) -> Any:
    # TaskWorker pulls in the worker runtime; producers that never run tasks skip that import.
    if name == "TaskWorker":
        from .worker import TaskWorker
        return TaskWorker
    raise AttributeError(name)
