"""`ProcessSpec`: one fully rendered instance, frozen, with the two hashes reload diffs on."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..config.keys import IDENTITY_FIELDS
from ..config.load import Policy
from .envfile import EnvFile
from .identity import RunAs


@dataclass(frozen=True)
class PythonTarget:
    """What a Python worker instance runs (`target = "module:Class"`)."""

    target: str
    kwargs: tuple[tuple[str, Any], ...]
    preload: bool
    check_point: float
    pythonpath: tuple[str, ...]


@dataclass(frozen=True, slots=True)  # slots: one per instance, and a reload keeps two
class ProcessSpec:
    """A desired process: what it is (argv, env, cwd) and how it is supervised (policy)."""

    name: str
    template: str
    params: tuple[tuple[str, Any], ...]
    replica: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    inherit_env: bool
    cwd: str
    policy: Policy
    python: PythonTarget | None = None
    sockets: tuple[tuple[str, str], ...] = ()  # (name, address), passed at fds 3, 4, ...
    run_as: RunAs | None = None  # user, group, groups (expand/identity.py)
    env_files: tuple[EnvFile, ...] = ()  # their digests are the identity, never their values
    # The env files' assignments, merged: secrets, so no output of orch shows them (not in
    # repr, not in identity(), not in `orch plan --json`), and only the spawner gets them.
    file_env: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    rlimits: tuple[tuple[str, tuple[int, int]], ...] = ()  # name: (soft, hard)
    umask: int | None = None
    stderr: str = "merge"  # merge | separate | discard
    probes: tuple[Any, ...] = ()  # config.probes.Probe, rendered: policy (applied in place), not identity
    autoscale: Any = None  # config.scaling.Autoscale, rendered: policy, not identity
    process_hash: str = ""
    policy_hash: str = ""

    def full_env(self) -> dict[str, str]:
        """The environment overrides a process gets: the user's passwd variables, then the
        env files, then `env` (each wins over the one before)."""
        env = self.run_as.env() if self.run_as is not None else {}
        env.update(self.file_env)
        env.update(self.env)
        return env

    def identity(self) -> dict[str, Any]:
        """Everything that, when changed, needs a new process (the fields the PROCESS keys of
        `config.keys` feed); canonical form: tuples as lists, key-value pairs sorted."""
        return {name: _canonical(getattr(self, name)) for name in IDENTITY_FIELDS
                if getattr(self, name) is not None and _ONLY_WHEN_SET.get(name, _SET) != getattr(self, name)}

    @property
    def socket_keys(self) -> tuple[str, ...]:
        """The held sockets this instance gets, as the master and the spawner name them."""
        return tuple(f"{name}={address}" for name, address in self.sockets)

    @classmethod
    def hashed(cls, **fields: Any) -> "ProcessSpec":
        """A new spec with its hashes, made once: with_hashes' dataclasses.replace inspects
        every field again, a fifth of expanding 5,000 templates. The hashes are set on the
        new object before anything else can see it, as a __post_init__ would."""
        spec = cls(**fields)
        object.__setattr__(spec, "process_hash", _digest(spec.identity()))
        policy_hash = policy_digest(spec.policy)
        if spec.probes:  # rendered per instance, so not in the template's shared Policy
            policy_hash = _digest([policy_hash, _canonical(spec.probes)])
        if spec.autoscale is not None:  # likewise
            policy_hash = _digest([policy_hash, _canonical(spec.autoscale)])
        object.__setattr__(spec, "policy_hash", policy_hash)
        return spec

    def with_hashes(self) -> "ProcessSpec":
        """This spec with `process_hash` and `policy_hash` filled in."""
        return ProcessSpec.hashed(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                     if f.name not in ("process_hash", "policy_hash")})


@functools.lru_cache(maxsize=1024)
def policy_digest(policy: Policy) -> str:
    """The policy hash; computed once per template, since its instances share one Policy."""
    return _digest(dataclasses.asdict(policy))


# Fields newer than the hash: left out at these values, so an upgrade restarts nothing.
_SET = object()
_ONLY_WHEN_SET: dict[str, Any] = {"sockets": (), "env_files": (), "rlimits": (), "stderr": "merge"}


def _canonical(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        items = [_canonical(v) for v in value]
        pairs = all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) for v in items)
        return sorted(items) if pairs and items else items
    return value


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def changed_fields(old: ProcessSpec, new: ProcessSpec) -> list[str]:
    """Names of the identity and policy fields that differ, for `orch diff`."""
    changed = [k for k, v in new.identity().items() if old.identity().get(k) != v]
    old_policy, new_policy = dataclasses.asdict(old.policy), dataclasses.asdict(new.policy)
    changed += [k for k in new_policy if old_policy[k] != new_policy[k]]
    return changed


# What exec(2) takes, checked when a spec is made so that a value no process could start
# with is a located config error, not a spawn that fails (or a message too big for the
# spawner's channel: spawn/child.py's MAX_REQUEST_BYTES, which this total stays under).
MAX_ARG_STRLEN = 128 * 1024  # Linux: one argv or env string, with its NUL
MAX_EXEC_BYTES = 1 << 20  # orch's own ceiling for argv + env overrides; exec's is 2 MiB in all


def exec_problem(argv: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """(key, message) if exec could never take this argv and env, else None (pure)."""
    total = 0
    for arg in argv:
        if "\0" in arg:
            return "command", f"an argument contains a NUL character: {_cut(arg)}"
        if len(arg.encode("utf-8", "surrogateescape")) >= MAX_ARG_STRLEN:
            return "command", f"an argument is {len(arg):,} characters; exec takes under {MAX_ARG_STRLEN:,}"
        total += len(arg) + 1
    for key, value in env:
        if not key or "=" in key or "\0" in key:
            return "env", f"{_cut(key)} is not a variable name (empty, or has '=' or NUL)"
        if "\0" in value:
            return "env", f"{key}'s value contains a NUL character"
        if len(key) + len(value.encode("utf-8", "surrogateescape")) + 2 > MAX_ARG_STRLEN:
            return "env", f"{key}'s value is {len(value):,} characters; exec takes under {MAX_ARG_STRLEN:,}"
        total += len(key) + len(value) + 2
    if total > MAX_EXEC_BYTES:
        return "command", f"command and env come to {total:,} bytes; orch takes up to {MAX_EXEC_BYTES:,}"
    return None


def _cut(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text):,} characters)"
