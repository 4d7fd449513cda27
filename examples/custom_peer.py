"""
A custom DMQ peer: a notice board replicated across the cluster.

Every node keeps the last notices it saw; :meth:`NoticeBoardPeer.post` adds
one here and broadcasts it on the ``notices`` channel, and every other node's
peer stores what arrives.  The peer also offers control-API methods
(``rpc_methods``), so ``dmqctl call notices.list`` and ``dmqctl call
notices.post "text"`` work on a node that runs it.

Used by ``embed.py`` and ``dmq.tac`` next to this file.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred

from dmq import DMQMessage, Peer, PeerError


class NoticeBoardPeer(Peer):
    """
    Keeps the last ``keep`` notices: ``{"from": node URI, "text": ...}``.

    :param channel: the channel to use (every node must use the same).
    :param keep: how many notices to remember.
    """

    channel = "notices"
    description = "a replicated notice board (example)"

    def __init__(self, channel: str = "notices", keep: int = 100) -> None:
        super().__init__(channel)
        self.notices: deque[dict[str, str]] = deque(maxlen=keep)

    def handle_message(self, message: DMQMessage) -> None:
        """Store a notice from another node; a body that is not UTF-8 gets 400."""
        try:
            text = message.body.decode("utf-8")
        except UnicodeDecodeError:
            raise PeerError(400, "Bad Request (notice is not UTF-8)") from None
        sender = str(message.from_uri.replace(user=None)) if message.from_uri is not None else "?"
        self.notices.append({"from": sender, "text": text})

    def post(self, text: str) -> "Deferred[list[Any]]":
        """Add a notice here and broadcast it; fires with ``(node, response)`` for every active node."""
        self.notices.append({"from": str(self.service.nodes.local.uri), "text": text})
        return self.service.bcast_message(self, text.encode("utf-8"))

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        """``notices.list`` and ``notices.post TEXT`` for the control API."""

        def post(text: str) -> "Deferred[list[dict[str, Any]]]":
            d = self.post(text)
            d.addCallback(lambda results: [{"node": str(n.uri), "code": r.code} for n, r in results])
            return d

        return {"notices.list": lambda: list(self.notices), "notices.post": post}
