"""
The SIP layer of dmq: a pure codec (:mod:`dmq.sip.message`, :mod:`dmq.sip.uri`,
:mod:`dmq.sip.headers`), and, built on it, transports and transactions.
"""

from dmq.errors import SIPParseError
from dmq.sip.headers import NameAddr, Via
from dmq.sip.message import (
    Headers,
    Message,
    Request,
    Response,
    build_request,
    make_response,
    parse_message,
)
from dmq.sip.uri import SIPURI

__all__ = [
    "Headers",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SIPParseError",
    "SIPURI",
    "Via",
    "build_request",
    "make_response",
    "parse_message",
]
