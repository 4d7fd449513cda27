"""
SIP messages: parse bytes into :class:`Request` / :class:`Response` and back.

This module is a pure codec.  It imports nothing from Twisted, does no I/O and
holds no application logic; transports hand it one complete message (a UDP
datagram, or a frame cut out of a stream) and get back a message object or a
:class:`SIPParseError` naming what was wrong.

The parser checks, for every message, the start line, the SIP version, the
Request-URI, the syntax of ``Call-ID``, ``CSeq``, ``Max-Forwards`` and
``Content-Length``, that none of the single-value headers appears twice, that
a request's ``CSeq`` method equals its method, that the mandatory headers are
present, and the caps on size, header lines and line length.  ``Via``,
``From``, ``To`` and ``Content-Type`` are checked in full when first used (or
by :meth:`Message.validate`); other header values are kept as text.

The common shapes take fast paths (one regex that needs no further check, or
plain string operations); whatever they do not take goes the general way, and
``tests/test_sip_properties.py`` checks that both accept the same.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Iterator, Optional, Union

from dmq.sip.headers import NameAddr, Via, check_uri, parse_vias
from dmq.sip.uri import PLAIN_SIP_URI_PATTERN, SIP_URI_PATTERN, SIPURI, SIPParseError

__all__ = [
    "Headers",
    "Message",
    "Request",
    "Response",
    "parse_message",
    "make_response",
    "build_request",
    "new_branch",
    "new_tag",
    "new_call_id",
    "REASONS",
    "MAX_MESSAGE_SIZE",
    "MAX_HEADERS",
    "MAX_LINE_LENGTH",
]

MAX_MESSAGE_SIZE = 1 << 20
"""Default cap on the size of one message, in bytes."""
MAX_HEADERS = 128
"""Default cap on the number of header lines of one message."""
MAX_LINE_LENGTH = 16384
"""Default cap on the length of one (unfolded) header line, in characters."""

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

_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_REQUIRED_SET = frozenset(_REQUIRED)

REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
}
"""Default reason phrases."""

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_CALL_ID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?")
_CONTENT_TYPE_RE = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~]+[ \t]*/[ \t]*[A-Za-z0-9\-.!%*_+`'~]+"
    r"(?:[ \t]*;[ \t]*[A-Za-z0-9\-.!%*_+`'~]+[ \t]*=[ \t]*"
    r"(?:[A-Za-z0-9\-.!%*_+`'~]+|\"(?:[^\"\\]|\\.)*\"))*"
)
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE | re.ASCII)
# A line break with the blanks around it, continuation lines of blanks only
# included, as one match (to become one SP).  The lookbehind lets a match
# start only where a run of blanks starts, and the possessive quantifiers
# never give blanks back: the naive [ \t]*\n[ \t]+ takes quadratic time on
# a long run of blanks that no line break follows.
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")
_TAG_PREFIX = os.urandom(16).hex() + "."


def _display_name(key: str) -> str:
    """The conventional spelling of a lowercased long header name."""
    name = _DISPLAY_NAMES.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


def canonical_key(name: str) -> str:
    """Lowercased long form of a header name (compact forms expanded)."""
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


_KNOWN_NAMES = {
    spelling: COMPACT_FORMS.get(spelling.lower(), spelling.lower())
    for name in [
        "Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length",
        "Content-Type", "Contact", "User-Agent", "Server", "Route", "Record-Route",
        "Allow", "Supported", "Expires", "Require", "Event", "Subject",
        "v", "f", "t", "i", "l", "c", "m", "k", "s", "e", "o",
    ]
    for spelling in {name, name.lower(), name.upper(), _display_name(name.lower())}
}
"""Common header name spellings (exactly as written, no spaces) to their keys."""


def _check_texts(*texts: Optional[str]) -> None:
    """Refuse texts (None aside) that hold a line break: they would inject lines."""
    for text in texts:
        if text is not None and ("\n" in text or "\r" in text):
            raise SIPParseError(f"line break in {text[:80]!r}")


def _check_field(name: str, value: str) -> None:
    """Refuse a header name that is not a token, or a value with a line break."""
    if _TOKEN_RE.fullmatch(name) is None:
        raise SIPParseError(f"malformed header name {name[:80]!r}")
    if "\n" in value or "\r" in value:
        raise SIPParseError(f"line break in the value of header {name!r}")


def _decimal(text: str, max_digits: int) -> Optional[int]:
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
    def _from_parsed(
        cls, items: list[tuple[str, str]], index: dict[str, list[str]]
    ) -> "Headers":
        headers = cls.__new__(cls)
        headers._list = items
        headers._raw = None
        headers._index = index
        return headers

    @classmethod
    def _from_lines(cls, lines: list[str], index: dict[str, list[str]]) -> "Headers":
        """Headers whose ``(name, value)`` pairs are split from ``lines`` when needed."""
        headers = cls.__new__(cls)
        headers._list = None
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
        _check_field(name, value)
        self._items.append((name, value))
        self._raw = None
        self._index.setdefault(canonical_key(name), []).append(value)

    def set(self, name: str, value: str) -> None:
        """
        Replace every ``name`` line by one; a new header goes last.

        :raises SIPParseError: as :meth:`add` does.
        """
        _check_field(name, value)
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


class Message:
    """
    What requests and responses share: headers, body and typed accessors.

    Typed accessors parse their header on first use and cache the result;
    messages from :func:`parse_message` have already been through some of
    them.  The cache does not follow later changes to :attr:`headers`: to
    change a header that was read, build a new message (or parse the bytes).
    """

    __slots__ = ("headers", "_body", "_cache")

    def __init__(self, headers: Optional[Headers] = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self._body = body
        self._cache: dict[str, object] = {}

    @property
    def body(self) -> bytes:
        """The body, as bytes.  Setting it keeps ``Content-Length`` true."""
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        if "content-length" in self.headers._index:
            self.headers.set("Content-Length", str(len(value)))

    def _start_line(self) -> str:
        raise NotImplementedError

    def _required(self, key: str) -> str:
        value = self.headers._index.get(key)
        if not value:
            raise SIPParseError(f"missing {_display_name(key)} header")
        return value[0]

    @property
    def call_id(self) -> str:
        """The ``Call-ID`` value."""
        cache = self._cache
        value = cache.get("call-id")
        if value is None:
            text = self._required("call-id")
            if _CALL_ID_RE.fullmatch(text) is None:
                raise SIPParseError(f"malformed Call-ID header: {text!r}")
            value = cache["call-id"] = text
        return value  # type: ignore[return-value]

    @property
    def cseq(self) -> tuple[int, str]:
        """``(sequence number, method)`` from ``CSeq``."""
        cache = self._cache
        value = cache.get("cseq")
        if value is None:
            text = self._required("cseq")
            m = _CSEQ_RE.fullmatch(text)
            if m is None:
                raise SIPParseError(f"malformed CSeq header: {text!r}")
            number = int(m.group(1))
            if number > 0xFFFFFFFF:
                raise SIPParseError(f"CSeq number {number} does not fit 32 bits")
            value = cache["cseq"] = (number, m.group(2))
        return value  # type: ignore[return-value]

    @property
    def max_forwards(self) -> Optional[int]:
        """``Max-Forwards`` as an int, or ``None`` when absent."""
        cache = self._cache
        if "max-forwards" not in cache:
            text = self.headers.get("max-forwards")
            if text is None:
                cache["max-forwards"] = None
            else:
                hops = _decimal(text, 3)
                if hops is None or hops > 255:
                    raise SIPParseError(f"Max-Forwards must be 0-255, not {text[:80]!r}")
                cache["max-forwards"] = hops
        return cache["max-forwards"]  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        """Every ``Via`` value in order, comma-separated ones split."""
        cache = self._cache
        value = cache.get("via")
        if value is None:
            vias: list[Via] = []
            for text in self.headers._index.get("via", ()):
                vias.extend(parse_vias(text))
            value = cache["via"] = vias
        return value  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        """The ``From`` header."""
        cache = self._cache
        value = cache.get("from")
        if value is None:
            value = cache["from"] = NameAddr.parse(self._required("from"), "From")
        return value  # type: ignore[return-value]

    @property
    def to(self) -> NameAddr:
        """The ``To`` header."""
        cache = self._cache
        value = cache.get("to")
        if value is None:
            value = cache["to"] = NameAddr.parse(self._required("to"), "To")
        return value  # type: ignore[return-value]

    @property
    def content_length(self) -> int:
        """``Content-Length``, or the body length when the header is absent."""
        text = self.headers.get("content-length")
        if text is None:
            return len(self.body)
        length = _decimal(text, 10)
        if length is None:
            raise SIPParseError(f"malformed Content-Length header: {text[:80]!r}")
        return length

    @property
    def content_type(self) -> Optional[str]:
        """The ``Content-Type`` value, or ``None``."""
        text = self.headers.get("content-type")
        if text is not None and _CONTENT_TYPE_RE.fullmatch(text) is None:
            raise SIPParseError(f"malformed Content-Type header: {text!r}")
        return text

    def check(self) -> None:
        """
        The checks :func:`parse_message` runs on every message: mandatory
        headers present, single-value headers not repeated, ``Call-ID``,
        ``CSeq`` (and, for a request, its method), ``Max-Forwards`` and
        ``Content-Length``.

        :raises SIPParseError: naming the first fault found.
        """
        method: Optional[str] = None
        if isinstance(self, Request):
            method = self.method
            if not isinstance(method, str) or _TOKEN_RE.fullmatch(method) is None:
                raise SIPParseError(f"malformed method {method!r}")
        _check(self, self.headers._index, method, False)

    def validate(self) -> None:
        """
        Run :meth:`check` and also parse ``Via``, ``From``, ``To`` and
        ``Content-Type``, which :func:`parse_message` leaves for first use.

        :raises SIPParseError: naming the first fault found.
        """
        self.check()
        if not self.vias:
            raise SIPParseError("empty Via header")
        self.from_
        self.to
        self.content_type

    def to_bytes(self) -> bytes:
        """Serialise the message: start line, header lines as stored, body."""
        headers = self.headers
        lines = headers._raw
        if lines is None:
            lines = headers.lines()
        text = "\r\n".join([self._start_line(), *lines, "", ""])
        return text.encode("utf-8", "surrogateescape") + self._body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    """
    A SIP request.

    :ivar method: the method, e.g. ``"KDMQ"``.
    :ivar uri: the Request-URI: a :class:`SIPURI`, or the text of another
        absolute URI.
    """

    __slots__ = ("method", "_uri", "_uri_text", "_uri_match")

    def __init__(
        self,
        method: str,
        uri: Union[SIPURI, str],
        headers: Optional[Headers] = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self._uri: Union[SIPURI, str, None] = uri
        self._uri_text: Optional[str] = None
        self._uri_match: Optional["re.Match[str]"] = None

    @property
    def uri(self) -> Union[SIPURI, str]:
        """The Request-URI (built on first access for a parsed request)."""
        uri = self._uri
        if uri is None:
            m = self._uri_match
            uri = self._uri = self._uri_text if m is None else SIPURI._from_match(m)
        return uri  # type: ignore[return-value]

    @uri.setter
    def uri(self, value: Union[SIPURI, str]) -> None:
        self._uri = value
        self._uri_text = None
        self._uri_match = None

    def _start_line(self) -> str:
        text = self._uri_text
        if text is None:
            text = str(self._uri)
        return f"{self.method} {text} SIP/2.0"


    @property
    def branch(self) -> Optional[str]:
        """The branch of the top ``Via``."""
        branch = self._cache.get("branch")
        if branch is None:
            vias = self.vias
            branch = self._cache["branch"] = vias[0].branch if vias else None
        return branch  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and str(self.uri) == str(other.uri)
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} ({len(self.body)} body bytes)>"


class Response(Message):
    """
    A SIP response.

    :ivar code: the status code.
    :ivar reason: the reason phrase.
    """

    __slots__ = ("code", "reason")

    def __init__(
        self,
        code: int,
        reason: Optional[str] = None,
        headers: Optional[Headers] = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.code = code
        self.reason = REASONS.get(code, "") if reason is None else reason

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.code} {self.reason}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.code == other.code
            and self.reason == other.reason
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.reason} ({len(self.body)} body bytes)>"


_REQUEST_LINE_RE = re.compile(rf"([A-Za-z0-9\-.!%*_+`'~]+) ({SIP_URI_PATTERN}) SIP/2\.0")
# The common request line in one regex that needs no further check: a token
# method and a plain SIP Request-URI (see PLAIN_SIP_URI_PATTERN).
_PLAIN_REQUEST_LINE_RE = re.compile(rf"([A-Za-z0-9\-.!%*_+`'~]+) ({PLAIN_SIP_URI_PATTERN}) SIP/2\.0")
_PLAIN_STATUS_LINE_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.DOTALL)
_MAX_FORWARDS = {str(n): n for n in range(256)}
"""Max-Forwards values as normally written, to their ints."""

_new_object = object.__new__


def _is_sip_2_0(version: str) -> bool:
    """Whether a SIP-Version is 2.0 (case-insensitive, ASCII only)."""
    return version.isascii() and version.upper() == "SIP/2.0"


def _bad_version(version: str, line: str) -> SIPParseError:
    """The error for a start line whose version is not SIP/2.0."""
    if _VERSION_RE.fullmatch(version):
        return SIPParseError(f"unsupported SIP version {version!r}", code=505)
    return SIPParseError(f"malformed start line: {line[:200]!r}")


def _parse_start_line(line: str) -> Union[Request, Response]:
    """
    Parse a request line or status line into an empty message (for
    :func:`parse_message`, which has found ``line`` is no plain request line).
    """
    m = _PLAIN_STATUS_LINE_RE.fullmatch(line)
    if m is not None:
        response = _new_object(Response)
        code, reason = m.group(1, 2)
        response.code = int(code)
        response.reason = reason or ""
        response._cache = {}
        return response
    if line[:4].isascii() and line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SIPParseError(f"malformed status line: {line[:200]!r}")
        version, code_text = parts[0], parts[1]
        if not _is_sip_2_0(version):
            raise _bad_version(version, line)
        if len(code_text) != 3 or not code_text.isdigit() or not code_text.isascii():
            raise SIPParseError(f"malformed status code {code_text[:20]!r}")
        code = int(code_text)
        if not 100 <= code <= 699:
            raise SIPParseError(f"status code {code} out of range")
        response = _new_object(Response)
        response.code = code
        response.reason = parts[2] if len(parts) == 3 else ""
        response._cache = {}
        return response
    parts = line.split(" ")
    if len(parts) != 3:
        raise SIPParseError(f"malformed request line: {line[:200]!r}")
    method, uri_text, version = parts
    if _TOKEN_RE.fullmatch(method) is None:
        raise SIPParseError(f"malformed method {method[:80]!r}")
    if not _is_sip_2_0(version):
        raise _bad_version(version, line)
    try:
        match = check_uri(uri_text)
    except SIPParseError as e:
        raise SIPParseError(f"bad Request-URI: {e}", code=e.code) from None
    if match is not None and match.group("headers") is not None:
        raise SIPParseError(f"headers are not allowed in a Request-URI: {uri_text[:200]!r}")
    request = _new_object(Request)
    request.method = method
    request._uri = None
    request._uri_text = uri_text
    request._uri_match = match
    request._cache = {}
    return request


def _check(message: Message, index: dict[str, list[str]], method: Optional[str], parsed: bool) -> None:
    """
    The checks of :meth:`Message.check`, filling the accessor caches.

    :param method: a request's method, already known to be a token; ``None``
        for a response.
    :param parsed: whether :func:`parse_message` has already rejected
        repeated single-value headers and checked ``Content-Length``.
    """
    if not _REQUIRED_SET <= index.keys():
        missing = [_display_name(key) for key in _REQUIRED if key not in index]
        raise SIPParseError(f"missing {', '.join(missing)} header")
    if not parsed:
        for key in SINGLE_VALUE_HEADERS:
            values = index.get(key)
            if values is not None and len(values) > 1:
                raise SIPParseError(f"{_display_name(key)} header appears {len(values)} times")
        values = index.get("content-length")
        if values is not None and not (values[0].isdigit() and values[0].isascii()):
            raise SIPParseError(f"malformed Content-Length header: {values[0][:80]!r}")
    cache = message._cache
    call_id = index["call-id"][0]
    if _CALL_ID_RE.fullmatch(call_id) is None:
        raise SIPParseError(f"malformed Call-ID header: {call_id[:200]!r}")
    cache["call-id"] = call_id
    text = index["cseq"][0]
    number, _, cseq_method = text.partition(" ")
    # The usual "<number> <method>" needs no regex; anything else is judged by it.
    if cseq_method != method or not (number.isdigit() and number.isascii() and len(number) <= 10):
        m = _CSEQ_RE.fullmatch(text)
        if m is None:
            raise SIPParseError(f"malformed CSeq header: {text[:200]!r}")
        number, cseq_method = m.groups()
        if method is not None and cseq_method != method:
            raise SIPParseError(
                f"CSeq method {cseq_method!r} does not match request method {method!r}"
            )
    sequence = int(number)
    if sequence > 0xFFFFFFFF:
        raise SIPParseError(f"CSeq number {number} does not fit 32 bits")
    cache["cseq"] = (sequence, cseq_method)
    values = index.get("max-forwards")
    if values is None:
        cache["max-forwards"] = None
    else:
        text = values[0]
        hops = _MAX_FORWARDS.get(text)
        if hops is None:
            hops = _decimal(text, 3)
            if hops is None or hops > 255:
                raise SIPParseError(f"Max-Forwards must be 0-255, not {text[:80]!r}")
        cache["max-forwards"] = hops


def _slow_lines(data: bytes, max_headers: int, max_line: int) -> tuple[list[str], int]:
    """
    The unfolded lines of a header section that may use bare LFs, may be
    folded, or is big enough to need the caps checked; for
    :func:`parse_message` when its fast path does not apply.

    :returns: the lines (start line first) and where the body starts.
    :raises SIPParseError: for a missing blank line, a continuation of the
        start line, or (code 413) a cap exceeded.
    """
    m = _BLANK_LINE_RE.search(data)
    if m is None:
        raise SIPParseError("no blank line after the headers")
    text = data[: m.start()].decode("utf-8", "surrogateescape").replace("\r\n", "\n")
    if text[-1:] == "\r":
        text = text[:-1]
    # Continuation lines count, as the stream transport counts them: this
    # also bounds the work of unfolding.
    if text.count("\n") > max_headers:
        raise SIPParseError(f"more than {max_headers} header lines", code=413)
    first = text.find("\n")
    if first >= 0 and text[first + 1 : first + 2] in (" ", "\t"):
        raise SIPParseError("continuation line after the start line")
    if "\n " in text or "\n\t" in text:
        lines = _unfold(text.split("\n"))
    else:
        lines = text.split("\n")
    if len(text) > max_line and max(map(len, lines)) > max_line:
        raise SIPParseError(f"header line longer than {max_line} characters", code=413)
    return lines, m.end()


def _unfold(raw: list[str]) -> list[str]:
    """
    Join continuation lines to the line before: the whitespace around each
    line break of a folded header becomes one space (RFC 3261 7.3.1).  Work
    per line, not per character, and one join per header, so a huge folded
    header stays cheap.
    """
    lines: list[str] = []
    parts: Optional[list[str]] = None
    for line in raw:
        if parts is not None and line[:1] in (" ", "\t"):
            parts[-1] = parts[-1].rstrip(" \t")
            piece = line.lstrip(" \t")
            if piece:
                parts.append(piece)
            continue
        if parts is not None:
            lines.append(" ".join(parts))
        parts = [line]
    if parts is not None:
        lines.append(" ".join(parts))
    return lines


def _index_headers(lines: list[str]) -> Optional[dict[str, list[str]]]:
    """
    Index unfolded header lines by lowercased long name, checking names and
    rejecting repeated single-value headers.

    :returns: the index, or ``None`` when a line turns out to be a
        continuation line (the caller unfolds and tries again).
    """
    index: dict[str, list[str]] = {}
    known = _KNOWN_NAMES
    single = SINGLE_VALUE_HEADERS
    for line in lines:
        name, colon, value = line.partition(":")
        key = known.get(name)
        if key is None or not colon:
            if line[:1] in (" ", "\t"):
                return None
            if not colon:
                raise SIPParseError(f"header line without a colon: {line[:80]!r}")
            name = name.rstrip(" \t")
            # Checked before lowercasing: str.lower() maps some non-ASCII
            # letters (KELVIN SIGN) to ASCII ones.
            if _TOKEN_RE.fullmatch(name) is None:
                raise SIPParseError(f"malformed header name {name[:80]!r}")
            key = name.lower()
            key = COMPACT_FORMS.get(key, key)
        value = value.strip(" \t")
        values = index.get(key)
        if values is None:
            index[key] = [value]
        elif key in single:
            raise SIPParseError(f"{_display_name(key)} header appears more than once")
        else:
            values.append(value)
    return index


def parse_message(
    data: bytes,
    *,
    max_size: int = MAX_MESSAGE_SIZE,
    max_headers: int = MAX_HEADERS,
    max_line: int = MAX_LINE_LENGTH,
    strict: bool = False,
) -> Union[Request, Response]:
    """
    Parse one complete SIP message.

    ``data`` is one datagram or one frame cut from a stream: bytes after
    ``Content-Length`` are ignored, a body shorter than ``Content-Length`` is
    an error, and without ``Content-Length`` the body is the rest of ``data``.

    The start line and the checks of :meth:`Message.check` run here; ``Via``,
    ``From``, ``To`` and ``Content-Type`` are parsed on first access (which
    raises :class:`SIPParseError` if they are malformed), or all at once by
    :meth:`Message.validate`, which ``strict=True`` calls before returning.

    :param max_size: the largest message accepted, in bytes.
    :param max_headers: the most header lines accepted, continuation lines
        of folded headers included.
    :param max_line: the longest line accepted, in characters, after unfolding.
    :raises SIPParseError: with a message naming the fault, for any input that
        is not a well-formed message; never any other exception.  Exceeding a
        cap gives code 413, an unsupported SIP version 505.
    """
    if len(data) > max_size:
        raise SIPParseError(f"message of {len(data)} bytes exceeds {max_size}", code=413)
    if data[:1] in (b"\r", b"\n"):
        # Keep-alives or stray CRLFs before the start line (RFC 3261 7.5).
        data = data.lstrip(b"\r\n")
    lines: Optional[list[str]] = None
    head_bytes, blank, rest = data.partition(b"\r\n\r\n")
    if blank:
        head = head_bytes.decode("utf-8", "surrogateescape")
        newlines = head.count("\n")
        # Within these bounds no cap can be exceeded, folded or not.
        if newlines <= max_headers and len(head) <= max_line:
            lines = head.split("\r\n")
            if newlines >= len(lines):
                # A bare LF: lines may end in LF, and the header section may
                # end at an LF LF before the first CRLF CRLF.
                lines = None
    if lines is None:
        lines, body_start = _slow_lines(data, max_headers, max_line)
        rest = data[body_start:]
    message: Union[Request, Response]
    m = _PLAIN_REQUEST_LINE_RE.fullmatch(lines[0])
    if m is not None:
        # The common start line, without the call to _parse_start_line.
        request: Request = _new_object(Request)
        method, request._uri_text = m.group(1, 2)
        request.method = method
        request._uri = None
        request._uri_match = m
        request._cache = {}
        message = request
    else:
        message = _parse_start_line(lines[0])
        method = message.method if type(message) is Request else None
    del lines[0]
    index = _index_headers(lines)
    if index is None:
        # Folded: _slow_lines unfolds.
        lines = _slow_lines(data, max_headers, max_line)[0]
        del lines[0]
        index = _index_headers(lines)
        if index is None:  # pragma: no cover - _slow_lines leaves no continuation line
            raise SIPParseError("continuation line in the headers")
    headers = message.headers = _new_object(Headers)
    headers._list = None
    headers._raw = lines
    headers._index = index
    values = index.get("content-length")
    if values is None:
        message._body = rest
    else:
        text = values[0]
        length = _decimal(text, 10)
        if length is None:
            raise SIPParseError(f"malformed Content-Length header: {text[:80]!r}")
        if length > len(rest):
            raise SIPParseError(f"body has {len(rest)} bytes, Content-Length says {text}")
        message._body = rest[:length]
    _check(message, index, method, True)
    if strict:
        message.validate()
    return message


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie plus 128 random bits)."""
    return "z9hG4bK" + os.urandom(16).hex()


def new_tag() -> str:
    """A fresh From/To tag."""
    return os.urandom(8).hex()


def new_call_id(host: str) -> str:
    """A fresh Call-ID ``random@host``."""
    return f"{os.urandom(12).hex()}@{host}"


def response_tag(request: Request) -> str:
    """
    The To-tag this node gives its responses to ``request``: derived from the
    request's Call-ID and top ``Via`` line, so every answer to one request
    carries the same tag (within this process).
    """
    index = request.headers._index
    key = (index["call-id"][0], index["via"][0]) if "via" in index else index.get("call-id")
    return _TAG_PREFIX + "%08x" % (hash(key) & 0xFFFFFFFF)


_TAG_PARAM_RE = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE | re.ASCII)


def _has_tag(to_value: str) -> bool:
    """Whether a ``To`` value carries a tag parameter (outside its ``<>``)."""
    if ";" not in to_value:
        return False
    params = to_value.rfind(">") + 1
    return to_value.find(";", params) >= 0 and _TAG_PARAM_RE.search(to_value, params) is not None


def make_response(
    request: Request,
    code: int,
    reason: Optional[str] = None,
    *,
    body: bytes = b"",
    content_type: Optional[str] = None,
    to_tag: Optional[str] = None,
    headers: Iterable[tuple[str, str]] = (),
    server: Optional[str] = "dmq",
) -> Response:
    """
    Build the response to ``request`` as RFC 3261 section 8.2.6 says: every
    ``Via``, then ``From``, ``To`` (with a To-tag added, except on 100, when
    the request had none), ``Call-ID`` and ``CSeq`` copied from the request;
    then extra ``headers``, ``Content-Type`` when there is a body, ``Server``
    and ``Content-Length``.

    :raises SIPParseError: when ``request`` lacks one of the headers copied,
        an extra header is malformed (see :meth:`Headers.add`), or a text
        given holds a line break.
    """
    source = request.headers._index
    try:
        vias = source["via"]
        from_ = source["from"][0]
        to = source["to"][0]
        call_id = source["call-id"][0]
        cseq = source["cseq"][0]
    except (KeyError, IndexError):
        missing = [_display_name(key) for key in _REQUIRED if not source.get(key)]
        raise SIPParseError(f"cannot answer a request without {', '.join(missing)}") from None
    if reason is not None or to_tag is not None or content_type is not None or server != "dmq":
        _check_texts(reason, to_tag, content_type, server)
    if code != 100 and not _has_tag(to):
        to = f"{to};tag={to_tag or response_tag(request)}"
    if len(vias) == 1:  # the usual case, without the cost of a comprehension
        lines = ["Via: " + vias[0], "From: " + from_, "To: " + to, "Call-ID: " + call_id, "CSeq: " + cseq]
    else:
        lines = ["Via: " + via for via in vias]
        lines += ("From: " + from_, "To: " + to, "Call-ID: " + call_id, "CSeq: " + cseq)
    index = {"via": vias.copy(), "from": [from_], "to": [to], "call-id": [call_id], "cseq": [cseq]}
    for name, value in headers:
        _check_field(name, value)
        value = value.strip(" \t")  # as it will read back
        lines.append(f"{name}: {value}")
        index.setdefault(canonical_key(name), []).append(value)
    if body and content_type:
        lines.append("Content-Type: " + content_type)
        index["content-type"] = [content_type]
    if server:
        lines.append("Server: " + server)
        index["server"] = [server]
    length = str(len(body))
    lines.append("Content-Length: " + length)
    index["content-length"] = [length]
    response = _new_object(Response)
    response.code = code
    response.reason = REASONS.get(code, "") if reason is None else reason
    response_headers = response.headers = _new_object(Headers)
    response_headers._list = None
    response_headers._raw = lines
    response_headers._index = index
    response._body = body
    response._cache = {}
    return response


def build_request(
    method: str,
    uri: SIPURI,
    *,
    from_uri: SIPURI,
    via_transport: str,
    via_sent_by: str,
    to_uri: Optional[SIPURI] = None,
    body: bytes = b"",
    content_type: Optional[str] = None,
    max_forwards: int = 70,
    cseq: int = 10,
    call_id: Optional[str] = None,
    branch: Optional[str] = None,
    from_tag: Optional[str] = None,
    headers: Iterable[tuple[str, str]] = (),
    user_agent: Optional[str] = "dmq",
) -> Request:
    """
    Build an out-of-dialog request in the layout Kamailio's DMQ uses: ``Via``,
    ``To``, ``From``, ``CSeq``, ``Call-ID``, ``Content-Length``,
    ``User-Agent``, ``Max-Forwards``, extra ``headers``, ``Content-Type``.

    A new branch, From-tag and Call-ID are made unless given.

    :raises SIPParseError: when the request would not pass
        :meth:`Message.check` (a method that is not a token, Max-Forwards
        outside 0-255, ...), or a text given holds a line break.
    """
    _check_texts(via_transport, via_sent_by, content_type, call_id, branch, from_tag, user_agent)
    branch = branch or new_branch()
    from_tag = from_tag or new_tag()
    call_id = call_id or new_call_id(from_uri.host)
    to_text = f"<{to_uri or uri}>"
    via_text = f"SIP/2.0/{via_transport.upper()} {via_sent_by};branch={branch}"
    from_text = f"<{from_uri}>;tag={from_tag}"
    cseq_text = f"{cseq} {method}"
    items = [
        ("Via", via_text),
        ("To", to_text),
        ("From", from_text),
        ("CSeq", cseq_text),
        ("Call-ID", call_id),
        ("Content-Length", str(len(body))),
    ]
    if user_agent:
        items.append(("User-Agent", user_agent))
    items.append(("Max-Forwards", str(max_forwards)))
    for name, value in headers:
        _check_field(name, value)
        items.append((name, value))
    if content_type:
        items.append(("Content-Type", content_type))
    index: dict[str, list[str]] = {}
    for name, value in items:
        index.setdefault(canonical_key(name), []).append(value)
    request = Request(method, uri, Headers._from_parsed(items, index), body)
    request.check()
    request._cache["branch"] = branch  # known: spares the client transaction a Via parse
    return request
