"""The outbox: window, per-node order by key and group, fair turns, drop_all, built bodies, joined messages (plain Deferreds, task.Clock)."""

from __future__ import annotations

import random
from typing import Any, Hashable, Optional, Union

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dmq.fanout import NOT_SENT, Batching, Outbox
from dmq.node import Node
from tests.helpers import ManualSend

A = Node("127.0.0.1", 5060)
B = Node("127.0.0.1", 5061)
C = Node("127.0.0.1", 5062)


class GeneralOutbox(Outbox):
    """An outbox that always queues and pumps: the general way, without the shortcut of an idle outbox."""

    def _offer(self, node: Node, item: Any) -> None:
        self._enqueue(node, item)


def run_script(seed: int, kind: str) -> tuple[list[tuple[Node, bytes]], dict[tuple[int, int], Union[int, str]], list[Any]]:
    """
    A random run of sends to one or more nodes, answers and window changes
    (the same for one ``seed``) through an outbox of ``kind``: ``general``
    (queued and pumped every time), ``send`` (Deferreds), ``post``
    (``send_then`` and plain callbacks, one item per node) or ``all``
    (``send_then`` and ``post_all``, one item for all the nodes of a send).
    Returns what went out, each item's outcome at each node, and the lanes left.
    """
    rng = random.Random(seed)
    wire = ManualSend()
    results: dict[tuple[int, int], Union[int, str]] = {}
    if kind in ("post", "all"):
        outbox = Outbox(None, window=3, max_queued=6,
                        send_then=lambda node, body, then: wire(node, body).addCallback(then))
    else:
        outbox = (GeneralOutbox if kind == "general" else Outbox)(wire, window=3, max_queued=6)

    def record(index: int, node: Node) -> Any:
        def done(result: Union[int, Failure]) -> None:
            results[index, node.port] = result if isinstance(result, int) else repr(result.value)
        return done

    def record_each(index: int) -> Any:
        return lambda node, result: record(index, node)(result)

    for step in range(400):
        roll = rng.random()
        if roll < 0.5:
            nodes = rng.sample([A, B, C], rng.choice([1, 1, 2, 3]))
            group = rng.choice([None, "t", "t", "u"])
            key = None if group is None or rng.random() < 0.1 else rng.choice("abcd")
            body: Any = b"m%d" % step
            if rng.random() < 0.1:
                body = rng.choice([lambda b=body: b, lambda: None])
            if kind == "all":
                outbox.post_all(nodes, body, record_each(step), group=group, key=key)
            for node in nodes if kind != "all" else ():
                if kind == "post":
                    outbox.post(node, body, record(step, node), group=group, key=key)
                else:
                    outbox.send(node, body, group=group, key=key).addBoth(record(step, node))
        elif roll < 0.95:
            waiting = [d for _, _, d in wire.sent if not d.called]
            if waiting:
                rng.choice(waiting).callback(rng.choice([200, 200, 404, 408]))
        else:
            outbox.window = rng.randint(1, 6)
    while True:
        waiting = [d for _, _, d in wire.sent if not d.called]
        if not waiting:
            break
        waiting[0].callback(200)
    return [(node, body) for node, body, _ in wire.sent], results, list(outbox._lanes)


class OutboxTests(SynchronousTestCase):
    """One outbox on a wire the test answers by hand."""

    def setUp(self) -> None:
        self.wire = ManualSend()
        self.outbox = Outbox(self.wire, window=2)

    def test_window_limits_messages_in_flight(self) -> None:
        """With a window of 2, five messages go two at a time, each answer letting the next one out, in order."""
        results = [self.outbox.send(A, b"m%d" % i) for i in range(5)]
        self.assertEqual(self.wire.bodies(), [b"m0", b"m1"])
        self.assertEqual((self.outbox.in_flight, self.outbox.queued), (2, 3))
        self.wire.answer(b"m1", 408)
        self.assertEqual(self.wire.bodies(), [b"m0", b"m1", b"m2"])
        for body in (b"m0", b"m2", b"m3", b"m4"):
            self.wire.answer(body)
        self.assertEqual([self.successResultOf(d) for d in results], [200, 408, 200, 200, 200])
        self.assertEqual((self.outbox.in_flight, self.outbox.queued), (0, 0))
        self.assertEqual(self.outbox._lanes, {})

    def test_a_full_queue_refuses_more_for_its_node_only(self) -> None:
        """Past max_queued for a silent node, sends for it answer NOT_SENT at once and are counted (one warning);
        another node's messages still go, and the silent node's queue takes more once it drains."""
        outbox = Outbox(self.wire, window=2, max_queued=3)
        queued = [outbox.send(A, b"a%d" % i) for i in range(5)]  # 2 in flight, 3 queued
        refused = [outbox.send(A, b"a%d" % i) for i in range(5, 8)]
        self.assertEqual([self.successResultOf(d) for d in refused], [NOT_SENT] * 3)
        self.assertEqual((outbox.queued, outbox.overflowed), (3, 3))
        b = outbox.send(B, b"b0")
        self.wire.answer(b"a0")  # the new node's turn comes first
        self.wire.answer(b"b0")  # and A's next goes: its queue has room again
        later = outbox.send(A, b"a8")
        self.assertNoResult(later)
        for body in (b"a1", b"a2", b"a3", b"a4", b"a8"):
            self.wire.answer(body)
        self.assertEqual(self.successResultOf(later), 200)
        self.assertEqual(self.successResultOf(b), 200)
        self.assertEqual([self.successResultOf(d) for d in queued], [200] * 5)

    def test_window_change_applies_to_the_next_slot(self) -> None:
        """A window lowered while messages are in flight lets no new one out until the count is below it."""
        self.outbox.window = 4
        for i in range(6):
            self.outbox.send(A, b"m%d" % i)
        self.outbox.window = 2
        self.wire.answer(b"m0")
        self.wire.answer(b"m1")
        self.assertEqual(len(self.wire.sent), 4)
        self.wire.answer(b"m2")
        self.assertEqual(len(self.wire.sent), 5)

    def test_one_message_per_key_in_flight(self) -> None:
        """A second message of one key waits for the node's answer to the first; other keys overtake it."""
        self.outbox.window = 10
        first = self.outbox.send(A, b"a1", group="t", key="a")
        self.outbox.send(A, b"a2", group="t", key="a")
        self.outbox.send(A, b"b1", group="t", key="b")
        self.assertEqual(self.wire.bodies(), [b"a1", b"b1"])
        self.wire.answer(b"a1", 500)
        self.assertEqual(self.successResultOf(first), 500)
        self.assertEqual(self.wire.bodies(), [b"a1", b"b1", b"a2"])

    def test_keys_are_per_node(self) -> None:
        """A key in flight to one node does not hold back the same key to another node."""
        self.outbox.send(A, b"a-to-A", group="t", key="a")
        self.outbox.send(B, b"a-to-B", group="t", key="a")
        self.assertEqual(self.wire.bodies(B), [b"a-to-B"])

    def test_same_key_in_other_group_is_free(self) -> None:
        """The same key in another group is another key."""
        self.outbox.send(A, b"t:a", group="t", key="a")
        self.outbox.send(A, b"u:a", group="u", key="a")
        self.assertEqual(self.wire.bodies(), [b"t:a", b"u:a"])

    def test_whole_group_waits_for_and_holds_back_its_group(self) -> None:
        """An item for a whole group waits for the group's items in flight, and the group's later items wait for it; other groups pass."""
        self.outbox.window = 10
        self.outbox.send(A, b"t:a", group="t", key="a")
        self.outbox.send(A, b"t:*", group="t")
        self.outbox.send(A, b"t:b", group="t", key="b")
        self.outbox.send(A, b"u:a", group="u", key="a")
        self.assertEqual(self.wire.bodies(), [b"t:a", b"u:a"])
        self.wire.answer(b"t:a")
        self.assertEqual(self.wire.bodies(), [b"t:a", b"u:a", b"t:*"])
        self.wire.answer(b"t:*")
        self.assertEqual(self.wire.bodies()[-1], b"t:b")

    def test_whole_group_waits_for_queued_items_of_its_group(self) -> None:
        """An item for a whole group does not overtake an earlier item of its group that is still queued."""
        self.outbox.window = 10
        self.outbox.send(A, b"a1", group="t", key="a")
        self.outbox.send(A, b"a2", group="t", key="a")  # queued behind a1
        self.outbox.send(A, b"t:*", group="t")
        self.wire.answer(b"a1")
        self.assertEqual(self.wire.bodies(), [b"a1", b"a2"])
        self.wire.answer(b"a2")
        self.assertEqual(self.wire.bodies(), [b"a1", b"a2", b"t:*"])

    def test_unordered_items_never_wait_for_keys(self) -> None:
        """Items without a group go as soon as there is a slot, whatever is in flight."""
        self.outbox.window = 10
        self.outbox.send(A, b"t:*", group="t")
        self.outbox.send(A, b"t:a", group="t", key="a")
        self.outbox.send(A, b"free")
        self.assertEqual(self.wire.bodies(), [b"t:*", b"free"])

    def test_nodes_take_turns(self) -> None:
        """With a window of 1 and a backlog for two nodes, the free slot alternates between them."""
        self.outbox.window = 1
        for i in range(3):
            self.outbox.send(A, b"A%d" % i)
        for i in range(3):
            self.outbox.send(B, b"B%d" % i)
        while len(self.wire.sent) < 6:
            self.wire.sent[-1][2].callback(200)
        self.assertEqual(self.wire.bodies(), [b"A0", b"B0", b"A1", b"B1", b"A2", b"B2"])

    def test_lookahead_bounds_overtaking(self) -> None:
        """Only the first `lookahead` queued items of a node are looked at for one that may overtake."""
        outbox = Outbox(self.wire, window=10, lookahead=2)
        outbox.send(A, b"a1", group="t", key="a")
        outbox.send(A, b"a2", group="t", key="a")
        outbox.send(A, b"a3", group="t", key="a")
        outbox.send(A, b"b1", group="t", key="b")  # third in the queue: out of sight
        self.assertEqual(self.wire.bodies(), [b"a1"])
        self.wire.answer(b"a1")
        self.assertEqual(self.wire.bodies(), [b"a1", b"a2", b"b1"])

    def test_drop_all(self) -> None:
        """drop_all answers every queued item 503 at once; what is in flight completes with the node's code."""
        in_flight = [self.outbox.send(A, b"m0"), self.outbox.send(B, b"m1")]
        queued = [self.outbox.send(A, b"m2"), self.outbox.send(B, b"m3", group="t", key="k")]
        self.outbox.drop_all()
        self.assertEqual([self.successResultOf(d) for d in queued], [NOT_SENT, NOT_SENT])
        self.assertEqual((self.outbox.in_flight, self.outbox.queued), (2, 0))
        self.wire.answer(b"m0", 200)
        self.wire.answer(b"m1", 408)
        self.assertEqual([self.successResultOf(d) for d in in_flight], [200, 408])
        self.assertEqual(self.wire.bodies(), [b"m0", b"m1"])
        self.assertEqual(self.outbox.in_flight, 0)

    def test_built_body_is_built_when_its_turn_comes(self) -> None:
        """A callable body is called only when a slot is free, so it carries the state of that moment."""
        state = {"value": b"old"}
        self.outbox.send(A, b"m0")
        self.outbox.send(A, b"m1")
        d = self.outbox.send(A, lambda: state["value"])
        state["value"] = b"new"
        self.assertEqual(self.outbox.queued, 1)
        self.wire.answer(b"m0")
        self.assertEqual(self.wire.bodies()[-1], b"new")
        self.wire.answer(b"new", 200)
        self.assertEqual(self.successResultOf(d), 200)

    def test_withdrawn_body_uses_no_slot(self) -> None:
        """A body callable returning None withdraws its item: answered 503 at once, and the next item takes the slot."""
        self.outbox.window = 1
        withdrawn = self.outbox.send(A, lambda: None)
        self.outbox.send(A, b"next")
        self.assertEqual(self.successResultOf(withdrawn), NOT_SENT)
        self.assertEqual(self.wire.bodies(), [b"next"])
        self.assertEqual(self.outbox.in_flight, 1)

    def test_shortcut_and_callbacks_change_nothing(self) -> None:
        """Random runs of sends, answers and window changes send the same messages in the same order, with the
        same outcomes, whether items are queued and pumped every time, sent at once when the outbox is idle,
        posted with plain callbacks, or posted once for all the nodes of a send."""
        for seed in range(30):
            general = run_script(seed, "general")
            self.assertGreater(len(general[0]), 100)
            self.assertIn(NOT_SENT, general[1].values())  # full queues and withdrawn bodies are in the runs
            self.assertEqual(run_script(seed, "send"), general, seed)
            self.assertEqual(run_script(seed, "post"), general, seed)
            self.assertEqual(run_script(seed, "all"), general, seed)

    def test_post_calls_back_without_a_deferred(self) -> None:
        """post hands the send_then function the body and calls done with the code it is told; a full queue
        answers NOT_SENT before post returns; a send_then that raises fails only its item."""
        calls: list[Any] = []
        outbox = Outbox(None, window=1, max_queued=1, send_then=lambda node, body, then: calls.append((body, then)))
        done: list[Any] = []
        outbox.post(A, b"first", done.append)
        outbox.post(A, b"second", done.append)
        outbox.post(A, b"third", done.append)
        self.assertEqual(([body for body, _ in calls], done), ([b"first"], [NOT_SENT]))
        calls[0][1](404)
        self.assertEqual(([body for body, _ in calls], done), ([b"first", b"second"], [NOT_SENT, 404]))

        def broken(node: Node, body: bytes, then: Any) -> None:
            raise RuntimeError("cannot send")

        failing = Outbox(None, window=1, send_then=broken)
        failing.post(A, b"x", done.append)
        self.assertIsInstance(done[-1], Failure)
        self.assertEqual((failing.in_flight, failing._lanes), (0, {}))
        self.flushLoggedErrors(RuntimeError)
        with self.assertRaises(ValueError):
            Outbox(self.wire, window=1, send_then=broken)
        with self.assertRaises(ValueError):
            Outbox(None, window=1)

    def test_built_body_may_queue_more(self) -> None:
        """A body callable may queue the next item for its node: the outbox sends it in the same turn when a slot is free."""
        self.outbox.window = 3
        chunks = [b"c0", b"c1", b"c2"]

        def build() -> Optional[bytes]:
            body = chunks.pop(0)
            if chunks:
                self.outbox.send(A, build)
            return body

        self.outbox.send(A, build)
        self.assertEqual(self.wire.bodies(), [b"c0", b"c1", b"c2"])

    def test_failing_body_or_send_fails_only_its_item(self) -> None:
        """A body callable that raises, or a send that fails, fails that item's Deferred and frees its slot."""
        self.outbox.window = 1

        def broken() -> bytes:
            raise RuntimeError("cannot build")

        bad_body = self.outbox.send(A, broken)
        self.failureResultOf(bad_body, RuntimeError)
        later = self.outbox.send(A, b"ok")
        [(_, _, d)] = self.wire.sent
        d.errback(ConnectionError("gone"))
        self.failureResultOf(later, ConnectionError)
        self.assertEqual(self.outbox.in_flight, 0)
        after = self.outbox.send(A, b"after")
        self.wire.answer(b"after")
        self.assertEqual(self.successResultOf(after), 200)

    def test_bad_arguments(self) -> None:
        """A key without a group, or a window below 1, is a ValueError."""
        with self.assertRaises(ValueError):
            self.outbox.send(A, b"x", key="a")
        with self.assertRaises(ValueError):
            Outbox(self.wire, window=0)


class PacedOverTimeTests(SynchronousTestCase):
    """The outbox on a wire whose nodes answer after a delay of the clock."""

    def test_burst_is_spread_over_answers(self) -> None:
        """Twenty messages to two nodes answering after 0.125 s each, window 4: never more than 4 unanswered, all answered in five rounds."""
        clock = Clock()
        peak = [0]
        outbox: Outbox

        def send(node: Node, body: bytes) -> "Deferred[int]":
            peak[0] = max(peak[0], outbox.in_flight)  # this one counted already
            return task.deferLater(clock, 0.125, lambda: 200)

        outbox = Outbox(send, window=4)
        results: list[Any] = []
        for i in range(10):
            for node in (A, B):
                outbox.send(node, b"m%d" % i, group="t", key=i).addCallback(results.append)
        clock.pump([0.125] * 4)
        self.assertEqual(len(results), 16)
        clock.advance(0.125)
        self.assertEqual(results, [200] * 20)
        self.assertEqual(peak[0], 4)


def joined(limit: int = 1000, most: int = 16, window: int = 2) -> Batching:
    """Bodies joined as ``[b1,b2,...]`` for every node but C, which takes them one a message."""
    return Batching(b"[", b"]", lambda node: node is not C, lambda: limit, most=most, window=window)


def items_of(body: bytes) -> list[bytes]:
    """The item bodies a message carries (``[b1,b2]`` joined, else the body itself)."""
    return body[1:-1].split(b",") if body.startswith(b"[") else [body]


class BatchingTests(SynchronousTestCase):
    """Joined messages: a node's backlog goes in one message, as much of it as may be in flight together."""

    def setUp(self) -> None:
        self.wire = ManualSend()

    def backlog(self, outbox: Outbox, node: Node, count: int, **kw: Any) -> list["Deferred[int]"]:
        return [outbox.send(node, b"k%d" % i, group="t", key=i, **kw) for i in range(count)]

    def test_a_backlog_goes_joined_once_a_slot_frees(self) -> None:
        """With a window of 2 for the node, the first two go alone as they come; the rest wait and go in one
        message when a slot frees; its answer is each of its items' answer."""
        outbox = Outbox(self.wire, window=64, batching=joined())
        results = self.backlog(outbox, A, 6)
        self.assertEqual(self.wire.bodies(), [b"k0", b"k1"])
        self.assertEqual((outbox.in_flight, outbox.queued), (2, 4))
        self.wire.answer(b"k0")
        self.assertEqual(self.wire.bodies(), [b"k0", b"k1", b"[k2,k3,k4,k5]"])
        self.assertEqual((outbox.in_flight, outbox.queued), (2, 0))
        self.wire.answer(b"[k2,k3,k4,k5]", 408)
        self.wire.answer(b"k1")
        self.assertEqual([self.successResultOf(d) for d in results], [200, 200, 408, 408, 408, 408])
        self.assertEqual((outbox.in_flight, outbox._lanes), (0, {}))

    def test_numbered_members(self) -> None:
        """Numbered, each body is a member named by its place from 1, and the names count towards the limit."""
        multi = Batching(b'{"m":{', b"}}", lambda node: True, lambda: len(b'{"m":{"1":k1,"2":k2}}'), window=1,
                         numbered=True)
        outbox = Outbox(self.wire, window=64, batching=multi)
        self.backlog(outbox, A, 5)
        self.wire.answer(b"k0")
        self.assertEqual(self.wire.bodies()[-1], b'{"m":{"1":k1,"2":k2}}')
        self.wire.answer(b'{"m":{"1":k1,"2":k2}}')
        self.assertEqual(self.wire.bodies()[-1], b'{"m":{"1":k3,"2":k4}}')

    def test_a_node_that_does_not_take_them_gets_one_body_a_message(self) -> None:
        """A node the batching does not accept has no window of its own and gets its items alone."""
        outbox = Outbox(self.wire, window=64, batching=joined())
        self.backlog(outbox, C, 5)
        self.assertEqual(self.wire.bodies(), [b"k0", b"k1", b"k2", b"k3", b"k4"])

    def test_items_of_one_key_never_go_together(self) -> None:
        """Two items of one key are not in one message (the receiver may apply them in any order): the second
        waits for the answer to the message carrying the first; whole-group items go with nothing of their group."""
        outbox = Outbox(self.wire, window=64, batching=joined(window=1))
        outbox.send(A, b"first", group="u", key="x")
        for body, key in ((b"a1", "a"), (b"b1", "b"), (b"a2", "a"), (b"c1", "c")):
            outbox.send(A, body, group="t", key=key)
        outbox.send(A, b"t*", group="t")
        outbox.send(A, b"d1", group="t", key="d")
        self.wire.answer(b"first")
        self.assertEqual(self.wire.bodies()[-1], b"[a1,b1,c1]")
        self.wire.answer(b"[a1,b1,c1]")
        self.assertEqual(self.wire.bodies()[-1], b"a2")  # the wall waits for a2; d1 waits behind the wall
        self.wire.answer(b"a2")
        self.assertEqual(self.wire.bodies()[-1], b"t*")
        self.wire.answer(b"t*")
        self.assertEqual(self.wire.bodies()[-1], b"d1")

    def test_size_count_and_built_bodies_bound_a_message(self) -> None:
        """A message stays within the limit (head, tail and separators counted) and the most items; a body
        built when its turn comes goes alone; what does not fit goes next, first."""
        outbox = Outbox(self.wire, window=64, batching=joined(limit=len(b"[k2,k3,k4]"), most=4, window=1))
        outbox.send(A, b"k0", group="t", key=0)
        self.backlog(outbox, A, 9)[0].addCallback(lambda code: None)  # k0 of key 0 again: it waits
        outbox.send(A, lambda: b"built", group="t", key="b")
        self.wire.answer(b"k0")
        self.assertEqual(self.wire.bodies()[-1], b"[k0,k1,k2]")
        for body in (b"[k0,k1,k2]", b"[k3,k4,k5]", b"[k6,k7,k8]"):
            self.wire.answer(body)
        self.assertEqual(self.wire.bodies()[1:], [b"[k0,k1,k2]", b"[k3,k4,k5]", b"[k6,k7,k8]", b"built"])
        roomy = Outbox(self.wire, window=64, batching=joined(most=3, window=1))
        self.backlog(roomy, B, 7)
        self.wire.answer(b"k0")
        self.assertEqual(self.wire.bodies(B)[-1], b"[k1,k2,k3]")

    def test_a_refusal_sends_each_item_again_for_its_own_answer(self) -> None:
        """An answer other than 200 and 408 sends the items again one by one, still in flight for their keys;
        each gets its own answer.  After a 400 the node gets no joined message any more."""
        outbox = Outbox(self.wire, window=64, batching=joined(window=1))
        outbox.send(A, b"k0", group="t", key=0)
        results = self.backlog(outbox, A, 4)[1:]
        later = outbox.send(A, b"k1b", group="t", key=1)
        self.wire.answer(b"k0")
        self.wire.answer(b"[k0,k1,k2,k3]", 500)
        self.assertEqual(self.wire.bodies()[-4:], [b"k0", b"k1", b"k2", b"k3"])
        self.assertEqual(outbox.in_flight, 4)  # k1b still waits for k1
        self.wire.answer(b"k1", 404)
        self.wire.answer(b"k2")
        self.wire.answer(b"k3", 500)
        self.assertEqual([self.successResultOf(d) for d in results], [404, 200, 500])
        self.assertEqual(self.wire.bodies()[-1], b"k3")  # k0, sent again, holds the node's one slot
        self.wire.answer(b"k0")
        self.assertEqual(self.wire.bodies()[-1], b"k1b")
        self.wire.answer(b"k1b")
        self.assertEqual(self.successResultOf(later), 200)

        self.backlog(outbox, A, 4)
        self.wire.answer(b"k0")
        self.wire.answer(b"[k1,k2,k3]", 400)
        for body in (b"k1", b"k2", b"k3"):
            self.wire.answer(body)
        self.backlog(outbox, A, 4)
        self.assertEqual(self.wire.bodies()[-4:], [b"k0", b"k1", b"k2", b"k3"])
        self.flushLoggedErrors()

    def test_failure_of_a_joined_message_fails_each_item(self) -> None:
        """A send that fails fails every item the message carried, and frees the node's slot."""
        outbox = Outbox(self.wire, window=64, batching=joined(window=1))
        results = self.backlog(outbox, A, 3)
        self.wire.answer(b"k0")
        self.wire.sent[-1][2].errback(ConnectionError("gone"))
        for d in results[1:]:
            self.failureResultOf(d, ConnectionError)
        self.assertEqual((outbox.in_flight, outbox._lanes), (0, {}))

    def test_random_runs_keep_order_and_answer_every_item_once(self) -> None:
        """Random sends to three nodes (one that takes no joined message), answers of every kind and window
        changes: no two items of one key to one node are ever in flight at once, a whole-group item is in
        flight with nothing else of its group, items of one key reach their node in the order sent, every
        item is answered exactly once, and nothing is left in flight."""
        for seed in range(40):
            rng = random.Random(seed)
            wire = ManualSend()
            outbox = Outbox(wire, window=4, batching=joined(limit=rng.choice([12, 30, 1000]), most=rng.randint(2, 6),
                                                               window=rng.randint(1, 3)))
            posted: dict[bytes, tuple[Node, str, Optional[str]]] = {}
            answers: dict[tuple[bytes, int], list[Any]] = {}
            order: dict[tuple[int, str, Optional[str]], list[bytes]] = {}
            checked = 0
            for step in range(300):
                roll = rng.random()
                if roll < 0.5:
                    node = rng.choice([A, B, C])
                    key = None if rng.random() < 0.1 else rng.choice("abcde")
                    body = b"%d" % step
                    posted[body] = (node, "t", key)
                    order.setdefault((node.port, "t", key), []).append(body)
                    outbox.send(node, body, group="t", key=key).addBoth(
                        lambda r, b=body, n=node: answers.setdefault((b, n.port), []).append(r))
                elif roll < 0.95:
                    waiting = [d for _, _, d in wire.sent if not d.called]
                    if waiting:
                        rng.choice(waiting).callback(rng.choice([200, 200, 200, 408, 404, 400, 500]))
                else:
                    outbox.window = rng.randint(1, 6)
                # Invariant: what is in flight to each node.
                for node in (A, B, C):
                    flying = [item for n, body, d in wire.sent if n is node and not d.called for item in items_of(body)]
                    keys = [posted[item][2] for item in flying]
                    named = [key for key in keys if key is not None]
                    self.assertEqual(len(named), len(set(named)), (seed, step, flying))
                    if None in keys:
                        self.assertEqual(keys, [None], (seed, step, flying))
                    checked += 1
            while True:
                waiting = [d for _, _, d in wire.sent if not d.called]
                if not waiting:
                    break
                waiting[0].callback(200)
            self.assertEqual(sorted(answers), sorted((b, n.port) for b, (n, _, _) in posted.items()), seed)
            self.assertTrue(all(len(results) == 1 for results in answers.values()), seed)
            first_sent: dict[tuple[int, bytes], int] = {}
            for index, (node, body, _) in enumerate(wire.sent):
                for item in items_of(body):
                    first_sent.setdefault((node.port, item), index)
            for (port, _, _), bodies in order.items():
                sent_at = [first_sent[port, body] for body in bodies]
                self.assertEqual(sent_at, sorted(sent_at), seed)
            self.assertTrue(any(body.startswith(b"[") for _, body, _ in wire.sent), seed)
            self.assertEqual((outbox.in_flight, outbox._lanes), (0, {}), seed)
        self.assertGreater(checked, 0)
        self.flushLoggedErrors()
