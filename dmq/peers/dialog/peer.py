"""
The ``dialog`` peer: the calls of a cluster, shared with Kamailio's dialog
module (``modparam("dialog", "enable_dmq", 1)``).

::

    peer = DialogPeer(profiles_with_value=["caller"], profiles_no_value=["calls"])
    svc.register_peer(peer)
    peer.add_change_listener(lambda change: print(change.key, change.old_state, change.state))
    d = peer.create("call-1@10.0.0.1", "sip:alice@example.com", "sip:bob@example.com",
                    "sip:bob@10.0.0.2", "atag", contact1="sip:alice@10.0.0.1",
                    profiles=[("caller", "alice"), ("calls", None)])
    peer.set_state(d, DialogState.EARLY)
    peer.set_state(d, DialogState.CONFIRMED, tag2="btag", contact2="sip:bob@10.0.0.2")
    peer.set_state(d, DialogState.DELETED)          # replicated as state 5, then a remove
    peer.get("call-1@10.0.0.1"); peer.dialogs(); peer.profile_size("calls")

The dialogs and their rules are :mod:`~dmq.peers.dialog.table` (no I/O);
the bodies :mod:`~dmq.peers.dialog.wire`; ``docs/dialog.md`` says it all.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dmq.errors import ConfigurationError, one_line
from dmq.node import Node
from dmq.peer import DMQMessage, PeerError
from dmq.peers.dialog.rpc import DialogRPC
from dmq.peers.dialog.table import (
    CALLEE,
    CALLER,
    DEFAULT_HASH_SIZE,
    DEFAULT_LIFETIME,
    Dialog,
    DialogKey,
    DialogState,
    DialogTable,
    ProfileLink,
    Profiles,
)
from dmq.peers.dialog.wire import (
    CHANNEL,
    Action,
    Fields,
    parse_body,
    parse_fields,
    parse_profiles,
    remove_body,
    state_body,
    sync_body,
    update_body,
)
from dmq.replicated.link import Outcome
from dmq.replicated.peer import ReplicatedPeer
from dmq.replicated.sync import requester
from dmq.replicated.wire import Framing, bad_request, check_text, internal_error

__all__ = ["DialogPeer", "DialogChange", "DialogRef", "SYNC_ANSWER_MODES"]

log = Logger()

GROUP = "dialog"
"""The outbox group of every dialog message (the key is the dialog's ``(h_entry, h_id)``)."""

SYNC_ANSWER_MODES = ("all", "requester")
"""Where a sync answer goes: every active node (Kamailio's way), or the node that asked."""

DialogRef = Union[Dialog, DialogKey]
"""A dialog, or its ``(h_entry, h_id)``."""


@dataclass(frozen=True)
class DialogChange:
    """
    One change of a dialog, as change listeners get it.

    :ivar dialog: a copy of the dialog after the change (before it, for a removal).
    :ivar old_state: the state before (``None``: the dialog is new here).
    :ivar state: the state after (``None``: the dialog is gone).
    :ivar origin: the node the change came from (``None``: this node).
    """

    dialog: Dialog
    old_state: Optional[DialogState]
    state: Optional[DialogState]
    origin: Optional[Node] = None

    @property
    def key(self) -> DialogKey:
        """The dialog's ``(h_entry, h_id)``."""
        return self.dialog.key


class DialogPeer(ReplicatedPeer):
    """
    The dialogs of the cluster on the ``dialog`` channel, wire-compatible with
    Kamailio's dialog module.

    Dialogs other nodes announce are kept and follow their states; dialogs
    made here (:meth:`create`) are announced, and their changes replicated,
    with the actions Kamailio sends.  A node that joins asks for every dialog
    (``{"action":4}``); a node that asks gets them as one update each.

    :param hash_size: the dialog table size, Kamailio's ``hash_size`` (4096;
        every node of the cluster needs the same).
    :param profiles_with_value: profile names (Kamailio's ``profiles_with_value``).
    :param profiles_no_value: profile names (Kamailio's ``profiles_no_value``).
    :param default_timeout: seconds a confirmed dialog made here lives
        (Kamailio's ``default_timeout``).
    :param early_timeout: seconds after which a dialog still unconfirmed or
        early is dropped (Kamailio's ``early_timeout``).
    :param end_timeout: seconds an ended dialog of another node is kept
        while its owner has not removed it (Kamailio's ``end_timeout``).
    :param h_id_start: Kamailio's ``h_id_start``.
    :param h_id_step: Kamailio's ``h_id_step``.
    :param sync_answer: ``"all"`` answers a sync request with every dialog to
        every active node, as Kamailio does; ``"requester"`` to the asking node only.
    :param purge_interval: seconds between sweeps for expired dialogs.
    :param rng: the random source of the ids' starting points.
    :param channel: the channel (Kamailio's dialog peer id, ``dialog``).

    ``init_sync``, ``max_in_flight`` are those of
    :class:`~dmq.replicated.peer.ReplicatedPeer`.
    """

    framing = Framing(b"", b"")
    """Unused: a dialog sync answer is one update message per dialog."""

    def __init__(
        self,
        hash_size: int = DEFAULT_HASH_SIZE,
        profiles_with_value: Iterable[str] = (),
        profiles_no_value: Iterable[str] = (),
        *,
        default_timeout: int = DEFAULT_LIFETIME,
        early_timeout: int = 300,
        end_timeout: int = 300,
        h_id_start: int = 0,
        h_id_step: int = 1,
        sync_answer: str = "all",
        init_sync: str = "single",
        max_in_flight: int = 64,
        purge_interval: float = 5.0,
        rng: Optional[random.Random] = None,
        channel: str = CHANNEL,
    ) -> None:
        super().__init__(channel, init_sync=init_sync, max_in_flight=max_in_flight)
        if sync_answer not in SYNC_ANSWER_MODES:
            raise ConfigurationError(f"sync_answer must be one of {', '.join(SYNC_ANSWER_MODES)}, not {sync_answer!r}")
        if default_timeout < 1:
            raise ConfigurationError("default_timeout must be at least 1 second")
        self.table = DialogTable(hash_size, h_id_start, h_id_step, rng)
        if self.table.size != hash_size:
            log.warn("dialog hash_size {size} is not a power of 2: {used} is used, as Kamailio does",
                     size=hash_size, used=self.table.size)
        self.profile_defs = Profiles(profiles_with_value, profiles_no_value)
        self.default_timeout = default_timeout
        self.early_timeout = early_timeout
        self.end_timeout = end_timeout
        self.sync_answer = sync_answer
        self.purge_interval = purge_interval
        self.applied: dict[str, int] = {a.name.lower(): 0 for a in Action}
        """Messages applied, by action name."""
        self.sent: dict[str, int] = {a.name.lower(): 0 for a in Action}
        """Messages sent (once per node), by action name."""
        self.refused: dict[int, int] = {}
        """Messages answered with an error, by code."""
        self.stale = 0
        """Backward state changes ignored."""
        self._puid_prefix = f"dlgp-{os.getpid():x}-{(rng or random).getrandbits(32):08x}"
        self._puids = 0

    def startService(self) -> None:  # noqa: N802
        """Start the sweep for dialogs that expired."""
        super().startService()
        self.link.every(self.purge_interval, self.purge)

    # -- reading ------------------------------------------------------------------------------

    def dialogs(self) -> list[Dialog]:
        """Every dialog (copies), in Kamailio's listing order."""
        return [d.copy() for d in self.table]

    def get(self, callid: str) -> Optional[Dialog]:
        """The newest dialog with ``callid`` (a copy), or ``None``."""
        found = self.table.by_callid(callid)
        return found[-1].copy() if found else None

    def get_by_id(self, h_entry: int, h_id: int) -> Optional[Dialog]:
        """The dialog ``h_entry:h_id`` (a copy), or ``None``."""
        dialog = self.table.get(h_entry, h_id)
        return dialog.copy() if dialog is not None else None

    def profile_size(self, name: str, value: Optional[str] = None) -> int:
        """
        The dialogs in profile ``name`` (with ``value`` only, when given), as
        Kamailio's ``get_profile_size`` counts them.

        :raises KeyError: for a profile not defined here.
        """
        return self.profile_defs.size(self.table, name, value)

    def status(self) -> dict[str, Any]:
        """``{"dialogs": N, "by_state": {"unconfirmed": n, "early": n, ...}}``."""
        counts = self.table.count_by_state()
        return {"dialogs": len(self.table), "by_state": {state.label: counts[state] for state in DialogState}}

    # -- changes made here --------------------------------------------------------------------

    def _own(self, ref: DialogRef) -> Dialog:
        key = ref.key if isinstance(ref, Dialog) else ref
        dialog = self.table.get(*key)
        if dialog is None:
            raise KeyError(f"no dialog {key[0]}:{key[1]}")
        return dialog

    def _link(self, name: str, value: Optional[str]) -> ProfileLink:
        if name not in self.profile_defs:
            raise ValueError(f"no dialog profile {name!r} is defined")
        if value is not None:
            check_text(value, "profile value")
        link = ProfileLink(name, value, self._next_puid())
        if not self.profile_defs.accepts(link):
            raise ValueError(f"dialog profile {name!r} {'takes no' if value is not None else 'needs a'} value")
        return link

    def _next_puid(self) -> str:
        self._puids += 1
        return f"{self._puid_prefix}-{self._puids}"

    def create(
        self,
        callid: str,
        from_uri: str,
        to_uri: str,
        req_uri: str,
        tag1: str,
        *,
        cseq1: str = "",
        route_set1: str = "",
        contact1: str = "",
        lifetime: Optional[int] = None,
        vars: Optional[dict[str, str]] = None,
        profiles: Iterable[tuple[str, Optional[str]]] = (),
    ) -> Dialog:
        """
        Make a dialog here, as a Kamailio node does on an INVITE (state 1,
        unconfirmed), and announce it to the cluster (an update).

        :param profiles: ``(name, value)`` pairs (value ``None`` for a profile
            without values); they are listed in this order.
        :returns: a copy of the dialog (its ``key`` names it later).
        :raises ValueError: for text with a NUL, an undefined profile, or a
            value where the profile takes none (and the reverse).
        """
        for text, what in ((callid, "callid"), (from_uri, "from_uri"), (to_uri, "to_uri"), (req_uri, "req_uri"),
                           (tag1, "tag1"), (cseq1, "cseq1"), (route_set1, "route_set1"), (contact1, "contact1")):
            check_text(text, what)
        if not callid:
            raise ValueError("a dialog needs a callid")
        links = [self._link(name, value) for name, value in profiles]
        for key, value in (vars or {}).items():
            check_text(key, "variable name")
            check_text(value, "variable value")
        now = self.link.now()
        dialog = self.table.new(callid, from_uri, to_uri, req_uri)
        dialog.init_ts = int(now)
        dialog.seen = now
        dialog.lifetime = self.default_timeout if lifetime is None else lifetime
        dialog.legs[CALLER].set(tag1, route_set1, contact1, cseq1)
        for key, value in (vars or {}).items():
            dialog.set_var(key, value)
        dialog.profiles = links
        self._changed(dialog, None)
        self._send(dialog, Action.UPDATE)
        return dialog.copy()

    def set_state(
        self,
        ref: DialogRef,
        state: Union[DialogState, int],
        *,
        tag2: Optional[str] = None,
        cseq2: str = "",
        route_set2: str = "",
        contact2: str = "",
        lifetime: Optional[int] = None,
    ) -> "Deferred[list[Outcome]]":
        """
        Move a dialog made here to a later ``state`` and replicate it as
        Kamailio does: states 2 and 4 as a state message, 3 not at all, 5 as a
        state message followed by a remove (the dialog is then gone here).
        ``tag2`` and the others set the callee's leg; ``lifetime`` the
        seconds a confirmed dialog lives.

        :returns: a Deferred firing with the ``(node, code)`` pairs.
        :raises KeyError: for an unknown dialog.
        :raises ValueError: for a state not after the current one, or a
            dialog another node made (its owner changes its state).
        """
        dialog = self._own(ref)
        new = DialogState(state)
        if not dialog.local:
            raise ValueError(f"dialog {dialog.h_entry}:{dialog.h_id} belongs to another node")
        if new <= dialog.state:
            raise ValueError(f"dialog {dialog.h_entry}:{dialog.h_id} is in state {int(dialog.state)} already")
        if tag2 is not None:
            for text, what in ((tag2, "tag2"), (cseq2, "cseq2"), (route_set2, "route_set2"), (contact2, "contact2")):
                check_text(text, what)
            dialog.legs[CALLEE].set(tag2, route_set2, contact2, cseq2)
        if lifetime is not None:
            if lifetime < 1:
                raise ValueError("lifetime must be at least 1 second")
            dialog.lifetime = lifetime
        return self._move(dialog, new)

    def _move(self, dialog: Dialog, new: DialogState) -> "Deferred[list[Outcome]]":
        now = self.link.now()
        old = dialog.state
        if new in (DialogState.CONFIRMED_NA, DialogState.CONFIRMED) and not dialog.start_ts:
            dialog.start_ts = int(now)
        if new is DialogState.CONFIRMED:
            dialog.expires = dialog.start_ts + dialog.lifetime
        if new is DialogState.DELETED:
            dialog.end_ts = int(now)
            dialog.expires = 0.0
        dialog.state = new
        self._changed(dialog, old)
        if new is DialogState.CONFIRMED_NA:
            return defer.succeed([])  # Kamailio does not replicate state 3
        sent = self._send(dialog, Action.STATE)
        if new is DialogState.DELETED:
            self._drop(dialog, None)
            removed = self._send(dialog, Action.REMOVE)
            sent = defer.gatherResults([sent, removed]).addCallback(lambda both: both[0] + both[1])
        return sent

    def set_var(self, ref: DialogRef, key: str, value: str) -> "Deferred[list[Outcome]]":
        """Set a dialog variable of a dialog made here and replicate the dialog (an update)."""
        dialog = self._own(ref)
        check_text(key, "variable name")
        check_text(value, "variable value")
        dialog.set_var(key, value)
        self._changed(dialog, dialog.state)
        return self._send(dialog, Action.UPDATE)

    def add_profile(self, ref: DialogRef, name: str, value: Optional[str] = None) -> "Deferred[list[Outcome]]":
        """Put a dialog made here in a profile (first in its list, as Kamailio links) and replicate it."""
        dialog = self._own(ref)
        dialog.profiles.insert(0, self._link(name, value))
        self._changed(dialog, dialog.state)
        return self._send(dialog, Action.UPDATE)

    def remove(self, ref: DialogRef) -> "Deferred[list[Outcome]]":
        """Forget a dialog here and tell the cluster (a remove, as Kamailio sends when it destroys one)."""
        dialog = self._own(ref)
        self._drop(dialog, None)
        return self._send(dialog, Action.REMOVE)

    # -- replication --------------------------------------------------------------------------

    def _send(self, dialog: Dialog, action: Action) -> "Deferred[list[Outcome]]":
        if action is Action.UPDATE:
            body = update_body(dialog)
        elif action is Action.STATE:
            body = state_body(dialog)
        else:
            body = remove_body(dialog)
        sent = self.replicate(GROUP, dialog.key, body)
        self.sent[action.name.lower()] += len(self.link.active_nodes()) if self.link.sending else 0
        return sent

    def _changed(self, dialog: Dialog, old: Optional[DialogState], origin: Optional[Node] = None) -> None:
        if self.listened:
            self.notify(DialogChange(dialog.copy(), old, dialog.state, origin))

    def _drop(self, dialog: Dialog, origin: Optional[Node]) -> None:
        if self.table.remove(dialog) and self.listened:
            self.notify(DialogChange(dialog.copy(), dialog.state, None, origin))

    # -- sync ---------------------------------------------------------------------------------

    def sync_request(self, scope: Optional[str]) -> bytes:
        """``{"action":4}``."""
        return sync_body()

    def request_sync(self, all_nodes: bool = False) -> "Deferred[list[Outcome]]":
        """Ask the cluster for every dialog again: one node at a time until one answers 200, or every node."""
        return self.ask_for_sync(None, "all" if all_nodes else "single")

    def _answer_sync(self, asker: Optional[Node]) -> None:
        """Every dialog as an update: to ``asker`` only, or (``None``) to every active node as Kamailio does."""
        dialogs = list(self.table)
        log.info("dialog sync: sending {count} dialog(s) to {whom}", count=len(dialogs),
                 whom="every node" if asker is None else str(asker.uri))
        for dialog in dialogs:
            body = update_body(dialog)
            if asker is None:
                self.replicate(GROUP, dialog.key, body)
                self.sent["update"] += len(self.link.active_nodes())
            else:
                self._outbox.send(asker, body, group=GROUP, key=dialog.key)
                self.sent["update"] += 1

    # -- inbound ------------------------------------------------------------------------------

    def handle_message(self, message: DMQMessage) -> None:
        """
        Apply one message as Kamailio's dialog module does.  Answers 200; 400
        for a body that is not JSON (or that Kamailio would misread); 500 for
        a state or remove of an unknown dialog, an update filed under another
        entry than its Call-ID's hash, or a state Kamailio does not take.
        """
        try:
            fields = parse_fields(parse_body(message.body))
            self._apply(fields, message)
        except PeerError as e:
            self.refused[e.code] = self.refused.get(e.code, 0) + 1
            log.debug("dialog message refused: {code} {reason}", code=e.code, reason=e.reason)
            raise

    def _apply(self, f: Fields, message: DMQMessage) -> None:
        try:
            action = Action(f.action)
        except ValueError:
            raise bad_request(f"unknown action {f.action}") from None
        origin = message.node
        dialog = self.table.get(f.h_entry, f.h_id)
        if action is Action.SYNC:
            self._answer_sync(requester(message) if self.sync_answer == "requester" else None)
        elif action is Action.REMOVE:
            if dialog is None:
                raise internal_error(f"dialog {f.h_entry}:{f.h_id} not found")
            self._drop(dialog, origin)
        elif action is Action.UPDATE:
            self._update(dialog, f, origin)
        elif action is Action.STATE:
            if dialog is None:
                raise internal_error(f"dialog {f.h_entry}:{f.h_id} not found")
            self._state(dialog, f, origin, dialog.state, touched=False)
        self.applied[action.name.lower()] += 1

    def _update(self, dialog: Optional[Dialog], f: Fields, origin: Optional[Node]) -> None:
        old: Optional[DialogState] = None
        if dialog is None:
            if f.callid is None:
                raise bad_request("update of an unknown dialog without callid")
            try:
                dialog = self.table.receive(
                    f.h_entry, f.h_id, f.callid, f.from_uri or "", f.to_uri or "", f.req_uri or ""
                )
            except ValueError as e:
                raise internal_error(str(e)) from None
            dialog.seen = self.link.now()
            dialog.legs[CALLER].set(*f.leg(CALLER))
        else:
            old = dialog.state
            dialog.profiles = []
        dialog.init_ts = f.init_ts
        dialog.start_ts = f.start_ts
        if f.lifetime > 0:
            dialog.lifetime = f.lifetime
        for key, value in f.vars.items():
            dialog.set_var(key, value)
        if f.profiles is not None:
            links = [link for link in parse_profiles(f.profiles) if self.profile_defs.accepts(link)]
            dialog.profiles = list(reversed(links))  # each one linked first, as Kamailio links
        if f.state == dialog.state:
            self._changed(dialog, old, origin)
            return
        self._state(dialog, f, origin, old, touched=True)

    def _state(
        self, dialog: Dialog, f: Fields, origin: Optional[Node], old: Optional[DialogState], touched: bool
    ) -> None:
        """Apply the state of ``f`` (``touched``: an update changed the dialog already)."""
        if f.state < dialog.state:
            self.stale += 1
            log.debug("dialog {h_entry}:{h_id}: state {new} after {state} ignored",
                      h_entry=dialog.h_entry, h_id=dialog.h_id, new=f.state, state=int(dialog.state))
            if touched:
                self._changed(dialog, old, origin)
            return
        now = self.link.now()
        if f.state in (DialogState.EARLY, DialogState.CONFIRMED):
            dialog.start_ts = f.start_ts
            if f.lifetime > 0:
                dialog.lifetime = f.lifetime
            if f.tag1:
                dialog.legs[CALLER].set(*f.leg(CALLER))
            if f.state == DialogState.CONFIRMED:
                if f.tag2:
                    dialog.legs[CALLEE].set(*f.leg(CALLEE))
                # Kamailio runs the timer from now; a dialog confirmed long ago (a sync) ends when its owner's does.
                dialog.expires = (dialog.start_ts or now) + dialog.lifetime
        elif f.state == DialogState.DELETED:
            dialog.profiles = []
            dialog.init_ts = int(now)
            dialog.expires = 0.0
            if not dialog.end_ts:
                dialog.end_ts = int(now)
        else:
            if touched:
                self._changed(dialog, old, origin)
            raise internal_error(f"dialog {dialog.h_entry}:{dialog.h_id}: unhandled state {f.state}")
        dialog.state = DialogState(f.state)
        self._changed(dialog, old, origin)

    # -- expiry -------------------------------------------------------------------------------

    def purge(self) -> int:
        """
        End what timed out, as Kamailio's timers do: a confirmed dialog past
        its lifetime ends (one made here is replicated as ended and removed),
        an unconfirmed or early one older than ``early_timeout`` is dropped,
        an ended one of another node older than ``end_timeout`` is dropped.
        Returns how many dialogs changed.
        """
        now = self.link.now()
        count = 0
        for dialog in list(self.table):
            state = dialog.state
            if state <= DialogState.EARLY:
                born = dialog.init_ts or dialog.seen
                if born < now - self.early_timeout:
                    log.info("dialog {callid} still in state {state} after {secs} s: dropped",
                             callid=one_line(dialog.callid, 80), state=int(state), secs=self.early_timeout)
                    self._drop(dialog, None)
                    if dialog.local:
                        self._send(dialog, Action.REMOVE)
                    count += 1
            elif state <= DialogState.CONFIRMED:
                if dialog.expires and now >= dialog.expires:
                    if dialog.local:
                        self._move(dialog, DialogState.DELETED)
                    else:
                        dialog.state = DialogState.DELETED
                        dialog.end_ts = int(now)
                        dialog.expires = 0.0
                        dialog.profiles = []
                        self._changed(dialog, state)
                    count += 1
            elif dialog.end_ts < now - self.end_timeout:
                self._drop(dialog, None)
                count += 1
        return count

    # -- RPC ----------------------------------------------------------------------------------

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        """The control methods, by Kamailio's names (see :class:`~dmq.peers.dialog.rpc.DialogRPC`)."""
        return DialogRPC(self).methods()
