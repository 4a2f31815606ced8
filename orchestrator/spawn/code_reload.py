"""New code for preloaded workers without a restart (`orch reload --code`), the spawner's half.

The master names the zygotes to renew by key (target, pythonpath, set-up). For each, a fresh
zygote is forked from the spawner (which never imports user code, so the new one imports
what is on disk now) and kept aside until it says "imported". Only when every one of them
has imported do they replace the current zygotes, all at once; the old ones get no more
work and are closed when their last worker is gone (their own workers keep running until
the master rolls them). If any fails (an import error, located in the user's file by
zygote.import_error, or an exit), every fresh one is closed and nothing changes. Either way
the master gets ("preloaded", token, [errors]).
"""

from __future__ import annotations

import os
import selectors
import signal
from typing import Any, Callable


class CodeReloads:  # pragma: no cover - runs in the spawner; covered by integration tests
    """The code reloads in progress in one spawner's ZygotePool."""

    def __init__(self, pool: Any, start: Callable[..., tuple[int, Any]], handle: Callable[..., Any]):
        self.pool = pool  # the ZygotePool: zygotes, selector, send, close, retire
        self.start_zygote = start
        self.new_handle = handle
        self.pending: dict[int, list[Any]] = {}  # token -> the fresh zygotes, importing
        self.previous: dict[tuple[Any, ...], tuple[int, Any]] = {}  # key -> (token, the zygote it replaced)

    def handle(self, message: tuple[Any, ...]) -> None:
        """("preload", token, keys) from the master, ("preload_abort", token) after its
        timeout, or ("preload_revert", token) when the roll onto the new code halted."""
        if message[0] == "preload":
            self.start(message[1], message[2])
        elif message[0] == "preload_revert":
            self.revert(message[1])
        else:
            self.abort(message[1], None)

    def start(self, token: int, keys: list[tuple[Any, ...]]) -> None:
        fresh: list[Any] = []
        self.pending[token] = fresh
        for key in keys:
            try:
                pid, sock = self.start_zygote(*key)
            except OSError as exc:
                self.abort(token, [f"preload zygote: {exc}"])
                return
            zygote = self.new_handle(tuple(key), pid, sock)
            zygote.reload = token
            self.pool.selector.register(sock, selectors.EVENT_READ, ("zygote", zygote))
            fresh.append(zygote)
        if not fresh:
            self.abort(token, [])

    def answered(self, zygote: Any) -> None:
        """A fresh zygote imported, failed, or exited: once all have imported, swap them in."""
        fresh = self.pending.get(zygote.reload)
        if fresh is None:
            return
        errors = [z.error or "the new zygote exited while importing" for z in fresh
                  if not z.imported and (z.error or z.closed)]
        if errors:
            self.abort(zygote.reload, errors)
        elif all(z.imported for z in fresh):
            token = zygote.reload
            del self.pending[token]
            for new in fresh:
                new.reload = None
                old = self.pool.zygotes.get(new.key)
                self.pool.zygotes[new.key] = new
                if old is not None:
                    old.replaced = True
                    self.previous[new.key] = (token, old)
                    self.pool._retire(old)
                    self.pool.close_if_idle(old)
            self.pool.send(("preloaded", token, []))

    def revert(self, token: int) -> None:
        """The new code of `token` died before it was ready: new processes fork from the old
        zygotes again, where they still run (the new ones go with their last worker)."""
        for key, (swapped, old) in list(self.previous.items()):
            if swapped != token or old.closed:
                continue
            del self.previous[key]
            new = self.pool.zygotes.get(key)
            old.replaced = False
            self.pool.retired.discard(old)
            self.pool.zygotes[key] = old
            if new is not None and new is not old:
                new.replaced = True
                self.pool._retire(new)
                self.pool.close_if_idle(new)

    def abort(self, token: int, errors: list[str] | None) -> None:
        """Close every fresh zygote of `token` (nothing forked from them yet); tell the master why."""
        for zygote in self.pending.pop(token, []):
            zygote.reload = None
            if not zygote.imported and not zygote.closed:  # still importing (given up on): it never reads us
                try:
                    os.kill(zygote.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.pool.close(zygote)
        if errors is not None:
            self.pool.send(("preloaded", token, errors))
