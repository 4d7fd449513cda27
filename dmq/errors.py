"""
Exceptions raised across dmq, and :func:`one_line` for the text they carry.

Every failure a caller of :meth:`dmq.DMQService.send_message` can see carries a
SIP status ``code``, so a failed Deferred and a final response can be handled
alike (a timeout is a 408, as Kamailio's ``tm`` reports it).

This is the bottom floor of the package: it imports nothing of dmq.
"""

from __future__ import annotations

__all__ = [
    "DMQError",
    "SIPParseError",
    "TransactionTimeout",
    "TransportError",
    "MessageTooLarge",
    "ConfigurationError",
    "RPCError",
    "one_line",
]


class DMQError(Exception):
    """
    Base class of dmq's own errors.

    :ivar code: the SIP status code this failure stands for.
    """

    code = 500


class SIPParseError(ValueError):
    """
    A SIP message, header or URI is not well formed.

    :ivar code: the SIP status code a server should answer with (400 by
        default; 505 for an unsupported SIP version, 413 for an oversized
        message, 416 for an unsupported URI scheme).
    """

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


class TransactionTimeout(DMQError):
    """A client transaction got no final response before Timer F (408)."""

    code = 408


class TransportError(DMQError):
    """A request could not be sent: connection refused or lost, no route (503)."""

    code = 503


class MessageTooLarge(TransportError):
    """
    A message is larger than a datagram may be, and no stream transport
    reaches its destination (513, RFC 3261's Message Too Large): it is
    refused here rather than sent to be dropped on the way.
    """

    code = 513


class ConfigurationError(DMQError, ValueError):
    """A setting is invalid; the message names the setting and the reason."""


class RPCError(DMQError):
    """
    An error answer of a control (JSON-RPC) method.

    :ivar code: the error code given to the caller (Kamailio's RPC layer uses
        SIP-like codes: 400 bad parameters, 404 not found, 500 failure).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(text: str, limit: int = 120) -> str:
    """
    ``text`` made fit for a SIP reason phrase or a log field: white space
    runs become one space, anything but printable ASCII becomes ``?``, and
    it is cut to ``limit`` characters (ending in ``...`` when cut).
    """
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
