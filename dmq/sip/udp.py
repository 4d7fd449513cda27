"""
SIP over UDP: one message per datagram.

:class:`SIPDatagramProtocol` parses each datagram and hands the message to
its owner's controller.  Nothing raises out of ``datagramReceived``: a
request that cannot be parsed but has a usable ``Via`` gets an error answer
naming the fault, anything else is dropped with a log line.
:func:`widen_receive_buffer` gives a listener room for bursts.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from dmq.errors import SIPParseError
from dmq.sip.address import Address, Source
from dmq.sip.build import error_response, reason_with
from dmq.sip.parse import parse_message

__all__ = ["SIPDatagramProtocol", "DatagramOwner", "MAX_DATAGRAM", "RECEIVE_BUFFER", "widen_receive_buffer"]

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

