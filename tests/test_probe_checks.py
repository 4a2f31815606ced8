"""One tcp check on a real loop against real loopback sockets: a connect the kernel completes
inside connect(2) ends the check at once, with nothing left registered on the loop (no epoll
entry, no timer: the per-check cost that issue 27's 5,000-instance target is about); a
refused one fails at once; one whose SYN is dropped is watched and times out without
holding the loop."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from servers import free_port
from orchestrator.config.probes import Probe
from orchestrator.loop import EventLoop
from orchestrator.supervise.probe_checks import Check
from orchestrator.supervise.probe_ticks import Ticks


def _probe(port: int, timeout: float = 0.3) -> Probe:
    return Probe("readiness", "tcp", "127.0.0.1", port, "", 10.0, timeout, 1, 1)


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def _idle(loop: EventLoop) -> tuple[int, bool]:
    """fds registered on the loop, and whether a live timer is pending."""
    return len(loop.selector.get_map()), any(not t.cancelled for _, _, t in loop._timers)


def test_a_loopback_connect_passes_at_once_leaving_nothing_on_the_loop(loop: EventLoop) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        before = _idle(loop)
        results: list[tuple[bool, str]] = []
        Check(loop, _probe(server.getsockname()[1]), lambda ok, detail: results.append((ok, detail))).start()
        assert results == [(True, "ok")], "the check waited for the loop although connect(2) had completed"
        assert _idle(loop) == before
        conn, _ = server.accept()  # it really connected
        conn.close()
    finally:
        server.close()


def test_a_refused_connect_fails_at_once(loop: EventLoop) -> None:
    port = free_port()
    results: list[tuple[bool, str]] = []
    Check(loop, _probe(port), lambda ok, detail: results.append((ok, detail))).start()
    assert results == [(False, f"127.0.0.1:{port}: connection refused")]
    assert _idle(loop)[0] == 1  # the loop's own wake-up fd only


def test_a_dropped_syn_is_watched_and_times_out_without_holding_the_loop(loop: EventLoop) -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=0)  # never accepts
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(10):  # fill the accept queue until the kernel drops the next SYN
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            fillers.append(sock)
            sock.connect_ex(("127.0.0.1", port))
            if sock.connect_ex(("127.0.0.1", port)) == errno.EALREADY:
                break
        else:
            pytest.fail("the accept queue of a backlog-0 listener never filled")
        results: list[tuple[bool, str]] = []
        began = time.monotonic()
        Check(loop, _probe(port), lambda ok, detail: results.append((ok, detail))).start()
        assert results == [] and _idle(loop) == (2, True), "a connect under way is watched with its timeout"
        while not results and time.monotonic() - began < 5:
            loop.run_once(0.05)
        assert results == [(False, "timed out after 0.3s")]
        assert 0.25 < time.monotonic() - began < 2.0
        assert _idle(loop) == (1, False)
    finally:
        for sock in fillers:
            sock.close()
        server.close()


# --- ticks: due checks in batches, one loop timer per tick -------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_checks_due_in_one_tick_run_together_on_one_timer() -> None:
    clock = Clock()
    loop = EventLoop(clock=clock)
    ran: list[tuple[int, str]] = []

    def run(token: int, name: str) -> None:
        if name == "bad":
            raise RuntimeError("a bug in one check")
        ran.append((token, name))
    try:
        ticks = Ticks(loop, run, tick=0.05)
        tokens = {name: ticks.add(delay, name) for name, delay in
                  [("a", 10.0), ("bad", 10.01), ("b", 10.02), ("c", 10.2), ("now", 0.0)]}
        assert len(tokens) == len(set(tokens.values()))
        assert sum(not t.cancelled for _, _, t in loop._timers) == 2  # a, bad and b share a tick
        loop.run_once(0)
        assert ran == [(tokens["now"], "now")], "a check due now waits for no tick"
        clock.now += 9.97
        loop.run_once(0)
        assert ran[1:] == [], "ran before its tick"
        clock.now = 110.001  # the tick of 110.0: b (due at 110.02) is nearer to it than to 110.05
        loop.run_once(0)
        assert ran[1:] == [(tokens["a"], "a"), (tokens["b"], "b")], "one failing check dropped the batch"
        clock.now = 110.2
        loop.run_once(0)
        assert ran[-1] == (tokens["c"], "c") and not ticks.slots
    finally:
        loop.close()
