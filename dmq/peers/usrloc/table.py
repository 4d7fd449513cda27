"""
The location table of the usrloc peer: addresses of record (AoRs) and their
contacts, with the rules of Kamailio's ``usrloc`` module (default settings:
``matching_mode`` 0, ``desc_time_order`` 0).  Plain Python: time is passed in.

::

    table = Location()
    kind, contact = table.apply("alice", incoming, now)    # a DMQ update: "added", "updated" or None
    table.live("alice", now)                             # best q first
    table.remove_ruid("alice", "uloc-6b079717-20a4-1")

Contacts are found by ``ruid`` first, then by their address within the AoR;
a contact found by address whose Call-ID is the same takes only a higher
CSeq.  A contact is live until its ``expires`` (absolute epoch seconds; 0
never expires).  :class:`RuidMaker` makes ruids the way Kamailio's
registrar does.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

from dmq.replicated.wire import check_text

__all__ = [
    "Contact",
    "ContactChange",
    "Location",
    "RuidMaker",
    "Q_UNSET",
    "METHODS_ALL",
    "UINT_MAX",
    "counter_text",
]

Q_UNSET = -1
"""A contact without a q value (Kamailio's ``Q_UNSPECIFIED``); q is otherwise x1000, 0 to 1000."""

METHODS_ALL = 0xFFFFFFFF
"""The ``methods`` of a contact that did not say which methods it accepts."""

UINT_MAX = 0xFFFFFFFF
"""The largest value of Kamailio's unsigned contact fields."""


@dataclass
class Contact:
    """
    One registered contact, with every field the ``usrloc`` channel carries.

    :ivar ruid: the record's unique id (``uloc-...``).
    :ivar address: the contact URI (``"c"`` on the wire).
    :ivar expires: absolute epoch seconds; 0 never expires.
    :ivar q: the q value x1000, or :data:`Q_UNSET` (-1).
    :ivar last_modified: epoch seconds of the registration that set it.
    :ivar sock: the SIP socket it came in on (``udp:1.2.3.4:5060``), when sent.
    :ivar sockname: that socket's name, when sent instead (Kamailio 5.8+).
    :ivar xavps: contact attributes (Kamailio 6.0+), a JSON object, when sent.
    :ivar updated: this node's clock when the contact last changed here
        (``Last-Keepalive`` in ``ul.dump``).
    """

    ruid: str
    address: str
    received: str = ""
    path: str = ""
    callid: str = ""
    user_agent: str = ""
    instance: str = ""
    expires: int = 0
    cseq: int = 0
    flags: int = 0
    cflags: int = 0
    q: int = Q_UNSET
    last_modified: int = 0
    methods: int = METHODS_ALL
    reg_id: int = 0
    server_id: int = 0
    sock: Optional[str] = None
    sockname: Optional[str] = None
    xavps: Optional[dict[str, Any]] = None
    updated: float = 0.0

    def live(self, now: float) -> bool:
        """Whether the contact is still registered at ``now`` (Kamailio's ``VALID_CONTACT``)."""
        return self.expires == 0 or self.expires > now

    def copy(self) -> "Contact":
        """A copy (its ``xavps`` copied one level deep)."""
        return replace(self, xavps=dict(self.xavps) if self.xavps is not None else None)


@dataclass(frozen=True)
class ContactChange:
    """
    What a change listener is told.

    :ivar kind: ``"added"``, ``"updated"``, ``"removed"`` or ``"expired"``.
    :ivar aor: the address of record.
    :ivar contact: a copy of the contact (as it was, for removed and expired).
    :ivar origin: the node the change came from, ``None`` for a local one.
    """

    kind: str
    aor: str
    contact: Contact
    origin: Any = None


class Location:
    """
    The AoRs and their contacts.  Each AoR keeps its contacts best q first,
    contacts of equal q in the order they were added (Kamailio's order);
    an AoR without contacts is dropped.

    :ivar records: AoR -> contacts.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[Contact]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def contacts(self, aor: str) -> list[Contact]:
        """Every contact of ``aor``, expired ones included (the table's own objects)."""
        return self.records.get(aor, [])

    def live(self, aor: str, now: float) -> list[Contact]:
        """The live contacts of ``aor``, best q first."""
        return [c for c in self.records.get(aor, ()) if c.live(now)]

    def items(self) -> Iterator[tuple[str, Contact]]:
        """Every ``(aor, contact)``, expired ones included."""
        for aor, contacts in self.records.items():
            for contact in contacts:
                yield aor, contact

    def counts(self, now: float) -> tuple[int, int]:
        """How many AoRs have a live contact, and how many live contacts there are."""
        aors = contacts = 0
        for record in self.records.values():
            alive = sum(1 for c in record if c.live(now))
            contacts += alive
            aors += 1 if alive else 0
        return aors, contacts

    def find_ruid(self, aor: str, ruid: str) -> Optional[Contact]:
        """The contact of ``aor`` whose ruid is ``ruid``."""
        if not ruid:
            return None
        return next((c for c in self.records.get(aor, ()) if c.ruid == ruid), None)

    def find_address(self, aor: str, address: str) -> Optional[Contact]:
        """The contact of ``aor`` at ``address`` (Kamailio's default ``matching_mode`` 0)."""
        return next((c for c in self.records.get(aor, ()) if c.address == address), None)

    def match(self, aor: str, ruid: str, address: str) -> Optional[Contact]:
        """The contact an update of ``(ruid, address)`` applies to: by ruid, else by address."""
        return self.find_ruid(aor, ruid) or self.find_address(aor, address)

    def insert(self, aor: str, contact: Contact) -> Contact:
        """Add ``contact`` to ``aor`` after every contact of the same or a better q."""
        record = self.records.setdefault(aor, [])
        at = next((i for i, c in enumerate(record) if c.q < contact.q), len(record))
        record.insert(at, contact)
        return contact

    def update(self, aor: str, contact: Contact, incoming: Contact) -> Contact:
        """
        Take the fields of ``incoming`` into ``contact`` as Kamailio's
        ``update_ucontact`` does: ruid, instance and reg-id stay; the address
        changes only when ``incoming`` names an instance; an empty Call-ID
        or empty xavps leave the old ones.  A changed q moves the contact.
        """
        moved = contact.q != incoming.q
        if incoming.instance:
            contact.address = incoming.address
        if incoming.callid:
            contact.callid = incoming.callid
        if incoming.xavps:
            contact.xavps = dict(incoming.xavps)
        for name in ("user_agent", "received", "path", "sock", "sockname", "expires", "q", "cseq", "methods",
                     "last_modified", "flags", "cflags", "server_id", "updated"):
            setattr(contact, name, getattr(incoming, name))
        if moved:
            self.records[aor].remove(contact)
            self.insert(aor, contact)
        return contact

    def apply(self, aor: str, incoming: Contact, now: float) -> tuple[Optional[str], Contact]:
        """
        Apply an update from another node: the contact with ``incoming``'s
        ruid is updated whatever its CSeq; else the contact at the same
        address, unless it has the same Call-ID and a CSeq not below
        ``incoming``'s; else ``incoming`` is added.

        :returns: ``("added" | "updated", contact)``, or ``(None, the
            contact kept)`` when ``incoming`` is older.
        :raises ValueError: for a new contact without a ruid (Kamailio
            cannot store one either).
        """
        found = self.find_ruid(aor, incoming.ruid)
        if found is not None:
            return "updated", self.update(aor, found, incoming)
        found = self.find_address(aor, incoming.address)
        if found is not None:
            if found.callid == incoming.callid and incoming.cseq <= found.cseq:
                return None, found
            return "updated", self.update(aor, found, incoming)
        if not incoming.ruid:
            raise ValueError(f"a new contact of {aor!r} without a ruid")
        return "added", self.insert(aor, incoming)

    def remove(self, aor: str, contact: Contact) -> None:
        """Drop ``contact`` from ``aor`` (and the AoR when it was its last)."""
        record = self.records.get(aor)
        if record is None or contact not in record:
            return
        record.remove(contact)
        if not record:
            del self.records[aor]

    def remove_ruid(self, aor: str, ruid: str) -> Optional[Contact]:
        """Drop the contact of ``aor`` with ``ruid``; return it, or ``None`` when there is none."""
        contact = self.find_ruid(aor, ruid)
        if contact is not None:
            self.remove(aor, contact)
        return contact

    def remove_aor(self, aor: str) -> list[Contact]:
        """Drop ``aor`` with every contact; return them."""
        return self.records.pop(aor, [])

    def purge(self, now: float) -> list[tuple[str, Contact]]:
        """Drop the contacts expired at ``now``; return them."""
        gone = [(aor, c) for aor, c in self.items() if not c.live(now)]
        for aor, contact in gone:
            self.remove(aor, contact)
        return gone


def counter_text(value: int) -> str:
    """A ruid's counter as Kamailio writes it: hex digits, the lowest first (26 -> ``a1``)."""
    digits = []
    while value:
        digits.append("0123456789abcdef"[value & 0xF])
        value >>= 4
    return "".join(digits)


_instances = itertools.count()


@dataclass
class RuidMaker:
    """
    Makes ruids as Kamailio's registrar does: ``uloc-<time>-<pid>-<n>``
    (``uloc-<server_id>-<time>-<pid>-<n>`` with a server id), the start
    time and process id in hex and the counter in hex lowest digit first
    (``uloc-6b079717-20a4-1``).  A second maker in one process sets bits
    above the process id's, so two peers of one process never share ruids.

    :param now: returns the clock's time (epoch seconds).
    :param prefix: ``uloc`` (registrar) or ``ulcx`` (``ul.add``).
    """

    now: Callable[[], float]
    prefix: str = "uloc"
    server_id: int = 0
    process: int = field(default_factory=lambda: os.getpid() | (next(_instances) << 22))
    counter: int = 0
    root: str = ""

    def _start(self) -> None:
        head = f"{self.prefix}-{self.server_id:x}-" if self.server_id else f"{self.prefix}-"
        self.root = f"{head}{int(self.now()) & UINT_MAX:x}-{self.process & UINT_MAX:x}-"

    def next(self) -> str:
        """A new ruid."""
        if not self.root:
            self._start()
        self.counter = (self.counter + 1) & UINT_MAX
        if self.counter == 0:
            self._start()  # the counter wrapped: a new start time keeps ruids unique
            self.counter = 1
        return self.root + counter_text(self.counter)


def check_contact(aor: str, contact: Contact) -> None:
    """
    Refuse a contact a Kamailio node could not read back as sent.

    :raises TypeError, ValueError: for an empty AoR, ruid or address, text
        with a NUL or that is not UTF-8, or a number out of its range.
    """
    for name, value in (("aor", aor), ("ruid", contact.ruid), ("contact", contact.address)):
        if not isinstance(value, str):
            raise TypeError(f"{name} is a str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} cannot be empty")
    texts = ("ruid", "address", "received", "path", "callid", "user_agent", "instance", "sock", "sockname")
    for name in texts:
        value = getattr(contact, name)
        if value is None and name in ("sock", "sockname"):
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} is a str, not {type(value).__name__}")
        check_text(value, name)
    check_text(aor, "aor")
    for name in ("expires", "cseq", "flags", "cflags", "last_modified", "methods", "reg_id"):
        value = getattr(contact, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} is an int, not {type(value).__name__}")
        if not 0 <= value <= UINT_MAX:
            raise ValueError(f"{name} {value} is out of range (0 to {UINT_MAX})")
    if isinstance(contact.q, bool) or not isinstance(contact.q, int) or not Q_UNSET <= contact.q <= 1000:
        raise ValueError(f"q {contact.q!r} is not -1 (unset) or 0 to 1000")
    if isinstance(contact.server_id, bool) or not isinstance(contact.server_id, int):
        raise TypeError("server_id is an int")
