"""
JSON bodies of the table-like channels (htable, usrloc, dialog): compact
encoding as Kamailio's srjson prints it, and field readers that turn a bad
field into the answer Kamailio's peers give (``400 Bad Request (...)``).

::

    doc = parse_object(message.body)              # 400 unless a non-empty JSON object
    name = wire_str(doc, "htname")                # None when absent; 400 when not a string
    if name not in tables:
        raise internal_error(f"no table {name!r}")   # 500 Server Internal Error (...)
    body = dumps({"action": 2, "htname": name})   # b'{"action":2,"htname":"t"}'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from dmq.errors import one_line
from dmq.peer import PeerError

__all__ = [
    "INT_MIN",
    "INT_MAX",
    "dumps",
    "bad_request",
    "internal_error",
    "parse_object",
    "wire_str",
    "wire_int",
    "check_text",
    "Framing",
]

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
"""The range of Kamailio's C ``int``, which its JSON readers cast numbers to."""


def dumps(doc: dict[str, Any]) -> bytes:
    """``doc`` as Kamailio's srjson prints it: no spaces, non-ASCII left as UTF-8."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def bad_request(reason: str) -> PeerError:
    """The answer to a malformed body: ``400 Bad Request (reason)``."""
    return PeerError(400, f"Bad Request ({reason})")


def internal_error(reason: str) -> PeerError:
    """The answer to a body that cannot be applied: ``500 Server Internal Error (reason)``."""
    return PeerError(500, f"Server Internal Error ({reason})")


def parse_object(body: bytes) -> dict[str, Any]:
    """
    The JSON object ``body`` holds.

    :raises PeerError: 400 for an empty body, a body that is not UTF-8 or
        not JSON, JSON that is not an object, and ``{}``.
    """
    if not body.strip():
        raise bad_request("empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("body is not UTF-8") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"invalid JSON: {one_line(str(e), 80)}") from None
    if not isinstance(doc, dict):
        raise bad_request("body is not a JSON object")
    if not doc:
        raise bad_request("empty JSON object")
    return doc


def wire_str(doc: dict[str, Any], key: str) -> Optional[str]:
    """
    The string ``doc[key]``, cut at a NUL as Kamailio's ``strlen()`` cuts
    it, or ``None`` when absent (or ``null``).

    :raises PeerError: 400 when it is not a string or not valid UTF-8.
    """
    value = doc.get(key)
    if type(value) is str and value.isascii() and "\x00" not in value:
        return value  # the usual case: ASCII is valid UTF-8, and nothing to cut
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{key} is not a string")
    value = value.split("\x00", 1)[0]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{key} is not valid UTF-8") from None
    return value


def wire_int(doc: dict[str, Any], key: str) -> Optional[int]:
    """
    The whole number ``doc[key]`` (``3.0`` counts), or ``None`` when absent.

    :raises PeerError: 400 when it is not a number (``true`` is not) or
        not a whole one.
    """
    value = doc.get(key)
    if type(value) is int or value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{key} is not a number")
    if isinstance(value, float):
        if not value.is_integer():
            raise bad_request(f"{key} is not a whole number")
        value = int(value)
    return value


def check_text(text: str, what: str) -> None:
    """
    Refuse text a Kamailio node would read differently from this one.

    :raises ValueError: when ``text`` holds a NUL (Kamailio would cut it
        there: the nodes would disagree) or is not valid UTF-8.
    """
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None


@dataclass(frozen=True)
class Framing:
    """
    How items are put together into one message: ``head``, the items
    joined by ``separator``, ``tail`` (``{"cells":[`` ... ``]}``).  With
    ``numbered`` the items are the members of an object, named by their
    place in the message from 1 (``{"multi":{"1":item,"2":item}}``).
    """

    head: bytes
    tail: bytes
    separator: bytes = b","
    numbered: bool = False

    def member(self, index: int, item: bytes) -> bytes:
        """Item number ``index`` (from 1) of a message as it goes in: ``"3":item`` when numbered."""
        return b'"%d":%s' % (index, item) if self.numbered else item

    @property
    def empty(self) -> bytes:
        """The message with no item."""
        return self.head + self.tail
