"""
The dialog peer's control methods, by Kamailio's names and in its shapes:
``dlg.list`` (every dialog, as Kamailio's ``dlg.list`` prints one) and
``dlg.profile_get_size PROFILE [VALUE]``.

Kamailio answers a profile it does not know with ``404 Profile not found:
NAME``, and so do these; a parameter given as a number counts as its text,
as Kamailio converts it.  Where Kamailio answers an empty object (no profile
name at all), these answer ``500 Invalid Parameters (...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from dmq.errors import RPCError
from dmq.peers.dialog.table import Dialog, DialogState, Leg

if TYPE_CHECKING:
    from dmq.peers.dialog.peer import DialogPeer

__all__ = ["DialogRPC", "dialog_entry", "DMQ_SYNCED"]

DMQ_SYNCED = 64
"""Kamailio's ``DLG_IFLAG_DMQ_SYNC``: the internal flag of a dialog replicated over DMQ (every one here)."""


def _leg(leg: Leg) -> dict[str, Optional[str]]:
    # A Kamailio dialog has no socket when it came over DMQ; here none has one.
    return {"tag": leg.tag, "contact": leg.contact, "cseq": leg.cseq, "route_set": leg.route_set, "socket": None}


def dialog_entry(dialog: Dialog, now: float) -> dict[str, Any]:
    """
    One dialog as Kamailio's ``dlg.list`` prints it: the same keys in the
    same order; ``ref`` is 1, ``dflags`` 0 and ``iflags`` 64 (replicated),
    the legs' ``socket`` ``null``; an ended dialog lists no profiles and no
    variables.
    """
    if dialog.end_ts:
        duration = dialog.end_ts - dialog.start_ts
    elif dialog.start_ts:
        duration = int(now) - dialog.start_ts
    else:
        duration = 0
    ended = dialog.state >= DialogState.DELETED
    profiles: list[Any] = []
    variables: list[dict[str, str]] = []
    if not ended:
        profiles = [link.name if link.value is None else {link.name: link.value} for link in dialog.profiles]
        variables = [{key: value} for key, value in dialog.vars_listed()]
    return {
        "h_entry": dialog.h_entry,
        "h_id": dialog.h_id,
        "ref": 1,
        "call-id": dialog.callid,
        "from_uri": dialog.from_uri,
        "to_uri": dialog.to_uri,
        "state": int(dialog.state),
        "start_ts": dialog.start_ts,
        "init_ts": dialog.init_ts,
        "end_ts": dialog.end_ts,
        "duration": duration,
        "timeout": int(dialog.expires),
        "lifetime": dialog.lifetime,
        "dflags": 0,
        "sflags": dialog.sflags,
        "iflags": DMQ_SYNCED,
        "caller": _leg(dialog.caller),
        "callee": _leg(dialog.callee),
        "profiles": profiles,
        "variables": variables,
    }


def _text(value: Any) -> Optional[str]:
    """A parameter as Kamailio's auto-converting scan reads a string: numbers as their text, else ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class DialogRPC:
    """The ``dlg.*`` methods of one peer; each takes positional parameters."""

    def __init__(self, peer: "DialogPeer") -> None:
        self.peer = peer

    def methods(self) -> dict[str, Callable[..., Any]]:
        """Name -> callable, for :meth:`~dmq.peers.dialog.DialogPeer.rpc_methods`."""
        return {"dlg.list": self.list, "dlg.profile_get_size": self.profile_get_size}

    def list(self, *params: Any) -> list[dict[str, Any]]:
        """``dlg.list`` -> every dialog (see :func:`dialog_entry`); parameters are ignored, as by Kamailio."""
        now = self.peer.link.now()
        return [dialog_entry(dialog, now) for dialog in self.peer.table]

    def profile_get_size(self, *params: Any) -> int:
        """``dlg.profile_get_size PROFILE [VALUE]`` -> the number of dialogs in the profile (with that value)."""
        name = _text(params[0]) if params else None
        if name is None:
            raise RPCError(500, "Invalid Parameters (a profile name is needed)")
        value = _text(params[1]) if len(params) > 1 else None
        try:
            return self.peer.profile_size(name, value)
        except KeyError:
            raise RPCError(404, f"Profile not found: {name}") from None
