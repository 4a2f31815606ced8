"""`orch export --format systemd`: a service unit per instance, a socket unit per shared
socket (FileDescriptorName=, passed with Sockets= in the template's order), a target per
template and one for the fleet (pure). Quoting follows systemd.syntax(7) and systemd.service(5)."""

from __future__ import annotations

import re
import signal

from ..expand.spec import ProcessSpec
from .common import Options, Output, process_warnings, refuse, seconds, unexpressed
from .production import setup_warnings, systemd_lines
from .probes import lost_lines, systemd_lost, systemd_order, systemd_type

# systemd 252 (Debian 12) has no RestartSteps=/RestartMaxDelaySec=: backoff.max is a warning.
UNEXPRESSED = ("backoff_max", "min_uptime", "max_requests", "rolling", "max_unavailable",
               "log_max_size", "log_backups")
RESTART = {"always": "always", "on-failure": "on-failure", "never": "no"}
KILL_MODE = {"group": "control-group", "mixed": "mixed"}
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_name(text: str) -> str:
    """A string as one component of a unit name, escaped like `systemd-escape`: '/' becomes
    '-', and bytes other than ASCII letters, digits, ':', '_' and a non-leading '.' become \\xNN."""
    out = []
    for i, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif (char.isascii() and (char.isalnum() or char in ":_")) or (char == "." and i > 0):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def _quoted(text: str, dollars: bool) -> str:
    """One double-quoted word: C escapes for \\ \" and control characters, %% for specifiers,
    and $$ where the setting expands $VARIABLES (ExecStart=)."""
    out = []
    for char in text:
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        elif char == "%":
            out.append("%%")
        elif char == "$" and dollars:
            out.append("$$")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def exec_start(argv: tuple[str, ...]) -> str:
    """The value of ExecStart= that systemd splits back into exactly `argv`."""
    return " ".join(_quoted(arg, dollars=True) for arg in argv)


def _service(spec: ProcessSpec, unit: str, template_target: str, sockets: list[str], log_dir: str = "",
             units: dict[str, list[str]] | None = None, one_shot: bool = False) -> str:
    """`units`: the instance units per template (for `after`); `one_shot`: others are after
    this restart = "never" instance, so it runs as Type=oneshot."""
    policy = spec.policy
    lines = ["[Unit]", f"Description=orch instance {spec.name}".replace("%", "%%"),
             f"PartOf={template_target}", "StartLimitIntervalSec=0"]
    lines += [f"Requires={s}\nAfter={s}" for s in sockets]
    lines += systemd_order(spec, units or {})
    lines += ["", "[Service]"]
    if sockets:  # passed from fd 3 in this order, named like orch's LISTEN_FDNAMES
        lines.append("Sockets=" + " ".join(sockets))
    lines += systemd_type(spec, one_shot)  # notify probes, the watchdog, a one-shot others wait for
    lines.append(f"ExecStart={exec_start(spec.argv)}")
    lines.append(f"WorkingDirectory={spec.cwd.replace('%', '%%')}")
    lines += [f"Environment={_quoted(f'{k}={v}', dollars=False)}"
              for k, v in (("ORCH_INSTANCE", spec.name),) + spec.env]
    lines += [f"Restart={RESTART[policy.restart]}", f"RestartSec={seconds(policy.backoff_initial)}",
              f"KillMode={KILL_MODE[policy.kill_mode]}",
              f"KillSignal={signal.Signals(policy.stop_signal).name}",
              f"TimeoutStopSec={seconds(policy.stop_timeout)}"]
    if policy.memory_soft is not None:
        lines.append(f"MemoryHigh={policy.memory_soft}")
    if policy.memory_hard is not None:
        lines.append(f"MemoryMax={policy.memory_hard}")
    if policy.max_lifetime is not None:
        lines.append(f"RuntimeMaxSec={seconds(policy.max_lifetime)}")
    lines += systemd_lines(spec, _quoted, str(log_dir).replace("%", "%%"))
    return "\n".join(lines) + "\n"


def socket_unit(decl: object, service: str, fleet_target: str) -> str:
    """A .socket unit holding one [sockets.NAME] for every service that names it; activation
    starts `service` (the others start with the fleet's target)."""
    address: str = decl.address  # type: ignore[attr-defined]
    listen = address[5:] if address.startswith("unix:") else address
    lines = ["[Unit]", f"Description=orch socket {decl.name} ({address})".replace("%", "%%"),  # type: ignore
             f"PartOf={fleet_target}", "", "[Socket]", f"ListenStream={listen.replace('%', '%%')}",
             f"FileDescriptorName={decl.name}", f"Backlog={decl.backlog}", f"Service={service}"]  # type: ignore
    if address.startswith("unix:") and not listen.startswith("@"):
        lines.append(f"SocketMode={decl.mode:04o}")  # type: ignore[attr-defined]
    elif address.startswith("["):
        lines.append("BindIPv6Only=ipv6-only")  # as orch binds it
    lines += ["", "[Install]", "WantedBy=sockets.target"]
    return "\n".join(lines) + "\n"


def _target(description: str, wants: list[str], part_of: str | None) -> str:
    lines = ["[Unit]", f"Description={description}"]
    lines += [f"Wants={unit}" for unit in wants]
    if part_of:
        lines.append(f"PartOf={part_of}")
    else:
        lines += ["", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(lines) + "\n"


def export(specs: list[ProcessSpec], options: Options) -> Output:
    """Service units, template targets and the fleet target."""
    # systemd reads these at the start of ExecStart='s first word, even quoted, as flags.
    refuse([s for s in specs if s.argv[0].startswith(tuple("@-:+!|"))], options, "systemd",
           "a program name starting with @ - : + ! or |", re.compile(r"^[@\-:+!|]"), where="argv")
    prefix = f"orch-{escape_name(options.fleet)}"
    fleet_target = f"{prefix}.target"
    out = Output(warnings=unexpressed("systemd", specs, UNEXPRESSED)
                 + process_warnings("systemd", specs, True, sockets="held")
                 + setup_warnings("systemd", specs, ("user", "group", "groups", "env_file", "rlimits", "umask",
                                                     "stderr"))
                 + lost_lines("systemd", specs, systemd_lost))
    units = {t: [f"{prefix}-{escape_name(s.name)}.service" for s in specs if s.template == t]
             for t in {s.template for s in specs}}
    awaited = {t for s in specs for t in s.policy.after}  # templates others are after
    by_template: dict[str, list[str]] = {}
    users: dict[str, str] = {}  # socket name -> the first service that uses it
    for spec in specs:
        template_target = f"{prefix}-{escape_name(spec.template)}.target"
        unit = f"{prefix}-{escape_name(spec.name)}.service"
        if len(unit) > 255:
            refuse([spec], options, "systemd", "a unit name over 255 bytes", re.compile(""), where="name")
        by_template.setdefault(template_target, []).append(unit)
        sockets = [f"{prefix}-socket-{escape_name(name)}.socket" for name, _ in spec.sockets]
        for name, _ in spec.sockets:
            users.setdefault(name, unit)
        out.files[unit] = _service(spec, unit, template_target, sockets, str(options.log_dir), units,
                                   spec.template in awaited and spec.policy.restart == "never")
    for decl in options.sockets:
        if decl.name in users:
            out.files[f"{prefix}-socket-{escape_name(decl.name)}.socket"] = socket_unit(
                decl, users[decl.name], fleet_target)
    for template_target, units in by_template.items():
        out.files[template_target] = _target(template_target, units, fleet_target)
    out.files[fleet_target] = _target(f"orch fleet {options.fleet}".replace("%", "%%"),
                                      list(by_template), None)
    return out
