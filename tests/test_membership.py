"""Membership: events to listeners, readiness, and the reply and timeout rules applied to results (task.Clock)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dmq.membership import Membership
from dmq.node import Node, NodeStatus
from dmq.changes import EventKind, TimeoutPolicy
from dmq.nodelist import NodeList


def membership(**kw: object) -> tuple[Membership, Node, Clock]:
    """A membership of a local node on 127.0.0.1:5060 and one active remote node on 127.0.0.2:5060."""
    clock = Clock()
    nodes = NodeList(Node("127.0.0.1", 5060, local=True))
    remote = nodes.add(Node("127.0.0.2", 5060))
    return Membership(nodes, clock, **kw), remote, clock  # type: ignore[arg-type]


class MembershipTests(SynchronousTestCase):
    """The consequences of what happens on the wire, in one place."""

    def test_node_list_results(self) -> None:
        """A 200 records the round trip and keeps the node active; a 408 disables it and a second removes it."""
        m, remote, clock = membership()
        clock.advance(10)
        m.result(remote, 200, sent_at=9.75, node_list=True)
        self.assertEqual(m.rtt[remote.key], 0.25)
        m.result(remote, 408, sent_at=11, node_list=True)
        self.assertIs(remote.status, NodeStatus.DISABLED)
        m.result(remote, 408, sent_at=12, node_list=True)
        self.assertNotIn(remote, m.nodes)

    def test_stale_timeout_is_ignored(self) -> None:
        """A 408 for a request sent before the node's last contact changes nothing."""
        m, remote, clock = membership()
        clock.advance(20)
        remote.last_seen = 15.0
        m.result(remote, 408, sent_at=10, node_list=True)
        self.assertIs(remote.status, NodeStatus.ACTIVE)

    def test_timeout_of_a_node_removed_and_added_again_is_ignored(self) -> None:
        """A 408 for a request to a node that was removed and listed again since changes nothing on the new entry."""
        m, remote, clock = membership()
        clock.advance(10)
        m.remove_node(remote)
        again = m.add_node("sip:127.0.0.2:5060")
        clock.advance(32)
        m.result(remote, 408, sent_at=9, node_list=True)
        self.assertIs(again.status, NodeStatus.ACTIVE)
        self.assertIs(m.nodes.get(again.key), again)

    def test_removed_node_comes_back_only_by_its_own_list_within_the_hold(self) -> None:
        """After a timeout removes a node, a third party's list cannot add it for timeout_hold s; its own list can."""
        m, remote, clock = membership(timeout_hold=32.0)
        third = m.nodes.add(Node("127.0.0.3", 5060))
        clock.advance(10)
        m.result(remote, 408, sent_at=9, node_list=True)
        m.result(remote, 408, sent_at=9.5, node_list=True)
        self.assertNotIn(remote, m.nodes)
        stale = b"sip:127.0.0.2:5060;status=active\r\nsip:127.0.0.3:5060;status=active\r\n"
        m.nodes.merge_body(stale, 41.0, sender=third)
        self.assertNotIn(remote, m.nodes)
        m.nodes.merge_body(b"sip:127.0.0.2:5060;status=active\r\n", 41.0, sender=Node("127.0.0.2", 5060))
        self.assertIn(remote, m.nodes)

    def test_third_party_list_does_not_revive_a_node_that_timed_out_here(self) -> None:
        """A node that timed out here is made active again within timeout_hold only by itself; another member's list is stale on it."""
        m, remote, clock = membership(timeout_hold=6.4, policy=TimeoutPolicy(remove_inactive=False))
        third = m.nodes.add(Node("127.0.0.3", 5060))
        clock.advance(10)
        m.result(remote, 408, sent_at=3, node_list=True)
        self.assertIs(remote.status, NodeStatus.NOT_ACTIVE)
        says_active = b"sip:127.0.0.2:5060;status=active\r\nsip:127.0.0.3:5060;status=active\r\n"
        m.nodes.merge_body(says_active, 16.0, sender=third)
        self.assertIs(remote.status, NodeStatus.NOT_ACTIVE)
        m.nodes.merge_body(says_active, 16.5, sender=third)  # the hold is over: Kamailio's rule again
        self.assertIs(remote.status, NodeStatus.ACTIVE)
        m.result(remote, 408, sent_at=12, node_list=True)
        m.nodes.merge_body(b"sip:127.0.0.2:5060;status=active\r\n", 17.0, sender=Node("127.0.0.2", 5060))
        self.assertIs(remote.status, NodeStatus.ACTIVE)

    def test_other_channels_count_only_with_fail_counting(self) -> None:
        """A 408 on another channel changes nothing by default, and makes the node not active with fail counting."""
        m, remote, _ = membership()
        m.result(remote, 408, sent_at=0, node_list=False)
        self.assertIs(remote.status, NodeStatus.ACTIVE)
        counting, remote2, _ = membership(policy=TimeoutPolicy(fail_count_enabled=True))
        events = []
        counting.add_event_listener(events.append)
        counting.result(remote2, 500, sent_at=0, node_list=False)
        counting.result(remote2, 408, sent_at=0, node_list=False)
        self.assertIs(remote2.status, NodeStatus.NOT_ACTIVE)
        self.assertEqual([e.kind for e in events], [EventKind.PEER_DOWN])

    def test_failing_listener_does_not_stop_the_others(self) -> None:
        """A listener that raises is logged; the next listener still gets the event."""
        m, remote, _ = membership()
        seen = []

        def broken(event: object) -> None:
            raise RuntimeError("listener bug")

        m.add_event_listener(broken)
        m.add_event_listener(seen.append)
        m.set_node_status(remote, NodeStatus.DISABLED)
        self.assertEqual([e.kind for e in seen], [EventKind.PEER_DISABLED])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_ready_once_with_fresh_deferreds(self) -> None:
        """when_ready hands each caller its own Deferred; readiness runs on_ready once; alone() counts only with init_with_single."""
        calls = []
        m, _, _ = membership(on_ready=lambda: calls.append(1))
        first, second = m.when_ready(), m.when_ready()
        self.assertIsNot(first, second)
        m.alone()
        self.assertNoResult(first)
        m.node_list_received()
        m.node_list_received()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(m.when_ready())
        self.assertEqual(calls, [1])
        single, _, _ = membership(init_with_single=True)
        single.alone()
        self.assertTrue(single.ready)


def test_history_keeps_the_recent_events_with_their_time() -> None:
    """Published events are kept with the time they happened, the oldest dropped past HISTORY."""
    from dmq.membership import HISTORY

    m, remote, clock = membership()
    clock.advance(7)
    m.set_node_status(remote, NodeStatus.DISABLED)
    assert [(t, e.kind) for t, e in m.history] == [(7.0, EventKind.PEER_DISABLED)]
    for i in range(HISTORY + 5):
        m.set_node_status(remote, NodeStatus.ACTIVE if i % 2 == 0 else NodeStatus.NOT_ACTIVE)
    assert len(m.history) == HISTORY
