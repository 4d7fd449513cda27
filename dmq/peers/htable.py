"""
The ``htable`` peer: a replicated key/value table that shares its data with
Kamailio's ``htable`` module (``enable_dmq=1``, tables with ``dmqreplicate=1``).

::

    peer = HTablePeer(tables=["bans:expire=600", "counters"], persist_dir="/var/lib/dmq")
    svc.register_peer(peer)
    peer.set("bans", "10.0.0.1", "flood")          # replicated to every active node
    peer.incr("counters", "calls")                  # replicated as the new value
    peer.get("bans", "10.0.0.1")                    # -> "flood"

The wire format is Kamailio's JSON (``docs/protocol.md`` section 5); what this
peer sends is exactly what Kamailio 5.6 accepts (no ``last_modified`` unless
asked for: 5.6 answers 400 to any key it does not know).  The table logic is
:class:`HTable` (plain Python, time passed in); :class:`HTablePeer` drives it
from the network, the service's clock, RPC and an optional snapshot file.
See ``docs/htable.md`` for the behaviour in full.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.errors import ConfigurationError, RPCError
from dmq.node import Node, NodeListError, NodeStatus, kamailio_version
from dmq.peer import DMQMessage, Peer, PeerError

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = [
    "Action",
    "Cell",
    "Change",
    "HTable",
    "HTablePeer",
    "HTableSpec",
    "NoSuchTable",
    "Outcome",
    "CHANNEL",
    "INIT_SYNC_MODES",
    "set_body",
    "expire_body",
    "delete_body",
    "remove_body",
    "sync_body",
    "cell_json",
    "matcher",
    "compile_posix_regex",
]

log = Logger()

CHANNEL = "htable"
"""Kamailio's htable DMQ peer id."""

CONTENT_TYPE = "application/json"

EMPTY_CELLS = b'{"cells":[]}'

KAMAILIO_SLOTS = 256
"""The slots of a Kamailio table of ``size=8`` (2**8), as ``htable.listTables`` shows them."""

LAST_MODIFIED_SINCE = (6, 2, 0)
"""The first Kamailio release that may accept ``last_modified`` (it is on Kamailio's development branch only)."""

TYPE_INT = 0
TYPE_STR = 2
"""Kamailio's ``AVP_VAL_STR`` flag: ``type & 2`` means a string value."""

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
"""Kamailio's htable integers are C ints (its JSON reader casts to int)."""

INIT_SYNC_MODES = ("single", "all", "none")

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

# POSIX bracket classes Kamailio's regcomp() knows and Python's re does not.
_POSIX_CLASSES = {
    "[:alpha:]": "a-zA-Z",
    "[:digit:]": "0-9",
    "[:alnum:]": "a-zA-Z0-9",
    "[:upper:]": "A-Z",
    "[:lower:]": "a-z",
    "[:space:]": r" \t\n\r\f\v",
    "[:blank:]": r" \t",
    "[:xdigit:]": "0-9A-Fa-f",
    "[:punct:]": r"!-/:-@\[-`{-~",
}


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


class NoSuchTable(KeyError):
    """The named table is not one of the peer's tables (Kamailio: "No such htable")."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no htable {self.name!r}"


# -- table specs -------------------------------------------------------------------------


@dataclass(frozen=True)
class HTableSpec:
    """
    One table's configuration: its name and its default expiry.

    :ivar name: the table name (letters, digits, ``_ . -``), as in Kamailio's
        ``modparam("htable", "htable", "NAME=>...")``.
    :ivar expire: seconds a cell lives after it is set (Kamailio's
        ``autoexpire``); 0 means cells never expire unless given an expiry.
    """

    name: str
    expire: int = 0

    def __post_init__(self) -> None:
        if not _TABLE_NAME.match(self.name or ""):
            raise ConfigurationError(f"htable name {self.name!r}: use letters, digits, '_', '.' or '-'")
        if isinstance(self.expire, bool) or not isinstance(self.expire, int) or self.expire < 0:
            raise ConfigurationError(f"htable {self.name}: expire must be a whole number of seconds >= 0")

    @classmethod
    def parse(cls, text: str) -> "HTableSpec":
        """
        Parse ``NAME`` or ``NAME:expire=SECS`` (the ``--htable`` option).

        :raises ConfigurationError: (a ``ValueError``) naming what is wrong.
        """
        name, *options = text.strip().split(":")
        expire = 0
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip().lower()
            if not sep or key != "expire":
                raise ConfigurationError(
                    f"htable spec {text!r}: unknown option {option!r} (use NAME or NAME:expire=SECS)"
                )
            try:
                expire = int(value.strip())
            except ValueError:
                raise ConfigurationError(f"htable spec {text!r}: expire must be a number of seconds") from None
        return cls(name.strip(), expire)

    def __str__(self) -> str:
        return f"{self.name}:expire={self.expire}" if self.expire else self.name


# -- cells and the table -------------------------------------------------------------------


Value = Union[str, int]


@dataclass
class Cell:
    """
    One item of a table.

    :ivar value: a ``str`` or an ``int`` (32-bit, as in Kamailio).
    :ivar expire: when it expires, in epoch seconds of the service clock;
        0 means never.
    :ivar last_modified: the write's timestamp in epoch milliseconds, used
        for last-write-wins when timestamps are on; 0 when unknown.
    """

    value: Value
    expire: float = 0.0
    last_modified: int = 0

    def expired(self, now: float) -> bool:
        """Whether the cell has expired at ``now``."""
        return 0 < self.expire <= now

    @property
    def type(self) -> int:
        """Kamailio's ``type``: 2 for a string, 0 for an integer."""
        return TYPE_STR if isinstance(self.value, str) else TYPE_INT


@dataclass(frozen=True)
class Change:
    """
    A change of one item, as change listeners see it.

    :ivar table: the table name.
    :ivar key: the item name.
    :ivar cell: the new cell, or ``None`` when the item was removed (deleted,
        matched by a remove, or expired).
    :ivar origin: the node the change came from, or ``None`` for a local
        change (API, RPC, expiry, snapshot).
    """

    table: str
    key: str
    cell: Optional[Cell]
    origin: Optional[Node] = None


def _rank(last_modified: int, value: Value) -> tuple[int, int, Value]:
    # A total order on writes: newer first, then a deterministic tie-break
    # (ints below strings, then by value) so that nodes that saw two writes
    # stamped the same millisecond still keep the same one.
    return (last_modified, 1 if isinstance(value, str) else 0, value)


def _tombstone_rank(last_modified: int) -> tuple[int, int, str]:
    # A delete stamped the same millisecond as a write beats it.
    return (last_modified, 2, "")


class HTable:
    """
    One table: cells by name, expiry and last-write-wins, with no I/O.

    Every method takes the time (``now``, epoch seconds) it should act at;
    :class:`HTablePeer` passes its service clock.  Expired cells stay until
    :meth:`purge` but are invisible to :meth:`lookup` and :meth:`live`.

    :ivar spec: the table's :class:`HTableSpec`.
    :ivar cells: name -> :class:`Cell`, expired ones included.
    :ivar tombstones: name -> timestamp (ms) of the last delete, kept for
        last-write-wins so a late, older write does not bring an item back.
    """

    def __init__(self, spec: HTableSpec) -> None:
        self.spec = spec
        self.cells: dict[str, Cell] = {}
        self.tombstones: dict[str, int] = {}

    @property
    def name(self) -> str:
        """The table name."""
        return self.spec.name

    def default_expire(self, now: float) -> float:
        """The expiry a freshly set cell gets: now + the table's expire, or 0 (never)."""
        return now + self.spec.expire if self.spec.expire else 0.0

    def lookup(self, key: str, now: float) -> Optional[Cell]:
        """The live cell ``key``, or ``None`` (absent or expired)."""
        cell = self.cells.get(key)
        if cell is None or cell.expired(now):
            return None
        return cell

    def live(self, now: float) -> Iterator[tuple[str, Cell]]:
        """Every live ``(name, cell)``, in insertion order."""
        for key, cell in list(self.cells.items()):
            if not cell.expired(now):
                yield key, cell

    def stamp(self, key: str, now_ms: int) -> int:
        """A timestamp for a local write of ``key``: now, but above any it has seen for ``key``."""
        floor = 0
        cell = self.cells.get(key)
        if cell is not None:
            floor = cell.last_modified + 1
        stone = self.tombstones.get(key)
        if stone is not None:
            floor = max(floor, stone + 1)
        return max(now_ms, floor)

    def wins(self, key: str, value: Value, last_modified: int) -> bool:
        """Whether a write of ``value`` stamped ``last_modified`` is newer than what the table holds."""
        incoming = _rank(last_modified, value)
        cell = self.cells.get(key)
        if cell is not None and incoming <= _rank(cell.last_modified, cell.value):
            return False
        stone = self.tombstones.get(key)
        return stone is None or incoming > _tombstone_rank(stone)

    def set(
        self,
        key: str,
        value: Value,
        now: float,
        *,
        expire: Optional[float] = None,
        last_modified: int = 0,
        lww: bool = False,
    ) -> Optional[Cell]:
        """
        Set ``key`` (Kamailio's ``ht_set_cell`` with ``updateexpire=1``).

        :param expire: the absolute expiry; ``None`` gives the table default.
        :param lww: apply last-write-wins: a write stamped ``last_modified``
            (non-zero) is dropped unless it is newer than the held one.
        :returns: the new cell, or ``None`` when last-write-wins dropped it.
        """
        if lww and last_modified and not self.wins(key, value, last_modified):
            return None
        cell = Cell(value, self.default_expire(now) if expire is None else expire, last_modified)
        self.cells[key] = cell
        if lww:
            self.tombstones.pop(key, None)
        return cell

    def set_expire(self, key: str, seconds: int, now: float) -> Optional[Cell]:
        """
        Give the live cell ``key`` a new expiry ``seconds`` from now (0 or
        less: never).  Returns the cell, or ``None`` when there is none.
        """
        cell = self.lookup(key, now)
        if cell is None:
            return None
        cell.expire = now + seconds if seconds > 0 else 0.0
        return cell

    def _delete_allowed(self, cell: Cell, last_modified: int, lww: bool) -> bool:
        return not (lww and last_modified) or _tombstone_rank(last_modified) > _rank(cell.last_modified, cell.value)

    def _bury(self, key: str, last_modified: int, lww: bool) -> None:
        if lww and last_modified and last_modified > self.tombstones.get(key, 0):
            self.tombstones[key] = last_modified

    def delete(self, key: str, *, last_modified: int = 0, lww: bool = False) -> Optional[Cell]:
        """
        Remove ``key``.  With ``lww`` and a stamp, a cell written later stays.

        :returns: the removed cell (possibly an expired one), or ``None``.
        """
        cell = self.cells.get(key)
        if cell is not None and not self._delete_allowed(cell, last_modified, lww):
            return None
        self._bury(key, last_modified, lww)
        return self.cells.pop(key, None)

    def remove_matching(
        self, match: Callable[[str, Cell], bool], *, last_modified: int = 0, lww: bool = False
    ) -> list[tuple[str, Cell]]:
        """Remove every cell for which ``match(name, cell)`` is true; return the removed ones."""
        removed = []
        for key, cell in list(self.cells.items()):
            if match(key, cell) and self._delete_allowed(cell, last_modified, lww):
                del self.cells[key]
                self._bury(key, last_modified, lww)
                removed.append((key, cell))
        return removed

    def purge(self, now: float) -> list[tuple[str, Cell]]:
        """Drop the cells expired at ``now``; return them."""
        gone = [(key, cell) for key, cell in self.cells.items() if cell.expired(now)]
        for key, _ in gone:
            del self.cells[key]
        return gone

    def prune_tombstones(self, older_than_ms: int) -> int:
        """Forget deletes stamped before ``older_than_ms``; return how many."""
        old = [key for key, lm in self.tombstones.items() if lm < older_than_ms]
        for key in old:
            del self.tombstones[key]
        return len(old)


# -- matching (Kamailio's regcomp(REG_EXTENDED|REG_ICASE|REG_NEWLINE) and strncmp) -----


def compile_posix_regex(pattern: str) -> "re.Pattern[str]":
    """
    Compile a POSIX extended regex the way Kamailio's ``sht_rm_name_re``
    does: case-insensitive, ``^``/``$`` at line breaks, unanchored search.
    POSIX bracket classes (``[[:digit:]]``) are translated.

    :raises ValueError: for an empty or invalid pattern.
    """
    if not pattern:
        raise ValueError("empty pattern")
    translated = pattern
    for posix, python in _POSIX_CLASSES.items():
        translated = translated.replace(posix, python)
    try:
        return re.compile(translated, re.IGNORECASE | re.MULTILINE)
    except re.error as e:
        raise ValueError(f"bad regex {pattern!r}: {e}") from None


def matcher(action: Action, pattern: str, by_value: bool) -> Callable[[str, Cell], bool]:
    """
    The cell test of a remove action (5 regex, 6 prefix, 7 suffix, 8
    substring), on names or, ``by_value``, on string values (integer cells
    never match by value, as in Kamailio).

    :raises ValueError: for an empty pattern or a bad regex.
    """
    if not pattern:
        raise ValueError("empty pattern")
    test: Callable[[str], bool]
    if action is Action.RM_CELL_RE:
        regex = compile_posix_regex(pattern)
        test = lambda text: regex.search(text) is not None  # noqa: E731
    elif action is Action.RM_CELL_SW:
        test = lambda text: text.startswith(pattern)  # noqa: E731
    elif action is Action.RM_CELL_EW:
        test = lambda text: text.endswith(pattern)  # noqa: E731
    elif action is Action.RM_CELL_IN:
        test = lambda text: pattern in text  # noqa: E731
    else:
        raise ValueError(f"action {int(action)} removes nothing")
    if by_value:
        return lambda key, cell: isinstance(cell.value, str) and test(cell.value)
    return lambda key, cell: test(key)


# -- the wire ------------------------------------------------------------------------------


def _dumps(doc: dict[str, Any]) -> bytes:
    # Kamailio's srjson prints compactly and leaves non-ASCII as UTF-8.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


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
    return _dumps(doc)


def expire_body(table: str, key: str, seconds: int) -> bytes:
    """``{"action":3,...}``: expire ``key`` ``seconds`` from now (relative)."""
    return _dumps(
        {"action": int(Action.SET_CELL_EXPIRE), "htname": table, "cname": key, "type": TYPE_INT, "intval": seconds, "mode": 0}
    )


def delete_body(table: str, key: str, last_modified: int = 0) -> bytes:
    """``{"action":4,...}``: delete ``key``."""
    doc: dict[str, Any] = {"action": int(Action.DEL_CELL), "htname": table, "cname": key}
    if last_modified:
        doc["last_modified"] = last_modified
    doc["mode"] = 0
    return _dumps(doc)


def remove_body(table: str, action: Action, pattern: str, by_value: bool, last_modified: int = 0) -> bytes:
    """``{"action":5|6,...}``: remove by regex or prefix, on names (mode 0) or values (mode 1)."""
    doc: dict[str, Any] = {"action": int(action), "htname": table, "type": TYPE_STR, "strval": pattern}
    if last_modified:
        doc["last_modified"] = last_modified
    doc["mode"] = 1 if by_value else 0
    return _dumps(doc)


def sync_body(table: Optional[str] = None) -> bytes:
    """``{"action":1}`` (with ``htname`` when only one table is wanted)."""
    doc: dict[str, Any] = {"action": int(Action.SYNC)}
    if table is not None:
        doc["htname"] = table
    return _dumps(doc)


def cell_json(table: str, key: str, cell: Cell, with_last_modified: bool = False) -> bytes:
    """One cell of a sync answer, with its absolute expiry (whole seconds, 0 = never)."""
    doc: dict[str, Any] = {"htname": table, "cname": key, **_value_fields(cell.value)}
    # Rounded up: a receiver computes expire - now, and 0 or less there means "no expiry".
    doc["expire"] = int(math.ceil(cell.expire)) if cell.expire else 0
    if with_last_modified and cell.last_modified:
        doc["last_modified"] = cell.last_modified
    return _dumps(doc)


def _bad(reason: str) -> PeerError:
    return PeerError(400, f"Bad Request ({reason})")


def _failed(reason: str) -> PeerError:
    return PeerError(500, f"Server Internal Error ({reason})")


def _short(text: str, limit: int = 80) -> str:
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wire_str(doc: dict[str, Any], key: str) -> Optional[str]:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{key} is not a string")
    # Kamailio reads strings with strlen(): a NUL ends them.
    value = value.split("\x00", 1)[0]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{key} is not valid UTF-8") from None
    return value


def _wire_int(doc: dict[str, Any], key: str) -> Optional[int]:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{key} is not a number")
    if isinstance(value, float):
        if not value.is_integer():
            raise _bad(f"{key} is not a whole number")
        value = int(value)
    return value


def _wire_value(doc: dict[str, Any], what: str) -> Value:
    type_ = _wire_int(doc, "type")
    if type_ is None:
        type_ = TYPE_STR if "strval" in doc and "intval" not in doc else TYPE_INT
    if type_ & TYPE_STR:
        strval = _wire_str(doc, "strval")
        if strval is None:
            raise _bad(f"{what} of type {type_} without strval")
        return strval
    intval = _wire_int(doc, "intval")
    if intval is None:
        raise _bad(f"{what} of type {type_} without intval")
    if not INT_MIN <= intval <= INT_MAX:
        raise _bad(f"intval {intval} out of the 32-bit range")
    return intval


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"an item name is a str, not {type(key).__name__}")
    if not key:
        raise ValueError("an item name cannot be empty")
    _check_text(key, "item name")
    return key


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        # Kamailio would cut it at the NUL: the nodes would disagree.
        raise ValueError(f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None


def _check_value(value: Value) -> Value:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"a value is a str or an int, not {type(value).__name__}")
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"{value} is out of Kamailio's 32-bit integer range")
    else:
        _check_text(value, "value")
    return value


def _check_seconds(seconds: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError(f"seconds are an int, not {type(seconds).__name__}")
    if not INT_MIN <= seconds <= INT_MAX:
        raise ValueError(f"{seconds} seconds is out of range")
    return seconds


# -- paced sending ---------------------------------------------------------------------------


def _paired(code: int, node: Node) -> "Outcome":
    return (node, code)


Outcome = tuple[Node, int]
"""A node and the status code it answered (408 for a timeout, 503 when not sent)."""


@dataclass
class _Outgoing:
    """One queued message to one node; ``key`` ``None`` means it touches the whole table."""

    node: Node
    body: bytes
    table: str
    key: Optional[str]
    done: Deferred[Outcome]


class _Lane:
    """The messages for one node, and which items and tables have one in flight."""

    def __init__(self) -> None:
        self.queue: deque[_Outgoing] = deque()
        self.keys: dict[tuple[str, str], int] = {}
        self.tables: dict[str, int] = {}
        self.walls: dict[str, int] = {}

    def take(self, lookahead: int) -> Optional[_Outgoing]:
        """
        The first queued message that may go now: none in flight for its
        item (for its table, when it touches the whole table), and no earlier
        queued message it must not overtake.
        """
        blocked_keys: set[tuple[str, str]] = set()
        blocked_tables: set[str] = set()  # a whole-table message waits
        waiting_tables: set[str] = set()  # some message of the table waits
        for index, item in enumerate(self.queue):
            if index >= lookahead:
                return None
            table = item.table
            if table in blocked_tables:
                continue
            if item.key is None:
                if self.tables.get(table, 0) == 0 and table not in waiting_tables:
                    del self.queue[index]
                    return item
                blocked_tables.add(table)
            else:
                key = (table, item.key)
                if key not in blocked_keys and self.keys.get(key, 0) == 0 and self.walls.get(table, 0) == 0:
                    del self.queue[index]
                    return item
                blocked_keys.add(key)
            waiting_tables.add(table)
        return None

    def started(self, item: _Outgoing, delta: int) -> None:
        table = item.table
        self.tables[table] = self.tables.get(table, 0) + delta
        if item.key is None:
            self.walls[table] = self.walls.get(table, 0) + delta
        else:
            key = (table, item.key)
            count = self.keys.get(key, 0) + delta
            if count:
                self.keys[key] = count
            else:
                del self.keys[key]

    @property
    def idle(self) -> bool:
        return not self.queue and not self.keys and not any(self.tables.values())


class _Outbox:
    """
    Sends replication messages with at most ``window`` of them waiting for
    an answer, so a burst of changes cannot flood the nodes, and in order
    per node and item: a change goes to a node only once the node answered
    the previous change of the same item (a whole-table remove waits for,
    and holds back, every change of its table).  Kamailio runs several DMQ
    workers, so two changes in flight at once may be applied in either order.
    """

    LOOKAHEAD = 256
    """How far down a node's queue to look for a message that may overtake blocked ones."""

    def __init__(self, peer: "HTablePeer", window: int) -> None:
        self.peer = peer
        self.window = window
        self.lanes: dict[tuple[str, str, str], _Lane] = {}
        self.in_flight = 0
        self.queued = 0
        self._pumping = False

    def send(self, node: Node, body: bytes, table: str, key: Optional[str]) -> "Deferred[Outcome]":
        d: Deferred[Outcome] = Deferred()
        lane = self.lanes.get(node.key)
        if lane is None:
            lane = self.lanes[node.key] = _Lane()
        lane.queue.append(_Outgoing(node, body, table, key, d))
        self.queued += 1
        self.pump()
        return d

    def pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            progressed = True
            while progressed and self.in_flight < self.window:
                progressed = False
                # One message per node per round: nodes share the window fairly.
                for lane in list(self.lanes.values()):
                    if self.in_flight >= self.window:
                        break
                    item = lane.take(self.LOOKAHEAD)
                    if item is None:
                        continue
                    progressed = True
                    self.queued -= 1
                    self.in_flight += 1
                    lane.started(item, +1)
                    self.peer._send(item.node, item.body).addCallback(self._done, lane, item)
        finally:
            self._pumping = False

    def _done(self, code: int, lane: _Lane, item: _Outgoing) -> None:
        self.in_flight -= 1
        lane.started(item, -1)
        if lane.idle and self.lanes.get(item.node.key) is lane:
            del self.lanes[item.node.key]
        item.done.callback((item.node, code))
        self.pump()

    def drop_all(self) -> None:
        """Answer everything still queued with 503 (the peer stops)."""
        lanes, self.lanes = self.lanes, {}
        self.queued = 0
        for lane in lanes.values():
            for item in lane.queue:
                item.done.callback((item.node, 503))


@dataclass
class _SyncSession:
    """One sync answer under way: the items still to send to ``node``."""

    node: Node
    items: deque[tuple[str, str]]
    chunks: int = 0
    cells: int = 0
    in_flight: int = 0
    failed: bool = False
    done: Deferred[int] = field(default_factory=Deferred)


# -- the peer ----------------------------------------------------------------------------------


ChangeListener = Callable[[Change], Any]
TableSpecs = Iterable[Union[str, HTableSpec]]


class HTablePeer(Peer):
    """
    Replicated tables on the ``htable`` channel, wire-compatible with
    Kamailio's htable module.

    Local changes (:meth:`set`, :meth:`incr`, :meth:`set_expire`,
    :meth:`delete`, :meth:`remove_matching`) apply at once and are sent to
    every active node; changes from other nodes are applied as they come.
    When the node becomes ready it asks for a full sync (see
    ``init_sync``); it answers a sync request with its cells in messages
    that each fit a datagram, to the requester only.

    :param tables: the tables, each an :class:`HTableSpec` or its text
        (``"name"`` or ``"name:expire=SECS"``).
    :param persist_dir: when given, a snapshot of the tables is kept in
        ``persist_dir/<channel>.json`` (written atomically every
        ``persist_interval`` seconds when something changed, and on stop)
        and loaded at start, before the node syncs.
    :param last_modified: stamp writes with ``last_modified`` (epoch ms) on
        the wire and apply last-write-wins (Kamailio 6.x clusters only:
        Kamailio 5.6 answers 400 to it).  Incoming stamps are honoured
        either way.
    :param init_sync: what to do when the node becomes ready: ``"single"``
        (default) asks one active node (seeds first; the next one if it does
        not answer 200), ``"all"`` broadcasts the request as Kamailio does
        (every node answers with every cell), ``"none"`` asks nobody.
    :param max_in_flight: most replication messages waiting for answers
        (besides, a node never has two changes of one item in flight).
    :param sync_window: most sync-answer messages waiting for answers.
    :param sync_chunk_size: the size a sync-answer body stays below
        (default: what fits the service's datagram limit,
        :attr:`~dmq.service.DMQService.max_body_size`).
    :param persist_interval: seconds between snapshot checks.
    :param purge_interval: seconds between sweeps of expired cells.
    :param tombstone_ttl: seconds a delete is remembered for last-write-wins.
    :param channel: the channel (Kamailio's ``dmq_peer_id``, default htable).
    """

    description = "replicated key/value tables (Kamailio htable)"

    def __init__(
        self,
        tables: TableSpecs = (),
        persist_dir: Optional[Union[str, os.PathLike[str]]] = None,
        last_modified: bool = False,
        *,
        init_sync: str = "single",
        max_in_flight: int = 64,
        sync_window: int = 2,
        sync_chunk_size: Optional[int] = None,
        persist_interval: float = 1.0,
        purge_interval: float = 10.0,
        tombstone_ttl: float = 300.0,
        channel: str = CHANNEL,
    ) -> None:
        super().__init__(channel)
        if init_sync not in INIT_SYNC_MODES:
            raise ConfigurationError(f"init_sync must be one of {', '.join(INIT_SYNC_MODES)}, not {init_sync!r}")
        if max_in_flight < 1 or sync_window < 1:
            raise ConfigurationError("max_in_flight and sync_window must be at least 1")
        if sync_chunk_size is not None and sync_chunk_size <= len(EMPTY_CELLS):
            raise ConfigurationError(f"sync_chunk_size must be above {len(EMPTY_CELLS)}")
        self.tables: dict[str, HTable] = {}
        for spec in tables:
            if not isinstance(spec, HTableSpec):
                spec = HTableSpec.parse(spec)
            if spec.name in self.tables:
                raise ConfigurationError(f"htable {spec.name!r} is given twice")
            self.tables[spec.name] = HTable(spec)
        self.persist_path: Optional[Path] = (
            Path(persist_dir) / f"{self.channel}.json" if persist_dir is not None else None
        )
        self.last_modified = last_modified
        self.init_sync = init_sync
        self.sync_chunk_size = sync_chunk_size
        self.persist_interval = persist_interval
        self.purge_interval = purge_interval
        self.tombstone_ttl = tombstone_ttl
        self.stats: dict[str, int] = {
            "received": 0,
            "applied": 0,
            "rejected": 0,
            "stale": 0,
            "sync_requests": 0,
            "sync_chunks_received": 0,
            "sync_cells_received": 0,
            "sync_chunks_sent": 0,
            "sync_cells_sent": 0,
            "replicated": 0,
            "snapshots": 0,
        }
        self.sync_chunk_sizes: deque[int] = deque(maxlen=1000)
        """Body sizes of the most recent sync-answer messages sent (for checks and metrics)."""
        self._outbox = _Outbox(self, max_in_flight)
        self._sync_window = sync_window
        self._sync_sessions: dict[tuple[str, str, str], _SyncSession] = {}
        self._sync_in_flight = 0
        self._sync_pumping = False
        self._listeners: list[ChangeListener] = []
        self._dirty = False
        self._loops: list[LoopingCall] = []
        self._warned: set[tuple[tuple[str, str, str], int]] = set()

    # -- life cycle -------------------------------------------------------------------------

    @property
    def svc(self) -> "DMQService":
        """The service the peer is registered with."""
        return self.service

    def _now(self) -> float:
        return float(self.svc.clock.seconds())

    def _now_ms(self) -> int:
        return int(self.svc.clock.seconds() * 1000)

    def startService(self) -> None:  # noqa: N802
        """Load the snapshot (before any sync can run), then start the expiry and snapshot loops."""
        super().startService()
        if self.persist_path is not None:
            self.load_snapshot()
        self._start_loop(self.purge, self.purge_interval)
        if self.persist_path is not None:
            self._start_loop(self._persist_tick, self.persist_interval)

    def _start_loop(self, function: Callable[[], Any], interval: float) -> None:
        loop = LoopingCall(function)
        loop.clock = self.svc.clock
        loop.start(interval, now=False).addErrback(
            lambda f: log.failure("htable loop {name} stopped", f, name=getattr(function, "__name__", "?"))
        )
        self._loops.append(loop)

    def stopService(self) -> "Deferred[Any]":  # noqa: N802
        """Stop the loops, drop queued sends and write the last snapshot."""
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self._outbox.drop_all()
        for session in list(self._sync_sessions.values()):
            self._end_session(session, failed=True)
        if self.persist_path is not None:
            try:
                self.save_snapshot()
            except OSError as e:
                log.error("cannot write the htable snapshot {path}: {error}", path=str(self.persist_path), error=str(e))
        return defer.succeed(None)

    def init(self, service: "DMQService") -> "Deferred[list[Outcome]]":
        """Sync on join, as ``init_sync`` says."""
        if self.init_sync == "none":
            return defer.succeed([])
        return self.request_sync(all_nodes=self.init_sync == "all")

    # -- listeners ----------------------------------------------------------------------------

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(change)`` with a :class:`Change` for every item that changes."""
        self._listeners.append(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def _changed(self, table: str, key: str, cell: Optional[Cell], origin: Optional[Node] = None) -> None:
        self._dirty = True
        if not self._listeners:
            return
        change = Change(table, key, replace(cell) if cell is not None else None, origin)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.failure("htable change listener failed")

    # -- reading ------------------------------------------------------------------------------

    def table(self, name: str) -> HTable:
        """The :class:`HTable` called ``name``; :class:`NoSuchTable` if there is none."""
        table = self.tables.get(name)
        if table is None:
            raise NoSuchTable(name)
        return table

    def get(self, table: str, key: str, default: Any = None) -> Any:
        """The value of ``key`` in ``table``, or ``default`` when it is absent or expired."""
        cell = self.table(table).lookup(key, self._now())
        return default if cell is None else cell.value

    def cell(self, table: str, key: str) -> Optional[Cell]:
        """A copy of the live cell ``key`` (value, expiry, timestamp), or ``None``."""
        cell = self.table(table).lookup(key, self._now())
        return replace(cell) if cell is not None else None

    def dump(self, table: str) -> dict[str, Value]:
        """Every live item of ``table`` as ``{name: value}``."""
        return {key: cell.value for key, cell in self.table(table).live(self._now())}

    def cells(self, table: str) -> dict[str, Cell]:
        """Every live item of ``table`` as ``{name: Cell}`` (copies)."""
        return {key: replace(cell) for key, cell in self.table(table).live(self._now())}

    # -- writing ------------------------------------------------------------------------------

    def set(self, table: str, key: str, value: Value, expire: Optional[int] = None) -> "Deferred[list[Outcome]]":
        """
        Set ``key`` to ``value`` (a str or a 32-bit int) and replicate it.

        :param expire: seconds until it expires; by default the table's
            expire (a later set starts it afresh).  Given, it is replicated
            as a second message (a set, then an expire, as Kamailio's
            ``htable.setxs`` does).
        :returns: a Deferred firing, once every active node answered, with
            ``(node, status code)`` pairs (408 for a timeout); it never fails.
        :raises NoSuchTable: for an unknown table.
        :raises ValueError, TypeError: for a value Kamailio cannot hold.
        """
        t = self.table(table)
        _check_key(key)
        _check_value(value)
        if expire is not None:
            _check_seconds(expire)
        now = self._now()
        lm = t.stamp(key, self._now_ms()) if self.last_modified else 0
        absolute = None if expire is None else (now + expire if expire > 0 else 0.0)
        cell = t.set(key, value, now, expire=absolute, last_modified=lm, lww=self.last_modified)
        self._changed(table, key, cell)
        bodies = [set_body(table, key, value, lm)]
        if expire is not None:
            bodies.append(expire_body(table, key, expire))
        return self._replicate(table, key, *bodies)

    def incr(self, table: str, key: str, delta: int = 1) -> int:
        """
        Add ``delta`` to the integer ``key`` (a missing or expired item counts
        as 0), replicate the new value (as Kamailio does for ``$shtinc``),
        and return it.

        :raises ValueError: when the item holds a string or the result
            leaves the 32-bit range.
        """
        t = self.table(table)
        _check_key(key)
        cell = t.lookup(key, self._now())
        if cell is not None and not isinstance(cell.value, int):
            raise ValueError(f"{table}[{key!r}] holds a string, not an integer")
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError("delta must be an int")
        value = (cell.value if cell is not None else 0) + delta  # type: ignore[operator]
        _check_value(value)
        self.set(table, key, value)
        return value

    def set_expire(self, table: str, key: str, seconds: int) -> "Deferred[list[Outcome]]":
        """
        Make ``key`` expire ``seconds`` from now (0: never) and replicate
        that (relative seconds, as on the wire).  Applies to every table
        (Kamailio applies it only to tables with ``autoexpire``).
        """
        t = self.table(table)
        _check_key(key)
        _check_seconds(seconds)
        cell = t.set_expire(key, seconds, self._now())
        if cell is not None:
            self._changed(table, key, cell)
        return self._replicate(table, key, expire_body(table, key, seconds))

    def delete(self, table: str, key: str) -> "Deferred[list[Outcome]]":
        """Delete ``key`` and replicate the delete (sent even when absent here, as Kamailio does)."""
        t = self.table(table)
        _check_key(key)
        now = self._now()
        lm = t.stamp(key, self._now_ms()) if self.last_modified else 0
        live = t.lookup(key, now) is not None
        t.delete(key, last_modified=lm, lww=self.last_modified)
        if live:
            self._changed(table, key, None)
        return self._replicate(table, key, delete_body(table, key, lm))

    def remove_matching(
        self,
        table: str,
        *,
        regex: Optional[str] = None,
        prefix: Optional[str] = None,
        by_value: bool = False,
    ) -> "Deferred[list[Outcome]]":
        """
        Remove the items whose name (or, ``by_value``, string value) matches
        ``regex`` (POSIX extended, case-insensitive, unanchored: Kamailio's
        ``sht_rm_name_re``) or starts with ``prefix``; give exactly one.
        Replicated as action 5 or 6.

        :raises ValueError: for an empty pattern, a bad regex, or not
            exactly one of ``regex`` and ``prefix``.
        """
        t = self.table(table)
        if (regex is None) == (prefix is None):
            raise ValueError("give exactly one of regex and prefix")
        action, pattern = (Action.RM_CELL_RE, regex) if regex is not None else (Action.RM_CELL_SW, prefix)
        assert pattern is not None
        _check_text(pattern, "pattern")
        match = matcher(action, pattern, by_value)
        now = self._now()
        lm = self._now_ms() if self.last_modified else 0
        for key, cell in t.remove_matching(match, last_modified=lm, lww=self.last_modified):
            if not cell.expired(now):
                self._changed(table, key, None)
        return self._replicate(table, None, remove_body(table, action, pattern, by_value, lm))

    # -- replication --------------------------------------------------------------------------

    def _replicate(self, table: str, key: Optional[str], *bodies: bytes) -> "Deferred[list[Outcome]]":
        """
        Send each body, in order, to every active node (paced and ordered by
        the outbox).  Fires with every ``(node, code)``.
        """
        if not self.registered or not self.running:
            return defer.succeed([])
        targets = self.svc.nodes.active()
        if not targets:
            return defer.succeed([])
        sends = [self._outbox.send(node, body, table, key) for body in bodies for node in targets]
        self.stats["replicated"] += len(bodies)
        return defer.gatherResults(sends)

    def _send(self, node: Node, body: bytes) -> "Deferred[int]":
        d = self.svc.send_message(self, body, node, CONTENT_TYPE)

        def answered(response: Any) -> int:
            code = int(response.code)
            if self.last_modified:
                self._check_last_modified(node)
            if code not in (200, 408) and (node.key, code) not in self._warned:
                # Once per node and code: the node refuses what we send.
                self._warned.add((node.key, code))
                log.warn(
                    "node {uri} answered {code} {reason} to an htable message",
                    uri=str(node.uri),
                    code=code,
                    reason=getattr(response, "reason", ""),
                )
            return code

        def failed(failure: Failure) -> int:
            log.failure("sending an htable message to {uri} failed", failure, uri=str(node.uri))
            return 503

        return d.addCallbacks(answered, failed)

    def _check_last_modified(self, node: Node) -> None:
        """Warn once per node when it runs a Kamailio release that refuses ``last_modified``."""
        version = kamailio_version(node.agent)
        if version is None or version >= LAST_MODIFIED_SINCE or (node.key, 0) in self._warned:
            return
        self._warned.add((node.key, 0))
        log.warn(
            "node {uri} runs {agent}, which answers 400 to every htable change carrying last_modified "
            "(no Kamailio release up to 6.1 knows it): turn last_modified off in this cluster",
            uri=str(node.uri),
            agent=node.agent,
        )

    @property
    def in_flight(self) -> int:
        """Messages sent and not answered yet (replication and sync answers)."""
        return self._outbox.in_flight + self._sync_in_flight

    @property
    def queued(self) -> int:
        """Replication messages waiting for a slot."""
        return self._outbox.queued

    # -- sync -------------------------------------------------------------------------------

    def request_sync(
        self, table: Optional[str] = None, all_nodes: bool = False
    ) -> "Deferred[list[Outcome]]":
        """
        Ask for the cluster's cells: ``{"action":1}`` (with ``htname`` for
        one ``table``) to every active node (``all_nodes``) or to one node
        at a time, seeds first, until one answers 200.  The cells arrive
        later as separate messages.  Fires with the ``(node, code)`` pairs
        of the requests sent (none when no node is active).
        """
        if table is not None:
            self.table(table)
        body = sync_body(table)
        nodes = self.svc.nodes.active()
        if not nodes:
            log.info("htable sync: no active node to ask")
            return defer.succeed([])
        if all_nodes:
            log.info("htable sync: asking all {count} active node(s)", count=len(nodes))
            return defer.gatherResults([self._send(n, body).addCallback(_paired, n) for n in nodes])
        nodes.sort(key=lambda n: not n.seed)
        outcomes: list[Outcome] = []

        def ask(index: int) -> Any:
            if index >= len(nodes):
                log.warn("htable sync: no node answered the sync request")
                return outcomes
            node = nodes[index]
            if node.status is not NodeStatus.ACTIVE:
                return ask(index + 1)

            def answered(code: int) -> Any:
                outcomes.append((node, code))
                if code == 200:
                    log.info("htable sync: asked {uri}", uri=str(node.uri))
                    return outcomes
                return ask(index + 1)

            return self._send(node, body).addCallback(answered)

        return defer.maybeDeferred(ask, 0)

    def _answer_sync(self, node: Node, table: Optional[str]) -> "Deferred[int]":
        """Send the cells to ``node`` in chunks, at most ``sync_window`` messages in flight overall."""
        if table is None:
            tables = list(self.tables.values())
        else:
            # An unknown table gets the empty answer (there must be one).
            tables = [self.tables[table]] if table in self.tables else []
        now = self._now()
        items = deque((t.name, key) for t in tables for key, _ in t.live(now))
        old = self._sync_sessions.pop(node.key, None)
        if old is not None:
            # A node that asks again gets a fresh answer instead of two.
            self._end_session(old, failed=True)
        session = _SyncSession(node, items)
        self._sync_sessions[node.key] = session
        self.stats["sync_requests"] += 1
        log.info("htable sync: sending {count} cell(s) to {uri}", count=len(items), uri=str(node.uri))
        self._pump_sync()
        return session.done

    def _next_chunk(self, session: _SyncSession) -> tuple[bytes, int]:
        now = self._now()
        parts: list[bytes] = []
        size = len(EMPTY_CELLS)
        limit = self.sync_chunk_size or self.svc.max_body_size
        while session.items:
            name, key = session.items[0]
            table = self.tables.get(name)
            cell = table.lookup(key, now) if table is not None else None
            if cell is None:
                session.items.popleft()  # gone since the request
                continue
            part = cell_json(name, key, cell, self.last_modified)
            grown = size + len(part) + (1 if parts else 0)
            if parts and grown >= limit:
                break
            if not parts and grown >= limit:
                log.warn("htable sync: cell {table}[{key}] alone is {size} bytes", table=name, key=_short(key), size=grown)
            parts.append(part)
            size = grown
            session.items.popleft()
        return b'{"cells":[' + b",".join(parts) + b"]}", len(parts)

    def _pump_sync(self) -> None:
        if self._sync_pumping:
            return
        self._sync_pumping = True
        try:
            while self._sync_in_flight < self._sync_window:
                session = next((s for s in self._sync_sessions.values() if s.items or not s.chunks), None)
                if session is None:
                    return
                # Round robin between requesters.
                del self._sync_sessions[session.node.key]
                self._sync_sessions[session.node.key] = session
                body, count = self._next_chunk(session)
                session.chunks += 1
                session.cells += count
                session.in_flight += 1
                self._sync_in_flight += 1
                self.stats["sync_chunks_sent"] += 1
                self.stats["sync_cells_sent"] += count
                self.sync_chunk_sizes.append(len(body))
                self._send(session.node, body).addCallback(self._sync_sent, session)
        finally:
            self._sync_pumping = False

    def _sync_sent(self, code: int, session: _SyncSession) -> None:
        self._sync_in_flight -= 1
        session.in_flight -= 1
        current = self._sync_sessions.get(session.node.key) is session
        if current and code != 200:
            log.warn(
                "htable sync: {uri} answered {code}; {left} cell(s) not sent",
                uri=str(session.node.uri),
                code=code,
                left=len(session.items),
            )
            self._end_session(session, failed=True)
        elif current and not session.items and session.in_flight == 0:
            self._end_session(session, failed=False)
        self._pump_sync()

    def _end_session(self, session: _SyncSession, failed: bool) -> None:
        if self._sync_sessions.get(session.node.key) is session:
            del self._sync_sessions[session.node.key]
        session.failed = failed
        session.items.clear()
        if not session.done.called:
            if not failed:
                log.info(
                    "htable sync: sent {cells} cell(s) in {chunks} message(s) to {uri}",
                    cells=session.cells,
                    chunks=session.chunks,
                    uri=str(session.node.uri),
                )
            session.done.callback(session.chunks)

    # -- inbound ----------------------------------------------------------------------------

    def handle_message(self, message: DMQMessage) -> None:
        """
        Apply one message: an action object or a ``{"cells":[...]}`` sync
        answer.  Answers 200 (with no body); 400 with the reason for a
        malformed body; 500 for an unknown table or a remove that cannot run.
        """
        self.stats["received"] += 1
        try:
            doc = self._decode(message.body)
            if "cells" in doc and "action" not in doc:
                self._apply_cells(doc["cells"], message.node)
            else:
                self._apply_action(doc, message)
        except PeerError as e:
            self.stats["rejected"] += 1
            log.debug("htable message refused: {code} {reason}", code=e.code, reason=e.reason)
            raise
        return None

    @staticmethod
    def _decode(body: bytes) -> dict[str, Any]:
        if not body.strip():
            raise _bad("empty body")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("body is not UTF-8") from None
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise _bad(f"invalid JSON: {_short(str(e))}") from None
        if not isinstance(doc, dict):
            raise _bad("body is not a JSON object")
        if not doc:
            raise _bad("empty JSON object")
        return doc

    def _requester(self, message: DMQMessage) -> Node:
        if message.node is not None:
            return message.node
        if message.from_uri is not None:
            try:
                return Node.from_uri(message.from_uri)
            except NodeListError:
                pass
        raise _bad("sync request from no known node")

    def _apply_action(self, doc: dict[str, Any], message: DMQMessage) -> None:
        action_number = _wire_int(doc, "action")
        if action_number is None:
            raise _bad("no action")
        try:
            action = Action(action_number)
        except ValueError:
            raise _bad(f"unknown action {action_number}") from None
        htname = _wire_str(doc, "htname")
        if action is Action.SYNC:
            if htname == "":
                htname = None
            self._answer_sync(self._requester(message), htname)
            return
        if action is Action.NONE:
            raise _bad("action 0 (none)")
        if not htname:
            raise _bad("no htname")
        table = self.tables.get(htname)
        if table is None:
            raise _failed(f"no table {_short(htname)!r}")
        lm = _wire_int(doc, "last_modified") or 0
        origin = message.node
        now = self._now()
        mode = _wire_int(doc, "mode") or 0
        if action in (Action.SET_CELL, Action.SET_CELL_EXPIRE, Action.DEL_CELL):
            cname = _wire_str(doc, "cname")
            if not cname:
                raise _bad("no cname")
            if action is Action.SET_CELL:
                value = _wire_value(doc, "set")
                lww = bool(lm)
                cell = table.set(cname, value, now, last_modified=lm, lww=lww or self.last_modified)
                if cell is None:
                    self.stats["stale"] += 1
                    return
                self._changed(htname, cname, cell, origin)
            elif action is Action.SET_CELL_EXPIRE:
                seconds = _wire_int(doc, "intval")
                if seconds is None:
                    raise _bad("expire without intval")
                cell = table.set_expire(cname, max(min(seconds, INT_MAX), INT_MIN), now)
                if cell is not None:
                    self._changed(htname, cname, cell, origin)
            else:
                live = table.lookup(cname, now) is not None
                removed = table.delete(cname, last_modified=lm, lww=bool(lm) or self.last_modified)
                if removed is None and live:
                    self.stats["stale"] += 1
                    return
                if live:
                    self._changed(htname, cname, None, origin)
        else:
            pattern = _wire_str(doc, "strval")
            if pattern is None:
                raise _bad(f"action {int(action)} without strval")
            try:
                match = matcher(action, pattern, by_value=mode != 0)
            except ValueError as e:
                raise _failed(_short(str(e))) from None
            for key, cell in table.remove_matching(match, last_modified=lm, lww=bool(lm) or self.last_modified):
                if not cell.expired(now):
                    self._changed(htname, key, None, origin)
        self.stats["applied"] += 1

    def _apply_cells(self, cells: Any, origin: Optional[Node]) -> None:
        if not isinstance(cells, list):
            raise _bad("cells is not a list")
        self.stats["sync_chunks_received"] += 1
        now = self._now()
        skipped = 0
        for item in cells:
            # Like Kamailio: a bad cell is skipped, the others still apply.
            try:
                if not isinstance(item, dict):
                    raise _bad("a cell is not an object")
                htname = _wire_str(item, "htname")
                cname = _wire_str(item, "cname")
                if not htname or not cname:
                    raise _bad("a cell without htname or cname")
                value = _wire_value(item, "cell")
                expire = _wire_int(item, "expire") or 0
                lm = _wire_int(item, "last_modified") or 0
            except PeerError:
                skipped += 1
                continue
            table = self.tables.get(htname)
            if table is None:
                skipped += 1
                continue
            if expire and expire <= now:
                continue  # expired on the way
            cell = table.set(
                cname, value, now, expire=float(expire) if expire else None, last_modified=lm, lww=bool(lm)
            )
            if cell is None:
                self.stats["stale"] += 1
                continue
            self.stats["sync_cells_received"] += 1
            self._changed(htname, cname, cell, origin)
        if skipped:
            log.debug("htable sync: {count} cell(s) skipped (bad or unknown table)", count=skipped)

    # -- expiry and persistence ------------------------------------------------------------

    def purge(self) -> int:
        """Drop expired cells (and old tombstones) now; return how many cells went."""
        now = self._now()
        count = 0
        for table in self.tables.values():
            for key, _ in table.purge(now):
                count += 1
                self._changed(table.name, key, None)
            table.prune_tombstones(int((now - self.tombstone_ttl) * 1000))
        return count

    def _persist_tick(self) -> None:
        if self._dirty:
            try:
                self.save_snapshot()
            except OSError as e:
                log.error("cannot write the htable snapshot {path}: {error}", path=str(self.persist_path), error=str(e))

    def snapshot(self) -> dict[str, Any]:
        """
        The tables as a JSON-able snapshot (what :meth:`save_snapshot`
        writes): per table its live cells as rows ``[name, value, expire,
        last_modified]`` (the value a JSON string or integer, the expiry in
        epoch seconds, 0 for never) and its tombstones ``{name: ms}``.
        """
        now = self._now()
        tables: dict[str, Any] = {}
        for table in self.tables.values():
            # Rows, not objects: this runs in the reactor thread, often.
            rows = [
                [key, cell.value, cell.expire, cell.last_modified]
                for key, cell in table.cells.items()
                if not 0 < cell.expire <= now
            ]
            tables[table.name] = {"expire": table.spec.expire, "cells": rows, "tombstones": dict(table.tombstones)}
        return {"format": "dmq-htable", "version": 1, "saved": now, "tables": tables}

    def save_snapshot(self) -> None:
        """Write the snapshot atomically (a temporary file, fsync, rename)."""
        if self.persist_path is None:
            raise RuntimeError("no persist_dir")
        path = self.persist_path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _dumps(self.snapshot())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            pass
        else:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dirty = False
        self.stats["snapshots"] += 1

    def load_snapshot(self) -> int:
        """
        Load the snapshot file if there is one; return the number of cells
        loaded.  Expired cells and tables no longer configured are skipped;
        an unreadable file is moved aside (``*.bad``) and the node starts empty.
        """
        path = self.persist_path
        if path is None or not path.exists():
            return 0
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != "dmq-htable":
                raise ValueError("not an htable snapshot")
            loaded = self._load_tables(doc.get("tables"))
        except (OSError, ValueError, TypeError, KeyError, PeerError) as e:
            aside = path.with_name(path.name + ".bad")
            log.error("htable snapshot {path} unreadable ({error}); moved to {aside}", path=str(path), error=str(e), aside=str(aside))
            try:
                os.replace(path, aside)
            except OSError:
                pass
            return 0
        log.info("htable: {count} cell(s) loaded from {path}", count=loaded, path=str(path))
        return loaded

    def _load_tables(self, tables: Any) -> int:
        if not isinstance(tables, dict):
            raise ValueError("no tables")
        now = self._now()
        loaded = 0
        for name, content in tables.items():
            table = self.tables.get(name)
            if table is None:
                log.info("htable snapshot: table {name} is no longer configured", name=name)
                continue
            for row in content.get("cells", []):
                key, value, expire, lm = row
                if not isinstance(key, str) or not key:
                    raise ValueError(f"bad cell name {key!r}")
                _check_value(value)
                if isinstance(expire, bool) or not isinstance(expire, (int, float)):
                    raise ValueError(f"bad expire {expire!r}")
                if isinstance(lm, bool) or not isinstance(lm, int):
                    raise ValueError(f"bad last_modified {lm!r}")
                if 0 < expire <= now:
                    continue
                cell = table.cells[key] = Cell(value, float(expire), lm)
                loaded += 1
                self._changed(name, key, cell)
            stones = content.get("tombstones") or {}
            if isinstance(stones, dict):
                for key, lm in stones.items():
                    if isinstance(key, str) and isinstance(lm, int) and not isinstance(lm, bool):
                        table.tombstones[key] = lm
        self._dirty = False
        return loaded

    # -- RPC ----------------------------------------------------------------------------------

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        """
        The control methods, by Kamailio's names: ``htable.get``,
        ``htable.sets``, ``htable.seti``, ``htable.setex``, ``htable.setxs``,
        ``htable.setxi``, ``htable.delete``, ``htable.dump``,
        ``htable.listTables``, ``htable.dmqsync``.  Each takes positional
        parameters and raises :class:`~dmq.errors.RPCError` (400 bad
        parameters, 404 no such key, 500 no such table or failure).
        """
        return {
            "htable.get": self.rpc_get,
            "htable.sets": self.rpc_sets,
            "htable.seti": self.rpc_seti,
            "htable.setex": self.rpc_setex,
            "htable.setxs": self.rpc_setxs,
            "htable.setxi": self.rpc_setxi,
            "htable.delete": self.rpc_delete,
            "htable.dump": self.rpc_dump,
            "htable.listTables": self.rpc_list_tables,
            "htable.dmqsync": self.rpc_dmqsync,
        }

    # Kamailio's htable RPC answers every fault with code 500 (a missing key on
    # delete with 404), counts a parameter of the wrong type as missing and
    # ignores extra parameters; so do these methods.  Where Kamailio quietly
    # stores garbage (a non-integer given to seti or setex), they refuse it.

    def _rpc_args(self, params: tuple[Any, ...], kinds: str, names: str) -> list[Any]:
        """
        The first ``len(kinds)`` parameters: ``s`` a string, ``d`` an integer,
        ``v`` a value (a string, or any JSON value written as JSON text).
        """
        if len(params) < len(kinds):
            raise RPCError(500, f"Not enough parameters ({names})")
        values: list[Any] = []
        for kind, value in zip(kinds, params):
            if kind == "s" and not isinstance(value, str):
                raise RPCError(500, f"Not enough parameters ({names})")
            if kind == "d":
                value = self._rpc_int(value)
            elif kind == "v" and not isinstance(value, str):
                value = json.dumps(value)
            values.append(value)
        return values

    def _rpc_table(self, name: str) -> HTable:
        table = self.tables.get(name)
        if table is None:
            raise RPCError(500, "No such htable")
        return table

    @staticmethod
    def _rpc_int(value: Any) -> int:
        number: Optional[int] = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,10}\s*", value):
            number = int(value)
        if number is None or not INT_MIN <= number <= INT_MAX:
            raise RPCError(500, f"Invalid Parameters (not a 32-bit integer: {_short(repr(value))})")
        return number

    def _rpc_call(self, function: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return function(*args, **kw)
        except NoSuchTable:
            raise RPCError(500, "No such htable") from None
        except (ValueError, TypeError) as e:
            raise RPCError(500, f"Invalid Parameters ({e})") from None

    def rpc_get(self, *params: Any) -> dict[str, Any]:
        """``htable.get TABLE KEY`` -> ``{"item": {"name", "value", "flags", "expire"}}``."""
        name, key = self._rpc_args(params, "ss", "htable name and key name")
        table = self._rpc_table(name)
        cell = table.lookup(key, self._now())
        if cell is None:
            raise RPCError(500, "Key name doesn't exist in htable.")
        expire = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cell.expire)) if cell.expire else "NEVER"
        return {"item": {"name": key, "value": cell.value, "flags": cell.type, "expire": expire}}

    def rpc_sets(self, *params: Any) -> str:
        """``htable.sets TABLE KEY VALUE``: set a string value."""
        name, key, value = self._rpc_args(params, "ssv", "htable name, key name and value")
        self._rpc_call(self.set, self._rpc_table(name).name, key, value)
        return "Ok. Key set to new value."

    def rpc_seti(self, *params: Any) -> str:
        """``htable.seti TABLE KEY INT``: set an integer value."""
        name, key, value = self._rpc_args(params, "ssd", "htable name, key name and value")
        self._rpc_call(self.set, self._rpc_table(name).name, key, value)
        return "Ok. Key set to new value."

    def rpc_setex(self, *params: Any) -> str:
        """``htable.setex TABLE KEY SECS``: expire an item SECS from now."""
        name, key, seconds = self._rpc_args(params, "ssd", "htable name, item name and expire")
        self._rpc_call(self.set_expire, self._rpc_table(name).name, key, seconds)
        return "Ok"

    def rpc_setxs(self, *params: Any) -> str:
        """``htable.setxs TABLE KEY VALUE SECS``: set a string value with its expiry."""
        name, key, value, seconds = self._rpc_args(params, "ssvd", "htable name, key name, value and expire")
        self._rpc_call(self.set, self._rpc_table(name).name, key, value, seconds)
        return "Ok. Key set to new value."

    def rpc_setxi(self, *params: Any) -> str:
        """``htable.setxi TABLE KEY INT SECS``: set an integer value with its expiry."""
        name, key, value, seconds = self._rpc_args(params, "ssdd", "htable name, key name, value and expire")
        self._rpc_call(self.set, self._rpc_table(name).name, key, value, seconds)
        return "Ok. Key set to new value."

    def rpc_delete(self, *params: Any) -> str:
        """``htable.delete TABLE KEY``: delete an item (replicated even if absent here; 404 then)."""
        name, key = self._rpc_args(params, "ss", "htable name & key name")
        table = self._rpc_table(name)
        existed = table.lookup(key, self._now()) is not None
        self._rpc_call(self.delete, table.name, key)
        if not existed:
            raise RPCError(404, "Key not found in htable.")
        return "Ok. Key deleted."

    def rpc_dump(self, *params: Any) -> list[dict[str, Any]]:
        """
        ``htable.dump TABLE`` -> Kamailio's shape: a list of slots, here one
        (``[]`` when the table is empty): ``[{"entry": 0, "size": N, "slot":
        [{"name", "value", "type": "str"|"int", "expire": epoch s or 0}]}]``,
        items sorted by name.
        """
        if not params or not isinstance(params[0], str):
            raise RPCError(500, "No htable name given")
        table = self._rpc_table(params[0])
        items = sorted(table.live(self._now()), key=lambda item: item[0])
        slot = [
            {
                "name": key,
                "value": cell.value,
                "type": "str" if isinstance(cell.value, str) else "int",
                "expire": int(math.ceil(cell.expire)) if cell.expire else 0,
            }
            for key, cell in items
        ]
        return [{"entry": 0, "size": len(slot), "slot": slot}] if slot else []

    def rpc_list_tables(self, *params: Any) -> list[dict[str, Any]]:
        """``htable.listTables`` -> one object per table, Kamailio's fields plus ``items``."""
        now = self._now()
        return [
            {
                "name": t.name,
                "dbtable": "",
                "dbmode": 0,
                "expire": t.spec.expire,
                "updateexpire": 1,
                "size": KAMAILIO_SLOTS,
                "dmqreplicate": 1,
                "items": sum(1 for _ in t.live(now)),
            }
            for t in self.tables.values()
        ]

    def rpc_dmqsync(self, *params: Any) -> str:
        """
        ``htable.dmqsync [TABLE]``: ask the cluster for its cells again (as
        ``init_sync`` says, one node by default).  Answers ``Ok`` once asked,
        as Kamailio 6.1 does; an unknown table is refused (Kamailio says Ok).
        """
        table = self._rpc_table(params[0]).name if params and isinstance(params[0], str) else None
        d = self.request_sync(table, all_nodes=self.init_sync == "all")

        def done(outcomes: list[Outcome]) -> None:
            if not any(code == 200 for _, code in outcomes):
                log.warn("htable.dmqsync: no node answered the sync request ({count} asked)", count=len(outcomes))

        d.addCallback(done)
        return "Ok"
