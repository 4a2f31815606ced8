"""The run-as and process set-up keys (issue 26) in exports: which spec field each key fills,
what a target carries, and one warning line for each key it cannot (pure)."""

from __future__ import annotations

import os
import pwd

from ..config.production import SYSTEMD_NAMES
from ..expand.spec import ProcessSpec

# key -> whether a spec sets it
_SET = {
    "user": lambda s: s.run_as is not None and s.run_as.user is not None,
    "group": lambda s: s.run_as is not None and s.run_as.gid != _own(s.run_as)[0],
    "groups": lambda s: s.run_as is not None and s.run_as.groups != _own(s.run_as)[1],
    "env_file": lambda s: bool(s.env_files),
    "rlimits": lambda s: bool(s.rlimits),
    "umask": lambda s: s.umask is not None,
    "stderr": lambda s: s.stderr != "merge",
}


def setup_warnings(target: str, specs: list[ProcessSpec], carried: tuple[str, ...],
                   why: dict[str, str] | None = None) -> list[str]:
    """One line per key some template sets that `target` does not carry (`why`: a reason
    other than "left out")."""
    warnings = []
    for key, is_set in _SET.items():
        if key in carried:
            continue
        templates = sorted({s.template for s in specs if is_set(s)})
        if templates:
            reason = (why or {}).get(key, "left out")
            warnings.append(f"orch export: {target} cannot express workers.*.{key} "
                            f"(set in {', '.join(templates)}): {reason}")
    return warnings


def systemd_lines(spec: ProcessSpec, quote: object, log_dir: str) -> list[str]:
    """User=, Group=, SupplementaryGroups=, EnvironmentFile=, Limit*=, UMask=, StandardError=."""
    lines = []
    run_as = spec.run_as
    if run_as is not None:
        if run_as.user is not None:
            lines.append(f"User={run_as.user}")
        lines.append(f"Group={run_as.gid}")
        lines.append("SupplementaryGroups=" + " ".join(str(g) for g in run_as.groups))
    for env_file in spec.env_files:  # read by systemd where orch read it (values stay out of the unit)
        lines.append(f"EnvironmentFile={'-' if env_file.optional else ''}{env_file.path.replace('%', '%%')}")
    for name, (soft, hard) in spec.rlimits:
        lines.append(f"Limit{SYSTEMD_NAMES[name]}={_limit(soft)}:{_limit(hard)}")
    if spec.umask is not None:
        lines.append(f"UMask={spec.umask:04o}")
    if spec.stderr == "discard":
        lines.append("StandardError=null")
    elif spec.stderr == "separate":
        lines.append(f"StandardError=append:{log_dir}/{spec.name.replace('%', '%%')}.stderr.log")
    return lines


def _limit(value: int) -> str:
    return "infinity" if value < 0 else str(value)


def env_file_values(spec: ProcessSpec) -> list[tuple[str, str]]:
    """The env files' assignments, for a target that takes them inline (`env` wins, as in orch)."""
    own = {k for k, _ in spec.env}
    return [(k, v) for k, v in spec.file_env if k not in own]


def _own(run_as: object) -> tuple[int | None, tuple[int, ...] | None]:
    """The user's own primary group and groups: what a target that knows only `user` gives."""
    try:
        entry = pwd.getpwnam(run_as.user) if run_as.user else pwd.getpwuid(os.geteuid())  # type: ignore[attr-defined]
    except KeyError:
        return None, None
    return entry.pw_gid, tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
