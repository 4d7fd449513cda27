"""
Seed addresses from host names, looked up in the reactor's thread pool so
the reactor never blocks on DNS.

:func:`lookup_addresses` is the blocking lookup: with ``srv`` (Kamailio's
``multi_notify``) the name's SRV targets first, then the name's own
addresses as the system resolver gives them (``getaddrinfo``: ``/etc/hosts``
and DNS, A and AAAA).  :func:`resolve_all` runs it in the thread pool.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["resolve_all", "lookup_addresses", "system_addresses"]

Query = Callable[[str, str], list[str]]
"""``(name, record type) -> record texts``: an SRV lookup."""


def system_addresses(name: str) -> list[str]:
    """The addresses of ``name`` from the system resolver, IPv4 first, without repeats (none when it fails)."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    found: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info_family, _, _, _, sockaddr in infos:
            address = str(sockaddr[0]).split("%", 1)[0]
            if info_family == family and address not in found:
                found.append(address)
    return found


def lookup_addresses(
    name: str,
    srv: bool = False,
    query: Optional[Query] = None,
    addresses: Callable[[str], list[str]] = system_addresses,
) -> list[str]:
    """
    Every address of ``name``, blocking: with ``srv``, the targets of its SRV
    records (each resolved in turn), then the name's own addresses, without
    repeats.

    :param query: ``(name, rdtype) -> list of record texts`` for the SRV
        lookup; the default uses dnspython.  A failed query counts as none.
    :param addresses: a host name's addresses (default: the system resolver).
    """
    found: list[str] = []

    def add(values: list[str]) -> None:
        for value in values:
            if value not in found:
                found.append(value)

    if srv:
        for target in (query or _dnspython_query)(name, "SRV"):
            add(addresses(target.split()[-1].rstrip(".")))
    add(addresses(name))
    return found


def _dnspython_query(name: str, rdtype: str) -> list[str]:
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, rdtype, raise_on_no_answer=False)
    except dns.exception.DNSException:
        return []
    return [record.to_text() for record in answer]


def resolve_all(name: str, srv: bool = False, reactor: Any = None) -> "Deferred[list[str]]":
    """:func:`lookup_addresses` in the reactor's thread pool."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    return deferToThreadPool(reactor, reactor.getThreadPool(), lookup_addresses, name, srv)
