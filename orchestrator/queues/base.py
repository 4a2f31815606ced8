"""The loop every queue consumer shares: fetch one message, call the user's handler, then
acknowledge it or record a failed attempt; survive server loss; stop after the message in hand.

A backend (Redis list, Redis stream, beanstalkd) fills in `connect`, `fetch`, `ack`, `fail`,
`release` and `housekeeping`; this class owns the handler, the stop flag, the reconnect
backoff (logged once per outage) and the retry delays. Each message is one request of the
orch runtime (`run()` returns True), so `max_requests`, `timeout` and the notify protocol apply.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from ..worker import Worker
from .safe_json import loads as safe_loads

Handler = Callable[[bytes], Any]
MAX_ATTEMPTS = 1000          # kwargs.max_attempts bound (the task envelope's is the same)
MAX_SECONDS = 7 * 86400.0    # longest block/lease/retry delay a kwarg may ask for


class ConsumerConfigError(Exception):
    """A kwarg the consumer cannot work with (reported in the log, exit status 2)."""


@dataclass
class Delivery:
    """One message taken from the server: its bytes and the backend's handle on it."""

    body: bytes
    ref: Any = None


def retry_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before retry number `attempt` (1-based): doubling from `initial`, capped."""
    # 2 ** 64 already passes any cap; a larger power (beanstalkd's reserves can grow past
    # max_attempts through deaths) would overflow the float
    return min(maximum, initial * (2 ** min(64, max(0, attempt - 1))))


def dead_letter_record(body: bytes, *, queue: str, error: str, attempts: int, instance: str,
                       now: float) -> bytes:
    """The JSON record a dead-lettered message becomes; the original bytes survive exactly."""
    record: dict[str, Any] = {"queue": queue, "error": error, "attempts": attempts,
                              "instance": instance, "time": round(now, 3)}
    try:
        record["message"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["message_b64"] = base64.b64encode(body).decode("ascii")
    return json.dumps(record, sort_keys=True).encode()


def original_bytes(record: bytes) -> bytes:
    """The message inside a dead-letter record (the record itself if it is not one of ours)."""
    try:
        data = safe_loads(record, 100)  # anyone can push onto a dead list; never crash `retry`
    except ValueError:
        return record
    if not isinstance(data, dict):
        return record
    if isinstance(data.get("message_b64"), str):
        try:
            return base64.b64decode(data["message_b64"], validate=True)
        except binascii.Error:
            return record
    if isinstance(data.get("message"), str):
        return data["message"].encode("utf-8", "surrogatepass")
    return record


def redact(url: str) -> str:
    """A URL fit for a log line: any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def load_handler(spec: str) -> Handler:
    """Import `module:function` (the config's folder is on sys.path)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConsumerConfigError(f"handler {spec!r} must look like 'module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConsumerConfigError(f"cannot import handler {spec!r}: {exc}") from exc
    if not callable(obj):
        raise ConsumerConfigError(f"handler {spec!r} is not callable")
    return obj


def error_text(exc: BaseException) -> str:
    """`Type: message` plus the innermost frame, short enough for a dead-letter record."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"[:2000]


class Heartbeat:
    """A daemon thread calling `beat()` every `interval` s, so a long handler keeps its lease."""

    def __init__(self, beat: Callable[[], None], interval: float):
        self.beat, self.interval = beat, interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="orch-queue-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the main loop notices and logs server loss
                pass


class QueueWorker(Worker):
    """A reliable consumer: one message per run(), acknowledged only after the handler returns."""

    server_errors: tuple[type[BaseException], ...] = (OSError,)
    housekeeping_interval = 1.0   # seconds between reclaim / delayed-retry passes
    reconnect_max = 2.0           # longest pause between reconnect attempts (s)

    def init(self) -> None:
        """Read kwargs, import the handler, connect (or exit with a clear error), recover."""
        self.stopping = False
        self._chain_stop_signals()
        try:
            self.configure(self.kwargs)
            self.handler = self.make_handler()
            self.connect()
        except ConsumerConfigError as exc:
            self.log.error("error: %s", exc)
            raise SystemExit(2) from None
        except self.server_errors as exc:
            self.log.error("error: cannot reach %s: %s", redact(self.url), exc)
            raise SystemExit(1) from None
        self._down_since = 0.0
        self._dirty = False  # the server was lost: re-sync with it before taking a message
        self._pause = 0.1
        self._next_housekeeping = 0.0
        self.log.info("%s consuming %s at %s", type(self).__name__, self.describe(), redact(self.url))

    def configure(self, kwargs: dict[str, Any]) -> None:
        """Read the kwargs every backend shares; backends extend this."""
        self.url = str(kwargs.get("url") or "")
        if not self.url:
            raise ConsumerConfigError("kwargs.url is required")
        self.max_attempts = positive_int(kwargs, "max_attempts", 5)
        self.block = positive_float(kwargs, "block", 1.0)
        self.retry_initial = positive_float(kwargs, "retry_delay", 1.0)
        self.retry_max = positive_float(kwargs, "retry_max_delay", 60.0)

    def _chain_stop_signals(self) -> None:
        # The runtime stops between run() calls; we also need to know *inside* run() so that
        # a message that arrives while stopping is put back instead of handled.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)

            def stop(num: int, frame: Any, previous: Any = previous) -> None:
                self.stopping = True
                if callable(previous):
                    previous(num, frame)
            signal.signal(signum, stop)

    def run(self) -> bool:
        """Take one message and handle it; False when none came within `block` seconds."""
        if self.stopping:
            return False
        try:
            if self._dirty:  # we hold nothing here, so the backend may put back what it had
                self.reconnected()
                self._dirty = False
            if time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + self.housekeeping_interval
                self.housekeeping()
            delivery = self.fetch()
        except self.server_errors as exc:
            self._lost(exc)
            return False
        self._back()
        if delivery is None:
            return False
        if self.stopping:
            self._insist(self.release, delivery)
            return False
        try:
            self.handler(delivery.body)
        except Exception as exc:  # noqa: BLE001 - any handler error is one failed attempt
            error = self._describe(exc)
            self._insist(lambda d: self.fail(d, error), delivery)
        else:
            self._acknowledge(delivery)
        return True

    def _acknowledge(self, delivery: Delivery) -> None:
        """Ack the message; an ack that fails other than by a lost connection (which _insist
        retries) is a failed attempt instead. Letting it escape would kill the worker with the
        message in hand, and its replacement would run it again, over and over."""
        try:
            self._insist(self.ack, delivery)
        except Exception as exc:  # noqa: BLE001 - WRONGTYPE, a script error, OOM, a bug
            error = f"acknowledging failed: {error_text(exc)}"
            self.log.error("%s; counted as a failed attempt", error)
            self._insist(lambda d: self.fail(d, error), delivery)

    def _describe(self, exc: BaseException) -> str:
        try:
            return self.error_text(exc)
        except Exception:  # noqa: BLE001 - an exception whose __str__ raises is still one attempt
            return type(exc).__name__

    def _insist(self, step: Callable[[Delivery], None], delivery: Delivery) -> None:
        """Run an ack/fail/release step until the server takes it (each step is idempotent)."""
        while True:
            try:
                step(delivery)
            except self.server_errors as exc:
                self._lost(exc)
                continue
            self._back()
            return

    def _lost(self, exc: BaseException) -> None:
        self._dirty = True
        if not self._down_since:
            self._down_since = time.monotonic()
            self.log.warning("lost %s: %s; reconnecting with backoff", redact(self.url), exc)
        time.sleep(self._pause)
        self._pause = min(self.reconnect_max, self._pause * 2)

    def _back(self) -> None:
        if self._down_since:
            self.log.info("reconnected to %s after %.1fs", redact(self.url),
                          time.monotonic() - self._down_since)
            self._down_since = 0.0
            self._pause = 0.1

    def after_run(self) -> None:
        """Say goodbye to the server (a killed consumer never gets here; leases cover that)."""
        try:
            self.close()
        except self.server_errors:
            pass

    def make_handler(self) -> Handler:
        """The callable each message goes to (kwargs.handler; the task worker brings its own)."""
        return load_handler(self.kwargs.get("handler", ""))

    def error_text(self, exc: BaseException) -> str:
        """How a handler error is recorded (a retry's log line, a dead letter's `error`)."""
        return error_text(exc)

    def death_limit(self, body: bytes) -> int:
        """Deaths while handling `body` after which it is dead-lettered (the task worker also
        honours the task's own max_attempts)."""
        return self.max_attempts

    # --- what a backend provides -------------------------------------------------------
    def describe(self) -> str:
        """What this consumer reads, for the start-up log line."""
        raise NotImplementedError

    def connect(self) -> None:
        """Connect, check the server answers, and recover what a previous incarnation held."""
        raise NotImplementedError

    def fetch(self) -> Delivery | None:
        """Wait up to `block` seconds for one message and take it reliably."""
        raise NotImplementedError

    def ack(self, delivery: Delivery) -> None:
        """The handler returned: forget the message for good."""
        raise NotImplementedError

    def fail(self, delivery: Delivery, error: str) -> None:
        """The handler raised: retry later with backoff, or dead-letter after max_attempts."""
        raise NotImplementedError

    def release(self, delivery: Delivery) -> None:
        """Put a message back untouched (it arrived while stopping)."""
        raise NotImplementedError

    def housekeeping(self) -> None:
        """Periodic cheap pass: reclaim dead consumers' messages, move due retries back."""

    def reconnected(self) -> None:
        """After an outage, before the next fetch: re-sync (replies may have been lost)."""

    def close(self) -> None:
        """Release server-side state on a graceful exit."""


def positive_float(kwargs: dict[str, Any], key: str, default: float, maximum: float = MAX_SECONDS) -> float:
    """kwargs[key] as seconds in (0, maximum], or a ConsumerConfigError naming the kwarg."""
    value = kwargs.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConsumerConfigError(f"kwargs.{key} must be a number of seconds, not {value!r}") from None
    if not 0 < number <= maximum:  # also refuses NaN and inf, which no timer or sleep takes
        raise ConsumerConfigError(f"kwargs.{key} must be > 0 and at most {maximum:g}, not {value!r}")
    return number


def positive_int(kwargs: dict[str, Any], key: str, default: int, maximum: int = MAX_ATTEMPTS) -> int:
    """kwargs[key] as a whole number in [1, maximum], or a ConsumerConfigError naming the kwarg."""
    value = kwargs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConsumerConfigError(f"kwargs.{key} must be a whole number >= 1 and <= {maximum}, not {value!r}")
    return value
