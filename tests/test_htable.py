"""The htable peer: table logic, Kamailio's JSON both ways, sync, convergence, persistence, RPC (fake network, task.Clock)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dmq import DMQService, NodeStatus
from dmq.errors import ConfigurationError, RPCError
from dmq.interfaces import IPeer
from dmq.node import Node
from dmq.peer import PeerResponse
from dmq.peers import Cell, Change, HTablePeer, HTableSpec, NoSuchTable
from dmq.peers.htable import HTable, compile_posix_regex
from dmq.sip.address import Address
from dmq.sip.message import Request, Response
from dmq.sip.parse import parse_message
from dmq.testing import FakeCluster, FakeSIPTransport

CAPTURES = Path(__file__).parent / "data" / "captures"
EPOCH = 1_700_000_000.0


def capture(name: str) -> bytes:
    """The exact bytes of a Kamailio 5.6.3 capture."""
    return (CAPTURES / name).read_bytes()


def htable_requests(svc: DMQService, port: Optional[int] = None) -> list[Request]:
    """Every KDMQ on the htable channel ``svc`` sent (to ``port`` only, when given)."""
    found = []
    for sent in svc.transport.sent:
        message = sent.message
        if isinstance(message, Request) and message.method == "KDMQ" and message.uri.user == "htable":
            if port is None or sent.address.port == port:
                found.append(message)
    return found


def bodies(svc: DMQService, port: Optional[int] = None) -> list[bytes]:
    """The bodies of :func:`htable_requests`."""
    return [m.body for m in htable_requests(svc, port)]


class Cluster(FakeCluster):
    """Python nodes on 127.0.0.1, each with an HTablePeer, on one fake network and one clock at epoch time."""

    def __init__(self) -> None:
        clock = Clock()
        clock.advance(EPOCH)
        super().__init__(clock)
        self.svcs = self.nodes
        self.peers: dict[int, HTablePeer] = {}

    def add(  # type: ignore[override]
        self,
        port: int,
        seeds: Iterable[int] = (),
        tables: Iterable[str] = ("t",),
        start: bool = True,
        peer: bool = True,
        svc_kw: Optional[dict[str, Any]] = None,
        **peer_kw: Any,
    ) -> HTablePeer:
        svc = super().add(port, seeds, start=False, **(svc_kw or {}))
        p = HTablePeer(tables=list(tables), **peer_kw)
        if peer:
            svc.register_peer(p)
            self.peers[port] = p
        if start:
            svc.startService()
        return p

    def run(self, seconds: float, step: float = 0.005) -> None:
        """Advance the clock in small steps so messages and timers interleave."""
        super().run(seconds, step)

    def stop(self, port: int) -> None:
        """Stop a node's service (a graceful stop: it says it leaves)."""
        self.svcs[port].stopService()
        self.network.detach(Address("udp", "127.0.0.1", port))


def lone_node(port: int = 5172, **peer_kw: Any) -> tuple[Cluster, HTablePeer]:
    """One started node that knows no other."""
    cluster = Cluster()
    peer = cluster.add(port, **peer_kw)
    cluster.run(0.05)
    return cluster, peer


def kdmq(body: bytes, to_port: int = 5172, from_port: int = 5171) -> bytes:
    """A KDMQ on the htable channel as Kamailio sends it."""
    head = (
        f"KDMQ sip:htable@127.0.0.1:{to_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        f"To: <sip:htable@127.0.0.1:{to_port}>\r\n"
        f"From: <sip:htable@127.0.0.1:{from_port}>;tag=abc\r\n"
        f"CSeq: 10 KDMQ\r\nCall-ID: {os.urandom(6).hex()}@127.0.0.1\r\n"
        f"Max-Forwards: 1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def deliver(svc: DMQService, data: bytes, from_port: int = 5171) -> Response:
    """Hand ``data`` to ``svc`` as if from 127.0.0.1:``from_port``; return the response it sent."""
    before = len(svc.transport.sent)
    svc.transport.receive(data, Address("udp", "127.0.0.1", from_port))
    answers = [s.message for s in svc.transport.sent[before:] if isinstance(s.message, Response)]
    assert len(answers) == 1, answers
    return answers[0]


def process(peer: HTablePeer, body: Any) -> PeerResponse:
    """Run ``body`` (bytes, or an object to encode) through the peer; return its answer."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    svc = peer.service
    assert svc is not None
    d = svc.process_message("htable", body, "application/json")
    result: list[PeerResponse] = []
    d.addCallback(result.append)
    assert result, "the peer did not answer at once"
    return result[0]


class SpecTests(SynchronousTestCase):
    """HTableSpec.parse and the peer's configuration checks."""

    def test_parse_plain_and_expire(self) -> None:
        """'t' has no expiry; 't:expire=100' expires after 100 s; both print back as given."""
        self.assertEqual(HTableSpec.parse("t"), HTableSpec("t", 0))
        self.assertEqual(HTableSpec.parse(" bans:expire=100 "), HTableSpec("bans", 100))
        self.assertEqual(str(HTableSpec.parse("t:expire=100")), "t:expire=100")
        self.assertEqual(str(HTableSpec.parse("t")), "t")

    def test_parse_errors(self) -> None:
        """Bad names, unknown options and bad numbers are ConfigurationErrors (ValueErrors) that say what is wrong."""
        for text in ("", ":expire=1", "t:foo=1", "t:expire=x", "t:expire=-1", "a b", "t:expire"):
            with self.assertRaises(ConfigurationError, msg=text) as caught:
                HTableSpec.parse(text)
            self.assertIsInstance(caught.exception, ValueError)
        with self.assertRaises(ConfigurationError) as caught:
            HTableSpec.parse("t:ttl=5")
        self.assertIn("ttl", str(caught.exception))

    def test_peer_configuration_errors(self) -> None:
        """A table given twice or an unknown init_sync mode is refused; specs may be text or HTableSpec."""
        with self.assertRaises(ConfigurationError):
            HTablePeer(tables=["t", "t:expire=5"])
        with self.assertRaises(ConfigurationError):
            HTablePeer(tables=["t"], init_sync="sometimes")
        peer = HTablePeer(tables=["a:expire=7", HTableSpec("b")])
        self.assertEqual([t.spec for t in peer.tables.values()], [HTableSpec("a", 7), HTableSpec("b", 0)])
        self.assertEqual(peer.channel, "htable")

    def test_interface(self) -> None:
        """The peer provides IPeer."""
        verifyObject(IPeer, HTablePeer(tables=["t"]))


class HTableTests(SynchronousTestCase):
    """The pure table: expiry and last-write-wins."""

    def test_default_expire_and_reset(self) -> None:
        """A set gets the table's expiry, a later set starts it afresh, and an expired cell is invisible until purged."""
        table = HTable(HTableSpec("t", 10))
        table.set("a", "x", 100.0)
        self.assertEqual(table.lookup("a", 100.0).expire, 110.0)  # type: ignore[union-attr]
        table.set("a", "y", 105.0)
        self.assertEqual(table.lookup("a", 114.0).value, "y")  # type: ignore[union-attr]
        self.assertIsNone(table.lookup("a", 115.0))
        self.assertEqual(list(table.live(115.0)), [])
        self.assertEqual([k for k, _ in table.purge(115.0)], ["a"])
        self.assertEqual(table.cells, {})

    def test_set_expire(self) -> None:
        """set_expire sets an absolute expiry from a relative one; 0 means never; an absent key is left alone."""
        table = HTable(HTableSpec("t"))
        table.set("a", 1, 100.0)
        self.assertEqual(table.lookup("a", 100.0).expire, 0.0)  # type: ignore[union-attr]
        table.set_expire("a", 30, 100.0)
        self.assertEqual(table.lookup("a", 100.0).expire, 130.0)  # type: ignore[union-attr]
        table.set_expire("a", 0, 101.0)
        self.assertIsNotNone(table.lookup("a", 10_000.0))
        self.assertIsNone(table.set_expire("missing", 5, 100.0))
        self.assertNotIn("missing", table.cells)

    def test_last_write_wins(self) -> None:
        """A stamped write older than the held one is dropped; a newer one applies; the same stamp keeps the greater value everywhere."""
        table = HTable(HTableSpec("t"))
        table.set("k", "new", 0.0, last_modified=2000, lww=True)
        self.assertIsNone(table.set("k", "old", 0.0, last_modified=1000, lww=True))
        self.assertEqual(table.cells["k"].value, "new")
        table.set("k", "newer", 0.0, last_modified=3000, lww=True)
        self.assertEqual(table.cells["k"].value, "newer")
        # a tie is broken by value, whatever the order of arrival
        a, b = HTable(HTableSpec("t")), HTable(HTableSpec("t"))
        a.set("k", "x", 0.0, last_modified=5000, lww=True)
        a.set("k", "y", 0.0, last_modified=5000, lww=True)
        b.set("k", "y", 0.0, last_modified=5000, lww=True)
        b.set("k", "x", 0.0, last_modified=5000, lww=True)
        self.assertEqual(a.cells["k"].value, "y")
        self.assertEqual(b.cells["k"].value, "y")

    def test_tombstones(self) -> None:
        """A delete newer than a write wins over that write arriving late; an older delete leaves a newer write alone."""
        table = HTable(HTableSpec("t"))
        table.set("k", 1, 0.0, last_modified=1000, lww=True)
        table.delete("k", last_modified=2000, lww=True)
        self.assertIsNone(table.set("k", 2, 0.0, last_modified=1500, lww=True))
        self.assertNotIn("k", table.cells)
        table.set("k", 3, 0.0, last_modified=2500, lww=True)
        self.assertIsNone(table.delete("k", last_modified=2200, lww=True))
        self.assertEqual(table.cells["k"].value, 3)
        self.assertEqual(table.stamp("k", 100), 2501)
        table.delete("k", last_modified=3000, lww=True)
        self.assertEqual(table.prune_tombstones(3001), 1)
        self.assertEqual(table.tombstones, {})

    def test_posix_regex(self) -> None:
        """Patterns behave like Kamailio's regcomp: case-insensitive, unanchored, POSIX classes known; bad ones raise ValueError."""
        self.assertTrue(compile_posix_regex("^ab").search("ABc"))
        self.assertTrue(compile_posix_regex("[[:digit:]]+$").search("call-42"))
        self.assertFalse(compile_posix_regex("^[[:digit:]]").search("x1"))
        for bad in ("", "(unclosed"):
            with self.assertRaises(ValueError):
                compile_posix_regex(bad)


class OutboundTests(SynchronousTestCase):
    """What the peer sends: Kamailio 5.6's exact JSON, to active nodes only, paced."""

    def setUp(self) -> None:
        self.cluster = Cluster()
        self.a = self.cluster.add(5060, tables=["t", "x:expire=60"])
        self.cluster.add(5061, seeds=(5060,), tables=["t", "x:expire=60"])
        self.cluster.run(0.2)
        self.svc = self.cluster.svcs[5060]
        self.svc.transport.clear()

    def test_set_string_matches_kamailio_capture(self) -> None:
        """A string set sends exactly the body Kamailio 5.6.3 sends for htable.sets, as application/json."""
        self.a.set("t", "a", "hello")
        [request] = htable_requests(self.svc, 5061)
        kamailio = parse_message(capture("req-KDMQ-htable-action2.sip"))
        self.assertEqual(request.body, kamailio.body)
        self.assertEqual(request.content_type, "application/json")
        self.assertEqual(request.max_forwards, 1)

    def test_every_action_body(self) -> None:
        """Integers, expiries, deletes and removes are sent with Kamailio's keys and nothing else."""
        self.a.set("t", "n", 42)
        self.a.set_expire("t", "a", 100)
        self.a.delete("t", "n")
        self.a.remove_matching("t", regex="^se", by_value=False)
        self.a.remove_matching("t", prefix="ban", by_value=True)
        self.a.set("t", "s", "v", expire=30)
        self.cluster.run(0.1)
        self.assertEqual(
            bodies(self.svc, 5061),
            [
                b'{"action":2,"htname":"t","cname":"n","type":0,"intval":42,"mode":1}',
                parse_message(capture("req-KDMQ-htable-action3.sip")).body,
                b'{"action":4,"htname":"t","cname":"n","mode":0}',
                b'{"action":5,"htname":"t","type":2,"strval":"^se","mode":0}',
                b'{"action":6,"htname":"t","type":2,"strval":"ban","mode":1}',
                b'{"action":2,"htname":"t","cname":"s","type":2,"strval":"v","mode":1}',
                b'{"action":3,"htname":"t","cname":"s","type":0,"intval":30,"mode":0}',
            ],
        )

    def test_incr_replicates_new_value(self) -> None:
        """incr returns the new value and replicates it as a plain integer set."""
        self.assertEqual(self.a.incr("t", "calls"), 1)
        self.assertEqual(self.a.incr("t", "calls", 5), 6)
        self.cluster.run(0.1)
        self.assertEqual(
            bodies(self.svc, 5061)[-1], b'{"action":2,"htname":"t","cname":"calls","type":0,"intval":6,"mode":1}'
        )

    def test_no_last_modified_unless_enabled(self) -> None:
        """Without the option no message carries last_modified; with it, sets, deletes and removes carry the clock's epoch ms."""
        self.a.set("t", "k", "v")
        self.a.delete("t", "k")
        self.cluster.run(0.1)
        self.assertFalse(any(b"last_modified" in b for b in bodies(self.svc)))
        self.a.last_modified = True
        now_ms = int(self.cluster.clock.seconds() * 1000)
        self.a.set("t", "k", "v")
        self.a.delete("t", "k")
        self.a.remove_matching("t", prefix="z")
        self.cluster.run(0.1)
        stamped = [json.loads(b) for b in bodies(self.svc, 5061)[2:]]
        self.assertEqual([d["action"] for d in stamped], [2, 4, 6])
        self.assertEqual(stamped[0]["last_modified"], now_ms)
        self.assertGreater(stamped[1]["last_modified"], stamped[0]["last_modified"])

    def test_warns_once_per_kamailio_node_that_refuses_last_modified(self) -> None:
        """With last_modified on, a node whose Server names a Kamailio release up to 6.1 draws one warning, however many sets."""
        from twisted.logger import formatEvent, globalLogPublisher

        warnings: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            text = formatEvent(event)
            if "last_modified" in text:
                warnings.append(text)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.a.last_modified = True
        self.a.set("t", "k", "v")
        self.cluster.run(0.1)
        self.assertEqual(warnings, [])  # a dmq node
        self.cluster.svcs[5061].dispatcher.server = "kamailio (6.1.4 (x86_64/linux))"
        for i in range(3):
            self.a.set("t", f"k{i}", i)
        self.cluster.run(0.1)
        self.assertEqual(self.svc.nodes.get("sip:127.0.0.1:5061").agent, "kamailio (6.1.4 (x86_64/linux))")  # type: ignore[union-attr]
        self.assertEqual(len(warnings), 1)
        self.assertIn("sip:127.0.0.1:5061 runs kamailio (6.1.4 (x86_64/linux))", warnings[0])

    def test_only_active_nodes(self) -> None:
        """A node that is not active gets no replication; with no active node nothing is sent and the Deferred fires empty."""
        other = self.svc.nodes.get("sip:127.0.0.1:5061")
        assert other is not None
        other.status = NodeStatus.DISABLED
        result = self.successResultOf(self.a.set("t", "k", "v"))
        self.assertEqual(result, [])
        self.assertEqual(bodies(self.svc), [])

    def test_replication_outcomes(self) -> None:
        """The set's Deferred fires with each node's answer code once the nodes answered."""
        d = self.a.set("t", "k", "v")
        self.assertNoResult(d)
        self.cluster.run(0.05)
        [(node, code)] = self.successResultOf(d)
        self.assertEqual((node.port, code), (5061, 200))
        self.assertEqual(self.cluster.peers[5061].get("t", "k"), "v")

    def test_pacing(self) -> None:
        """With max_in_flight=3, a burst of 20 sets has at most 3 messages unanswered at a time, and all arrive."""
        self.a._outbox.window = 3
        receiver = self.cluster.peers[5061]
        for i in range(20):
            self.a.set("t", f"k{i}", i)
        self.assertEqual(len(htable_requests(self.svc)), 3)
        self.assertEqual(self.a.in_flight, 3)
        self.assertEqual(self.a.queued, 17)
        peak = 0
        for _ in range(200):
            self.cluster.clock.advance(0.001)
            peak = max(peak, self.a.in_flight)
        self.assertEqual(peak, 3)
        self.assertEqual(receiver.dump("t"), {f"k{i}": i for i in range(20)})

    def test_one_change_per_item_in_flight(self) -> None:
        """Changes to one item go one at a time per node (Kamailio's workers may reorder concurrent ones); other items overtake."""
        receiver = self.cluster.peers[5061]
        seen: list[Any] = []
        receiver.add_change_listener(lambda change: seen.append(change.cell.value if change.cell else None))
        for i in range(10):
            self.a.set("t", "hot", i)
        self.a.set("t", "cold", "c")
        self.assertEqual(bodies(self.svc, 5061), [
            b'{"action":2,"htname":"t","cname":"hot","type":0,"intval":0,"mode":1}',
            b'{"action":2,"htname":"t","cname":"cold","type":2,"strval":"c","mode":1}',
        ])
        self.a.remove_matching("t", prefix="h")  # a whole-table change waits for the table, and holds it
        self.a.set("t", "after", 1)
        self.cluster.run(0.5)
        self.assertEqual(seen, [0, "c", *range(1, 10), None, 1])
        self.assertEqual(receiver.dump("t"), {"cold": "c", "after": 1})

    def test_a_backlog_to_a_dmq_node_goes_joined(self) -> None:
        """A burst of sets to a dmq node goes partly as {"batch":[...]} messages of the very bodies a set sends
        alone, each within a datagram; the receiver ends with every value, and each set learns its answer."""
        receiver = self.cluster.peers[5061]
        results = [self.a.set("t", f"k{i}", "v" * 40 + str(i)) for i in range(200)]
        self.cluster.run(0.5)
        self.assertEqual(receiver.dump("t"), {f"k{i}": "v" * 40 + str(i) for i in range(200)})
        self.assertEqual({code for d in results for _, code in self.successResultOf(d)}, {200})
        sent = bodies(self.svc, 5061)
        joined = [json.loads(body)["batch"] for body in sent if body.startswith(b'{"batch":[')]
        self.assertEqual(len(joined), self.a.stats["joined"])
        self.assertGreater(len(joined), 3)
        self.assertLess(len(sent), 100)
        self.assertLessEqual(max(map(len, sent)), self.svc.max_body_size)
        singles = {body for body in sent if not body.startswith(b'{"batch":[')}
        items = {json.dumps(item, separators=(",", ":")).encode() for batch in joined for item in batch}
        self.assertEqual(len(items) + len(singles), 200)
        self.assertIn(b'{"action":2,"htname":"t","cname":"k199","type":2,"strval":"' + b"v" * 40 + b'199","mode":1}',
                      items | singles)

    def test_only_dmq_nodes_take_batches(self) -> None:
        """Joined messages go to nodes whose Server / User-Agent is dmq's, never to Kamailio nor to an unknown node."""
        def node(agent: Optional[str]) -> Node:
            node = Node("127.0.0.1", 5070)
            node.note_agent(agent)
            return node

        self.assertTrue(self.a.takes_batches(node("dmq/0.1.0")))
        self.assertFalse(self.a.takes_batches(node("kamailio (5.6.3 (x86_64/linux))")))
        self.assertFalse(self.a.takes_batches(node(None)))
        listed = self.svc.nodes.get("sip:127.0.0.1:5061")
        assert listed is not None
        self.assertTrue(self.a.takes_batches(listed))

    def test_api_errors(self) -> None:
        """Values Kamailio cannot hold, unknown tables and bad patterns raise at once and send nothing."""
        with self.assertRaises(NoSuchTable):
            self.a.set("nope", "k", "v")
        with self.assertRaises(TypeError):
            self.a.set("t", "k", 1.5)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            self.a.set("t", "k", True)
        with self.assertRaises(ValueError):
            self.a.set("t", "k", 2**31)
        with self.assertRaises(ValueError):
            self.a.set("t", "k", "a\x00b")
        with self.assertRaises(ValueError):
            self.a.set("t", "", "v")
        with self.assertRaises(ValueError):
            self.a.remove_matching("t", regex="a", prefix="b")
        with self.assertRaises(ValueError):
            self.a.remove_matching("t", regex="(")
        self.a.set("t", "s", "text")
        self.svc.transport.clear()
        with self.assertRaises(ValueError):
            self.a.incr("t", "s")
        self.assertEqual(bodies(self.svc), [])


class InboundTests(SynchronousTestCase):
    """What the peer accepts: Kamailio's messages, and what it answers."""

    def setUp(self) -> None:
        self.cluster, self.peer = lone_node(5172, tables=["t", "e:expire=50"])
        self.svc = self.cluster.svcs[5172]

    def test_kamailio_set_capture(self) -> None:
        """Kamailio's captured set is applied and answered 200 with an empty body."""
        response = deliver(self.svc, capture("req-KDMQ-htable-action2.sip"))
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertEqual(self.peer.get("t", "a"), "hello")

    def test_kamailio_expire_capture(self) -> None:
        """Kamailio's captured expire (relative 100 s) gives the cell an absolute expiry of now + 100."""
        self.peer.set("t", "a", "hello")
        response = deliver(self.svc, capture("req-KDMQ-htable-action3.sip"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.peer.cell("t", "a").expire, self.cluster.clock.seconds() + 100)  # type: ignore[union-attr]
        self.cluster.run(100.01, step=0.5)
        self.assertIsNone(self.peer.get("t", "a"))

    def test_kamailio_sync_request_capture(self) -> None:
        """Kamailio's captured sync request is answered 200, then {"cells":[]} goes to the requester (known only by its From)."""
        response = deliver(self.svc, capture("req-KDMQ-htable-action1.sip"))
        self.assertEqual((response.code, response.body), (200, b""))
        [answer] = htable_requests(self.svc)
        self.assertEqual(answer.body, b'{"cells":[]}')
        self.assertEqual(answer.body, parse_message(capture("req-KDMQ-htable-cells.sip")).body)
        self.assertEqual((answer.uri.host, answer.uri.port), ("127.0.0.1", 5171))

    def test_kamailio_cells_capture(self) -> None:
        """Kamailio's captured empty sync answer is accepted with 200 and changes nothing."""
        self.peer.set("t", "k", 1)
        response = deliver(self.svc, capture("req-KDMQ-htable-cells.sip"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.peer.dump("t"), {"k": 1})

    def test_every_action(self) -> None:
        """Actions 2-8 apply: int and string sets, expire, delete, and removes by regex, prefix, suffix, substring on names or values."""
        def send(doc: dict[str, Any]) -> None:
            self.assertEqual(process(self.peer, doc).code, 200, doc)

        for key, value in {"ab1": "x", "ab2": "y", "cd": "ban-me", "ef": 7, "gh": "keep", "zz": "end!", "q": "in-side"}.items():
            typed = {"type": 2, "strval": value} if isinstance(value, str) else {"type": 0, "intval": value}
            send({"action": 2, "htname": "t", "cname": key, **typed, "mode": 1})
        self.assertEqual(self.peer.get("t", "ef"), 7)
        send({"action": 5, "htname": "t", "type": 2, "strval": "^AB", "mode": 0})  # regex on names, any case
        send({"action": 6, "htname": "t", "type": 2, "strval": "ban", "mode": 1})  # prefix of values
        send({"action": 7, "htname": "t", "type": 2, "strval": "!", "mode": 1})  # suffix of values
        send({"action": 8, "htname": "t", "type": 2, "strval": "-si", "mode": 1})  # substring of values
        send({"action": 6, "htname": "t", "type": 2, "strval": "7", "mode": 1})  # ints never match by value
        self.assertEqual(self.peer.dump("t"), {"ef": 7, "gh": "keep"})
        send({"action": 3, "htname": "t", "cname": "gh", "type": 0, "intval": 20, "mode": 0})
        self.assertEqual(self.peer.cell("t", "gh").expire, self.cluster.clock.seconds() + 20)  # type: ignore[union-attr]
        send({"action": 4, "htname": "t", "cname": "ef", "mode": 0})
        self.assertEqual(self.peer.dump("t"), {"gh": "keep"})

    def test_table_expire_applies_to_remote_sets(self) -> None:
        """A remote set into a table with expire=50 lives 50 s, like Kamailio's autoexpire."""
        process(self.peer, {"action": 2, "htname": "e", "cname": "k", "type": 2, "strval": "v", "mode": 1})
        self.cluster.run(49.5, step=0.5)
        self.assertEqual(self.peer.get("e", "k"), "v")
        self.cluster.run(1.0, step=0.5)
        self.assertIsNone(self.peer.get("e", "k"))

    def test_unknown_keys_tolerated(self) -> None:
        """Keys the peer does not know (6.x additions) do not stop a message from applying."""
        answer = process(self.peer, {"action": 2, "htname": "t", "cname": "k", "type": 0, "intval": 1, "mode": 1, "future": [1]})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.peer.get("t", "k"), 1)

    def test_malformed_bodies_are_400(self) -> None:
        """Each malformed body is answered 400 with a reason naming the problem, and nothing changes."""
        cases: list[tuple[bytes, str]] = [
            (b"", "empty body"),
            (b"{not json", "invalid JSON"),
            (b"\xff\xfe", "not UTF-8"),
            (b"[1,2]", "not a JSON object"),
            (b'"x"', "not a JSON object"),
            (b"{}", "empty JSON object"),
            (b'{"htname":"t"}', "no action"),
            (b'{"action":"2"}', "action is not a number"),
            (b'{"action":9,"htname":"t"}', "unknown action 9"),
            (b'{"action":0,"htname":"t"}', "action 0"),
            (b'{"action":2,"cname":"k","type":0,"intval":1}', "no htname"),
            (b'{"action":2,"htname":"t","type":0,"intval":1}', "no cname"),
            (b'{"action":2,"htname":"t","cname":5,"type":0,"intval":1}', "cname is not a string"),
            (b'{"action":2,"htname":"t","cname":"k","type":2}', "without strval"),
            (b'{"action":2,"htname":"t","cname":"k","type":0}', "without intval"),
            (b'{"action":2,"htname":"t","cname":"k","type":0,"intval":1.5}', "not a whole number"),
            (b'{"action":2,"htname":"t","cname":"k","type":0,"intval":true}', "not a number"),
            (b'{"action":2,"htname":"t","cname":"k","type":0,"intval":99999999999}', "32-bit"),
            (b'{"action":3,"htname":"t","cname":"k","mode":0}', "without intval"),
            (b'{"action":5,"htname":"t","type":2,"mode":0}', "without strval"),
            (b'{"cells":{"a":1}}', "cells is not a list"),
            (b'{"batch":[]}', "batch is not a non-empty list"),
            (b'{"batch":{"a":1}}', "batch is not a non-empty list"),
            (b'{"batch":[{"action":1}]}', "a sync request in a batch"),
            (b'{"batch":[7]}', "a batch item is not an object"),
            (b'{"action":2,"htname":"t","cname":"k","type":2,"strval":"\\ud800"}', "not valid UTF-8"),
        ]
        for body, reason in cases:
            answer = process(self.peer, body)
            self.assertEqual(answer.code, 400, body)
            assert answer.reason is not None
            self.assertTrue(answer.reason.startswith("Bad Request ("), answer.reason)
            self.assertIn(reason, answer.reason, body)
        self.assertEqual(self.peer.dump("t"), {})
        self.assertEqual(self.peer.stats["rejected"], len(cases))

    def test_a_batch_applies_each_change_in_order(self) -> None:
        """A dmq node's {"batch":[...]} is applied change by change, in order, and answered 200 as one message."""
        seen: list[Any] = []
        self.peer.add_change_listener(lambda c: seen.append((c.key, c.cell.value if c.cell else None)))
        batch = {"batch": [
            {"action": 2, "htname": "t", "cname": "a", "type": 2, "strval": "one", "mode": 1},
            {"action": 2, "htname": "t", "cname": "b", "type": 0, "intval": 2, "mode": 1},
            {"action": 3, "htname": "t", "cname": "a", "type": 0, "intval": 30, "mode": 0},
            {"action": 4, "htname": "t", "cname": "b", "mode": 0},
            {"action": 2, "htname": "t", "cname": "c", "type": 2, "strval": "three", "mode": 1},
        ]}
        response = deliver(self.svc, kdmq(json.dumps(batch).encode()))
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertEqual(self.peer.dump("t"), {"a": "one", "c": "three"})
        self.assertAlmostEqual(self.peer.cell("t", "a").expire, self.cluster.clock.seconds() + 30)  # type: ignore[union-attr]
        self.assertEqual(seen, [("a", "one"), ("b", 2), ("a", "one"), ("b", None), ("c", "three")])
        self.assertEqual((self.peer.stats["received"], self.peer.stats["applied"]), (1, 5))

    def test_a_batch_answers_its_first_refusal_and_applies_the_rest(self) -> None:
        """A bad change in a batch does not stop the others; the answer is the first refusal, with its reason."""
        batch = {"batch": [
            {"action": 2, "htname": "t", "cname": "a", "type": 2, "strval": "kept", "mode": 1},
            {"action": 2, "htname": "nope", "cname": "k", "type": 0, "intval": 1, "mode": 1},
            {"action": 2, "htname": "t", "type": 0, "intval": 1},
            "not an object",
            {"action": 2, "htname": "t", "cname": "z", "type": 0, "intval": 26, "mode": 1},
        ]}
        answer = process(self.peer, batch)
        self.assertEqual(answer.code, 500)
        self.assertIn("no table 'nope'", answer.reason or "")
        self.assertEqual(self.peer.dump("t"), {"a": "kept", "z": 26})
        self.assertEqual((self.peer.stats["applied"], self.peer.stats["rejected"]), (2, 1))

    def test_failures_are_500(self) -> None:
        """An unknown table or a remove that cannot run is answered 500, as Kamailio does."""
        for doc in (
            {"action": 2, "htname": "nope", "cname": "k", "type": 0, "intval": 1, "mode": 1},
            {"action": 5, "htname": "t", "type": 2, "strval": "(", "mode": 0},
            {"action": 6, "htname": "t", "type": 2, "strval": "", "mode": 0},
        ):
            answer = process(self.peer, doc)
            self.assertEqual(answer.code, 500, doc)
            self.assertTrue((answer.reason or "").startswith("Server Internal Error ("), answer.reason)

    def test_400_over_the_wire(self) -> None:
        """A malformed KDMQ from the network gets a 400 response with the reason and an empty body."""
        response = deliver(self.svc, kdmq(b"{}"))
        self.assertEqual((response.code, response.body), (400, b""))
        self.assertIn("empty JSON object", response.reason)

    def test_nul_cuts_strings_like_kamailio(self) -> None:
        """A string with a NUL is cut there, as Kamailio's strlen() does."""
        process(self.peer, {"action": 2, "htname": "t", "cname": "k\u0000x", "type": 2, "strval": "ab\u0000cd", "mode": 1})
        self.assertEqual(self.peer.dump("t"), {"k": "ab"})

    def test_incoming_last_modified_honoured(self) -> None:
        """A stamped set older than the held cell's stamp is ignored; a newer one applies."""
        base = {"action": 2, "htname": "t", "cname": "k", "type": 2, "mode": 1}
        process(self.peer, {**base, "strval": "second", "last_modified": 2000})
        process(self.peer, {**base, "strval": "first", "last_modified": 1000})
        self.assertEqual(self.peer.get("t", "k"), "second")
        self.assertEqual(self.peer.stats["stale"], 1)
        process(self.peer, {**base, "strval": "third", "last_modified": 3000})
        self.assertEqual(self.peer.get("t", "k"), "third")

    def test_sync_cells(self) -> None:
        """Sync cells set values with absolute expiries; expired, malformed and unknown-table cells are skipped, the rest apply."""
        now = int(self.cluster.clock.seconds())
        cells = [
            {"htname": "t", "cname": "s", "type": 2, "strval": "v", "expire": now + 30},
            {"htname": "t", "cname": "i", "type": 0, "intval": -5, "expire": 0},
            {"htname": "t", "cname": "old", "type": 2, "strval": "gone", "expire": now - 1},
            {"htname": "t", "cname": "bad", "type": 2},
            {"htname": "other", "cname": "x", "type": 0, "intval": 1, "expire": 0},
            "junk",
            {"htname": "e", "cname": "d", "type": 0, "intval": 1, "expire": 0},
            {"htname": "t", "cname": "lm", "type": 0, "intval": 1, "expire": 0, "last_modified": 5},
        ]
        self.assertEqual(process(self.peer, {"cells": cells}).code, 200)
        self.assertEqual(self.peer.dump("t"), {"s": "v", "i": -5, "lm": 1})
        self.assertEqual(self.peer.cell("t", "s").expire, now + 30)  # type: ignore[union-attr]
        self.assertEqual(self.peer.cell("t", "i").expire, 0)  # type: ignore[union-attr]
        # no expiry in a table with a default gets the default, as in Kamailio
        self.assertEqual(self.peer.cell("e", "d").expire, self.cluster.clock.seconds() + 50)  # type: ignore[union-attr]
        self.assertEqual(self.peer.cell("t", "lm").last_modified, 5)  # type: ignore[union-attr]

    def test_change_listener(self) -> None:
        """Listeners see remote changes with their origin, local ones without, and expiry as a removal."""
        changes: list[Change] = []
        self.peer.add_change_listener(changes.append)
        deliver(self.svc, capture("req-KDMQ-htable-action2.sip"))
        self.peer.set("t", "b", 1, expire=5)
        self.cluster.run(11, step=0.5)  # the purge loop runs every 10 s
        self.assertEqual([(c.key, c.cell.value if c.cell else None) for c in changes], [("a", "hello"), ("b", 1), ("b", None)])
        self.assertIsNone(changes[1].origin)
        self.assertEqual(self.peer.cells("t"), {"a": Cell("hello", 0.0, 0)})


class SyncTests(SynchronousTestCase):
    """Sync on join and sync answers: one request, chunks below 60,000 bytes, to the requester only, paced."""

    def fill(self, peer: HTablePeer, count: int, expire: Optional[int] = None) -> None:
        for i in range(count):
            value: Any = i if i % 3 == 0 else f"value-{i:06d}-" + "x" * 40
            peer.set("t", f"key-{i:06d}", value, expire=expire if i % 2 else None)

    def test_join_asks_one_node_and_gets_everything(self) -> None:
        """A node joining a 2-node cluster holding > 60 KB asks its seed only, once, and ends with an equal table and expiries."""
        cluster = Cluster()
        a = cluster.add(5060)
        cluster.run(0.1)
        self.fill(a, 2500, expire=300)
        b = cluster.add(5061, seeds=(5060,))
        cluster.run(2)
        self.assertEqual(b.dump("t"), a.dump("t"))
        answered_before = len(a.sync_chunk_sizes)
        b_requests = b.stats["sync_requests"]
        cluster.svcs[5060].transport.clear()
        c = cluster.add(5062, seeds=(5060,))
        cluster.run(3)
        requests = [json.loads(body) for body in bodies(cluster.svcs[5062]) if b'"action"' in body]
        self.assertEqual(requests, [{"action": 1}])
        self.assertEqual([m.uri.port for m in htable_requests(cluster.svcs[5062])], [5060])
        self.assertEqual(c.dump("t"), a.dump("t"))
        expected = {k: v.expire for k, v in a.cells("t").items()}
        got = {k: v.expire for k, v in c.cells("t").items()}
        self.assertEqual(got.keys(), expected.keys())
        for key in expected:
            self.assertLessEqual(abs(got[key] - expected[key]), 1, key)
        # the answer: several chunks, each below the limit, to 5062 only
        sizes = list(a.sync_chunk_sizes)[answered_before:]
        limit = cluster.svcs[5060].max_body_size
        self.assertLess(limit, 32000 - 1000)
        self.assertGreater(len(sizes), 1)
        self.assertTrue(all(size < limit for size in sizes), max(sizes))
        self.assertTrue(all(size > limit - 200 for size in sizes[:-1]), sizes)
        cells_to_b = [b for b in bodies(cluster.svcs[5060], 5061) if b.startswith(b'{"cells"')]
        self.assertEqual(cells_to_b, [])
        self.assertEqual(b.stats["sync_requests"], b_requests)
        self.assertEqual(a.stats["sync_cells_sent"], 2 * 2500)  # to b, then to c

    def test_sync_answer_is_paced(self) -> None:
        """A big sync answer never has more than sync_window messages unanswered."""
        cluster = Cluster()
        a = cluster.add(5060, sync_window=2)
        cluster.run(0.1)
        self.fill(a, 4000)
        b = cluster.add(5061, seeds=(5060,))
        peak = 0
        for _ in range(3000):
            cluster.clock.advance(0.001)
            peak = max(peak, a._answers.in_flight)
        self.assertEqual(peak, 2)
        self.assertGreater(a.stats["sync_chunks_sent"], 3)
        self.assertEqual(len(b.dump("t")), 4000)

    def test_empty_table_answers_one_empty_chunk(self) -> None:
        """An empty node answers a sync with exactly one {"cells":[]}."""
        cluster = Cluster()
        cluster.add(5060)
        cluster.run(0.1)
        cluster.add(5061, seeds=(5060,))
        cluster.run(1)
        answers = [b for b in bodies(cluster.svcs[5060], 5061) if b.startswith(b'{"cells"')]
        self.assertEqual(answers, [b'{"cells":[]}'])

    def test_all_mode_asks_everyone(self) -> None:
        """With init_sync="all" the joining node asks every active node, as Kamailio does."""
        cluster = Cluster()
        cluster.add(5060)
        cluster.add(5061, seeds=(5060,))
        cluster.run(0.5)
        cluster.add(5062, seeds=(5060,), init_sync="all")
        cluster.run(0.5)
        asked = sorted(m.uri.port for m in htable_requests(cluster.svcs[5062]) if m.body == b'{"action":1}')
        self.assertEqual(asked, [5060, 5061])

    def test_none_mode_asks_nobody(self) -> None:
        """With init_sync="none" no sync request is sent."""
        cluster = Cluster()
        cluster.add(5060)
        cluster.run(0.1)
        cluster.add(5061, seeds=(5060,), init_sync="none")
        cluster.run(0.5)
        self.assertEqual([b for b in bodies(cluster.svcs[5061]) if b'"action"' in b], [])
        self.assertEqual(cluster.peers[5060].stats["sync_requests"], 0)

    def test_single_mode_tries_next_node(self) -> None:
        """When the seed has no htable peer (404), the joining node asks the next active node and gets its cells."""
        cluster = Cluster()
        cluster.add(5060, peer=False)
        b = cluster.add(5061, seeds=(5060,))
        cluster.run(0.5)
        b.set("t", "k", "v")
        c = cluster.add(5062, seeds=(5060,))
        cluster.run(1)
        asked = [m.uri.port for m in htable_requests(cluster.svcs[5062]) if m.body == b'{"action":1}']
        self.assertEqual(asked, [5060, 5061])
        self.assertEqual(c.dump("t"), {"k": "v"})

    def test_repeated_request_restarts_answer(self) -> None:
        """A node asking again while an answer is under way gets one fresh full answer, not two interleaved."""
        cluster, a = lone_node(5172, sync_window=1)
        self.fill(a, 3000)
        svc = cluster.svcs[5172]
        deliver(svc, kdmq(b'{"action":1}'))
        deliver(svc, kdmq(b'{"action":1}'))
        self.assertEqual(len(a._answers.sessions), 1)
        self.assertEqual(a.stats["sync_requests"], 2)

    def test_sync_for_one_table(self) -> None:
        """A 6.x-style sync request naming a table gets that table's cells only; an unknown table gets an empty answer."""
        cluster, a = lone_node(5172, tables=["t", "u"])
        a.set("t", "k", 1)
        a.set("u", "k", 2)
        deliver(cluster.svcs[5172], kdmq(b'{"action":1,"htname":"u"}'))
        deliver(cluster.svcs[5172], kdmq(b'{"action":1,"htname":"zz"}', from_port=5173), from_port=5173)
        self.assertEqual(
            bodies(cluster.svcs[5172]),
            [b'{"cells":[{"htname":"u","cname":"k","type":0,"intval":2,"expire":0}]}', b'{"cells":[]}'],
        )


class ConvergenceTests(SynchronousTestCase):
    """Three Python nodes replicate every kind of change and converge under concurrent writes."""

    def three(self, **kw: Any) -> Cluster:
        cluster = Cluster()
        cluster.add(5060, **kw)
        cluster.add(5061, seeds=(5060,), **kw)
        cluster.add(5062, seeds=(5061,), **kw)
        cluster.run(5.5)  # one ping interval: everyone knows everyone
        for svc in cluster.svcs.values():
            self.assertEqual(len(svc.nodes.active()), 2)
        return cluster

    def test_changes_reach_every_node(self) -> None:
        """set, incr, set_expire, delete and remove_matching on one node show on the two others."""
        cluster = self.three()
        a = cluster.peers[5060]
        a.set("t", "s1", "one")
        a.set("t", "s2", "two")
        a.set("t", "x", "drop-me")
        a.incr("t", "n", 41)
        a.incr("t", "n")
        a.set_expire("t", "s1", 100)
        a.delete("t", "s2")
        a.remove_matching("t", prefix="drop", by_value=True)
        cluster.run(0.1)
        for port in (5061, 5062):
            peer = cluster.peers[port]
            self.assertEqual(peer.dump("t"), {"s1": "one", "n": 42})
            # relative on the wire: later by the network's latency
            self.assertLess(abs(peer.cell("t", "s1").expire - a.cell("t", "s1").expire), 0.05)  # type: ignore[union-attr]

    def test_concurrent_writes_converge_with_timestamps(self) -> None:
        """Same-instant and crossing writes to the same keys, with lost and retransmitted messages, end equal everywhere (last write wins)."""
        cluster = self.three(last_modified=True)
        lost: set[bytes] = set()

        def drop(source: Address, target: Address, data: bytes) -> bool:
            # The first copy of every second htable message is lost: retransmissions reorder them.
            if b"sip:htable@" not in data[:60] or data.startswith(b"SIP/2.0"):
                return False
            branch = data.split(b"branch=", 1)[1].split(b"\r\n", 1)[0]
            if branch in lost:
                return False
            if len(lost) % 2 == 0:
                lost.add(branch)
                return True
            lost.add(branch + b"!")
            return False

        cluster.network.drop = drop
        for round_ in range(5):
            for port, peer in cluster.peers.items():
                peer.set("t", "same", f"{port}-{round_}")  # same clock instant on all three
                peer.set("t", f"k{round_ % 2}", port)
            if round_ == 2:
                cluster.peers[5061].delete("t", "k0")
            cluster.run(0.003)
        cluster.run(10)
        dumps = [peer.dump("t") for peer in cluster.peers.values()]
        self.assertEqual(dumps[0], dumps[1])
        self.assertEqual(dumps[1], dumps[2])
        self.assertEqual(dumps[0]["same"], "5062-4")  # same ms: the greatest value wins
        stamps = [{k: c.last_modified for k, c in p.cells("t").items()} for p in cluster.peers.values()]
        self.assertEqual(stamps[0], stamps[2])
        self.assertGreater(cluster.network.dropped, 10)

    def test_without_timestamps_arrival_order_wins(self) -> None:
        """Without timestamps a change applies in arrival order, as in Kamailio 5.6: sequential writes still agree."""
        cluster = self.three()
        for i, peer in enumerate(cluster.peers.values()):
            peer.set("t", "k", i)
            cluster.run(0.1)
        self.assertEqual({p.get("t", "k") for p in cluster.peers.values()}, {2})


class PersistenceTests(SynchronousTestCase):
    """The snapshot: written atomically when changed, loaded at start before the node syncs."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dmq-htable-")) / "state"
        self.addCleanup(shutil.rmtree, self.dir.parent, True)

    def test_restart_has_data_before_sync(self) -> None:
        """A restarted node has its cells and expiries back at start, before its first node list and its sync request."""
        cluster = Cluster()
        a = cluster.add(5060, tables=["t", "e:expire=100"], persist_dir=str(self.dir))
        cluster.run(0.1)
        a.set("t", "k", "v")
        a.set("t", "n", 7)
        a.set("e", "short", "x", expire=5)
        a.set("e", "long", "y")
        cluster.run(1.5)
        self.assertTrue((self.dir / "htable.json").exists())
        cluster.stop(5060)
        cluster.run(10)  # "short" expires while the node is down
        # a seed that never answers: the node stays un-ready, so no sync can have run
        seen_at_start: list[dict[str, Any]] = []
        b = HTablePeer(tables=["t", "e:expire=100"], persist_dir=str(self.dir))
        transport = FakeSIPTransport(cluster.clock, ("udp",))
        svc = DMQService("sip:127.0.0.1:5060", ["sip:127.0.0.1:5099"], reactor=cluster.clock, transport=transport)
        cluster.network.attach(transport, Address("udp", "127.0.0.1", 5060))
        svc.register_peer(b)
        svc.startService()
        seen_at_start.append(b.dump("t") | b.dump("e"))
        self.assertFalse(svc.ready)
        self.assertEqual(seen_at_start, [{"k": "v", "n": 7, "long": "y"}])
        self.assertEqual(b.cell("e", "long").expire, a.cell("e", "long").expire)  # type: ignore[union-attr]
        self.assertEqual(bodies(svc), [])

    def test_atomic_and_only_when_changed(self) -> None:
        """Snapshots are written through a temporary file that never stays behind, and only when something changed."""
        cluster = Cluster()
        a = cluster.add(5060, persist_dir=str(self.dir), persist_interval=1.0)
        cluster.run(3)
        self.assertEqual(a.stats["snapshots"], 0)
        a.set("t", "k", "v")
        cluster.run(3)
        self.assertEqual(a.stats["snapshots"], 1)
        self.assertEqual(os.listdir(self.dir), ["htable.json"])
        doc = json.loads((self.dir / "htable.json").read_text())
        self.assertEqual(doc["format"], "dmq-htable")
        self.assertEqual(doc["tables"]["t"]["cells"], [["k", "v", 0.0, 0]])

    def test_replicated_changes_are_saved(self) -> None:
        """Changes that came from other nodes are in the snapshot too."""
        cluster = Cluster()
        cluster.add(5060)
        b = cluster.add(5061, seeds=(5060,), persist_dir=str(self.dir))
        cluster.run(0.5)
        cluster.peers[5060].set("t", "remote", 1)
        cluster.run(1.5)
        cluster.stop(5061)
        doc = json.loads((self.dir / "htable.json").read_text())
        self.assertEqual([row[:2] for row in doc["tables"]["t"]["cells"]], [["remote", 1]])
        self.assertGreaterEqual(b.stats["snapshots"], 1)

    def test_corrupt_snapshot_moved_aside(self) -> None:
        """An unreadable snapshot is moved to htable.json.bad and the node starts empty without failing."""
        self.dir.mkdir(parents=True)
        (self.dir / "htable.json").write_text('{"format":"dmq-htable","tables":{"t":{"cells":[{"cname":')
        cluster = Cluster()
        a = cluster.add(5060, persist_dir=str(self.dir))
        self.assertEqual(a.dump("t"), {})
        self.assertTrue((self.dir / "htable.json.bad").exists())
        self.assertFalse((self.dir / "htable.json").exists())
        self.flushLoggedErrors()


class RPCTests(SynchronousTestCase):
    """The control methods, by Kamailio's names."""

    def setUp(self) -> None:
        self.cluster, self.peer = lone_node(5172, tables=["t", "x:expire=60"])
        self.rpc = self.peer.rpc_methods()

    def call(self, method: str, *params: Any) -> Any:
        return self.rpc[method](*params)

    def error(self, method: str, *params: Any) -> RPCError:
        with self.assertRaises(RPCError) as caught:
            self.call(method, *params)
        return caught.exception

    def test_names(self) -> None:
        """The peer offers Kamailio's htable RPC names, each a callable."""
        for name in ("htable.get", "htable.sets", "htable.seti", "htable.setex", "htable.delete",
                     "htable.dump", "htable.listTables", "htable.dmqsync"):
            self.assertTrue(callable(self.rpc[name]), name)

    def test_set_get_dump_delete(self) -> None:
        """sets/seti/setex/get/dump/delete behave like Kamailio's and answer its texts."""
        self.assertEqual(self.call("htable.sets", "t", "a", "hello"), "Ok. Key set to new value.")
        self.assertEqual(self.call("htable.seti", "t", "n", "42"), "Ok. Key set to new value.")
        self.assertEqual(self.call("htable.get", "t", "n"), {"item": {"name": "n", "value": 42, "flags": 0, "expire": "NEVER"}})
        self.assertEqual(self.call("htable.setex", "t", "a", 100), "Ok")
        item = self.call("htable.get", "t", "a")["item"]
        self.assertEqual((item["value"], item["flags"]), ("hello", 2))
        self.assertNotEqual(item["expire"], "NEVER")
        now = self.cluster.clock.seconds()
        self.assertEqual(
            self.call("htable.dump", "t"),
            [  # the slots Kamailio files "n" and "a" under (core_case_hash over 256 slots), in slot order
                {"entry": 99, "size": 1, "slot": [{"name": "n", "value": 42, "type": "int", "expire": 0}]},
                {"entry": 109, "size": 1, "slot": [
                    {"name": "a", "value": "hello", "type": "str", "expire": math.ceil(now + 100)},
                ]},
            ],
        )
        self.assertEqual(self.call("htable.delete", "t", "n"), "Ok. Key deleted.")
        missing = self.error("htable.get", "t", "n")
        self.assertEqual((missing.code, missing.message), (500, "Key name doesn't exist in htable."))
        missing = self.error("htable.delete", "t", "n")
        self.assertEqual((missing.code, missing.message), (404, "Key not found in htable."))
        self.assertEqual(self.call("htable.dump", "x"), [])

    def test_list_tables(self) -> None:
        """listTables names each table with its expire and item count."""
        self.call("htable.sets", "x", "a", "b")
        tables = {t["name"]: t for t in self.call("htable.listTables")}
        self.assertEqual(tables["x"]["expire"], 60)
        self.assertEqual(tables["x"]["items"], 1)
        self.assertEqual(tables["t"]["dmqreplicate"], 1)

    def test_errors(self) -> None:
        """Every fault is 500 with Kamailio's text; a wrong-typed parameter counts as missing; garbage integers are refused."""
        cases = [
            (("htable.sets", "nope", "a", "b"), "No such htable"),
            (("htable.dump", "nope"), "No such htable"),
            (("htable.dump",), "No htable name given"),
            (("htable.sets", "t", "a"), "Not enough parameters (htable name, key name and value)"),
            (("htable.get", "t", 5), "Not enough parameters (htable name and key name)"),
            (("htable.delete", "t"), "Not enough parameters (htable name & key name)"),
            (("htable.seti", "t", "a", "x1"), "Invalid Parameters (not a 32-bit integer: 'x1')"),
            (("htable.seti", "t", "a", str(2**40)), "Invalid Parameters (not a 32-bit integer: '1099511627776')"),
            (("htable.get", "t", "zz"), "Key name doesn't exist in htable."),
        ]
        for call, message in cases:
            error = self.error(*call)
            self.assertEqual((error.code, error.message), (500, message), call)
        error = self.error("htable.sets", "t", "a", "b\x00")
        self.assertEqual(error.code, 500)
        self.assertIn("NUL", error.message)
        self.assertEqual(self.call("htable.sets", "t", "a", "b", "extra"), "Ok. Key set to new value.")

    def test_dmqsync(self) -> None:
        """dmqsync answers Ok once it asked (as Kamailio 6.1), and the asked node sends its cells; an unknown table is 500."""
        self.assertEqual(self.error("htable.dmqsync", "nope").message, "No such htable")
        cluster = Cluster()
        a = cluster.add(5060)
        b = cluster.add(5061, seeds=(5060,))
        cluster.run(0.5)
        a.tables["t"].set("late", "v", cluster.clock.seconds())
        self.assertEqual(b.rpc_methods()["htable.dmqsync"]("t"), "Ok")
        cluster.run(0.1)
        self.assertEqual(b.get("t", "late"), "v")


def test_status_counts_live_items_per_table() -> None:
    """status() gives the live items of each table (an expired item does not count)."""
    cluster = Cluster()
    peer = cluster.add(5060, tables=("t", "u"))
    cluster.run(0.1)
    peer.set("t", "a", "1")
    peer.set("t", "b", "2", expire=10)
    peer.set("u", "c", 3)
    assert peer.status() == {"tables": {"t": 2, "u": 1}}
    cluster.clock.advance(11)
    assert peer.status() == {"tables": {"t": 1, "u": 1}}
