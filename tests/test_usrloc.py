"""The usrloc peer: the location table's rules, Kamailio's JSON both ways, replication, sync, expiry, persistence, the ul.* RPC methods (fake network, task.Clock)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dmq import DMQService
from dmq.control import ControlAPI
from dmq.errors import ConfigurationError
from dmq.hashing import core_hash
from dmq.interfaces import IPeer
from dmq.peer import PeerResponse
from dmq.peers.usrloc import Contact, ContactChange, Location, RuidMaker, UsrlocPeer
from dmq.peers.usrloc.table import counter_text
from dmq.peers.usrloc.wire import Action, contact_json, parse_item
from dmq.sip.address import Address
from dmq.sip.message import Request, Response, parse_message
from dmq.testing import FakeCluster, rpc

CAPTURES = Path(__file__).parent / "data" / "captures"
CAPTURED_AT = 1795659604  # last_modified of the 5.6.3 capture: the clock of the test that rebuilds it
EPOCH = 1_700_000_000.0


def capture(name: str) -> bytes:
    """The exact bytes of a Kamailio 5.6.3 capture."""
    return (CAPTURES / name).read_bytes()


def usrloc_bodies(svc: DMQService, port: Optional[int] = None) -> list[bytes]:
    """The bodies of every KDMQ on the usrloc channel ``svc`` sent (to ``port`` only, when given)."""
    found = []
    for sent in svc.transport.sent:
        message = sent.message
        if isinstance(message, Request) and message.method == "KDMQ" and message.uri.user == "usrloc":
            if port is None or sent.address.port == port:
                found.append(message.body)
    return found


class Cluster(FakeCluster):
    """Python nodes on 127.0.0.1, each with a UsrlocPeer, on one fake network and one clock at epoch time."""

    def __init__(self, at: float = EPOCH) -> None:
        clock = Clock()
        clock.advance(at)
        super().__init__(clock)
        self.peers: dict[int, UsrlocPeer] = {}

    def add(self, port: int, seeds: Iterable[int] = (), start: bool = True, **peer_kw: Any) -> UsrlocPeer:  # type: ignore[override]
        svc = super().add(port, seeds, start=False)
        peer = UsrlocPeer(**peer_kw)
        svc.register_peer(peer)
        self.peers[port] = peer
        if start:
            svc.startService()
        return peer

    def run(self, seconds: float, step: float = 0.005) -> None:
        """Advance the clock in small steps so messages and timers interleave."""
        super().run(seconds, step)


def lone(at: float = EPOCH, **peer_kw: Any) -> tuple[Cluster, UsrlocPeer]:
    """One started node that knows no other."""
    cluster = Cluster(at)
    peer = cluster.add(5172, **peer_kw)
    cluster.run(0.05)
    return cluster, peer


def kdmq(body: bytes, to_port: int = 5172, from_port: int = 5171) -> bytes:
    """A KDMQ on the usrloc channel as Kamailio sends it."""
    head = (
        f"KDMQ sip:usrloc@127.0.0.1:{to_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        f"To: <sip:usrloc@127.0.0.1:{to_port}>\r\n"
        f"From: <sip:usrloc@127.0.0.1:{from_port}>;tag=abc\r\n"
        f"CSeq: 10 KDMQ\r\nCall-ID: {os.urandom(6).hex()}@127.0.0.1\r\n"
        f"Max-Forwards: 1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def process(peer: UsrlocPeer, body: Any) -> PeerResponse:
    """Run ``body`` (bytes, or an object to encode) through the peer; return its answer."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    d = peer.service.process_message("usrloc", body, "application/json")
    result: list[PeerResponse] = []
    d.addCallback(result.append)
    assert result, "the peer did not answer at once"
    return result[0]


def wire_contact(aor: str = "alice", ruid: str = "r-1", c: str = "sip:alice@10.0.0.1", **fields: Any) -> dict[str, Any]:
    """A contact object as Kamailio sends it (action 1, expiring an hour after EPOCH)."""
    doc = {"action": 1, "aor": aor, "ruid": ruid, "c": c, "received": "", "path": "", "callid": "call-1",
           "user_agent": "ua", "instance": "", "expires": int(EPOCH) + 3600, "cseq": 1, "flags": 0, "cflags": 0,
           "q": -1, "last_modified": int(EPOCH), "methods": 4294967295, "reg_id": 0, "server_id": 0}
    doc.update(fields)
    return doc


def contact(ruid: str, address: str, q: int = -1, **fields: Any) -> Contact:
    """A Contact for the table tests."""
    return Contact(ruid=ruid, address=address, q=q, **fields)


class LocationTests(SynchronousTestCase):
    """The pure table: order, Kamailio's update rules, expiry."""

    def test_best_q_first_equal_q_in_arrival_order(self) -> None:
        """Contacts sort by q, highest first, unset (-1) below 0; equal q keep the order they came in."""
        table = Location()
        for ruid, q in (("a", -1), ("b", 500), ("c", 1000), ("d", 500), ("e", 0)):
            table.insert("alice", contact(ruid, f"sip:{ruid}@h", q))
        self.assertEqual([c.ruid for c in table.live("alice", 0)], ["c", "b", "d", "e", "a"])

    def test_update_by_ruid_whatever_the_cseq(self) -> None:
        """An update naming a known ruid applies even with a lower CSeq and the same Call-ID."""
        table = Location()
        table.insert("alice", contact("r1", "sip:a@h", callid="x", cseq=5, expires=100))
        kind, stored = table.apply("alice", contact("r1", "sip:a@h", callid="x", cseq=2, expires=200), 0)
        self.assertEqual((kind, stored.cseq, stored.expires), ("updated", 2, 200))

    def test_by_address_same_callid_needs_a_higher_cseq(self) -> None:
        """Without a known ruid the contact is found by address; the same Call-ID with an equal or lower CSeq is stale, a higher one applies."""
        table = Location()
        table.insert("alice", contact("r1", "sip:a@h", callid="x", cseq=5, expires=100))
        for cseq in (4, 5):
            kind, stored = table.apply("alice", contact("r9", "sip:a@h", callid="x", cseq=cseq, expires=300), 0)
            self.assertIsNone(kind)
            self.assertEqual(stored.expires, 100)
        kind, stored = table.apply("alice", contact("r9", "sip:a@h", callid="x", cseq=6, expires=300), 0)
        self.assertEqual((kind, stored.ruid, stored.expires), ("updated", "r1", 300))

    def test_by_address_another_callid_applies(self) -> None:
        """A new Call-ID at the same address replaces the contact's fields whatever its CSeq, and keeps its ruid."""
        table = Location()
        table.insert("alice", contact("r1", "sip:a@h", callid="x", cseq=5))
        kind, stored = table.apply("alice", contact("", "sip:a@h", callid="y", cseq=1, user_agent="new"), 0)
        self.assertEqual((kind, stored.ruid, stored.callid, stored.user_agent), ("updated", "r1", "y", "new"))

    def test_new_contact_needs_a_ruid(self) -> None:
        """A contact nobody has is added; without a ruid it is refused (Kamailio cannot store one either)."""
        table = Location()
        self.assertEqual(table.apply("bob", contact("r2", "sip:b@h"), 0)[0], "added")
        with self.assertRaises(ValueError):
            table.apply("bob", contact("", "sip:other@h"), 0)
        self.assertEqual(len(table.contacts("bob")), 1)

    def test_update_keeps_ruid_instance_reg_id_and_moves_on_a_new_q(self) -> None:
        """An update keeps ruid, instance and reg-id, changes the address only when it names an instance, and re-sorts a changed q."""
        table = Location()
        table.insert("alice", contact("r1", "sip:a@h", q=1000, instance="<urn:1>", reg_id=1))
        table.insert("alice", contact("r2", "sip:b@h", q=500))
        table.apply("alice", contact("r1", "sip:moved@h", q=100, instance="", reg_id=7), 0)
        first, second = table.live("alice", 0)
        self.assertEqual((first.ruid, second.ruid), ("r2", "r1"))
        self.assertEqual((second.address, second.instance, second.reg_id, second.q), ("sip:a@h", "<urn:1>", 1, 100))
        table.apply("alice", contact("r1", "sip:moved@h", q=100, instance="<urn:1>"), 0)
        self.assertEqual(table.find_ruid("alice", "r1").address, "sip:moved@h")  # type: ignore[union-attr]

    def test_expiry_and_purge(self) -> None:
        """A contact is live until its expiry (0: forever); purge drops the expired ones and an AoR left empty."""
        table = Location()
        table.insert("alice", contact("r1", "sip:a@h", expires=100))
        table.insert("alice", contact("r2", "sip:b@h", expires=0))
        table.insert("bob", contact("r3", "sip:c@h", expires=50))
        self.assertEqual(table.counts(49), (2, 3))
        self.assertEqual([c.ruid for c in table.live("alice", 100)], ["r2"])
        self.assertEqual(sorted(c.ruid for _, c in table.purge(100)), ["r1", "r3"])
        self.assertEqual(list(table.records), ["alice"])
        self.assertEqual(table.counts(10**9), (1, 1))

    def test_remove(self) -> None:
        """Removing by ruid drops one contact (and its AoR when it was the last); an unknown ruid removes nothing."""
        table = Location()
        table.insert("alice", contact("r1", "sip:a@h"))
        self.assertIsNone(table.remove_ruid("alice", "nope"))
        self.assertEqual(table.remove_ruid("alice", "r1").ruid, "r1")  # type: ignore[union-attr]
        self.assertEqual(table.records, {})


class RuidTests(SynchronousTestCase):
    """Ruids in Kamailio's format."""

    def test_format_like_kamailio(self) -> None:
        """uloc-<start time hex>-<process hex>-<counter, lowest hex digit first>, as Kamailio's registrar writes them."""
        maker = RuidMaker(lambda: 0x6B079717, process=0x20A4)
        self.assertEqual(maker.next(), "uloc-6b079717-20a4-1")
        for _ in range(24):
            maker.next()
        self.assertEqual(maker.next(), "uloc-6b079717-20a4-a1")  # the 26th: 0x1a, low digit first
        self.assertEqual(counter_text(0x123), "321")
        with_server = RuidMaker(lambda: 0x10, prefix="ulcx", server_id=5, process=0x2)
        self.assertEqual(with_server.next(), "ulcx-5-10-2-1")

    def test_counter_wrap_takes_a_new_start_time(self) -> None:
        """When the 32-bit counter wraps the ruids go on from 1 with the new start time, never repeating."""
        now = [100.0]
        maker = RuidMaker(lambda: now[0], process=1)
        maker.next()
        maker.counter = 0xFFFFFFFF
        now[0] = 200.0
        self.assertEqual(maker.next(), "uloc-c8-1-1")

    def test_two_makers_of_one_process_differ(self) -> None:
        """Two peers in one process, on the same clock, never make the same ruid."""
        a, b = RuidMaker(lambda: 5.0), RuidMaker(lambda: 5.0)
        self.assertNotEqual(a.next(), b.next())


class WireTests(SynchronousTestCase):
    """Kamailio's bodies, byte for byte, and the reader's answers to bad ones."""

    def test_save_sends_the_captured_update_byte_for_byte(self) -> None:
        """save() with the capture's fields sends exactly the body Kamailio 5.6.3 sent for that REGISTER."""
        cluster = Cluster(CAPTURED_AT)
        a = cluster.add(5171)
        cluster.add(5172, seeds=(5171,))
        cluster.run(0.2)
        svc = cluster.nodes[5171]
        svc.transport.clear()
        a.save("alice", "sip:alice@127.0.0.1:5179", expires=600, callid="reg1@127.0.0.1", cseq=1,
               ruid="uloc-6b079717-20a4-1", user_agent="pyua")
        cluster.run(0.05)
        kamailio = parse_message(capture("req-KDMQ-usrloc-action1.sip"))
        self.assertEqual(usrloc_bodies(svc, 5172), [kamailio.body])
        [request] = [s.message for s in svc.transport.sent if isinstance(s.message, Request)]
        self.assertEqual((request.content_type, request.max_forwards), ("application/json", 1))

    def test_captured_update_reads_and_writes_back_the_same(self) -> None:
        """The captured body parses to a contact that serialises to the same bytes."""
        body = parse_message(capture("req-KDMQ-usrloc-action1.sip")).body
        item = parse_item(json.loads(body), 0.0)
        assert item.contact is not None
        self.assertEqual((item.action, item.aor, item.contact.q, item.contact.expires), (Action.UPDATE, "alice", -1, 1795660204))
        self.assertEqual(contact_json(item.action, item.aor, item.contact), body)

    def test_sync_request_is_the_captured_one(self) -> None:
        """The join-time sync request is byte for byte Kamailio's {"action":3}."""
        cluster = Cluster()
        cluster.add(5171)
        cluster.add(5172, seeds=(5171,))
        cluster.run(0.3)
        self.assertIn(parse_message(capture("req-KDMQ-usrloc-action3.sip")).body, usrloc_bodies(cluster.nodes[5172], 5171))

    def test_socket_name_and_xavps_in_kamailios_places(self) -> None:
        """sock (or sockname) follows received, xavps comes last and only when set; 6.1's empty xavps is accepted."""
        _, peer = lone()
        self.assertEqual(process(peer, wire_contact(sock="udp:10.0.0.9:5060", xavps={})).code, 200)
        self.assertEqual(process(peer, wire_contact(aor="bob", sockname="edge", xavps={"k": {"v": 1}})).code, 200)
        alice, bob = peer.lookup("alice")[0], peer.lookup("bob")[0]
        self.assertEqual((alice.sock, alice.xavps, bob.sockname, bob.xavps), ("udp:10.0.0.9:5060", None, "edge", {"k": {"v": 1}}))
        keys = list(json.loads(contact_json(Action.UPDATE, "alice", alice)))
        self.assertEqual(keys[4:6], ["received", "sock"])
        self.assertNotIn("xavps", keys)
        bob_keys = list(json.loads(contact_json(Action.UPDATE, "bob", bob)))
        self.assertEqual((bob_keys[5], bob_keys[-1]), ("sockname", "xavps"))

    def test_bad_bodies_get_400_with_the_reason_and_change_nothing(self) -> None:
        """Every body Kamailio answers 400, crashes on or misreads is answered 400 with what was wrong; the table stays as it was."""
        _, peer = lone()
        cases: dict[str, Any] = {
            "empty body": b"",
            "invalid JSON": b"not json",
            "not a JSON object": b"[{}]",
            "empty JSON object": b"{}",
            "unknown action 9": {"action": 9},
            "unknown action -1": {"action": -1},
            "action is not a number": {"action": "1"},
            "no aor": {k: v for k, v in wire_contact().items() if k != "aor"},
            "aor is not a string": wire_contact(aor=5),
            "c is not a string": wire_contact(c=5),
            "update without c": wire_contact(c=""),
            "remove without ruid": {"action": 2, "aor": "alice"},
            "expires is not a number": wire_contact(expires="123"),
            "q is not a whole number": wire_contact(q=0.5),
            "expires -5 out of range": wire_contact(expires=-5),
            "multi is not an object": {"multi": 5},
            "a member of multi is not an object": {"multi": {"1": wire_contact(), "2": 5}},
        }
        for reason, body in cases.items():
            answer = process(peer, body)
            self.assertEqual(answer.code, 400, reason)
            self.assertIn(reason, answer.reason)
            self.assertTrue(answer.reason.startswith("Bad Request ("), answer.reason)
        self.assertEqual(peer.location.records, {})
        self.assertEqual(peer.stats["rejected"], len(cases))

    def test_kamailios_no_ops_are_200(self) -> None:
        """A missing action, action 0, unknown keys, an empty batch and a remove of an unknown ruid are answered 200 and change nothing."""
        _, peer = lone()
        for body in ({"foo": 1}, {"action": 0}, {"multi": {}}, {"action": 2, "aor": "x", "ruid": "nope"}):
            self.assertEqual(process(peer, body).code, 200, body)
        self.assertEqual(peer.location.records, {})
        self.assertEqual(process(peer, wire_contact(zzz=5, last_seen="x")).code, 200)
        self.assertEqual(len(peer.lookup("alice")), 1)

    def test_batch_applies_in_order_and_multi_counts_only_first(self) -> None:
        """multi members apply in order; a body whose first key is not multi is one action, its multi key ignored."""
        _, peer = lone()
        batch = {"multi": {"1": wire_contact(ruid="r1", cseq=1, expires=int(EPOCH) + 100),
                           "2": wire_contact(ruid="r1", cseq=2, expires=int(EPOCH) + 200),
                           "3": wire_contact(aor="bob", ruid="r2", c="sip:bob@h")}}
        self.assertEqual(process(peer, batch).code, 200)
        self.assertEqual(peer.lookup("alice")[0].expires, int(EPOCH) + 200)
        self.assertEqual(len(peer.lookup("bob")), 1)
        self.assertEqual(process(peer, {**wire_contact(aor="carol", ruid="r3"), "multi": {"1": wire_contact()}}).code, 200)
        self.assertEqual(len(peer.lookup("carol")), 1)

    def test_new_contact_without_ruid_is_400_after_the_rest_applied(self) -> None:
        """An added contact without a ruid is refused 400 (Kamailio logs it and stores nothing); the batch's other members apply."""
        _, peer = lone()
        answer = process(peer, {"multi": {"1": wire_contact(ruid=""), "2": wire_contact(aor="bob", ruid="r2")}})
        self.assertEqual(answer.code, 400)
        self.assertIn("without a ruid", answer.reason)
        self.assertEqual((peer.lookup("alice"), len(peer.lookup("bob"))), ([], 1))

    def test_expired_on_the_way_is_stale(self) -> None:
        """An update whose absolute expiry has passed registers nothing."""
        _, peer = lone()
        self.assertEqual(process(peer, wire_contact(expires=int(EPOCH) - 1)).code, 200)
        self.assertEqual((peer.lookup("alice"), peer.stats["stale"]), ([], 1))


class ReplicationTests(SynchronousTestCase):
    """Local saves and removes go to every active node; what comes from DMQ is not sent on."""

    def setUp(self) -> None:
        self.cluster = Cluster()
        self.a = self.cluster.add(5060)
        self.b = self.cluster.add(5061, seeds=(5060,))
        self.c = self.cluster.add(5062, seeds=(5060,))
        self.cluster.run(0.5)
        for svc in self.cluster.nodes.values():
            svc.transport.clear()

    def test_save_reaches_every_node_and_is_not_sent_on(self) -> None:
        """A save shows on both other nodes with every field; they answer 200 and send nothing on the usrloc channel."""
        results = self.a.save("alice", "sip:alice@10.0.0.1:5060", expires=60, q=0.5, user_agent="phone", path="<sip:p@h;lr>")
        self.cluster.run(0.1)
        self.assertEqual(sorted(code for _, code in self.successResultOf(results)), [200, 200])
        mine = self.a.lookup("alice")[0]
        for peer in (self.b, self.c):
            [theirs] = peer.lookup("alice")
            self.assertEqual((theirs.ruid, theirs.address, theirs.q, theirs.expires, theirs.path, theirs.user_agent),
                             (mine.ruid, mine.address, 500, int(EPOCH) + 60, "<sip:p@h;lr>", "phone"))
        self.assertEqual(usrloc_bodies(self.cluster.nodes[5061]) + usrloc_bodies(self.cluster.nodes[5062]), [])
        self.assertEqual((self.a.stats["replicated"], self.b.stats["applied"], self.b.stats["replicated"]), (1, 1, 0))

    def test_a_burst_goes_partly_in_multi_batches(self) -> None:
        """A burst of 100 saves reaches the other nodes partly as {"multi":{"1":...}} batches of the very bodies a
        save sends alone, numbered from 1; every contact arrives once, and the receivers count the batches."""
        multi_before = self.b.stats["multi_received"]  # the sync answer at join
        for i in range(100):
            self.a.save(f"u{i}", f"sip:u{i}@10.0.0.1:5060", expires=60)
        self.cluster.run(0.5)
        for peer in (self.b, self.c):
            self.assertEqual(sorted(peer.location.records), sorted(f"u{i}" for i in range(100)))
            self.assertEqual(peer.stats["applied"], 100)
        sent = usrloc_bodies(self.cluster.nodes[5060], 5061)
        batches = [json.loads(body)["multi"] for body in sent if body.startswith(b'{"multi":{')]
        self.assertGreater(len(batches), 0)
        self.assertEqual(self.b.stats["multi_received"] - multi_before, len(batches))
        for batch in batches:
            self.assertEqual(list(batch), [str(n) for n in range(1, len(batch) + 1)])
        self.assertEqual(sum(map(len, batches)) + len(sent) - len(batches), 100)
        to_c = [body for body in usrloc_bodies(self.cluster.nodes[5060], 5062) if body.startswith(b'{"multi":{')]
        self.assertEqual(self.a.stats["joined"], len(batches) + len(to_c))

    def test_refresh_keeps_the_ruid_and_raises_the_cseq(self) -> None:
        """Saving the same contact again keeps its ruid and Call-ID and sends CSeq + 1; a CSeq not above the stored one is refused."""
        self.a.save("alice", "sip:alice@h", callid="reg-1", cseq=7)
        self.a.save("alice", "sip:alice@h", expires=120)
        self.cluster.run(0.1)
        [first, second] = [json.loads(b) for b in usrloc_bodies(self.cluster.nodes[5060], 5061)]
        self.assertEqual((first["ruid"], first["cseq"], second["callid"], second["cseq"]), (second["ruid"], 7, "reg-1", 8))
        self.assertEqual(self.b.lookup("alice")[0].cseq, 8)
        with self.assertRaises(ValueError):
            self.a.save("alice", "sip:alice@h", callid="reg-1", cseq=8)
        self.a.save("alice", "sip:alice@h", callid="reg-2", cseq=1)  # a new Call-ID starts again
        self.assertEqual(self.a.lookup("alice")[0].callid, "reg-2")

    def test_bad_saves_send_nothing(self) -> None:
        """A save Kamailio could not hold raises before anything changes or is sent."""
        for kwargs in ({"expires": -1}, {"q": 2.0}, {"user_agent": "a\x00b"}, {"methods": 2**32}, {"flags": "1"}):
            with self.assertRaises((ValueError, TypeError), msg=kwargs):
                self.a.save("alice", "sip:alice@h", **kwargs)
        with self.assertRaises(ValueError):
            self.a.save("", "sip:alice@h")
        self.cluster.run(0.1)
        self.assertEqual((self.a.lookup("alice"), usrloc_bodies(self.cluster.nodes[5060])), ([], []))

    def test_remove_by_contact_by_ruid_and_whole_aor(self) -> None:
        """Removes go as action 2 with the whole contact, by ruid; the other nodes drop exactly those contacts."""
        for n in range(3):
            self.a.save("alice", f"sip:alice@10.0.0.{n}")
        self.cluster.run(0.1)
        ruids = [c.ruid for c in self.a.lookup("alice")]
        self.a.remove("alice", "sip:alice@10.0.0.0")
        self.a.remove("alice", ruid=ruids[1])
        self.cluster.run(0.1)
        self.assertEqual([c.ruid for c in self.b.lookup("alice")], ruids[2:])
        removes = [json.loads(b) for b in usrloc_bodies(self.cluster.nodes[5060], 5061) if b.startswith(b'{"action":2')]
        self.assertEqual([r["ruid"] for r in removes], ruids[:2])
        self.assertEqual(removes[0]["c"], "sip:alice@10.0.0.0")
        self.a.remove("alice")
        self.cluster.run(0.1)
        self.assertEqual((self.b.lookup("alice"), self.c.lookup("alice")), ([], []))
        for bad in ({"contact": "sip:nobody@h"}, {"ruid": "nope"}, {}):
            with self.assertRaises(KeyError):
                self.a.remove("alice", **bad)

    def test_change_listeners(self) -> None:
        """Listeners hear added, updated, removed and expired, with the sending node for changes from DMQ."""
        heard: list[ContactChange] = []
        self.b.add_change_listener(heard.append)
        self.a.save("alice", "sip:alice@h", expires=30)
        self.cluster.run(0.1)
        self.a.save("alice", "sip:alice@h", expires=30)
        self.cluster.run(0.1)
        self.a.save("bob", "sip:bob@h", expires=5)
        self.cluster.run(0.1)
        self.a.remove("alice")
        self.cluster.run(20)
        self.assertEqual([(h.kind, h.aor) for h in heard],
                         [("added", "alice"), ("updated", "alice"), ("added", "bob"), ("removed", "alice"), ("expired", "bob")])
        self.assertEqual([h.origin.port if h.origin else None for h in heard], [5060, 5060, 5060, 5060, None])

    def test_expiry_is_not_replicated_unless_asked(self) -> None:
        """An expired contact vanishes from lookups at once and from the table at the sweep, sending nothing; delete_expired sends a remove."""
        self.a.save("alice", "sip:alice@h", expires=5)
        self.cluster.run(0.1)
        self.cluster.nodes[5060].transport.clear()
        self.cluster.clock.advance(5)
        self.assertEqual((self.a.lookup("alice"), self.a.status()), ([], {"aors": 0, "contacts": 0}))
        self.cluster.run(10)
        self.assertEqual((self.a.location.records, usrloc_bodies(self.cluster.nodes[5060])), ({}, []))

        cluster, peer = lone(delete_expired=True)
        second = cluster.add(5173, seeds=(5172,))
        cluster.run(0.5)
        peer.save("alice", "sip:alice@h", expires=5)
        cluster.run(0.1)
        cluster.clock.advance(5)
        cluster.run(10)
        self.assertTrue(any(b.startswith(b'{"action":2') for b in usrloc_bodies(cluster.nodes[5172], 5173)))
        self.assertEqual(second.location.records, {})

    def test_status_and_stats(self) -> None:
        """status() counts AoRs and live contacts; permanent contacts (expires 0) never expire."""
        self.a.save("alice", "sip:alice@a", expires=0)
        self.a.save("alice", "sip:alice@b", expires=10)
        self.a.save("bob", "sip:bob@a", expires=10)
        self.assertEqual(self.a.status(), {"aors": 2, "contacts": 3})
        self.cluster.run(20)
        self.assertEqual(self.a.status(), {"aors": 1, "contacts": 1})
        self.assertEqual(self.b.status(), {"aors": 1, "contacts": 1})
        self.assertEqual(self.a.lookup("alice")[0].expires, 0)


class SyncTests(SynchronousTestCase):
    """Sync on join: asking, answering in multi batches to the asker only, reading Kamailio's answers."""

    def test_joining_node_gets_every_contact_in_batches_below_the_limit(self) -> None:
        """A node joining a cluster of 600 contacts asks one node and ends with all of them, sent in numbered batches below the limit to it alone."""
        cluster = Cluster()
        a = cluster.add(5060, sync_chunk_size=4000)
        b = cluster.add(5061, seeds=(5060,))
        cluster.run(0.3)
        for n in range(600):
            a.save(f"user{n}", f"sip:user{n}@10.0.{n // 250}.{n % 250}:5060", q=(n % 10) / 10)
        cluster.run(2)
        self.assertEqual(b.status(), {"aors": 600, "contacts": 600})
        for svc in cluster.nodes.values():
            svc.transport.clear()
        c = cluster.add(5062, seeds=(5060,))
        cluster.run(3)
        self.assertEqual(c.status(), {"aors": 600, "contacts": 600})
        self.assertEqual([replace(x, updated=0) for x in c.lookup("user7")], [replace(x, updated=0) for x in a.lookup("user7")])
        answers = [body for body in usrloc_bodies(cluster.nodes[5060], 5062) if body.startswith(b'{"multi"')]
        self.assertGreater(len(answers), 40)
        for body in answers:
            self.assertLess(len(body), 4000)
            members = json.loads(body)["multi"]
            self.assertEqual(list(members), [str(i) for i in range(1, len(members) + 1)])
        self.assertEqual([b for b in usrloc_bodies(cluster.nodes[5060], 5061) if b.startswith(b'{"multi"')], [])
        self.assertEqual(a.stats["sync_contacts_sent"], 600)
        self.assertEqual(c.stats["multi_contacts_received"], 600)

    def test_default_batches_fit_a_datagram(self) -> None:
        """With the default limit every batch stays below the node's max_body_size."""
        cluster = Cluster()
        a = cluster.add(5060)
        for n in range(300):
            a.save(f"u{n}", f"sip:u{n}@example.com", user_agent="x" * 100)
        cluster.add(5061, seeds=(5060,))
        cluster.run(3)
        limit = cluster.nodes[5060].max_body_size
        sizes = list(a.sync_chunk_sizes)
        self.assertTrue(sizes and max(sizes) < limit, (sizes, limit))
        self.assertEqual(cluster.peers[5061].status()["contacts"], 300)

    def test_empty_table_answers_an_empty_batch(self) -> None:
        """Nothing to send is one empty batch {"multi":{}}, which Kamailio answers 200."""
        cluster = Cluster()
        cluster.add(5060)
        cluster.add(5061, seeds=(5060,))
        cluster.run(0.5)
        self.assertIn(b'{"multi":{}}', usrloc_bodies(cluster.nodes[5060], 5061))

    def test_kamailio_style_answer_one_message_per_contact(self) -> None:
        """Kamailio's default sync answer, one action-1 KDMQ per contact (5.6.3 repeats some), fills the table."""
        cluster, peer = lone()
        svc = cluster.nodes[5172]
        bodies = [json.dumps(wire_contact(aor=f"u{n}", ruid=f"r{n}", c=f"sip:u{n}@h")).encode() for n in range(5)]
        for body in bodies + bodies[:2]:
            svc.transport.receive(kdmq(body), Address("udp", "127.0.0.1", 5171))
        cluster.run(0.1)
        answers = [s.message for s in svc.transport.sent if isinstance(s.message, Response)]
        self.assertEqual([r.code for r in answers], [200] * 7)
        self.assertEqual(peer.status(), {"aors": 5, "contacts": 5})

    def test_sync_request_from_a_stranger_is_answered_to_its_from_uri(self) -> None:
        """A node not (yet) listed that asks gets the contacts at the address its From URI names."""
        cluster, peer = lone()
        peer.save("alice", "sip:alice@h")
        svc = cluster.nodes[5172]
        cluster.network.attach(svc.transport.__class__(cluster.clock, ("udp",)), Address("udp", "127.0.0.1", 5199))
        svc.transport.receive(kdmq(b'{"action":3}', from_port=5199), Address("udp", "127.0.0.1", 5199))
        cluster.run(0.1)
        [answer] = usrloc_bodies(svc, 5199)
        self.assertEqual(json.loads(answer)["multi"]["1"]["aor"], "alice")


class PersistenceTests(SynchronousTestCase):
    """Snapshots keep the table across restarts."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder, True)

    def test_snapshot_round_trip(self) -> None:
        """A stopped node's live contacts come back, every field and the ruid intact, when a new peer starts on its folder."""
        cluster, peer = lone(persist_dir=self.folder)
        peer.save("alice", "sip:alice@h", q=0.25, xavps={"a": 1}, sock="udp:10.0.0.1:5060")
        peer.save("bob", "sip:bob@h", expires=1)
        before = peer.lookup("alice")
        cluster.nodes[5172].stopService()
        cluster.clock.advance(2)
        again, restored = lone(at=cluster.clock.seconds(), persist_dir=self.folder)
        self.assertEqual(restored.lookup("alice"), before)
        self.assertEqual(restored.status(), {"aors": 1, "contacts": 1})

    def test_unreadable_snapshot_is_moved_aside(self) -> None:
        """A snapshot that is not ours is moved to .bad and the node starts empty."""
        (self.folder / "usrloc.json").write_text('{"format":"dmq-usrloc","contacts":[{"action":1}]}')
        _, peer = lone(persist_dir=self.folder)
        self.assertEqual(peer.status(), {"aors": 0, "contacts": 0})
        self.assertTrue((self.folder / "usrloc.json.bad").exists())


class ConfigurationTests(SynchronousTestCase):
    """The peer's settings and interface."""

    def test_interface_and_defaults(self) -> None:
        """The peer provides IPeer, on channel usrloc with table location."""
        peer = UsrlocPeer()
        verifyObject(IPeer, peer)
        self.assertEqual((peer.channel, peer.domain, peer.init_sync), ("usrloc", "location", "single"))

    def test_bad_settings(self) -> None:
        """An unknown init_sync mode or a window of 0 is refused."""
        for kwargs in ({"init_sync": "sometimes"}, {"sync_window": 0}):
            with self.assertRaises(ConfigurationError):
                UsrlocPeer(**kwargs)


# The keys of one contact in Kamailio's ul.dump / ul.lookup, in its order (both versions alike).
KAMAILIO_CONTACT_KEYS = [
    "Address", "Expires", "Q", "Call-ID", "CSeq", "User-Agent", "Received", "Path", "State", "Flags", "CFlags",
    "Socket", "Methods", "Ruid", "Instance", "Reg-Id", "Server-Id", "Tcpconn-Id", "Keepalive", "Last-Keepalive",
    "KA-Roundtrip", "Last-Modified",
]


def result(answer: dict[str, Any]) -> Any:
    """The result of a JSON-RPC answer (fails the test on an error)."""
    assert "error" not in answer, answer
    return answer["result"]


def error(answer: dict[str, Any]) -> tuple[int, str]:
    """The code and message of a JSON-RPC error answer."""
    return answer["error"]["code"], answer["error"]["message"]


class UlRPCTests(SynchronousTestCase):
    """ul.dump, ul.lookup, ul.rm, ul.rm_contact and ul.add through the control API."""

    def setUp(self) -> None:
        self.cluster = Cluster()
        self.peer = self.cluster.add(5060)
        self.other = self.cluster.add(5061, seeds=(5060,))
        self.cluster.run(0.5)
        self.api = ControlAPI(self.cluster.nodes[5060])

    def call(self, method: str, *params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = rpc(self.api, method, *params)
        return answer

    def test_dump_shape_and_order(self) -> None:
        """ul.dump has Kamailio's nesting, keys and values; AoRs in hash-slot order; the brief form lists AoRs only."""
        self.peer.save("alice", "sip:alice@127.0.0.1:5180", expires=600, q=0.5, callid="reg2@127.0.0.1", user_agent="pyua")
        self.peer.save("alice", "sip:alice@127.0.0.1:5179", expires=600, callid="reg1@127.0.0.1", cseq=2)
        self.peer.save("bob", "sip:bob@127.0.0.1:5181", expires=0, q=1.0, sock="udp:127.0.0.1:5060")
        dump = result(self.call("ul.dump"))
        [domain] = dump["Domains"]
        self.assertEqual(list(domain), ["Domain"])
        location = domain["Domain"]
        self.assertEqual(list(location), ["Domain", "Size", "AoRs", "Stats"])
        self.assertEqual((location["Domain"], location["Size"], location["Stats"]), ("location", 1024, {"Records": 2, "Max-Slots": 1}))
        # Kamailio 5.6.3 listed bob (slot 963) before alice (slot 989).
        self.assertEqual([a["Info"]["AoR"] for a in location["AoRs"]], ["bob", "alice"])
        bob, alice = (a["Info"] for a in location["AoRs"])
        self.assertEqual(list(alice), ["AoR", "HashID", "Contacts"])
        self.assertEqual((alice["HashID"], bob["HashID"]), (1834153949, 7222211))
        self.assertEqual(alice["HashID"], core_hash("alice"))
        first = alice["Contacts"][0]["Contact"]
        self.assertEqual(list(first), KAMAILIO_CONTACT_KEYS)
        self.assertEqual(
            {k: first[k] for k in ("Address", "Expires", "Q", "Call-ID", "CSeq", "User-Agent", "Received", "Path", "State",
                                   "Socket", "Methods", "Instance", "Tcpconn-Id", "Last-Modified")},
            {"Address": "sip:alice@127.0.0.1:5180", "Expires": 600, "Q": 0.5, "Call-ID": "reg2@127.0.0.1", "CSeq": 1,
             "User-Agent": "pyua", "Received": "[not set]", "Path": "[not set]", "State": "CS_NEW", "Socket": "[not set]",
             "Methods": 4294967295, "Instance": "[not set]", "Tcpconn-Id": -1, "Last-Modified": int(EPOCH)},
        )
        self.assertEqual(alice["Contacts"][1]["Contact"]["Q"], -1)
        bob_contact = bob["Contacts"][0]["Contact"]
        self.assertEqual((bob_contact["Q"], bob_contact["Expires"], bob_contact["Socket"]), (1, "permanent", "udp:127.0.0.1:5060"))
        self.assertIsInstance(bob_contact["Q"], int)
        brief = result(self.call("ul.dump", "brief"))["Domains"][0]["Domain"]
        self.assertEqual(brief["AoRs"], [{"AoR": "bob"}, {"AoR": "alice"}])

    def test_dump_of_an_empty_table_and_expired_contacts(self) -> None:
        """An empty table dumps no AoRs and zero stats; a contact past its expiry and not yet swept shows "expired"."""
        location = result(self.call("ul.dump"))["Domains"][0]["Domain"]
        self.assertEqual((location["AoRs"], location["Stats"]), ([], {"Records": 0, "Max-Slots": 0}))
        self.peer.save("carol", "sip:carol@h", expires=5)
        self.cluster.clock.advance(6)
        [aor] = result(self.call("ul.dump"))["Domains"][0]["Domain"]["AoRs"]
        self.assertEqual(aor["Info"]["Contacts"][0]["Contact"]["Expires"], "expired")

    def test_lookup(self) -> None:
        """ul.lookup answers the live contacts under the AoR cut at @ and lower-cased, with Kamailio's errors otherwise."""
        self.peer.save("alice", "sip:alice@a", q=0.1)
        self.peer.save("alice", "sip:alice@b", q=0.9)
        found = result(self.call("ul.lookup", "location", "ALICE@example.com"))
        self.assertEqual(list(found), ["AoR", "Contacts"])
        self.assertEqual(found["AoR"], "alice")
        self.assertEqual([c["Contact"]["Address"] for c in found["Contacts"]], ["sip:alice@b", "sip:alice@a"])
        self.peer.save("dave", "sip:dave@h", expires=5)
        self.cluster.clock.advance(6)
        expected = {
            ("nobody",): (500, "AOR not found in location table"),
            ("dave",): (500, "AOR has no contacts"),
            (): (500, "Not enough parameters (table and AOR to lookup)"),
            (5,): (500, "Not enough parameters (table and AOR to lookup)"),
        }
        for params, answer in expected.items():
            self.assertEqual(error(self.call("ul.lookup", "location", *params)), answer, params)
        self.assertEqual(error(self.call("ul.lookup", "nosuch", "alice")), (500, "Domain table not found"))

    def test_use_domain(self) -> None:
        """With use_domain the AoR keeps its domain, and one without @ is refused as Kamailio refuses it."""
        cluster = Cluster()
        peer = cluster.add(5070, use_domain=True)
        cluster.run(0.1)
        peer.save("alice@example.com", "sip:alice@h")
        api = ControlAPI(cluster.nodes[5070])
        self.assertEqual(result(rpc(api, "ul.lookup", "location", "Alice@Example.com"))["AoR"], "alice@example.com")
        self.assertEqual(error(rpc(api, "ul.lookup", "location", "alice")), (500, "Domain missing in AOR"))

    def test_rm_and_rm_contact_replicate(self) -> None:
        """ul.rm and ul.rm_contact answer {} and send removes; an unknown AoR is fine for ul.rm and 404 for ul.rm_contact."""
        self.peer.save("alice", "sip:alice@a")
        self.peer.save("alice", "sip:alice@b")
        self.peer.save("bob", "sip:bob@a")
        self.cluster.run(0.1)
        self.assertEqual(result(self.call("ul.rm_contact", "location", "alice", "sip:alice@a")), {})
        self.assertEqual(error(self.call("ul.rm_contact", "location", "alice", "sip:nope@h")), (404, "Contact not found"))
        self.assertEqual(error(self.call("ul.rm_contact", "location", "nobody", "sip:nope@h")), (404, "AOR not found"))
        self.assertEqual(error(self.call("ul.rm_contact", "location", "alice")), (500, "Not enough parameters (table, AOR and contact)"))
        self.assertEqual(result(self.call("ul.rm", "location", "bob")), {})
        self.assertEqual(result(self.call("ul.rm", "location", "nobody")), {})
        self.assertEqual(error(self.call("ul.rm", "location")), (500, "Not enough parameters (table and AOR to lookup)"))
        self.assertEqual(error(self.call("ul.rm", "nosuch", "bob")), (500, "Domain table not found"))
        self.cluster.run(0.1)
        self.assertEqual([c.address for c in self.other.lookup("alice")], ["sip:alice@b"])
        self.assertEqual(self.other.lookup("bob"), [])
        removes = [b for b in usrloc_bodies(self.cluster.nodes[5060], 5061) if b.startswith(b'{"action":2')]
        self.assertEqual(len(removes), 2)

    def test_add(self) -> None:
        """ul.add stores a contact as Kamailio's does (its Call-ID, User-Agent, an ulcx ruid), replicates it, and updates it when added again."""
        self.assertEqual(result(self.call("ul.add", "location", "Carol@h", "sip:carol@h", 100, 0.5, "", 0, 0, 0)), {})
        self.assertEqual(result(self.call("ul.add", "location", "carol", "sip:carol@h", 0, 1, "0", 1, 2, 3, ".", "udp:10.0.0.1:5060")), {})
        self.cluster.run(0.1)
        [carol] = self.other.lookup("carol")
        self.assertEqual((carol.callid, carol.user_agent, carol.q, carol.expires, carol.flags, carol.cflags, carol.methods),
                         ("dfjrewr12386fd6-343@kamailio.rpc", "kamailio SIP Router - RPC Server", 1000, 0, 1, 2, 3))
        self.assertTrue(carol.ruid.startswith("ulcx-"), carol.ruid)
        self.assertEqual((carol.path, carol.received, carol.sock), ("", "", "udp:10.0.0.1:5060"))
        self.assertEqual(error(self.call("ul.add", "location", "carol", "sip:carol@h", 100)), (500, "Not enough parameters or wrong format"))
        self.assertEqual(error(self.call("ul.add", "location", "carol", "sip:c@h", 1, 0.5, "", -1, 0, 0)),
                         (500, "Not enough parameters or wrong format"))
        self.assertEqual(error(self.call("ul.add", "nosuch", "carol", "sip:c@h", 1, 0.5, "", 0, 0, 0)), (500, "Domain table not found"))
        self.assertEqual(error(self.call("ul.add", "location", "carol", "sip:c@h", -5, 0.5, "", 0, 0, 0))[0], 500)

    def test_methods_are_listed(self) -> None:
        """The control API lists the ul.* methods of a registered usrloc peer."""
        listed = result(self.call("system.listMethods"))
        self.assertTrue({"ul.dump", "ul.lookup", "ul.rm", "ul.rm_contact", "ul.add"} <= set(listed))
