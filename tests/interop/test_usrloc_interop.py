"""The usrloc peer in clusters of real Kamailio nodes (usrloc, registrar, dmq_usrloc with usrloc_delete=1), each build in turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import pytest_twisted
from twisted.internet import threads

from dmq import DMQService
from dmq.control import ControlAPI
from dmq.peers.usrloc import UsrlocPeer
from dmq.testing import rpc

from ..helpers import assert_alive, free_address, free_port
from ..helpers import stop_process as stop
from .kamailio import KamailioNode, build_sip_message, eventually, kdmq_request, send_sip

PING = 5  # seconds, Kamailio's minimum
TWISTD = str(Path(sys.executable).with_name("twistd"))
DMQCTL = str(Path(sys.executable).with_name("dmqctl"))

# What a REGISTER does on the Kamailio side: registrar's save() into usrloc's "location".
REGISTER_ROUTE = """
    if (is_method("REGISTER")) {
        if (!save("location")) {
            sl_reply_error();
        }
        exit;
    }
"""
USRLOC_MODULES = ("usrloc", "registrar", "dmq_usrloc")
USRLOC_PARAMS = [("dmq_usrloc", "enable", 1), ("dmq_usrloc", "usrloc_delete", 1)]


def kam(kamailio: Any, seeds: list[Any] = (), *params: tuple[str, str, Any]) -> KamailioNode:  # type: ignore[assignment]
    """A Kamailio node sharing its location table over DMQ, answering REGISTER with save("location"); more modparams may follow."""
    return kamailio(list(seeds), ping_interval=PING, extra_modules=USRLOC_MODULES,
                    extra_modparams=[*USRLOC_PARAMS, *params], routes=REGISTER_ROUTE)


@pytest.fixture
def usrloc_node(python_node: Any) -> Callable[..., tuple[DMQService, UsrlocPeer]]:
    """Factory: a started DMQService with a UsrlocPeer on a loopback address of its own; stopped at teardown."""

    def make(seeds: list[str] = (), **peer_kw: Any) -> tuple[DMQService, UsrlocPeer]:  # type: ignore[assignment]
        peer = UsrlocPeer(**peer_kw)
        return python_node(seeds, peers=[peer]), peer

    return make


def register(k: KamailioNode, user: str, port: int, expires: int = 600, callid: str = "reg1", cseq: int = 1,
             q: Optional[str] = None) -> str:
    """Send Kamailio a hand-built REGISTER for ``user`` with contact sip:user@127.0.0.1:port; its status line."""
    contact = f"<sip:{user}@127.0.0.1:{port}>" + (f";q={q}" if q else "")
    message = build_sip_message(
        "REGISTER", f"sip:{k.host}:{k.port}", local=("127.0.0.1", port), to_uri=f"sip:{user}@{k.host}",
        from_uri=f"sip:{user}@{k.host}", call_id=callid, cseq=cseq,
        headers={"Contact": contact, "Expires": str(expires), "User-Agent": "pyua"},
    )
    return send_sip(k.host, k.port, message).split(b"\r\n")[0].decode()


def dump_contacts(k: KamailioNode) -> dict[str, dict[str, dict[str, Any]]]:
    """Kamailio's ul.dump as {aor: {ruid: contact}} (over the FIFO: dumps get big)."""
    dump = k.rpc("ul.dump", via="fifo")
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for domain in dump["Domains"]:
        for record in domain["Domain"]["AoRs"]:
            info = record["Info"]
            found[info["AoR"]] = {c["Contact"]["Ruid"]: c["Contact"] for c in info["Contacts"]}
    return found


def aor_count(k: KamailioNode) -> int:
    """How many AoRs Kamailio holds (ul.dump brief)."""
    return sum(len(d["Domain"]["AoRs"]) for d in k.rpc("ul.dump", "brief", via="fifo", timeout=20)["Domains"])


def is_active(svc: DMQService, k: KamailioNode) -> bool:
    """Whether the Python node lists ``k`` as active and ``k`` lists it as active."""
    node = svc.nodes.get(k.uri)
    return node is not None and node.status.value == "active" and k.node_status(str(svc.nodes.local.uri)) == "active"


@pytest_twisted.inlineCallbacks
def test_register_on_kamailio_shows_on_python_and_deregister_removes_it(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """A REGISTER to Kamailio shows on the Python node with every field Kamailio holds; a refresh updates it; an Expires: 0 re-REGISTER removes it."""
    k1 = kam(kamailio)
    svc, peer = usrloc_node([k1.uri])
    yield eventually(lambda: is_active(svc, k1), timeout=PING + 3, reactor=reactor)
    assert register(k1, "alice", 5179) == "SIP/2.0 200 OK"
    yield eventually(lambda: peer.lookup("alice"), timeout=2, reactor=reactor)
    [mine] = peer.lookup("alice")
    [theirs] = dump_contacts(k1)["alice"].values()
    assert (mine.address, mine.ruid, mine.callid, mine.cseq, mine.user_agent, mine.q) == (
        theirs["Address"], theirs["Ruid"], theirs["Call-ID"], theirs["CSeq"], theirs["User-Agent"], -1)
    assert mine.ruid.startswith("uloc-") and abs(mine.expires - (time.time() + 600)) <= 2
    assert register(k1, "alice", 5179, expires=300, cseq=2) == "SIP/2.0 200 OK"
    yield eventually(lambda: peer.lookup("alice")[0].cseq == 2, timeout=2, reactor=reactor)
    assert abs(peer.lookup("alice")[0].expires - (time.time() + 300)) <= 2
    assert register(k1, "alice", 5179, expires=0, cseq=3) == "SIP/2.0 200 OK"
    yield eventually(lambda: peer.lookup("alice") == [], timeout=2, reactor=reactor)
    assert peer.location.records == {}
    assert set(svc.channel_stats["usrloc"].answered) == {200}
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_python_save_and_remove_show_in_kamailio_dump(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """Python saves show in both Kamailio nodes' ul.dump with the same ruid, q, CSeq, Call-ID and expiry; removes take them out; ul.lookup answers alike."""
    k1 = kam(kamailio)
    k2 = kam(kamailio, [k1])
    svc, peer = usrloc_node([k1.uri])
    yield eventually(lambda: is_active(svc, k1) and is_active(svc, k2), timeout=PING + 3, reactor=reactor)
    peer.save("alice", "sip:alice@10.0.0.1:5060", expires=600, q=0.5, callid="py-1@h", cseq=7, user_agent="py phone")
    peer.save("alice", "sip:alice@10.0.0.2:5060", expires=600, q=1.0)
    results = yield peer.save("bob", "sip:bob@10.0.0.3:5060", expires=0)
    assert {code for _, code in results} == {200}

    def everywhere(expected: dict[str, set[str]]) -> Any:
        def same() -> bool:
            return all({aor: set(c) for aor, c in dump_contacts(k).items()} == expected for k in (k1, k2))
        return eventually(same, timeout=2, reactor=reactor)

    ruids = {aor: {c.ruid for c in peer.lookup(aor)} for aor in ("alice", "bob")}
    yield everywhere(ruids)
    first = peer.lookup("alice")[1]
    theirs = dump_contacts(k2)["alice"][first.ruid]
    assert (theirs["Address"], theirs["Q"], theirs["CSeq"], theirs["Call-ID"], theirs["User-Agent"]) == (
        "sip:alice@10.0.0.1:5060", 0.5, 7, "py-1@h", "py phone")
    assert abs(theirs["Expires"] - 600) <= 2
    assert dump_contacts(k1)["bob"][next(iter(ruids["bob"]))]["Expires"] == "permanent"
    # ul.lookup: the same shape and the same contacts, in the same order, from both sides
    api = ControlAPI(svc)
    ours = rpc(api, "ul.lookup", "location", "alice")["result"]
    kams = k1.rpc("ul.lookup", "location", "alice")
    assert list(ours) == list(kams)
    assert [list(c["Contact"]) for c in ours["Contacts"]] == [list(c["Contact"]) for c in kams["Contacts"]]
    assert [c["Contact"]["Ruid"] for c in ours["Contacts"]] == [c["Contact"]["Ruid"] for c in kams["Contacts"]]
    assert rpc(api, "ul.lookup", "location", "nobody")["error"] == {"code": 500, "message": "AOR not found in location table"}

    peer.remove("alice", "sip:alice@10.0.0.1:5060")
    yield peer.remove("bob")
    yield everywhere({"alice": ruids["alice"] - {first.ruid}})
    assert set(svc.channel_stats["usrloc"].results) == {200}
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_a_burst_goes_to_kamailio_in_multi_batches(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """A burst of 400 Python saves, then 400 removes, reaches Kamailio partly in {"multi":...} batches, which it
    applies member by member: its ul.dump ends with the same ruids, then empty, and it answers every message 200."""
    k1 = kam(kamailio)
    svc, peer = usrloc_node([k1.uri])
    yield eventually(lambda: is_active(svc, k1) and (svc.nodes.get(k1.uri).agent or "").startswith("kamailio"),
                     timeout=PING + 3, reactor=reactor)
    for i in range(400):
        peer.save(f"burst{i:03d}", f"sip:burst{i:03d}@10.0.{i // 200}.{i % 200 + 1}:5060", expires=600)
    ruids = {f"burst{i:03d}": {c.ruid for c in peer.lookup(f"burst{i:03d}")} for i in range(400)}
    yield eventually(lambda: peer.in_flight == 0 and peer.queued == 0, timeout=10, reactor=reactor)
    joined = peer.stats["joined"]
    assert joined > 0
    yield eventually(lambda: {aor: set(c) for aor, c in dump_contacts(k1).items()} == ruids, timeout=5, reactor=reactor)
    for i in range(400):
        peer.remove(f"burst{i:03d}")
    yield eventually(lambda: peer.in_flight == 0 and peer.queued == 0, timeout=10, reactor=reactor)
    assert peer.stats["joined"] > joined
    yield eventually(lambda: dump_contacts(k1) == {}, timeout=5, reactor=reactor)
    stats = svc.channel_stats["usrloc"]
    assert stats.results == {200: stats.sent} and stats.sent < 800
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_sync_on_join_both_ways(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """A Python node joining Kamailio gets its registrations; a Kamailio node joining through a Python node gets the Python node's contacts."""
    k1 = kam(kamailio)
    for n in range(5):
        assert register(k1, f"user{n}", 6000 + n, callid=f"c{n}", q="0.7") == "SIP/2.0 200 OK"
    svc, peer = usrloc_node([k1.uri])
    yield eventually(lambda: peer.status() == {"aors": 5, "contacts": 5}, timeout=PING + 3, reactor=reactor)
    assert {c.ruid for n in range(5) for c in peer.lookup(f"user{n}")} == {r for c in dump_contacts(k1).values() for r in c}
    assert peer.lookup("user3")[0].q == 700

    svc2, lone = usrloc_node()
    for n in range(40):
        lone.save(f"py{n}", f"sip:py{n}@10.1.0.{n}:5060", expires=900, user_agent="u" * 800)
    k2 = kam(kamailio, [str(svc2.nodes.local.uri)])
    yield eventually(lambda: len(dump_contacts(k2)) == 40, timeout=PING + 5, reactor=reactor)
    assert {r for c in dump_contacts(k2).values() for r in c} == {c.ruid for n in range(40) for c in lone.lookup(f"py{n}")}
    assert lone.stats["sync_contacts_sent"] >= 40 and 2 <= lone.stats["sync_messages_sent"] < 40  # batches, not one per contact
    assert_alive(k1, k2)


@pytest_twisted.inlineCallbacks
def test_kamailio_batched_sync_answer(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """With batch_msg_contacts 10 Kamailio answers a sync in multi batches; the Python node takes them all."""
    k1 = kam(kamailio, [], ("dmq_usrloc", "batch_msg_contacts", 10))
    for n in range(25):
        k1.rpc("ul.add", "location", f"user{n}", f"sip:user{n}@10.4.0.{n}:5060", 600, 0.5, "", 0, 0, 0)
    svc, peer = usrloc_node([k1.uri])
    yield eventually(lambda: peer.status() == {"aors": 25, "contacts": 25}, timeout=PING + 3, reactor=reactor)
    assert peer.stats["multi_received"] >= 3 and peer.stats["multi_contacts_received"] >= 25
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_python_node_joining_2000_registrations(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """A Python node joining a Kamailio cluster that holds 2,000 registrations ends with all of them, and Kamailio stays healthy."""
    k1 = kam(kamailio)
    for n in range(2000):
        k1.rpc("ul.add", "location", f"user{n:04d}", f"sip:user{n:04d}@10.2.{n // 250}.{n % 250}:5060", 3600, 0.5, "", 0, 0, 0)
    assert aor_count(k1) == 2000
    svc, peer = usrloc_node([k1.uri])
    yield eventually(lambda: peer.status()["contacts"] == 2000, timeout=60, interval=0.5, reactor=reactor)
    assert peer.status() == {"aors": 2000, "contacts": 2000}
    assert peer.lookup("user1234")[0].address == "sip:user1234@10.2.4.234:5060"
    assert set(svc.channel_stats["usrloc"].answered) == {200}
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_kamailio_joining_2000_python_registrations(kamailio: Any, usrloc_node: Any, reactor: Any) -> Any:
    """A Kamailio node joining through a Python node that holds 2,000 contacts ends with all of them, sent in datagram-sized batches, and stays healthy."""
    svc, peer = usrloc_node()
    for n in range(2000):
        peer.save(f"user{n:04d}", f"sip:user{n:04d}@10.3.{n // 250}.{n % 250}:5060", expires=3600)
    k1 = kam(kamailio, [str(svc.nodes.local.uri)])
    yield eventually(lambda: peer.stats["sync_contacts_sent"] >= 2000 and peer.in_flight == 0, timeout=60, interval=0.5,
                     reactor=reactor)
    yield eventually(lambda: aor_count(k1) == 2000, timeout=10, interval=0.5, reactor=reactor)
    assert max(peer.sync_chunk_sizes) < svc.max_body_size
    assert peer.stats["sync_messages_sent"] < 2000 / 20
    assert set(svc.channel_stats["usrloc"].results) == {200}
    assert_alive(k1)


@pytest_twisted.inlineCallbacks
def test_bad_bodies_answered_as_kamailio_answers_them(kamailio: Any, usrloc_node: Any) -> Any:
    """Bodies Kamailio survives get the same status code from the Python node (400 for bad JSON or an unknown action, 200 for its no-ops)."""
    k1 = kam(kamailio)
    svc, _ = usrloc_node()
    local = svc.nodes.local
    bodies = [b"not json", b'{"action":9}', b'{"action":-1}', b'{"action":0}', b'{"foo":1}', b'{"multi":{}}',
              b'{"action":2,"aor":"nobody","ruid":"nope"}', b'{"action":1,"aor":"a","ruid":"r","c":"sip:a@h","zzz":1}']

    def code(host: str, port: int, body: bytes) -> int:
        request = kdmq_request("usrloc", (host, port), ("127.0.0.1", 5999), body, content_type="application/json")
        return int(send_sip(host, port, request).split(b" ", 2)[1])

    for body in bodies:
        ours = yield threads.deferToThread(code, local.host, local.port, body)  # the reactor answers meanwhile
        assert ours == code(k1.host, k1.port, body), body
    assert_alive(k1)


def test_dmqctl_ul_show_from_twistd_node(kamailio: Any, tmp_path: Path) -> None:
    """`twistd dmq --usrloc` in a cluster with two Kamailio nodes: dmqctl ul show alice answers with the contact a REGISTER made on Kamailio."""
    k1 = kam(kamailio)
    k2 = kam(kamailio, [k1])
    (host, sip), control = free_address("udp"), free_port("tcp")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", f"sip:{host}:{sip}", "--notification-address", k1.uri,
         "--ping-interval", str(PING), "--control", f"tcp:{control}", "--usrloc"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{control}/RPC"

    def dmqctl(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DMQCTL, "--url", url, *command], capture_output=True, text=True, timeout=30)

    try:
        deadline = time.monotonic() + PING * 3
        while time.monotonic() < deadline and k2.node_status(f"sip:{host}:{sip}") != "active":
            time.sleep(0.2)
        assert register(k2, "alice", 5179, q="0.8") == "SIP/2.0 200 OK"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and dmqctl("ul", "show", "alice").returncode != 0:
            time.sleep(0.2)
        shown = dmqctl("ul", "show", "alice")
        assert shown.returncode == 0, shown.stderr
        [header, row] = [line.split() for line in shown.stdout.splitlines()]
        [kams] = k1.rpc("ul.lookup", "location", "alice")["Contacts"]
        assert header[:3] == ["AOR", "CONTACT", "EXPIRES"]
        assert (row[0], row[1], row[3], row[4]) == ("alice", kams["Contact"]["Address"], "0.8", kams["Contact"]["Ruid"])
        as_json = json.loads(dmqctl("--json", "ul", "show", "alice").stdout)
        assert as_json["Contacts"][0]["Contact"]["Ruid"] == kams["Contact"]["Ruid"]
        missing = dmqctl("ul", "show", "bob")
        assert (missing.returncode, missing.stderr) == (1, "dmqctl: ul.lookup: error 500: AOR not found in location table\n")
    finally:
        log = stop(process)
    assert b"Server Shut Down." in log, log[-2000:]
    assert_alive(k1, k2)
