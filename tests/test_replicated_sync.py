"""Sync sessions: asking (single, all, none; seeds first) and answering (to the requester, in chunks below a limit, paced)."""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from dmq.node import Node, NodeStatus
from dmq.peer import DMQMessage, PeerError
from dmq.replicated.sync import SyncAnswers, request_sync, requester
from dmq.replicated.wire import Framing
from dmq.sip.uri import SIPURI
from tests.helpers import ManualSend

BRACKETS = Framing(b'{"items":[', b"]}")


def nodes(*ports: int, seeds: tuple[int, ...] = ()) -> list[Node]:
    """Active nodes on 127.0.0.1, those in ``seeds`` marked as seeds."""
    return [Node("127.0.0.1", port, seed=port in seeds) for port in ports]


class RequestSyncTests(SynchronousTestCase):
    """request_sync asks the nodes as its mode says."""

    def setUp(self) -> None:
        self.wire = ManualSend()

    def asked(self) -> list[Optional[int]]:
        return [node.port for node, _, _ in self.wire.sent]

    def test_single_asks_seeds_first_until_one_answers_200(self) -> None:
        """One node at a time, seeds first; a 404 or 408 moves on to the next; a 200 ends it; the outcomes list every answer."""
        a, b, c = nodes(5060, 5061, 5062, seeds=(5062,))
        d = request_sync([a, b, c], b"{}", self.wire, mode="single")
        self.assertEqual(self.asked(), [5062])
        self.wire.sent[0][2].callback(404)
        self.wire.sent[1][2].callback(408)
        self.assertNoResult(d)
        self.wire.sent[2][2].callback(200)
        self.assertEqual(self.asked(), [5062, 5060, 5061])
        self.assertEqual([(n.port, code) for n, code in self.successResultOf(d)], [(5062, 404), (5060, 408), (5061, 200)])

    def test_single_passes_over_nodes_gone_meanwhile(self) -> None:
        """A node no longer active by its turn is not asked; when nobody answers 200 the outcomes say so."""
        a, b = nodes(5060, 5061)
        d = request_sync([a, b], b"{}", self.wire, mode="single")
        b.status = NodeStatus.DISABLED
        self.wire.sent[0][2].callback(503)
        self.assertEqual(self.asked(), [5060])
        self.assertEqual([(n.port, code) for n, code in self.successResultOf(d)], [(5060, 503)])

    def test_all_and_none(self) -> None:
        """all asks every node at once; none asks nobody; no node means no request."""
        d = request_sync(nodes(5060, 5061), b'{"action":1}', self.wire, mode="all")
        self.assertEqual(self.asked(), [5060, 5061])
        self.assertEqual({body for _, body, _ in self.wire.sent}, {b'{"action":1}'})
        for _, _, sent in self.wire.sent:
            sent.callback(200)
        self.assertEqual(len(self.successResultOf(d)), 2)
        self.assertEqual(self.successResultOf(request_sync(nodes(5060), b"{}", self.wire, mode="none")), [])
        self.assertEqual(self.successResultOf(request_sync([], b"{}", self.wire, mode="single")), [])
        self.assertEqual(len(self.wire.sent), 2)

    def test_unknown_mode(self) -> None:
        """A mode other than single, all and none is a ValueError."""
        with self.assertRaises(ValueError):
            request_sync(nodes(5060), b"{}", self.wire, mode="some")

    def test_requester(self) -> None:
        """The requester is the listed node, else the node of the From URI; neither is a 400."""
        listed = Node("127.0.0.1", 5060)
        self.assertIs(requester(DMQMessage("c", b"", node=listed)), listed)
        from_uri = SIPURI("127.0.0.1", 5099, user="c", params={"transport": "tcp"})
        unlisted = requester(DMQMessage("c", b"", from_uri=from_uri))
        self.assertEqual(unlisted.key, ("127.0.0.1", "5099", "tcp"))
        with self.assertRaises(PeerError) as caught:
            requester(DMQMessage("c", b""))
        self.assertEqual(caught.exception.code, 400)


class SyncAnswersTests(SynchronousTestCase):
    """SyncAnswers sends items in chunks, paced, on a wire the test answers."""

    def setUp(self) -> None:
        self.wire = ManualSend()
        self.limit = 100
        self.data = {f"k{i:02d}": f"v{i:02d}" for i in range(20)}
        self.answers: SyncAnswers[str] = SyncAnswers(self.wire, 2, lambda: self.limit, BRACKETS, label="test sync")
        self.a, self.b = nodes(5060, 5061)

    def render(self, key: str) -> Optional[bytes]:
        value = self.data.get(key)
        return None if value is None else json.dumps({key: value}, separators=(",", ":")).encode()

    def answer_all(self) -> None:
        """Answer 200 to every message, including those sent meanwhile."""
        index = 0
        while index < len(self.wire.sent):
            d = self.wire.sent[index][2]
            if not d.called:
                d.callback(200)
            index += 1

    def received(self, node: Node) -> list[str]:
        keys: list[str] = []
        for body in self.wire.bodies(node):
            for item in json.loads(body)["items"]:
                keys.extend(item)
        return keys

    def test_chunks_below_the_limit_to_the_requester_only(self) -> None:
        """Every item goes, once, to the requester, in messages each below the limit and as full as it allows."""
        done = self.answers.answer(self.a, list(self.data), self.render)
        self.answer_all()
        bodies = self.wire.bodies(self.a)
        self.assertEqual(self.received(self.a), list(self.data))
        self.assertTrue(all(len(body) < self.limit for body in bodies), bodies)
        self.assertTrue(all(len(body) + len(b',{"k00":"v00"}') >= self.limit for body in bodies[:-1]))
        self.assertEqual(self.wire.bodies(self.b), [])
        self.assertEqual(self.successResultOf(done), len(bodies))
        self.assertEqual((self.answers.requests, self.answers.chunks_sent, self.answers.items_sent), (1, len(bodies), 20))
        self.assertEqual(list(self.answers.chunk_sizes), [len(body) for body in bodies])
        self.assertEqual(self.answers.sessions, {})

    def test_numbered_members_count_from_one_in_each_message_and_stay_below_the_limit(self) -> None:
        """A numbered framing names items "1", "2", ... afresh in every message, the names counted in the limit."""
        self.answers = SyncAnswers(self.wire, 2, lambda: self.limit, Framing(b'{"multi":{', b"}}", numbered=True))
        self.answers.answer(self.a, list(self.data), self.render)
        self.answer_all()
        bodies = self.wire.bodies(self.a)
        self.assertGreater(len(bodies), 2)
        seen: list[str] = []
        for body in bodies:
            self.assertLess(len(body), self.limit)
            members = json.loads(body)["multi"]
            self.assertEqual(list(members), [str(i) for i in range(1, len(members) + 1)])
            seen.extend(key for item in members.values() for key in item)
        self.assertEqual(seen, list(self.data))
        self.assertTrue(bodies[0].startswith(b'{"multi":{"1":{"k00":"v00"},"2":{"k01":"v01"}'), bodies[0])

    def test_nothing_to_send_is_one_empty_message(self) -> None:
        """No item still makes one message, the empty frame."""
        done = self.answers.answer(self.a, [], self.render)
        self.assertEqual(self.wire.bodies(), [b'{"items":[]}'])
        self.answer_all()
        self.assertEqual(self.successResultOf(done), 1)

    def test_items_read_when_their_message_is_built(self) -> None:
        """An item changed after the request goes with its new value; one deleted is left out."""
        self.answers.outbox.window = 1
        self.answers.answer(self.a, list(self.data), self.render)
        self.data["k19"] = "changed"
        del self.data["k18"]
        self.answer_all()
        self.assertNotIn("k18", self.received(self.a))
        self.assertIn(b'"k19":"changed"', self.wire.bodies()[-1])

    def test_window_paces_every_answer_and_requesters_take_turns(self) -> None:
        """Two requesters share a window of 2 (never more unanswered); once both wait, each free slot goes to the other one in turn."""
        self.answers.answer(self.a, list(self.data), self.render)
        self.answers.answer(self.b, list(self.data), self.render)
        self.assertEqual([n.port for n, _, _ in self.wire.sent], [5060, 5060])
        self.assertEqual(self.answers.in_flight, 2)
        for index in range(3):
            self.wire.sent[index][2].callback(200)
            self.assertEqual(self.answers.in_flight, 2)
        self.assertEqual([n.port for n, _, _ in self.wire.sent], [5060, 5060, 5061, 5060, 5061])
        self.answer_all()
        self.assertEqual(self.received(self.a), self.received(self.b))

    def test_max_items(self) -> None:
        """With max_items, a message holds no more than that many items, however much room is left."""
        answers: SyncAnswers[str] = SyncAnswers(self.wire, 5, lambda: 10_000, BRACKETS, max_items=3)
        answers.answer(self.a, list(self.data), self.render)
        self.answer_all()
        self.assertEqual([len(json.loads(body)["items"]) for body in self.wire.bodies()], [3] * 6 + [2])
        with self.assertRaises(ValueError):
            SyncAnswers(self.wire, 1, lambda: 100, BRACKETS, max_items=0)

    def test_item_above_the_limit_goes_alone(self) -> None:
        """An item bigger than the limit is not lost: it goes in a message of its own."""
        self.data = {"small": "x", "huge": "y" * 500, "after": "z"}
        self.answers.outbox.window = 5
        self.answers.answer(self.a, list(self.data), self.render)
        self.assertEqual([list(map(lambda item: list(item)[0], json.loads(b)["items"])) for b in self.wire.bodies()],
                         [["small"], ["huge"], ["after"]])

    def test_refusal_stops_the_answer(self) -> None:
        """A message answered other than 200 ends that answer: nothing more goes to the node, and it counts as done."""
        self.answers.outbox.window = 1
        done = self.answers.answer(self.a, list(self.data), self.render)
        self.wire.sent[0][2].callback(200)
        self.wire.sent[1][2].callback(404)
        self.assertEqual(len(self.wire.sent), 2)
        self.assertEqual(self.successResultOf(done), 2)
        self.assertEqual(self.answers.sessions, {})

    def test_asking_again_restarts_the_answer(self) -> None:
        """A node asking again while its answer is under way gets one fresh full answer: the first ends, its late answers are ignored."""
        self.answers.outbox.window = 1
        first = self.answers.answer(self.a, list(self.data), self.render)
        second = self.answers.answer(self.a, list(self.data), self.render)
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(len(self.answers.sessions), 1)
        self.wire.sent[0][2].callback(500)  # the first answer's message: ignored
        self.answer_all()
        first_chunk = len(json.loads(self.wire.bodies()[0])["items"])
        self.assertEqual(self.received(self.a)[first_chunk:], list(self.data))
        self.assertEqual(self.successResultOf(second), len(self.wire.sent) - 1)
        self.assertEqual(self.answers.requests, 2)

    def test_stop(self) -> None:
        """stop gives up every answer: each done fires with what it sent, nothing more is sent, late answers change nothing."""
        done = [self.answers.answer(node, list(self.data), self.render) for node in (self.a, self.b)]
        self.answers.stop()
        self.assertEqual([self.successResultOf(d) for d in done], [2, 0])
        self.answer_all()
        self.assertEqual(len(self.wire.sent), 2)
        self.assertEqual((self.answers.sessions, self.answers.outbox.queued), ({}, 0))

    def test_items_are_taken_at_the_request(self) -> None:
        """The keys given are copied at the request: the caller's list may change afterwards."""
        keys: list[Any] = list(self.data)
        self.answers.answer(self.a, keys, self.render)
        keys.clear()
        self.answer_all()
        self.assertEqual(self.received(self.a), list(self.data))
