"""
The dialog channel's JSON bodies, both ways, as Kamailio's dialog module
writes and reads them (``dlg_dmq.c``; ``docs/protocol.md``, "Dialogs").

Builders return body bytes in Kamailio 6.1's key order; :func:`parse_fields`
reads any release's body into :class:`Fields`, raising
:class:`~dmq.peer.PeerError` 400 for a body Kamailio would misread or crash
on.  Keys a body repeats (Kamailio 5.6 repeats the caller's leg in the
update of an early or confirmed dialog) count by their last occurrence, as
Kamailio's reader assigns each one in turn; ``vars`` counts by its first, as
Kamailio looks that one up.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.logger import Logger

from dmq.errors import one_line
from dmq.peers.dialog.table import CALLEE, CALLER, Dialog, DialogState, ProfileLink
from dmq.replicated.wire import bad_request, dumps, wire_int, wire_str

__all__ = [
    "CHANNEL",
    "CONTENT_TYPE",
    "Action",
    "Fields",
    "UINT_MAX",
    "parse_body",
    "parse_fields",
    "parse_profiles",
    "profiles_json",
    "update_body",
    "state_body",
    "remove_body",
    "sync_body",
]

log = Logger()

CHANNEL = "dialog"
"""Kamailio's dialog DMQ peer id."""

CONTENT_TYPE = "application/json"

UINT_MAX = 2**32 - 1
"""Kamailio reads every number of a dialog body as a C ``unsigned int``."""

_NUMBERS = ("action", "h_entry", "h_id", "init_ts", "start_ts", "state", "lifetime")
_STRINGS = (
    "callid", "profiles", "from_uri", "to_uri", "req_uri",
    "tag1", "tag2", "cseq1", "cseq2", "route_set1", "route_set2", "contact1", "contact2",
)  # fmt: skip


class Action(enum.IntEnum):
    """The ``action`` values of Kamailio's dialog DMQ messages (``DLG_DMQ_*``)."""

    NONE = 0
    UPDATE = 1
    STATE = 2
    REMOVE = 3
    SYNC = 4


# -- building -------------------------------------------------------------------------------


def _leg(doc: dict[str, Any], dialog: Dialog, leg: int) -> None:
    n = leg + 1
    side = dialog.legs[leg]
    doc[f"tag{n}"] = side.tag or ""
    doc[f"cseq{n}"] = side.cseq or ""
    doc[f"route_set{n}"] = side.route_set or ""
    doc[f"contact{n}"] = side.contact or ""


def _state_fields(doc: dict[str, Any], dialog: Dialog, with_caller: bool) -> None:
    """The keys that follow ``state``, by state, as Kamailio 6.1 writes them."""
    doc["state"] = int(dialog.state)
    if dialog.state in (DialogState.EARLY, DialogState.CONFIRMED):
        doc["start_ts"] = dialog.start_ts
        doc["lifetime"] = dialog.lifetime
        if with_caller:
            _leg(doc, dialog, CALLER)
        if dialog.state is DialogState.CONFIRMED:
            _leg(doc, dialog, CALLEE)
    elif dialog.state is not DialogState.DELETED:
        doc["lifetime"] = dialog.lifetime


def profiles_json(links: list[ProfileLink]) -> str:
    """The ``profiles`` string of an update: ``{"profiles":[{"name":...,"value":...,"puid":...},...]}``."""
    items = []
    for link in links:
        item: dict[str, Any] = {"name": link.name}
        if link.value is not None:
            item["value"] = link.value
        if link.puid:
            item["puid"] = link.puid
        if link.expires:
            item["expires"] = link.expires
        if link.flags:
            item["flags"] = link.flags
        items.append(item)
    return dumps({"profiles": items}).decode("utf-8")


def update_body(dialog: Dialog) -> bytes:
    """``{"action":1,...}``: the whole dialog (what a new dialog, a sync answer, a changed variable send)."""
    doc: dict[str, Any] = {
        "action": int(Action.UPDATE),
        "h_entry": dialog.h_entry,
        "h_id": dialog.h_id,
        "init_ts": dialog.init_ts,
        "callid": dialog.callid,
        "from_uri": dialog.from_uri,
        "to_uri": dialog.to_uri,
        "req_uri": dialog.req_uri,
    }
    _leg(doc, dialog, CALLER)
    if dialog.vars:
        doc["vars"] = dict(dialog.vars_listed())
    if dialog.profiles:
        doc["profiles"] = profiles_json(dialog.profiles)
    _state_fields(doc, dialog, with_caller=False)
    return dumps(doc)


def state_body(dialog: Dialog) -> bytes:
    """``{"action":2,...}``: a new state (Kamailio sends states 2, 4 and 5 only)."""
    doc: dict[str, Any] = {"action": int(Action.STATE), "h_entry": dialog.h_entry, "h_id": dialog.h_id}
    _state_fields(doc, dialog, with_caller=True)
    return dumps(doc)


def remove_body(dialog: Dialog) -> bytes:
    """``{"action":3,...}``: the dialog is gone."""
    return dumps(
        {"action": int(Action.REMOVE), "h_entry": dialog.h_entry, "h_id": dialog.h_id, "state": int(dialog.state)}
    )


def sync_body() -> bytes:
    """``{"action":4}``: send me every dialog."""
    return dumps({"action": int(Action.SYNC)})


# -- reading --------------------------------------------------------------------------------


def _first_vars(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key == "vars" and key in doc:
            continue  # Kamailio looks vars up: the first one counts
        doc[key] = value
    return doc


def parse_body(body: bytes) -> Any:
    """
    The JSON value of ``body``.

    :raises PeerError: 400 for an empty body, or one that is not UTF-8 or
        not JSON (Kamailio: ``400 Bad Request``).
    """
    if not body.strip():
        raise bad_request("empty body")
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_first_vars)
    except UnicodeDecodeError:
        raise bad_request("body is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise bad_request(f"invalid JSON: {one_line(str(e), 80)}") from None


@dataclass(frozen=True)
class Fields:
    """
    What a dialog body says; an absent key reads as Kamailio reads it (0,
    ``state`` 1, strings ``None``).
    """

    action: int = 0
    h_entry: int = 0
    h_id: int = 0
    init_ts: int = 0
    start_ts: int = 0
    state: int = 1
    lifetime: int = 0
    callid: Optional[str] = None
    from_uri: Optional[str] = None
    to_uri: Optional[str] = None
    req_uri: Optional[str] = None
    tag1: Optional[str] = None
    tag2: Optional[str] = None
    cseq1: Optional[str] = None
    cseq2: Optional[str] = None
    route_set1: Optional[str] = None
    route_set2: Optional[str] = None
    contact1: Optional[str] = None
    contact2: Optional[str] = None
    profiles: Optional[str] = None
    vars: dict[str, str] = field(default_factory=dict)

    def leg(self, leg: int) -> tuple[str, str, str, str]:
        """``(tag, route_set, contact, cseq)`` of ``leg``, missing ones empty."""
        n = leg + 1
        return tuple(getattr(self, f"{name}{n}") or "" for name in ("tag", "route_set", "contact", "cseq"))  # type: ignore[return-value]


def parse_fields(doc: Any) -> Fields:
    """
    The fields of a decoded body.  Unknown keys are ignored.

    :raises PeerError: 400 for a body that is not a JSON object, a number
        field that is not a whole number from 0 to 2**32-1 (Kamailio would
        read another number), a string field that is not a string, or
        ``vars`` that is not an object of strings (Kamailio would crash on
        those).  A string is cut at a NUL, as Kamailio's ``strlen`` cuts it.
    """
    if not isinstance(doc, dict):
        raise bad_request("body is not a JSON object")
    values: dict[str, Any] = {}
    for key in _NUMBERS:
        number = wire_int(doc, key)
        if number is None:
            continue
        if not 0 <= number <= UINT_MAX:
            raise bad_request(f"{key} {number} is out of range")
        values[key] = number
    for key in _STRINGS:
        text = wire_str(doc, key)
        if text is not None:
            values[key] = text
    raw_vars = doc.get("vars")
    if raw_vars is not None:
        if not isinstance(raw_vars, dict) or not all(isinstance(v, str) for v in raw_vars.values()):
            raise bad_request("vars is not an object of strings")
        values["vars"] = dict(raw_vars)
    return Fields(**values)


def parse_profiles(text: str) -> list[ProfileLink]:
    """
    The links in the ``profiles`` string of an update, in the order given.
    As in Kamailio, text that is not JSON gives none (logged), and an item
    without a name or not of the expected types is left out.
    """
    try:
        doc = json.loads(text, object_pairs_hook=_first_vars)
    except (ValueError, RecursionError):
        log.info("dialog profiles are not JSON: {text}", text=one_line(text, 120))
        return []
    items = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    links = []
    for item in items:
        if not isinstance(item, dict):
            continue
        name, value, puid = item.get("name"), item.get("value"), item.get("puid", "")
        expires, flags = item.get("expires", 0), item.get("flags", 0)
        if not isinstance(name, str) or not isinstance(value, (str, type(None))) or not isinstance(puid, str):
            continue
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= UINT_MAX for n in (expires, flags)):
            continue
        links.append(ProfileLink(name, value, puid, expires, flags))
    return links
