"""What the design's libraries cost where orch uses them: watchdog's observer in the master
(idle CPU, RSS, threads and save -> applied, with `watch = true` against `watch = false`
on the same fleet, one run), and psutil against the kept-fd /proc read the `rss` memory
limits use (per process, for rss, pss and uss). `python -m bench.libraries
[--write-results]` adds its section to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .report import RESULTS_MD, write_section

N = 100


def _master(folder: Path, watch: bool) -> tuple[subprocess.Popen, Path]:
    config = folder / "workers.toml"
    config.write_text(f'[orchestrator]\nwatch = {"true" if watch else "false"}\n'
                      f'[workers.w]\ncommand = "sleep 600"\nreplicas = {N}\n')
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet"],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if sum(1 for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "sleep") >= N:
                return proc, config
        except psutil.Error:
            pass
        time.sleep(0.1)
    raise RuntimeError("the fleet did not start")


def _applied(config: Path, proc: subprocess.Popen, watch: bool) -> float:
    """Seconds from a save (plus SIGHUP without the watcher) to the new instance running."""
    text = config.read_text().replace(f"replicas = {N}", f"replicas = {N + 1}")
    began = time.monotonic()
    config.write_text(text)
    if not watch:
        os.kill(proc.pid, signal.SIGHUP)
    while time.monotonic() - began < 30:
        if sum(1 for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "sleep") > N:
            return time.monotonic() - began
        time.sleep(0.002)
    return float("nan")


def master_figures(watch: bool, idle: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, config = _master(Path(tmp), watch)
        try:
            master = psutil.Process(proc.pid)
            time.sleep(2)
            before, began = master.cpu_times(), time.monotonic()
            time.sleep(idle)
            after, took = master.cpu_times(), time.monotonic() - began
            mem = master.memory_full_info()
            figures = {"threads": master.num_threads(), "rss_mib": mem.rss / 2**20, "pss_mib": mem.pss / 2**20,
                       "idle_cpu_pct": 100 * ((after.user + after.system) - (before.user + before.system)) / took,
                       "applied_s": _applied(config, proc, watch)}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    return figures


def sampling_figures(count: int = 100, rounds: int = 20) -> dict[str, float]:
    """Microseconds per process: a kept statm fd (the rss limits), psutil's rss, pss, uss."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(8 << 20); time.sleep(60)"])
             for _ in range(count)]
    try:
        time.sleep(1.5)
        pids = [p.pid for p in procs]
        fds = [os.open(f"/proc/{pid}/statm", os.O_RDONLY) for pid in pids]

        def best(fn: object) -> float:
            times = []
            for _ in range(rounds):
                began = time.perf_counter()
                fn()  # type: ignore[operator]
                times.append(time.perf_counter() - began)
            return min(times) / count * 1e6
        figures = {
            "statm_us": best(lambda: [int(os.pread(fd, 128, 0).split()[1]) for fd in fds]),
            "psutil_rss_us": best(lambda: [psutil.Process(p).memory_info().rss for p in pids]),
            "psutil_pss_us": best(lambda: [psutil.Process(p).memory_full_info().pss for p in pids]),
            "psutil_uss_us": best(lambda: [psutil.Process(p).memory_full_info().uss for p in pids]),
        }
        for fd in fds:
            os.close(fd)
        return figures
    finally:
        for p in procs:
            p.kill()
            p.wait()


def render(off: dict[str, float], on: dict[str, float], sampling: dict[str, float]) -> str:
    rows = [("idle CPU of the master", "idle_cpu_pct", "{:.3f} %"), ("master RSS", "rss_mib", "{:.1f} MiB"),
            ("master PSS", "pss_mib", "{:.1f} MiB"), ("master threads", "threads", "{:.0f}"),
            ("one added instance: save (+ SIGHUP when not watching) -> running", "applied_s", "{:.3f} s")]
    lines = ["## The design's libraries: what they cost (bench/libraries.py)", "",
             f"Produced by `python -m bench.libraries --write-results`; {N} `sleep` instances, 2 cores, "
             f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| figure | watch = false (no observer) | watch = true (watchdog's observer) |", "|---|--:|--:|"]
    lines += [f"| {title} | {fmt.format(off[key])} | {fmt.format(on[key])} |" for title, key, fmt in rows]
    lines += ["", "Per process, reading memory (100 Python processes of 8 MiB; best of 20 rounds):", "",
              "| read | us per process |", "|---|--:|"]
    lines += [f"| {name} | {sampling[key]:.1f} |" for name, key in (
        ("kept `statm` fd (the `rss` limits)", "statm_us"), ("psutil `memory_info().rss`", "psutil_rss_us"),
        ("psutil `memory_full_info().pss` (`measure = \"pss\"`)", "psutil_pss_us"),
        ("psutil `memory_full_info().uss` (`measure = \"uss\"`)", "psutil_uss_us"))]
    lines += ["", "Without the watcher a save is applied only on SIGHUP; with it, 0.25 s after the save "
              "(the burst window), which is most of that figure."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.libraries", description=__doc__)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured (default 10)")
    parser.add_argument("--write-results", action="store_true", help=f"add the section to {RESULTS_MD.name}")
    args = parser.parse_args()
    text = render(master_figures(False, args.idle), master_figures(True, args.idle), sampling_figures())
    print(text)
    if args.write_results:
        write_section(RESULTS_MD, "libraries", text)


if __name__ == "__main__":
    main()
