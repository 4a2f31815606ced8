"""`orch status` as a table (pure: status reply in, text out)."""

from __future__ import annotations

import time
from typing import Any

from ..units import format_duration, format_size
from .probe_view import probe_summary
from .scale_view import render_cells


def _versions(reply: dict[str, Any]) -> str:
    """Which orch the master runs, and its helpers when an upgrade left them on another."""
    versions = reply.get("versions") or {"master": reply.get("version", "?")}
    text = f"orch {versions['master']}"
    olds = versions.get("old_spawners")  # upgrades across spawner protocols: older spawners run beside
    if olds:
        text += f" (spawner: orch {versions.get('spawner')}" + "".join(
            f", and spawner {old['pid']} of orch {old['version']} for its {old['instances']} instances"
            for old in olds) + " until they exit)"
    elif versions.get("spawner") and versions["spawner"] != versions["master"]:
        text += f" (spawner and zygotes: orch {versions['spawner']} until replaced)"
    if versions.get("upgrades"):
        text += f", upgraded in place {versions['upgrades']}x (last from {versions.get('previous')})"
    return text


def render_status(reply: dict[str, Any], disk_error: str | None = None) -> str:
    """The status table; `disk_error` says why the config file on disk does not load now."""
    applied = reply.get("applied_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(applied)) if applied else "never"
    lines = [f"orch {reply['name']} (master {reply['pid']}) config {reply['config']}",
             f"last applied {when}, {reply.get('reloads', 0)} reloads; {_versions(reply)}"]
    if reply.get("last_reload_error"):
        lines.append("LAST RELOAD FAILED (still running the previous config):")
        lines += ["  " + line for line in reply["last_reload_error"].splitlines()]
    for roll in reply.get("rollouts") or []:
        lines.append(f"rolling restart of {roll['label']}: {roll['done']} of {roll['total']} done, "
                     f"restarting {', '.join(roll['restarting']) or '-'}")
    if disk_error and disk_error != reply.get("last_reload_error"):
        lines.append("THE CONFIG ON DISK DOES NOT LOAD (a reload now would change nothing):")
        lines += ["  " + line for line in disk_error.splitlines()]
    rows = [("NAME", "TEMPLATE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "RSS", "CPU%", "PROCS")]
    for inst in reply["instances"]:
        last = inst.get("last_exit") or "-"
        if inst.get("reason"):
            last += f" ({inst['reason']})"
        rows.append((
            inst["name"], inst["template"], inst["state"] + (" (held)" if inst.get("held") else ""),
            str(inst["pid"] or "-"),
            format_duration(inst["uptime"]) if inst.get("uptime") is not None else "-",
            str(inst["restarts"]), last,
            format_size(inst["rss"]) if inst.get("rss") else "-",
            f"{inst['cpu']:.1f}" if inst.get("cpu") is not None else "-",
            str(inst["processes"]) if inst.get("processes") else "-",
        ))
    users = [inst.get("user") or "" for inst in reply["instances"]]
    if any(users):  # `user =`: a column only when some instance runs as another user
        rows = [row[:2] + (user,) + row[2:] for row, user in zip(rows, ["USER"] + [u or "-" for u in users])]
    measured = [_measured(inst) for inst in reply["instances"]]
    if any(measured):  # memory.measure = "pss" or "uss": what the limits count, beside RSS
        rows = [row + (m,) for row, m in zip(rows, ["LIMITED ON"] + measured)]
    probed = [probe_summary(inst) for inst in reply["instances"]]
    if any(probed):  # health probes: a column only when some template has them
        rows = [row + (p or "-",) for row, p in zip(rows, ["PROBES"] + probed)]
    texts = [_status_text(inst) for inst in reply["instances"]]
    if any(texts):  # the worker's own words (STATUS=): a column only when some worker speaks
        rows = [row + (text,) for row, text in zip(rows, ["STATUS"] + texts)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    counts: dict[str, int] = {}
    for inst in reply["instances"]:
        counts[inst["state"]] = counts.get(inst["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no instances")
    lines += [_unserved(sock) for sock in reply.get("sockets", []) if sock.get("unserved_for") is not None]
    lines += render_cells(reply.get("scaling"))  # autoscaled cells: replicas, backlog, last decision
    return "\n".join(lines)


def _unserved(sock: dict[str, Any]) -> str:
    """A held socket no running instance serves: its connections wait, or are reset."""
    head = f"socket {sock['name']} ({sock['address']}): no running instance for {format_duration(sock['unserved_for'])}"
    if sock.get("resetting"):
        return f"{head}; new connections are reset ({sock.get('reset', 0)} so far)"
    return f"{head}; connections wait in its backlog"


def _measured(inst: dict[str, Any]) -> str:
    """"PSS 12.3M" for an instance whose memory limits count PSS or USS, else ""."""
    measure = inst.get("memory_measure") or "rss"
    if measure == "rss":
        return ""
    value = inst.get("measured")
    return f"{measure.upper()} {format_size(value)}" if value else measure.upper()


def _status_text(inst: dict[str, Any]) -> str:
    """The worker's last STATUS= text on one line, cut to keep the table readable."""
    text = " ".join((inst.get("notify_status") or "").split())
    return text if len(text) <= 80 else text[:77] + "..."
