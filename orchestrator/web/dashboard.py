"""The dashboard (`[orchestrator] http = "127.0.0.1:9200"`): one page and its API, served
from the master's loop.

Every request needs the token (web/auth.py); anything without it gets a bare 401 and
nothing else. Reading is GET; an action (start, stop, restart of an instance or of a
template) is a POST from the page's own origin and runs the control command `orch start`,
`orch stop` or `orch restart` would run. Routes:

    GET  /?token=T                 sets the cookie, 303 to /
    GET  /  /static/app.js  /static/app.css
    GET  /api/stream?offset=&limit=&q=&state=   server-sent events (web/feed.py)
    GET  /api/instance?name=N      the row, the last hour of CPU and memory, its events
    GET  /api/log?name=N&lines=200[&stderr=1]   the tail of its log
    POST /api/start|stop|restart?name=N  or  ?template=T
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from ..control.client import ControlError
from ..control.commands import Commands
from ..observe.logs import log_path, stderr_path
from . import auth
from .feed import Feed, refresh_usage, row
from .history import History
from .http import Conn, HttpServer, Request, response

log = logging.getLogger("orch")
ACTIONS = ("start", "stop", "restart")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/app.css": ("app.css", "text/css; charset=utf-8")}
LOG_TAIL_BYTES = 64 * 1024
MAX_LINES = 1000
JSON = "application/json"


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`, already validated by the config."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def tail(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log, reading at most its last LOG_TAIL_BYTES (a local
    file the master itself writes: no wait worth a thread)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - LOG_TAIL_BYTES)
            handle.seek(start)
            data = handle.read(LOG_TAIL_BYTES)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"(cannot read {path.name}: {exc.strerror})"]
    if start:
        data = data[data.find(b"\n") + 1:]  # drop the cut first line
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


class Dashboard:
    """The dashboard of one master: its server, feed, history and token."""

    def __init__(self, master: Any, sock: socket.socket | None = None):
        """`sock`: the listening socket an upgraded master handed over (open pages reconnect to it)."""
        settings = master.settings
        self.master = master
        self.supervisor = master.supervisor
        self.log_dir: Path = settings.log_dir
        # the control socket's own command handlers (a fresh set only if it has none)
        handler = getattr(master.control, "handler", None)
        self.commands: Commands = handler if isinstance(handler, Commands) else Commands(master)
        self.token, self.token_file = auth.load_token(settings.http_token_file, settings.control_socket)
        self.assets = {path: (_asset(name), kind) for path, (name, kind) in STATIC.items()}
        self.server = HttpServer(master.loop, parse_address(settings.http), self.handle, "dashboard", sock)
        self.port = self.server.address[1]
        if not ipaddress.ip_address(self.server.address[0].split("%")[0]).is_loopback:
            log.warning("dashboard on %s, not a loopback address: plain HTTP, so the token crosses the "
                        "network in clear (a TLS proxy or an SSH tunnel keeps it private)", settings.http)
        instances = lambda: self.supervisor.instances  # noqa: E731 - the dict itself, no copy
        self.history = History(master.loop, instances, self.supervisor.tree_usage)
        self.feed = Feed(master.loop, instances, self.supervisor.tree_usage, getattr(master, "journal", None))
        self.supervisor.events.subscribe(self.feed.on_event)

    @property
    def url(self) -> str:
        """The address to open in a browser, token included."""
        host = self.server.address[0]
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    # --- requests ----------------------------------------------------------------
    def handle(self, request: Request, conn: Conn) -> None:
        """Answer one request; nothing but 401 without the token."""
        if request.path == "/" and "token" in request.query and request.method == "GET":
            if not auth.same(request.query["token"], self.token):
                conn.finish(_unauthorized())
                return
            conn.finish(response(303, b"", headers=("Location: /", "Set-Cookie: " + auth.set_cookie(
                self.token, self.port))))
            return
        if not auth.authorized(request.headers, self.token, self.port):
            conn.finish(_unauthorized())
            return
        try:
            self._route(request, conn)
        except ControlError as exc:
            conn.finish(_json(404 if "no instance" in str(exc) else 409, {"error": str(exc)}))
        except Exception:  # noqa: BLE001 - a bug here must cost one answer, not the master
            log.exception("dashboard: internal error answering %s %s", request.method, request.path)
            conn.finish(response(500, b"internal error (see the master's log)\n"))

    def _route(self, request: Request, conn: Conn) -> None:
        path, method = request.path, request.method
        action = path.removeprefix("/api/")
        if action in ACTIONS:
            if method != "POST":
                conn.finish(response(405, b"actions are POST only\n", headers=("Allow: POST",)))
            elif auth.cross_site(request.headers):
                conn.finish(response(403, b"cross-site request refused\n"))
            else:
                conn.finish(_json(200, self.act(action, request.query)))
            return
        if method != "GET" and not (method == "HEAD" and path in self.assets):
            conn.finish(response(405, b"GET only\n", headers=("Allow: GET",)))
        elif path in self.assets:
            body, kind = self.assets[path]
            conn.finish(response(200, body if method == "GET" else b"", kind))
        elif path == "/api/stream":
            self.feed.open(conn, request.query)
        elif path == "/api/instance":
            conn.finish(_json(200, self.instance(request.query.get("name", ""))))
        elif path == "/api/log":
            conn.finish(_json(200, self.log(request.query)))
        else:
            conn.finish(response(404, b"not found\n"))

    # --- answers -----------------------------------------------------------------
    def act(self, action: str, query: dict[str, str]) -> dict[str, Any]:
        """Run `orch ACTION NAME` or `orch ACTION template:T` as the control socket would."""
        if "template" in query:
            pattern = "template:" + query["template"]
        elif "name" in query:
            pattern = query["name"]
            if pattern not in self.supervisor.instances:  # an exact name, never a glob from a URL
                raise ControlError(f"no instance named {pattern!r}", 2)
        else:
            raise ControlError("say which: ?name=INSTANCE or ?template=TEMPLATE", 2)
        names = getattr(self.commands, f"cmd_{action}")(conn=None, patterns=[pattern])
        log.info("dashboard: %s %s (%d instances)", action, pattern, len(names))
        return {"action": action, "instances": names}

    def _instance(self, name: str) -> Any:
        inst = self.supervisor.instances.get(name)
        if inst is None:
            raise ControlError(f"no instance named {name!r}", 2)
        return inst

    def instance(self, name: str) -> dict[str, Any]:
        """The detail panel: the row, its hour of samples, its journal records."""
        inst = self._instance(name)
        refresh_usage([inst], self.supervisor.tree_usage, self.master.loop.time())
        journal = getattr(self.master, "journal", None)
        events = [r for r in journal.recent() if r.get("instance") == name][-50:] if journal is not None else []
        return {"row": row(inst), "history": self.history.series(name), "events": events,
                "step": self.history.step, "limit_kills": dict(inst.limit_kills)}

    def log(self, query: dict[str, str]) -> dict[str, Any]:
        name = self._instance(query.get("name", "")).name
        try:
            count = max(1, min(MAX_LINES, int(query.get("lines", "200"))))
        except ValueError:
            count = 200
        path = log_path(self.log_dir, name)
        if query.get("stderr") == "1":
            path = stderr_path(path)
        return {"name": name, "file": str(path), "lines": tail(path, count)}

    # --- upgrades (handover/) --------------------------------------------------------
    def handover(self) -> list[dict[str, Any]]:
        """Every open connection as an upgrade carries it: a request still arriving, an
        answer still being sent, a page's stream (its query and place in the journal)."""
        streams = {id(stream.conn.sock): stream for stream in self.feed.streams}
        pages = self.server.handover()
        for page in pages:
            stream = streams.get(id(page["sock"])) if page.pop("streaming") else None
            page["stream"] = stream.handover() if stream is not None else None
        return pages

    def take_over(self, sock: socket.socket | None, page: dict[str, Any]) -> None:
        """One connection of the master before an upgrade, served on here as it stood."""
        if sock is not None:
            conn = self.server.adopt(sock, page["inbuf"], page["out"])
            if page.get("stream") is not None:
                self.feed.take_over(conn, page["stream"])

    def close(self) -> None:
        self.history.close()
        self.feed.close()
        self.server.close()


def _asset(name: str) -> bytes:
    return resources.files("orchestrator.web").joinpath("static", name).read_bytes()


def _json(status: int, value: Any) -> bytes:
    return response(status, json.dumps(value).encode(), JSON)


def _unauthorized() -> bytes:
    return response(401, b"401 Unauthorized\n", headers=("WWW-Authenticate: Bearer",))
