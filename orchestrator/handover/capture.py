"""The old master, as a record and the fds that go with it (see state.py and carry.py)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..spawn.request import CORE
from .state import build, instance_record, rollout_record


def capture(master: Any, conn: Any) -> tuple[dict[str, Any], list[int]]:
    """(record, fds to inherit) of a quiet master; `conn` is the control connection that asked
    for the upgrade (answered by the successor), None for the proof's copy."""
    keep: list[int] = []

    def kept(fd: int) -> int:
        keep.append(fd)
        return fd

    listeners, control = master.listeners, master.control
    clients = [c for c in control.connections if c.carriable and c is not conn]
    waiting = waiting_clients(master)
    fds = {
        "control": kept(control.sock.fileno()),
        "notify": kept(master.notify.sock.fileno()),
        "metrics": kept(master.metrics.sock.fileno()) if master.metrics is not None else None,
        "http": kept(master.dashboard.server.sock.fileno()) if master.dashboard is not None else None,
        "spawner": kept(master.spawner.fileno()),
        "lock": kept(master.lock.fd),
        "sockets": {key: kept(sock.fileno()) for key, sock in listeners.held.items()},
        "adopted": {name: kept(sock.fileno()) for name, sock in listeners.adopted.items()},
        "unix_files": {key: [str(path), inode] for key, (path, inode) in listeners._unix_files.items()},
        "retired": sorted(listeners.retired),
        "clients": [kept(c.sock.fileno()) for c in clients if not (c.outbuf or c.inbuf)],
        # an answer not all sent yet (a slow reader), a request not all read: carried on
        "partial": [{"fd": kept(c.sock.fileno()), "unsent": c.outbuf.decode("latin-1"),
                     "unread": c.inbuf.decode("latin-1")} for c in clients if c.outbuf or c.inbuf],
        "feeds": [{"fd": kept(c.sock.fileno()), **c.stream.handover()} for c in streams(master)],
        "waiting": [{"fd": kept(c.sock.fileno()), "waits": [master.control.handler.waits.handover(w) for w in found]}
                    for c, found in waiting.items() if c is not conn],
        "asked": [{"fd": kept(c.sock.fileno()), "requests": c.owed_requests()} for c in asked_again(master)],
        "pages": [{**{k: v for k, v in page.items() if k != "sock"}, "fd": kept(page["sock"].fileno())}
                  for page in (master.dashboard.handover() if master.dashboard is not None else [])],
    }
    pipes = [{"fd": kept(fd), "name": name, "stderr": stderr}
             for fd, name, stderr in output_pipes(master.supervisor.launcher)]
    spawner = master.spawner
    upgrader, reloader = master.upgrader, master.reloader
    onto_new = {inst.name for rollout in master.supervisor.rolling.rollouts
                for inst, spec in rollout.waiting if spec is not None}  # a rollout's, not restarted yet
    from .specs import SpecWriter
    writer = SpecWriter()
    record = build(
        orch=__version__, config=str(master.config.path), quiet=master.supervisor.echo is None,
        master={"started": master.started, "applied_at": master.applied_at, "reloads": reloader.count,
                "reload_failures": reloader.failures, "last_reload_seconds": reloader.last_seconds,
                "queued_reload": queued_reload(master),
                "applied_sources": {name: data.decode("latin-1") for name, data in
                                    (reloader.applied_sources or {}).items()} or None,
                # the next token too: the spawner keeps the old tokens' zygotes (a revert names one)
                "code_reloads": [master.code.count, master.code.last_error, next(master.code._tokens)],
                "upgrades": upgrader.count, "fd_limit": master._fd_limit, "scaler": scaler_record(master.scaler),
                "cgroups": cgroups_record(master.kernel_memory), "journal": master.journal.handover()},
        spawner={"pid": spawner.pid, "run": spawner.run, "version": upgrader.spawner_version,
                 "protocol": upgrader.spawner_protocol, "core": CORE,  # the core: see spawn/request.py
                 "beside": [old.handover(kept) for old in upgrader.beside],  # older spawners (beside.py)
                 "adopted": [[leader, sorted(orphans)] for leader, orphans in spawner.adopted.items()]},
        fds=fds, instances=[instance_record(inst, master.probes.handover(inst), old_spec(inst, onto_new, writer))
                            for inst in master.supervisor.instances.values()],
        pipes=pipes, reply=kept(conn.sock.fileno()) if conn is not None else None,
        rollouts=[rollout_record(rollout, master.code.carried(master.supervisor.rolling.on_halt.get(rollout)))
                  for rollout in master.supervisor.rolling.rollouts])
    record["specs"] = writer.parts  # the parts of the specs kept (specs.py)
    return record, keep


def old_spec(inst: Any, onto_new: set[str], writer: Any) -> Any:
    """The spec `inst` runs (written into the record's "specs"), if the config (as the
    successor expands it) no longer has it: it is stopping to restart onto a new one, or a
    rollout will restart it onto one."""
    if inst.next_spec is None and inst.name not in onto_new:
        return None
    return {"runs": writer.ref(inst.spec), "next": inst.next_spec is not None}


def streams(master: Any) -> list[Any]:
    """Control connections streaming `orch events -f`: they cross exec, and the next master
    goes on with each from where it stood in the journal."""
    control = master.control
    return [c for c in control.connections if c.stream is not None and not c.closed] if control else []


# Commands asked again of the next master when their answers are owed at the exec: they
# changed nothing yet (`orch diff`; `orch reload` while its config is being expanded, which
# applies nothing until the expansion ends), so the next master runs them afresh and answers.
ASKED_AGAIN = ("diff", "reload")


def asked_again(master: Any) -> list[Any]:
    """Control connections owed nothing but answers of commands the next master asks again."""
    control = master.control
    if control is None:
        return []
    return [c for c in control.connections if c.owed and not (c.outbuf or c.inbuf or c.keep_open or c.closed)
            and c.drained is None and len(owed := c.owed_requests()) == c.owed
            and all(cmd in ASKED_AGAIN and not args.get("code") for cmd, args in owed)]


def queued_reload(master: Any) -> str | None:
    """The reload the next master runs once it has taken over: the one queued, or the one
    being expanded (abandoned at the exec), unless an `orch reload` asked again runs it."""
    reloader = master.reloader
    again = any(cmd == "reload" for c in asked_again(master) for cmd, _ in c.owed_requests())
    return reloader.queued or (None if again else reloader.expanding)


def waiting_clients(master: Any) -> dict[Any, list[Any]]:
    """Control connections owed nothing but the answers of commands waiting on instances
    (`orch restart` until ready, `orch stop` until gone): they cross exec with their waits."""
    waits = getattr(getattr(master.control, "handler", None), "waits", None)
    if waits is None:
        return {}
    return {conn: found for conn, found in waits.by_connection().items()
            if conn.owed == len(found) and not (conn.outbuf or conn.inbuf or conn.keep_open or conn.closed)}


def output_pipes(launcher: Any) -> list[tuple[int, str, bool]]:
    """(read fd, instance name, separate stderr?) of every output pipe still open."""
    return [(fd, write.__self__.name, write.__func__.__name__ == "write_stderr")
            for fd, write in launcher.pump.writers().items()]


def scaler_record(scaler: Any) -> dict[str, Any]:
    """Autoscaled cells: each one's count (and since when demand differs) and `orch scale` pins."""
    return {"pins": dict(scaler.pins),
            "cells": {name: [cell.state.count, cell.state.up_since, cell.state.down_since]
                      for name, cell in scaler.cells.items()}}


def cgroups_record(kernel: Any) -> dict[str, Any] | None:
    """`cgroup = "auto"`: the run's cgroup folders and each running instance's, so the new
    master watches their memory events again (and removes them when the instance ends)."""
    if kernel is None:
        return None
    return {"run": list(kernel.run), "made": kernel.made,
            "watches": {name: list(watch.dirs) for name, watch in kernel.watches.items()}}
