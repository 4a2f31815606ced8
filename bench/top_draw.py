"""`python -m bench.top_draw [--rows N] [--config FILE]`: how long one `orch top` refresh takes.

Times, per frame: decoding a status reply of N rows (synthetic, or the real master's with
--config), filtering and sorting it, rendering the screen and painting it with curses. Run it
in a terminal (a tmux pane of 160x40 is what the README's figures used); it prints the
median and worst frame after the screen is restored. Not a test: wall-clock figures depend on
the machine.
"""

from __future__ import annotations

import argparse
import curses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.cli.top import TopState, apply_reply, handle_key, render
from orchestrator.cli.top_screen import Top, call


def synthetic(rows: int) -> dict[str, Any]:
    return {"name": "bench", "config": "/srv/workers.toml", "pid": 1, "started": time.time() - 3600,
            "applied_at": time.time(), "reloads": 3, "last_reload_error": None,
            "instances": [{"name": f"consumer-10.0.{i // 250}.{i % 250}-queue{i % 7}", "template": "consumer",
                           "state": "running" if i % 50 else "backoff", "pid": 10000 + i, "uptime": i * 1.7,
                           "restarts": i % 4, "last_exit": "SIGKILL" if i % 9 == 0 else None, "reason": None,
                           "rss": (20 + i % 30) << 20, "cpu": (i % 17) / 3, "requests": i * 3, "ready": True,
                           "held": False, "notify_status": f"job {i}", "limit_kills": {}, "hash": "x"}
                          for i in range(rows)]}


def frames(screen: Any, count: int, fetch: Callable[[], dict]) -> list[tuple[float, float, float, float]]:
    top = Top(screen, Path("/nonexistent"), Path("/tmp"), (), 1.0)
    timings = []
    for index in range(count):
        started = time.perf_counter()
        reply = fetch()
        decoded = time.perf_counter()
        apply_reply(top.state, reply, time.time())
        if index % 2:
            handle_key(top.state, "p", 30)  # alternate the sort, as a user might
        applied = time.perf_counter()
        height, width = screen.getmaxyx()
        render(top.state, width, height)
        rendered = time.perf_counter()
        top.paint()  # renders again and paints: the driver's real path
        painted = time.perf_counter()
        timings.append((decoded - started, applied - decoded, rendered - applied,
                        painted - rendered))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.top_draw")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--config", help="time the real master's status replies instead")
    args = parser.parse_args()
    text = json.dumps(synthetic(args.rows)).encode()
    fetch: Callable[[], dict] = lambda: json.loads(text)  # noqa: E731
    if args.config:
        from orchestrator.config.load import load_settings
        socket = load_settings(Path(args.config)).control_socket
        fetch = lambda: call(socket, "status")  # noqa: E731
    timings = curses.wrapper(lambda screen: frames(screen, args.frames, fetch))
    for label, values in zip(("decode (or fetch+decode)", "filter+sort", "render", "paint"),
                             zip(*timings)):
        print(f"{label:>24}: median {statistics.median(values) * 1000:6.1f} ms, "
              f"worst {max(values) * 1000:6.1f} ms")
    total = [sum(t) for t in timings]
    print(f"{'whole frame':>24}: median {statistics.median(total) * 1000:6.1f} ms, "
          f"worst {max(total) * 1000:6.1f} ms ({args.rows if not args.config else 'live'} rows)")


if __name__ == "__main__":
    main()
