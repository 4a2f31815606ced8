"""`python -m bench.autoscale`: replicas that follow the backlog (issue 28) against fixed counts,
in one run. A burst of 20,000 messages (5,000 into each of 4 cells' Redis lists) for orch's
Redis list consumer with a 5 ms handler, under three configs: autoscaled (min 1, max 8), fixed 1
and fixed 8 replicas per cell. Each run starts the master, waits until its consumers are idle,
pushes the burst in one go, and samples every 0.1 s the backlog (LLEN of the four lists) and the
consumer processes running (`orch status`). Figures: time to drain (every list and processing
list empty) and process-seconds (the integral of running consumers over time) during the drain
and over a fixed window from the burst, the same for all three (a burst is followed by quiet,
which a fixed count pays for too). Writes bench/autoscale.png and, with --write-results, its
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .queues import start_redis, stop_master

HERE = Path(__file__).resolve().parent
PNG = HERE / "autoscale.png"
CELLS = ["q0", "q1", "q2", "q3"]
SCALE = 'scale = { up_after = "1s", down_after = "5s", step = 4 }'
CONFIGS = {
    "autoscaled 1-8": "replicas = { min = 1, max = 8, backlog = 200 }\n" + SCALE,
    "fixed 1": "replicas = 1",
    "fixed 8": "replicas = 8",
}


def _config(url: str, replicas: str) -> str:
    return textwrap.dedent(f"""
    [orchestrator]
    check_interval = "1s"
    [workers.consumer]
    target = "orchestrator.queues.redis:QueueConsumer"
    matrix = {{ queue = {json.dumps(CELLS)} }}
    preload = true
    stop_timeout = "5s"
    kwargs = {{ url = "{url}", queue = "{{{{ queue }}}}", handler = "sleepy:handle" }}
    """) + replicas + "\n"


def _status(sock_path: Path) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(json.dumps({"cmd": "status", "args": {}}).encode() + b"\n")
        reply = json.loads(sock.makefile("rb").readline())
    return reply["result"]["instances"]


def _running(sock_path: Path) -> int:
    return sum(1 for r in _status(sock_path) if r["state"] == "running" and r["pid"])


def one_run(name: str, url: str, folder: Path, window: float, log: Any) -> dict[str, Any]:
    """Start the master, push the burst, sample until drained and `window` has passed."""
    import subprocess
    import redis
    client = redis.Redis.from_url(url)
    client.flushall()
    run_dir = folder / name.replace(" ", "-")
    run_dir.mkdir()
    (run_dir / "sleepy.py").write_text("import time\n\ndef handle(message):\n    time.sleep(0.005)\n")
    config = run_dir / "workers.toml"
    config.write_text(_config(url, CONFIGS[name]))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-q", "-c", str(config)], cwd=run_dir,
                            stdout=subprocess.DEVNULL, stderr=open(run_dir / "master.err", "wb"),
                            start_new_session=True)
    sock_path = run_dir / ".orch" / "workers" / "orch.sock"
    try:
        deadline = time.monotonic() + 60
        expected = 32 if name == "fixed 8" else 4
        while True:  # every consumer holds its lease: it is past start-up and waiting
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: consumers did not start: {(run_dir / 'master.err').read_text()[-500:]}")
            if sock_path.exists() and len(client.keys("q*:consumer:*")) >= expected:
                break
            time.sleep(0.1)
        for queue in CELLS:
            client.lpush(queue, *[b"m%d" % i for i in range(5000)])
        began = time.monotonic()
        samples: list[tuple[float, int, int]] = []
        drained: float | None = None
        while True:
            now = time.monotonic() - began
            backlog = sum(client.llen(q) for q in CELLS)
            samples.append((now, backlog, _running(sock_path)))
            if drained is None and backlog == 0 and all(client.llen(k) == 0 for k in client.keys("q*:processing:*")):
                drained = now
                log(f"{name}: drained in {drained:.2f}s")
            if drained is not None and now >= max(window, drained):
                break
            time.sleep(0.1)
    finally:
        stop_master(proc)
    return {"name": name, "drain": drained, "samples": samples,
            "drain_ps": _integral(samples, drained or 0.0), "window_ps": _integral(samples, window)}


def _integral(samples: list[tuple[float, int, int]], until: float) -> float:
    """Process-seconds: running consumers integrated over [0, until] (step function)."""
    total = 0.0
    for (t0, _, n), (t1, _, _) in zip(samples, samples[1:]):
        if t0 >= until:
            break
        total += n * (min(t1, until) - t0)
    return total


def plot(runs: list[dict[str, Any]], path: Path = PNG) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for run in runs:
        times = [s[0] for s in run["samples"]]
        top.step(times, [s[1] for s in run["samples"]], where="post", label=run["name"])
        bottom.step(times, [s[2] for s in run["samples"]], where="post", label=run["name"])
    top.set_ylabel("backlog (messages, 4 lists)")
    bottom.set_ylabel("consumer processes running")
    bottom.set_xlabel("seconds since the burst of 20,000 messages")
    top.legend()
    top.set_title("orch: replicas that follow the backlog (4 cells, 5 ms handler)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def render(runs: list[dict[str, Any]], window: float) -> str:
    by = {r["name"]: r for r in runs}
    auto, big = by["autoscaled 1-8"], by["fixed 8"]
    import platform
    lines = [
        "## Replicas that follow the backlog (bench/autoscale.py, issue 28)", "",
        f"Produced by `python -m bench.autoscale --write-results`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, a machine shared with "
        "other work (2 cores). A burst of 20,000 messages (5,000 into each of 4 cells), orch's Redis list consumer, "
        f"a 5 ms handler, preload on. Autoscaled: `replicas = {{ min = 1, max = 8, backlog = 200 }}`, `{SCALE}`. "
        f"Process-seconds: consumer processes running, integrated over the drain, and over the first {window:g} s "
        "after the burst (the same window for all three: the quiet after a burst costs a fixed count too).", "",
        "| config | drain | process-seconds (drain) | process-seconds (window) |",
        "|---|--:|--:|--:|",
    ]
    for run in runs:
        lines.append(f"| {run['name']} | {run['drain']:.2f} s | {run['drain_ps']:.0f} | {run['window_ps']:.0f} |")
    lines += ["",
              f"- autoscaled drain ÷ fixed 8 drain: **×{auto['drain'] / big['drain']:.2f}** (target ≤ 1.3)",
              f"- autoscaled process-seconds ÷ fixed 8, over the window: **{auto['window_ps'] / big['window_ps']:.0%}**"
              f" (target ≤ 60 %); over the drain alone: {auto['drain_ps'] / big['drain_ps']:.0%}", "",
              "![replicas and backlog over time](autoscale.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds after the burst counted (default 30)")
    parser.add_argument("--write-results", action="store_true", help="rewrite the section in bench/RESULTS.md")
    args = parser.parse_args(argv)
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
        server, url = start_redis(Path(tmp))
        try:
            runs = [one_run(name, url, Path(tmp), args.window, log) for name in CONFIGS]
        finally:
            server.terminate()
            server.wait(10)
    try:
        plot(runs)
    except ImportError:
        log("no matplotlib (pip install 'orch-fleet[bench]'): bench/autoscale.png left as it was")
    section = render(runs, args.window)
    print(section)
    if args.write_results:
        from .report import write_section
        write_section(HERE / "RESULTS.md", "autoscale", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
