"""
The htable peer's control methods, by Kamailio's names and with its answers
(``htable.get``, ``htable.sets``, ... ``htable.dmqsync``).

Kamailio's htable RPC answers every fault with code 500 (a missing key on
delete with 404), counts a parameter of the wrong type as missing and
ignores extra parameters; so do these methods.  Where Kamailio quietly
stores garbage (a non-integer given to seti or setex), they refuse it.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from dmq.errors import RPCError
from dmq.hashing import core_case_hash
from dmq.peers.htable.table import HTable
from dmq.replicated.link import Outcome
from dmq.replicated.rpc import rpc_args, rpc_call

if TYPE_CHECKING:
    from dmq.peers.htable.peer import HTablePeer

__all__ = ["HTableRPC", "KAMAILIO_SLOTS"]

log = Logger()

KAMAILIO_SLOTS = 256
"""The slots of a Kamailio table of ``size=8`` (2**8), as ``htable.listTables`` shows them."""

SET = "Ok. Key set to new value."


class HTableRPC:
    """
    The ``htable.*`` methods of one peer.  Each takes positional parameters
    and raises :class:`~dmq.errors.RPCError` (500 for every fault, 404 for
    the missing key of ``htable.delete``).
    """

    def __init__(self, peer: "HTablePeer") -> None:
        self.peer = peer

    def methods(self) -> dict[str, Callable[..., Any]]:
        """Name -> callable, for :meth:`~dmq.peers.htable.HTablePeer.rpc_methods`."""
        return {
            "htable.get": self.get,
            "htable.sets": self.sets,
            "htable.seti": self.seti,
            "htable.setex": self.setex,
            "htable.setxs": self.setxs,
            "htable.setxi": self.setxi,
            "htable.delete": self.delete,
            "htable.dump": self.dump,
            "htable.listTables": self.list_tables,
            "htable.dmqsync": self.dmqsync,
        }

    def _table(self, name: str) -> HTable:
        table = self.peer.tables.get(name)
        if table is None:
            raise RPCError(500, "No such htable")
        return table

    def _set(self, name: str, key: str, value: Any, seconds: Optional[int] = None) -> str:
        rpc_call(self.peer.set, self._table(name).name, key, value, seconds)
        return SET

    def get(self, *params: Any) -> dict[str, Any]:
        """``htable.get TABLE KEY`` -> ``{"item": {"name", "value", "flags", "expire"}}``."""
        name, key = rpc_args(params, "ss", "htable name and key name")
        cell = self._table(name).lookup(key, self.peer.link.now())
        if cell is None:
            raise RPCError(500, "Key name doesn't exist in htable.")
        expire = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cell.expire)) if cell.expire else "NEVER"
        return {"item": {"name": key, "value": cell.value, "flags": cell.type, "expire": expire}}

    def sets(self, *params: Any) -> str:
        """``htable.sets TABLE KEY VALUE``: set a string value."""
        return self._set(*rpc_args(params, "ssv", "htable name, key name and value"))

    def seti(self, *params: Any) -> str:
        """``htable.seti TABLE KEY INT``: set an integer value."""
        return self._set(*rpc_args(params, "ssd", "htable name, key name and value"))

    def setex(self, *params: Any) -> str:
        """``htable.setex TABLE KEY SECS``: expire an item SECS from now."""
        name, key, seconds = rpc_args(params, "ssd", "htable name, item name and expire")
        rpc_call(self.peer.set_expire, self._table(name).name, key, seconds)
        return "Ok"

    def setxs(self, *params: Any) -> str:
        """``htable.setxs TABLE KEY VALUE SECS``: set a string value with its expiry."""
        return self._set(*rpc_args(params, "ssvd", "htable name, key name, value and expire"))

    def setxi(self, *params: Any) -> str:
        """``htable.setxi TABLE KEY INT SECS``: set an integer value with its expiry."""
        return self._set(*rpc_args(params, "ssdd", "htable name, key name, value and expire"))

    def delete(self, *params: Any) -> str:
        """``htable.delete TABLE KEY``: delete an item (replicated even if absent here; 404 then)."""
        name, key = rpc_args(params, "ss", "htable name & key name")
        table = self._table(name)
        existed = table.lookup(key, self.peer.link.now()) is not None
        rpc_call(self.peer.delete, table.name, key)
        if not existed:
            raise RPCError(404, "Key not found in htable.")
        return "Ok. Key deleted."

    def dump(self, *params: Any) -> list[dict[str, Any]]:
        """
        ``htable.dump TABLE`` -> Kamailio's shape: the non-empty slots in slot
        order, each item in the slot Kamailio files it under
        (``core_case_hash(name)`` over :data:`KAMAILIO_SLOTS` slots), items of a
        slot sorted by name: ``[{"entry": SLOT, "size": N, "slot": [{"name",
        "value", "type": "str"|"int", "expire": epoch s or 0}]}]``
        (``expire`` is dmq's own); ``[]`` when the table is empty.
        """
        if not params or not isinstance(params[0], str):
            raise RPCError(500, "No htable name given")
        table = self._table(params[0])
        slots: dict[int, list[dict[str, Any]]] = {}
        for key, cell in sorted(table.live(self.peer.link.now()), key=lambda item: item[0]):
            slots.setdefault(core_case_hash(key, size=KAMAILIO_SLOTS), []).append(
                {
                    "name": key,
                    "value": cell.value,
                    "type": "str" if isinstance(cell.value, str) else "int",
                    "expire": int(math.ceil(cell.expire)) if cell.expire else 0,
                }
            )
        return [{"entry": entry, "size": len(slot), "slot": slot} for entry, slot in sorted(slots.items())]

    def list_tables(self, *params: Any) -> list[dict[str, Any]]:
        """``htable.listTables`` -> one object per table, Kamailio's fields plus ``items``."""
        now = self.peer.link.now()
        return [
            {
                "name": t.name,
                "dbtable": "",
                "dbmode": 0,
                "expire": t.spec.expire,
                "updateexpire": 1,
                "size": KAMAILIO_SLOTS,
                "dmqreplicate": 1,
                "items": sum(1 for _ in t.live(now)),
            }
            for t in self.peer.tables.values()
        ]

    def dmqsync(self, *params: Any) -> str:
        """
        ``htable.dmqsync [TABLE]``: ask the cluster for its cells again (as
        ``init_sync`` says, one node by default).  Answers ``Ok`` once asked,
        as Kamailio 6.1 does; an unknown table is refused (Kamailio says Ok).
        """
        table = self._table(params[0]).name if params and isinstance(params[0], str) else None
        d = self.peer.request_sync(table, all_nodes=self.peer.init_sync == "all")

        def done(outcomes: list[Outcome]) -> None:
            if not any(code == 200 for _, code in outcomes):
                log.warn("htable.dmqsync: no node answered the sync request ({count} asked)", count=len(outcomes))

        d.addCallback(done)
        return "Ok"
