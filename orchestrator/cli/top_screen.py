"""`orch top`'s terminal side: curses, the refresh clock, and the requests the view asks for.

Thin on purpose: what is shown and what a key does live in `top.py` (pure, tested without a
terminal); this module fetches one status per refresh, reads keys, paints lines and runs actions.
"""

from __future__ import annotations

import curses
import locale
import os
import select
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..control.client import ControlClient, ControlError
from ..errors import OrchError
from ..observe.logs import log_path
from .top import HEADER_LINES, Line, TopState, apply_reply, handle_key, master_gone, render

_KEYS = {curses.KEY_UP: "up", curses.KEY_DOWN: "down", curses.KEY_PPAGE: "pgup",
         curses.KEY_NPAGE: "pgdn", curses.KEY_HOME: "home", curses.KEY_END: "end",
         curses.KEY_ENTER: "enter", curses.KEY_BACKSPACE: "backspace", curses.KEY_RESIZE: "resize",
         "\n": "enter", "\r": "enter", "\x1b": "esc", "\x7f": "backspace", "\x08": "backspace"}
_STATE_COLOURS = {"running": curses.COLOR_GREEN, "starting": curses.COLOR_YELLOW,
                  "stopping": curses.COLOR_YELLOW, "backoff": curses.COLOR_RED,
                  "crash-looping": curses.COLOR_RED, "exited": curses.COLOR_MAGENTA,
                  "stopped": curses.COLOR_BLUE}
# What a failed status request looks like: no socket, refused, closed, timed out, garbled.
FAILURES = (OrchError, ControlError, OSError, ValueError)
LOG_TAIL_BYTES = 64 * 1024
TICK_MS = 50
ACT_BATCH = 1000
TIMEOUT = 10.0  # a master that stops answering (SIGSTOP, overload) is reported, not waited for


def call(socket: Path, cmd: str, **args: Any) -> Any:
    """One request on a fresh connection, with a short timeout."""
    client = ControlClient(socket, timeout=TIMEOUT)
    try:
        return client.call(cmd, **args)
    finally:
        client.close()


def terminal_problem() -> str | None:
    """Why `orch top` cannot run here ("needs a terminal", ...), or None."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return "needs a terminal"
    term = os.environ.get("TERM", "")
    try:
        curses.setupterm(term or "unknown", sys.stdout.fileno())
    except curses.error:
        return f"does not know this terminal (TERM={term or 'unset'})"
    if not curses.tigetstr("cup"):  # no cursor addressing: TERM=dumb, an Emacs shell buffer
        return f"cannot drive this terminal (TERM={term})"
    return None


def terminal_gone(fd: int = 0) -> bool:
    """Whether the terminal `orch top` reads keys from has hung up (its emulator or ssh
    session closed). A hang-up normally comes with SIGHUP, which ends us; without it (SIGHUP
    ignored, nohup, a pty whose other side just closed) every read fails at once."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0))


def run_top(socket: Path, log_dir: Path, patterns: tuple[str, ...], interval: float) -> int:
    """Run the full-screen view until `q`; returns the exit code."""
    locale.setlocale(locale.LC_ALL, "")  # so curses writes UTF-8 names as characters
    os.environ.setdefault("ESCDELAY", "25")  # Esc must not wait a second for a sequence
    return curses.wrapper(lambda screen: Top(screen, socket, log_dir, patterns, interval).run())


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log (reading at most its last 64 KiB)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return ["(no output yet: the log file appears with the instance's first line)"]
    except OSError as exc:
        return [f"(cannot read {path}: {exc.strerror})"]
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


class Top:
    """One session of the view: owns the curses screen and the `TopState`."""

    def __init__(self, screen: Any, socket: Path, log_dir: Path, patterns: tuple[str, ...],
                 interval: float):
        self.screen = screen
        self.socket = socket
        self.log_dir = log_dir
        self.interval = interval
        self.state = TopState(patterns=patterns)
        self.styles = _styles(colour=not os.environ.get("NO_COLOR"))
        self.painted: list[Line] = []  # the lines of the last frame, to find the rows that changed
        self.ascii = "utf" not in (locale.getpreferredencoding(False) or "").lower()
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal without cursor control still works
        screen.keypad(True)

    def run(self) -> int:
        fetcher = Fetcher(self.socket, self.interval)
        fetcher.start()
        changed = True
        while True:
            news = fetcher.take()
            if news is not None:
                self.follow_size()
                self.apply(news)
                changed = True
            if changed:
                self.paint()
            self.screen.timeout(TICK_MS)  # how soon a reply that arrived gets on screen
            try:
                key = self.screen.get_wch()
            except curses.error:
                if terminal_gone():  # else a hung-up terminal answers at once, forever: a spin
                    fetcher.stop()
                    return 1
                changed = False
                continue  # no key within the tick
            name = _KEYS.get(key, key if isinstance(key, str) else None)
            changed = name is not None
            result = handle_key(self.state, name, self._page()) if name not in (None, "resize") else None
            if result is None:
                continue
            if result[0] == "quit":
                fetcher.stop()
                return 0
            if result[0] == "act":
                self.act(result[1], result[2])
            fetcher.now()  # show the effect (a new pid, the log) at once

    def follow_size(self) -> None:
        """Catch a resize curses missed (one that lands between its start-up size query and
        its SIGWINCH handler leaves it drawing for the old size: garbage on screen)."""
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())
        except (OSError, AttributeError, ValueError):
            return
        if curses.is_term_resized(size.lines, size.columns):
            curses.resizeterm(size.lines, size.columns)

    def _page(self) -> int:
        return max(self.screen.getmaxyx()[0] - HEADER_LINES - 1, 1)

    def apply(self, news: tuple[str, Any]) -> None:
        """A status reply, or why there is none: then keep the last picture and say so."""
        kind, value = news
        if kind == "reply":
            apply_reply(self.state, value, time.time())
        else:
            master_gone(self.state, value)
        if self.state.mode == "log" and self.state.log_name:
            self.state.log_lines = tail_lines(log_path(self.log_dir, self.state.log_name), self._page())

    def act(self, action: str, names: list[str]) -> None:
        """Restart/stop/start through the control socket; the outcome goes to the message line.
        Exact names, in batches: a filtered set of thousands stays under the request size limit."""
        done: list[str] = []
        try:
            for start in range(0, len(names), ACT_BATCH):
                done += call(self.socket, action, patterns=names[start:start + ACT_BATCH])
        except FAILURES as exc:
            self.state.message = f"{action} failed after {len(done)} of {len(names)}: {exc}"
            return
        what = done[0] if len(done) == 1 else f"{len(done)} instances"
        self.state.message = f"{action}: {what} at {time.strftime('%H:%M:%S')}"

    def paint(self) -> None:
        """Draw a frame; every line that changed is rewritten whole.

        ncurses (6.4) flushes after each cursor move, so a diffed update reaches the terminal
        in pieces: one write with a row's new pid, the next with its restart count. Whatever
        reads the terminal between them (a person, tmux capture-pane) saw a new pid beside the
        old count. A line redrawn whole has no move inside it: each row arrives in one write."""
        height, width = self.screen.getmaxyx()
        lines = render(self.state, width, height)
        self.screen.erase()
        for y, line in enumerate(lines):
            x = 0
            for text, style in line:
                if self.ascii:
                    text = text.replace("\u2191\u2193", "up/down").encode("ascii", "replace").decode()
                try:
                    self.screen.addnstr(y, x, text, max(width - x, 0), self.styles.get(style, 0))
                except curses.error:
                    pass  # the bottom-right cell: curses writes it, then reports the cursor move
                x += len(text)
        for y, line in enumerate(lines):
            if y >= len(self.painted) or line != self.painted[y]:
                self.screen.redrawln(y, 1)
        self.painted = lines
        self.screen.refresh()


class Fetcher(threading.Thread):
    """Asks the master for `status` in the background, so keys and painting never wait for it
    (at 5,000 instances one reply takes the master a few hundred ms). Only the main thread
    touches curses; this one hands over the newest reply (or failure) through `take()`."""

    def __init__(self, socket: Path, interval: float):
        super().__init__(name="orch-top-fetch", daemon=True)
        self.socket = socket
        self.interval = interval
        self.lock = threading.Lock()
        self.latest: tuple[str, Any] | None = None
        self.wake = threading.Event()
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            started = time.monotonic()
            try:
                news: tuple[str, Any] = ("reply", call(self.socket, "status"))
            except TimeoutError:
                news = ("gone", f"no answer within {TIMEOUT:.0f}s")
            except FAILURES as exc:
                news = ("gone", str(exc) or type(exc).__name__)
            with self.lock:
                self.latest = news
            # A slow master is asked less often: top takes at most a third of its time.
            self.wake.wait(max(self.interval, 2 * (time.monotonic() - started)))
            self.wake.clear()

    def take(self) -> tuple[str, Any] | None:
        with self.lock:
            news, self.latest = self.latest, None
        return news

    def now(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()


def _styles(colour: bool) -> dict[str, int]:
    """Terminal attributes for render()'s style names; colour only where the terminal has it
    and NO_COLOR is unset (then states are plain and errors bold)."""
    styles = {"heading": curses.A_BOLD, "selected": curses.A_REVERSE, "error": curses.A_BOLD,
              "help": curses.A_REVERSE, "input": curses.A_BOLD}
    if not colour or not curses.has_colors():
        return styles
    curses.start_color()
    try:
        curses.use_default_colors()
        background = -1
    except curses.error:
        background = curses.COLOR_BLACK
    for number, (state, fg) in enumerate(_STATE_COLOURS.items(), start=1):
        curses.init_pair(number, fg, background)
        styles[f"state:{state}"] = curses.color_pair(number)
    curses.init_pair(len(_STATE_COLOURS) + 1, curses.COLOR_RED, background)
    styles["error"] = curses.color_pair(len(_STATE_COLOURS) + 1) | curses.A_BOLD
    return styles
