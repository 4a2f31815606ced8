"""`python -m bench.tasks`: orch's task API (`orchestrator.tasks`, run by `orch up`) against RQ
(real `rq worker` processes) on one private redis-server, side by side in one run.

Two figures per setup, both end to end from the producer's side with a trivial task (a + b):
- round trip: one `put()` then `result()` at a time (RQ: `enqueue()` then the job's
  `latest_result(timeout=...)`, which blocks on the result stream): median and p90;
- throughput: N tasks put one by one, then every result awaited; tasks per second.
Each setup runs 2 workers. RQ's default worker forks a work horse per job; its SimpleWorker
runs jobs in the worker process itself (closer to what orch does): both are shown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

from .queues import start_redis, stop_master as stop

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
WORKERS = 2

JOBS = """
from orchestrator.tasks import TaskQueue
queue = TaskQueue({url!r})

@queue.task("bench", max_attempts=3)
def add(a, b):
    return a + b

def rq_add(a, b):
    return a + b
"""


def orch_fleet(url: str, folder: Path) -> Callable[[], None]:
    """An `orch up` master running WORKERS TaskWorkers on queue `bench`; returns a stopper."""
    (folder / "workers.toml").write_text(textwrap.dedent(f"""
    [workers.tasks]
    target = "orchestrator.tasks:TaskWorker"
    replicas = {WORKERS}
    preload = true
    kwargs = {{ url = "{url}", queues = ["bench"], imports = ["benchjobs"] }}
    """))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-q", "-c", "workers.toml"],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    import redis
    client = redis.Redis.from_url(url)
    wait(lambda: len(client.keys("tasks:bench:consumer:*")) >= WORKERS, proc, "orch task workers")
    return lambda: stop(proc)


def rq_fleet(url: str, folder: Path, simple: bool) -> Callable[[], None]:
    """WORKERS `rq worker` processes on queue `bench` (SimpleWorker: no fork per job)."""
    rq = str(Path(sys.executable).with_name("rq"))
    extra = ["-w", "rq.worker.SimpleWorker"] if simple else []
    procs = [subprocess.Popen([rq, "worker", "-u", url, "--path", str(folder), *extra, "bench"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for _ in range(WORKERS)]
    import redis
    from rq import Worker
    client = redis.Redis.from_url(url)
    wait(lambda: len(Worker.all(connection=client)) >= WORKERS, procs[0], "rq workers")

    def stop_all() -> None:
        for proc in procs:
            stop(proc)
    return stop_all


def wait(ready: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)



def orch_client(url: str) -> tuple[Callable[[int], Any], Callable[[Any], Any]]:
    """(put, result) for the orch task API."""
    import benchjobs
    return (lambda i: benchjobs.add.put(a=i, b=1)), (lambda job: job.result(timeout=30))


def rq_client(url: str) -> tuple[Callable[[int], Any], Callable[[Any], Any]]:
    """(enqueue, result) for RQ, with the same function."""
    import benchjobs
    import redis
    from rq import Queue
    queue = Queue("bench", connection=redis.Redis.from_url(url))

    def result(job: Any) -> Any:
        found = job.latest_result(timeout=30)
        if found is None:
            raise TimeoutError(job.id)
        return found.return_value
    return (lambda i: queue.enqueue(benchjobs.rq_add, i, 1)), result


def measure(url: str, put: Callable[[int], Any], result: Callable[[Any], Any], trips: int,
            tasks: int) -> tuple[list[float], float, float]:
    """Round-trip seconds of `trips` sequential calls, tasks/s of `tasks` put then awaited,
    and Redis commands per task in that throughput trial (every client's)."""
    import redis
    server = redis.Redis.from_url(url)
    for i in range(3):  # warm-up: connections, imports, the workers' first job
        assert result(put(i)) == i + 1
    rounds = []
    for i in range(trips):
        started = time.perf_counter()
        assert result(put(i)) == i + 1
        rounds.append(time.perf_counter() - started)
    commands = server.info("stats")["total_commands_processed"]
    started = time.perf_counter()
    jobs = [put(i) for i in range(tasks)]
    for i, job in enumerate(jobs):
        assert result(job) == i + 1
    rate = tasks / (time.perf_counter() - started)
    return rounds, rate, (server.info("stats")["total_commands_processed"] - commands - 2) / tasks


SETUPS = {"orch tasks": (orch_fleet, orch_client),
          "rq SimpleWorker": (lambda u, f: rq_fleet(u, f, True), rq_client),
          "rq worker (fork per job)": (lambda u, f: rq_fleet(u, f, False), rq_client)}


def run(trips: int, tasks: int, reps: int, log: Callable[[str], None]) -> dict[str, dict[str, list]]:
    """Every setup `reps` times, interleaved; per setup the round trips and throughputs."""
    out: dict[str, dict[str, list]] = {k: {"rounds": [], "rates": [], "commands": []} for k in SETUPS}
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as tmp:
        folder = Path(tmp)
        server, url = start_redis(folder)
        (folder / "benchjobs.py").write_text(JOBS.format(url=url))
        sys.path.insert(0, str(folder))
        try:
            for rep in range(reps):
                for name, (fleet, client) in SETUPS.items():
                    stopper = fleet(url, folder)
                    try:
                        count = tasks if "fork" not in name else max(50, tasks // 5)
                        rounds, rate, commands = measure(url, *client(url), trips, count)
                    finally:
                        stopper()
                    out[name]["rounds"] += rounds
                    out[name]["rates"].append(rate)
                    out[name]["commands"].append(commands)
                    log(f"rep {rep + 1}: {name}: round trip median {statistics.median(rounds) * 1e3:.1f} ms, "
                        f"{rate:,.0f} tasks/s ({count} tasks), {commands:.1f} Redis commands/task")
        finally:
            sys.path.remove(str(folder))
            server.kill()
            server.wait()
    return out


def render(out: dict[str, dict[str, list]], trips: int, tasks: int, reps: int) -> str:
    """The Markdown section for RESULTS.md."""
    rows = []
    for name, data in out.items():
        rounds = sorted(data["rounds"])
        p90 = rounds[int(len(rounds) * 0.9) - 1]
        rows.append(f"| {name} | {statistics.median(rounds) * 1e3:.1f} ms | {p90 * 1e3:.1f} ms "
                    f"| {statistics.median(data['rates']):,.0f} tasks/s "
                    f"({min(data['rates']):,.0f}–{max(data['rates']):,.0f}) "
                    f"| {statistics.median(data['commands']):.1f} |")
    return "\n".join([
        "## Task API (orchestrator.tasks) vs RQ", "",
        f"Produced by `python -m bench.tasks --trips {trips} --tasks {tasks} --reps {reps}` on "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end: other work shared",
        f"the machine). One private redis-server; {WORKERS} workers per setup; a trivial task (a + b).",
        f"Round trip: {trips} sequential put() -> result() per repetition (RQ: enqueue() then",
        "`latest_result(timeout=...)`). Throughput: the tasks put one by one, then every result",
        "awaited, end to end from the producer (the fork-per-job RQ worker gets a fifth of the",
        f"tasks, at least 50, to keep the run short). Medians over {reps} interleaved repetitions.", "",
        "Redis commands per task counts every client's commands during the throughput trial",
        "(producer, workers, result waits): the work each system asks of the server per task.", "",
        "| setup | round trip median | p90 | throughput | Redis commands/task |",
        "|---|--:|--:|--:|--:|", *rows, "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=50, help="sequential round trips per repetition")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per throughput trial")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--write-results", action="store_true", help=f"rewrite the section in {RESULTS_MD.name}")
    args = parser.parse_args(argv)
    out = run(args.trips, args.tasks, args.reps, lambda line: print(line, file=sys.stderr, flush=True))
    section = render(out, args.trips, args.tasks, args.reps)
    print(section)
    if args.write_results:
        from .report import write_section
        write_section(RESULTS_MD, "tasks", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
