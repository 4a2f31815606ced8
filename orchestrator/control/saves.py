"""What a config save looks like on disk: the names a lookup of the config goes through, the
content digest that tells a real change from a re-save, and how each file event is read.

Measured with inotify events (as control/inotify.py names them) (man/orch.1, CONFIG SAVES, lists the timings):
  vim (default, backupcopy=auto)  moved config->config~, created, modified, closed
  vim backupcopy=yes / nowritebackup, cp, a shell `>`   modified..., closed
  sed -i, `mv tmp config`, atomic writers               created tmp, closed tmp, moved tmp->config
  git checkout                                          deleted, created, modified, closed
  Kubernetes ConfigMap                                  moved ..data_tmp->..data (a symlink)
A close after writing or a rename onto a name the config's lookup uses is a finished save; a
deletion or rename away is a replacement in progress; a bare modification is a writer that
has not finished (or never closes).
"""

from __future__ import annotations

import os

from ..config.source import source_files, sources_digest  # noqa: F401 - re-exported

FINISHED, GONE, WRITING, IGNORE = "finished", "gone", "writing", "ignore"
MAX_LINKS = 40  # as the kernel's ELOOP limit: a symlink loop must not hang the watcher


def lookup_chain(path: str) -> list[str]:
    """Every name a lookup of `path` passes through: each symlink met (ConfigMap's `..data`
    too), then the real file; each name's folder is symlink-free, so it can be watched."""
    names: list[str] = []
    pending = [p for p in os.path.abspath(path).split(os.sep) if p]
    current, hops = os.sep, 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if hops < MAX_LINKS and os.path.islink(candidate):
            hops += 1
            names.append(candidate)
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = os.sep
            pending = [p for p in target.split(os.sep) if p] + pending
        else:
            current = candidate
    names.append(current)
    return names


def classify(kind: str, src: str, dest: str | None, watched: set[str], is_link: bool) -> str:
    """How one event touches the watched names: FINISHED, GONE, WRITING or IGNORE."""
    if dest is not None and dest in watched:
        return FINISHED  # renamed into place: the writer finished before renaming
    if src not in watched:
        return IGNORE
    if kind == "closed":
        return FINISHED
    if kind == "created" and is_link:
        return FINISHED  # a symlink is whole the moment it exists
    if kind in ("deleted", "moved"):
        return GONE
    if kind in ("created", "modified"):
        return WRITING
    return IGNORE  # attrib, opened, closed_no_write: no content change
