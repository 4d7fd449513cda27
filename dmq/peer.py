"""
Peers: the handlers of DMQ channels (Kamailio calls them DMQ peers).

A peer is an ``IService`` child of the :class:`~dmq.service.DMQService`,
registered by its channel name.  The service hands it every inbound ``KDMQ``
whose Request-URI user is its channel, as a :class:`DMQMessage`; the peer
answers with a :class:`PeerResponse` (or a Deferred of one; ``None`` means
200 with no body).  It sends through :attr:`Peer.service`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from zope.interface import implementer

from dmq.interfaces import IPeer
from dmq.sip.message import Request, Response
from dmq.sip.transaction import Source
from dmq.sip.uri import SIPURI

if TYPE_CHECKING:
    from dmq.node import Node
    from dmq.service import DMQService

__all__ = ["DMQMessage", "PeerResponse", "Peer", "CallbackPeer", "PeerError", "is_channel_name"]

_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.!~*'()\-]{1,64}")


def is_channel_name(text: str) -> bool:
    """
    Whether ``text`` can name a channel: 1 to 64 characters that may stand
    unescaped in the user part of a SIP URI (letters, digits, ``_.!~*'()-``).
    """
    return _CHANNEL_NAME.fullmatch(text) is not None


@dataclass
class DMQMessage:
    """
    An inbound DMQ message as a peer sees it.

    :ivar channel: the channel (Request-URI user).
    :ivar body: the body bytes.
    :ivar content_type: the ``Content-Type``, or ``None``.
    :ivar node: the sending node when it is in the node list (found by the
        From URI), else ``None``.
    :ivar from_uri: the From URI, which names the sending node; the
        messages of one sender share it, so read it and do not change it.
    :ivar max_forwards: the request's ``Max-Forwards`` (``None`` if absent).
    :ivar request: the whole SIP request (``None`` when injected locally).
    :ivar source: the transport source (``None`` when injected locally).
    """

    channel: str
    body: bytes
    content_type: Optional[str] = None
    node: Optional["Node"] = None
    from_uri: Optional[SIPURI] = None
    max_forwards: Optional[int] = None
    request: Optional[Request] = None
    source: Optional[Source] = None


@dataclass
class PeerResponse:
    """
    A peer's answer to a message.

    :ivar code: the SIP status code (200 by default).
    :ivar reason: the reason phrase (the standard one by default).
    :ivar body: the body; only the node-list channel sends one (Kamailio
        parses any 200 body of a script channel as a node list).
    :ivar content_type: the body's type.
    :ivar headers: extra ``(name, value)`` header lines.
    """

    code: int = 200
    reason: Optional[str] = None
    body: bytes = b""
    content_type: Optional[str] = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class PeerError(Exception):
    """
    Raised by a peer's handler to answer with a given status and reason,
    e.g. ``PeerError(400, "Bad Request (unknown action 9)")``.
    """

    def __init__(self, code: int, reason: Optional[str] = None) -> None:
        super().__init__(f"{code} {reason or ''}".strip())
        self.code = code
        self.reason = reason


HandlerResult = Union[PeerResponse, Response, None, "Deferred[Any]"]


@implementer(IPeer)
class Peer(Service):
    """
    Base class of DMQ peers.

    Subclasses set :attr:`channel` (or pass it) and override
    :meth:`handle_message`; :meth:`init` runs once the node has its first
    node list (the place for a sync on join).  A peer sends through
    :attr:`service` (``send_message``, ``bcast_message``, ``targets``).

    :cvar exchanges_node_lists: true only for the node-list channel: its
        answers keep their bodies, and the results of what it sends follow
        the node-list rules (a 200 makes a node active, a 408 applies the
        timeout rules) instead of the rules for other traffic.
    """

    channel: str = ""
    exchanges_node_lists: bool = False

    def __init__(self, channel: Optional[str] = None) -> None:
        if channel is not None:
            self.channel = channel
        if not self.channel:
            raise ValueError("a peer needs a channel name")
        # Twisted's Service has ``name = None`` unannotated, so mypy takes its type to be None.
        self.name = self.channel  # type: ignore[assignment]
        self._service: Optional["DMQService"] = None

    @property
    def service(self) -> "DMQService":
        """
        The :class:`~dmq.service.DMQService` the peer is registered with (set
        by :meth:`~dmq.service.DMQService.register_peer`).

        :raises RuntimeError: before the peer is registered.
        """
        if self._service is None:
            raise RuntimeError(f"peer {self.channel!r} is not registered with a service")
        return self._service

    @service.setter
    def service(self, service: Optional["DMQService"]) -> None:
        self._service = service

    @property
    def registered(self) -> bool:
        """Whether the peer is registered with a service."""
        return self._service is not None

    def handle_message(self, message: DMQMessage) -> HandlerResult:
        """Handle an inbound message; the default answers 200."""
        return None

    def init(self, service: "DMQService") -> Optional["Deferred[Any]"]:
        """Run once after the first node list arrived; the default does nothing."""
        return None


class CallbackPeer(Peer):
    """
    A peer whose handler is a callable, for quick registrations:
    ``svc.register_peer(CallbackPeer("custom1", on_message))``.
    """

    def __init__(
        self,
        channel: str,
        handler: Callable[[DMQMessage], HandlerResult],
        init: Optional[Callable[["DMQService"], Any]] = None,
    ) -> None:
        super().__init__(channel)
        self._handler = handler
        self._init = init

    def handle_message(self, message: DMQMessage) -> HandlerResult:
        """Call the handler."""
        return self._handler(message)

    def init(self, service: "DMQService") -> Any:
        """Call the init callable, if any."""
        return self._init(service) if self._init is not None else None
