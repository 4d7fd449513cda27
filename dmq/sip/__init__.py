"""
The SIP layer of dmq: a pure codec (:mod:`dmq.sip.uri`, :mod:`dmq.sip.headers`,
:mod:`dmq.sip.fields`, :mod:`dmq.sip.message`, :mod:`dmq.sip.parse`,
:mod:`dmq.sip.build`), and, built on it, transports and transactions.
"""

from dmq.errors import SIPParseError
from dmq.sip.build import build_request, make_response
from dmq.sip.fields import Headers
from dmq.sip.headers import NameAddr, Via
from dmq.sip.message import Message, Request, Response
from dmq.sip.parse import parse_message
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
