"""
The usrloc channel's JSON bodies, both ways: what Kamailio's ``dmq_usrloc``
module sends and accepts (``docs/protocol.md``, "usrloc"), byte for byte as
Kamailio 5.6.3 writes them.

A body is one action object or a batch ``{"multi":{"1":{...},"2":{...}}}``
(a batch is told by its first key, as Kamailio tells it).  Builders return
bytes; readers take the decoded JSON and raise
:class:`~dmq.peer.PeerError` 400 for what Kamailio would crash on or misread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional

from dmq.peers.usrloc.table import UINT_MAX, Contact
from dmq.replicated.wire import INT_MIN, Framing, bad_request, dumps, wire_int, wire_str

__all__ = [
    "CHANNEL",
    "CONTENT_TYPE",
    "MULTI",
    "Action",
    "Item",
    "contact_doc",
    "contact_json",
    "sync_body",
    "body_items",
    "parse_item",
]

CHANNEL = "usrloc"
"""Kamailio's dmq_usrloc peer id."""

CONTENT_TYPE = "application/json"

MULTI = Framing(b'{"multi":{', b"}}", numbered=True)
"""A batch: ``{"multi":{"1":contact,"2":contact,...}}``."""


class Action(enum.IntEnum):
    """The ``action`` values of Kamailio's dmq_usrloc messages."""

    NONE = 0
    UPDATE = 1
    RM = 2
    SYNC = 3


_AFTER_SOCKET = ("path", "callid", "user_agent", "instance", "expires", "cseq", "flags", "cflags", "q",
                 "last_modified", "methods", "reg_id", "server_id")
"""The contact fields Kamailio writes after ``received`` and the socket, in its order."""

_TEXTS = ("received", "path", "callid", "user_agent", "instance")
"""The optional text fields of a contact ("" when absent)."""

_NUMBERS = ("expires", "cseq", "flags", "cflags", "q", "last_modified", "methods", "reg_id", "server_id")
"""The number fields of a contact (0 when absent, as Kamailio reads them)."""

_SIGNED = ("q", "server_id")
"""Number fields that may be negative (the others are Kamailio's unsigned ints)."""


# -- building ----------------------------------------------------------------------------


def contact_doc(action: Action, aor: str, contact: Contact) -> dict[str, Any]:
    """One contact as Kamailio lays it out: the keys in its order, ``sock``/``sockname``/``xavps`` only when set."""
    doc: dict[str, Any] = {
        "action": int(action),
        "aor": aor,
        "ruid": contact.ruid,
        "c": contact.address,
        "received": contact.received,
    }
    if contact.sock is not None:
        doc["sock"] = contact.sock
    elif contact.sockname is not None:
        doc["sockname"] = contact.sockname
    doc.update((name, getattr(contact, name)) for name in _AFTER_SOCKET)
    # Kamailio 6.x sends "xavps":{} always; 5.6 logs an error for every key it does not know.
    if contact.xavps:
        doc["xavps"] = contact.xavps
    return doc


def contact_json(action: Action, aor: str, contact: Contact) -> bytes:
    """
    :func:`contact_doc` as compact JSON: a whole body (``{"action":1,...}``
    an update, ``{"action":2,...}`` a remove) or an item of a batch.
    """
    return dumps(contact_doc(action, aor, contact))


def sync_body() -> bytes:
    """``{"action":3}``: send me your contacts."""
    return dumps({"action": int(Action.SYNC)})


# -- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One action of a body: its ``action``, and for an update or remove the AoR and contact."""

    action: Action
    aor: str = ""
    contact: Optional[Contact] = None


def body_items(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The action objects of a body: the body itself, or the members of its
    ``multi`` when that is its first key (Kamailio looks at nothing else).

    :raises PeerError: 400 when ``multi`` is not an object or a member is not one.
    """
    if next(iter(doc)) != "multi":
        return [doc]
    batch = doc["multi"]
    if not isinstance(batch, dict):
        raise bad_request("multi is not an object")
    items = list(batch.values())
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("a member of multi is not an object")
    return items


def _number(doc: dict[str, Any], key: str, low: int) -> int:
    value = wire_int(doc, key)
    if value is None:
        return 0
    if not low <= value <= UINT_MAX:
        raise bad_request(f"{key} {value} out of range")
    return value


def _text(doc: dict[str, Any], key: str) -> str:
    return wire_str(doc, key) or ""


def parse_item(doc: dict[str, Any], now: float) -> Item:
    """
    One action object.  An update needs ``aor``, ``c`` and (to be added)
    ``ruid``; a remove ``aor`` and ``ruid``; missing numbers are 0 as in
    Kamailio; unknown keys are ignored.  ``now`` stamps the contact's
    ``updated``.

    :raises PeerError: 400 for a missing or unknown action, a missing or
        mistyped field (where Kamailio 5.6 and 6.1 crash or read 0), or a
        number outside 32 bits.
    """
    number = wire_int(doc, "action")
    if number is None:
        number = 0  # Kamailio reads a missing action as 0, "none"
    try:
        action = Action(number)
    except ValueError:
        raise bad_request(f"unknown action {number}") from None
    if action in (Action.NONE, Action.SYNC):
        return Item(action)
    aor = wire_str(doc, "aor")
    if not aor:
        raise bad_request("no aor")
    ruid = _text(doc, "ruid")
    address = _text(doc, "c")
    if action is Action.RM and not ruid:
        raise bad_request("remove without ruid")
    if action is Action.UPDATE and not address:
        raise bad_request("update without c")
    fields: dict[str, Any] = {name: _text(doc, name) for name in _TEXTS}
    fields.update((name, _number(doc, name, INT_MIN if name in _SIGNED else 0)) for name in _NUMBERS)
    xavps = doc.get("xavps")
    contact = Contact(
        ruid=ruid,
        address=address,
        sock=wire_str(doc, "sock"),
        sockname=wire_str(doc, "sockname"),
        xavps=dict(xavps) if isinstance(xavps, dict) and xavps else None,
        updated=now,
        **fields,
    )
    return Item(action, aor, contact)
