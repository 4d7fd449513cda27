"""
SIP messages: parse bytes into :class:`Request` / :class:`Response` and back.

This module is a pure codec.  It imports nothing from Twisted, does no I/O and
holds no application logic; transports hand it one complete message (a UDP
datagram, or a frame cut out of a stream) and get back a message object or a
:class:`SIPParseError` naming what was wrong.

The parser checks, for every message, the start line, the SIP version, the
syntax of ``Via``, ``From``, ``To``, ``Call-ID``, ``CSeq``, ``Max-Forwards``,
``Content-Length`` and ``Content-Type``, that none of the single-value headers
appears twice, that a request's ``CSeq`` method equals its method, and that
the mandatory headers are present.  Other header values are kept as text and
parsed only by whoever asks for them.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Iterator, Optional, Union

from dmq.sip.headers import NameAddr, Via, check_uri, parse_vias
from dmq.sip.uri import SIP_URI_PATTERN, SIPURI, SIPParseError, check_uri_match

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
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_FOLD_RE = re.compile(r"[ \t]*\r?\n[ \t]+")
_TAG_PREFIX = os.urandom(16).hex()


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
        if self._raw is not None:
            return self._raw
        return [f"{name}: {value}" for name, value in self._list or ()]

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of ``name``, or ``default``."""
        values = self._index.get(canonical_key(name))
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        """Every value of ``name`` (one per header line), in order."""
        return list(self._index.get(canonical_key(name), ()))

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        self._items.append((name, value))
        self._raw = None
        self._index.setdefault(canonical_key(name), []).append(value)

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` line by one; a new header goes last."""
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
    messages from :func:`parse_message` have already been through them.
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
                if not (text.isdigit() and text.isascii()) or int(text) > 255:
                    raise SIPParseError(f"Max-Forwards must be 0-255, not {text!r}")
                cache["max-forwards"] = int(text)
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
        if not (text.isdigit() and text.isascii()):
            raise SIPParseError(f"malformed Content-Length header: {text!r}")
        return int(text)

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
        _check(self, self.headers._index)

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
        lines = [self._start_line()]
        lines.extend(self.headers.lines())
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self._body

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
        vias = self.vias
        return vias[0].branch if vias else None

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


def _parse_start_line(line: str) -> Union[Request, Response]:
    """Parse a request line or status line into an empty message."""
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is not None and "%" not in line and m.group("headers") is None:
        # The common case, in one regex: a SIP Request-URI without escapes.
        check_uri_match(m)
        request = Request.__new__(Request)
        request.method = m.group(1)
        request._uri = None
        request._uri_text = m.group(2)
        request._uri_match = m
        request._cache = {}
        return request
    if line[:4] == "SIP/" or line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SIPParseError(f"malformed status line: {line!r}")
        version, code_text = parts[0], parts[1]
        if version.upper() != "SIP/2.0":
            if _VERSION_RE.fullmatch(version):
                raise SIPParseError(f"unsupported SIP version {version!r}", code=505)
            raise SIPParseError(f"malformed status line: {line!r}")
        if len(code_text) != 3 or not code_text.isdigit() or not code_text.isascii():
            raise SIPParseError(f"malformed status code {code_text!r}")
        code = int(code_text)
        if not 100 <= code <= 699:
            raise SIPParseError(f"status code {code} out of range")
        response = Response.__new__(Response)
        response.code = code
        response.reason = parts[2] if len(parts) == 3 else ""
        response._cache = {}
        return response
    parts = line.split(" ")
    if len(parts) != 3:
        raise SIPParseError(f"malformed request line: {line!r}")
    method, uri_text, version = parts
    if _TOKEN_RE.fullmatch(method) is None:
        raise SIPParseError(f"malformed method {method!r}")
    if version.upper() != "SIP/2.0":
        if _VERSION_RE.fullmatch(version):
            raise SIPParseError(f"unsupported SIP version {version!r}", code=505)
        raise SIPParseError(f"malformed request line: {line!r}")
    try:
        match = check_uri(uri_text)
    except SIPParseError as e:
        raise SIPParseError(f"bad Request-URI: {e}", code=e.code) from None
    if match is not None and match.group("headers") is not None:
        raise SIPParseError(f"headers are not allowed in a Request-URI: {uri_text!r}")
    request = Request.__new__(Request)
    request.method = method
    request._uri = None
    request._uri_text = uri_text
    request._uri_match = match
    request._cache = {}
    return request


def _check(
    message: Message, index: dict[str, list[str]], checked_duplicates: bool = False
) -> None:
    """The checks of :meth:`Message.check`, filling the accessor caches."""
    if not _REQUIRED_SET <= index.keys():
        missing = [_display_name(key) for key in _REQUIRED if key not in index]
        raise SIPParseError(f"missing {', '.join(missing)} header")
    if checked_duplicates is False:
        for key in SINGLE_VALUE_HEADERS:
            values = index.get(key)
            if values is not None and len(values) > 1:
                raise SIPParseError(f"{_display_name(key)} header appears {len(values)} times")
    cache = message._cache
    call_id = index["call-id"][0]
    if _CALL_ID_RE.fullmatch(call_id) is None:
        raise SIPParseError(f"malformed Call-ID header: {call_id!r}")
    cache["call-id"] = call_id
    text = index["cseq"][0]
    m = _CSEQ_RE.fullmatch(text)
    if m is None:
        raise SIPParseError(f"malformed CSeq header: {text!r}")
    number, method = m.groups()
    cseq = cache["cseq"] = (int(number), method)
    if cseq[0] > 0xFFFFFFFF:
        raise SIPParseError(f"CSeq number {number} does not fit 32 bits")
    if isinstance(message, Request) and method != message.method:
        raise SIPParseError(
            f"CSeq method {method!r} does not match request method {message.method!r}"
        )
    values = index.get("max-forwards")
    if values is None:
        cache["max-forwards"] = None
    else:
        text = values[0]
        if not (text.isdigit() and text.isascii()) or int(text) > 255:
            raise SIPParseError(f"Max-Forwards must be 0-255, not {text!r}")
        cache["max-forwards"] = int(text)
    values = index.get("content-length")
    if values is not None and not (values[0].isdigit() and values[0].isascii()):
        raise SIPParseError(f"malformed Content-Length header: {values[0]!r}")


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

    :raises SIPParseError: with a message naming the fault, for any input that
        is not a well-formed message; never any other exception.
    """
    if len(data) > max_size:
        raise SIPParseError(f"message of {len(data)} bytes exceeds {max_size}", code=413)
    if data[:1] in (b"\r", b"\n"):
        # Keep-alives or stray CRLFs before the start line (RFC 3261 7.5).
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        body_start = end + 4
    else:
        end = data.find(b"\n\n")
        if end >= 0:
            body_start = end + 2
        elif data.endswith(b"\n"):
            end = body_start = len(data)
        else:
            raise SIPParseError("no blank line after the headers")
    head = data[:end].decode("utf-8", "surrogateescape")
    if "\n " in head or "\n\t" in head:
        head = _FOLD_RE.sub(" ", head)
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:
        lines = head.replace("\r\n", "\n").split("\n")
    if len(lines) > max_headers + 1:
        raise SIPParseError(f"more than {max_headers} header lines", code=413)
    message = _parse_start_line(lines[0])
    if len(head) > max_line and max(map(len, lines)) > max_line:
        raise SIPParseError(f"header line longer than {max_line} characters", code=413)
    index: dict[str, list[str]] = {}
    known = _KNOWN_NAMES
    del lines[0]
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise SIPParseError(f"header line without a colon: {line[:80]!r}")
        key = known.get(name)
        if key is None:
            name = name.rstrip(" \t")
            key = name.lower()
            if _TOKEN_RE.fullmatch(key) is None:
                raise SIPParseError(f"malformed header name {name[:80]!r}")
            key = COMPACT_FORMS.get(key, key)
        value = value.strip(" \t")
        if key in index:
            if key in SINGLE_VALUE_HEADERS:
                raise SIPParseError(f"{_display_name(key)} header appears more than once")
            index[key].append(value)
        else:
            index[key] = [value]
    message.headers = Headers._from_lines(lines, index)
    length_values = index.get("content-length")
    if length_values is not None:
        text = length_values[0]
        if not (text.isdigit() and text.isascii()):
            raise SIPParseError(f"malformed Content-Length header: {text!r}")
        length = int(text)
        if body_start + length > len(data):
            raise SIPParseError(
                f"body has {len(data) - body_start} bytes, Content-Length says {length}"
            )
        message._body = data[body_start : body_start + length]
    else:
        message._body = data[body_start:]
    _check(message, index, True)
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
    return f"{_TAG_PREFIX}.{hash(key) & 0xFFFFFFFF:08x}"


_TAG_PARAM_RE = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)


def _has_tag(to_value: str) -> bool:
    """Whether a ``To`` value carries a tag parameter (outside its ``<>``)."""
    params = to_value[to_value.rfind(">") + 1 :]
    return ";" in params and _TAG_PARAM_RE.search(params) is not None


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
    """
    source = request.headers._index
    vias = source["via"]
    to = source["to"][0]
    if code != 100 and not _has_tag(to):
        to = f"{to};tag={to_tag or response_tag(request)}"
    from_ = source["from"]
    call_id = source["call-id"]
    cseq = source["cseq"]
    items = [("Via", via) for via in vias]
    items += [("From", from_[0]), ("To", to), ("Call-ID", call_id[0]), ("CSeq", cseq[0])]
    index = {"via": list(vias), "from": from_[:1], "to": [to], "call-id": call_id[:1], "cseq": cseq[:1]}
    for name, value in headers:
        items.append((name, value))
        index.setdefault(canonical_key(name), []).append(value)
    if body and content_type:
        items.append(("Content-Type", content_type))
        index["content-type"] = [content_type]
    if server:
        items.append(("Server", server))
        index["server"] = [server]
    length = str(len(body))
    items.append(("Content-Length", length))
    index["content-length"] = [length]
    response = Response.__new__(Response)
    response.code = code
    response.reason = REASONS.get(code, "") if reason is None else reason
    response.headers = Headers._from_parsed(items, index)
    response._body = body
    response._cache = cache = request._cache.copy()
    cache.pop("to", None)
    cache.pop("max-forwards", None)
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
    """
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
    items.extend(headers)
    if content_type:
        items.append(("Content-Type", content_type))
    index: dict[str, list[str]] = {}
    for name, value in items:
        index.setdefault(canonical_key(name), []).append(value)
    request = Request(method, uri, Headers._from_parsed(items, index), body)
    cache = request._cache
    cache["cseq"] = (cseq, method)
    cache["call-id"] = call_id
    cache["max-forwards"] = max_forwards
    return request
