"""Config -> ordered, frozen `ProcessSpec`s: templates x matrix x replicas, rendered with Jinja (pure).

Rendering runs in Jinja's sandbox with undefined names as errors. A parameter value
never leaves the argv element it was written in: command strings are split with every
`{{ }}` output replaced by an opaque placeholder first, and the values put back after.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..config.load import Config, Template
from ..config.scaling import replica_count
from ..errors import ConfigError, ConfigProblem
from ..config.locate import Problems
from ..config.source import read_source
from .budget import TOTAL_SECONDS, RenderError, Slices, guarded
from .matrix import combinations
from .renderer import Renderer, _text, template_errors
from .production import SetupError, reads_host, setup_fields, watch_env_files
from .probes import probe_fields
from .backlog import autoscale_fields
from .spec import ProcessSpec, PythonTarget, exec_problem
from .cache import Cell, ExpansionCache, cached_cell  # noqa: F401 - ExpansionCache re-exported

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:@+=-]")


def expand(config: Config, cache: ExpansionCache | None = None) -> list[ProcessSpec]:
    """Every instance the config asks for, in file order, with stable names and hashes.
    With a `cache`, templates identical to the previous load reuse their specs."""
    job = Expansion(config, cache)
    while not job.step():
        pass
    return job.result()


class Expansion:
    """One expansion, run in steps: the master steps it from its loop, so that a slow or
    runaway config holds the loop for at most `slice_seconds` (plus one render's budget)
    at a time, and `orch status` and crash replacement go on in between. Every step runs
    under budget.guarded(); the whole expansion may spend TOTAL_SECONDS in steps."""

    def __init__(self, config: Config, cache: ExpansionCache | None = None,
                 slice_seconds: float = math.inf) -> None:
        self.config = config
        self.cache = cache
        self.problem = _Problems(config)
        self.fresh: dict[str, tuple[Template, list[ProcessSpec]]] = {}
        self.clock = Slices(slice_seconds)
        self._specs: list[ProcessSpec] | None = None
        variables = {"python": sys.executable, **dict(config.vars)}
        self._steps = _expand_all(config, cache, variables, self.problem, self.fresh, self.clock)

    def step(self) -> bool:
        """Run one slice; True once the expansion is over (then call `result`)."""
        if self._specs is not None:
            return True
        self.clock.begin()
        try:
            with guarded():
                next(self._steps)
        except StopIteration as done:
            self._specs = done.value
        except RenderError as exc:  # the budget ran out between two renders' checks
            self.problem(f"workers.{self.clock.template}", str(exc))
            self._specs = []
        finally:
            self.clock.end()
        return self._specs is not None

    def force_end(self) -> bool:
        """End the expansion where it is (after a bug was reported as a problem)."""
        self._steps.close()
        self._specs = []
        return True

    def result(self) -> list[ProcessSpec]:
        """The specs, or ConfigError with every problem found; a success becomes the cache's
        new baseline."""
        if self._specs is None:
            raise RuntimeError("the expansion is not over")
        if self.problem.items:
            raise ConfigError(self.problem.items)
        watch_env_files(self.config, self._specs)
        if self.cache is not None:  # only a load that succeeded becomes the new baseline
            config = self.config
            self.cache.vars, self.cache.folder, self.cache.templates = config.vars, config.folder, self.fresh
            self.cache.sockets = config.sockets
        return self._specs


class _Problems:
    """Problems found while expanding, each located (file and line) in the file its template
    was written in: the config, or an included file. Files are read only once a problem is."""

    def __init__(self, config: Config):
        self.config = config
        self.items: list[ConfigProblem] = []
        self._by_source: dict[Path, Problems] = {}
        self._families: set[str] = set()
        self.distinct = 0  # problems that print as lines of their own: expansion stops past 20

    def __call__(self, keypath: str, message: str, family: str | None = None) -> None:
        name = keypath.split(".")[1] if keypath.startswith("workers.") else ""
        source = next((t.source for t in self.config.templates if t.name == name and t.source),
                      self.config.path)
        if source not in self._by_source:
            try:
                text = read_source(source).decode("utf-8", "replace")
            except OSError:
                text = ""
            self._by_source[source] = Problems(source, text)
        located = self._by_source[source]
        located.add(keypath, message)
        located.items[-1].family = family
        self.items.append(located.items[-1])
        if family is None or family not in self._families:
            self.distinct += 1
            if family is not None:
                self._families.add(family)


def _expand_all(config: Config, cache: ExpansionCache | None, variables: dict[str, Any],
                problem: _Problems, fresh: dict[str, tuple[Template, list[ProcessSpec]]],
                clock: Slices) -> Iterator[None]:
    """A generator: yields whenever `clock` says the slice is up; returns the specs."""
    renderer = Renderer()
    sockets = socket_context(config)
    specs: list[ProcessSpec] = []
    seen: dict[str, str] = {}
    reuse = cache if cache is not None and cache.usable(config) else None
    for template in config.templates:
        clock.template = template.name
        if clock.over():
            problem(f"workers.{template.name}", f"the expansion took longer than {TOTAL_SECONDS:g}s "
                    "in all; stopped here")
            break
        made = reuse.get(template) if reuse is not None else None
        room = config.settings.max_instances - len(specs)
        try:
            if made is None:
                made = yield from _expand_template(template, {**variables, "sockets": sockets.get(template.name, {})},
                                                   config, renderer, problem, room, clock,
                                                   reuse.cells(template) if reuse is not None else None)
            elif len(made) > room:
                raise _TooMany()
        except _TooMany:
            _too_many(template, config, problem)
            break  # once: every later template would say the same
        if made is None:
            if problem.distinct > 20:
                break
            continue
        fresh[template.name] = (template, made)
        for spec in made:
            if spec.name in seen:
                problem(f"workers.{template.name}.name",
                        f"duplicate instance name {spec.name!r} (also made by workers.{seen[spec.name]})",
                        family=f"workers.{template.name}.name: duplicate")
                continue
            seen[spec.name] = template.name
            specs.append(spec)
        if problem.distinct > 20:
            break
        if clock.due():
            yield
    return specs


class _TooMany(Exception):
    """The template's instances would not fit under max_instances."""


def _too_many(template: Template, config: Config, problem: Any) -> None:
    problem(f"workers.{template.name}",
            f"the config expands to more than {config.settings.max_instances} instances "
            f"(raise orchestrator.max_instances if that is intended)")


def socket_context(config: Config) -> dict[str, dict[str, dict[str, Any]]]:
    """Per template, `sockets.NAME.fd` / `.bind` / `.name` for the sockets it names: the fd
    numbers follow the order of its `sockets` list, from 3 (the systemd convention)."""
    declared = {d.name: d for d in config.sockets}
    return {t.name: {name: {"fd": 3 + i, "name": name, "bind": declared[name].address}
                     for i, name in enumerate(t.sockets)}
            for t in config.templates if t.sockets}


def _expand_template(template: Template, variables: dict[str, Any], config: Config, renderer: Renderer,
                     problem: Any, room: int, clock: Slices, cells: dict[Cell, ProcessSpec] | None) -> Iterator[None]:
    """A generator returning the template's instances; None (with the problem told) when it
    fails or would not fit in the `room` left under max_instances (checked before rendering).
    A cell found in `cells` (the last specs of this template, its matrix aside) is not rendered."""
    combos = combinations(template, variables, renderer, problem)
    if combos is None:
        return None
    count = replica_count(template.replicas)
    if len(combos) * count > room:
        raise _TooMany()
    made: list[ProcessSpec] = []
    for params in combos:
        for replica in range(count):
            spec = cached_cell(cells, params, replica)
            if spec is None:
                spec = _render(template, params, replica, variables, config.folder, renderer, problem)
            if spec is not None:
                made.append(spec)
            elif problem.distinct > 20:
                return None
            if clock.due() or clock.over():
                if clock.over():
                    problem(f"workers.{template.name}", f"the expansion took longer than "
                            f"{TOTAL_SECONDS:g}s in all; stopped here")
                    return None
                yield
    return made


def default_name(template: Template, params: dict[str, Any], replica: int) -> str:
    """Template name plus the matrix values, plus the replica number from replica 1 on.

    Replica 0 has no suffix whatever `replicas` is, so a name never depends on how many
    replicas there are: scaling 1 -> 2 starts `w-1` and keeps `w` running (2 -> 1 stops `w-1`)."""
    parts = [template.name] + [_UNSAFE_NAME_CHARS.sub("_", _text(v)) for v in params.values()]
    if replica > 0:
        parts.append(str(replica))
    return "-".join(parts)


class _Refused(Exception):
    """A rendered value the template may not produce; the message says why."""


def _render(template: Template, params: dict[str, Any], replica: int, variables: dict[str, Any],
            folder: Path, renderer: Renderer, problem: Any) -> ProcessSpec | None:
    """One instance of the template, or None with the problem told (key path, cause)."""
    prefix = f"workers.{template.name}"
    context = {**variables, **params, "replica": replica, "template": template.name}
    step = ["name"]  # the key being rendered, for the problem's key path
    try:
        name = context["name"] = _instance_name(template, params, replica, context, renderer)
        step[0] = "command"
        argv, python = _program(template, name, context, folder, renderer, step)
        step[0] = "env"
        env = tuple(sorted((k, _text(renderer.value(v, context)) if isinstance(v, str) else _text(v))
                           for k, v in template.env))
        step[0] = "cwd"
        cwd = renderer.path(folder, template.cwd, context)
        setup = setup_fields(template, context, folder, renderer, step)
        setup.update(probe_fields(template, context, renderer, step))
        setup.update(autoscale_fields(template, default_name(template, params, 0), context, renderer,
                                      dict(python.kwargs) if python else None, step))
        refused = exec_problem(argv, env + setup.get("file_env", ()))
        if refused is not None:
            step[0] = refused[0] if refused[0] == "env" or template.target is None else "kwargs"
            raise _Refused(f"{name}: {refused[1]}")
    except _Refused as exc:
        problem(f"{prefix}.{step[0]}", str(exc), family=f"{prefix}.{step[0]}: {type(exc).__name__}")
        return None
    except SetupError as exc:  # the message names a file or user, never an env file's value
        problem(f"{prefix}.{exc.key}", str(exc), family=f"{prefix}.{exc.key}: {exc}")
        return None
    except template_errors() as exc:
        problem(f"{prefix}.{step[0]}", f"cannot render for {params or template.name}: {exc}",
                family=f"{prefix}.{step[0]}: {exc}")
        return None
    except ValueError as exc:  # shlex: unbalanced quotes
        problem(f"{prefix}.{step[0]}", f"cannot split the command: {exc}")
        return None
    return ProcessSpec.hashed(name=name, template=template.name, params=tuple(params.items()),
                              replica=replica, argv=argv, env=env, inherit_env=template.inherit,
                              cwd=cwd, policy=template.policy, python=python,
                              sockets=tuple((n, context["sockets"][n]["bind"]) for n in template.sockets),
                              **setup)



def _instance_name(template: Template, params: dict[str, Any], replica: int, context: dict[str, Any],
                   renderer: Renderer) -> str:
    if template.name_pattern is None:
        return default_name(template, params, replica)
    name = renderer.text(template.name_pattern, context).strip()
    if not name or re.search(r"[\s/]", name) or len(name) > 200:
        raise _Refused(f"instance name {name!r} must be non-empty, at most 200 characters, "
                       "without spaces or '/'")
    return name


def _program(template: Template, name: str, context: dict[str, Any], folder: Path, renderer: Renderer,
             step: list[str]) -> tuple[tuple[str, ...], PythonTarget | None]:
    """(argv, the Python target if any) of one instance."""
    python = None
    if template.target is not None:
        step[0] = "kwargs"
        kwargs = {k: _deep_value(renderer, v, context) for k, v in template.kwargs}
        paths = (str(folder),) + tuple(str((folder / p).resolve()) for p in template.pythonpath)
        python = PythonTarget(template.target, tuple(sorted(kwargs.items())), template.preload,
                              template.check_point, paths)
        argv = _python_argv(name, python)
    elif template.shell:
        argv = ("/bin/sh", "-c", renderer.shell(template.command, context))  # type: ignore[arg-type]
    elif isinstance(template.command, str):
        argv = renderer.command(template.command, context)
    else:
        argv = tuple(renderer.text(part, context) for part in template.command or ())
    if not argv or not argv[0]:
        step[0] = "command"
        raise _Refused(f"the command renders empty for {name}")
    return argv, python


def _python_argv(name: str, python: PythonTarget) -> tuple[str, ...]:
    argv = [sys.executable, "-m", "orchestrator.worker", "--target", python.target, "--name", name,
            "--kwargs", json.dumps(dict(python.kwargs), sort_keys=True, default=str),
            "--check-point", repr(python.check_point)]
    for entry in python.pythonpath:
        argv += ["--pythonpath", entry]
    return tuple(argv)


def check(path: Path) -> tuple[Config, list[ProcessSpec]]:
    """Load and expand, reporting every problem at once: when some templates fail to
    validate (an unknown key, a bad duration), the others are still rendered, so their
    render errors are not hidden behind the first fix."""
    from ..config.load import load_config
    try:
        config = load_config(path)
    except ConfigError as exc:
        if not isinstance(exc.partial, Config) or not exc.partial.templates:
            raise
        try:
            expand(exc.partial)
        except ConfigError as more:
            raise ConfigError(exc.problems + more.problems) from None
        raise
    return config, expand(config)


def summary(config: Config, specs: Iterable[ProcessSpec]) -> str:
    """One line: how many templates and instances a config gives."""
    count = sum(1 for _ in specs)
    return f"{config.path}: ok, {len(config.templates)} templates, {count} instances"


def _deep_value(renderer: Any, source: Any, context: dict[str, Any]) -> Any:
    """A kwarg rendered all the way down: strings inside lists and tables render too
    (`queues = ["{{ queue }}"]`)."""
    if isinstance(source, list):
        return [_deep_value(renderer, item, context) for item in source]
    if isinstance(source, dict):
        return {k: _deep_value(renderer, item, context) for k, item in source.items()}
    return renderer.value(source, context)
