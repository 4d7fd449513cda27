"""
The ``htable`` peer: replicated key/value tables that share their data with
Kamailio's ``htable`` module (``enable_dmq=1``, tables with ``dmqreplicate=1``).

::

    peer = HTablePeer(tables=["bans:expire=600", "counters"], persist_dir="/var/lib/dmq")
    svc.register_peer(peer)
    peer.set("bans", "10.0.0.1", "flood")          # replicated to every active node
    peer.incr("counters", "calls")                  # replicated as the new value
    peer.get("bans", "10.0.0.1")                    # -> "flood"

The table logic is :class:`~dmq.peers.htable.table.HTable` (plain Python,
time passed in); :class:`HTablePeer` drives it from the network, the
service's clock, RPC and an optional snapshot file, with the parts every
table-like peer shares (:mod:`dmq.replicated`, :mod:`dmq.fanout`).  See
``docs/htable.md`` for the behaviour in full.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dmq.errors import ConfigurationError, one_line
from dmq.node import Node, NodeKey
from dmq.peer import DMQMessage, PeerError
from dmq.peers.htable.match import matcher
from dmq.peers.htable.rpc import HTableRPC
from dmq.peers.htable.table import (
    Cell,
    Change,
    HTable,
    HTableSpec,
    NoSuchTable,
    Value,
    check_key,
    check_seconds,
    check_value,
)
from dmq.peers.htable.wire import (
    BATCH,
    CELLS,
    CHANNEL,
    Action,
    batch_items,
    cell_items,
    cell_json,
    delete_body,
    expire_body,
    parse_action,
    parse_cell,
    parse_edit,
    refuses_last_modified,
    remove_body,
    set_body,
    sync_body,
)
from dmq.replicated.link import Outcome
from dmq.replicated.peer import ReplicatedPeer
from dmq.replicated.sync import SYNC_MODES, requester
from dmq.replicated.wire import bad_request, check_text, internal_error, parse_object

__all__ = ["HTablePeer", "INIT_SYNC_MODES", "ChangeListener", "TableSpecs"]

log = Logger()

INIT_SYNC_MODES = SYNC_MODES

ChangeListener = Callable[[Change], Any]
TableSpecs = Iterable[Union[str, HTableSpec]]


class HTablePeer(ReplicatedPeer):
    """
    Replicated tables on the ``htable`` channel, wire-compatible with
    Kamailio's htable module.

    Local changes (:meth:`set`, :meth:`incr`, :meth:`set_expire`,
    :meth:`delete`, :meth:`remove_matching`) apply at once and are sent to
    every active node; changes from other nodes are applied as they come.
    Change listeners (:meth:`add_change_listener`) get a :class:`Change`
    for every item that changes.
    When the node becomes ready it asks for a full sync (see
    ``init_sync``); it answers a sync request with its cells in messages
    that each fit a datagram, to the requester only.

    :param tables: the tables, each an :class:`HTableSpec` or its text
        (``"name"`` or ``"name:expire=SECS"``).
    :param persist_dir: keep the tables in ``persist_dir/<channel>.json``.
    :param last_modified: stamp writes with ``last_modified`` (epoch ms) on
        the wire and apply last-write-wins (no Kamailio release up to 6.1
        accepts it).  Incoming stamps are honoured either way.
    :param init_sync: ``"single"`` (default) asks one active node, ``"all"``
        every one as Kamailio does (every node answers with every cell),
        ``"none"`` nobody.
    :param purge_interval: seconds between sweeps of expired cells.
    :param tombstone_ttl: seconds a delete is remembered for last-write-wins.
    :param channel: the channel (Kamailio's ``dmq_peer_id``, default htable).

    ``persist_dir``, ``init_sync``, ``max_in_flight`` (besides, a node never
    has two changes of one item in flight), ``sync_window``,
    ``sync_chunk_size`` and ``persist_interval`` are those of
    :class:`~dmq.replicated.peer.ReplicatedPeer`.

    :ivar tables: name -> :class:`HTable`.
    """

    framing = CELLS
    batch_framing = BATCH
    snapshot_format = "dmq-htable"

    def __init__(
        self,
        tables: TableSpecs = (),
        persist_dir: Optional[Union[str, os.PathLike[str]]] = None,
        last_modified: bool = False,
        *,
        init_sync: str = "single",
        max_in_flight: int = 64,
        sync_window: int = 2,
        sync_chunk_size: Optional[int] = None,
        persist_interval: float = 1.0,
        purge_interval: float = 10.0,
        tombstone_ttl: float = 300.0,
        channel: str = CHANNEL,
    ) -> None:
        super().__init__(
            channel,
            persist_dir=persist_dir,
            init_sync=init_sync,
            max_in_flight=max_in_flight,
            sync_window=sync_window,
            sync_chunk_size=sync_chunk_size,
            persist_interval=persist_interval,
        )
        self.tables: dict[str, HTable] = {}
        for spec in tables:
            if not isinstance(spec, HTableSpec):
                spec = HTableSpec.parse(spec)
            if spec.name in self.tables:
                raise ConfigurationError(f"htable {spec.name!r} is given twice")
            self.tables[spec.name] = HTable(spec)
        self.last_modified = last_modified
        self.purge_interval = purge_interval
        self.tombstone_ttl = tombstone_ttl
        self._counts = dict.fromkeys(
            ("received", "applied", "rejected", "stale", "sync_chunks_received", "sync_cells_received"), 0
        )
        self._warned_versions: set[NodeKey] = set()

    @property
    def stats(self) -> dict[str, int]:
        """
        Counters: messages ``received``, ``applied``, ``rejected`` (400/500)
        and ``stale`` (dropped by last-write-wins); sync requests answered,
        chunks and cells received and sent; changes ``replicated``, messages
        that ``joined`` several of them for a dmq node, and changes
        ``not_queued`` (a node's queue was full); snapshots written.
        """
        return {
            **self._counts,
            "sync_requests": self._answers.requests,
            "sync_chunks_sent": self._answers.chunks_sent,
            "sync_cells_sent": self._answers.items_sent,
            "replicated": self.replicated,
            "joined": self.joined,
            "not_queued": self.not_queued,
            "snapshots": self._snapshot.writes if self._snapshot is not None else 0,
        }

    def startService(self) -> None:  # noqa: N802
        """Load the snapshot (before any sync can run), then start the expiry and snapshot loops."""
        super().startService()
        self.link.every(self.purge_interval, self.purge)

    def _changed(self, table: str, key: str, cell: Optional[Cell], origin: Optional[Node] = None) -> None:
        self.mark_changed()
        if self.listened:
            self.notify(Change(table, key, replace(cell) if cell is not None else None, origin))

    # -- reading ------------------------------------------------------------------------------

    def table(self, name: str) -> HTable:
        """The :class:`HTable` called ``name``; :class:`NoSuchTable` if there is none."""
        table = self.tables.get(name)
        if table is None:
            raise NoSuchTable(name)
        return table

    def get(self, table: str, key: str, default: Any = None) -> Any:
        """The value of ``key`` in ``table``, or ``default`` when it is absent or expired."""
        cell = self.table(table).lookup(key, self.link.now())
        return default if cell is None else cell.value

    def cell(self, table: str, key: str) -> Optional[Cell]:
        """A copy of the live cell ``key`` (value, expiry, timestamp), or ``None``."""
        cell = self.table(table).lookup(key, self.link.now())
        return replace(cell) if cell is not None else None

    def dump(self, table: str) -> dict[str, Value]:
        """Every live item of ``table`` as ``{name: value}``."""
        return {key: cell.value for key, cell in self.table(table).live(self.link.now())}

    def cells(self, table: str) -> dict[str, Cell]:
        """Every live item of ``table`` as ``{name: Cell}`` (copies)."""
        return {key: replace(cell) for key, cell in self.table(table).live(self.link.now())}

    # -- writing ------------------------------------------------------------------------------

    def set(self, table: str, key: str, value: Value, expire: Optional[int] = None) -> "Deferred[list[Outcome]]":
        """
        Set ``key`` to ``value`` (a str or a 32-bit int) and replicate it.

        :param expire: seconds until it expires; by default the table's
            expire (a later set starts it afresh).  Given, it is replicated
            as a second message (a set, then an expire, as Kamailio's
            ``htable.setxs`` does).
        :returns: a Deferred firing, once every active node answered, with
            ``(node, status code)`` pairs (408 for a timeout); it never fails.
        :raises NoSuchTable: for an unknown table.
        :raises ValueError, TypeError: for a value Kamailio cannot hold.
        """
        t = self.table(table)
        check_key(key)
        check_value(value)
        if expire is not None:
            check_seconds(expire)
        now = self.link.now()
        lm = t.stamp(key, self.link.now_ms()) if self.last_modified else 0
        absolute = None if expire is None else (now + expire if expire > 0 else 0.0)
        cell = t.set(key, value, now, expire=absolute, last_modified=lm, lww=self.last_modified)
        self._changed(table, key, cell)
        bodies = [set_body(table, key, value, lm)]
        if expire is not None:
            bodies.append(expire_body(table, key, expire))
        return self.replicate(table, key, *bodies)

    def incr(self, table: str, key: str, delta: int = 1) -> int:
        """
        Add ``delta`` to the integer ``key`` (a missing or expired item counts
        as 0), replicate the new value (as Kamailio does for ``$shtinc``),
        and return it.

        :raises ValueError: when the item holds a string or the result
            leaves the 32-bit range.
        """
        t = self.table(table)
        check_key(key)
        cell = t.lookup(key, self.link.now())
        if cell is not None and not isinstance(cell.value, int):
            raise ValueError(f"{table}[{key!r}] holds a string, not an integer")
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError("delta must be an int")
        value = (cell.value if cell is not None else 0) + delta  # type: ignore[operator]
        check_value(value)
        self.set(table, key, value)
        return value

    def set_expire(self, table: str, key: str, seconds: int) -> "Deferred[list[Outcome]]":
        """
        Make ``key`` expire ``seconds`` from now (0: never) and replicate
        that (relative seconds, as on the wire).  Applies to every table
        (Kamailio applies it only to tables with ``autoexpire``).
        """
        t = self.table(table)
        check_key(key)
        check_seconds(seconds)
        cell = t.set_expire(key, seconds, self.link.now())
        if cell is not None:
            self._changed(table, key, cell)
        return self.replicate(table, key, expire_body(table, key, seconds))

    def delete(self, table: str, key: str) -> "Deferred[list[Outcome]]":
        """Delete ``key`` and replicate the delete (sent even when absent here, as Kamailio does)."""
        t = self.table(table)
        check_key(key)
        lm = t.stamp(key, self.link.now_ms()) if self.last_modified else 0
        live = t.lookup(key, self.link.now()) is not None
        t.delete(key, last_modified=lm, lww=self.last_modified)
        if live:
            self._changed(table, key, None)
        return self.replicate(table, key, delete_body(table, key, lm))

    def remove_matching(
        self,
        table: str,
        *,
        regex: Optional[str] = None,
        prefix: Optional[str] = None,
        by_value: bool = False,
    ) -> "Deferred[list[Outcome]]":
        """
        Remove the items whose name (or, ``by_value``, string value) matches
        ``regex`` (POSIX extended, case-insensitive, unanchored: Kamailio's
        ``sht_rm_name_re``) or starts with ``prefix``; give exactly one.
        Replicated as action 5 or 6.

        :raises ValueError: for an empty pattern, a bad regex, or not
            exactly one of ``regex`` and ``prefix``.
        """
        t = self.table(table)
        if regex is not None and prefix is None:
            action, pattern = Action.RM_CELL_RE, regex
        elif prefix is not None and regex is None:
            action, pattern = Action.RM_CELL_SW, prefix
        else:
            raise ValueError("give exactly one of regex and prefix")
        check_text(pattern, "pattern")
        match = matcher(action, pattern, by_value)
        now = self.link.now()
        lm = self.link.now_ms() if self.last_modified else 0
        for key, cell in t.remove_matching(match, last_modified=lm, lww=self.last_modified):
            if not cell.expired(now):
                self._changed(table, key, None)
        return self.replicate(table, None, remove_body(table, action, pattern, by_value, lm))

    # -- replication --------------------------------------------------------------------------

    def on_response(self, node: Node) -> None:
        """Warn once per node when it runs a Kamailio release that refuses ``last_modified``."""
        if not self.last_modified:
            return
        if not refuses_last_modified(node.agent) or node.key in self._warned_versions:
            return
        self._warned_versions.add(node.key)
        log.warn(
            "node {uri} runs {agent}, which answers 400 to every htable change carrying last_modified "
            "(no Kamailio release up to 6.1 knows it): turn last_modified off in this cluster",
            uri=str(node.uri),
            agent=node.agent,
        )

    # -- sync -------------------------------------------------------------------------------

    def request_sync(self, table: Optional[str] = None, all_nodes: bool = False) -> "Deferred[list[Outcome]]":
        """
        Ask for the cluster's cells: ``{"action":1}`` (with ``htname`` for
        one ``table``) to every active node (``all_nodes``) or to one node
        at a time, seeds first, until one answers 200.  The cells arrive
        later as separate messages.  Fires with the ``(node, code)`` pairs
        of the requests sent (none when no node is active).
        """
        if table is not None:
            self.table(table)
        return self.ask_for_sync(table, "all" if all_nodes else "single")

    def sync_request(self, scope: Optional[str]) -> bytes:
        """``{"action":1}``, with ``htname`` when ``scope`` names a table."""
        return sync_body(scope)

    def _answer_sync(self, node: Node, table: Optional[str]) -> "Deferred[int]":
        """Send the live cells (of ``table`` only, when given) to ``node``, in chunks, paced."""
        if table is None:
            tables = list(self.tables.values())
        else:
            # An unknown table gets the empty answer (there must be one).
            tables = [self.tables[table]] if table in self.tables else []
        now = self.link.now()
        items = [(t.name, key) for t in tables for key, _ in t.live(now)]
        return self.answer_sync(node, items, self._cell_json)

    def _cell_json(self, item: tuple[str, str]) -> Optional[bytes]:
        name, key = item
        table = self.tables.get(name)
        cell = table.lookup(key, self.link.now()) if table is not None else None
        return cell_json(name, key, cell, self.last_modified) if cell is not None else None

    # -- inbound ----------------------------------------------------------------------------

    def handle_message(self, message: DMQMessage) -> None:
        """
        Apply one message: an action object, a ``{"cells":[...]}`` sync
        answer, or a ``{"batch":[...]}`` of changes from a dmq node.
        Answers 200 (with no body); 400 with the reason for a malformed
        body; 500 for an unknown table or a remove that cannot run.  A batch
        is applied change by change, a bad one skipped; its answer is the
        first refusal, if any.
        """
        self._counts["received"] += 1
        try:
            doc = parse_object(message.body)
            if "action" in doc:
                self._apply_action(doc, message)
            elif "cells" in doc:
                self._apply_cells(cell_items(doc), message.node)
            elif "batch" in doc:
                self._apply_batch(batch_items(doc), message)
            else:
                self._apply_action(doc, message)
        except PeerError as e:
            self._counts["rejected"] += 1
            log.debug("htable message refused: {code} {reason}", code=e.code, reason=e.reason)
            raise
        return None

    def _apply_batch(self, items: list[Any], message: DMQMessage) -> None:
        refusal: Optional[PeerError] = None
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise bad_request("a batch item is not an object")
                self._apply_action(item, message, batched=True)
            except PeerError as e:
                log.debug("htable batch item {index} refused: {code} {reason}", index=index, code=e.code, reason=e.reason)
                if refusal is None:
                    refusal = e
        if refusal is not None:
            raise refusal

    def _apply_action(self, doc: dict[str, Any], message: DMQMessage, batched: bool = False) -> None:
        action, htname = parse_action(doc)
        if action is Action.SYNC:
            if batched:
                raise bad_request("a sync request in a batch")
            self._answer_sync(requester(message), htname or None)
            return
        if action is Action.NONE:
            raise bad_request("action 0 (none)")
        if not htname:
            raise bad_request("no htname")
        table = self.tables.get(htname)
        if table is None:
            raise internal_error(f"no table {one_line(htname, 80)!r}")
        edit = parse_edit(action, doc)
        lm = edit.last_modified
        lww = bool(lm) or self.last_modified
        origin = message.node
        now = self.link.now()
        if action is Action.SET_CELL:
            changed = table.set(edit.cname, edit.value, now, last_modified=lm, lww=lww)
            if changed is None:
                self._counts["stale"] += 1
                return
            self._changed(htname, edit.cname, changed, origin)
        elif action is Action.SET_CELL_EXPIRE:
            changed = table.set_expire(edit.cname, edit.seconds, now)
            if changed is not None:
                self._changed(htname, edit.cname, changed, origin)
        elif action is Action.DEL_CELL:
            live = table.lookup(edit.cname, now) is not None
            if table.delete(edit.cname, last_modified=lm, lww=lww) is None and live:
                self._counts["stale"] += 1
                return
            if live:
                self._changed(htname, edit.cname, None, origin)
        else:
            try:
                match = matcher(action, edit.pattern, edit.by_value)
            except ValueError as e:
                raise internal_error(one_line(str(e), 80)) from None
            for key, cell in table.remove_matching(match, last_modified=lm, lww=lww):
                if not cell.expired(now):
                    self._changed(htname, key, None, origin)
        self._counts["applied"] += 1

    def _apply_cells(self, cells: list[Any], origin: Optional[Node]) -> None:
        self._counts["sync_chunks_received"] += 1
        now = self.link.now()
        skipped = 0
        for item in cells:
            # Like Kamailio: a bad cell is skipped, the others still apply.
            try:
                record = parse_cell(item)
            except PeerError:
                skipped += 1
                continue
            table = self.tables.get(record.htname)
            if table is None:
                skipped += 1
                continue
            if record.expire and record.expire <= now:
                continue  # expired on the way
            expire = float(record.expire) if record.expire else None
            lm = record.last_modified
            cell = table.set(record.cname, record.value, now, expire=expire, last_modified=lm, lww=bool(lm))
            if cell is None:
                self._counts["stale"] += 1
                continue
            self._counts["sync_cells_received"] += 1
            self._changed(record.htname, record.cname, cell, origin)
        if skipped:
            log.debug("htable sync: {count} cell(s) skipped (bad or unknown table)", count=skipped)

    # -- expiry and persistence ------------------------------------------------------------

    def purge(self) -> int:
        """Drop expired cells (and old tombstones) now; return how many cells went."""
        now = self.link.now()
        count = 0
        for table in self.tables.values():
            for key, _ in table.purge(now):
                count += 1
                self._changed(table.name, key, None)
            table.prune_tombstones(int((now - self.tombstone_ttl) * 1000))
        return count

    def snapshot(self) -> dict[str, Any]:
        """
        The tables as a JSON-able snapshot (what :meth:`save_snapshot`
        writes): per table its live cells as rows ``[name, value, expire,
        last_modified]`` (the value a JSON string or integer, the expiry in
        epoch seconds, 0 for never) and its tombstones ``{name: ms}``.
        """
        now = self.link.now()
        tables = {table.name: table.snapshot(now) for table in self.tables.values()}
        return {"format": self.snapshot_format, "version": 1, "saved": now, "tables": tables}

    def restore_snapshot(self, doc: dict[str, Any]) -> int:
        """
        Put back the cells and tombstones of a :meth:`snapshot` document;
        return the number of cells loaded.  Expired cells and tables no
        longer configured are skipped.
        """
        tables = doc.get("tables")
        if not isinstance(tables, dict):
            raise ValueError("no tables")
        now = self.link.now()
        loaded = 0
        for name, content in tables.items():
            table = self.tables.get(name)
            if table is None:
                log.info("htable snapshot: table {name} is no longer configured", name=name)
                continue
            for key, cell in table.restore(content, now):
                loaded += 1
                self._changed(name, key, cell)
        return loaded

    # -- RPC ----------------------------------------------------------------------------------

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        """The control methods, by Kamailio's names (see :class:`~dmq.peers.htable.rpc.HTableRPC`)."""
        return HTableRPC(self).methods()

    def status(self) -> dict[str, Any]:
        """A summary for the status page: the live items of each table."""
        now = self.link.now()
        return {"tables": {name: sum(1 for _ in table.live(now)) for name, table in self.tables.items()}}
