"""A table-like peer built from the shared parts: the service link, replication, sync on join, snapshots, listeners (fake network, task.Clock)."""

from __future__ import annotations

import gc
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from dmq.errors import ConfigurationError
from dmq.sip.address import Address
from dmq.node import Node
from dmq.peer import DMQMessage
from dmq.replicated.peer import ReplicatedPeer
from dmq.replicated.sync import requester
from dmq.replicated.wire import Framing, bad_request, dumps, parse_object, wire_str
from dmq.testing import FakeCluster


class KVPeer(ReplicatedPeer):
    """A replicated dict of strings on channel "kv", as small as a peer built from the shared parts can be."""

    framing = Framing(b'{"items":[', b"]}")
    snapshot_format = "dmq-kv"

    def __init__(self, **kw: Any) -> None:
        super().__init__("kv", **kw)
        self.data: dict[str, str] = {}

    def put(self, key: str, value: str) -> "Deferred[list[tuple[Node, int]]]":
        self._store(key, value)
        return self.replicate("data", key, dumps({"action": "set", "k": key, "v": value}))

    def _store(self, key: str, value: str, origin: Optional[Node] = None) -> None:
        self.data[key] = value
        self.mark_changed()
        if self.listened:
            self.notify((key, value, origin))

    def sync_request(self, scope: Optional[str]) -> bytes:
        return dumps({"action": "sync"})

    def snapshot(self) -> dict[str, Any]:
        return {"format": self.snapshot_format, "items": dict(self.data)}

    def restore_snapshot(self, doc: dict[str, Any]) -> int:
        items = doc["items"]
        if not isinstance(items, dict):
            raise ValueError("items is not an object")
        self.data.update(items)
        return len(items)

    def handle_message(self, message: DMQMessage) -> None:
        doc = parse_object(message.body)
        if "items" in doc:
            for item in doc["items"]:
                for key, value in item.items():
                    self._store(key, value, message.node)
            return
        action = wire_str(doc, "action")
        if action == "sync":
            self.answer_sync(requester(message), list(self.data), self._render)
        elif action == "set":
            self._store(wire_str(doc, "k") or "", wire_str(doc, "v") or "", message.node)
        else:
            raise bad_request(f"unknown action {action!r}")

    def _render(self, key: str) -> Optional[bytes]:
        return dumps({key: self.data[key]}) if key in self.data else None


def add_kv(cluster: FakeCluster, port: int, seeds: tuple[int, ...] = (), start: bool = True, **kw: Any) -> KVPeer:
    """A node on ``port`` with a KVPeer (``kw`` go to the peer); the peer."""
    peer = KVPeer(**kw)
    cluster.add(port, seeds, start=start, peers=[peer])
    return peer


def kv_bodies(cluster: FakeCluster, port: int, to_port: Optional[int] = None) -> list[bytes]:
    """The bodies of the kv requests node ``port`` sent (to ``to_port`` only, when given)."""
    return [
        s.message.body
        for s in cluster.nodes[port].transport.sent
        if getattr(s.message, "method", None) == "KDMQ"
        and s.message.uri.user == "kv"
        and (to_port is None or s.address.port == to_port)
    ]


class ReplicatedPeerTests(SynchronousTestCase):
    """The life cycle a ReplicatedPeer gives its subclass."""

    def two(self, **kw: Any) -> tuple[FakeCluster, KVPeer, KVPeer]:
        """Two nodes that know each other, each with a KVPeer."""
        cluster = FakeCluster()
        first = add_kv(cluster, 5060, **kw)
        second = add_kv(cluster, 5061, (5060,), **kw)
        cluster.run(0.5)
        return cluster, first, second

    def test_configuration_errors(self) -> None:
        """An unknown init_sync, a window below 1 or a chunk size the empty frame fills are refused."""
        for kw in ({"init_sync": "often"}, {"max_in_flight": 0}, {"sync_window": 0}, {"sync_chunk_size": 12}):
            with self.assertRaises(ConfigurationError, msg=kw):
                KVPeer(**kw)
        self.assertIsNone(KVPeer().persist_path)
        self.assertEqual(KVPeer(persist_dir="/x").persist_path, Path("/x/kv.json"))

    def test_replicate_to_every_active_node(self) -> None:
        """A change goes to the active nodes, and its Deferred fires with each node's answer."""
        cluster, sender, receiver = self.two()
        d = sender.put("a", "1")
        self.assertNoResult(d)
        cluster.run(0.1)
        self.assertEqual([(node.port, code) for node, code in self.successResultOf(d)], [(5061, 200)])
        self.assertEqual(receiver.data, {"a": "1"})
        self.assertEqual(sender.replicated, 1)

    def test_outcomes_body_by_body_node_by_node(self) -> None:
        """A change of two bodies to three nodes, one of which does not answer: its Deferred fires once the last
        outcome is in, with each body's outcomes together and the nodes in the order of their keys, whatever
        the order the answers came in."""
        cluster = FakeCluster()
        sender = add_kv(cluster, 5060)
        for port in (5061, 5062, 5063):
            add_kv(cluster, port, (5060,))
        cluster.run(1)
        cluster.network.detach(Address("udp", "127.0.0.1", 5062))
        d = sender.replicate("data", "a", dumps({"action": "set", "k": "a", "v": "1"}),
                             dumps({"action": "set", "k": "a", "v": "2"}))
        cluster.run(1)
        self.assertNoResult(d)  # 5061 and 5063 have answered both
        cluster.run(70)  # 5062 times out on the first body, then on the second
        outcomes = [(node.port, code) for node, code in self.successResultOf(d)]
        self.assertEqual(outcomes, [(5061, 200), (5062, 408), (5063, 200)] * 2)

    def test_nothing_sent_when_not_running_or_alone(self) -> None:
        """Before the peer runs, or with no active node, a change is kept locally and its Deferred fires with no outcome."""
        cluster = FakeCluster()
        idle = add_kv(cluster, 5060, start=False)
        self.assertEqual(self.successResultOf(idle.put("a", "1")), [])
        alone = add_kv(cluster, 5062)
        cluster.run(0.1)
        self.assertEqual(self.successResultOf(alone.put("a", "1")), [])
        self.assertEqual((alone.data, alone.replicated), ({"a": "1"}, 0))

    def test_sync_on_join(self) -> None:
        """A joining node asks its seed once, and the seed's items come to it in paced chunks."""
        cluster = FakeCluster()
        first = add_kv(cluster, 5060, sync_chunk_size=1000)
        cluster.run(0.1)
        for i in range(200):
            first.data[f"key{i:03d}"] = "v" * 50
        joining = add_kv(cluster, 5061, (5060,))
        cluster.run(2)
        self.assertEqual(joining.data, first.data)
        asked = [body for body in kv_bodies(cluster, 5061, 5060) if body.startswith(b'{"action"')]
        self.assertEqual(asked, [b'{"action":"sync"}'])
        chunks = [body for body in kv_bodies(cluster, 5060, 5061) if body.startswith(b'{"items"')]
        self.assertGreater(len(chunks), 10)
        self.assertTrue(all(len(body) < 1000 for body in chunks))
        self.assertEqual(list(first.sync_chunk_sizes), [len(body) for body in chunks])
        self.assertEqual((first.in_flight, first.queued), (0, 0))

    def test_no_sync_with_init_sync_none(self) -> None:
        """With init_sync "none" the joining node asks nobody."""
        cluster = FakeCluster()
        add_kv(cluster, 5060)
        cluster.run(0.1)
        add_kv(cluster, 5061, (5060,), init_sync="none")
        cluster.run(1)
        self.assertNotIn(b'{"action":"sync"}', kv_bodies(cluster, 5061))
        self.assertIn(b'{"action":"sync"}', kv_bodies(cluster, 5060))  # the first node, made ready by the join, asks

    def test_stop_drops_what_is_queued(self) -> None:
        """Changes still queued when the peer stops are answered 503; what was in flight still gets its answer."""
        cluster, sender, _ = self.two(max_in_flight=1)
        results = [sender.put(f"k{i}", "v") for i in range(3)]
        self.assertEqual((sender.in_flight, sender.queued), (1, 2))
        sender.stopService()
        cluster.run(0.1)
        self.assertEqual([self.successResultOf(d)[0][1] for d in results], [200, 503, 503])

    def test_listeners(self) -> None:
        """Listeners get every change; one that raises is logged and the next still runs; a removed one gets nothing."""
        cluster, sender, receiver = self.two()
        seen: list[Any] = []

        def broken(change: Any) -> None:
            raise RuntimeError("listener bug")

        receiver.add_change_listener(broken)
        receiver.add_change_listener(seen.append)
        sender.put("a", "1")
        cluster.run(0.1)
        self.assertEqual([(key, value, origin.port) for key, value, origin in seen], [("a", "1", 5060)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        receiver.remove_change_listener(broken)
        receiver.remove_change_listener(seen.append)
        self.assertFalse(receiver.listened)


class PersistenceTests(SynchronousTestCase):
    """The snapshot a ReplicatedPeer keeps with persist_dir."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dmq-kv-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_saved_when_changed_and_at_stop_loaded_at_start(self) -> None:
        """Changes are written at the next check and at stop; a new peer on the folder has them at start."""
        cluster = FakeCluster()
        peer = add_kv(cluster, 5060, persist_dir=self.dir, persist_interval=1.0)
        cluster.run(2.5)
        self.assertFalse((self.dir / "kv.json").exists())
        peer.put("a", "1")
        cluster.run(1.0)
        self.assertEqual((self.dir / "kv.json").read_bytes(), b'{"format":"dmq-kv","items":{"a":"1"}}')
        peer.put("b", "2")
        cluster.nodes[5060].stopService()
        again = KVPeer(persist_dir=self.dir)
        self.assertEqual(again.load_snapshot(), 2)
        self.assertEqual(again.data, {"a": "1", "b": "2"})

    def test_save_snapshot_needs_a_folder(self) -> None:
        """save_snapshot without persist_dir is a RuntimeError; load_snapshot loads nothing."""
        with self.assertRaises(RuntimeError):
            KVPeer().save_snapshot()
        self.assertEqual(KVPeer().load_snapshot(), 0)


class ServiceLinkTests(SynchronousTestCase):
    """The link: the peer's one way to its service."""

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.peer = add_kv(self.cluster, 5060, init_sync="none")
        self.cluster.add(5061, (5060,))  # a node without the kv channel: it answers 404
        self.cluster.run(0.5)
        self.link = self.peer.link
        self.other = self.cluster.nodes[5060].nodes.get("sip:127.0.0.1:5061")
        assert self.other is not None

    def test_clock_and_nodes(self) -> None:
        """Time, the active nodes and the body limit come from the service."""
        self.cluster.clock.advance(12.3456)
        self.assertEqual(self.link.now(), self.cluster.clock.seconds())
        self.assertEqual(self.link.now_ms(), int(self.cluster.clock.seconds() * 1000))
        self.assertEqual([n.port for n in self.link.active_nodes()], [5061])
        self.assertEqual(self.link.max_body_size(), self.cluster.nodes[5060].max_body_size)
        self.assertTrue(self.link.sending)

    def test_refusals_warned_once_per_node_and_code(self) -> None:
        """A send answers the node's code; a refusal (404 here) is logged once however often it comes; the response hook sees each."""
        warnings: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_level") is not None and event["log_level"].name == "warn":
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        responded: list[Node] = []
        self.link._on_response = responded.append
        codes = [self.link.send(self.other, b"{}") for _ in range(3)]
        self.cluster.run(0.1)
        self.assertEqual([self.successResultOf(d) for d in codes], [404, 404, 404])
        self.assertEqual(len([w for w in warnings if "answered 404" in w]), 1)
        self.assertEqual(responded, [self.other] * 3)

    def test_failure_is_503(self) -> None:
        """A send that fails before any answer fires with 503 (logged), not with a failure."""
        def broken(*args: Any, **kw: Any) -> None:
            raise OSError("no route")

        self.patch(self.cluster.nodes[5060], "send_message_then", broken)
        self.assertEqual(self.successResultOf(self.link.send(self.other, b"{}")), 503)
        codes: list[int] = []
        self.link.send_then(self.other, b"{}", codes.append)
        self.assertEqual(codes, [503])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_loops(self) -> None:
        """every calls a function each interval on the service's clock, first after one interval; stop_loops ends them all."""
        calls: list[float] = []
        self.link.every(2.0, lambda: calls.append(self.link.now()))
        start = self.link.now()
        self.cluster.clock.pump([1.0] * 5)
        self.assertEqual(calls, [start + 2.0, start + 4.0])
        self.link.stop_loops()
        self.cluster.clock.pump([1.0] * 5)
        self.assertEqual(len(calls), 2)


class QueuedMemoryTests(SynchronousTestCase):
    """What a burst that outruns the nodes leaves queued: its size per change."""

    def queued_cost(self, nodes: int) -> float:
        """Bytes one change costs while queued for ``nodes`` nodes that do not answer (2,000 changes measured)."""
        import tracemalloc  # CPython's alone: PyPy has no _tracemalloc

        cluster = FakeCluster()
        sender = add_kv(cluster, 5060, max_in_flight=8)
        ports = range(5061, 5061 + nodes)
        for port in ports:
            add_kv(cluster, port, (5060,))
        cluster.run(1)
        self.assertEqual(len(sender.link.active_nodes()), nodes)
        for port in ports:
            cluster.network.detach(Address("udp", "127.0.0.1", port))
        keys = [f"key{i:05d}" for i in range(3000)]  # made before measuring: the caller's, not the queue's
        value = "v" * 32
        held = [sender.put(key, value) for key in keys[:1000]]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            held += [sender.put(key, value) for key in keys[1000:]]
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual((sender.in_flight, sender.queued), (8, 3000 * nodes - 8))
        self.assertEqual(len(held), 3000)
        return grown / 2000

    @pytest.mark.skipif(platform.python_implementation() != "CPython", reason="tracemalloc is CPython's")
    def test_a_queued_change_costs_little_and_a_reference_per_node(self) -> None:
        """A change queued for 4 nodes costs at most 600 bytes, its body and its Deferred included (1,040 with an
        item and an outcome object per node); each further node adds no more than a queue slot (8 bytes) and
        its share of the queue's blocks."""
        four, eight = self.queued_cost(4), self.queued_cost(8)
        self.assertLessEqual(four, 600)
        self.assertLessEqual((eight - four) / 4, 12)
