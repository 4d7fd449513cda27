"""
SIP messages: :class:`Request` and :class:`Response`, their typed header
accessors, the checks every message passes, and serialisation to bytes.

This module and the ones beside it form a pure codec: they import nothing
from Twisted, do no I/O and hold no application logic.  Transports hand
:func:`~dmq.sip.parse.parse_message` one complete message (a UDP datagram,
or a frame cut out of a stream) and get back a message object or a
:class:`~dmq.errors.SIPParseError` naming what was wrong;
:mod:`dmq.sip.build` makes requests and responses.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any, Optional, Union

from dmq.errors import SIPParseError
from dmq.sip.fields import (
    SINGLE_VALUE_HEADERS,
    TOKEN_RE,
    Headers,
    display_name,
    parse_decimal,
)
from dmq.sip.headers import NameAddr, Via, parse_vias
from dmq.sip.uri import SIPURI

if TYPE_CHECKING:
    from dmq.sip.build import build_request, make_response, new_branch, new_call_id, new_tag, response_tag
    from dmq.sip.parse import MAX_HEADERS, MAX_LINE_LENGTH, MAX_MESSAGE_SIZE, parse_message

__all__ = [
    "Headers",
    "Message",
    "Request",
    "Response",
    "REASONS",
    "REQUIRED_HEADERS",
    "check_headers",
    "untagged",
]

REQUIRED_HEADERS = ("via", "from", "to", "call-id", "cseq")
"""The headers every message must have, in the order a fault names them."""
_REQUIRED_SET = frozenset(REQUIRED_HEADERS)

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

_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_CALL_ID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?")
_CONTENT_TYPE_RE = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~]+[ \t]*/[ \t]*[A-Za-z0-9\-.!%*_+`'~]+"
    r"(?:[ \t]*;[ \t]*[A-Za-z0-9\-.!%*_+`'~]+[ \t]*=[ \t]*"
    r"(?:[A-Za-z0-9\-.!%*_+`'~]+|\"(?:[^\"\\]|\\.)*\"))*"
)
_MAX_FORWARDS = {str(n): n for n in range(256)}
"""Max-Forwards values as normally written, to their ints."""


def untagged(value: str) -> Optional[str]:
    """
    A ``From`` or ``To`` value without its final ``;tag=token``: the part
    that names the address, the same in every request one sender makes.
    ``None`` when the value does not end in a tag of that plain form (then
    the tag may stand inside a bracketed URI, and only a parse tells).
    """
    head, sep, tag = value.rpartition(";tag=")
    if sep and TOKEN_RE.fullmatch(tag) is not None:
        return head
    return None


class Message:
    """
    What requests and responses share: headers, body and typed accessors.

    Typed accessors parse their header on first use and cache the result;
    messages from :func:`~dmq.sip.parse.parse_message` have already been
    through some of them.  The cache does not follow later changes to
    :attr:`headers`: to change a header that was read, build a new message
    (or parse the bytes).
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
            raise SIPParseError(f"missing {display_name(key)} header")
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
                hops = parse_decimal(text, 3)
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
        length = parse_decimal(text, 10)
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
        The checks :func:`~dmq.sip.parse.parse_message` runs on every
        message: mandatory headers present, single-value headers not
        repeated, ``Call-ID``, ``CSeq`` (and, for a request, its method),
        ``Max-Forwards`` and ``Content-Length``.

        :raises SIPParseError: naming the first fault found.
        """
        method: Optional[str] = None
        if isinstance(self, Request):
            method = self.method
            if not isinstance(method, str) or TOKEN_RE.fullmatch(method) is None:
                raise SIPParseError(f"malformed method {method!r}")
        check_headers(self, self.headers._index, method, False)

    def validate(self) -> None:
        """
        Run :meth:`check` and also parse ``Via``, ``From``, ``To`` and
        ``Content-Type``, which :func:`~dmq.sip.parse.parse_message` leaves
        for first use.

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

    @property
    def uri_user(self) -> Optional[str]:
        """
        The user part of a SIP or SIPS Request-URI as written (escapes kept),
        ``None`` when it has none or the URI is of another scheme; read off
        the parse without building :attr:`uri`.
        """
        m = self._uri_match
        if m is not None and self._uri is None:
            return m.group("user")
        uri = self.uri
        return uri.user if isinstance(uri, SIPURI) else None

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

    __slots__ = ("code", "reason", "_plain")

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
        self._plain: Optional[list[str]] = None
        """The header lines :func:`~dmq.sip.build.make_response` made from the request alone (see :meth:`remake`)."""

    def remake(self) -> Optional[tuple[int, str, Optional[str]]]:
        """
        What makes this response again from a copy of its request, when it is
        what :func:`~dmq.sip.build.make_response` made from the request alone
        and has not changed since: ``(code, reason, server)``, which
        ``make_response(request, code, reason, server=server)`` turns into
        the same bytes.  ``None`` for any other response.
        """
        lines: Optional[list[str]] = getattr(self, "_plain", None)  # a parsed response has none
        if lines is None or self.headers._raw is not lines or self._body:
            return None
        server = lines[-2]
        return self.code, self.reason, server[8:] if server.startswith("Server: ") else None

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


def check_headers(message: Message, index: dict[str, list[str]], method: Optional[str], parsed: bool) -> None:
    """
    The checks of :meth:`Message.check`, filling the accessor caches (also
    run by :func:`~dmq.sip.parse.parse_message`).

    :param index: the message's header values by canonical key.
    :param method: a request's method, already known to be a token; ``None``
        for a response.
    :param parsed: whether :func:`~dmq.sip.parse.parse_message` has already
        rejected repeated single-value headers and checked ``Content-Length``.
    :raises SIPParseError: naming the first fault found.
    """
    if not _REQUIRED_SET <= index.keys():
        missing = [display_name(key) for key in REQUIRED_HEADERS if key not in index]
        raise SIPParseError(f"missing {', '.join(missing)} header")
    if not parsed:
        for key in SINGLE_VALUE_HEADERS:
            values = index.get(key)
            if values is not None and len(values) > 1:
                raise SIPParseError(f"{display_name(key)} header appears {len(values)} times")
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
            hops = parse_decimal(text, 3)
            if hops is None or hops > 255:
                raise SIPParseError(f"Max-Forwards must be 0-255, not {text[:80]!r}")
        cache["max-forwards"] = hops


# Names still imported from here but defined in dmq.sip.parse and
# dmq.sip.build, which import this module: looked up on first use.
_DEFINED_IN = {
    "parse_message": "dmq.sip.parse",
    "MAX_MESSAGE_SIZE": "dmq.sip.parse",
    "MAX_HEADERS": "dmq.sip.parse",
    "MAX_LINE_LENGTH": "dmq.sip.parse",
    "build_request": "dmq.sip.build",
    "make_response": "dmq.sip.build",
    "new_branch": "dmq.sip.build",
    "new_tag": "dmq.sip.build",
    "new_call_id": "dmq.sip.build",
    "response_tag": "dmq.sip.build",
}


def __getattr__(name: str) -> Any:
    """``parse_message``, ``build_request``, ... from the modules that define them."""
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
