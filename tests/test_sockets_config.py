"""`[sockets.*]` in the config: located errors, fd numbering, hashes; and bind failures at
`orch up` and on reload, which change nothing."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import orch, wait_for
from orchestrator.config.load import load_config
from orchestrator.errors import ConfigError
from orchestrator.expand.render import expand

PY = sys.executable


def _load(tmp_path: Path, text: str):
    path = tmp_path / "workers.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    config = load_config(path)
    return config, expand(config)


def _problem(tmp_path: Path, text: str):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


@pytest.mark.parametrize("text, keypath, fragment, line", [
    ('[sockets.web]\nbind = "localhost"\n[workers.w]\ncommand = "x"\n', "sockets.web.bind", "HOST:PORT", 2),
    ('[sockets.web]\nbind = "[::1:80"\n[workers.w]\ncommand = "x"\n', "sockets.web.bind", "[IPV6]:PORT", 2),
    ('[sockets.web]\nbind = "unix:"\n[workers.w]\ncommand = "x"\n', "sockets.web.bind", "path after unix:", 2),
    ('[sockets.web]\nbacklog = 5\n[workers.w]\ncommand = "x"\n', "sockets.web", "missing 'bind'", 1),
    ('[sockets.web]\nbind = "127.0.0.1:80"\nbaclog = 5\n[workers.w]\ncommand = "x"\n', "sockets.web.baclog",
     "did you mean 'backlog'", 3),
    ('[sockets.web]\nbind = "127.0.0.1:80"\nmode = "0660"\n[workers.w]\ncommand = "x"\n', "sockets.web.mode",
     "unix: sockets only", 3),
    ('[sockets.web]\nbind = "unix:a.sock"\nmode = "rw"\n[workers.w]\ncommand = "x"\n', "sockets.web.mode",
     "octal", 3),
    ('[sockets.a]\nbind = "127.0.0.1:80"\n[sockets.b]\nbind = "127.0.0.1:80"\n[workers.w]\ncommand = "x"\n',
     "sockets.b.bind", "also bound by sockets.a", 4),
    ('[sockets.web]\nbind = "127.0.0.1:80"\n[workers.w]\ncommand = "x"\nsockets = ["wbe"]\n',
     "workers.w.sockets", "no [sockets.wbe] table", 5),
    ('[sockets.web]\nbind = "127.0.0.1:80"\n[workers.w]\ncommand = "x"\nsockets = ["web", "web"]\n',
     "workers.w.sockets", "named twice", 5),
    ('[sockets.web]\nbind = "127.0.0.1:80"\n[workers.w]\ncommand = "x {{ sockets.other.fd }}"\nsockets = ["web"]\n',
     "workers.w.command", "other", 4),
])
def test_bad_socket_config_is_located(tmp_path, text, keypath, fragment, line):
    problem = _problem(tmp_path, text)
    assert (problem.keypath, problem.line) == (keypath, line) and fragment in problem.message, problem


def test_fds_follow_the_templates_order_and_bind_is_in_the_process_hash(tmp_path):
    base = """
        [sockets.web]
        bind = "127.0.0.1:8000"
        backlog = BACKLOG
        [sockets.admin]
        bind = "unix:run/admin.sock"
        [workers.w]
        command = "serve --web {{ sockets.web.fd }} --admin {{ sockets.admin.fd }} {{ sockets.admin.bind }}"
        sockets = ORDER
        """
    _, (spec,) = _load(tmp_path, base.replace("ORDER", '["admin", "web"]').replace("BACKLOG", "10"))
    assert spec.argv == ("serve", "--web", "4", "--admin", "3", f"unix:{tmp_path}/run/admin.sock")
    assert spec.sockets == (("admin", f"unix:{tmp_path}/run/admin.sock"), ("web", "127.0.0.1:8000"))
    _, (same,) = _load(tmp_path, base.replace("ORDER", '["admin", "web"]').replace("BACKLOG", "20"))
    assert same.process_hash == spec.process_hash  # a backlog change is applied to the socket in place
    _, (moved,) = _load(tmp_path, base.replace("ORDER", '["admin", "web"]').replace("BACKLOG", "10")
                        .replace("8000", "8001"))
    assert moved.process_hash != spec.process_hash and moved.argv == spec.argv


def _busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def test_orch_up_with_a_port_in_use_is_a_config_error(tmp_path):
    busy, port = _busy_port()
    with busy:
        config = tmp_path / "workers.toml"
        config.write_text(f'[sockets.web]\nbind = "127.0.0.1:{port}"\n[workers.w]\ncommand = "sleep 60"\n'
                          'sockets = ["web"]\n')
        result = orch("up", "-c", str(config), "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert f"workers.toml:2: sockets.web.bind: cannot bind 127.0.0.1:{port}: Address already in use" in first
    assert "Traceback" not in result.stderr


def test_a_failed_bind_or_a_removed_socket_on_reload_leaves_the_fleet_untouched(start_master, tmp_path):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    config = f"""
        [sockets.web]
        bind = "127.0.0.1:{port}"
        [workers.web]
        command = "{PY} -m orchestrator.demo.web"
        sockets = ["web"]
        replicas = 2
        """
    master = start_master(config)
    pids = master.wait_running(2)
    busy, other = _busy_port()
    with busy:
        master.write(config.replace(str(port), str(other)))
        wait_for(lambda: master.call("ping").get("last_reload_error") or
                 "Address already in use" in master.stderr(), 10, message="the failed reload")
        assert f"cannot bind 127.0.0.1:{other}" in master.stderr()
    master.write(config.replace('[sockets.web]\n        bind = "127.0.0.1:%d"' % port, ""))
    wait_for(lambda: "no [sockets.web] table" in master.stderr(), 10, message="the refused removal")
    assert master.pids() == pids
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # still served
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 200 OK")


def test_a_stale_unix_socket_file_is_replaced_and_a_live_one_is_an_error(tmp_path):
    from orchestrator.config.sockets import SocketDecl
    from orchestrator.spawn.listeners import BindFailed, Listeners
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed server leaves
    decl = SocketDecl("web", f"unix:{path}", 16, 0o640)
    listeners = Listeners()
    listeners.update((decl,))
    assert (path.stat().st_mode & 0o777) == 0o640
    with pytest.raises(BindFailed, match="another process is listening"):
        Listeners().update((decl,))  # a live listener there is never stolen
    (tmp_path / "file").write_text("x")
    with pytest.raises(BindFailed, match="not a socket"):
        Listeners().update((SocketDecl("f", f"unix:{tmp_path / 'file'}"),))
    listeners.close_all()
    assert not path.exists()


def test_a_retired_socket_closes_only_when_unused(tmp_path):
    from orchestrator.config.sockets import SocketDecl
    from orchestrator.spawn.listeners import Listeners
    old, new = SocketDecl("web", f"unix:{tmp_path / 'a.sock'}"), SocketDecl("web", f"unix:{tmp_path / 'b.sock'}")
    listeners = Listeners()
    listeners.update((old,))
    assert [key for key, _ in listeners.update((new,))] == [new.key]
    assert listeners.release({old.key}) == [] and (tmp_path / "a.sock").exists()
    assert listeners.release(set()) == [old.key] and not (tmp_path / "a.sock").exists()
    assert list(listeners.held) == [new.key]
    listeners.close_all()


def test_the_shipped_web_config_is_valid(tmp_path):
    from conftest import ROOT
    (tmp_path / "web.toml").write_text((ROOT / "configs" / "web.toml").read_text())
    specs = expand(load_config(tmp_path / "web.toml"))
    assert len(specs) == 4 and all(s.sockets == (("web", "127.0.0.1:8000"),) and "3" in s.argv for s in specs)


def test_a_renamed_socket_keeps_its_address_and_its_queue(tmp_path):
    from orchestrator.config.sockets import SocketDecl
    from orchestrator.spawn.listeners import Listeners
    port = _busy_port()
    port[0].close()
    old, new = SocketDecl("web", f"127.0.0.1:{port[1]}"), SocketDecl("www", f"127.0.0.1:{port[1]}")
    listeners = Listeners()
    listeners.update((old,))
    client = socket.create_connection(("127.0.0.1", port[1]), timeout=5)  # queued, not yet accepted
    listeners.update((new,))  # no second bind of the same address (it would fail: in use)
    assert listeners.held[new.key] is listeners.held[old.key]
    assert listeners.release(set()) == [old.key]
    conn, _ = listeners.held[new.key].accept()  # the queued connection is still there
    conn.close()
    client.close()
    listeners.close_all()


def test_socket_names_travel_in_listen_fdnames(tmp_path):
    problem = _problem(tmp_path, '[sockets."a:b"]\nbind = "127.0.0.1:80"\n[workers.w]\ncommand = "x"\n')
    assert problem.keypath == "sockets.a:b" and "letters, digits" in problem.message


def test_close_all_closes_a_socket_held_under_two_names(tmp_path):
    from orchestrator.config.sockets import SocketDecl
    from orchestrator.spawn.listeners import Listeners
    listeners = Listeners()
    listeners.update((SocketDecl("web", f"unix:{tmp_path / 'a.sock'}"),))
    listeners.update((SocketDecl("www", f"unix:{tmp_path / 'a.sock'}"),))
    sock = next(iter(listeners.held.values()))
    listeners.close_all()
    assert sock.fileno() == -1 and not (tmp_path / "a.sock").exists()


def _listen_backlog(port: int) -> int | None:
    import shutil
    import subprocess
    assert shutil.which("ss"), "ss is not installed (Debian package iproute2)"
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return int(out[2]) if len(out) > 2 else None  # State Recv-Q Send-Q(= the backlog) ...


def test_backlog_changes_in_place_without_a_restart(start_master):
    busy, port = _busy_port()
    busy.close()
    config = f"""
        [sockets.web]
        bind = "127.0.0.1:{port}"
        backlog = 128
        [workers.web]
        command = "{PY} -m orchestrator.demo.web"
        sockets = ["web"]
        replicas = 2
        """
    master = start_master(config)
    pids = master.wait_running(2)
    assert _listen_backlog(port) == 128
    master.write(config.replace("backlog = 128", "backlog = 64"))
    wait_for(lambda: _listen_backlog(port) == 64, 10, message="the new backlog")
    assert master.pids() == pids


def test_an_address_that_is_not_local_is_a_config_error(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[sockets.web]\nbind = "192.0.2.1:8000"\n[workers.w]\ncommand = "sleep 60"\nsockets = ["web"]\n')
    result = orch("up", "-c", str(config), "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "cannot bind 192.0.2.1:8000: Cannot assign requested address" in result.stderr


def test_a_systemd_socket_is_adopted_by_its_address_when_its_name_differs(tmp_path):
    from orchestrator.config.sockets import SocketDecl
    from orchestrator.spawn.listeners import Listeners
    systemd = socket.socket()
    systemd.bind(("127.0.0.1", 0))
    systemd.listen(8)
    port = systemd.getsockname()[1]
    listeners = Listeners({"orch.socket": systemd})  # systemd's default name: the unit's
    listeners.update((SocketDecl("web", f"127.0.0.1:{port}"),))  # no bind: it would be in use
    assert next(iter(listeners.held.values())) is systemd
    listeners.close_all()
    assert systemd.fileno() != -1  # systemd's socket is never closed by orch
    systemd.close()


def test_an_abstract_unix_socket_has_no_file(tmp_path):
    from orchestrator.spawn.listeners import Listeners
    name = f"orch-test-{os.getpid()}"
    config, (spec,) = _load(tmp_path, f'[sockets.web]\nbind = "unix:@{name}"\n[workers.w]\ncommand = "x"\n'
                                      'sockets = ["web"]\n')
    assert spec.sockets == (("web", f"unix:@{name}"),)
    listeners = Listeners()
    listeners.update(config.sockets)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect("\0" + name)
    assert not list(tmp_path.glob("*@*"))
    listeners.close_all()
    with socket.socket(socket.AF_UNIX) as client, pytest.raises(ConnectionRefusedError):
        client.connect("\0" + name)
