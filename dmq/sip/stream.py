"""
SIP over one TCP or TLS connection (RFC 3261 section 18.3 framing).

:class:`SIPStreamProtocol` is a ``LineReceiver``: start line and headers in
line mode, the body by ``Content-Length`` in raw mode, then back to line mode
for whatever follows (pipelining; CRLF keep-alives of RFC 5626 answered).  A
frame without a valid ``Content-Length`` gets a 400, one that declares a
body above the cap a 413 (without reading it), and the connection is closed.
Every parsed message goes to the owner's controller.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Union, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from dmq.errors import SIPParseError, TransportError
from dmq.sip.address import Address, Source
from dmq.sip.build import error_response, reason_with
from dmq.sip.parse import parse_message

__all__ = ["SIPStreamProtocol", "SIPStreamFactory", "StreamOwner", "LINGER"]

log = Logger()

LINGER = 2.0
"""Seconds a connection closed after an error answer keeps draining input."""


class StreamOwner(Protocol):
    """
    What :class:`SIPStreamProtocol` uses of its owner (a
    :class:`~dmq.sip.transport.SIPTransport`): the controller, the clock,
    the caps, the counters, and the bookkeeping of open connections.
    """

    controller: Any
    clock: IReactorTime
    idle_timeout: float
    max_body: int
    max_line: int
    max_headers: int
    max_header_bytes: int
    stats: dict[str, int]

    def connection_made(self, protocol: "SIPStreamProtocol") -> bool:
        """Register a new connection; ``False`` refuses it (over the limit)."""

    def connection_lost(self, protocol: "SIPStreamProtocol") -> None:
        """Forget a connection."""


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

    :param owner: the :class:`StreamOwner`, a
        :class:`~dmq.sip.transport.SIPTransport`.
    :param transport_name: ``"tcp"`` or ``"tls"``.
    :param outbound: whether this side opened the connection.
    """

    delimiter = b"\r\n"

    def __init__(self, owner: StreamOwner, transport_name: str, outbound: bool = False) -> None:
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
        if not self.owner.connection_made(self):
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
        self.owner.connection_lost(self)

    def timeoutConnection(self) -> None:  # noqa: N802
        """Close an idle connection."""
        log.debug("closing idle connection with {peer}", peer=self.peer)
        self._stream.loseConnection()

    def send(self, data: bytes) -> None:
        """Write one message."""
        self.resetTimeout()
        self._stream.write(data)

    def close(self) -> None:
        """Close the connection once what was written has gone out."""
        self._stream.loseConnection()

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
                self._fail(413, "header section too large")
            return
        self._headers_done()

    def _headers_done(self) -> None:
        length: Optional[int] = None
        for raw in self._lines[1:]:
            name, colon, value = raw.partition(b":")
            if colon and name.strip().lower() in (b"content-length", b"l"):
                value = value.strip()
                if not value.isdigit() or length is not None:
                    self._fail(400, "bad or repeated Content-Length")
                    return
                value = value.lstrip(b"0") or b"0"
                if len(value) > 10:
                    self._fail(413, f"body over {self.owner.max_body} bytes")
                    return
                length = int(value)
        if length is None:
            self._fail(400, "Content-Length is mandatory over streams")
            return
        if length > self.owner.max_body:
            self._fail(413, f"body over {self.owner.max_body} bytes")
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
            answer = error_response(frame, e.code, reason_with(e.code, str(e)))
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
        self._fail(413, "line too long")

    def _fail(self, code: int, detail: str) -> None:
        """Answer ``code`` naming ``detail`` (when the start line allows), then close."""
        reason = reason_with(code, detail)
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



class SIPStreamFactory(Factory):
    """Builds a :class:`SIPStreamProtocol` for each inbound connection of a listener."""

    def __init__(self, owner: StreamOwner, transport_name: str) -> None:
        self.owner = owner
        self.transport_name = transport_name

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:  # noqa: N802
        return SIPStreamProtocol(self.owner, self.transport_name)

