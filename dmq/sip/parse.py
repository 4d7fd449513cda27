"""
Parse bytes into :class:`~dmq.sip.message.Request` / :class:`~dmq.sip.message.Response`.

:func:`parse_message` checks, for every message, the start line, the SIP
version, the Request-URI, the syntax of ``Call-ID``, ``CSeq``,
``Max-Forwards`` and ``Content-Length``, that none of the single-value
headers appears twice, that a request's ``CSeq`` method equals its method,
that the mandatory headers are present, and the caps on size, header lines
and line length.  ``Via``, ``From``, ``To`` and ``Content-Type`` are checked
in full when first used (or by :meth:`~dmq.sip.message.Message.validate`);
other header values are kept as text.

The common shapes take fast paths (one regex that needs no further check, or
plain string operations); whatever they do not take goes the general way, and
``tests/test_sip_properties.py`` checks that both accept the same.

Pure code: no Twisted, no I/O.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from dmq.errors import SIPParseError
from dmq.sip.fields import COMPACT_FORMS, SINGLE_VALUE_HEADERS, TOKEN_RE, Headers, display_name, parse_decimal
from dmq.sip.headers import check_uri
from dmq.sip.message import Request, Response, check_headers
from dmq.sip.uri import PLAIN_SIP_URI_PATTERN

__all__ = ["parse_message", "MAX_MESSAGE_SIZE", "MAX_HEADERS", "MAX_LINE_LENGTH"]

MAX_MESSAGE_SIZE = 1 << 20
"""Default cap on the size of one message, in bytes."""
MAX_HEADERS = 128
"""Default cap on the number of header lines of one message."""
MAX_LINE_LENGTH = 16384
"""Default cap on the length of one (unfolded) header line, in characters."""

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE | re.ASCII)
# The end of a header section whose lines may end in a bare LF: the first
# empty line, LF LF or LF CR LF (which CRLF CRLF contains).
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")

_KNOWN_NAMES = {
    spelling: COMPACT_FORMS.get(spelling.lower(), spelling.lower())
    for name in [
        "Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length",
        "Content-Type", "Contact", "User-Agent", "Server", "Route", "Record-Route",
        "Allow", "Supported", "Expires", "Require", "Event", "Subject",
        "v", "f", "t", "i", "l", "c", "m", "k", "s", "e", "o",
    ]
    for spelling in {name, name.lower(), name.upper(), display_name(name.lower())}
}
"""Common header name spellings (exactly as written, no spaces) to their keys."""

# The common request line in one regex that needs no further check: a token
# method and a plain SIP Request-URI (see PLAIN_SIP_URI_PATTERN).
_PLAIN_REQUEST_LINE_RE = re.compile(rf"([A-Za-z0-9\-.!%*_+`'~]+) ({PLAIN_SIP_URI_PATTERN}) SIP/2\.0")
_PLAIN_STATUS_LINE_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.DOTALL)

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
    if TOKEN_RE.fullmatch(method) is None:
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
            if TOKEN_RE.fullmatch(name) is None:
                raise SIPParseError(f"malformed header name {name[:80]!r}")
            key = name.lower()
            key = COMPACT_FORMS.get(key, key)
        value = value.strip(" \t")
        values = index.get(key)
        if values is None:
            index[key] = [value]
        elif key in single:
            raise SIPParseError(f"{display_name(key)} header appears more than once")
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

    The start line and the checks of :meth:`~dmq.sip.message.Message.check`
    run here; ``Via``, ``From``, ``To`` and ``Content-Type`` are parsed on
    first access (which raises :class:`SIPParseError` if they are malformed),
    or all at once by :meth:`~dmq.sip.message.Message.validate`, which
    ``strict=True`` calls before returning.

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
    message.headers = Headers._prepared(index, lines=lines)
    values = index.get("content-length")
    if values is None:
        message._body = rest
    else:
        text = values[0]
        length = parse_decimal(text, 10)
        if length is None:
            raise SIPParseError(f"malformed Content-Length header: {text[:80]!r}")
        if length > len(rest):
            raise SIPParseError(f"body has {len(rest)} bytes, Content-Length says {text}")
        message._body = rest[:length]
    check_headers(message, index, method, True)
    if strict:
        message.validate()
    return message
