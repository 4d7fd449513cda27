"""The dialog peer next to real Kamailio nodes, each build in turn (dialog with enable_dmq, rr, an INVITE route with dlg_manage() and t_relay()): calls through Kamailio, dialogs made in Python, Kamailio's answers, sync both ways, dmqctl."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import pytest_twisted
from twisted.internet import threads

from dmq import DMQService
from dmq.hashing import core_hash
from dmq.peers.dialog import DialogChange, DialogPeer, DialogState

from ..helpers import assert_alive, free_address, free_port
from ..helpers import stop_process as stop
from .kamailio import KamailioNode, RawMember, eventually, kdmq_request, parse_sip

PING = 5
TWISTD = str(Path(sys.executable).with_name("twistd"))
DMQCTL = str(Path(sys.executable).with_name("dmqctl"))

#: The script a Kamailio of these tests runs for SIP: in-dialog requests follow the Record-Route, an INVITE is
#: tracked as a dialog (in the profiles ``calls`` and ``caller``, with two variables), record-routed and relayed.
ROUTES = r"""
    if (has_totag()) {
        if (loose_route()) {
            t_relay();
            exit;
        }
        if (is_method("ACK")) {
            if (t_check_trans()) { t_relay(); }
            exit;
        }
        sl_send_reply("404", "Not here");
        exit;
    }
    if (is_method("INVITE")) {
        set_dlg_profile("calls");
        set_dlg_profile("caller", "$fU");
        dlg_manage();
        $dlg_var(color) = "blue";
        $dlg_var(n) = "2";
        record_route();
        t_relay();
        exit;
    }
"""

KAMAILIO_MODULES = ("rr", "siputils", "dialog")
KAMAILIO_PARAMS = [("dialog", "enable_dmq", 1), ("dialog", "profiles_with_value", "caller"),
                   ("dialog", "profiles_no_value", "calls")]


def kam(kamailio: Any, seeds: list[Any] = ()) -> KamailioNode:  # type: ignore[assignment]
    """A Kamailio node with the dialog module replicating over DMQ and the INVITE route above."""
    return kamailio(list(seeds), ping_interval=PING, extra_modules=KAMAILIO_MODULES,
                    extra_modparams=KAMAILIO_PARAMS, routes=ROUTES)


@pytest.fixture
def dialog_node(reactor: Any) -> Iterator[Callable[..., tuple[DMQService, DialogPeer]]]:
    """Factory: a started DMQService with a DialogPeer on a loopback address of its own; stopped at teardown."""
    services: list[DMQService] = []

    def make(seeds: list[str] = (), **peer_kw: Any) -> tuple[DMQService, DialogPeer]:  # type: ignore[assignment]
        host, port = free_address("udp")
        svc = DMQService(f"sip:{host}:{port}", list(seeds), reactor=reactor, ping_interval=PING, t1=0.25)
        peer_kw.setdefault("profiles_with_value", ["caller"])
        peer_kw.setdefault("profiles_no_value", ["calls"])
        peer = DialogPeer(**peer_kw)
        svc.register_peer(peer)
        services.append(svc)
        svc.startService()
        return svc, peer

    yield make
    for svc in services:
        if svc.running:
            pytest_twisted.blockon(svc.stopService())


def is_active(svc: DMQService, k: KamailioNode) -> bool:
    """Whether each of the Python node and ``k`` lists the other as active."""
    node = svc.nodes.get(k.uri)
    return node is not None and node.status.value == "active" and k.node_status(str(svc.nodes.local.uri)) == "active"


def dlg_list(k: KamailioNode) -> list[dict[str, Any]]:
    """Kamailio's ``dlg.list``."""
    return k.rpc("dlg.list", via="fifo") or []


# -- a caller and a callee over UDP ------------------------------------------------------------


def _message(first: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first, *(f"{name}: {value}" for name, value in headers), "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _headers(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    head = data.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    return head[0], [(line.partition(":")[0].strip(), line.partition(":")[2].strip()) for line in head[1:]]


class Phones:
    """
    One call through a Kamailio proxy, both ends played here: alice calls bob, bob rings and answers, alice
    ACKs and hangs up. Each step blocks (run it in a thread) and checks what arrives.
    """

    def __init__(self, proxy: KamailioNode, callid: str) -> None:
        self.proxy = proxy.address
        self.callid = callid
        self.alice = self._socket()
        self.bob = self._socket()
        self.invite: Optional[bytes] = None
        self.route = ""

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((free_address("udp")[0], 0))
        sock.settimeout(3.0)
        return sock

    def _at(self, sock: socket.socket) -> str:
        host, port = sock.getsockname()
        return f"{host}:{port}"

    def _receive(self, sock: socket.socket) -> bytes:
        while True:
            data = sock.recv(65535)
            if not data.startswith(b"SIP/2.0 100"):
                return data

    def _in_dialog(self, method: str, cseq: str) -> bytes:
        return _message(f"{method} sip:bob@{self._at(self.bob)} SIP/2.0", [
            ("Via", f"SIP/2.0/UDP {self._at(self.alice)};branch=z9hG4bK{secrets.token_hex(6)}"),
            ("Route", self.route), ("From", f"<sip:alice@{self.alice.getsockname()[0]}>;tag=atag"),
            ("To", f"<sip:bob@{self.bob.getsockname()[0]}>;tag=btag"), ("Call-ID", self.callid), ("CSeq", cseq),
            ("Max-Forwards", "70")])

    def _reply(self, request: bytes, code: int, reason: str) -> bytes:
        _, headers = _headers(request)
        out = []
        for name, value in headers:
            low = name.lower()
            if low in ("via", "record-route", "from", "call-id", "cseq"):
                out.append((name, value))
            elif low == "to":
                out.append((name, value if ";tag=" in value else f"{value};tag=btag"))
        out.append(("Contact", f"<sip:bob@{self._at(self.bob)}>"))
        return _message(f"SIP/2.0 {code} {reason}", out)

    def ring(self) -> None:
        """INVITE from alice, relayed to bob, who answers 180 (relayed back)."""
        self.alice.sendto(_message(f"INVITE sip:bob@{self._at(self.bob)} SIP/2.0", [
            ("Via", f"SIP/2.0/UDP {self._at(self.alice)};branch=z9hG4bK{secrets.token_hex(6)}"),
            ("From", f"<sip:alice@{self.alice.getsockname()[0]}>;tag=atag"),
            ("To", f"<sip:bob@{self.bob.getsockname()[0]}>"), ("Call-ID", self.callid), ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:alice@{self._at(self.alice)}>"), ("Max-Forwards", "70")]), self.proxy)
        self.invite = self._receive(self.bob)
        assert self.invite.startswith(b"INVITE "), self.invite[:80]
        self.bob.sendto(self._reply(self.invite, 180, "Ringing"), self.proxy)
        assert self._receive(self.alice).startswith(b"SIP/2.0 180")

    def answer(self) -> None:
        """bob answers 200 (relayed to alice, who learns the route); alice ACKs (relayed to bob)."""
        assert self.invite is not None
        self.bob.sendto(self._reply(self.invite, 200, "OK"), self.proxy)
        ok = self._receive(self.alice)
        assert ok.startswith(b"SIP/2.0 200"), ok[:80]
        self.route = ", ".join(reversed([v for n, v in _headers(ok)[1] if n.lower() == "record-route"]))
        self.alice.sendto(self._in_dialog("ACK", "1 ACK"), self.proxy)
        assert self._receive(self.bob).startswith(b"ACK ")

    def hang_up(self) -> None:
        """alice sends BYE (relayed to bob, who answers 200, relayed back)."""
        self.alice.sendto(self._in_dialog("BYE", "2 BYE"), self.proxy)
        bye = self._receive(self.bob)
        assert bye.startswith(b"BYE "), bye[:80]
        self.bob.sendto(self._reply(bye, 200, "OK"), self.proxy)
        assert self._receive(self.alice).startswith(b"SIP/2.0 200")

    def close(self) -> None:
        """Close both sockets."""
        self.alice.close()
        self.bob.close()


def ask(member: RawMember, address: tuple[str, int], body: bytes) -> str:
    """Send a KDMQ on the dialog channel from ``member`` to ``address``; the status line of the answer."""
    request = kdmq_request("dialog", address, (member.host, member.port), body, content_type="application/json")
    call_id = parse_sip(request)[1]["call-id"]
    member.sock.sendto(request, address)
    answer = member._wait(lambda d: d.startswith(b"SIP/2.0") and parse_sip(d)[1].get("call-id") == call_id, 3.0)
    return answer.split(b"\r\n", 1)[0].decode()


# -- the tests ---------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_call_through_kamailio_shows_here_state_by_state(kamailio: Any, dialog_node: Any, reactor: Any) -> Any:
    """INVITE, 180, 200, ACK, BYE through Kamailio (dlg_manage, record-routed): the Python node sees states 1, 2, 4, 5, then the remove; profiles and variables come along."""
    k = kam(kamailio)
    svc, peer = dialog_node([k.uri])
    yield eventually(lambda: is_active(svc, k), timeout=PING + 3, reactor=reactor)
    changes: list[DialogChange] = []
    peer.add_change_listener(changes.append)
    phones = Phones(k, f"call-{secrets.token_hex(4)}@127.0.0.1")
    try:
        yield threads.deferToThread(phones.ring)
        yield eventually(lambda: peer.get(phones.callid) is not None and peer.get(phones.callid).state == 2,
                         timeout=2, reactor=reactor)
        early = peer.get(phones.callid)
        [theirs] = dlg_list(k)
        assert (early.h_entry, early.h_id) == (theirs["h_entry"], theirs["h_id"])
        assert early.h_entry == core_hash(phones.callid, size=4096)
        assert early.vars == {"n": "2", "color": "blue"}
        assert peer.profile_size("calls") == 1 and peer.profile_size("caller", "alice") == 1
        yield threads.deferToThread(phones.answer)
        yield eventually(lambda: peer.get(phones.callid).state == 4, timeout=2, reactor=reactor)
        confirmed = peer.get(phones.callid)
        assert (confirmed.caller.tag, confirmed.callee.tag, confirmed.lifetime) == ("atag", "btag", 43200)
        assert confirmed.start_ts == dlg_list(k)[0]["start_ts"]
        yield threads.deferToThread(phones.hang_up)
        yield eventually(lambda: peer.get(phones.callid) is None, timeout=PING + 5, reactor=reactor)
    finally:
        phones.close()
    assert [(c.old_state, c.state) for c in changes] == [(None, 1), (1, 2), (2, 4), (4, 5), (5, None)]
    assert all(c.origin is not None and c.origin.uri.port == k.port for c in changes)
    assert set(svc.channel_stats["dialog"].answered) == {200}
    assert_alive(k)


@pytest_twisted.inlineCallbacks
def test_a_dialog_made_here_shows_in_kamailios_dlg_list(kamailio: Any, dialog_node: Any, reactor: Any) -> Any:
    """A dialog created on the Python node appears in Kamailio's dlg.list with its fields, profiles and variables, follows its states, and goes with its end; both list it in the same shape."""
    k = kam(kamailio)
    svc, peer = dialog_node([k.uri])
    yield eventually(lambda: is_active(svc, k), timeout=PING + 3, reactor=reactor)
    made = peer.create("py-call@10.0.0.1", "sip:carol@example.com", "sip:dave@example.com", "sip:dave@10.0.0.2",
                       "ctag", cseq1="7", contact1="sip:carol@10.0.0.1", vars={"x": "1"},
                       profiles=[("calls", None), ("caller", "carol")])
    yield eventually(lambda: len(dlg_list(k)) == 1, timeout=2, reactor=reactor)
    [theirs] = dlg_list(k)
    assert (theirs["h_entry"], theirs["h_id"], theirs["call-id"], theirs["state"]) == (*made.key, made.callid, 1)
    assert (theirs["from_uri"], theirs["to_uri"], theirs["init_ts"]) == (made.from_uri, made.to_uri, made.init_ts)
    assert theirs["caller"]["tag"] == "ctag" and theirs["caller"]["cseq"] == "7"
    assert theirs["variables"] == [{"x": "1"}]
    assert sorted(map(json.dumps, theirs["profiles"])) == sorted(map(json.dumps, ["calls", {"caller": "carol"}]))
    assert k.rpc("dlg.profile_get_size", "caller", "carol") == 1
    ours = peer.rpc_methods()["dlg.list"]()[0]
    assert list(ours) == list(theirs)
    for key in ("caller", "callee"):
        assert list(ours[key]) == list(theirs[key])
    yield peer.set_state(made, DialogState.EARLY)
    yield peer.set_state(made, DialogState.CONFIRMED, tag2="dtag", contact2="sip:dave@10.0.0.2")
    [confirmed] = dlg_list(k)
    assert confirmed["state"] == 4 and confirmed["callee"]["tag"] == "dtag" and confirmed["lifetime"] == 43200
    assert confirmed["timeout"] > 0
    outcomes = yield peer.set_state(made, DialogState.DELETED)
    assert {code for _, code in outcomes} == {200}
    assert dlg_list(k) == []
    assert set(svc.channel_stats["dialog"].results) == {200}
    assert_alive(k)


BAD = {
    "wrong h_entry": {"action": 1, "h_entry": 7, "h_id": 12, "callid": "x1@h", "from_uri": "sip:a@h", "to_uri": "sip:b@h",
                      "req_uri": "sip:b@h", "tag1": "t", "state": 1},
    "h_entry beyond the table": {"action": 1, "h_entry": 5000, "h_id": 12, "callid": "x1@h", "from_uri": "sip:a@h",
                                 "to_uri": "sip:b@h", "req_uri": "sip:b@h", "tag1": "t", "state": 1},
    "state of an unknown dialog": {"action": 2, "h_entry": 5, "h_id": 77, "state": 4},
    "remove of an unknown dialog": {"action": 3, "h_entry": 5, "h_id": 77, "state": 5},
    "h_id 0": {"action": 2, "h_entry": 5, "h_id": 0, "state": 4},
    "update in state 3": {"action": 1, "h_entry": core_hash("s3@h", size=4096), "h_id": 33, "callid": "s3@h",
                          "from_uri": "sip:a@h", "to_uri": "sip:b@h", "req_uri": "sip:b@h", "tag1": "t", "state": 3},
}


@pytest_twisted.inlineCallbacks
def test_kamailio_and_python_answer_bad_messages_alike(kamailio: Any, dialog_node: Any, reactor: Any) -> Any:
    """A wrong h_entry, a state or remove of an unknown dialog, h_id 0 and state 3 get 500 from Kamailio and from the Python node; bad JSON gets 400 from both; none and unknown keys 200."""
    k = kam(kamailio)
    svc, peer = dialog_node([])
    yield svc.when_listening()
    local = svc.nodes.local
    cases = [(name, json.dumps(doc).encode()) for name, doc in BAD.items()]
    cases += [("bad JSON", b'{"action":2,'), ("action 0", b'{"action":0}'),
              ("unknown keys", b'{"action":0,"iflags":1,"last_modified":5}')]

    def compare() -> list[tuple[str, str, str]]:
        with RawMember() as member:
            member.join(k)
            return [(name, ask(member, k.address, body), ask(member, (local.host, local.port), body))
                    for name, body in cases]

    answers = yield threads.deferToThread(compare)
    for name, theirs, ours in answers:
        assert theirs.split()[1] == ours.split()[1], (name, theirs, ours)
    codes = {name: theirs.split()[1] for name, theirs, _ in answers}
    assert codes == {**dict.fromkeys(BAD, "500"), "bad JSON": "400", "action 0": "200", "unknown keys": "200"}
    assert_alive(k)


@pytest_twisted.inlineCallbacks
def test_sync_both_ways(kamailio: Any, dialog_node: Any, reactor: Any) -> Any:
    """A Python node joining gets Kamailio's confirmed call (Kamailio answers {"action":4} by broadcast, 5.6.3 repeating keys); a Kamailio joining gets the Python node's dialogs."""
    k1 = kam(kamailio)
    phones = Phones(k1, f"sync-{secrets.token_hex(4)}@127.0.0.1")
    try:
        yield threads.deferToThread(phones.ring)
        yield threads.deferToThread(phones.answer)
        svc, peer = dialog_node([k1.uri])
        yield eventually(lambda: peer.get(phones.callid) is not None, timeout=PING + 3, reactor=reactor)
        got = peer.get(phones.callid)
        assert got.state == DialogState.CONFIRMED and got.callee.tag == "btag" and got.vars == {"n": "2", "color": "blue"}
        assert peer.profile_size("caller", "alice") == 1
        made = peer.create("from-python@h", "sip:e@h", "sip:f@h", "sip:f@h", "etag")
        k2 = kam(kamailio, [str(svc.nodes.local.uri)])
        yield eventually(lambda: {d["call-id"] for d in dlg_list(k2)} == {phones.callid, made.callid},
                         timeout=PING + 5, reactor=reactor)
        by_callid = {d["call-id"]: d for d in dlg_list(k2)}
        assert by_callid[phones.callid]["state"] == 4
        assert (by_callid[made.callid]["h_entry"], by_callid[made.callid]["h_id"]) == made.key
    finally:
        phones.close()
    assert set(svc.channel_stats["dialog"].answered) == {200}
    assert_alive(k1, k2)


def dmqctl(control: int, *command: str) -> subprocess.CompletedProcess[str]:
    """``dmqctl COMMAND`` against a node's control port."""
    return subprocess.run([DMQCTL, "--url", f"http://127.0.0.1:{control}/RPC", *command],
                          capture_output=True, text=True, timeout=30)


def test_dmqctl_dlg_list_from_a_twistd_node(kamailio: Any, tmp_path: Path) -> None:
    """In a cluster of Kamailio and `twistd dmq --dialog`, a call through Kamailio shows in `dmqctl dlg list` and `dlg profile`, as in Kamailio's dlg.list."""
    from ..helpers import wait_until

    k = kam(kamailio)
    (host, sip), control = free_address("udp"), free_port("tcp")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", f"sip:{host}:{sip}", "--notification-address", k.uri,
         "--ping-interval", str(PING), "--control", f"tcp:{control}", "--dialog",
         "--dialog-profiles-with-value", "caller", "--dialog-profiles-no-value", "calls"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    phones = Phones(k, f"ctl-{secrets.token_hex(4)}@127.0.0.1")
    try:
        wait_until(lambda: k.node_status(f"sip:{host}:{sip}") == "active", timeout=PING + 10, interval=0.3)
        phones.ring()
        phones.answer()

        def listed() -> Optional[list[dict[str, Any]]]:
            done = dmqctl(control, "--json", "dlg", "list")
            found = json.loads(done.stdout) if done.returncode == 0 else []
            return found if found and found[0]["state"] == 4 else None

        [ours] = wait_until(listed, timeout=5, interval=0.3)
        [theirs] = dlg_list(k)
        assert list(ours) == list(theirs)
        same = ("h_entry", "h_id", "call-id", "from_uri", "to_uri", "state", "start_ts", "init_ts", "lifetime")
        assert {key: ours[key] for key in same} == {key: theirs[key] for key in same}
        table = dmqctl(control, "dlg", "list").stdout.splitlines()
        assert table[0].split() == ["ID", "STATE", "CALL-ID", "FROM", "TO", "DURATION"]
        assert table[1].split()[:3] == [f"{theirs['h_entry']}:{theirs['h_id']}", "4", phones.callid]
        assert dmqctl(control, "dlg", "profile", "calls").stdout.strip() == "1"
        assert dmqctl(control, "dlg", "profile", "caller", "alice").stdout.strip() == "1"
        missing = dmqctl(control, "dlg", "profile", "nope")
        assert missing.returncode == 1 and "404" in missing.stderr and "Profile not found: nope" in missing.stderr
        phones.hang_up()
    finally:
        phones.close()
        log = stop(process)
    assert b"Server Shut Down." in log, log[-2000:]
    assert_alive(k)
