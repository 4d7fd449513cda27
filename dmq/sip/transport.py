"""
SIP transports: UDP, TCP and TLS.

The protocols here only frame and parse; every parsed message goes to one
controller (the :class:`~dmq.sip.transaction.TransactionLayer`) through
``controller.message_received(message, source)``, the way Twisted's
``DNSDatagramProtocol`` and ``DNSProtocol`` both call their factory.

- :class:`SIPDatagramProtocol`: one message per datagram.  Nothing raises out
  of ``datagramReceived``; a request that cannot be parsed but has a usable
  ``Via`` gets a 400 naming the fault, anything else is dropped with a log line.
- :class:`SIPStreamProtocol`: a ``LineReceiver`` per TCP or TLS connection:
  start line and headers in line mode, the body by ``Content-Length`` in raw
  mode, then back to line mode for whatever follows (pipelining; CRLF
  keep-alives of RFC 5626 answered).  A frame without a valid
  ``Content-Length`` gets a 400, one that declares a body above the cap a 413
  (without reading it), and the connection is closed.
- :class:`SIPTransport`: owns the listeners and the connections: one outbound
  connection per target reused for later requests, inbound connections used
  for their responses, idle connections closed after a timeout, a limit on
  connections, TLS with certificate checks (``service_identity``) both ways.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Union, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from dmq.errors import MessageTooLarge, TransportError
from dmq.interfaces import ISIPTransport
from dmq.sip.address import UDP_MAX_SIZE, Address, Source
from dmq.sip.message import REASONS
from dmq.sip.parse import MAX_HEADERS, MAX_LINE_LENGTH, parse_message
from dmq.sip.uri import SIPParseError

__all__ = [
    "SIPDatagramProtocol",
    "SIPStreamProtocol",
    "SIPTransport",
    "TLSSettings",
    "error_response",
    "MAX_DATAGRAM",
    "MAX_STREAM_BODY",
]

log = Logger()

MAX_DATAGRAM = 65535
"""Largest UDP message accepted."""
MAX_STREAM_BODY = 1 << 20
"""Default cap on a body declared over TCP/TLS (bytes)."""
IDLE_TIMEOUT = 300.0
"""Default seconds before an idle TCP/TLS connection is closed."""
MAX_CONNECTIONS = 1024
"""Default cap on open TCP/TLS connections (both directions)."""
LINGER = 2.0
"""Seconds a connection closed after an error answer keeps draining input."""

_COPY_FOR_ERROR = {
    b"via": b"Via", b"v": b"Via", b"from": b"From", b"f": b"From", b"to": b"To",
    b"t": b"To", b"call-id": b"Call-ID", b"i": b"Call-ID", b"cseq": b"CSeq",
}


def error_response(data: Union[bytes, list[bytes]], code: int, reason: str) -> Optional[bytes]:
    """
    A best-effort stateless error response to a request that could not be
    parsed, copying its ``Via``, ``From``, ``To``, ``Call-ID`` and ``CSeq``
    lines as they are.

    :param data: the raw message, or its start line and header lines.
    :returns: the response bytes, or ``None`` when the input is not a
        request or has no usable ``Via`` (then nothing should be sent).
    """
    if isinstance(data, bytes):
        head = data.split(b"\r\n\r\n", 1)[0]
        lines = head.split(b"\r\n")
    else:
        lines = data
    if not lines or lines[0][:4].upper() == b"SIP/" or b" SIP/2.0" not in lines[0].upper():
        return None
    if lines[0].split(b" ", 1)[0] == b"ACK":
        return None
    out = [b"SIP/2.0 %d %s" % (code, reason.encode("ascii", "replace"))]
    has_via = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        canonical = _COPY_FOR_ERROR.get(name.strip().lower())
        if not colon or canonical is None:
            continue
        value = value.strip()
        if canonical == b"Via":
            if not value.upper().startswith(b"SIP/2.0/"):
                continue
            has_via = True
        out.append(canonical + b": " + value)
    if not has_via:
        return None
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


def _reason_for(error: SIPParseError) -> str:
    """A reason phrase naming the fault: printable ASCII, one line, bounded."""
    detail = "".join(ch for ch in " ".join(str(error).split()) if 32 <= ord(ch) < 127)[:120]
    base = REASONS.get(error.code, "Bad Request")
    return f"{base} ({detail})" if detail else base


class SIPDatagramProtocol(DatagramProtocol):
    """
    SIP over UDP: parse each datagram and hand it to the controller.

    :param owner: the :class:`SIPTransport` (controller and parse caps).
    """

    def __init__(self, owner: "SIPTransport") -> None:
        self.owner = owner

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        """Parse and dispatch one datagram; never raises."""
        owner = self.owner
        source = Source(Address("udp", addr[0], addr[1]))
        try:
            message = parse_message(data, max_size=MAX_DATAGRAM)
        except SIPParseError as e:
            if data.strip(b"\r\n") == b"":
                return  # a keep-alive
            owner.stats["rejected"] += 1
            self._reject(data, source, e)
            return
        try:
            owner.controller.message_received(message, source)
        except SIPParseError as e:
            owner.stats["rejected"] += 1
            self._reject(data, source, e)
        except Exception:
            log.failure("controller failed on a datagram from {source}", source=source.address)

    def _reject(self, data: bytes, source: Source, e: SIPParseError) -> None:
        answer = error_response(data, e.code, _reason_for(e))
        log.info(
            "rejected datagram from {source}: {reason}{answered}",
            source=source.address,
            reason=str(e),
            answered=f" (answered {e.code})" if answer else " (dropped)",
        )
        if answer is not None and self.transport is not None:
            try:
                self.transport.write(answer, (source.address.host, source.address.port))
            except Exception as write_error:
                log.debug("cannot answer {source}: {error}", source=source.address, error=write_error)


class _StreamTransport(Protocol):
    """
    What :class:`SIPStreamProtocol` uses of its transport: TCP's and TLS's
    (``ITCPTransport``, which does not declare ``disconnecting``) have it all.
    """

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...  # noqa: N802

    def abortConnection(self) -> None: ...  # noqa: N802

    def getPeer(self) -> Union[IPv4Address, IPv6Address]: ...  # noqa: N802


@implementer(IHandshakeListener)
class SIPStreamProtocol(LineReceiver, TimeoutMixin):
    """
    SIP over one TCP or TLS connection (RFC 3261 section 18.3 framing).

    :param owner: the :class:`SIPTransport`.
    :param transport_name: ``"tcp"`` or ``"tls"``.
    :param outbound: whether this side opened the connection.
    """

    delimiter = b"\r\n"

    def __init__(self, owner: "SIPTransport", transport_name: str, outbound: bool = False) -> None:
        self.owner = owner
        self.transport_name = transport_name
        self.outbound = outbound
        self.MAX_LENGTH = owner.max_line
        self.peer: Optional[Address] = None
        self.key: Optional[Address] = None
        self.connected_ok = False
        self._lines: list[bytes] = []
        self._header_bytes = 0
        self._need = 0
        self._body: list[bytes] = []
        self._got = 0
        self._blank = 0
        self._closing = False
        self.handshake: Deferred[SIPStreamProtocol] = Deferred()

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:  # noqa: N802
        """TimeoutMixin's clock: the owner's."""
        return self.owner.clock.callLater(period, func)

    @property
    def _stream(self) -> _StreamTransport:
        # makeConnection sets the transport before anything here runs.
        return cast(_StreamTransport, self.transport)

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        """Register with the owner, start the idle timer."""
        peer = self._stream.getPeer()
        self.peer = Address(self.transport_name, peer.host, peer.port)
        if not self.owner._connection_made(self):
            self._closing = True
            self._stream.abortConnection()
            return
        self.connected_ok = True
        self.setTimeout(self.owner.idle_timeout)

    def handshakeCompleted(self) -> None:  # noqa: N802
        """The TLS handshake succeeded (certificates verified)."""
        if not self.handshake.called:
            self.handshake.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Forget the connection."""
        if self.outbound and self.transport_name == "tls" and not self.handshake.called:
            self.handshake.errback(
                TransportError(f"connection to {self.peer} lost: {reason.getErrorMessage()}")
            )
        self.setTimeout(None)
        self.connected_ok = False
        self.owner._connection_lost(self)

    def timeoutConnection(self) -> None:  # noqa: N802
        """Close an idle connection."""
        log.debug("closing idle connection with {peer}", peer=self.peer)
        self._stream.loseConnection()

    def send(self, data: bytes) -> None:
        """Write one message."""
        self.resetTimeout()
        self._stream.write(data)

    @property
    def usable(self) -> bool:
        """Whether the connection is open and not closing."""
        return self.connected_ok and not self._closing and not self._stream.disconnecting

    # -- framing ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Ignore input once the connection is being closed."""
        if self._closing:
            return
        self.resetTimeout()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        """Collect the start line and headers; the blank line ends them."""
        if self._closing:
            return
        if not self._lines:
            if line == b"":
                # RFC 5626 keep-alive: a CRLFCRLF ping gets a CRLF pong.
                self._blank += 1
                if self._blank == 2:
                    self._blank = 0
                    self._stream.write(b"\r\n")
                return
            self._blank = 0
        if line:
            self._lines.append(line)
            self._header_bytes += len(line) + 2
            if len(self._lines) > self.owner.max_headers + 1 or self._header_bytes > self.owner.max_header_bytes:
                self._fail(413, "Request Entity Too Large (header section too large)")
            return
        self._headers_done()

    def _headers_done(self) -> None:
        length: Optional[int] = None
        for raw in self._lines[1:]:
            name, colon, value = raw.partition(b":")
            if colon and name.strip().lower() in (b"content-length", b"l"):
                value = value.strip()
                if not value.isdigit() or length is not None:
                    self._fail(400, "Bad Request (bad or repeated Content-Length)")
                    return
                value = value.lstrip(b"0") or b"0"
                if len(value) > 10:
                    self._fail(413, f"Request Entity Too Large (body over {self.owner.max_body} bytes)")
                    return
                length = int(value)
        if length is None:
            self._fail(400, "Bad Request (Content-Length is mandatory over streams)")
            return
        if length > self.owner.max_body:
            self._fail(413, f"Request Entity Too Large (body over {self.owner.max_body} bytes)")
            return
        if length == 0:
            self._frame_done(b"")
            return
        self._need = length
        self._body = []
        self._got = 0
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        """Collect exactly Content-Length body bytes, then go back to lines."""
        if self._closing:
            return
        missing = self._need - self._got
        if len(data) < missing:
            self._body.append(data)
            self._got += len(data)
            return
        self._body.append(data[:missing])
        rest = data[missing:]
        body = b"".join(self._body)
        self._body = []
        self._frame_done(body)
        if not self._closing:
            self.setLineMode(rest)

    def _frame_done(self, body: bytes) -> None:
        lines = self._lines
        self._lines = []
        self._header_bytes = 0
        frame = b"\r\n".join(lines) + b"\r\n\r\n" + body
        assert self.peer is not None  # set by connectionMade
        source = Source(self.peer, self)
        try:
            message = parse_message(frame, max_size=self.owner.max_body + self.owner.max_header_bytes + 4)
            self.owner.controller.message_received(message, source)
        except SIPParseError as e:
            self.owner.stats["rejected"] += 1
            answer = error_response(frame, e.code, _reason_for(e))
            log.info(
                "rejected message from {source}: {reason}",
                source=self.peer,
                reason=str(e),
            )
            if answer is not None:
                self._stream.write(answer)
        except Exception:
            log.failure("controller failed on a message from {source}", source=self.peer)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        """A header line over the cap: 413 and close."""
        self._fail(413, "Request Entity Too Large (line too long)")

    def _fail(self, code: int, reason: str) -> None:
        self.owner.stats["rejected"] += 1
        log.info("closing stream from {peer}: {code} {reason}", peer=self.peer, code=code, reason=reason)
        answer = error_response(self._lines, code, reason) if self._lines else None
        self._closing = True
        self._lines = []
        self._body = []
        if answer is not None:
            self._stream.write(answer)
        self._linger()

    def _linger(self) -> None:
        """
        Close after an error answer without losing it: send it and a FIN,
        keep reading (and discarding) what the peer still sends for a while,
        then drop the connection.  Closing at once with unread input would
        reset the connection and the peer might never read the answer.
        """
        self.setTimeout(None)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None or self.transport_name != "tcp":
            self._stream.loseConnection()
            return
        half_close()
        self.owner.clock.callLater(LINGER, self._abort)

    def _abort(self) -> None:
        if self.connected_ok:
            self._stream.abortConnection()


@dataclass(frozen=True)
class TLSSettings:
    """
    TLS configuration.

    :ivar certificate: PEM file with this node's certificate (and chain).
    :ivar private_key: PEM file with its private key (may be the same file).
    :ivar ca: PEM file of the CA(s) that peers' certificates must chain to;
        ``None`` uses the platform's trust store for outbound connections.
    :ivar verify_client: require and verify a client certificate on inbound
        connections (mutual TLS).
    :ivar verify_server: verify the server's certificate and name (host name
        or IP address) on outbound connections.
    """

    certificate: str
    private_key: str
    ca: Optional[str] = None
    verify_client: bool = False
    verify_server: bool = True

    def _load(self) -> tuple[Any, Any]:
        from twisted.internet import ssl

        with open(self.certificate, "rb") as f:
            cert_pem = f.read()
        with open(self.private_key, "rb") as f:
            key_pem = f.read()
        private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        ca = None
        if self.ca:
            with open(self.ca, "rb") as f:
                ca = ssl.Certificate.loadPEM(f.read())
        return private, ca

    def server_options(self) -> Any:
        """The context factory for the TLS listener."""
        private, ca = self._load()
        if self.verify_client:
            if ca is None:
                raise ValueError("verify_client needs a CA file")
            return private.options(ca)
        return private.options()

    def client_options(self, host: str) -> Any:
        """The client TLS options for a connection to ``host``."""
        from twisted.internet import ssl

        private, ca = self._load()
        if not self.verify_server:
            return private.options()
        return ssl.optionsForClientTLS(
            host,
            trustRoot=ca if ca is not None else ssl.platformTrust(),
            clientCertificate=private,
        )


class _StreamFactory(Factory):
    def __init__(self, owner: "SIPTransport", transport_name: str) -> None:
        self.owner = owner
        self.transport_name = transport_name

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:  # noqa: N802
        return SIPStreamProtocol(self.owner, self.transport_name)


@implementer(ISIPTransport)
class SIPTransport:
    """
    The listeners and connections of one node.

    :param controller: gets ``message_received(message, source)`` for every
        parsed message (may be set after construction).
    :param host: the address to listen on.
    :param port: the port for UDP and TCP (TLS uses ``tls_port``).
    :param udp: listen on UDP.
    :param tcp: listen on TCP (and allow sending over it).
    :param tls: TLS settings; ``None`` disables TLS.
    :param tls_port: the TLS port (default ``port + 1``).
    :param idle_timeout: seconds before an idle stream connection is closed.
    :param max_connections: cap on open stream connections.
    :param max_body: cap on a body declared over a stream.
    :param connect_timeout: seconds to wait for an outbound connection.
    :param udp_max_size: the largest datagram sent; a larger one fails with
        :class:`~dmq.errors.MessageTooLarge` (the transaction layer sends
        such messages over TCP where it can).
    """

    def __init__(
        self,
        controller: Any = None,
        reactor: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 5060,
        udp: bool = True,
        tcp: bool = False,
        tls: Optional[TLSSettings] = None,
        tls_port: Optional[int] = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_body: int = MAX_STREAM_BODY,
        max_line: int = MAX_LINE_LENGTH,
        max_headers: int = MAX_HEADERS,
        connect_timeout: float = 5.0,
        udp_max_size: int = UDP_MAX_SIZE,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.clock = reactor
        self.controller = controller
        self.host = host
        self.port = port
        self.udp = udp
        self.tcp = tcp
        self.tls = tls
        self.tls_port = tls_port if tls_port is not None else port + 1
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_header_bytes = max_line * 4
        self.connect_timeout = connect_timeout
        self.udp_max_size = udp_max_size
        self.stats = {"rejected": 0, "connections_opened": 0, "connections_refused": 0}
        self.connections: dict[Address, SIPStreamProtocol] = {}
        self._all: set[SIPStreamProtocol] = set()
        self._connecting: dict[Address, list[tuple[bytes, Deferred[None]]]] = {}
        self._datagram: Optional[SIPDatagramProtocol] = None
        self._ip_ok: dict[str, bool] = {}
        self._ports: list[IListeningPort] = []

    # -- listening ------------------------------------------------------------

    def supports(self, transport_name: str) -> bool:
        """Whether this node can send over ``transport_name``."""
        if transport_name == "udp":
            return self.udp
        if transport_name == "tcp":
            return self.tcp
        if transport_name == "tls":
            return self.tls is not None
        return False

    @defer.inlineCallbacks
    def listen(self) -> Any:
        """Start every listener; fires when all listen (fails if one cannot)."""
        ipv6 = ":" in self.host
        try:
            if self.udp:
                self._datagram = SIPDatagramProtocol(self)
                # Twisted reads 8192 bytes a datagram unless told; Kamailio's sync answers are up to 60 KB.
                self._ports.append(
                    self.reactor.listenUDP(self.port, self._datagram, interface=self.host, maxPacketSize=MAX_DATAGRAM)
                )
            if self.tcp:
                server = (TCP6ServerEndpoint if ipv6 else TCP4ServerEndpoint)(
                    self.reactor, self.port, interface=self.host
                )
                self._ports.append((yield server.listen(_StreamFactory(self, "tcp"))))
            if self.tls is not None:
                tls_server = SSL4ServerEndpoint(
                    self.reactor, self.tls_port, self.tls.server_options(), interface=self.host
                )
                self._ports.append((yield tls_server.listen(_StreamFactory(self, "tls"))))
        except Exception:
            yield self.stop()
            raise
        if self.udp and self.port == 0:
            self.port = cast(Union[IPv4Address, IPv6Address], self._ports[0].getHost()).port

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and close every connection."""
        ports, self._ports = self._ports, []
        for port in ports:
            yield port.stopListening()
        for connection in list(self._all):
            connection._stream.loseConnection()
        self._datagram = None

    # -- sending --------------------------------------------------------------

    def send(self, data: bytes, address: Address, connection: Optional[SIPStreamProtocol] = None) -> "Deferred[None]":
        """
        Send ``data`` to ``address``.

        Over UDP the datagram leaves at once.  Over TCP/TLS the given
        connection is used while it is open, else an existing one to
        ``address``, else a new one (later sends to the same address wait for
        it and share it).

        :returns: a Deferred firing when the data is handed to the network, or
            failing with :class:`TransportError`.
        """
        if address.transport == "udp":
            return self._send_udp(data, address)
        if not self.supports(address.transport) and connection is None:
            return defer.fail(TransportError(f"{address.transport.upper()} is not enabled on this node"))
        if connection is not None and connection.usable:
            connection.send(data)
            return defer.succeed(None)
        existing = self.connections.get(address)
        if existing is not None and existing.usable:
            existing.send(data)
            return defer.succeed(None)
        waiters = self._connecting.get(address)
        if waiters is None:
            waiters = self._connecting[address] = []
            self._connect(address)
        result: Deferred[None] = Deferred()
        waiters.append((data, result))
        return result

    def _send_udp(self, data: bytes, address: Address) -> "Deferred[None]":
        if len(data) > self.udp_max_size:
            return defer.fail(
                MessageTooLarge(f"{len(data)} bytes for {address}: over the {self.udp_max_size}-byte datagram limit")
            )
        datagram = self._datagram
        if datagram is None or datagram.transport is None:
            return defer.fail(TransportError("UDP is not listening"))
        port = datagram.transport
        sock = getattr(port, "socket", None)
        host = address.host
        if sock is None or not self._sendable(host, sock.family):
            # Anything unusual (a host name, a family mismatch) gets Twisted's checks and errors.
            try:
                port.write(data, (host, address.port))
            except Exception as e:
                return defer.fail(TransportError(f"cannot send to {address}: {e}"))
            return defer.succeed(None)
        # The usual case, without re-validating the address on every datagram.
        while True:
            try:
                sock.sendto(data, (host, address.port))
            except InterruptedError:
                continue
            except ConnectionRefusedError:
                pass  # an ICMP error for an earlier datagram: meaningless on unconnected UDP
            except OSError as e:
                return defer.fail(TransportError(f"cannot send to {address}: {e}"))
            return defer.succeed(None)

    def _sendable(self, host: str, family: int) -> bool:
        """Whether ``host`` is an IP address of the socket's family (remembered per host)."""
        known = self._ip_ok.get(host)
        if known is None:
            try:
                known = ipaddress.ip_address(host).version == (6 if family == socket.AF_INET6 else 4)
            except ValueError:
                known = False
            if len(self._ip_ok) >= 4096:
                self._ip_ok.clear()
            self._ip_ok[host] = known
        return known

    def _connect(self, address: Address) -> None:
        """Open a connection to ``address``; then send what waits for it."""
        if len(self._all) >= self.max_connections:
            self._connected(address, TransportError(f"connection limit ({self.max_connections}) reached"))
            return
        endpoint_class = TCP6ClientEndpoint if ":" in address.host else TCP4ClientEndpoint
        endpoint: Any = endpoint_class(self.reactor, address.host, address.port, timeout=self.connect_timeout)
        if address.transport == "tls":
            assert self.tls is not None
            endpoint = wrapClientTLS(self.tls.client_options(address.host), endpoint)
        protocol = SIPStreamProtocol(self, address.transport, outbound=True)
        protocol.key = address
        d: Deferred[Any] = connectProtocol(endpoint, protocol)
        if address.transport == "tls":
            # The handshake must succeed before anything counts as sent.
            d.addCallback(lambda p: p.handshake)
        d.addCallbacks(
            lambda p: self._connected(address, p),
            lambda f: self._connected(address, f.value),
        )

    def _connected(self, address: Address, outcome: Union[SIPStreamProtocol, BaseException]) -> None:
        waiters = self._connecting.pop(address, [])
        for data, result in waiters:
            if isinstance(outcome, SIPStreamProtocol) and outcome.usable:
                outcome.send(data)
                result.callback(None)
            elif isinstance(outcome, TransportError):
                result.errback(outcome)
            elif isinstance(outcome, SIPStreamProtocol):
                result.errback(TransportError(f"connection to {address} closed"))
            else:
                result.errback(TransportError(f"cannot connect to {address}: {outcome}"))

    # -- bookkeeping ------------------------------------------------------------

    def _connection_made(self, protocol: SIPStreamProtocol) -> bool:
        if len(self._all) >= self.max_connections:
            self.stats["connections_refused"] += 1
            log.warn(
                "refusing connection from {peer}: limit of {limit} connections reached",
                peer=protocol.peer,
                limit=self.max_connections,
            )
            return False
        self._all.add(protocol)
        self.stats["connections_opened"] += 1
        key = protocol.key if protocol.key is not None else protocol.peer
        assert key is not None
        if key not in self.connections or not self.connections[key].usable:
            self.connections[key] = protocol
        return True

    def _connection_lost(self, protocol: SIPStreamProtocol) -> None:
        self._all.discard(protocol)
        for key in [k for k, v in self.connections.items() if v is protocol]:
            del self.connections[key]

    @property
    def connection_count(self) -> int:
        """How many stream connections are open."""
        return len(self._all)
