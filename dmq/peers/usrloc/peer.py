"""
The ``usrloc`` peer: the location table (who is registered where) shared
with Kamailio's ``dmq_usrloc`` module (``modparam("dmq_usrloc", "enable", 1)``).

::

    peer = UsrlocPeer(persist_dir="/var/lib/dmq")
    svc.register_peer(peer)
    peer.save("alice", "sip:alice@192.0.2.7:5060", expires=3600, q=0.5)   # replicated
    peer.lookup("alice")                        # [Contact(...)], best q first
    peer.remove("alice", "sip:alice@192.0.2.7:5060")                     # replicated (action 2)
    peer.add_change_listener(print)             # ContactChange(kind, aor, contact, origin)

The table logic is :class:`~dmq.peers.usrloc.table.Location` (plain Python,
time passed in); :class:`UsrlocPeer` drives it from the network, the
service's clock, RPC and an optional snapshot file, with the parts every
table-like peer shares (:mod:`dmq.replicated`).  See ``docs/usrloc.md``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dmq.node import Node, kamailio_version
from dmq.peer import DMQMessage, PeerError
from dmq.peers.usrloc.rpc import UsrlocRPC
from dmq.peers.usrloc.table import METHODS_ALL, Q_UNSET, Contact, ContactChange, Location, RuidMaker, check_contact
from dmq.peers.usrloc.wire import CHANNEL, MULTI, Action, Item, body_items, contact_doc, contact_json, parse_item, sync_body
from dmq.replicated.link import Outcome
from dmq.replicated.peer import ReplicatedPeer
from dmq.replicated.sync import requester
from dmq.replicated.wire import bad_request, parse_object

__all__ = ["UsrlocPeer"]

log = Logger()

_COUNTERS = ("received", "applied", "rejected", "stale", "multi_received", "multi_contacts_received")


class UsrlocPeer(ReplicatedPeer):
    """
    The location table on the ``usrloc`` channel, wire-compatible with
    Kamailio's dmq_usrloc module (5.6 and 6.x).

    Local changes (:meth:`save`, :meth:`remove`) apply at once and go to
    every active node; changes from other nodes apply as they come and are
    not sent on.  Contacts past their expiry vanish (expiry is not
    replicated, as in Kamailio, unless ``delete_expired``).  When the node
    becomes ready it asks for the cluster's contacts (``init_sync``); it
    answers such a request with its live contacts in ``multi`` batches that
    each fit a datagram, to the requester only.

    :param persist_dir: keep the table in ``persist_dir/<channel>.json``.
    :param purge_interval: seconds between sweeps of expired contacts.
    :param server_id: this node's server id, written into the ruids it makes
        and the contacts it saves (Kamailio's core ``server_id``).
    :param use_domain: RPC AoRs keep their ``@domain`` (usrloc's
        ``use_domain``); without it the part from ``@`` on is dropped.
    :param delete_expired: send a remove when a contact expires here
        (Kamailio 6.1's ``usrloc_delete_expired``).
    :param domain: the table name RPC methods take (usrloc's ``location``).
    :param channel: the channel (Kamailio's dmq_usrloc peer id, ``usrloc``).

    Other keywords (``init_sync``, ``max_in_flight``, ``sync_window``,
    ``sync_chunk_size``, ``persist_interval``) go to
    :class:`~dmq.replicated.peer.ReplicatedPeer`.

    :ivar location: the :class:`~dmq.peers.usrloc.table.Location` table.
    """

    framing = MULTI
    batch_framing = MULTI
    snapshot_format = "dmq-usrloc"

    def __init__(
        self,
        persist_dir: Optional[Union[str, os.PathLike[str]]] = None,
        *,
        purge_interval: float = 10.0,
        server_id: int = 0,
        use_domain: bool = False,
        delete_expired: bool = False,
        domain: str = "location",
        channel: str = CHANNEL,
        **replication: Any,
    ) -> None:
        super().__init__(channel, persist_dir=persist_dir, **replication)
        self.location = Location()
        self.purge_interval = purge_interval
        self.server_id = server_id
        self.use_domain = use_domain
        self.delete_expired = delete_expired
        self.domain = domain
        self.ruids = RuidMaker(self.link.now, server_id=server_id)
        """Makes the ruids of :meth:`save` (``uloc-...``, as Kamailio's registrar)."""
        self.rpc_ruids = RuidMaker(self.link.now, prefix="ulcx", server_id=server_id)
        """Makes the ruids of ``ul.add`` (``ulcx-...``, as Kamailio's)."""
        self._counts = dict.fromkeys(_COUNTERS, 0)

    @property
    def stats(self) -> dict[str, int]:
        """
        Counters: messages ``received``, actions ``applied``, messages
        ``rejected`` (400) and updates ``stale`` (an older CSeq, or expired
        on the way); ``multi`` messages received and the contacts they
        carried (sync answers, and the changes another node joined); sync
        requests answered, messages and contacts sent; changes
        ``replicated``, messages that ``joined`` several of them, changes
        ``not_queued`` (a node's queue was full); snapshots written.
        """
        return {
            **self._counts,
            "sync_requests": self._answers.requests,
            "sync_messages_sent": self._answers.chunks_sent,
            "sync_contacts_sent": self._answers.items_sent,
            "replicated": self.replicated,
            "joined": self.joined,
            "not_queued": self.not_queued,
            "snapshots": self._snapshot.writes if self._snapshot is not None else 0,
        }

    def status(self) -> dict[str, int]:
        """``{"aors": N, "contacts": M}``: the AoRs with a live contact, and the live contacts."""
        aors, contacts = self.location.counts(self.link.now())
        return {"aors": aors, "contacts": contacts}

    def startService(self) -> None:  # noqa: N802
        """Load the snapshot (before any sync can run), then start the expiry and snapshot loops."""
        super().startService()
        self.link.every(self.purge_interval, self.purge)

    def _changed(self, kind: str, aor: str, contact: Contact, origin: Optional[Node] = None) -> None:
        self.mark_changed()
        if self.listened:
            self.notify(ContactChange(kind, aor, contact.copy(), origin))

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, aor: str) -> list[Contact]:
        """The live contacts of ``aor`` (copies), best q first; ``[]`` when it has none."""
        return [c.copy() for c in self.location.live(aor, self.link.now())]

    def aors(self) -> list[str]:
        """Every AoR with a live contact."""
        now = self.link.now()
        return [aor for aor in self.location.records if self.location.live(aor, now)]

    # -- writing ------------------------------------------------------------------------------

    def save(
        self,
        aor: str,
        contact: str,
        expires: int = 3600,
        *,
        callid: Optional[str] = None,
        cseq: Optional[int] = None,
        q: Optional[float] = None,
        ruid: Optional[str] = None,
        received: str = "",
        path: str = "",
        user_agent: str = "",
        instance: str = "",
        flags: int = 0,
        cflags: int = 0,
        methods: int = METHODS_ALL,
        reg_id: int = 0,
        sock: Optional[str] = None,
        sockname: Optional[str] = None,
        xavps: Optional[dict[str, Any]] = None,
    ) -> "Deferred[list[Outcome]]":
        """
        Register ``contact`` for ``aor`` (or refresh it) and replicate it, as
        Kamailio's registrar ``save()`` does.

        The contact is found by ``ruid`` when given, else by its address
        within the AoR; found, it keeps its ruid, and with the same Call-ID
        its CSeq must go up.  New, it gets ``ruid`` or a new one like
        Kamailio's (``uloc-<time>-<pid>-<n>``).

        :param expires: seconds from now; 0 never expires (as ``ul.add``).
        :param callid: by default the found contact's, or the new ruid.
        :param cseq: by default one above the found contact's (same
            Call-ID), else 1.
        :param q: 0.0 to 1.0, or ``None`` for none (q is x1000 on the wire).
        :returns: a Deferred firing, once every active node answered, with
            ``(node, status code)`` pairs (408 for a timeout); it never fails.
        :raises ValueError: for a CSeq not above the stored one of the same
            Call-ID, or a field Kamailio could not hold.
        :raises TypeError: for a field of the wrong type.
        """
        now = self.link.now()
        if isinstance(expires, bool) or not isinstance(expires, int) or expires < 0:
            raise ValueError(f"expires is a number of seconds, 0 or more, not {expires!r}")
        found = self.location.find_ruid(aor, ruid) if ruid else None
        if found is None:
            found = self.location.find_address(aor, contact)
        if callid is None:
            callid = found.callid if found is not None else None
        if cseq is None:
            cseq = found.cseq + 1 if found is not None and found.callid == callid else 1
        elif found is not None and found.callid == callid and cseq <= found.cseq and not ruid:
            raise ValueError(f"CSeq {cseq} of Call-ID {callid!r} is not above the stored {found.cseq}")
        new_ruid = found.ruid if found is not None else (ruid or self.ruids.next())
        incoming = Contact(
            ruid=new_ruid,
            address=contact,
            received=received,
            path=path,
            callid=callid if callid is not None else new_ruid,
            user_agent=user_agent,
            instance=instance,
            expires=int(now) + expires if expires else 0,
            cseq=cseq,
            flags=flags,
            cflags=cflags,
            q=_q_value(q),
            last_modified=int(now),
            methods=methods,
            reg_id=reg_id,
            server_id=self.server_id,
            sock=sock,
            sockname=sockname,
            xavps=dict(xavps) if xavps else None,
            updated=now,
        )
        check_contact(aor, incoming)
        if found is not None:
            # Kamailio's update keeps the address unless an instance is given; a save names it.
            found.address = contact
            stored = self.location.update(aor, found, incoming)
            self._changed("updated", aor, stored)
        else:
            stored = self.location.insert(aor, incoming)
            self._changed("added", aor, stored)
        return self.replicate(aor, stored.ruid, contact_json(Action.UPDATE, aor, stored))

    def remove(self, aor: str, contact: Optional[str] = None, *, ruid: Optional[str] = None) -> "Deferred[list[Outcome]]":
        """
        Remove one contact of ``aor`` (by ``ruid``, else by its address
        ``contact``) or, with neither, every contact of ``aor``; each goes to
        every active node as a remove by ruid (action 2).

        Kamailio sends removes only with ``modparam("dmq_usrloc",
        "usrloc_delete", 1)`` (its default); it applies them whatever that
        setting says.

        :returns: a Deferred firing with every ``(node, status code)``.
        :raises KeyError: when there is no such contact (or AoR).
        """
        if ruid is not None:
            gone = [self.location.find_ruid(aor, ruid)]
        elif contact is not None:
            gone = [self.location.find_address(aor, contact)]
        else:
            gone = list(self.location.contacts(aor))
        found = [c for c in gone if c is not None]
        if not found:
            what = ruid or contact
            raise KeyError(f"no contact {what!r} of {aor!r}" if what else f"no AoR {aor!r}")
        sends = []
        for c in found:
            self.location.remove(aor, c)
            self._changed("removed", aor, c)
            sends.append(self.replicate(aor, c.ruid, contact_json(Action.RM, aor, c)))
        return _joined(sends)

    # -- inbound ------------------------------------------------------------------------------

    def handle_message(self, message: DMQMessage) -> None:
        """
        Apply one message: an action or a ``multi`` batch of actions, in
        order.  Answers 200 (with no body), or 400 with the reason for a
        malformed body (nothing of it applied) or for a new contact without
        a ruid (the other actions applied).
        """
        self._counts["received"] += 1
        now = self.link.now()
        try:
            doc = parse_object(message.body)
            batch = next(iter(doc)) == "multi"
            items = [parse_item(item, now) for item in body_items(doc)]
        except PeerError as e:
            self._counts["rejected"] += 1
            log.debug("usrloc message refused: {code} {reason}", code=e.code, reason=e.reason)
            raise
        if batch:
            self._counts["multi_received"] += 1
        refused = [reason for item in items if (reason := self._apply(item, message, batch)) is not None]
        if refused:
            self._counts["rejected"] += 1
            raise bad_request(refused[0])

    def _apply(self, item: Item, message: DMQMessage, batch: bool) -> Optional[str]:
        if item.action is Action.SYNC:
            self._answer_sync(requester(message))
            return None
        if item.action is Action.NONE or item.contact is None:
            return None
        now = self.link.now()
        origin = message.node
        if item.action is Action.RM:
            removed = self.location.remove_ruid(item.aor, item.contact.ruid)
            if removed is not None:
                self._changed("removed", item.aor, removed, origin)
            self._counts["applied"] += 1
            return None
        if not item.contact.live(now):
            self._counts["stale"] += 1  # expired on the way: nothing to register
            return None
        try:
            kind, stored = self.location.apply(item.aor, item.contact, now)
        except ValueError as e:
            return str(e)
        if kind is None:
            self._counts["stale"] += 1
            return None
        self._counts["applied"] += 1
        if batch:
            self._counts["multi_contacts_received"] += 1
        self._changed(kind, item.aor, stored, origin)
        return None

    # -- replication --------------------------------------------------------------------------

    def takes_batches(self, node: Node) -> bool:
        """
        Whether ``node`` applies changes joined in a ``multi`` message: a dmq
        node, or a Kamailio node (dmq_usrloc applies each member in turn).
        """
        return super().takes_batches(node) or kamailio_version(node.agent) is not None

    # -- sync ---------------------------------------------------------------------------------

    def request_sync(self, all_nodes: bool = False) -> "Deferred[list[Outcome]]":
        """
        Ask for the cluster's contacts: ``{"action":3}`` to every active
        node (``all_nodes``, Kamailio's way) or to one node at a time, seeds
        first, until one answers 200.  The contacts arrive later.
        """
        return self.ask_for_sync(None, "all" if all_nodes else "single")

    def sync_request(self, scope: Optional[str]) -> bytes:
        """``{"action":3}``."""
        return sync_body()

    def _answer_sync(self, node: Node) -> "Deferred[int]":
        now = self.link.now()
        items = [(aor, c.ruid) for aor, c in self.location.items() if c.live(now)]
        return self.answer_sync(node, items, self._contact_json)

    def _contact_json(self, item: tuple[str, str]) -> Optional[bytes]:
        aor, ruid = item
        contact = self.location.find_ruid(aor, ruid)
        if contact is None or not contact.live(self.link.now()):
            return None
        return contact_json(Action.UPDATE, aor, contact)

    # -- expiry and persistence ---------------------------------------------------------------

    def purge(self) -> int:
        """Drop the expired contacts now (each an ``expired`` change); return how many went."""
        gone = self.location.purge(self.link.now())
        for aor, contact in gone:
            self._changed("expired", aor, contact)
            if self.delete_expired:
                self.replicate(aor, contact.ruid, contact_json(Action.RM, aor, contact))
        return len(gone)

    def snapshot(self) -> dict[str, Any]:
        """
        The table as a JSON-able snapshot: its live contacts as they go on
        the wire (``contact_doc``), each with ``updated`` added.
        """
        now = self.link.now()
        contacts = [
            {**contact_doc(Action.UPDATE, aor, c), "updated": c.updated} for aor, c in self.location.items() if c.live(now)
        ]
        return {"format": self.snapshot_format, "version": 1, "saved": now, "contacts": contacts}

    def restore_snapshot(self, doc: dict[str, Any]) -> int:
        """Put back the live contacts of a :meth:`snapshot` document; return how many."""
        rows = doc["contacts"]
        if not isinstance(rows, list):
            raise ValueError("contacts is not a list")
        now = self.link.now()
        loaded = 0
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError("a contact is not an object")
            item = parse_item(row, now)
            if item.contact is None or not item.contact.live(now):
                continue
            updated = row.get("updated")
            if isinstance(updated, (int, float)) and not isinstance(updated, bool):
                item.contact.updated = float(updated)
            kind, stored = self.location.apply(item.aor, item.contact, now)
            if kind is not None:
                loaded += 1
                self._changed(kind, item.aor, stored)
        return loaded

    # -- RPC ----------------------------------------------------------------------------------

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        """The control methods, by Kamailio's names (see :class:`~dmq.peers.usrloc.rpc.UsrlocRPC`)."""
        return UsrlocRPC(self).methods()


def _q_value(q: Optional[float]) -> int:
    """A q of 0.0 to 1.0 as the x1000 integer on the wire (``None``: unset)."""
    if q is None:
        return Q_UNSET
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1:
        raise ValueError(f"q is 0.0 to 1.0, not {q!r}")
    return int(round(q * 1000))


def _joined(sends: list["Deferred[list[Outcome]]"]) -> "Deferred[list[Outcome]]":
    """One Deferred of every outcome of ``sends``."""
    if len(sends) == 1:
        return sends[0]
    return defer.gatherResults(sends).addCallback(lambda lists: [o for outcomes in lists for o in outcomes])
