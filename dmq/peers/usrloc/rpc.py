"""
The usrloc peer's control methods, by Kamailio's names and with its answers
(``ul.dump``, ``ul.lookup``, ``ul.rm``, ``ul.rm_contact``, ``ul.add``), as
Kamailio 5.6.3 and 6.1.4 give them (both alike).

Like Kamailio's usrloc RPC, every fault has code 500 but the misses of
``ul.rm_contact`` (404), a parameter of the wrong type counts as missing,
and an AoR given to a method is cut at ``@`` (unless ``use_domain``) and
lower-cased.  ``ul.dump`` lists the AoRs in the order of Kamailio's hash
table (1024 slots by ``core_hash``), so a dump reads like Kamailio's.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from dmq.errors import RPCError
from dmq.hashing import core_hash
from dmq.peers.usrloc.table import Q_UNSET, UINT_MAX, Contact
from dmq.replicated.rpc import rpc_args, rpc_call, rpc_int

if TYPE_CHECKING:
    from dmq.peers.usrloc.peer import UsrlocPeer

__all__ = ["UsrlocRPC", "SLOTS", "NOT_SET", "RPC_CALLID", "RPC_USER_AGENT", "contact_info"]

SLOTS = 1024
"""The slots of Kamailio's location table (usrloc's default ``hash_size`` 10), as ``ul.dump`` shows them."""

NOT_SET = "[not set]"
"""What ``ul.dump`` shows for an empty text field."""

RPC_CALLID = "dfjrewr12386fd6-343@kamailio.rpc"
"""The Call-ID Kamailio's ``ul.add`` gives its contacts (and so does this one)."""

RPC_USER_AGENT = "kamailio SIP Router - RPC Server"
"""The User-Agent Kamailio's ``ul.add`` gives its contacts."""

TABLE_AND_AOR = "table and AOR to lookup"


def _q_number(q: int) -> Any:
    """q as ``ul.dump`` prints it: -1 unset, else q/1000 (a whole number without a fraction)."""
    if q == Q_UNSET:
        return -1
    return q // 1000 if q % 1000 == 0 else q / 1000


def _expires(contact: Contact, now: int) -> Any:
    if contact.expires == 0:
        return "permanent"
    if now > contact.expires:
        return "expired"
    return contact.expires - now


def contact_info(contact: Contact, now: int) -> dict[str, Any]:
    """One contact as ``ul.dump`` and ``ul.lookup`` show it (``{"Contact": {...}}``'s inner object)."""
    return {
        "Address": contact.address,
        "Expires": _expires(contact, now),
        "Q": _q_number(contact.q),
        "Call-ID": contact.callid,
        "CSeq": contact.cseq,
        "User-Agent": contact.user_agent or NOT_SET,
        "Received": contact.received or NOT_SET,
        "Path": contact.path or NOT_SET,
        "State": "CS_NEW",
        "Flags": contact.flags,
        "CFlags": contact.cflags,
        "Socket": contact.sock or NOT_SET,
        "Methods": contact.methods,
        "Ruid": contact.ruid or NOT_SET,
        "Instance": contact.instance or NOT_SET,
        "Reg-Id": contact.reg_id,
        "Server-Id": contact.server_id,
        "Tcpconn-Id": -1,
        "Keepalive": 0,
        "Last-Keepalive": int(contact.updated),
        "KA-Roundtrip": 0,
        "Last-Modified": contact.last_modified,
    }


def _unsigned(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT_MAX:
        raise RPCError(500, "Not enough parameters or wrong format")
    return value


def _float(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RPCError(500, "Not enough parameters or wrong format")
    return float(value)


def _is_set(value: str) -> bool:
    """Kamailio's ``ul_rpc_is_param_set``: ``""``, ``"0"`` and ``"."`` mean not given."""
    return value not in ("", "0", ".")


class UsrlocRPC:
    """
    The ``ul.*`` methods of one peer.  Each takes positional parameters and
    raises :class:`~dmq.errors.RPCError` with Kamailio's code and text.
    """

    def __init__(self, peer: "UsrlocPeer") -> None:
        self.peer = peer

    def methods(self) -> dict[str, Callable[..., Any]]:
        """Name -> callable, for :meth:`~dmq.peers.usrloc.UsrlocPeer.rpc_methods`."""
        return {
            "ul.dump": self.dump,
            "ul.lookup": self.lookup,
            "ul.rm": self.rm,
            "ul.rm_contact": self.rm_contact,
            "ul.add": self.add,
        }

    def _now(self) -> int:
        return int(self.peer.link.now())

    def _table(self, name: str) -> None:
        if name != self.peer.domain:
            raise RPCError(500, "Domain table not found")

    def _aor(self, aor: str) -> str:
        """Kamailio's ``rpc_fix_aor``: cut at ``@`` (or require it with ``use_domain``), lower-case."""
        at = aor.find("@")
        if self.peer.use_domain:
            if at < 0:
                raise RPCError(500, "Domain missing in AOR")
        elif at >= 0:
            aor = aor[:at]
        return aor.lower()

    def dump(self, *params: Any) -> dict[str, Any]:
        """
        ``ul.dump [brief]`` -> ``{"Domains": [{"Domain": {"Domain", "Size",
        "AoRs": [{"Info": {"AoR", "HashID", "Contacts": [{"Contact": {...}}]}}],
        "Stats": {"Records", "Max-Slots"}}}]}``; with ``brief`` each AoR is
        ``{"AoR": aor}``.  Contacts expired but not yet swept show
        ``"Expires": "expired"``, as in Kamailio.
        """
        brief = bool(params) and params[0] == "brief"
        now = self._now()
        records = self.peer.location.records
        hashes = {aor: core_hash(aor) for aor in records}
        order = sorted(records, key=lambda aor: hashes[aor] & (SLOTS - 1))  # stable: slot, then arrival
        aors: list[dict[str, Any]] = []
        for aor in order:
            if brief:
                aors.append({"AoR": aor})
            else:
                contacts = [{"Contact": contact_info(c, now)} for c in records[aor]]
                aors.append({"Info": {"AoR": aor, "HashID": hashes[aor], "Contacts": contacts}})
        per_slot = Counter(h & (SLOTS - 1) for h in hashes.values())
        stats = {"Records": len(records), "Max-Slots": max(per_slot.values(), default=0)}
        domain = {"Domain": self.peer.domain, "Size": SLOTS, "AoRs": aors, "Stats": stats}
        return {"Domains": [{"Domain": domain}]}

    def lookup(self, *params: Any) -> dict[str, Any]:
        """``ul.lookup TABLE AOR`` -> ``{"AoR": aor, "Contacts": [{"Contact": {...}}]}`` (live contacts only)."""
        table, aor = rpc_args(params, "ss", TABLE_AND_AOR)
        self._table(table)
        aor = self._aor(aor)
        if aor not in self.peer.location.records:
            raise RPCError(500, "AOR not found in location table")
        now = self._now()
        contacts = [{"Contact": contact_info(c, now)} for c in self.peer.location.live(aor, now)]
        if not contacts:
            raise RPCError(500, "AOR has no contacts")
        return {"AoR": aor, "Contacts": contacts}

    def rm(self, *params: Any) -> dict[str, Any]:
        """``ul.rm TABLE AOR``: remove the AoR with every contact (replicated); ``{}``, also for an unknown AoR."""
        table, aor = rpc_args(params, "ss", TABLE_AND_AOR)
        self._table(table)
        aor = self._aor(aor)
        if self.peer.location.contacts(aor):
            self.peer.remove(aor)
        return {}

    def rm_contact(self, *params: Any) -> dict[str, Any]:
        """``ul.rm_contact TABLE AOR CONTACT``: remove one contact (replicated); 404 for a missing AoR or contact."""
        table, aor, address = rpc_args(params, "sss", "table, AOR and contact")
        self._table(table)
        aor = self._aor(aor)
        if aor not in self.peer.location.records:
            raise RPCError(404, "AOR not found")
        if self.peer.location.find_address(aor, address) is None:
            raise RPCError(404, "Contact not found")
        self.peer.remove(aor, address)
        return {}

    def add(self, *params: Any) -> dict[str, Any]:
        """
        ``ul.add TABLE AOR CONTACT EXPIRES Q PATH FLAGS CFLAGS METHODS
        [RECEIVED [SOCKET]]``: add or update a contact (replicated), with
        Kamailio's Call-ID, User-Agent and an ``ulcx-`` ruid; ``EXPIRES`` 0
        never expires; ``PATH``, ``RECEIVED``, ``SOCKET`` of ``0`` or ``.``
        are not given.
        """
        if len(params) < 9 or not all(isinstance(p, str) for p in (params[0], params[1], params[2], params[5])):
            raise RPCError(500, "Not enough parameters or wrong format")
        table, aor, address = params[0], params[1], params[2]
        expires, q, path = rpc_int(params[3]), _float(params[4]), params[5]
        flags, cflags, methods = _unsigned(params[6]), _unsigned(params[7]), _unsigned(params[8])
        extra = [p if isinstance(p, str) and _is_set(p) else "" for p in params[9:11]]
        received, sock = (extra + ["", ""])[:2]
        self._table(table)
        aor = self._aor(aor)
        rpc_call(
            self.peer.save,
            aor,
            address,
            expires,
            callid=RPC_CALLID,
            cseq=1,
            q=q if q >= 0 else None,
            ruid=self.peer.rpc_ruids.next(),
            path=path if _is_set(path) else "",
            received=received,
            user_agent=RPC_USER_AGENT,
            flags=flags,
            cflags=cflags,
            methods=methods,
            sock=sock or None,
        )
        return {}
