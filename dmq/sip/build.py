"""
Build SIP messages: requests in the layout Kamailio's DMQ uses, responses to
requests (parsed, or raw bytes that would not parse), ``Via`` values, reason
phrases; new branches, tags and Call-IDs.

Pure code: no Twisted, no I/O.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Union

from dmq.errors import SIPParseError, one_line
from dmq.sip.fields import Headers, canonical_key, check_field, display_name
from dmq.sip.message import REASONS, REQUIRED_HEADERS, Request, Response
from dmq.sip.uri import SIPURI

__all__ = [
    "build_request",
    "RequestTemplate",
    "make_response",
    "via_value",
    "via_over",
    "reason_with",
    "new_branch",
    "new_tag",
    "new_call_id",
    "response_tag",
    "error_response",
    "REASONS",
]

_TAG_PREFIX = os.urandom(16).hex() + "."


def _check_texts(*texts: Optional[str]) -> None:
    """Refuse texts (None aside) that hold a line break: they would inject lines."""
    for text in texts:
        if text is not None and ("\n" in text or "\r" in text):
            raise SIPParseError(f"line break in {text[:80]!r}")


def via_value(transport: str, sent_by: str, branch: Optional[str] = None) -> str:
    """
    A ``Via`` value as this node writes it:
    ``SIP/2.0/<TRANSPORT> <sent-by>;branch=<branch>``.

    :param transport: ``udp``, ``tcp`` or ``tls``, in any case (written
        uppercased).
    :param sent_by: the ``host:port`` this node is reached at.
    :param branch: the branch; a new one (:func:`new_branch`) when not given.
    :raises SIPParseError: when a text given holds a line break.
    """
    _check_texts(transport, sent_by, branch)
    return f"SIP/2.0/{transport.upper()} {sent_by};branch={branch or new_branch()}"


def via_over(request: Request, transport: str) -> Request:
    """
    A copy of ``request`` whose top ``Via`` names ``transport`` (any case,
    written uppercased), for sending it over another transport than the one
    it was built for; everything else is copied as it is.
    """
    transport = transport.upper()
    copy = Request(request.method, request.uri, None, request.body)
    first = True
    for name, value in request.headers:
        if first and canonical_key(name) == "via":
            protocol, _, rest = value.partition(" ")
            value = f"{protocol.rpartition('/')[0]}/{transport} {rest}"
            first = False
        copy.headers.add(name, value)
    return copy


def reason_with(code_or_base: Union[int, str], detail: str) -> str:
    """
    A reason phrase that names a fault: ``Bad Request (CSeq method ...)``.

    :param code_or_base: a status code, for its default phrase
        (:data:`~dmq.sip.message.REASONS`), or the phrase itself.
    :param detail: the fault, made one bounded line of printable ASCII
        (:func:`~dmq.errors.one_line`); left out when empty.
    """
    base = REASONS.get(code_or_base, "") if isinstance(code_or_base, int) else code_or_base
    detail = one_line(detail)
    if not detail:
        return base
    return f"{base} ({detail})" if base else detail


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
        missing = [display_name(key) for key in REQUIRED_HEADERS if not source.get(key)]
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
    extra = False
    for name, value in headers:
        check_field(name, value)
        value = value.strip(" \t")  # as it will read back
        lines.append(f"{name}: {value}")
        index.setdefault(canonical_key(name), []).append(value)
        extra = True
    if body and content_type:
        lines.append("Content-Type: " + content_type)
        index["content-type"] = [content_type]
    if server:
        lines.append("Server: " + server)
        index["server"] = [server]
    length = str(len(body))
    lines.append("Content-Length: " + length)
    index["content-length"] = [length]
    response = Response(code, reason, Headers._prepared(index, lines=lines), body)
    if not (body or extra or to_tag or code == 100):
        # Made from the request alone: the same call on a retransmission of
        # the request makes the same bytes, as long as these lines stay.
        response._plain = lines
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
        :meth:`~dmq.sip.message.Message.check` (a method that is not a token, Max-Forwards
        outside 0-255, ...), or a text given holds a line break.
    """
    _check_texts(content_type, call_id, from_tag, user_agent)
    branch = branch or new_branch()
    from_tag = from_tag or new_tag()
    call_id = call_id or new_call_id(from_uri.host)
    to_text = f"<{to_uri or uri}>"
    via_text = via_value(via_transport, via_sent_by, branch)
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
        check_field(name, value)
        items.append((name, value))
    if content_type:
        items.append(("Content-Type", content_type))
    index: dict[str, list[str]] = {}
    for name, value in items:
        index.setdefault(canonical_key(name), []).append(value)
    request = Request(method, uri, Headers._prepared(index, items=items), body)
    request.check()
    request._cache["branch"] = branch  # known: spares the client transaction a Via parse
    return request


class RequestTemplate:
    """
    The bytes of requests that differ only in branch, From-tag, Call-ID and
    body (every KDMQ to one node on one channel): the text around those
    fields is kept once, and :meth:`render` joins a new request from it with
    no intermediate objects.

    :param request: a request built with :data:`BRANCH_MARK`,
        :data:`TAG_MARK` and :data:`CALL_ID_MARK` as its branch, From-tag and
        Call-ID, and an empty body.
    :param call_id_host: the host part of the Call-IDs made.
    :raises ValueError: when a mark is not found exactly once (a name that
        holds one), or there is no ``Content-Length: 0`` line.
    """

    BRANCH_MARK = "z9hG4bK~b~"
    TAG_MARK = "~t~"
    CALL_ID_MARK = "~c~"
    _LENGTH = "\r\nContent-Length: 0\r\n"

    __slots__ = ("_parts", "_order", "_host", "size")

    def __init__(self, request: Request, call_id_host: str) -> None:
        text = request.to_bytes().decode("utf-8", "surrogateescape")
        marks = {"b": self.BRANCH_MARK, "t": self.TAG_MARK, "c": self.CALL_ID_MARK, "l": self._LENGTH}
        found = []
        for kind, mark in marks.items():
            if text.count(mark) != 1:
                raise ValueError(f"{mark!r} is not in the request exactly once")
            found.append((text.index(mark), kind, mark))
        found.sort()
        parts = []
        at = 0
        for position, _kind, mark in found:
            parts.append(text[at:position])
            at = position + len(mark)
        parts.append(text[at:])
        self._parts = parts
        self._order = [kind for _position, kind, _mark in found]
        self._host = call_id_host
        self.size = len(text.encode("utf-8", "surrogateescape")) + 8
        """The size of a request without its body, give or take the digits of its length."""

    def render(self, body: bytes) -> tuple[bytes, str]:
        """A new request with ``body``: its bytes and its branch."""
        ids = os.urandom(36).hex()
        branch = "z9hG4bK" + ids[:32]
        values = {
            "b": branch,
            "t": ids[32:48],
            "c": f"{ids[48:]}@{self._host}",
            "l": f"\r\nContent-Length: {len(body)}\r\n",
        }
        parts = self._parts
        out = [parts[0]]
        for index, kind in enumerate(self._order, 1):
            out.append(values[kind])
            out.append(parts[index])
        return "".join(out).encode("utf-8", "surrogateescape") + body, branch


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_COPY_FOR_ERROR = {
    b"via": b"Via", b"v": b"Via", b"from": b"From", b"f": b"From", b"to": b"To",
    b"t": b"To", b"call-id": b"Call-ID", b"i": b"Call-ID", b"cseq": b"CSeq",
}


def error_response(data: Union[bytes, list[bytes]], code: int, reason: str) -> Optional[bytes]:
    """
    A best-effort stateless error response to a request that could not be
    parsed, copying its ``Via``, ``From``, ``To``, ``Call-ID`` and ``CSeq``
    lines as they are (a line holding a control character, bare CR and LF
    included, is left out: the answer's lines are always well formed).

    :param data: the raw message, or its start line and header lines.
    :returns: the response bytes, or ``None`` when the input is not a
        request or has no usable ``Via`` (then nothing should be sent).
    """
    if isinstance(data, bytes):
        # Lines end in CRLF or a bare LF, as the parser reads them.
        head = _HEAD_END.split(data, 1)[0]
        lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    else:
        lines = data
    start = lines[0].split(b" ") if lines else []
    # A request line (any SIP version: the answer to SIP/3.0 is a 505), never a status line, never an ACK.
    if len(start) < 3 or start[0][:4].upper() == b"SIP/" or not start[-1][:4].upper() == b"SIP/":
        return None
    if start[0] == b"ACK":
        return None
    out = [b"SIP/2.0 %d %s" % (code, reason.encode("ascii", "replace"))]
    has_via = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        canonical = _COPY_FOR_ERROR.get(name.strip().lower())
        if not colon or canonical is None:
            continue
        value = value.strip()
        if _CONTROL.search(value):
            continue  # a CR, LF or NUL copied would break the answer's lines, or make new ones
        if canonical == b"Via":
            # White space may stand around the slashes of "SIP/2.0/UDP" (RFC 3261 25.1).
            if not value.upper().replace(b" ", b"").replace(b"\t", b"").startswith(b"SIP/2.0/"):
                continue
            has_via = True
        out.append(canonical + b": " + value)
    if not has_via:
        return None
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"
