"""A Python DMQ node in clusters of real Kamailio nodes, each build in turn (membership and script channels)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import task

from dmq import CallbackPeer, DMQService, EventKind, Node
from dmq.peer import DMQMessage

from ..helpers import assert_alive
from .kamailio import KamailioNode, eventually

PING = 5  # seconds, Kamailio's minimum


def address_of(svc: DMQService) -> tuple[str, int]:
    """The Python node's (host, port)."""
    local = svc.nodes.local
    assert local.port is not None
    return (local.host, local.port)


def status_on(k: KamailioNode, svc: DMQService) -> str | None:
    """The status Kamailio ``k`` lists the Python node with, or None."""
    return k.node_status(address_of(svc))


def status_in(svc: DMQService, k: KamailioNode) -> str | None:
    """The status the Python node lists Kamailio ``k`` with, or None."""
    node = svc.nodes.get(k.uri)
    return node.status.value if node is not None else None


def sleep(reactor: Any, seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_python_joins_kamailio_cluster(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """A Python node seeded with a Kamailio joins a 2-node cluster: within 2 s all list each other active, with Kamailio's agent."""
    k1 = kamailio(ping_interval=PING)
    k2 = kamailio([k1], ping_interval=PING)
    yield eventually(lambda: k1.node_status(k2) == "active", timeout=5, reactor=reactor)
    svc = python_node([k1.uri])
    started = reactor.seconds()
    yield eventually(
        lambda: status_on(k1, svc) == "active"
        and status_on(k2, svc) == "active"
        and status_in(svc, k1) == "active"
        and status_in(svc, k2) == "active",
        timeout=2,
        reactor=reactor,
    )
    assert reactor.seconds() - started < 2
    assert svc.ready
    # Each Kamailio's Server / User-Agent is known once it said something to the Python node (a ping at the latest).
    release = ".".join(str(part) for part in kamailio.version)
    yield eventually(lambda: all(svc.nodes.get(k.uri).agent for k in (k1, k2)), timeout=PING + 1, reactor=reactor)
    for k in (k1, k2):
        agent = svc.nodes.get(k.uri).agent
        assert agent.startswith(f"kamailio ({release} "), agent
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_kamailio_joins_through_python(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """A Kamailio whose only seed is the Python node joins; within one ping interval all list all active."""
    k1 = kamailio(ping_interval=PING)
    svc = python_node([k1.uri])
    yield eventually(lambda: status_on(k1, svc) == "active", timeout=2, reactor=reactor)
    k2 = kamailio([str(svc.nodes.local.uri)], ping_interval=PING)
    yield eventually(
        lambda: status_on(k2, svc) == "active"
        and k2.node_status(k1) == "active"
        and k1.node_status(k2) == "active"
        and status_in(svc, k2) == "active",
        timeout=PING + 1,
        reactor=reactor,
    )
    for k in (k1, k2):
        listed = [(n["host"], n["port"]) for n in k.list_nodes()]
        assert len(listed) == len(set(listed)) == 3
    assert len(list(svc.nodes)) == 3
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_python_stays_active_through_pings(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """The Python node answers Kamailio's pings: still active after 3 ping intervals, never dropped."""
    k1 = kamailio(ping_interval=PING)
    svc = python_node([k1.uri])
    yield eventually(lambda: status_on(k1, svc) == "active", timeout=2, reactor=reactor)
    answered_before = svc.channel_stats["notification_peer"].received
    seen = set()
    for _ in range(3 * PING * 2 + 2):
        yield sleep(reactor, 0.5)
        seen.add(status_on(k1, svc))
    assert seen == {"active"}
    assert svc.channel_stats["notification_peer"].received - answered_before >= 3
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_kamailio_death_and_return(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """A killed Kamailio is disabled after the ping timeout (with events); restarted, it is active again."""
    k1 = kamailio(ping_interval=PING)
    k2 = kamailio([k1], ping_interval=PING)
    svc = python_node([k1.uri], t1=0.1)
    events: list[Any] = []
    svc.add_event_listener(events.append)
    yield eventually(lambda: status_in(svc, k2) == "active", timeout=PING + 2, reactor=reactor)
    k2.kill()
    # next ping within 5 s, its timeout 64*T1 = 6.4 s later
    yield eventually(lambda: status_in(svc, k2) in ("disabled", None), timeout=PING + 8, reactor=reactor)
    kinds = [e.kind for e in events if (e.node.host, e.node.port) == k2.address]
    assert kinds[-1] is EventKind.PEER_DISABLED
    k2.start()
    yield eventually(lambda: status_in(svc, k2) == "active", timeout=PING + 2, reactor=reactor)
    assert [e.kind for e in events if (e.node.host, e.node.port) == k2.address][-1] is EventKind.PEER_UP
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_python_death_seen_by_kamailio(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """Kamailio disables a Python node that dies after its ping timeout."""
    k1 = kamailio(ping_interval=PING, fr_timer_ms=2000)
    svc = python_node([k1.uri])
    yield eventually(lambda: status_on(k1, svc) == "active", timeout=2, reactor=reactor)
    # die without a word: close the sockets, send nothing
    svc.notification.stop_pinging()
    svc.transactions.stop()
    yield svc.transport.stop()
    yield eventually(lambda: status_on(k1, svc) in ("disabled", None), timeout=PING + 4, reactor=reactor)
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_python_graceful_stop_seen_at_once(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """A Python node that stops gracefully is disabled on Kamailio at once."""
    k1 = kamailio(ping_interval=PING)
    svc = python_node([k1.uri])
    yield eventually(lambda: status_on(k1, svc) == "active", timeout=2, reactor=reactor)
    started = reactor.seconds()
    yield svc.stopService()
    yield eventually(lambda: status_on(k1, svc) == "disabled", timeout=1, reactor=reactor)
    assert reactor.seconds() - started < 1.5
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_script_channel_both_ways(kamailio: Any, python_node: Any, reactor: Any) -> Any:
    """Kamailio's dmq_bcast_message reaches a Python peer (200, empty body); a Python broadcast Kamailio does not serve gets 404."""
    k1 = kamailio(ping_interval=PING)
    svc = python_node([k1.uri])
    received: list[DMQMessage] = []
    svc.register_peer(CallbackPeer("custom1", received.append))
    yield eventually(lambda: status_on(k1, svc) == "active", timeout=2, reactor=reactor)
    assert k1.bcast(b"hello from kamailio") == 200
    yield eventually(lambda: received, timeout=2, reactor=reactor)
    assert received[0].body == b"hello from kamailio"
    assert received[0].node is not None and (received[0].node.host, received[0].node.port) == k1.address
    results = yield svc.bcast_message("no_such_channel", b"anyone?", "text/plain")
    assert [((n.host, n.port), r.code) for n, r in results] == [(k1.address, 404)]
    results = yield svc.bcast_message("custom1", b"back at you", "text/plain")
    assert [r.code for _, r in results] == [202]
    # Kamailio keeps the Python node and keeps answering
    yield sleep(reactor, 1)
    assert status_on(k1, svc) == "active"
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_three_python_nodes(python_node: Any, reactor: Any) -> Any:
    """Three Python nodes converge, survive one node's death and return, never listing a node twice."""
    a = python_node(t1=0.1)
    b = python_node([str(a.nodes.local.uri)], t1=0.1)
    c = python_node([str(b.nodes.local.uri)], t1=0.1)
    nodes = [a, b, c]
    addresses = {address_of(svc) for svc in nodes}

    def converged(svcs: list[DMQService]) -> bool:
        want = {address_of(s) for s in svcs}
        for svc in svcs:
            keys = [n.key for n in svc.nodes]
            assert len(keys) == len(set(keys)), "a node listed twice"
            if {(n.host, n.port) for n in svc.nodes if n.status.value == "active"} != want:
                return False
        return True

    yield eventually(lambda: converged(nodes), timeout=PING + 1, reactor=reactor)
    c_address = address_of(c)
    c_key = Node(*c_address).key

    def seen_leaving() -> bool:
        statuses = [s.nodes.get(c_key) for s in (a, b)]
        return all(n is None or n.status.value == "disabled" for n in statuses)

    yield c.stopService()
    try:
        yield eventually(seen_leaving, timeout=2, reactor=reactor)
    except AssertionError:
        raise AssertionError(
            f"c still listed: {[s.nodes.get(c_key) for s in (a, b)]}; c's view at stop: {list(c.nodes)}; "
            f"c sent {c.channel_stats.get('notification_peer')}"
        ) from None
    c2 = python_node([str(a.nodes.local.uri)], address=c_address, t1=0.1)
    yield eventually(lambda: converged([a, b, c2]), timeout=2 * PING, reactor=reactor)
    assert {address_of(s) for s in (a, b, c2)} == addresses
