"""The htable peer in clusters of real Kamailio nodes, each build in turn (enable_dmq=1, dmq_init_sync=1, a dmqreplicate=1 table), and three Python nodes over loopback."""

from __future__ import annotations

import subprocess
import time
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import task

from dmq import DMQService
from dmq.peers import HTablePeer

from ..helpers import assert_alive, free_address
from .kamailio import KamailioNode, eventually

PING = 5
EXPIRE = 3600
# Kamailio applies htable.setex only to tables with autoexpire; the Python table gets the same default.
KAMAILIO_TABLE = f"t=>size=8;autoexpire={EXPIRE};dmqreplicate=1;"
PYTHON_TABLE = f"t:expire={EXPIRE}"


@pytest.fixture
def htable_node(python_node: Any) -> Callable[..., tuple[DMQService, HTablePeer]]:
    """Factory: a started DMQService with an HTablePeer on a loopback address of its own (or ``address``); stopped at teardown."""

    def make(seeds: list[str] = (), tables: list[str] = (PYTHON_TABLE,), address: tuple[str, int] | None = None,  # type: ignore[assignment]
             svc_kw: dict[str, Any] | None = None, **peer_kw: Any) -> tuple[DMQService, HTablePeer]:
        peer = HTablePeer(tables=list(tables), **peer_kw)
        return python_node(seeds, address, [peer], **(svc_kw or {})), peer

    return make


def kam(kamailio: Any, seeds: list[Any] = ()) -> KamailioNode:  # type: ignore[assignment]
    """A Kamailio node with the replicated table ``t`` (autoexpire) and 5 s pings."""
    return kamailio(list(seeds), ping_interval=PING, tables=(KAMAILIO_TABLE,))


def kamailio_expire(k: KamailioNode, key: str) -> float:
    """The expiry ``htable.get`` shows for ``key`` (local time, whole seconds) as epoch seconds; 0 for NEVER."""
    text = k.rpc("htable.get", "t", key)["item"]["expire"]
    return 0.0 if text == "NEVER" else time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def is_active(svc: DMQService, k: KamailioNode) -> bool:
    """Whether the Python node lists ``k`` as active and ``k`` lists the Python node as active."""
    node = svc.nodes.get(k.uri)
    return node is not None and node.status.value == "active" and k.node_status(str(svc.nodes.local.uri)) == "active"


def only_200(svc: DMQService) -> dict[int, int]:
    """The answer codes the Python node got on the htable channel."""
    return dict(svc.channel_stats["htable"].results)


def sleep(reactor: Any, seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


def fill_kamailio(k: KamailioNode, count: int) -> None:
    """``count`` cells through RPC: strings of ~60 bytes, every third an integer, every fifth with its own expiry."""
    for i in range(count):
        key = f"key-{i:05d}"
        if i % 3 == 0:
            k.rpc("htable.seti", "t", key, i)
        else:
            k.rpc("htable.sets", "t", key, f"value-{i:05d}-" + "v" * 48)
        if i % 5 == 0:
            k.rpc("htable.setex", "t", key, 600 + i)


@pytest_twisted.inlineCallbacks
def test_kamailio_changes_reach_python(kamailio: Any, htable_node: Any, reactor: Any) -> Any:
    """kamcmd/RPC htable.sets, seti, setex, delete on Kamailio show in the Python table within 1 s each; the Python node answers 200."""
    k1 = kam(kamailio)
    k2 = kam(kamailio, [k1])
    svc, peer = htable_node([k1.uri])
    yield eventually(lambda: is_active(svc, k1) and is_active(svc, k2), timeout=PING + 2, reactor=reactor)

    def timed(change: Callable[[], Any], check: Callable[[], bool]) -> Any:
        change()
        return eventually(check, timeout=1.0, interval=0.01, reactor=reactor)

    kamcmd = [k1.build.kamcmd, "-s", f"unix:{k1.ctl_socket}"]
    yield timed(lambda: subprocess.run([*kamcmd, "htable.sets", "t", "a", "hello"], check=True, capture_output=True),
                lambda: peer.get("t", "a") == "hello")
    yield timed(lambda: k2.rpc("htable.seti", "t", "n", 42), lambda: peer.get("t", "n") == 42)
    now = reactor.seconds()
    yield timed(lambda: k1.rpc("htable.setex", "t", "a", 100), lambda: peer.cell("t", "a").expire < now + 200)
    assert abs(peer.cell("t", "a").expire - (now + 100)) <= 1
    assert abs(peer.cell("t", "a").expire - kamailio_expire(k1, "a")) <= 1
    yield timed(lambda: k1.rpc("htable.delete", "t", "n"), lambda: peer.get("t", "n") is None)
    yield timed(lambda: k2.rpc("htable.sets", "t", "café", "naïve ✓"), lambda: peer.get("t", "café") == "naïve ✓")
    assert peer.dump("t") == k1.htable_items("t") == k2.htable_items("t")
    stats = svc.channel_stats["htable"]
    assert stats.received >= 5 and set(stats.answered) == {200}
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_python_changes_reach_kamailio(kamailio: Any, htable_node: Any, reactor: Any) -> Any:
    """Python set, incr, set_expire, delete and remove_matching show on both Kamailio nodes within 1 s, and Kamailio answers every message 200."""
    k1 = kam(kamailio)
    k2 = kam(kamailio, [k1])
    svc, peer = htable_node([k1.uri])
    yield eventually(lambda: is_active(svc, k1) and is_active(svc, k2), timeout=PING + 2, reactor=reactor)

    def everywhere(expected: dict[str, Any]) -> Any:
        return eventually(lambda: k1.htable_items("t") == expected and k2.htable_items("t") == expected,
                          timeout=1.0, interval=0.02, reactor=reactor)

    peer.set("t", "s", "from python")
    peer.set("t", "rm-1", "x")
    peer.set("t", "rm-2", 2)
    peer.set("t", "v1", "ban:10.0.0.1")
    peer.set("t", "v2", "ok:10.0.0.2")
    assert peer.incr("t", "calls", 41) == 41
    assert peer.incr("t", "calls") == 42
    yield everywhere({"s": "from python", "rm-1": "x", "rm-2": 2, "v1": "ban:10.0.0.1", "v2": "ok:10.0.0.2", "calls": 42})
    assert k1.rpc("htable.get", "t", "calls")["item"]["value"] == 42

    peer.delete("t", "s")
    peer.remove_matching("t", regex="^RM-[[:digit:]]$")  # POSIX class, any case: as Kamailio reads it
    peer.remove_matching("t", prefix="ban:", by_value=True)
    yield everywhere({"v2": "ok:10.0.0.2", "calls": 42})
    assert peer.dump("t") == {"v2": "ok:10.0.0.2", "calls": 42}

    results = yield peer.set("t", "x", "soon", expire=90)
    assert {code for _, code in results} == {200}
    now = reactor.seconds()
    yield eventually(lambda: abs(kamailio_expire(k1, "x") - (now + 90)) <= 1
                     and abs(kamailio_expire(k2, "x") - (now + 90)) <= 1, timeout=1.0, reactor=reactor)
    yield peer.set_expire("t", "v2", 30)
    assert abs(kamailio_expire(k2, "v2") - (now + 30)) <= 1
    yield eventually(lambda: peer.in_flight == 0, timeout=2, reactor=reactor)
    assert only_200(svc) == {200: svc.channel_stats["htable"].sent}
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_a_burst_goes_joined_to_python_and_one_by_one_to_kamailio(kamailio: Any, htable_node: Any, reactor: Any) -> Any:
    """A burst of 600 sets from a Python node reaches a Kamailio node and another Python node: the Python node gets
    part of it as {"batch":[...]} messages, which Kamailio does not take, and Kamailio gets each set alone and
    answers every message 200."""
    k = kam(kamailio)
    svc, peer = htable_node([k.uri])
    other_svc, other = htable_node([k.uri])
    other_uri = str(other_svc.nodes.local.uri)

    def listed_active(s: DMQService, uri: str) -> bool:
        node = s.nodes.get(uri)
        return node is not None and node.status.value == "active" and (node.agent or "").startswith("dmq/")

    yield eventually(lambda: is_active(svc, k) and is_active(other_svc, k) and listed_active(svc, other_uri),
                     timeout=2 * PING + 2, reactor=reactor)
    batch = b'{"batch":[{"action":2,"htname":"t","cname":"probe","type":2,"strval":"x","mode":1}]}'
    refused = yield svc.send_message("htable", batch, k.uri, "application/json")
    assert refused.code != 200 and "probe" not in k.htable_items("t")
    stats = svc.channel_stats["htable"]
    sent_before = stats.sent
    ok_before = stats.results.get(200, 0)

    for i in range(600):
        peer.set("t", f"burst-{i:03d}", f"value-{i:03d}")
    expected = peer.dump("t")
    yield eventually(lambda: k.htable_items("t") == expected and other.dump("t") == expected and peer.in_flight == 0,
                     timeout=10, interval=0.05, reactor=reactor)
    assert peer.stats["joined"] > 0
    sent = stats.sent - sent_before
    assert 600 < sent <= 1200 - peer.stats["joined"], sent  # every set alone to Kamailio, fewer messages to Python
    assert stats.results.get(200, 0) - ok_before == sent  # Kamailio refused none: it got no batch
    assert_alive(k)


@pytest_twisted.inlineCallbacks
def test_python_joins_big_kamailio_cluster(kamailio: Any, htable_node: Any, reactor: Any) -> Any:
    """A Python node joining a Kamailio cluster holding > 60 KB of cells ends with a table equal to htable.dump, expiries within 1 s."""
    k1 = kam(kamailio)
    k2 = kam(kamailio, [k1])
    yield eventually(lambda: k1.node_status(k2) == "active", timeout=PING + 1, reactor=reactor)
    fill_kamailio(k1, 1500)
    expected = k1.htable_items("t")
    assert len(expected) == 1500
    yield eventually(lambda: k2.htable_items("t") == expected, timeout=5, reactor=reactor)
    svc, peer = htable_node([k1.uri])
    yield eventually(lambda: peer.dump("t") == expected, timeout=5, interval=0.1, reactor=reactor)
    assert peer.stats["sync_chunks_received"] >= 2  # more than one 60 KB message
    for key in list(expected)[::7] + ["key-00000", "key-00005", "key-01495"]:
        assert abs(peer.cell("t", key).expire - kamailio_expire(k1, key)) <= 1, key
    # it asked one node only, once
    assert svc.channel_stats["htable"].sent == 1
    assert only_200(svc) == {200: 1}
    assert set(svc.channel_stats["htable"].answered) == {200}
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_kamailio_syncs_from_python(kamailio: Any, htable_node: Any, reactor: Any) -> Any:
    """A Kamailio whose only seed is the Python node gets all its > 60 KB of cells, in chunks that each fit one datagram (the node's max_body_size), expiries within 1 s."""
    svc, peer = htable_node([])
    yield svc.when_listening()
    for i in range(1500):
        value: Any = i if i % 3 == 0 else f"py-{i:05d}-" + "p" * 52
        peer.set("t", f"key-{i:05d}", value, expire=(700 + i) if i % 4 == 0 else None)
    expected = peer.dump("t")
    k = kam(kamailio, [str(svc.nodes.local.uri)])
    yield eventually(lambda: k.htable_items("t") == expected, timeout=5, interval=0.1, reactor=reactor)
    sizes = list(peer.sync_chunk_sizes)
    assert len(sizes) >= 3 and max(sizes) <= svc.max_body_size, sizes
    assert peer.stats["sync_requests"] == 1
    for key in list(expected)[::7]:
        assert abs(peer.cell("t", key).expire - kamailio_expire(k, key)) <= 1, key
    yield eventually(lambda: peer.in_flight == 0, timeout=2, reactor=reactor)
    assert set(only_200(svc)) == {200}
    assert_alive(k)


@pytest_twisted.inlineCallbacks
def test_three_python_nodes_converge_over_loopback(htable_node: Any, reactor: Any) -> Any:
    """Three Python nodes writing the same keys at once over real UDP end with equal tables and stamps (last write wins)."""
    a_svc, a = htable_node([], last_modified=True)
    b_svc, b = htable_node([str(a_svc.nodes.local.uri)], last_modified=True)
    c_svc, c = htable_node([str(b_svc.nodes.local.uri)], last_modified=True)
    peers = [a, b, c]
    yield eventually(lambda: all(len(s.nodes.active()) == 2 for s in (a_svc, b_svc, c_svc)), timeout=PING + 2, reactor=reactor)
    for round_ in range(50):
        for i, peer in enumerate(peers):
            peer.set("t", f"k{round_ % 10}", f"node{i}-round{round_}")
            peer.incr("t", f"n{i}")
        if round_ % 10 == 9:
            peers[round_ % 3].delete("t", f"k{round_ % 7}")
            yield sleep(reactor, 0.001)
    yield eventually(lambda: a.dump("t") == b.dump("t") == c.dump("t") and all(p.in_flight == 0 for p in peers),
                     timeout=3, reactor=reactor)
    stamps = [{k: cell.last_modified for k, cell in p.cells("t").items()} for p in peers]
    assert stamps[0] == stamps[1] == stamps[2]
    assert a.dump("t")["n0"] == 50
    for svc in (a_svc, b_svc, c_svc):
        assert set(svc.channel_stats["htable"].answered) == {200}


@pytest_twisted.inlineCallbacks
def test_restarted_python_node_keeps_data(kamailio: Any, htable_node: Any, reactor: Any, tmp_path: Any) -> Any:
    """A Python node with persist_dir restarted on the same port has its cells at once, then gets what changed meanwhile from Kamailio."""
    k = kam(kamailio)
    address = free_address("udp")
    svc, peer = htable_node([k.uri], address=address, persist_dir=str(tmp_path))
    yield eventually(lambda: is_active(svc, k), timeout=PING + 2, reactor=reactor)
    peer.set("t", "kept", "yes")
    yield eventually(lambda: k.htable_items("t") == {"kept": "yes"}, timeout=1, reactor=reactor)
    yield svc.stopService()
    k.rpc("htable.sets", "t", "meanwhile", "added")
    svc2, peer2 = htable_node([k.uri], address=address, persist_dir=str(tmp_path))
    assert peer2.dump("t") == {"kept": "yes"}  # before any node list, before the sync
    assert not svc2.ready
    yield eventually(lambda: peer2.dump("t") == {"kept": "yes", "meanwhile": "added"}, timeout=PING + 2, reactor=reactor)
    assert_alive(k)
