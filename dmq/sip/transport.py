"""
The SIP transports of one node: :class:`SIPTransport` owns the UDP, TCP and
TLS listeners and the stream connections.

The protocols (:mod:`dmq.sip.udp`, :mod:`dmq.sip.stream`) only frame and
parse; every parsed message goes to one controller (the
:class:`~dmq.sip.transaction.TransactionLayer`) through
``controller.message_received(message, source)``, the way Twisted's
``DNSDatagramProtocol`` and ``DNSProtocol`` both call their factory.

:class:`SIPTransport` keeps one outbound connection per target, reused for
later requests, uses inbound connections for their responses, closes idle
connections after a timeout, caps the number of connections, and checks
certificates (``service_identity``) both ways over TLS
(:class:`~dmq.sip.tls.TLSSettings`).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Optional, Union, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from dmq.errors import MessageTooLarge, TransportError
from dmq.interfaces import ISIPTransport
from dmq.sip.address import UDP_MAX_SIZE, Address
# error_response and the protocols are imported from here by the layers above.
from dmq.sip.build import error_response
from dmq.sip.parse import MAX_HEADERS, MAX_LINE_LENGTH
from dmq.sip.stream import SIPStreamFactory, SIPStreamProtocol
from dmq.sip.tls import TLSSettings
from dmq.sip.udp import MAX_DATAGRAM, SIPDatagramProtocol, listen_datagrams, widen_receive_buffer

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

MAX_STREAM_BODY = 1 << 20
"""Default cap on a body declared over TCP/TLS (bytes)."""
IDLE_TIMEOUT = 300.0
"""Default seconds before an idle TCP/TLS connection is closed."""
MAX_CONNECTIONS = 1024
"""Default cap on open TCP/TLS connections (both directions)."""


@implementer(ISIPTransport)
class SIPTransport:
    """
    The listeners and connections of one node.

    :param controller: gets ``message_received(message, source)`` for every
        parsed message (may be set after construction).
    :param reactor: the reactor that listens and connects (the global one
        when ``None``).
    :param clock: the ``IReactorTime`` of the idle and linger timers (the
        reactor when ``None``).
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
        clock: Optional[IReactorTime] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
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
                udp = listen_datagrams(self.reactor, self.port, self._datagram, self.host, MAX_DATAGRAM)
                widen_receive_buffer(udp)
                self._ports.append(udp)
            if self.tcp:
                # Endpoints (and the TLS library they bring) load only for streams.
                from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

                server = (TCP6ServerEndpoint if ipv6 else TCP4ServerEndpoint)(
                    self.reactor, self.port, interface=self.host
                )
                self._ports.append((yield server.listen(SIPStreamFactory(self, "tcp"))))
            if self.tls is not None:
                from twisted.internet.endpoints import SSL4ServerEndpoint

                tls_server = SSL4ServerEndpoint(
                    self.reactor, self.tls_port, self.tls.server_options(), interface=self.host
                )
                self._ports.append((yield tls_server.listen(SIPStreamFactory(self, "tls"))))
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
            connection.close()
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
        try:
            self.send_datagram(data, address)
        except TransportError as e:
            return defer.fail(e)
        return defer.succeed(None)

    def send_datagram(self, data: bytes, address: Address) -> None:
        """
        Send ``data`` to a UDP ``address`` at once, without a Deferred (the
        hot path of answers and replication).

        :raises MessageTooLarge: when ``data`` is over :attr:`udp_max_size`.
        :raises TransportError: when UDP is not listening or the send fails.
        """
        if len(data) > self.udp_max_size:
            raise MessageTooLarge(f"{len(data)} bytes for {address}: over the {self.udp_max_size}-byte datagram limit")
        datagram = self._datagram
        if datagram is None or datagram.transport is None:
            raise TransportError("UDP is not listening")
        port = datagram.transport
        sock = getattr(port, "socket", None)
        host = address.host
        known = self._ip_ok.get(host)
        if sock is None or not (known or (known is None and self._sendable(host, sock.family))):
            # Anything unusual (a host name, a family mismatch) gets Twisted's checks and errors.
            try:
                port.write(data, (host, address.port))
            except Exception as e:
                raise TransportError(f"cannot send to {address}: {e}") from None
            return
        # The usual case, without re-validating the address on every datagram.
        while True:
            try:
                sock.sendto(data, (host, address.port))
            except InterruptedError:
                continue
            except ConnectionRefusedError:
                pass  # an ICMP error for an earlier datagram: meaningless on unconnected UDP
            except OSError as e:
                raise TransportError(f"cannot send to {address}: {e}") from None
            return

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
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS

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

    def connection_made(self, protocol: SIPStreamProtocol) -> bool:
        """Register a new stream connection; ``False`` refuses it (over the limit)."""
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

    def connection_lost(self, protocol: SIPStreamProtocol) -> None:
        """Forget a closed stream connection."""
        self._all.discard(protocol)
        for key in [k for k, v in self.connections.items() if v is protocol]:
            del self.connections[key]

    @property
    def connection_count(self) -> int:
        """How many stream connections are open."""
        return len(self._all)

