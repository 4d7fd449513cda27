"""
SIP over UDP: one message per datagram.

:class:`SIPDatagramProtocol` parses each datagram and hands the message to
its owner's controller.  Nothing raises out of ``datagramReceived``: a
request that cannot be parsed but has a usable ``Via`` gets an error answer
naming the fault, anything else is dropped with a log line.
:func:`widen_receive_buffer` gives a listener room for bursts, and
:func:`listen_datagrams` starts a listener whose :class:`DatagramPort` reads
one datagram per wake-up while traffic is light.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Protocol

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from dmq.errors import SIPParseError
from dmq.sip.address import Address, Source
from dmq.sip.build import error_response, reason_with
from dmq.sip.parse import parse_message

__all__ = [
    "SIPDatagramProtocol",
    "DatagramOwner",
    "DatagramPort",
    "MAX_DATAGRAM",
    "RECEIVE_BUFFER",
    "listen_datagrams",
    "widen_receive_buffer",
]

log = Logger()

MAX_DATAGRAM = 65535
"""Largest UDP message accepted."""

MAX_SOURCES = 4096
"""The most sending addresses whose :class:`Source` is kept for reuse."""

RECEIVE_BUFFER = 4 * 1024 * 1024
"""
The UDP receive buffer a listener asks for, in bytes (the kernel grants at
most ``net.core.rmem_max``).  A Kamailio node answering a usrloc sync sends
one datagram per contact, thousands in a burst: the default buffer of about
200 KB drops many of them before the reactor reads them.
"""


def widen_receive_buffer(port: Any, size: int = RECEIVE_BUFFER) -> int:
    """
    Ask for a receive buffer of ``size`` bytes on a listening UDP ``port``
    (never shrinking it).

    :returns: the size the kernel reports now (Linux reports twice what it
        grants), or 0 when the port has no socket to set.
    """
    sock = getattr(port, "socket", None)
    if sock is None:
        return 0
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as e:
        log.warn("cannot widen the UDP receive buffer: {error}", error=str(e))
        return 0
    return granted


_READ_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
"""Errors of a read that only mean "nothing more to read now"."""


class DatagramPort(udp.Port):
    """
    A UDP listening port that does not ask the kernel for a datagram it
    knows is not there.

    Twisted's port reads until the socket is empty on every wake-up, so
    each wake-up ends with a read that fails (an exception raised and
    caught).  Under light traffic, one datagram a wake-up, that failed read
    is pure overhead.  This port reads until empty only while wake-ups find
    more than one datagram; once one finds a single datagram, it reads just
    one per wake-up, and every :attr:`probe_every` wake-ups reads until
    empty again to notice a rising load.  A datagram left unread is never
    lost: the reactor polls level-triggered, so the next poll returns at
    once while the socket holds data.
    """

    probe_every = 8
    """In light mode, read until empty on every this many wake-ups."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drain = True
        self._light_wakes = 0

    def doRead(self) -> None:  # noqa: N802
        """Read one datagram (light traffic) or until empty (a burst)."""
        if not self._drain:
            self._light_wakes += 1
            if self._light_wakes < self.probe_every:
                self._read_one()
                return
            self._light_wakes = 0
        self._drain = self._read_all() > 1

    def _read_one(self) -> None:
        try:
            data, addr = self.socket.recvfrom(self.maxPacketSize)
        except OSError as e:
            self._read_failed(e)
            return
        self._deliver(data, addr)

    def _read_all(self) -> int:
        count = 0
        budget = self.maxThroughput
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        while budget > 0:
            try:
                data, addr = recvfrom(size)
            except OSError as e:
                self._read_failed(e)
                break
            count += 1
            budget -= len(data)
            self._deliver(data, addr)
        return count

    def _read_failed(self, e: OSError) -> None:
        if e.errno in _READ_AGAIN:
            return
        if e.errno == errno.ECONNREFUSED:
            # An ICMP error for an earlier datagram: meaningful only to a connected port.
            if self._connectedAddr:
                self.protocol.connectionRefused()
            return
        raise e

    def _deliver(self, data: bytes, addr: Any) -> None:
        if self.addressFamily == socket.AF_INET6:
            addr = addr[:2]  # (host, port), without flow and scope
        try:
            self.protocol.datagramReceived(data, addr)
        except Exception:
            log.failure("datagram protocol failed on a datagram from {addr}", addr=addr)


def listen_datagrams(reactor: Any, port: int, protocol: DatagramProtocol, interface: str = "",
                     max_packet_size: int = MAX_DATAGRAM) -> Any:
    """
    Listen for UDP on ``interface``:``port`` with a :class:`DatagramPort`
    where ``reactor`` is one of Twisted's POSIX reactors, through the
    reactor's own ``listenUDP`` otherwise (a test's fake reactor, IOCP).

    :returns: the listening port.
    """
    # Not imported here: twisted.internet.posixbase brings Twisted's TLS support, which a
    # node without TLS leaves out (dmq.tap.leave_out_tls_library). A POSIX reactor has loaded it.
    posixbase = sys.modules.get("twisted.internet.posixbase")
    if posixbase is None or not isinstance(reactor, posixbase.PosixReactorBase):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    listening = DatagramPort(port, protocol, interface, max_packet_size, reactor)
    listening.startListening()
    return listening


class DatagramOwner(Protocol):
    """
    What :class:`SIPDatagramProtocol` uses of its owner (a
    :class:`~dmq.sip.transport.SIPTransport`): the controller that gets
    ``message_received(message, source)`` for every parsed message (and, if
    it has one, ``response_datagram(data)`` first for every answer, taking
    those it can match without a parse), and the
    counters (``rejected`` counts input that did not parse).
    """

    controller: Any
    stats: dict[str, int]


class SIPDatagramProtocol(DatagramProtocol):
    """
    SIP over UDP: parse each datagram and hand it to the controller.

    :param owner: the :class:`DatagramOwner`, a
        :class:`~dmq.sip.transport.SIPTransport`.
    """

    def __init__(self, owner: DatagramOwner) -> None:
        self.owner = owner
        self._sources: dict[tuple[str, int], Source] = {}

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        """Parse and dispatch one datagram; never raises."""
        owner = self.owner
        if data[:8] == b"SIP/2.0 ":
            # An answer in the plainest shape is matched before any parse (see
            # TransactionLayer.response_datagram); what it leaves goes the general way.
            take = getattr(owner.controller, "response_datagram", None)
            if take is not None:
                try:
                    if take(data):
                        return
                except Exception:
                    log.failure("controller failed on a datagram from {addr}", addr=addr)
                    return
        source = self._sources.get(addr)
        if source is None:
            # One Source per sending address (they are immutable), a bounded number of them.
            if len(self._sources) >= MAX_SOURCES:
                self._sources.clear()
            source = self._sources[addr] = Source(Address("udp", addr[0], addr[1]))
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
        answer = error_response(data, e.code, reason_with(e.code, str(e)))
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

