"""Answers the tcp probes of one tick whose address is this host's from the kernel's
listener table (supervise/listen_table.py), in one netlink round per 64 probes, instead of
a loopback connect + close each (85 us of CPU each on the bench machine, against about
7 us here). An address is this host's when it is a loopback address or one a socket can
bind (the kernel says EADDRNOTAVAIL for others; with ip_nonlocal_bind set that test proves
nothing, so only loopback counts). Anything else, a netlink socket that cannot be opened
(a seccomp filter, no sock_diag in the kernel) or that does not find a listener held for
the test when opened (no inet_diag / tcp_diag: every answer would be ENOENT), or a round
that fails, is left to the connect path (None), which stays the reference.

What can differ from a connect: a firewall rule on the loopback (a connect would be
dropped or rejected, the table still shows the listener); a SYN queue overflow without
syncookies; among SO_REUSEPORT listeners the kernel picks one per connection, here one per
request. The table is read when the check runs: no connection reaches the server, so it
neither logs nor accepts the probes.

The probes keep the 50 ms ticks (probe_ticks.py): a round costs about 20 us of CPU plus 6-9
us per probe (measured with 1 to 125 probes a round), so at 20 ticks a second the fixed part
is under 0.05 % of a core; a coarser tick shared by tcp probes would save no more than that
and delay each check by up to half of it."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path
from typing import Iterable

from ..config.probes import Probe
from .listen_table import NETLINK_SOCK_DIAG, TCP_LISTEN, Listener, question, replies, request, verdict

log = logging.getLogger("orch")
BATCH = 64  # requests per send: their replies (one skb each) fit the receive buffer
RCVBUF = 1 << 20
READ = 8192  # one reply a datagram (about 130 bytes); a larger buffer costs its allocation per recv


def _nonlocal_bind() -> bool:
    """Whether the kernel lets sockets bind addresses it does not own (then a bind proves
    nothing about an address)."""
    for path in ("/proc/sys/net/ipv4/ip_nonlocal_bind", "/proc/sys/net/ipv6/ip_nonlocal_bind"):
        try:
            if Path(path).read_text().strip() != "0":
                return True
        except OSError:
            continue
    return False


def is_local(host: str, bind_test: bool = True) -> bool:
    """Whether a connect to `host` stays on this host: loopback, or (bind_test) an address
    of one of its interfaces. Link-local and unspecified addresses are left to connect."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    if not bind_test or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def sees_listeners(sock: socket.socket, ifindex: int) -> bool:
    """Whether this sock_diag socket finds a listener held for the purpose. Without the
    kernel's inet_diag or tcp_diag every request is answered ENOENT, which would read as
    "connection refused" for every probe."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            sock.send(request(0, question("127.0.0.1", held.getsockname()[1], ifindex)))
            data = sock.recv(READ, socket.MSG_DONTWAIT)  # answered inside send(2)
    except OSError:
        return False
    return any(seq == 0 and isinstance(reply, Listener) and reply.state == TCP_LISTEN
               for seq, reply in replies(data))


class ListenLookup:
    """The master's netlink socket for sock_diag, opened on first use; `answer` a tick's
    tcp probes."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.broken = False  # it could not be opened: every probe connects
        self.seq = 0
        self.bind_test = not _nonlocal_bind()  # read once: a sysctl nobody flips under a master
        self.loopback = 1
        self.failed = 0  # rounds that failed (the first is logged)
        self.questions: dict[tuple[str, int], bytes] = {}  # (host, port): its request body

    def answer(self, probes: list[Probe]) -> list[tuple[bool, str] | None]:
        """(passed, detail) per probe, as a connect would end, or None where the probe must
        connect (not a local address, or netlink did not answer)."""
        results: list[tuple[bool, str] | None] = [None] * len(probes)
        local: dict[str, bool] = {}  # host: whether it is this host's, asked once a tick
        todo = []
        for i, probe in enumerate(probes):
            here = local.get(probe.host)
            if here is None:
                here = local[probe.host] = is_local(probe.host, self.bind_test)
            if here and probe.kind == "tcp":
                todo.append(i)
        if not todo or not self._open():
            return results
        for start in range(0, len(todo), BATCH):
            if not self._round([(i, probes[i]) for i in todo[start:start + BATCH]], results):
                break
        return results

    def _open(self) -> bool:
        if self.sock is not None:
            return True
        if self.broken:
            return False
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        except OSError as exc:
            self.broken = True
            log.info("tcp probes connect: no sock_diag netlink socket (%s)", exc.strerror or exc)
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        try:
            self.loopback = socket.if_nametoindex("lo")
        except OSError:
            self.loopback = 1
        if not sees_listeners(sock, self.loopback):
            sock.close()
            self.broken = True
            log.info("tcp probes connect: sock_diag does not answer for TCP listeners here")
            return False
        self.sock = sock
        return True

    def _round(self, batch: Iterable[tuple[int, Probe]], results: list[tuple[bool, str] | None]) -> bool:
        """One send of up to BATCH requests and the replies the kernel queued meanwhile (it
        answers inside send(2)); False, with the socket closed, when the round failed."""
        assert self.sock is not None
        wanted: dict[int, tuple[int, Probe]] = {}
        chunks = []
        for index, probe in batch:
            self.seq = self.seq % 0x7FFFFFFF + 1
            wanted[self.seq] = (index, probe)
            body = self.questions.get((probe.host, probe.port))
            if body is None:
                if len(self.questions) >= 65536:
                    self.questions.clear()
                body = self.questions[probe.host, probe.port] = question(probe.host, probe.port, self.loopback)
            chunks.append(request(self.seq, body))
        try:
            self.sock.send(b"".join(chunks))
            while wanted:
                data = self.sock.recv(READ, socket.MSG_DONTWAIT)
                for seq, reply in replies(data):
                    entry = wanted.pop(seq, None)
                    if entry is not None:
                        results[entry[0]] = verdict(entry[1], reply)
        except BlockingIOError:
            return True  # a reply missing: its probe connects
        except OSError as exc:
            if not self.failed:
                log.info("tcp probes connect this tick: sock_diag failed (%s)", exc.strerror or exc)
            self.failed += 1
            self.sock.close()
            self.sock = None
            return False
        return True
