"""Who may use the dashboard: one token, kept in a 0600 file, asked of every request.

A request carries it as `Authorization: Bearer TOKEN` or, once a browser has opened
`/?token=TOKEN`, as an HttpOnly, SameSite=Strict cookie. Comparisons take constant time.
A POST (every action) must also come from the page itself: an `Origin` or `Sec-Fetch-Site`
naming another site is refused, so another page open in the same browser cannot press a
button (SameSite already keeps the cookie from its requests; this is the second lock).
Pure apart from reading and writing the token file.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import OrchError

TOKEN_BYTES = 32  # 256 bits, as URL-safe base64: 43 characters
MIN_TOKEN = 16  # characters a given token file must hold at least


def token_path(control_socket: Path) -> Path:
    """Where the master keeps a generated token: beside its control socket."""
    return control_socket.with_name(control_socket.name + ".http-token")


def load_token(given: Path | None, control_socket: Path) -> tuple[str, Path]:
    """(token, file): read from `given` (which must exist and be owner-only), or else the
    generated file beside the control socket, created 0600 when missing or unsafe (kept
    across restarts, so an open page and its cookie keep working)."""
    if given is not None:
        return _read_given(given), given
    path = token_path(control_socket)
    try:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
            token = path.read_text().strip()
            if len(token) >= MIN_TOKEN:
                return token, path
    except OSError:
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)
    _write_private(path, token)
    return token, path


def _read_given(path: Path) -> str:
    where = f"orchestrator.http_token_file: {path}"
    try:
        info = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise OrchError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    if info.st_mode & 0o077:
        raise OrchError(f"{where}: readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                        f"chmod 600 it")
    token = text.strip()
    if len(token) < MIN_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise OrchError(f"{where}: the token must be one line of at least {MIN_TOKEN} printable "
                        f"characters without spaces")
    return token


def _write_private(path: Path, token: str) -> None:
    """Replace `path` by a new 0600 file holding `token` (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)
    os.replace(temp, path)


def same(given: str | None, token: str) -> bool:
    """`given` is the token (constant time in its content)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(errors="replace"), token.encode())


def cookie_name(port: int) -> str:
    """The cookie's name: cookies ignore ports, so two masters of one host need two names."""
    return f"orch_token_{port}"


def bearer(headers: dict[str, str]) -> str | None:
    """The token of an `Authorization: Bearer` header, if any."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def cookie(headers: dict[str, str], name: str) -> str | None:
    """The value of cookie `name`, if the request has it."""
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def authorized(headers: dict[str, str], token: str, port: int) -> bool:
    """The request carries the token, as a bearer header or the dashboard's cookie."""
    return same(bearer(headers), token) or same(cookie(headers, cookie_name(port)), token)


def set_cookie(token: str, port: int) -> str:
    """The Set-Cookie value a browser gets for `/?token=`: script cannot read it, and no
    other site's request carries it."""
    return f"{cookie_name(port)}={token}; HttpOnly; SameSite=Strict; Path=/"


def cross_site(headers: dict[str, str]) -> bool:
    """A browser says this request comes from another site (checked on every POST): its
    `Sec-Fetch-Site`, or an `Origin` whose host:port is not the `Host` it was sent to. A
    client that sends neither (curl with a bearer token) is not a browser page."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    parts = urlsplit(origin)
    return parts.scheme not in ("http", "https") or parts.netloc.lower() != headers.get("host", "").lower()
