"""Transports: stream framing in memory, then UDP, TCP and TLS over real loopback sockets."""

from __future__ import annotations

import random
import socket
from typing import Any, Callable, Union

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from dmq.errors import MessageTooLarge, SIPParseError, TransactionTimeout, TransportError
from dmq.interfaces import ISIPTransport
from dmq.sip import SIPURI, build_request, make_response, parse_message
from dmq.sip.address import Address
from dmq.sip.message import Request, Response
from dmq.sip.transaction import Source, TransactionLayer
from dmq.sip.transport import SIPStreamProtocol, SIPTransport, TLSSettings, error_response
from dmq.sip.udp import RECEIVE_BUFFER, widen_receive_buffer
from tests.certs import CertificateAuthority
from tests.helpers import free_port


class Collector:
    """A controller that keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[Union[Request, Response]] = []
        self.sources: list[Source] = []

    def message_received(self, message: Union[Request, Response], source: Source) -> None:
        self.messages.append(message)
        self.sources.append(source)


def request_bytes(i: int = 0, body: bytes = b"", transport: str = "TCP") -> bytes:
    """A KDMQ request numbered ``i`` (in its Call-ID) with ``body``."""
    return build_request(
        "KDMQ",
        SIPURI.parse("sip:custom@127.0.0.1:5071"),
        from_uri=SIPURI.parse("sip:custom@127.0.0.1:5070"),
        via_transport=transport,
        via_sent_by="127.0.0.1:5070",
        body=body,
        content_type="text/plain",
        call_id=f"call-{i}@127.0.0.1",
    ).to_bytes()


def stream() -> tuple[SIPStreamProtocol, StringTransport, Collector, SIPTransport]:
    """A stream protocol on an in-memory transport, owned by a non-listening SIPTransport."""
    collector = Collector()
    owner = SIPTransport(collector, Clock(), tcp=True, max_body=1000)
    protocol = SIPStreamProtocol(owner, "tcp")
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport, collector, owner


class TestStreamFraming:
    """Content-Length framing of SIPStreamProtocol, without sockets."""

    def test_random_cuts(self) -> None:
        """1,000 messages back to back, cut at random points, come out as the same 1,000."""
        protocol, transport, collector, _ = stream()
        rng = random.Random(4475)
        messages = [request_bytes(i, body=b"b" * rng.randrange(0, 300)) for i in range(1000)]
        data = b"".join(messages)
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 700)
            protocol.dataReceived(data[pos : pos + step])
            pos += step
        assert len(collector.messages) == 1000
        assert [m.to_bytes() for m in collector.messages] == messages
        assert not transport.disconnecting

    def test_keepalive_pong(self) -> None:
        """A CRLFCRLF ping gets a CRLF pong and does not disturb the next message."""
        protocol, transport, collector, _ = stream()
        protocol.dataReceived(b"\r\n\r\n")
        assert transport.value() == b"\r\n"
        protocol.dataReceived(request_bytes(1))
        assert len(collector.messages) == 1

    def test_missing_content_length(self) -> None:
        """A stream message without Content-Length is answered 400 and the connection closed."""
        protocol, transport, collector, owner = stream()
        data = request_bytes(1).replace(b"Content-Length: 0\r\n", b"")
        protocol.dataReceived(data)
        assert transport.value().startswith(b"SIP/2.0 400 ")
        assert transport.disconnecting
        assert collector.messages == []
        assert owner.stats["rejected"] == 1

    def test_bad_content_length(self) -> None:
        """A non-numeric Content-Length is answered 400 and the connection closed."""
        protocol, transport, collector, _ = stream()
        protocol.dataReceived(request_bytes(1).replace(b"Content-Length: 0", b"Content-Length: x"))
        assert transport.value().startswith(b"SIP/2.0 400 ")
        assert transport.disconnecting

    def test_oversized_body_declared(self) -> None:
        """A declared body over the cap gets 413 at once and nothing more is read."""
        protocol, transport, collector, _ = stream()
        protocol.dataReceived(request_bytes(1).replace(b"Content-Length: 0", b"Content-Length: 10000000"))
        assert transport.value().startswith(b"SIP/2.0 413 ")
        assert transport.disconnecting
        protocol.dataReceived(b"x" * 100000)
        assert protocol._body == [] and protocol._buffer == b""

    def test_content_length_of_thousands_of_digits(self) -> None:
        """A Content-Length of 5,000 digits gets 413 and a close, not an exception."""
        protocol, transport, collector, _ = stream()
        protocol.dataReceived(request_bytes(1).replace(b"Content-Length: 0", b"Content-Length: " + b"9" * 5000))
        assert transport.value().startswith(b"SIP/2.0 413 ")
        assert transport.disconnecting

    def test_long_line(self) -> None:
        """A header line over the cap closes the connection with 413."""
        protocol, transport, collector, owner = stream()
        protocol.dataReceived(b"KDMQ sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\n")
        protocol.dataReceived(b"X: " + b"y" * (owner.max_line + 10))
        assert transport.value().startswith(b"SIP/2.0 413 ")
        assert transport.disconnecting

    def test_parse_error_answered(self) -> None:
        """A framed message that does not parse is answered 400 naming the fault, and the stream goes on."""
        protocol, transport, collector, _ = stream()
        bad = request_bytes(1).replace(b"CSeq: 10 KDMQ", b"CSeq: 10 INVITE")
        protocol.dataReceived(bad + request_bytes(2))
        assert transport.value().startswith(b"SIP/2.0 400 Bad Request (CSeq method")
        assert len(collector.messages) == 1
        assert not transport.disconnecting

    def test_folded_header(self) -> None:
        """A folded header line in a stream message is unfolded."""
        protocol, transport, collector, _ = stream()
        data = request_bytes(1).replace(b"User-Agent: dmq", b"User-Agent: dmq\r\n  folded")
        protocol.dataReceived(data)
        assert collector.messages[0].headers.get("User-Agent") == "dmq folded"


def test_error_response_copies_identity() -> None:
    """A stateless error response copies Via, From, To, Call-ID and CSeq and names the reason."""
    data = request_bytes(1, transport="UDP").replace(b"Max-Forwards: 70", b"Max-Forwards: 999")
    answer = error_response(data, 400, "Bad Request (Max-Forwards)")
    assert answer is not None
    response = parse_message(answer)
    assert isinstance(response, Response)
    assert response.code == 400
    assert response.call_id == "call-1@127.0.0.1"
    assert response.vias[0].branch is not None
    assert error_response(b"SIP/2.0 200 OK\r\n\r\n", 400, "x") is None
    assert error_response(b"garbage", 400, "x") is None


@pytest.mark.parametrize("damage", [b"\r", b"\x00", b"\r\x1a", b"\x0b"])
def test_error_response_leaves_out_lines_holding_control_characters(damage: bytes) -> None:
    """A copied line holding a bare CR (or another control character) is left out: no header is injected."""
    data = request_bytes(1, transport="UDP").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    data = data.replace(b"\r\nFrom: ", b"\r\nFrom: <sip:a@b>" + damage + b"X-Injected: 1\r\nFrom: ", 1)
    answer = error_response(data, 400, "Bad Request")
    assert answer is not None
    head = answer.partition(b"\r\n\r\n")[0]
    assert b"X-Injected" not in answer and b"\r" not in head.replace(b"\r\n", b"")
    assert b"\n" not in head.replace(b"\r\n", b"")
    response = parse_message(answer)
    assert isinstance(response, Response) and response.call_id == "call-1@127.0.0.1"


def test_error_response_reads_bare_lf_lines() -> None:
    """A request whose lines end in a bare LF (which the parser reads) is answered with CRLF lines."""
    data = request_bytes(1, transport="UDP").replace(b"Max-Forwards: 70", b"Max-Forwards: x").replace(b"\r\n", b"\n")
    answer = error_response(data, 400, "Bad Request")
    assert answer is not None
    response = parse_message(answer)
    assert isinstance(response, Response) and response.call_id == "call-1@127.0.0.1"
    assert response.vias[0].branch is not None


def test_error_response_takes_a_via_with_spaces_around_its_slashes() -> None:
    """A top Via written "SIP / 2.0 / UDP" (as the grammar allows) is answered like any other."""
    data = request_bytes(1, transport="UDP").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    data = data.replace(b"Via: SIP/2.0/UDP", b"Via: SIP /2.0\t/ UDP", 1)
    answer = error_response(data, 400, "Bad Request")
    assert answer is not None and b"Via: SIP /2.0\t/ UDP" in answer


def test_another_sip_version_is_answered_505() -> None:
    """A request of SIP/3.0 is refused by the parser with 505 and answered 505 Version Not Supported (in SIP/2.0)."""
    data = request_bytes(1, transport="UDP").replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1)
    with pytest.raises(SIPParseError) as info:
        parse_message(data)
    assert info.value.code == 505
    answer = error_response(data, 505, "Version Not Supported")
    assert answer is not None and answer.startswith(b"SIP/2.0 505 Version Not Supported\r\n")
    response = parse_message(answer)
    assert isinstance(response, Response) and response.call_id == "call-1@127.0.0.1"
    ack = data.replace(b"KDMQ ", b"ACK ", 1)
    assert error_response(ack, 505, "Version Not Supported") is None


# ---------------------------------------------------------------------------
# Over real loopback sockets
# ---------------------------------------------------------------------------


T1 = 0.05
"""The nodes' T1: a request times out after 64 * T1 = 3.2 s."""


@defer.inlineCallbacks
def until(reactor: Any, condition: Callable[[], bool], timeout: float = 10.0) -> Any:
    """Wait for socket events until ``condition()`` holds; fail after ``timeout`` seconds without."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached"
        yield task.deferLater(reactor, 0.01, lambda: None)


class Node:
    """
    A transport plus transaction layer answering every request 200.

    With a ``clock`` the timers (retransmissions, timeouts, idle connections)
    run on it, while the sockets run on the reactor.
    """

    def __init__(self, reactor: Any, clock: Any = None, **kw: Any) -> None:
        self.port = kw.pop("port", None) or free_port("udp+tcp")
        if kw.get("tls") is not None:
            kw.setdefault("tls_port", free_port("tcp"))
        self.requests: list[Request] = []
        self.transport = SIPTransport(None, reactor, host="127.0.0.1", port=self.port, clock=clock, **kw)
        self.layer = TransactionLayer(self.transport, self.handle, reactor=clock or reactor, t1=T1, t2=0.4, t4=0.5)
        self.transport.controller = self.layer

    def handle(self, request: Request, source: Source) -> Response:
        self.requests.append(request)
        return make_response(request, 200)

    def request(self, target_port: int, transport: str = "udp", body: bytes = b"") -> "defer.Deferred[Response]":
        via = transport.upper()
        request = build_request(
            "KDMQ",
            SIPURI.parse(f"sip:custom@127.0.0.1:{target_port}"),
            from_uri=SIPURI.parse(f"sip:custom@127.0.0.1:{self.port}"),
            via_transport=via,
            via_sent_by=f"127.0.0.1:{self.port}",
            body=body,
            content_type="text/plain",
        )
        return self.layer.request(request, Address(transport, "127.0.0.1", target_port))

    def stop(self) -> "defer.Deferred[None]":
        self.layer.stop()
        return self.transport.stop()


@pytest_twisted.inlineCallbacks
def test_udp_request_response(reactor: Any) -> Any:
    """A request over UDP loopback reaches the other node and its 200 comes back."""
    a, b = Node(reactor), Node(reactor)
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        verifyObject(ISIPTransport, a.transport)
        response = yield a.request(b.port, body=b"hello")
        assert response.code == 200
        assert [r.body for r in b.requests] == [b"hello"]
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_udp_listener_asks_for_a_wide_receive_buffer(reactor: Any) -> Any:
    """The UDP listener's receive buffer is widened to RECEIVE_BUFFER, or as far as net.core.rmem_max lets it."""
    a = Node(reactor)
    yield a.transport.listen()
    try:
        with open("/proc/sys/net/core/rmem_max") as limit:
            allowed = min(RECEIVE_BUFFER, int(limit.read()))
        [udp] = [p for p in a.transport._ports if getattr(p, "socket", None) is not None and p.socket.type == socket.SOCK_DGRAM]
        assert udp.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= allowed
        assert widen_receive_buffer(object()) == 0
    finally:
        yield a.stop()


class Dropper(DatagramProtocol):
    """A UDP endpoint that drops the first ``drop`` datagrams and answers the rest 200."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.seen = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.seen += 1
        if self.seen <= self.drop:
            return
        request = parse_message(data)
        assert isinstance(request, Request)
        self.transport.write(make_response(request, 200).to_bytes(), addr)


@pytest_twisted.inlineCallbacks
def test_udp_retransmission_survives_loss(reactor: Any) -> Any:
    """A request to a port that drops the first two datagrams gets its response from the second retransmission."""
    clock = Clock()
    a = Node(reactor, clock)
    yield a.transport.listen()
    dropper = Dropper(2)
    port = reactor.listenUDP(0, dropper, interface="127.0.0.1")
    try:
        d = a.request(port.getHost().port)
        for seen, interval in ((1, T1), (2, 2 * T1)):
            yield until(reactor, lambda: dropper.seen == seen)
            clock.advance(interval)
        response = yield d
        assert response.code == 200
        assert dropper.seen == 3
        assert a.layer.stats.retransmissions == 2
    finally:
        yield port.stopListening()
        yield a.stop()


@pytest_twisted.inlineCallbacks
def test_udp_silent_port_times_out(reactor: Any) -> Any:
    """A request to a silent port is retransmitted on the layer's clock and fails as a timeout (408) at 64*T1."""
    clock = Clock()
    a = Node(reactor, clock)
    yield a.transport.listen()
    silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    try:
        d = a.request(silent.getHost().port)
        clock.advance(64 * T1 - 0.01)
        assert not d.called
        assert a.layer.stats.retransmissions > 0
        clock.advance(0.02)
        with pytest.raises(TransactionTimeout) as info:
            yield d
        assert info.value.code == 408
    finally:
        yield silent.stopListening()
        yield a.stop()


@pytest_twisted.inlineCallbacks
def test_tcp_request_and_connection_reuse(reactor: Any) -> Any:
    """Requests over TCP share one connection, and responses come back over it."""
    a, b = Node(reactor, tcp=True), Node(reactor, tcp=True)
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        responses = yield defer.gatherResults([a.request(b.port, "tcp", b"%d" % i) for i in range(20)])
        assert [r.code for r in responses] == [200] * 20
        assert sorted(r.body for r in b.requests) == sorted(b"%d" % i for i in range(20))
        assert a.transport.connection_count == 1
        assert b.transport.connection_count == 1
        assert a.layer.stats.retransmissions == 0
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_tcp_refused_is_transport_error(reactor: Any) -> Any:
    """A TCP request to a closed port fails at once with a transport error."""
    a = Node(reactor, tcp=True)
    yield a.transport.listen()
    try:
        with pytest.raises(TransportError):
            yield a.request(free_port("tcp"), "tcp")
    finally:
        yield a.stop()


@pytest_twisted.inlineCallbacks
def test_large_request_over_tcp(reactor: Any) -> Any:
    """A 5 KB request for a UDP address goes over TCP when both nodes have it."""
    a, b = Node(reactor, tcp=True), Node(reactor, tcp=True)
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        response = yield a.request(b.port, "udp", b"L" * 5000)
        assert response.code == 200
        assert b.requests[0].vias[0].transport == "TCP"
        assert a.transport.connection_count == 1
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_idle_connection_closed(reactor: Any) -> Any:
    """A TCP connection idle for the idle timeout of the transports' clock is closed on both sides."""
    clock = Clock()
    a, b = (Node(reactor, clock, tcp=True, idle_timeout=300) for _ in range(2))
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        yield a.request(b.port, "tcp")
        assert (a.transport.connection_count, b.transport.connection_count) == (1, 1)
        clock.advance(299)
        assert all(c.usable for c in a.transport.connections.values())
        clock.advance(1)
        yield until(reactor, lambda: a.transport.connection_count == b.transport.connection_count == 0)
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_connection_limit(reactor: Any) -> Any:
    """Inbound connections over the limit are refused."""
    b = Node(reactor, tcp=True, max_connections=1)
    yield b.transport.listen()
    clients = [socket.create_connection(("127.0.0.1", b.port)) for _ in range(3)]
    try:
        yield until(reactor, lambda: b.transport.stats["connections_refused"] == 2)
        assert b.transport.connection_count == 1
        assert b.transport.stats["connections_refused"] == 2
    finally:
        for c in clients:
            c.close()
        yield b.stop()


class Flooder(Protocol):
    """Declares a 10 MB body, then streams it in 64 KB writes until closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.sent = 0

    def connectionMade(self) -> None:  # noqa: N802
        header = request_bytes(1).replace(b"Content-Length: 0", b"Content-Length: 10485760")
        self.transport.write(header)
        self.loop = task.LoopingCall(self.more)
        self.loop.start(0.001)

    def more(self) -> None:
        if self.sent < 10485760:
            self.transport.write(b"\0" * 65536)
            self.sent += 65536

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if self.loop.running:
            self.loop.stop()
        self.closed.callback(None)


@pytest_twisted.inlineCallbacks
def test_ten_megabyte_content_length(reactor: Any) -> Any:
    """A TCP peer declaring 10 MB of body gets a 413 and is closed; the node buffers none of it."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    try:
        import tracemalloc  # CPython's; PyPy has none, and there the allocation peak goes unchecked
    except ImportError:
        tracemalloc = None
    b = Node(reactor, tcp=True)
    yield b.transport.listen()
    if tracemalloc is not None:
        tracemalloc.start()
    try:
        flooder = Flooder()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", b.port), flooder)
        yield flooder.closed
        assert flooder.received.startswith(b"SIP/2.0 413 ")
        assert b.requests == []
        if tracemalloc is not None:
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 2 * 1024 * 1024, peak
    finally:
        if tracemalloc is not None:
            tracemalloc.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_tcp_random_cuts_over_socket(reactor: Any) -> Any:
    """1,000 messages written to one TCP socket in random pieces arrive as the same 1,000."""
    b = Node(reactor, tcp=True)
    yield b.transport.listen()
    rng = random.Random(1000)
    messages = [request_bytes(i, body=b"m" * rng.randrange(0, 200)) for i in range(1000)]
    data = b"".join(messages)
    sock = socket.create_connection(("127.0.0.1", b.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 1500)
            sock.sendall(data[pos : pos + step])
            pos += step
            if rng.random() < 0.05:
                yield task.deferLater(reactor, 0, lambda: None)
        yield until(reactor, lambda: len(b.requests) >= 1000)
        assert [r.to_bytes() for r in b.requests] == messages
    finally:
        sock.close()
        yield b.stop()


@pytest.fixture
def pki(tmp_path: Any) -> dict[str, Any]:
    """A CA with a server certificate for 127.0.0.1, a client certificate, and a rogue CA's client."""
    ca = CertificateAuthority(str(tmp_path))
    rogue = CertificateAuthority(str(tmp_path), "rogue CA")
    return {
        "ca": ca.path,
        "server": ca.issue("server", ips=("127.0.0.1",), dns=("localhost",)),
        "client": ca.issue("client", ips=("127.0.0.1",)),
        "misnamed": ca.issue("misnamed", dns=("elsewhere.example",)),
        "rogue": rogue.issue("rogue", ips=("127.0.0.1",)),
    }


def tls_settings(pki: dict[str, Any], who: str, **kw: Any) -> TLSSettings:
    issued = pki[who]
    return TLSSettings(issued.certificate, issued.private_key, ca=pki["ca"], **kw)


@pytest_twisted.inlineCallbacks
def test_tls_mutual(reactor: Any, pki: dict[str, Any]) -> Any:
    """Over TLS with client certificates required, a request gets its response."""
    a = Node(reactor, tls=tls_settings(pki, "client"))
    b = Node(reactor, tls=tls_settings(pki, "server", verify_client=True))
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        response = yield a.request(b.transport.tls_port, "tls", b"secret")
        assert response.code == 200
        assert b.requests[0].body == b"secret"
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_tls_refused_client_certificate(reactor: Any, pki: dict[str, Any]) -> Any:
    """A client whose certificate the server's CA did not sign is refused."""
    a = Node(reactor, tls=TLSSettings(pki["rogue"].certificate, pki["rogue"].private_key, ca=pki["ca"]))
    b = Node(reactor, tls=tls_settings(pki, "server", verify_client=True))
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        with pytest.raises((TransportError, TransactionTimeout)):
            yield a.request(b.transport.tls_port, "tls")
        assert b.requests == []
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_tls_wrong_server_name(reactor: Any, pki: dict[str, Any]) -> Any:
    """A server whose certificate does not name the address connected to is refused by the client."""
    a = Node(reactor, tls=tls_settings(pki, "client"))
    b = Node(reactor, tls=tls_settings(pki, "misnamed"))
    yield a.transport.listen()
    yield b.transport.listen()
    try:
        with pytest.raises(TransportError):
            yield a.request(b.transport.tls_port, "tls")
        assert b.requests == []
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_udp_needs_ip_addresses(reactor: Any) -> Any:
    """UDP sends go to IP addresses of the socket's family; a host name or an IPv6 address is a transport error."""
    a = Node(reactor)
    yield a.transport.listen()
    try:
        for host in ("localhost", "::1"):
            with pytest.raises(TransportError):
                yield a.transport.send(b"x", Address("udp", host, 5060))
        yield a.transport.send(b"x", Address("udp", "127.0.0.1", free_port()))
    finally:
        yield a.stop()


@pytest_twisted.inlineCallbacks
def test_udp_refuses_datagrams_over_the_limit(reactor: Any) -> Any:
    """A datagram above udp_max_size is refused with MessageTooLarge (513); one at the limit leaves."""
    a = Node(reactor, Clock(), udp_max_size=2048)  # a clock never advanced: no retransmission
    collector = Dropper(0)
    port = reactor.listenUDP(0, collector, interface="127.0.0.1", maxPacketSize=65535)
    yield a.transport.listen()
    try:
        target = Address("udp", "127.0.0.1", port.getHost().port)
        with pytest.raises(MessageTooLarge) as info:
            yield a.transport.send(b"x" * 2049, target)
        assert info.value.code == 513
        response = yield a.request(port.getHost().port, body=b"y" * 1500)
        assert response.code == 200
        assert collector.seen == 1
    finally:
        yield port.stopListening()
        yield a.stop()
