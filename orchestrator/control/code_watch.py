"""`code_watch`: each template's globs of source files, watched with watchdog's observer
(observer.py, recursive here) so that saving one gives the template's preloaded instances
the new code, as `orch reload --code template:NAME` does (supervise/code_reload.py).
Observer events named as observer.py names them ("overflow": events were lost).

The globs are relative to the config's folder; `**` matches any depth (none too), `*` and
`?` stay within one name. `__pycache__` is never looked at: a zygote importing the new code
writes its .pyc files there, which must not start another reload. A deploy writes many
files at once: a template's reload waits until its files have been quiet for DEBOUNCE."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from ..loop import EventLoop, Timer

log = logging.getLogger("orch")
DEBOUNCE = 0.5  # seconds without another save of a template's files before its code reloads
_WILD = re.compile(r"[*?\[]")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over whole paths as a regex (pure): `**/` any folders or none, `**` anything,
    `*` and `?` within one name, `[...]` a class (`[!...]` its complement)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def root_of(pattern: str) -> str:
    """The folder a glob's matches all live under: its leading names without a wildcard (pure)."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if _WILD.search(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def absolute_globs(folder: Path, patterns: tuple[str, ...]) -> list[str]:
    base = os.path.realpath(folder)
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in patterns]


class CodeWatch:
    """Reloads a template's code (`reload(names, label, on_done)`, supervise/code_reload.py)
    once a save of its code_watch files settles."""

    def __init__(self, loop: EventLoop, supervisor: Any, reload: Callable[..., None]) -> None:
        self.loop = loop
        self.supervisor = supervisor  # its instances, by template
        self.reload = reload
        self.globs: dict[str, tuple[re.Pattern[str], ...]] = {}  # replaced whole: read by the observer
        self.inotify: Any = None  # observer.FolderWatch, recursive; made (watchdog imported) on first use
        self._timers: dict[str, Timer] = {}

    def follow(self, config: Any) -> None:
        """Watch the code_watch globs of `config`'s templates (at start-up, after each reload)."""
        wanted = {t.name: t.policy.code_watch for t in config.templates if t.policy.code_watch}
        if wanted or self.globs:
            self.set(config.folder, wanted)

    def set(self, folder: Path, templates: Mapping[str, tuple[str, ...]]) -> None:
        """Watch these templates' globs (those of the config in `folder`) and no others."""
        patterns = {name: absolute_globs(folder, globs) for name, globs in templates.items() if globs}
        self.globs = {name: tuple(glob_regex(p) for p in found) for name, found in patterns.items()}
        roots = sorted({root_of(p) for found in patterns.values() for p in found})
        roots = [r for r in roots if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in roots)]
        if self.inotify is None:
            from .observer import FolderWatch
            self.inotify = FolderWatch(self.loop, self._event, self._wanted, recursive=True)
            self.inotify.start()
        for folder_ in self.inotify.folders - set(roots):
            self.inotify.remove(folder_)
        for root in roots:
            try:
                self.inotify.add(root)
            except OSError as exc:
                log.warning("code_watch: cannot watch %s: %s", root, exc.strerror or exc)
        for name in set(self._timers) - set(self.globs):
            self._timers.pop(name).cancel()

    def _templates(self, path: str | None) -> list[str]:
        if not path or "/__pycache__/" in path:
            return []
        return [name for name, regexes in self.globs.items() if any(r.match(path) for r in regexes)]

    def _wanted(self, event: tuple[str, str, str | None]) -> bool:
        """On the observer's thread: only saves of watched files reach the loop."""
        kind, src, dest = event
        return kind == "overflow" or bool(self._templates(src) or self._templates(dest))

    def _event(self, kind: str, src: str, dest: str | None) -> None:
        names = list(self.globs) if kind == "overflow" else {*self._templates(src), *self._templates(dest)}
        for name in names:
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()
            self._timers[name] = self.loop.call_later(DEBOUNCE, lambda name=name: self._fire(name))

    def _fire(self, template: str) -> None:
        self._timers.pop(template, None)
        if template in self.globs:
            names = [n for n, i in self.supervisor.instances.items() if i.spec.template == template]
            self.reload(names, f"code_watch of template:{template}", lambda result: None)  # it logs the outcome

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self.inotify is not None:
            self.inotify.stop()
