"""`python -m bench.c_floor`: what this machine itself allows for starting N processes.

Issue 31 asks for 5,000 `/bin/sleep`s started under 3.5 s, "below the serial C floor, by
using both cores". This measures that floor here: a C program (compiled with `cc`) that
`posix_spawn`s N sleeps from one process (k = 1), or from k forked processes sharing them,
each waiting only for its own spawns. For each run: the wall time until the last
`posix_spawn` returned (the child has exec'd by then: glibc's posix_spawn is a vfork), and
the CPU the whole machine spent meanwhile (/proc/stat, every core, kernel included: the
children's exec and dynamic loading run on the other core while the parent spawns).

That second figure bounds any supervisor: a start cannot take less than
(machine CPU of the floor + the supervisor's own CPU) / cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import write_section

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
SOURCE = r"""
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
extern char **environ;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]), k = atoi(argv[2]);
    posix_spawnattr_t attr;
    setpgid(0, 0);  /* the sleeps join this group: the harness ends them all at once */
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, getpgrp());
    double t0 = now();
    for (int w = 0; w < k; w++) {
        if (fork() == 0) {
            for (int i = w; i < n; i += k) {
                char *args[] = {"/bin/sleep", "86399", 0};
                pid_t pid;
                if (posix_spawn(&pid, "/bin/sleep", 0, &attr, args, environ) != 0) _exit(1);
            }
            _exit(0);
        }
    }
    int failed = 0, status;
    for (int w = 0; w < k; w++) { wait(&status); failed |= status != 0; }
    printf("%.6f\n", now() - t0);
    fflush(stdout);
    pause();  /* the harness ends the group */
    return failed;
}
"""


def _busy() -> tuple[int, int]:
    """(busy jiffies, all jiffies) of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def compile_floor(folder: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench.c_floor needs a C compiler (Debian: apt-get install gcc)")
    source, binary = folder / "floor.c", folder / "floor"
    source.write_text(SOURCE)
    subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def one_run(binary: Path, n: int, k: int) -> tuple[float, float]:
    """(wall seconds, machine CPU seconds) for N sleeps from k spawning processes."""
    hz = os.sysconf("SC_CLK_TCK")
    before = _busy()
    proc = subprocess.Popen([str(binary), str(n), str(k)], stdout=subprocess.PIPE, text=True)
    try:
        wall = float(proc.stdout.readline())
        after = _busy()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return wall, (after[0] - before[0]) / hz


def measure(n: int, ks: list[int], reps: int) -> dict[int, list[tuple[float, float]]]:
    results: dict[int, list[tuple[float, float]]] = {k: [] for k in ks}
    with tempfile.TemporaryDirectory(prefix="orch-bench-cfloor-") as tmp:
        binary = compile_floor(Path(tmp))
        for _ in range(reps):
            for k in ks:  # interleaved, so that a noisy minute hits every k alike
                results[k].append(one_run(binary, n, k))
                time.sleep(1.0)  # the killed sleeps are reaped and freed
    return results


def render(n: int, results: dict[int, list[tuple[float, float]]]) -> str:
    cores = os.cpu_count() or 1
    lines = [
        f"## The machine's own floor: {n:,} `/bin/sleep`s from C (`python -m bench.c_floor --n {n}`)",
        "",
        f"{cores} cores, load average {os.getloadavg()[0]:.1f} at the end; k processes share the "
        "`posix_spawn` calls; wall = until the last one returned; machine CPU = every core's busy time "
        "meanwhile (/proc/stat), kernel included. Median (min-max) of the repetitions.",
        "",
        "| spawning processes | wall s | machine CPU s | busy share of the cores | CPU per start, ms |",
        "|--:|--:|--:|--:|--:|",
    ]
    for k, runs in results.items():
        walls = sorted(w for w, _ in runs)
        cpus = sorted(c for _, c in runs)
        mid = len(runs) // 2
        share = cpus[mid] / (walls[mid] * cores) * 100
        lines.append(f"| {k} | {walls[mid]:.2f} ({walls[0]:.2f}-{walls[-1]:.2f}) | {cpus[mid]:.2f} "
                     f"({cpus[0]:.2f}-{cpus[-1]:.2f}) | {share:.0f} % | {cpus[mid] / n * 1000:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.c_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--k", default="1,2", help="spawning processes to compare, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.n, [int(k) for k in args.k.split(",")], args.reps)
    table = render(args.n, results)
    print(table)
    if args.write_results:
        write_section(RESULTS_MD, "c-floor", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
