"""
The htable channel's JSON bodies, both ways: what Kamailio's htable module
sends and accepts (``docs/protocol.md`` section 5), byte for byte as
Kamailio 5.6 writes them.

Builders return the body bytes; readers take the decoded JSON object and
raise :class:`~dmq.peer.PeerError` 400 (``Bad Request (...)``) for a field
that is missing or of the wrong type, in the order Kamailio reads them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from dmq.node import kamailio_version
from dmq.replicated.wire import INT_MAX, INT_MIN, Framing, bad_request, dumps, wire_int, wire_str
from dmq.peers.htable.table import TYPE_INT, TYPE_STR, Cell, Value

__all__ = [
    "CHANNEL",
    "CONTENT_TYPE",
    "CELLS",
    "EMPTY_CELLS",
    "BATCH",
    "batch_items",
    "Action",
    "set_body",
    "expire_body",
    "delete_body",
    "remove_body",
    "sync_body",
    "cell_json",
    "parse_value",
    "parse_action",
    "Edit",
    "parse_edit",
    "CellRecord",
    "cell_items",
    "parse_cell",
    "LAST_MODIFIED_SINCE",
    "refuses_last_modified",
]

CHANNEL = "htable"
"""Kamailio's htable DMQ peer id."""

CONTENT_TYPE = "application/json"

CELLS = Framing(b'{"cells":[', b"]}")
"""A sync answer: ``{"cells":[cell,cell,...]}``."""

EMPTY_CELLS = CELLS.empty

BATCH = Framing(b'{"batch":[', b"]}")
"""Several changes in one message, between dmq nodes only: ``{"batch":[change,change,...]}``."""

LAST_MODIFIED_SINCE = (6, 2, 0)
"""The first Kamailio release that may accept ``last_modified`` (it is on Kamailio's development branch only)."""


class Action(enum.IntEnum):
    """The ``action`` values of Kamailio's htable DMQ messages."""

    NONE = 0
    SYNC = 1
    SET_CELL = 2
    SET_CELL_EXPIRE = 3
    DEL_CELL = 4
    RM_CELL_RE = 5
    RM_CELL_SW = 6
    RM_CELL_EW = 7
    """Sent by Kamailio 6.0+ (``sht_rm_name_ew``); Kamailio itself does not apply it, this peer does."""
    RM_CELL_IN = 8
    """Sent by Kamailio 6.0+ (``sht_rm_name_in``); Kamailio itself does not apply it, this peer does."""


# -- building ----------------------------------------------------------------------------


def _value_fields(value: Value) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": TYPE_STR, "strval": value}
    return {"type": TYPE_INT, "intval": value}


def set_body(table: str, key: str, value: Value, last_modified: int = 0) -> bytes:
    """``{"action":2,...}``: set a string (type 2) or integer (type 0) value."""
    doc: dict[str, Any] = {"action": int(Action.SET_CELL), "htname": table, "cname": key, **_value_fields(value)}
    if last_modified:
        doc["last_modified"] = last_modified
    doc["mode"] = 1
    return dumps(doc)


def expire_body(table: str, key: str, seconds: int) -> bytes:
    """``{"action":3,...}``: expire ``key`` ``seconds`` from now (relative)."""
    return dumps(
        {"action": int(Action.SET_CELL_EXPIRE), "htname": table, "cname": key, "type": TYPE_INT, "intval": seconds, "mode": 0}
    )


def delete_body(table: str, key: str, last_modified: int = 0) -> bytes:
    """``{"action":4,...}``: delete ``key``."""
    doc: dict[str, Any] = {"action": int(Action.DEL_CELL), "htname": table, "cname": key}
    if last_modified:
        doc["last_modified"] = last_modified
    doc["mode"] = 0
    return dumps(doc)


def remove_body(table: str, action: Action, pattern: str, by_value: bool, last_modified: int = 0) -> bytes:
    """``{"action":5|6,...}``: remove by regex or prefix, on names (mode 0) or values (mode 1)."""
    doc: dict[str, Any] = {"action": int(action), "htname": table, "type": TYPE_STR, "strval": pattern}
    if last_modified:
        doc["last_modified"] = last_modified
    doc["mode"] = 1 if by_value else 0
    return dumps(doc)


def sync_body(table: Optional[str] = None) -> bytes:
    """``{"action":1}`` (with ``htname`` when only one table is wanted)."""
    doc: dict[str, Any] = {"action": int(Action.SYNC)}
    if table is not None:
        doc["htname"] = table
    return dumps(doc)


def cell_json(table: str, key: str, cell: Cell, with_last_modified: bool = False) -> bytes:
    """One cell of a sync answer, with its absolute expiry (whole seconds, 0 = never)."""
    doc: dict[str, Any] = {"htname": table, "cname": key, **_value_fields(cell.value)}
    # Rounded up: a receiver computes expire - now, and 0 or less there means "no expiry".
    doc["expire"] = int(math.ceil(cell.expire)) if cell.expire else 0
    if with_last_modified and cell.last_modified:
        doc["last_modified"] = cell.last_modified
    return dumps(doc)


# -- reading -----------------------------------------------------------------------------


def parse_value(doc: dict[str, Any], what: str) -> Value:
    """
    The value of a set or a cell: ``strval`` when ``type & 2``, else
    ``intval`` (without ``type``: whichever is there).

    :raises PeerError: 400 when it is missing, mistyped or out of 32 bits.
    """
    type_ = wire_int(doc, "type")
    if type_ is None:
        type_ = TYPE_STR if "strval" in doc and "intval" not in doc else TYPE_INT
    if type_ & TYPE_STR:
        strval = wire_str(doc, "strval")
        if strval is None:
            raise bad_request(f"{what} of type {type_} without strval")
        return strval
    intval = wire_int(doc, "intval")
    if intval is None:
        raise bad_request(f"{what} of type {type_} without intval")
    if not INT_MIN <= intval <= INT_MAX:
        raise bad_request(f"intval {intval} out of the 32-bit range")
    return intval


def parse_action(doc: dict[str, Any]) -> tuple[Action, Optional[str]]:
    """
    The action of a message and its ``htname`` (``None`` when absent).

    :raises PeerError: 400 for a missing, mistyped or unknown action.
    """
    number = wire_int(doc, "action")
    if number is None:
        raise bad_request("no action")
    action = _ACTIONS.get(number)
    if action is None:
        raise bad_request(f"unknown action {number}")
    return action, wire_str(doc, "htname")


_ACTIONS = {int(action): action for action in Action}


class Edit(NamedTuple):
    """
    The fields of a change (actions 2 to 8); those the action has no use
    for keep their defaults.

    :ivar cname: the item of a set, expire or delete.
    :ivar value: the value of a set.
    :ivar seconds: the relative expiry of an expire, clamped to 32 bits.
    :ivar pattern: the pattern of a remove (5 to 8).
    :ivar by_value: ``mode`` 1: a remove matches string values, not names.
    :ivar last_modified: the write's stamp in epoch ms, 0 when absent.
    """

    cname: str = ""
    value: Value = 0
    seconds: int = 0
    pattern: str = ""
    by_value: bool = False
    last_modified: int = 0


def parse_edit(action: Action, doc: dict[str, Any]) -> Edit:
    """
    The fields of a change ``action`` (not 0, not 1).

    :raises PeerError: 400 for a missing or mistyped field.
    """
    last_modified = wire_int(doc, "last_modified") or 0
    by_value = (wire_int(doc, "mode") or 0) != 0
    if action in (Action.SET_CELL, Action.SET_CELL_EXPIRE, Action.DEL_CELL):
        cname = wire_str(doc, "cname")
        if not cname:
            raise bad_request("no cname")
        if action is Action.SET_CELL:
            return Edit(cname, value=parse_value(doc, "set"), by_value=by_value, last_modified=last_modified)
        if action is Action.SET_CELL_EXPIRE:
            seconds = wire_int(doc, "intval")
            if seconds is None:
                raise bad_request("expire without intval")
            return Edit(cname, seconds=max(min(seconds, INT_MAX), INT_MIN), by_value=by_value)
        return Edit(cname, by_value=by_value, last_modified=last_modified)
    pattern = wire_str(doc, "strval")
    if pattern is None:
        raise bad_request(f"action {int(action)} without strval")
    return Edit(pattern=pattern, by_value=by_value, last_modified=last_modified)


@dataclass(frozen=True)
class CellRecord:
    """One cell of a sync answer; ``expire`` absolute epoch seconds (0: the table's default)."""

    htname: str
    cname: str
    value: Value
    expire: int
    last_modified: int


def cell_items(doc: dict[str, Any]) -> list[Any]:
    """
    The ``cells`` list of a sync answer.

    :raises PeerError: 400 when it is not a list.
    """
    cells = doc["cells"]
    if not isinstance(cells, list):
        raise bad_request("cells is not a list")
    return cells


def batch_items(doc: dict[str, Any]) -> list[Any]:
    """
    The changes of a ``{"batch":[...]}`` message.

    :raises PeerError: 400 when ``batch`` is not a non-empty list.
    """
    items = doc["batch"]
    if not isinstance(items, list) or not items:
        raise bad_request("batch is not a non-empty list")
    return items


def parse_cell(item: Any) -> CellRecord:
    """
    One cell of a sync answer.

    :raises PeerError: 400 for a cell that is not an object or lacks a
        field (Kamailio skips such a cell and applies the others).
    """
    if not isinstance(item, dict):
        raise bad_request("a cell is not an object")
    htname = wire_str(item, "htname")
    cname = wire_str(item, "cname")
    if not htname or not cname:
        raise bad_request("a cell without htname or cname")
    value = parse_value(item, "cell")
    expire = wire_int(item, "expire") or 0
    last_modified = wire_int(item, "last_modified") or 0
    return CellRecord(htname, cname, value, expire, last_modified)


def refuses_last_modified(agent: Optional[str]) -> bool:
    """
    Whether a node whose ``Server`` / ``User-Agent`` is ``agent`` runs a
    Kamailio release that answers 400 to any change carrying ``last_modified``.
    """
    version = kamailio_version(agent)
    return version is not None and version < LAST_MODIFIED_SINCE
