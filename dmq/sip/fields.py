"""
Header fields: the names (compact forms, spellings, canonical keys), the
checks on a single field, and :class:`Headers`, the ordered collection a
message carries.

Pure code: no Twisted, no I/O.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Optional

from dmq.errors import SIPParseError

__all__ = [
    "Headers",
    "COMPACT_FORMS",
    "SINGLE_VALUE_HEADERS",
    "TOKEN_RE",
    "canonical_key",
    "check_field",
    "display_name",
    "parse_decimal",
]

COMPACT_FORMS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "u": "allow-events",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}
"""Compact header names (RFC 3261 section 7.3.3 and later RFCs) to long names."""

_DISPLAY_NAMES = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
}

SINGLE_VALUE_HEADERS = frozenset(
    ["call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"]
)
"""Headers that may appear at most once in a message."""

TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
"""An RFC 3261 token: a method, a header name."""


def display_name(key: str) -> str:
    """The conventional spelling of a lowercased long header name."""
    name = _DISPLAY_NAMES.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


def canonical_key(name: str) -> str:
    """Lowercased long form of a header name (compact forms expanded)."""
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


def check_field(name: str, value: str) -> None:
    """Refuse a header name that is not a token, or a value with a line break."""
    if TOKEN_RE.fullmatch(name) is None:
        raise SIPParseError(f"malformed header name {name[:80]!r}")
    if "\n" in value or "\r" in value:
        raise SIPParseError(f"line break in the value of header {name!r}")


def parse_decimal(text: str, max_digits: int) -> Optional[int]:
    """
    ``text`` as a non-negative decimal of at most ``max_digits`` significant
    digits (leading zeros allowed), else ``None``.  Bounding the digits first
    keeps ``int()`` from its own limit on very long strings.
    """
    if not (text.isdigit() and text.isascii()):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")


class Headers:
    """
    An ordered, multi-valued, case-insensitive collection of header fields.

    Iterating yields ``(name, value)`` pairs in message order with names as
    written; lookups accept any spelling and compact forms.
    """

    __slots__ = ("_list", "_raw", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._list: Optional[list[tuple[str, str]]] = []
        self._raw: Optional[list[str]] = None
        self._index: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _prepared(
        cls,
        index: dict[str, list[str]],
        items: Optional[list[tuple[str, str]]] = None,
        lines: Optional[list[str]] = None,
    ) -> "Headers":
        """
        Headers over checked ``(name, value)`` pairs or ``Name: value`` lines
        and their index (values by canonical key), taken as they are: for a
        message built, parsed or answered.  Given lines, the pairs are split
        from them only when something asks for them.
        """
        headers = cls.__new__(cls)
        headers._list = items
        headers._raw = lines
        headers._index = index
        return headers

    @property
    def _items(self) -> list[tuple[str, str]]:
        items = self._list
        if items is None:
            items = self._list = []
            for line in self._raw or ():
                name, _, value = line.partition(":")
                items.append((name.rstrip(" \t"), value.strip(" \t")))
        return items

    def lines(self) -> list[str]:
        """The header lines as they will be written (``Name: value``)."""
        lines = self._raw
        if lines is None:
            # Cached until the next change (every change resets _raw).
            lines = self._raw = [f"{name}: {value}" for name, value in self._list or ()]
        return lines

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of ``name``, or ``default``."""
        values = self._index.get(canonical_key(name))
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        """Every value of ``name`` (one per header line), in order."""
        return list(self._index.get(canonical_key(name), ()))

    def add(self, name: str, value: str) -> None:
        """
        Append a header line.

        :raises SIPParseError: when ``name`` is not a token or ``value``
            holds a line break (which would inject header lines).
        """
        check_field(name, value)
        self._items.append((name, value))
        self._raw = None
        self._index.setdefault(canonical_key(name), []).append(value)

    def set(self, name: str, value: str) -> None:
        """
        Replace every ``name`` line by one; a new header goes last.

        :raises SIPParseError: as :meth:`add` does.
        """
        check_field(name, value)
        key = canonical_key(name)
        if key not in self._index:
            self.add(name, value)
            return
        items: list[tuple[str, str]] = []
        done = False
        for item in self._items:
            if canonical_key(item[0]) == key:
                if not done:
                    items.append((item[0], value))
                    done = True
            else:
                items.append(item)
        self._list = items
        self._raw = None
        self._index[key] = [value]

    def remove(self, name: str) -> None:
        """Remove every ``name`` line."""
        key = canonical_key(name)
        if self._index.pop(key, None) is not None:
            self._list = [i for i in self._items if canonical_key(i[0]) != key]
            self._raw = None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_key(name) in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        """Lowercased long names present, in first-appearance order."""
        return list(self._index)

    def normalized(self) -> list[tuple[str, str]]:
        """``(lowercased long name, value)`` pairs in order, for comparison."""
        return [(canonical_key(n), v) for n, v in self._items]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self.normalized() == other.normalized()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"
