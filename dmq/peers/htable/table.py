"""
The htable peer's tables, with no I/O: table specs, cells, last-write-wins
with tombstones, and the checks a value passes before Kamailio can hold it.

Every method takes the time (``now``, epoch seconds) it acts at; the peer
passes its service's clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

from dmq.errors import ConfigurationError
from dmq.node import Node
from dmq.replicated.wire import INT_MAX, INT_MIN, check_text

__all__ = [
    "Value",
    "TYPE_INT",
    "TYPE_STR",
    "HTableSpec",
    "NoSuchTable",
    "Cell",
    "Change",
    "HTable",
    "check_key",
    "check_value",
    "check_seconds",
]

Value = Union[str, int]

TYPE_INT = 0
TYPE_STR = 2
"""Kamailio's ``AVP_VAL_STR`` flag: ``type & 2`` means a string value."""

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class NoSuchTable(KeyError):
    """The named table is not one of the peer's tables (Kamailio: "No such htable")."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no htable {self.name!r}"


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
    One table: cells by name, expiry and last-write-wins.

    Expired cells stay until :meth:`purge` but are invisible to
    :meth:`lookup` and :meth:`live`.

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

    def snapshot(self, now: float) -> dict[str, Any]:
        """
        The table as a JSON-able document: its expire, its live cells as rows
        ``[name, value, expire, last_modified]`` and its tombstones ``{name: ms}``.
        """
        # Rows, not objects: this runs in the reactor thread, often.
        rows = [[key, cell.value, cell.expire, cell.last_modified] for key, cell in self.cells.items() if not cell.expired(now)]
        return {"expire": self.spec.expire, "cells": rows, "tombstones": dict(self.tombstones)}

    def restore(self, content: Any, now: float) -> Iterator[tuple[str, Cell]]:
        """
        Put back the cells and tombstones of a :meth:`snapshot` document,
        yielding each cell as it is set; cells expired at ``now`` are skipped.

        :raises ValueError, TypeError: at the first part that is malformed
            (what came before it stays set).
        """
        if not isinstance(content, dict):
            raise ValueError(f"table {self.name}: not an object")
        for row in content.get("cells", []):
            key, value, expire, lm = row
            if not isinstance(key, str) or not key:
                raise ValueError(f"bad cell name {key!r}")
            check_value(value)
            if isinstance(expire, bool) or not isinstance(expire, (int, float)):
                raise ValueError(f"bad expire {expire!r}")
            if isinstance(lm, bool) or not isinstance(lm, int):
                raise ValueError(f"bad last_modified {lm!r}")
            if 0 < expire <= now:
                continue
            cell = self.cells[key] = Cell(value, float(expire), lm)
            yield key, cell
        stones = content.get("tombstones") or {}
        if isinstance(stones, dict):
            for key, lm in stones.items():
                if isinstance(key, str) and isinstance(lm, int) and not isinstance(lm, bool):
                    self.tombstones[key] = lm


def check_key(key: str) -> str:
    """
    ``key`` if it can name an item.

    :raises TypeError: when it is not a ``str``.
    :raises ValueError: when it is empty, holds a NUL or is not UTF-8.
    """
    if not isinstance(key, str):
        raise TypeError(f"an item name is a str, not {type(key).__name__}")
    if not key:
        raise ValueError("an item name cannot be empty")
    check_text(key, "item name")
    return key


def check_value(value: Value) -> Value:
    """
    ``value`` if Kamailio can hold it: a NUL-free UTF-8 ``str`` or a 32-bit ``int``.

    :raises TypeError: for any other type (``bool`` included).
    :raises ValueError: for an integer out of range or a bad string.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"a value is a str or an int, not {type(value).__name__}")
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"{value} is out of Kamailio's 32-bit integer range")
    else:
        check_text(value, "value")
    return value


def check_seconds(seconds: int) -> int:
    """
    ``seconds`` if it is a 32-bit ``int``.

    :raises TypeError, ValueError: otherwise.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError(f"seconds are an int, not {type(seconds).__name__}")
    if not INT_MIN <= seconds <= INT_MAX:
        raise ValueError(f"{seconds} seconds is out of range")
    return seconds
