"""The scenarios. One *session* is one daemon lifecycle on a fresh fleet of N sleeps and
measures, in order: start, idle (first repetition only), status, crash, reload-one,
reload-10% and shutdown. Every time comes from /proc (see procfs.py), never from the tool.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import fleet as fleets
from . import procfs
from .procfs import pss, quiet, Scanner, Snapshot, cpu_percent
from .tools import Tool, Unsupported, tool_class

# key -> (unit, what it measures). Times are in seconds, shown in ms.
FIGURES: dict[str, tuple[str, str]] = {
    "start": ("s", "launch daemon -> all N children exist"),
    "harness_cpu": ("%", "the harness's own CPU while it timed start, % of one core"),
    "idle_cpu": ("%", "daemon + helpers CPU while idle, % of one core"),
    "idle_rss": ("MiB", "daemon + helpers RSS while idle"),
    "idle_pss": ("MiB", "daemon + helpers PSS while idle (pages shared between them counted once)"),
    "status": ("s", "one full status query"),
    "crash": ("s", "SIGKILL one child -> its replacement exists"),
    "crash_p99": ("s", "crash, 99th percentile over the kills (nearest rank: with 50 kills, the worst)"),
    "reload_one": ("s", "edit one command -> new process runs"),
    "reload_one_collateral": ("count", "other children restarted by reload-one"),
    "reload_10pct": ("s", "add N/10 + remove N/10 -> converged"),
    "reload_10pct_collateral": ("count", "untouched children restarted by reload-10%"),
    "shutdown": ("s", "SIGTERM master -> master and all children gone"),
    "py_start_plain": ("s", "Python workers, preload=false: launch -> all ran init()"),
    "py_start_preload": ("s", "Python workers, preload=true: launch -> all ran init()"),
    "log_cpu": ("%", "daemon + helpers CPU, children each logging 1 MB/s"),
    "limits_cpu": ("%", "daemon + helpers CPU while idle, a memory limit on every instance "
                        "(check_interval 1s; orch, and the floor's bare statm loop)"),
    "log_rate": ("MB/s", "log bytes written to files, all children together"),
    "start_matrix": ("s", "start, the fleet as one template times an N-cell matrix (orch; the floor's "
                          "start is the same N sleeps)"),
    "reload_one_matrix": ("s", "reload-one in the matrix fleet: one cell's command edited (orch)"),
    "reload_save": ("s", "a save alone, no SIGHUP: that cell edited again -> new process runs "
                         "(orch's watcher; a save is applied once the 250 ms burst window is quiet)"),
}
FLEET_KEYS = ["start", "harness_cpu", "idle_cpu", "idle_rss", "idle_pss", "status", "crash", "crash_p99", "reload_one",
              "reload_one_collateral", "reload_10pct", "reload_10pct_collateral", "shutdown"]
MATRIX_KEYS = ["start_matrix", "reload_one_matrix", "reload_save"]
ORCH_KEYS = ["py_start_plain", "py_start_preload", "log_cpu", "log_rate"]
FLOOR_SKIPS = {"idle_cpu": "the floor is a blocking waitpid(): nothing to measure",
               "idle_rss": "the floor is a blocking waitpid(): nothing to measure",
               "idle_pss": "the floor is a blocking waitpid(): nothing to measure"}

POLL = 0.005        # /proc poll interval (s) for start, reload, shutdown
CRASH_POLL = 0.001  # and for crash replacement
SETTLE = 1.0        # pause after start / before counting collateral restarts (s)
QUIET_WINDOW = 1.0  # idle windows begin once the daemon used under 1 % of a core over this
# long, or Options.quiet_cap after the settle: a window must not time the start's tail
STATUS_QUERIES = 5  # status queries per repetition (the figure is their median)


@dataclass
class Options:
    """What to run and for how long."""

    sizes: list[int]
    tools: list[str]
    reps: int = 3
    idle_seconds: float = 20.0
    quiet_cap: float = 15.0      # see QUIET_WINDOW
    crash_kills: int = 50
    py_workers: int = 100
    log_writers: int = 50
    log_seconds: float = 10.0
    slow_seconds: float = 10.0   # a step whose first sample took longer is not repeated
    step_cap: float = 120.0      # a step still waiting after this long is "over the cap"
    budget_seconds: float = 560.0
    deadline: float = field(default=0.0, init=False)


@dataclass
class Figure:
    """The samples of one figure for one tool at one N, or why there are none."""

    tool: str
    key: str
    n: int
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    note: str | None = None     # why there are fewer samples than repetitions

    @property
    def unit(self) -> str:
        return FIGURES[self.key][0]

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "key": self.key, "n": self.n, "unit": self.unit,
                "samples": self.samples, "median": self.median,
                "min": min(self.samples) if self.samples else None,
                "max": max(self.samples) if self.samples else None,
                "na": None if self.samples else (self.errors[0] if self.errors else "not measured"),
                "errors": self.errors, "note": self.note}


class Results:
    """Every figure, keyed by (tool, key, n)."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str, int], Figure] = {}

    def get(self, tool: str, key: str, n: int) -> Figure:
        return self.figures.setdefault((tool, key, n), Figure(tool, key, n))

    def add(self, tool: str, key: str, n: int, value: float | list[float]) -> None:
        self.get(tool, key, n).samples.extend(value if isinstance(value, list) else [value])

    def fail(self, tool: str, key: str, n: int, reason: str) -> None:
        errors = self.get(tool, key, n).errors
        if reason not in errors:
            errors.append(reason)


class Session:
    """Records figures of one tool at one N; a failed step records n/a and the run goes on."""

    def __init__(self, results: Results, tool: Tool, n: int, opts: Options, rep: int = 0):
        self.results, self.tool, self.n, self.opts, self.rep = results, tool, n, opts, rep
        self.deadline = opts.deadline

    def slow(self, keys: list[str]) -> bool:
        """True when a later repetition should skip this step: its first sample was slow."""
        if self.rep == 0:
            return False
        figures = [self.results.get(self.tool.name, key, self.n) for key in keys]
        if any(f.unit == "s" and f.samples and f.samples[0] > self.opts.slow_seconds for f in figures):
            for f in figures:
                f.note = f"measured once: the first sample took over {self.opts.slow_seconds:g} s"
            return True
        return False

    def timeout(self, wanted: float) -> float:
        """`wanted`, cut so that a hanging step cannot overrun the run's budget by much."""
        return max(5.0, min(wanted, self.opts.step_cap, self.deadline - time.monotonic()))

    def measure(self, keys: list[str], fn: Callable[[], dict[str, float | list[float]]]) -> bool:
        """Run fn (returning {key: value}); on failure every key gets the reason."""
        if self.slow(keys):
            return False
        if time.monotonic() > self.deadline:
            self.skip(keys, budget_spent(self.opts))
            return False
        try:
            values = fn()
        except Unsupported as exc:
            reason = f"not supported: {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure is a recorded n/a
            reason = f"{type(exc).__name__}: {exc}".strip()
            if not isinstance(exc, (TimeoutError, RuntimeError)):
                reason += " @ " + traceback.extract_tb(exc.__traceback__)[-1].name
            log = self.tool.daemon_log().strip().splitlines()
            if log and not isinstance(exc, RuntimeError):
                reason += f" (daemon log: {log[-1][-160:]})"
        else:
            for key, value in values.items():
                self.results.add(self.tool.name, key, self.n, value)
            return True
        for key in keys:
            self.results.fail(self.tool.name, key, self.n, reason)
        return False

    def skip(self, keys: list[str], reason: str) -> None:
        for key in keys:
            self.results.fail(self.tool.name, key, self.n, reason)


# -- helpers ------------------------------------------------------------------------------

def _alive(snap: Snapshot, tokens: list[str]) -> bool:
    present = snap.by_token()
    return all(t in present for t in tokens)


def _pids(snap: Snapshot, names: list[str], fleet: fleets.Fleet) -> dict[str, frozenset[int]]:
    present = snap.by_token()
    by_name = fleet.by_name()
    return {name: frozenset(present.get(by_name[name].token, ())) for name in names}


def launch(tool: Tool, fleet: fleets.Fleet, timeout: float) -> float:
    """Start the daemon; seconds until every instance's process exists (exec'd) under it."""
    return launch_measured(tool, fleet, timeout)[0]


def launch_measured(tool: Tool, fleet: fleets.Fleet, timeout: float) -> tuple[float, float]:
    """`launch`, and the harness's own CPU meanwhile (% of one core)."""
    cpu_before = _own_cpu()
    scanner = Scanner(fleet.tag)
    scanner.snapshot()  # cache what already runs, so polls read only new PIDs
    tokens = list(fleet.tokens())
    start = time.perf_counter()
    scanner.root = tool.start()

    def done(snap: Snapshot) -> bool:
        if tool.exited():
            raise RuntimeError(f"daemon exited: {tool.daemon_log()[-200:]}")
        return _alive(snap, tokens)

    scanner.wait(done, timeout, POLL, f"all {len(tokens)} children")
    elapsed = time.perf_counter() - start
    return elapsed, 100.0 * (_own_cpu() - cpu_before) / elapsed


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the fleet session --------------------------------------------------------------------

def fleet_session(results: Results, tool: Tool, n: int, rep: int, opts: Options, workdir: Path) -> None:
    """One daemon lifecycle at N; every step records its figures or its n/a."""
    s = Session(results, tool, n, opts, rep)
    state = {"fleet": fleets.sleep_fleet(n)}
    tool.setup(workdir)
    try:
        def start() -> dict[str, float]:
            tool.write_config(state["fleet"])
            elapsed, harness = launch_measured(tool, state["fleet"], s.timeout(30 + 0.1 * n))
            return {"start": elapsed, "harness_cpu": harness}

        def crash() -> dict[str, list[float]]:
            names = [i.name for i in state["fleet"].instances]
            victims = names[:: max(1, n // opts.crash_kills)][: opts.crash_kills]
            times = _crashes(tool, state["fleet"], victims, s.timeout(10.0))
            return {"crash": times, "crash_p99": percentile(times, 99)}

        if not s.measure(["start", "harness_cpu"], start):
            errors = results.get(tool.name, "start", n).errors
            if errors:
                s.skip(FLEET_KEYS[2:], "start failed: " + errors[-1])
            # else not repeated (the first start took over slow_seconds): the first
            # repetition's figures stand, and there is no daemon to measure
            return
        time.sleep(SETTLE)
        if rep == 0:
            if tool.name == "floor":
                for key, why in FLOOR_SKIPS.items():
                    s.skip([key], f"not measured: {why}")
            else:
                s.measure(["idle_cpu", "idle_rss", "idle_pss"],
                          lambda: _idle(tool, state["fleet"], opts))
            s.measure(["crash"], crash)
        s.measure(["status"], lambda: {"status": _status_queries(tool)})
        s.measure(["reload_one", "reload_one_collateral"],
                  lambda: _reload_one(tool, state, s.timeout(30 + 0.1 * n)))
        s.measure(["reload_10pct", "reload_10pct_collateral"],
                  lambda: _reload_churn(tool, state, s.timeout(30 + 0.1 * n)))
        s.measure(["shutdown"], lambda: {"shutdown": _shutdown(tool, state["fleet"], s.timeout(60.0))})
    finally:
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def percentile(samples: list[float], p: float) -> float:
    """The nearest-rank p-th percentile (no interpolation: always one of the samples)."""
    ordered = sorted(samples)
    return ordered[max(0, -(-len(ordered) * p // 100) - 1)]


def matrix_session(results: Results, tool: Tool, n: int, rep: int, opts: Options, workdir: Path) -> None:
    """orch on the matrix fleet: start, then reload-one (one cell's command edited)."""
    s = Session(results, tool, n, opts, rep)
    state = {"fleet": fleets.matrix_fleet(n)}
    tool.setup(workdir)
    try:
        def start() -> dict[str, float]:
            tool.write_config(state["fleet"])
            return {"start_matrix": launch(tool, state["fleet"], s.timeout(30 + 0.1 * n))}

        if s.measure(["start_matrix"], start):
            time.sleep(SETTLE)
            s.measure(["reload_one_matrix"], lambda: {
                "reload_one_matrix": _reload_one(tool, state, s.timeout(30 + 0.1 * n))["reload_one"]})
            time.sleep(SETTLE)
            s.measure(["reload_save"], lambda: {
                "reload_save": _reload_one(tool, state, s.timeout(30 + 0.1 * n), save_only=True)["reload_one"]})
    finally:
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _status_queries(tool: Tool) -> list[float]:
    """Wall times of STATUS_QUERIES status queries in a row (fewer once they took 10 s): one
    query is a single draw of a shared machine's scheduling noise, which at 5,000 rows is
    larger than the difference between two builds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < STATUS_QUERIES and (not times or time.perf_counter() - start < 10.0):
        times.append(_timed(tool.status))
    return times


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _idle(tool: Tool, fleet: fleets.Fleet, opts: Options) -> dict[str, float]:
    helpers = Scanner(fleet.tag, tool.pid).snapshot().helpers()
    quiet(helpers, opts.quiet_cap, QUIET_WINDOW)
    window = opts.idle_seconds
    cpu, rss = cpu_percent(helpers, window)
    return {"idle_cpu": cpu, "idle_rss": rss / 2**20, "idle_pss": pss(helpers) / 2**20}


def _crashes(tool: Tool, fleet: fleets.Fleet, victims: list[str], timeout: float) -> list[float]:
    """SIGKILL each victim once (distinct instances: no tool applies crash backoff)."""
    times = []
    by_name = fleet.by_name()
    for name in victims:
        tok = by_name[name].token
        (old,) = Scanner(fleet.tag, tool.pid).snapshot().by_token()[tok]
        since = procfs.last_pid()
        start = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        procfs.wait_changed({tok}, set(), since, timeout, CRASH_POLL)
        times.append(time.perf_counter() - start)
        time.sleep(0.1)
    return times


def _reload(tool: Tool, old: fleets.Fleet, new: fleets.Fleet, timeout: float,
            save_only: bool = False) -> tuple[float, int]:
    """Apply `new` (`save_only`: write the config and let the tool find it); (seconds until
    /proc matches it, restarts among the untouched)."""
    old_tokens, new_tokens = old.tokens(), new.tokens()  # once: each call builds a dict of N
    gone = [t for t in old_tokens if t not in new_tokens]
    wanted = [t for t in new_tokens if t not in old_tokens]
    kept = sorted(set(old.by_name()) & set(new.by_name()) - {new_tokens[t].name for t in wanted})
    scanner = Scanner(new.tag, tool.pid)
    snap = scanner.snapshot()
    before = _pids(snap, kept, old)
    present = snap.by_token()
    ending = {pid for t in gone for pid in present.get(t, ())}
    since = procfs.last_pid()
    start = time.perf_counter()
    if save_only:
        tool.write_config(new)
    else:
        tool.apply_reload(new)
    procfs.wait_changed(set(wanted), ending, since, timeout, POLL)
    elapsed = time.perf_counter() - start
    time.sleep(SETTLE)
    after = _pids(scanner.snapshot(), kept, old)
    return elapsed, sum(1 for name in kept if after[name] != before[name])


def _reload_one(tool: Tool, state: dict[str, fleets.Fleet], timeout: float,
                save_only: bool = False) -> dict[str, float]:
    old = state["fleet"]
    state["fleet"] = new = fleets.change_one(old, old.instances[-1].name)
    elapsed, collateral = _reload(tool, old, new, timeout, save_only)
    return {"reload_one": elapsed, "reload_one_collateral": collateral}


def _reload_churn(tool: Tool, state: dict[str, fleets.Fleet], timeout: float) -> dict[str, float]:
    old = state["fleet"]
    state["fleet"] = new = fleets.churn(old, max(1, len(old.instances) // 10))[0]
    elapsed, collateral = _reload(tool, old, new, timeout)
    return {"reload_10pct": elapsed, "reload_10pct_collateral": collateral}


def _shutdown(tool: Tool, fleet: fleets.Fleet, timeout: float) -> float:
    scanner = Scanner(fleet.tag, tool.pid)
    scanner.snapshot()
    start = time.perf_counter()
    tool.stop()
    scanner.wait(lambda snap: tool.exited() and not snap.tagged(), timeout, POLL, "master and children gone")
    return time.perf_counter() - start


# -- orch-only sessions -------------------------------------------------------------------

def python_start_session(results: Results, tool: Tool, count: int, preload: bool, rep: int, opts: Options,
                         workdir: Path) -> None:
    """Launch `count` Python workers; seconds until each has run init() (touched its file)."""
    key = "py_start_preload" if preload else "py_start_plain"
    s = Session(results, tool, count, opts, rep)
    tool.setup(workdir)
    try:
        def run() -> dict[str, float]:
            (workdir / f"{fleets.WORKER_MODULE}.py").write_text(fleets.WORKER_SOURCE)
            ready = workdir / fleets.READY_DIR
            ready.mkdir()
            fleet = fleets.worker_fleet(count, preload)
            tool.write_config(fleet)
            start = time.perf_counter()
            tool.start()
            deadline = start + s.timeout(30 + 0.3 * count)
            while len(os.listdir(ready)) < count:
                if tool.exited():
                    raise RuntimeError(f"daemon exited: {tool.daemon_log()[-200:]}")
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{len(os.listdir(ready))}/{count} workers ready after {deadline - start:.0f}s")
                time.sleep(POLL)
            return {key: time.perf_counter() - start}
        s.measure([key], run)
    finally:
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def log_session(results: Results, tool: Tool, count: int, opts: Options, workdir: Path) -> None:
    """`count` children each writing 1 MB/s to stdout: the daemon's CPU and the bytes logged."""
    s = Session(results, tool, count, opts)
    tool.setup(workdir)
    try:
        def run() -> dict[str, float]:
            script = workdir / "logwriter.py"
            script.write_text(fleets.WRITER_SOURCE)
            fleet = fleets.writer_fleet(count, script, 1_000_000)
            tool.write_config(fleet)
            launch(tool, fleet, s.timeout(30 + 0.2 * count))
            time.sleep(SETTLE)
            helpers = Scanner(fleet.tag, tool.pid).snapshot().helpers()
            before = _bytes_under(workdir)
            start = time.perf_counter()
            cpu, _ = cpu_percent(helpers, opts.log_seconds)
            rate = (_bytes_under(workdir) - before) / (time.perf_counter() - start) / 1e6
            return {"log_cpu": cpu, "log_rate": rate}
        s.measure(["log_cpu", "log_rate"], run)
    finally:
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def limits_session(results: Results, tool: Tool, n: int, opts: Options, workdir: Path) -> None:
    """N sleeps, each with a memory limit: the daemon's CPU while it samples them all."""
    s = Session(results, tool, n, opts)
    fleet = fleets.sleep_fleet(n)
    tool.setup(workdir)
    tool.memory_limits = True
    try:
        def run() -> dict[str, float]:
            tool.write_config(fleet)
            launch(tool, fleet, s.timeout(30 + 0.1 * n))
            time.sleep(SETTLE)
            helpers = Scanner(fleet.tag, tool.pid).snapshot().helpers()
            quiet(helpers, opts.quiet_cap, QUIET_WINDOW)
            cpu, _ = cpu_percent(helpers, opts.idle_seconds)
            return {"limits_cpu": cpu}
        s.measure(["limits_cpu"], run)
    finally:
        tool.memory_limits = False
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _bytes_under(folder: Path) -> int:
    """Bytes in the log files under `folder` (rotated ones included)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if ".log" in name:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


# -- the whole run ------------------------------------------------------------------------

def budget_spent(opts: Options) -> str:
    return f"skipped: run time budget ({opts.budget_seconds:g} s) spent"


def run(opts: Options, progress: Callable[[str], None]) -> Results:
    """Every session for every tool: the smallest N, then the orch-only scenarios, then the
    other sizes; tools interleaved within a repetition so drifts hit them alike."""
    results = Results()
    tools = {name: tool_class(name)() for name in opts.tools}
    missing = {name: tool.missing() for name, tool in tools.items()}
    opts.deadline = time.monotonic() + opts.budget_seconds
    root = Path(tempfile.mkdtemp(prefix="orchbench-"))

    def attempt(name: str, keys: list[str], n: int, label: str, session: Callable[[], None]) -> None:
        if missing[name]:
            reason = f"tool missing: {missing[name]}"
        elif time.monotonic() > opts.deadline:
            reason = budget_spent(opts)
        else:
            progress(f"{name:<11} {label}")
            try:
                session()
                return
            except Exception as exc:  # noqa: BLE001 - a bench bug must not lose the other tools
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                reason = (f"session error: {type(exc).__name__}: {exc} "
                          f"@ {os.path.basename(frame.filename)}:{frame.lineno} {frame.name}")
        for key in keys:
            results.fail(name, key, n, reason)

    def fleet_sessions(n: int) -> None:
        for rep in range(opts.reps):
            for name, tool in tools.items():
                attempt(name, FLEET_KEYS, n, f"N={n} rep {rep + 1}/{opts.reps}",
                        lambda: fleet_session(results, tool, n, rep, opts, root / f"{name}-{n}-{rep}"))
            if "orch" in tools:
                attempt("orch", MATRIX_KEYS, n, f"N={n} matrix fleet rep {rep + 1}/{opts.reps}",
                        lambda: matrix_session(results, tools["orch"], n, rep, opts, root / f"matrix-{n}-{rep}"))
        for name, tool in tools.items():
            if name != "orch":
                for key in MATRIX_KEYS:
                    results.fail(name, key, n, "orch-only scenario (other tools' configs have no matrices)")
            if name not in ("orch", "floor"):
                results.fail(name, "limits_cpu", n, "orch-only scenario (and the floor's sampling loop)")
            else:
                attempt(name, ["limits_cpu"], n, f"N={n} memory limits on every instance",
                        lambda: limits_session(results, tool, n, opts, root / f"limits-{n}"))

    def orch_only() -> None:
        for name in tools:
            if name != "orch":
                for key in ORCH_KEYS:
                    results.fail(name, key, opts.py_workers if key.startswith("py_") else opts.log_writers,
                                 "orch-only scenario")
        if "orch" not in tools:
            return
        orch = tools["orch"]
        for rep in range(opts.reps):
            for preload in (False, True):
                key = "py_start_preload" if preload else "py_start_plain"
                attempt("orch", [key], opts.py_workers,
                        f"{opts.py_workers} Python workers, preload={preload}, rep {rep + 1}/{opts.reps}",
                        lambda: python_start_session(results, orch, opts.py_workers, preload, rep, opts,
                                                     root / f"py-{preload}-{rep}"))
        attempt("orch", ["log_cpu", "log_rate"], opts.log_writers, f"{opts.log_writers} children logging 1 MB/s",
                lambda: log_session(results, orch, opts.log_writers, opts, root / "logs"))

    try:
        sizes = sorted(opts.sizes)
        fleet_sessions(sizes[0])
        orch_only()
        for n in sizes[1:]:
            fleet_sessions(n)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results
