"""
Seed resolution for ``multi_notify``: every address of a host name becomes a
seed.  The name is looked up as SRV (as written), then A, then AAAA, with
dnspython in a thread so the reactor never blocks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["resolve_all", "lookup_addresses"]


def lookup_addresses(name: str, query: Optional[Callable[[str, str], list[str]]] = None) -> list[str]:
    """
    Every address of ``name``, blocking: the targets of its SRV records (each
    resolved A then AAAA), then its own A and AAAA records, without repeats.

    :param query: ``(name, rdtype) -> list of record texts``; the default
        uses dnspython's resolver.  A failed query counts as no records.
    """
    if query is None:
        query = _dnspython_query
    found: list[str] = []

    def add(values: list[str]) -> None:
        for value in values:
            if value not in found:
                found.append(value)

    for target in query(name, "SRV"):
        host = target.split()[-1].rstrip(".")
        add(query(host, "A"))
        add(query(host, "AAAA"))
    add(query(name, "A"))
    add(query(name, "AAAA"))
    return found


def _dnspython_query(name: str, rdtype: str) -> list[str]:
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, rdtype, raise_on_no_answer=False)
    except dns.exception.DNSException:
        return []
    return [record.to_text() for record in answer]


def resolve_all(name: str, reactor: Any = None) -> "Deferred[list[str]]":
    """:func:`lookup_addresses` in the reactor's thread pool."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    return deferToThreadPool(reactor, reactor.getThreadPool(), lookup_addresses, name)
