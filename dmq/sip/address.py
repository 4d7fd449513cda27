"""
Transport addresses: where a message came from or goes to.

Pure code: no Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from dmq.sip.uri import SIPURI

__all__ = ["Address", "Source", "RELIABLE", "UDP_MAX_SIZE", "UDP_HARD_LIMIT"]

RELIABLE = frozenset(["tcp", "tls"])
"""Transports that retransmit by themselves (no SIP-level retransmissions)."""

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}

UDP_MAX_SIZE = 32000
"""
The default cap on a datagram this node sends.  Kamailio 5.8 and later drop
a datagram of 32,767 bytes or more (``msg_recv_max_size``), so anything
larger goes over TCP or is refused before it leaves.
"""

UDP_HARD_LIMIT = 65507
"""The largest UDP payload IPv4 can carry."""


@dataclass(frozen=True)
class Address:
    """
    A transport address: transport (``udp``, ``tcp`` or ``tls``), host and port.

    ``host`` is an IP address or name as written, IPv6 without brackets.
    """

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Whether the transport is a stream (TCP or TLS)."""
        return self.transport in RELIABLE

    @classmethod
    def from_uri(cls, uri: SIPURI, transport: Optional[str] = None) -> "Address":
        """The address a request to ``uri`` goes to (its transport unless given)."""
        transport = (transport or uri.transport).lower()
        host = uri.host
        if host.startswith("["):
            host = host[1:-1]
        port = uri.port if uri.port is not None else DEFAULT_PORTS.get(transport, 5060)
        return cls(transport, host, port)

    @property
    def host_port(self) -> str:
        """``host:port`` with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.host_port}"


@dataclass(frozen=True)
class Source:
    """
    Where a message came from: the remote address and, for a stream, the
    connection it arrived on (responses go back over it while it is open).
    """

    address: Address
    connection: Any = None
