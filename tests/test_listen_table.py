"""Local tcp probes answered from the kernel's listener table (supervise/listen_table.py,
supervise/listen_lookup.py): the pure replies and verdicts on a table, then the real kernel
against real listeners, each answer compared with what a real connect to the same address
says (probe_checks.connect), and the fall-backs to the connect path."""

from __future__ import annotations

import errno
import resource
import socket
import struct
import sys

import pytest

from servers import free_port
from orchestrator.config.probes import Probe
from orchestrator.supervise import listen_table as table
from orchestrator.supervise.listen_lookup import ListenLookup, is_local, sees_listeners
from orchestrator.supervise.probe_checks import connect


def _probe(host: str, port: int) -> Probe:
    return Probe("readiness", "tcp", host, port, "", 10.0, 0.3, 1, 1)


# --- pure: replies and verdicts ------------------------------------------------------------

def _diag(seq: int, family: int, state: int, queued: int, backlog: int, ifindex: int = 0) -> bytes:
    sockid = bytes(36) + struct.pack("=I", ifindex) + bytes(8)  # ports, src, dst, if, cookie
    body = struct.pack("=BBBB", family, state, 0, 0) + sockid + struct.pack("=IIIII", 0, queued, backlog, 0, 0)
    body += b"\x08\x00\x08\x00\x00\x00\x00\x00"  # an attribute after the message: skipped
    return struct.pack("=IHHII", 16 + len(body), table.SOCK_DIAG_BY_FAMILY, 0, seq, 0) + body


def _error(seq: int, code: int) -> bytes:
    body = struct.pack("=i", -code) + bytes(16)
    return struct.pack("=IHHII", 16 + len(body), table.NLMSG_ERROR, 0, seq, 0) + body


def test_replies_are_read_back_by_sequence_number() -> None:
    data = _diag(7, socket.AF_INET, table.TCP_LISTEN, 0, 128, ifindex=1) + _error(8, errno.ENOENT) \
        + _diag(9, socket.AF_INET6, table.TCP_LISTEN, 3, 2)
    assert list(table.replies(data)) == [
        (7, table.Listener(socket.AF_INET, table.TCP_LISTEN, 1, 0, 128)), (8, errno.ENOENT),
        (9, table.Listener(socket.AF_INET6, table.TCP_LISTEN, 0, 3, 2))]
    assert list(table.replies(data[:-5])) == list(table.replies(data))[:2], "a truncated reply is dropped"
    assert list(table.replies(b"\x03\x00")) == []


@pytest.mark.parametrize("reply, expected", [
    (table.Listener(socket.AF_INET, table.TCP_LISTEN, 0, 0, 128), (True, "ok")),
    (table.Listener(socket.AF_INET, table.TCP_LISTEN, 0, 1, 1), (True, "ok")),  # the kernel drops only past it
    (table.Listener(socket.AF_INET, table.TCP_LISTEN, 0, 2, 1),
     (False, "127.0.0.1:9000: accept queue full (2 waiting, backlog 1)")),
    (errno.ENOENT, (False, "127.0.0.1:9000: connection refused")),
    (errno.EINVAL, None),  # only a connect can tell
    (table.Listener(socket.AF_INET, 1, 0, 0, 0), None),  # an established socket, not a listener
])
def test_verdicts(reply: table.Listener | int, expected: tuple[bool, str] | None) -> None:
    assert table.verdict(_probe("127.0.0.1", 9000), reply) == expected


def test_a_request_is_an_exact_inet_diag_request() -> None:
    data = table.request(5, table.question("::1", 8080, 1))
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data)
    assert (length, kind, flags, seq) == (len(data), table.SOCK_DIAG_BY_FAMILY, table.NLM_F_REQUEST, 5)
    assert len(data) == table.REQUEST_SIZE == 16 + 56
    assert data[16] == socket.AF_INET6 and struct.unpack_from("!H", data, 24)[0] == 8080
    assert data[28:44] == socket.inet_pton(socket.AF_INET6, "::1")


# --- the real kernel, each answer beside a real connect's ---------------------------------

def _connected(host: str, port: int) -> tuple[bool, str]:
    """What the connect path says (a connect still under way is reported as such)."""
    sock, state = connect(_probe(host, port))
    if sock is not None:
        sock.close()
        return (True, "ok") if state == 0 else (False, "under way")
    return False, str(state)


@pytest.fixture
def lookup():
    found = ListenLookup()
    yield found
    if found.sock is not None:
        found.sock.close()


def _answer(lookup: ListenLookup, host: str, port: int) -> tuple[bool, str] | None:
    return lookup.answer([_probe(host, port)])[0]


def test_a_listener_passes_and_once_closed_fails_with_the_connects_words(lookup: ListenLookup) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    assert _answer(lookup, "127.0.0.1", port) == (True, "ok") == _connected("127.0.0.1", port)
    server.close()
    assert _answer(lookup, "127.0.0.1", port) == (False, f"127.0.0.1:{port}: connection refused") \
        == _connected("127.0.0.1", port)
    assert lookup.sock is not None, "the table answered: no fall-back"


def test_a_full_accept_queue_fails_where_a_connect_would_wait(lookup: ListenLookup) -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=1)  # never accepts
    port = server.getsockname()[1]
    fillers = []
    try:
        while _answer(lookup, "127.0.0.1", port) == (True, "ok"):
            assert len(fillers) < 10, "the accept queue of a backlog-1 listener never filled"
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            fillers.append(sock)
            sock.connect_ex(("127.0.0.1", port))
        assert _answer(lookup, "127.0.0.1", port) == (
            False, f"127.0.0.1:{port}: accept queue full (2 waiting, backlog 1)")
        assert _connected("127.0.0.1", port) == (False, "under way"), "a connect's SYN was not dropped"
    finally:
        for sock in fillers:
            sock.close()
        server.close()


def _source_address() -> str | None:
    """This host's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("198.51.100.1", 9))
        except OSError:
            return None
        return sock.getsockname()[0]


def test_wildcard_and_exact_listeners_answer_as_the_kernel_routes_a_connect(lookup: ListenLookup) -> None:
    wildcard = socket.create_server(("0.0.0.0", 0))
    exact = socket.create_server(("127.0.0.1", 0))
    dual = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    only6 = socket.create_server(("::", 0), family=socket.AF_INET6)
    only6.close()
    only6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    only6.bind(("::", 0))
    only6.listen()
    v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    ports = {name: s.getsockname()[1] for name, s in
             [("wildcard", wildcard), ("exact", exact), ("dual", dual), ("only6", only6), ("v6", v6)]}
    cases = [("127.0.0.1", "wildcard", True), ("127.0.0.2", "wildcard", True), ("127.0.0.2", "exact", False),
             ("127.0.0.1", "dual", True), ("::1", "dual", True), ("::ffff:127.0.0.1", "dual", True),
             ("127.0.0.1", "only6", False), ("::1", "only6", True), ("::1", "v6", True),
             ("127.0.0.1", "v6", False), ("::1", "exact", False)]
    own = _source_address()
    if own is not None and own != "127.0.0.1":
        cases += [(own, "wildcard", True), (own, "exact", False)]
    try:
        for host, name, passes in cases:
            port = ports[name]
            answer = _answer(lookup, host, port)
            assert answer is not None and answer[0] is passes, (host, name, answer)
            assert answer == _connected(host, port), (host, name, "differs from a connect")
    finally:
        for sock in (wildcard, exact, dual, only6, v6):
            sock.close()


def test_an_address_not_on_this_host_goes_through_the_connect_path(lookup: ListenLookup) -> None:
    wildcard = socket.create_server(("0.0.0.0", 0))  # the table would say "ok" for any address
    port = wildcard.getsockname()[1]
    try:
        assert not is_local("192.0.2.77") and not is_local("fe80::1") and is_local("127.3.2.1")
        answers = lookup.answer([_probe("192.0.2.77", port), _probe("127.0.0.1", port)])
        assert answers == [None, (True, "ok")]
    finally:
        wildcard.close()


def test_without_a_netlink_socket_every_probe_connects(lookup: ListenLookup) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            while True:
                held.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except OSError:
            pass
        assert _answer(lookup, "127.0.0.1", port) is None and lookup.broken  # EMFILE: like a seccomp refusal
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _answer(lookup, "127.0.0.1", port) is None, "a broken lookup was retried"
    server.close()


def test_a_netlink_socket_that_cannot_see_listeners_is_not_used() -> None:
    """ENOENT from a kernel without inet_diag / tcp_diag must not read as "connection
    refused": the socket is tried on a listener of its own first."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, table.NETLINK_SOCK_DIAG) as diag:
        assert sees_listeners(diag, socket.if_nametoindex("lo"))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as route:  # NETLINK_ROUTE: no sock_diag
        assert not sees_listeners(route, socket.if_nametoindex("lo"))


def test_a_failing_round_falls_back_and_the_next_tick_reopens(lookup: ListenLookup) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        assert _answer(lookup, "127.0.0.1", port) == (True, "ok")
        assert lookup.sock is not None
        lookup.sock.close()  # the socket fails under the round: EBADF on send
        assert _answer(lookup, "127.0.0.1", port) is None and lookup.sock is None and not lookup.broken
        assert _answer(lookup, "127.0.0.1", port) == (True, "ok")
        route = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)  # NETLINK_ROUTE: no sock_diag there
        lookup.sock.close()
        lookup.sock = route
        assert _answer(lookup, "127.0.0.1", port) is None, "an answer the table cannot read must connect"
    finally:
        server.close()


def test_many_probes_in_one_tick_are_answered_in_batches(lookup: ListenLookup) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port, closed = server.getsockname()[1], free_port()
    try:
        probes = [_probe("127.0.0.1", port if i % 3 else closed) for i in range(300)]
        answers = lookup.answer(probes)
        assert answers == [(True, "ok") if i % 3 else (False, f"127.0.0.1:{closed}: connection refused")
                           for i in range(300)]
    finally:
        server.close()


# --- a real master -----------------------------------------------------------------------

LISTENER = '''
import os, socket, sys, time
port = int(sys.argv[1])
server = socket.create_server(("127.0.0.1", port))
server.settimeout(0.05)
while not os.path.exists(f"close-{port}"):
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    conn.close()
    with open(f"accepted-{port}", "a") as f:
        f.write("1")
server.close()
time.sleep(3600)
'''
FIELDS = {"kind", "target", "passing", "active", "checks", "failures", "failed", "last", "last_failure",
          "last_failure_at"}


def test_a_master_answers_local_tcp_probes_without_connecting(start_master, tmp_path) -> None:
    from conftest import orch, wait_for
    port = free_port()
    wildcard = socket.create_server(("0.0.0.0", 0))  # the table would pass a probe of any address here
    (tmp_path / "listen.py").write_text(LISTENER)
    master = start_master(f'''
    [workers.web]
    command = "{sys.executable} listen.py {port}"
    stop_timeout = "1s"
    probes = {{ readiness = {{ tcp = "127.0.0.1:{port}", period = "0.1s", failures = 1 }} }}

    [workers.far]
    command = "sleep 3600"
    stop_timeout = "1s"
    probes = {{ readiness = {{ tcp = "192.0.2.77:{wildcard.getsockname()[1]}", period = "0.2s", timeout = "0.2s" }} }}
    ''')
    try:
        row = wait_for(lambda: (r := master.status()["web"])["ready"] and r["probes"]["readiness"]["checks"] >= 5
                       and r, 10, message="web ready after five checks")
        probe = row["probes"]["readiness"]
        assert set(probe) == FIELDS and probe["kind"] == "tcp" and probe["target"] == f"127.0.0.1:{port}"
        assert probe["passing"] and probe["last"] == "ok"
        assert not (tmp_path / f"accepted-{port}").exists(), "the probes connected to the server"
        far = wait_for(lambda: (r := master.status()["far"]["probes"]["readiness"])["checks"] >= 1 and r, 10,
                       message="a check of the far probe")
        assert far["passing"] is False and far["last_failure"], far  # a connect's failure, not the table's "ok"
        (tmp_path / f"close-{port}").touch()
        words = f"127.0.0.1:{port}: connection refused"
        row = wait_for(lambda: (r := master.status()["web"])["ready"] is False and r, 5, message="not ready")
        assert row["probes"]["readiness"]["last_failure"] == words and row["state"] == "running"
        text = orch("status", "-c", str(master.config)).stdout
        assert "PROBES" in text and f"not ready, readiness: {words}" in text, text
    finally:
        wildcard.close()
