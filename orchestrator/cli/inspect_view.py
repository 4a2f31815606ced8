"""`orch inspect NAME`: an instance's whole process tree as psutil sees it.

The master only says which processes are the instance's (its main process, their
descendants and the orphans the spawner attributed to it); this client reads each one with
psutil, so nothing here costs the master's loop: CPU % is sampled over INTERVAL here,
USS and PSS come from smaps (`memory_full_info`), which can take milliseconds per process.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from ..units import format_size

INTERVAL = 0.2  # seconds over which CPU % is measured


def gather(pids: list[int], interval: float = INTERVAL) -> list[dict[str, Any]]:
    """One row per live process of `pids`, parents before their children."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # starts the interval
            procs.append(proc)
        except psutil.Error:
            continue
    time.sleep(interval)
    rows = [row for row in (_row(proc) for proc in procs) if row is not None]
    return _tree_order(rows)


def _row(proc: psutil.Process) -> dict[str, Any] | None:
    try:
        with proc.oneshot():
            row: dict[str, Any] = {
                "pid": proc.pid, "ppid": proc.ppid(), "user": proc.username(), "state": proc.status(),
                "cpu_percent": proc.cpu_percent(None), "threads": proc.num_threads(),
                "cmdline": proc.cmdline(), "started": proc.create_time(),
            }
            row.update(_memory(proc))
            row["fds"] = _quiet(proc.num_fds)
            row["cwd"] = _quiet(proc.cwd)
            row["listening"], row["connected"] = _sockets(proc)
        return row
    except psutil.NoSuchProcess:
        return None


def _memory(proc: psutil.Process) -> dict[str, int | None]:
    try:
        full = proc.memory_full_info()
        return {"rss": full.rss, "uss": full.uss, "pss": getattr(full, "pss", None)}
    except psutil.AccessDenied:
        return {"rss": proc.memory_info().rss, "uss": None, "pss": None}


def _quiet(read: Any) -> Any:
    try:
        return read()
    except psutil.AccessDenied:
        return None


def _sockets(proc: psutil.Process) -> tuple[list[str], list[str]]:
    """Listening addresses, and connected ones as "local -> remote"."""
    listening, connected = [], []
    try:
        conns = proc.net_connections(kind="all")
    except psutil.AccessDenied:
        return [], []
    for conn in conns:
        local = _address(conn.laddr)
        if conn.status == psutil.CONN_LISTEN or (not conn.raddr and conn.status == psutil.CONN_NONE
                                                 and local and conn.type == 1 and conn.family == 1):
            listening.append(local)
        elif conn.raddr:
            connected.append(f"{local} -> {_address(conn.raddr)}")
    return sorted(set(listening)), sorted(connected)


def _address(addr: Any) -> str:
    if not addr:
        return ""
    if isinstance(addr, str):
        return f"unix:{addr}"
    host, port = addr.ip, addr.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tree_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Depth-first from the roots (processes whose parent is not in the list), with depth."""
    by_parent: dict[int, list[dict[str, Any]]] = {}
    pids = {row["pid"] for row in rows}
    for row in sorted(rows, key=lambda r: r["pid"]):
        by_parent.setdefault(row["ppid"], []).append(row)
    ordered: list[dict[str, Any]] = []

    def visit(row: dict[str, Any], depth: int) -> None:
        row["depth"] = depth
        ordered.append(row)
        for child in by_parent.get(row["pid"], []):
            visit(child, depth + 1)
    for row in sorted((r for r in rows if r["ppid"] not in pids), key=lambda r: r["pid"]):
        visit(row, 0)
    return ordered


def render(name: str, state: str, rows: list[dict[str, Any]]) -> str:
    """The tree as text: one line of figures per process, its details indented below."""
    lines = [f"{name}: {state}, {len(rows)} process{'es' if len(rows) != 1 else ''}"]
    table = [("PID", "PPID", "USER", "STATE", "CPU%", "RSS", "USS", "PSS", "THREADS", "FDS", "COMMAND")]
    for row in rows:
        table.append((
            "  " * row["depth"] + str(row["pid"]), str(row["ppid"]), str(row["user"]), row["state"],
            f"{row['cpu_percent']:.1f}", _size(row["rss"]), _size(row["uss"]), _size(row["pss"]),
            str(row["threads"]), "-" if row["fds"] is None else str(row["fds"]),
            " ".join(row["cmdline"])[:80] or "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    for row in rows:
        details = [f"cwd {row['cwd']}"] if row["cwd"] else []
        details += [f"listens on {a}" for a in row["listening"]]
        details += [f"connected {c}" for c in row["connected"][:10]]
        if len(row["connected"]) > 10:
            details.append(f"... and {len(row['connected']) - 10} more connections")
        lines += [f"  {row['pid']}: {d}" for d in details]
    return "\n".join(lines)


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)
