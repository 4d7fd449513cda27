"""
The UDP listening port: one read per wake-up under light traffic, reads until empty under a burst.

The reads are counted on a scripted socket (each wake-up is a ``doRead`` call); the last tests
use a real socket and the reactor to show that a datagram left unread by a light-mode wake-up
is read at the next one.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor

from dmq.sip.udp import DatagramPort, listen_datagrams

SOURCE = ("127.0.0.1", 5060)


class Collector(DatagramProtocol):
    """Keeps every datagram; fails on those starting with b"boom"."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.refused = 0
        self.waiting: Optional[tuple[int, defer.Deferred[None]]] = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.seen.append(data)
        if data.startswith(b"boom"):
            raise RuntimeError("boom")
        if self.waiting is not None and len(self.seen) >= self.waiting[0]:
            d = self.waiting[1]
            self.waiting = None
            # Fired from the reactor, once the port's read is over.
            from twisted.internet import reactor

            reactor.callLater(0, d.callback, None)

    def connectionRefused(self) -> None:  # noqa: N802
        self.refused += 1

    def when_seen(self, count: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.seen) >= count:
            d.callback(None)
        else:
            self.waiting = (count, d)
        return d


class ScriptedSocket:
    """A socket whose queue of datagrams the test fills; counts every read and every failed one."""

    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.errors: list[int] = []
        self.reads = 0
        self.failed = 0

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        self.reads += 1
        if self.errors:
            self.failed += 1
            raise OSError(self.errors.pop(0), "scripted")
        if not self.queue:
            self.failed += 1
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return self.queue.pop(0), SOURCE


def scripted_port() -> tuple[DatagramPort, ScriptedSocket, Collector]:
    protocol = Collector()
    port = DatagramPort(0, protocol, "127.0.0.1", 65535, MemoryReactor())
    sock = ScriptedSocket()
    port.socket = sock  # type: ignore[assignment]
    return port, sock, protocol


def wake(port: DatagramPort, sock: ScriptedSocket, *datagrams: bytes) -> None:
    """The reactor's wake-up: ``datagrams`` arrived, the socket is readable."""
    sock.queue.extend(datagrams)
    port.doRead()


def test_light_traffic_reads_once_per_wake_up() -> None:
    """After a wake-up that finds one datagram, the next ones read one without a failing read."""
    port, sock, protocol = scripted_port()
    wake(port, sock, b"m0")  # the first wake-up reads until empty: 1 datagram, 1 failed read
    assert (sock.reads, sock.failed) == (2, 1)
    for i in range(1, port.probe_every):
        wake(port, sock, b"m%d" % i)
    assert protocol.seen == [b"m%d" % i for i in range(port.probe_every)]
    # probe_every - 1 light wake-ups: one read each, none failing.
    assert (sock.reads, sock.failed) == (2 + port.probe_every - 1, 1)
    # The next wake-up probes: reads until empty again.
    wake(port, sock, b"probe")
    assert (sock.reads, sock.failed) == (2 + port.probe_every + 1, 2)


def test_a_datagram_left_unread_is_read_at_the_next_wake_up() -> None:
    """In light mode two waiting datagrams take two wake-ups; nothing is lost or reordered."""
    port, sock, protocol = scripted_port()
    wake(port, sock, b"a")
    wake(port, sock, b"b", b"c")
    assert protocol.seen == [b"a", b"b"]
    wake(port, sock)  # still readable: the poll returns again at once
    assert protocol.seen == [b"a", b"b", b"c"]
    assert sock.queue == []


def test_a_burst_switches_to_reading_until_empty() -> None:
    """A probe that finds several datagrams makes every wake-up read until empty, until one finds a single one."""
    port, sock, protocol = scripted_port()
    wake(port, sock, b"first")
    for _ in range(port.probe_every - 1):
        wake(port, sock, b"light")
    wake(port, sock, *[b"burst"] * 10)  # the probe wake-up
    assert protocol.seen.count(b"burst") == 10
    wake(port, sock, *[b"more"] * 5)
    assert protocol.seen.count(b"more") == 5 and sock.queue == []
    reads = sock.reads
    wake(port, sock, b"alone")  # drains: one datagram, one failed read; back to light mode
    assert sock.reads == reads + 2
    wake(port, sock, b"next")
    assert sock.reads == reads + 3


def test_reading_until_empty_stops_at_the_throughput_budget() -> None:
    """One wake-up reads at most maxThroughput bytes; the rest waits for the next."""
    port, sock, protocol = scripted_port()
    size = port.maxThroughput // 4
    wake(port, sock, *[b"x" * size] * 6)
    assert len(protocol.seen) == 4
    wake(port, sock)
    assert len(protocol.seen) == 6


def test_a_failing_protocol_does_not_stop_the_reads() -> None:
    """A datagram the protocol fails on is logged; the ones after it are still delivered."""
    port, sock, protocol = scripted_port()
    wake(port, sock, b"boom", b"after")
    assert protocol.seen == [b"boom", b"after"]


def test_read_errors() -> None:
    """EINTR and ECONNREFUSED end a wake-up quietly (a connected port hears of the refusal); others raise."""
    port, sock, protocol = scripted_port()
    sock.errors = [errno.EINTR]
    wake(port, sock, b"kept")
    assert protocol.seen == []
    wake(port, sock)
    assert protocol.seen == [b"kept"]
    sock.errors = [errno.ECONNREFUSED]
    wake(port, sock)
    assert protocol.refused == 0
    port._connectedAddr = SOURCE
    sock.errors = [errno.ECONNREFUSED]
    wake(port, sock)
    assert protocol.refused == 1
    sock.errors = [errno.EBADF]
    with pytest.raises(OSError) as info:
        wake(port, sock)
    assert info.value.errno == errno.EBADF


def test_listen_datagrams_uses_the_reactor_s_own_port_elsewhere() -> None:
    """A reactor that is not one of Twisted's POSIX reactors listens its own way."""

    class OtherReactor:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> str:  # noqa: N802, N803
            self.calls.append((port, protocol, interface, maxPacketSize))
            return "its own port"

    reactor = OtherReactor()
    protocol = Collector()
    assert listen_datagrams(reactor, 5060, protocol, "127.0.0.1") == "its own port"
    assert reactor.calls == [(5060, protocol, "127.0.0.1", 65535)]


@pytest_twisted.inlineCallbacks
def test_a_real_socket_delivers_a_burst_after_light_traffic(reactor: Any) -> Any:
    """On a real socket, 1 then 200 datagrams sent at once all arrive, in order, through light and burst modes."""
    protocol = Collector()
    port = listen_datagrams(reactor, 0, protocol, "127.0.0.1")
    assert isinstance(port, DatagramPort)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", port.getHost().port)
    try:
        for i in range(port.probe_every + 2):  # light traffic: one at a time, each read before the next
            sender.sendto(b"light %d" % i, target)
            yield protocol.when_seen(i + 1)
        assert not port._drain
        for i in range(200):
            sender.sendto(b"burst %d" % i, target)
        yield protocol.when_seen(port.probe_every + 2 + 200)
        assert protocol.seen[-200:] == [b"burst %d" % i for i in range(200)]
    finally:
        sender.close()
        yield port.stopListening()
