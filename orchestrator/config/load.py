"""workers.toml -> a validated, frozen `Config`; every problem located by file, key path and line.

Validation happens in full before anything is used: a config either loads with no
problem at all, or raises `ConfigError` listing every problem found.
"""

from __future__ import annotations

import functools
import glob
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConfigProblem
from .fields import PATH, type_name
from .keys import (ORCHESTRATOR_KEYS, WORKER_KEYS,  # noqa: F401 - re-exported for tests/test_man.py
                   MERGED_TABLES, POLICY_KEYS, POLICY_SUB_KEYS, SETTINGS_KEYS, SUB_TABLES,
                   TEMPLATE_KEYS, TEMPLATE_ONLY, TOP_KEYS)
from .hooks import parse_hooks
from .keys import HOOK_KEYS
from .locate import Problems
from .order import order_problems
from .model import Config, Policy, Settings, Template  # noqa: F401 - where the values are declared
from .pieces import TomlPieces, tomllib
from .production import check_template
from .scaling import scaling_problems
from .sockets import SocketDecl, check_template_sockets, parse_sockets
from .source import read_source




def read_toml(path: Path, parser: TomlPieces | None = None) -> tuple[dict, str]:
    """Parse a TOML file; syntax errors become a located `ConfigError`. A `parser` that
    parsed this file before parses only the tables whose text changed since."""
    try:
        text = read_source(path).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), "", "config file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read config file: {exc}")]) from None
    try:
        return (tomllib.loads(text) if parser is None else parser.loads(text)), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        raise ConfigError([ConfigProblem(str(path), "", f"TOML syntax error: {message}", line)]) from None
    except RecursionError:  # arrays or inline tables nested hundreds deep
        raise ConfigError([ConfigProblem(str(path), "", "TOML syntax error: arrays or inline tables "
                                          "nested too deeply")]) from None


def load_settings(path: Path) -> Settings:
    """Only the `[orchestrator]` table: what client commands need, without validating the fleet."""
    data, text = read_toml(path)
    problems = Problems(path, text)
    settings = _settings(data.get("orchestrator", {}), path, problems)
    if problems.items:
        raise ConfigError(problems.items)
    return settings


def load_config(path: Path, cache: "TemplateCache | None" = None) -> Config:
    """Read and validate a whole config file (and its includes); every problem at once.
    With `cache` (kept between loads), only changed templates are parsed again."""
    path = path.absolute()
    data, text = read_toml(path, None if cache is None else cache.parser(path))
    problems = Problems(path, text)
    for key in data:
        if key not in TOP_KEYS:
            problems.unknown("", key, TOP_KEYS)
    settings = _settings(data.get("orchestrator", {}), path, problems)
    variables = dict(_table_at(data, "vars", "expected a table", problems))  # included files add theirs
    defaults = _valid_defaults(_table_at(data, "defaults", "expected a table", problems), problems)
    workers = _table_at(data, "workers", "expected a table of templates like [workers.consumer]", problems)
    sockets = parse_sockets(data.get("sockets", {}), path.parent, problems)
    hooks = parse_hooks(data.get("hooks", []), HOOK_KEYS, problems)
    patterns = tuple(str(path.parent / pattern) for pattern in settings.include)
    sources = [(path, problems, workers)] + _included(patterns, path, variables, cache)
    templates = _templates(sources, defaults, path, settings, sockets, cache)
    found = [p for _, source_problems, _ in sources for p in source_problems.items]
    config = Config(path, settings, tuple(variables.items()), tuple(templates),
                    tuple(source for source, _, _ in sources), patterns, sockets, hooks)
    if found:
        error = ConfigError(found)
        # The templates that validated, for `orch check` to render too (every problem at
        # once), unless a shared table is at fault: its errors would cascade into theirs.
        shared = ("orchestrator", "vars", "defaults", "sockets", "hooks")
        if not any(p.keypath.split(".")[0] in shared or not p.keypath or p.keypath.endswith(".sockets")
                   for p in found):
            error.partial = config
        raise error
    return config


def _table_at(data: dict, key: str, message: str, problems: Problems) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, message)
        return {}
    return value


class TemplateCache:
    """The last load's valid templates by name, with the raw table each was parsed from: a
    reload through it parses only the tables that changed (a Template is frozen, so sharing
    one is safe). At 5,000 templates, parsing every table again was most of a one-line
    reload. The master keeps one, as it keeps an ExpansionCache."""

    def __init__(self) -> None:
        # name: (source file, raw table, repr of [defaults], repr of the merged table, template)
        self.parsed: dict[str, tuple[str, dict, str, str, Template]] = {}
        self.context: Any = None  # (folder, settings) they were parsed with
        self.parsers: dict[Path, TomlPieces] = {}

    def parser(self, path: Path) -> TomlPieces:
        """The piecewise TOML parser of one file: unchanged tables come back as the same dicts."""
        found = self.parsers.get(path)
        if found is None:
            found = self.parsers[path] = TomlPieces()
        return found


_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9._:@+=-]{1,100}")


def _templates(sources: list[tuple[Path, Problems, dict]], defaults: dict, path: Path,
               settings: Settings, sockets: tuple[SocketDecl, ...],
               cache: TemplateCache | None = None) -> list[Template]:
    """Every [workers.*] of the config and its included files, each defined once."""
    templates, owner = [], {}
    context = (path.parent, settings)
    previous = cache.parsed if cache is not None and cache.context == context else {}
    parsed: dict[str, tuple[str, dict, str, str, Template]] = {}
    base = repr(defaults)
    for source, source_problems, tables in sources:
        where = str(source)  # compared per template: a str compares far faster than a Path
        for name, table in tables.items():
            if name in owner:
                source_problems.add(f"workers.{name}", f"template {name!r} is also defined in {owner[name]}")
                continue
            owner[name] = source
            if not isinstance(table, dict):
                source_problems.add(f"workers.{name}", "expected a table")
                continue
            if not _TEMPLATE_NAME.fullmatch(name):  # it names instances, logs and units
                source_problems.add(f"workers.{name[:60]}", f"template name {name[:60]!r} may use only letters, "
                                    "digits and ._:@+=- (up to 100 characters)")
                continue
            hit = previous.get(name)
            template: Template | None = None
            if hit is not None and hit[1] is table and hit[0] == where and hit[2] == base:
                raw, template = hit[3], hit[4]  # the very dict the parser kept: its text is unchanged
            else:
                merged = _merge(defaults, table)
                raw = repr(merged)  # not ==: True == 1 == 1.0, and `replicas = true` must still be refused
                if hit is not None and hit[0] == where and hit[3] == raw:
                    template = hit[4]
                else:
                    template = _template(name, merged, path.parent, settings, source_problems, source)
            if template is not None:
                parsed[name] = (where, table, base, raw, template)
                check_template_sockets(name, template.sockets, sockets, source_problems)
                templates.append(template)
    problems_of = {str(source): source_problems for source, source_problems, _ in sources}
    # only the templates with an `after`: the others add no edge (5,000 sorted names were a tenth of a reload)
    for name, message in order_problems({t.name: t.policy.after for t in templates if t.policy.after}, owner):
        problems_of[str(owner[name])].add(f"workers.{name}.after", message)
    if cache is not None:
        cache.parsed, cache.context = parsed, context
    return templates


def _included(patterns: tuple[str, ...], main: Path, variables: dict,
              cache: TemplateCache | None = None) -> list[tuple[Path, "Problems", dict]]:
    """The files `[orchestrator] include` names, in sorted order: each may add [vars] and
    [workers.*] (never redefine them); everything else stays in the main file."""
    files = sorted({Path(f) for pattern in patterns for f in glob.glob(pattern)} - {main})
    found: list[tuple[Path, Problems, dict]] = []
    for file in files:
        try:
            data, text = read_toml(file, None if cache is None else cache.parser(file))
        except ConfigError as exc:
            problems = Problems(file, "")
            problems.items += exc.problems
            found.append((file, problems, {}))
            continue
        problems = Problems(file, text)
        for key in data:
            if key not in ("vars", "workers"):
                problems.add(key, f"[{key}] belongs in the main config file {main.name}; "
                             "an included file may hold [vars] and [workers.*]")
        for key, value in (data.get("vars") or {}).items():
            if key in variables:
                problems.add(f"vars.{key}", f"vars.{key} is already defined before {file.name}")
            else:
                variables[key] = value
        workers = data.get("workers", {})
        found.append((file, problems, workers if isinstance(workers, dict) else {}))
    return found


def _valid_defaults(defaults: dict, problems: Problems) -> dict:
    """The [defaults] keys that validate; problems are located in [defaults], not per worker."""
    valid = {}
    for key, raw in defaults.items():
        if key in TEMPLATE_ONLY:
            problems.add(f"defaults.{key}", f"{key!r} belongs to a template, not to [defaults]")
            continue
        parse = WORKER_KEYS.get(key)
        if parse is None:
            problems.unknown("defaults.", key, WORKER_KEYS)
            continue
        try:
            parse(raw)
        except ValueError as exc:
            problems.add(f"defaults.{key}", str(exc))
            continue
        sub_keys = SUB_TABLES.get(key)
        if sub_keys is not None:
            bad = False
            for sub, value in raw.items():
                if sub not in sub_keys:
                    problems.unknown(f"defaults.{key}.", sub, sub_keys)
                    bad = True
                    continue
                try:
                    sub_keys[sub](value)
                except ValueError as exc:
                    problems.add(f"defaults.{key}.{sub}", str(exc))
                    bad = True
            if bad:
                continue
        valid[key] = raw
    return valid


def _merge(defaults: dict, table: dict) -> dict:
    merged = dict(defaults)
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key in MERGED_TABLES:
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _settings(table: object, path: Path, problems: Problems) -> Settings:
    folder = path.parent
    if not isinstance(table, dict):
        problems.add("orchestrator", "expected a table")
        table = {}
    values = problems.parsed("orchestrator.", table, ORCHESTRATOR_KEYS)
    for k in SETTINGS_KEYS:
        if k.type is PATH and (k.default is not None or k.attr in values):  # {stem}: see keys.py
            written = str(values.get(k.attr, k.default)).replace("{stem}", path.stem)
            values[k.attr] = (folder / written).absolute()
    for k in SETTINGS_KEYS:
        if k.default is not None:
            values.setdefault(k.attr, k.value)
    values.setdefault("name", path.stem if path.stem != "workers" else folder.name or "orch")
    if len(str(values["control_socket"]).encode()) > 107:
        problems.add("orchestrator.control_socket",
                     f"socket path is longer than the 107 bytes Unix sockets allow: {values['control_socket']}")
    return Settings(**values)


def _template(name: str, table: dict, folder: Path, settings: Settings,
              problems: Problems, source: Path | None = None) -> Template | None:
    prefix = f"workers.{name}."
    before = len(problems.items)
    clean = problems.parsed(prefix, table, WORKER_KEYS)
    if "command" not in clean and "target" not in clean and "command" not in table and "target" not in table:
        problems.add(f"workers.{name}", "missing 'command' (or 'target' for a Python worker)")
    if "command" in clean and "target" in clean:
        problems.add(prefix + "target", "give either 'command' or 'target', not both")
    if clean.get("shell") and isinstance(clean.get("command"), tuple):
        problems.add(prefix + "shell", "shell = true needs command as a string")
    policy = _policy(clean, prefix, settings, problems)
    for axis, values in clean.get("matrix", {}).items():
        if isinstance(values, list) and not values:
            problems.add(f"{prefix}matrix.{axis}", "empty matrix axis: give at least one value")
        elif not isinstance(values, (list, str)):
            problems.add(f"{prefix}matrix.{axis}", "expected an array of values or a Jinja expression like \"{{ queues }}\"")
    for key, value in clean.get("env", {}).items():
        if not isinstance(value, (str, int, float, bool)):
            problems.add(f"{prefix}env.{key}", f"expected a string or number, got {type_name(value)}")
    check_template(clean, prefix, problems)
    for key, message in scaling_problems(clean):
        problems.add(prefix + key, message)
    if len(problems.items) > before or policy is None:
        return None
    values = dict(_template_defaults())
    for k in TEMPLATE_KEYS:
        if k.name in clean:
            values[k.attr] = _frozen(clean[k.name])
    return Template(name=name, policy=policy, source=source, **values)


@functools.cache
def _template_defaults() -> tuple[tuple[str, Any], ...]:
    """Every template key's default as a Template holds it (frozen: safe to share). Read
    once, not per template: at 5,000 templates the defaults were a third of the load."""
    return tuple((k.attr, _frozen(k.value)) for k in TEMPLATE_KEYS)


@functools.lru_cache(maxsize=8)
def _policy_defaults(settings: Settings) -> tuple[tuple[str, Any], ...]:
    """The policy a template that sets nothing gets under these settings: the immutable
    values only (a table or array default is left for `_policy` to fill in, as before)."""
    values: dict[str, Any] = {k.attr: k.value for k in POLICY_SUB_KEYS}
    for k in POLICY_KEYS:  # a key left out takes the table's default, or the setting it names
        values[k.attr] = getattr(settings, k.default_from.split(".")[1]) if k.default_from else k.value
    return tuple(item for item in values.items() if not isinstance(item[1], (dict, list, set)))


def _frozen(value: Any) -> Any:
    """A parsed value as the frozen Template holds it: tables as item tuples, recursively."""
    if isinstance(value, dict):
        return tuple(value.items())
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


_POLICY_NAMES = tuple(sorted({k.name for k in POLICY_KEYS} | set(SUB_TABLES)))
_POLICIES: dict[tuple[Settings, str], Policy] = {}  # policies made without a problem, by what they were made of


def _policy(clean: dict, prefix: str, settings: Settings, problems: Problems) -> Policy | None:
    """The template's policy; templates giving the same policy keys the same values (every
    `[workers.X]` under one `[defaults]`) share one, made once: making it was 45 % of
    loading 5,000 templates (0.53 of 1.18 s in a profile), all before the first spawn."""
    key = (settings, repr([(name, clean[name]) for name in _POLICY_NAMES if name in clean]))
    policy = _POLICIES.get(key)
    if policy is not None:
        return policy
    before = len(problems.items)
    policy = _make_policy(clean, prefix, settings, problems)
    if policy is not None and len(problems.items) == before:
        if len(_POLICIES) >= 4096:
            _POLICIES.clear()
        _POLICIES[key] = policy
    return policy


def _make_policy(clean: dict, prefix: str, settings: Settings, problems: Problems) -> Policy | None:
    values: dict[str, Any] = dict(_policy_defaults(settings))
    for table_key, keys in SUB_TABLES.items():
        sub = problems.parsed(f"{prefix}{table_key}.", clean.get(table_key, {}), keys)
        values.update((f"{table_key}_{key}", value) for key, value in sub.items())
    for k in POLICY_SUB_KEYS:
        if k.attr not in values:  # a table or array default (not among the cached ones)
            values[k.attr] = k.value
    for k in POLICY_KEYS:
        if k.name in clean:
            values[k.attr] = clean[k.name]
        elif k.attr not in values:
            values[k.attr] = getattr(settings, k.default_from.split(".")[1]) if k.default_from else k.value
    soft, hard = values.get("memory_soft"), values.get("memory_hard")
    if soft is not None and hard is not None and soft >= hard:
        problems.add(f"{prefix}memory.soft", "the soft memory limit must be below the hard limit")
        return None
    initial, most = values["backoff_initial"], values["backoff_max"]
    if initial > most:
        problems.add(f"{prefix}backoff.initial", "backoff.initial must not exceed backoff.max")
        return None
    return Policy(**values)
