"""The registrar of examples/registrar.py: bindings, replication through the cluster, and two registrars over UDP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dmq.sip import Request, Response, parse_message
from dmq.sip.address import Address
from dmq.testing import FakeCluster
from tests.helpers import free_address, probe_host, stop_process, wait_for_line, wait_until
from tests.interop.kamailio import build_sip_message, parse_sip, send_sip

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from registrar import Registrar, split_list  # noqa: E402

CLIENT = Address("udp", "192.0.2.50", 5070)
AOR = "sip:alice@example.com"


def register(port: int, contact: Optional[str] = "<sip:alice@192.0.2.50:5070>", expires: Optional[int] = None,
             call_id: str = "reg-1", cseq: int = 1, to: str = f"<{AOR}>") -> bytes:
    """A REGISTER for the node on 127.0.0.1:``port``, as the client at CLIENT sends it."""
    lines = [
        f"REGISTER sip:127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {CLIENT.host}:{CLIENT.port};branch=z9hG4bK-{call_id}-{cseq}",
        f"From: {to};tag=client",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class ClusterTests(SynchronousTestCase):
    """Two registrars on a fake network; REGISTERs come from a client that is no node."""

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.a = self.cluster.add(5060)
        self.b = self.cluster.add(5061, seeds=[5060])
        self.registrars = {port: Registrar(svc) for port, svc in self.cluster.nodes.items()}
        self.cluster.run(1)

    def send(self, port: int, data: bytes) -> Response:
        """Deliver ``data`` to the node on ``port`` from CLIENT; the response it sent back."""
        transport = self.cluster.nodes[port].transport
        transport.clear()
        transport.receive(data, CLIENT)
        self.cluster.run(0.1)
        [answer] = [m for s in transport.sent if s.address == CLIENT for m in [parse_message(s.data)]]
        assert isinstance(answer, Response)
        return answer

    def requests_sent(self, port: int, method: str) -> list[Request]:
        """The ``method`` requests the node on ``port`` sent since the last :meth:`send`."""
        return [m for m in self.cluster.nodes[port].transport.messages() if isinstance(m, Request) and m.method == method]

    def test_register_reaches_the_other_node(self) -> None:
        """A REGISTER on one node is answered 200 with the binding, and the other node has the binding."""
        answer = self.send(5060, register(5060, expires=600))
        self.assertEqual((answer.code, answer.headers.getall("Contact")), (200, ["<sip:alice@192.0.2.50:5070>;expires=600"]))
        self.assertEqual(self.registrars[5061].lookup(AOR), [("sip:alice@192.0.2.50:5070", 600)])
        self.assertEqual(len(self.requests_sent(5060, "REGISTER")), 1)

    def test_no_replication_of_what_a_node_sent(self) -> None:
        """The node that gets a replicated REGISTER applies it and sends no REGISTER on."""
        self.a.transport.clear()
        self.b.transport.clear()
        self.a.transport.receive(register(5060), CLIENT)
        self.cluster.run(0.1)
        self.assertEqual(len(self.requests_sent(5060, "REGISTER")), 1)
        self.assertEqual(self.requests_sent(5061, "REGISTER"), [])
        self.assertEqual(self.registrars[5061].lookup(AOR), [("sip:alice@192.0.2.50:5070", 3600)])

    def test_expires_zero_removes_on_both(self) -> None:
        """A re-REGISTER with Expires: 0 on the other node removes the binding on both."""
        self.send(5060, register(5060))
        answer = self.send(5061, register(5061, expires=0, cseq=2))
        self.assertEqual((answer.code, answer.headers.getall("Contact")), (200, []))
        self.assertEqual((self.registrars[5060].lookup(AOR), self.registrars[5061].lookup(AOR)), ([], []))

    def test_star_removes_every_binding(self) -> None:
        """Contact: * with Expires: 0 removes all of the user's bindings, on both nodes."""
        self.send(5060, register(5060, contact="<sip:a@192.0.2.1>, <sip:b@192.0.2.2>"))
        self.assertEqual(len(self.registrars[5061].lookup(AOR)), 2)
        self.send(5060, register(5060, contact="*", expires=0, cseq=2))
        self.assertEqual((self.registrars[5060].lookup(AOR), self.registrars[5061].lookup(AOR)), ([], []))

    def test_binding_lapses(self) -> None:
        """A binding is gone once its expiry has passed, on both nodes."""
        self.send(5060, register(5060, contact="<sip:a@192.0.2.1>;expires=30"))
        self.cluster.clock.advance(29)
        self.assertEqual(self.registrars[5061].lookup(AOR), [("sip:a@192.0.2.1", 1)])
        self.cluster.clock.advance(1)
        self.assertEqual((self.registrars[5060].lookup(AOR), self.registrars[5061].lookup(AOR)), ([], []))

    def test_query_lists_and_changes_nothing(self) -> None:
        """A REGISTER without Contact lists the bindings and is not replicated."""
        self.send(5060, register(5060))
        answer = self.send(5061, register(5061, contact=None, cseq=2))
        self.assertEqual(answer.headers.getall("Contact"), ["<sip:alice@192.0.2.50:5070>;expires=3600"])
        self.assertEqual(self.requests_sent(5061, "REGISTER"), [])

    def test_out_of_order_register_refused(self) -> None:
        """A REGISTER of the same Call-ID with a CSeq not above the binding's gets 500 and changes nothing."""
        self.send(5060, register(5060, cseq=5))
        answer = self.send(5060, register(5060, expires=0, cseq=4))
        self.assertEqual(answer.code, 500)
        self.assertEqual(len(self.registrars[5060].lookup(AOR)), 1)

    def test_bad_registers_get_400(self) -> None:
        """Malformed REGISTERs are answered 400 with the reason, and nothing is stored."""
        cases = {
            "star without Expires 0": register(5060, contact="*"),
            "bad Expires": register(5060, expires=-1),
            "bad contact expires": register(5060, contact="<sip:a@192.0.2.1>;expires=soon"),
            "To without user": register(5060, to="<sip:example.com>"),
            "bad Contact": register(5060, contact="<nonsense"),
        }
        for name, data in cases.items():
            with self.subTest(name):
                answer = self.send(5060, data)
                self.assertEqual(answer.code, 400)
                self.assertTrue(answer.reason.startswith("Bad Request ("), answer.reason)
        self.assertEqual(self.registrars[5060].bindings, {})

    def test_other_methods(self) -> None:
        """OPTIONS is answered 200 and INVITE 405, both with an Allow header."""
        for method, code in (("OPTIONS", 200), ("INVITE", 405)):
            data = register(5060).replace(b"REGISTER", method.encode())
            answer = self.send(5060, data)
            self.assertEqual((answer.code, answer.headers.get("Allow")), (code, "REGISTER, OPTIONS, KDMQ"))

    def test_split_list(self) -> None:
        """Header lists split at commas outside quotes and angle brackets."""
        value = '"Smith, J" <sip:a@x;p=1,2>;expires=5, <sip:b@y> ,sip:c@z'
        self.assertEqual(split_list(value), ['"Smith, J" <sip:a@x;p=1,2>;expires=5', "<sip:b@y>", "sip:c@z"])


# -- two registrars over real UDP ------------------------------------------------------------


@pytest.fixture
def two_registrars() -> Iterator[tuple[tuple[str, int], tuple[str, int]]]:
    """Two `registrar.py serve` processes, each on a loopback address of its own, that have joined each other."""
    first, second = free_address("udp"), free_address("udp")
    processes = []
    for address, seeds in ((first, []), (second, [first])):
        command = [sys.executable, str(EXAMPLES / "registrar.py"), "serve", "--address", f"{address[0]}:{address[1]}",
                   "--ping-interval", "5"]
        for seed in seeds:
            command += ["--seed", f"{seed[0]}:{seed[1]}"]
        # Unbuffered, so that select() sees every line that readline() has not read yet.
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0))
    try:
        # Each prints a peer-up line for the other once it lists it as active.
        for process in processes:
            wait_for_line(process, b"peer-up: ", timeout=30)
        yield first, second
    finally:
        for process in processes:
            stop_process(process)


def _register(registrar: tuple[str, int], contact: Optional[str], expires: Optional[int] = None,
              call_id: str = "udp-1", cseq: int = 1) -> tuple[str, list[str]]:
    """Send a hand-built REGISTER for AOR over UDP; the status line and Contact values of the answer."""
    host, port = registrar
    headers = {"Contact": contact} if contact is not None else {}
    if expires is not None:
        headers["Expires"] = str(expires)
    data = build_sip_message("REGISTER", f"sip:{host}:{port}", local=(probe_host(), 5999), to_uri=AOR,
                             from_uri=AOR, headers=headers, call_id=call_id, cseq=cseq)
    answer = send_sip(host, port, data)
    first = parse_sip(answer)[0]
    contacts = [line.partition(":")[2].strip() for line in answer.decode().split("\r\n") if line.lower().startswith("contact:")]
    return first, contacts


def test_two_registrars_over_udp(two_registrars: tuple[tuple[str, int], tuple[str, int]]) -> None:
    """A REGISTER on one registrar is found on the other (also by `registrar.py lookup`); Expires 0 removes it on both."""
    first, second = two_registrars
    status, contacts = _register(first, "<sip:alice@192.0.2.50:5070>", expires=600)
    assert (status, contacts) == ("SIP/2.0 200 OK", ["<sip:alice@192.0.2.50:5070>;expires=600"])
    wait_until(lambda: _register(second, None)[1] != [], timeout=5)
    status, contacts = _register(second, None)
    assert status == "SIP/2.0 200 OK"
    assert [c.partition(";")[0] for c in contacts] == ["<sip:alice@192.0.2.50:5070>"]
    lookup = subprocess.run([sys.executable, str(EXAMPLES / "registrar.py"), "lookup", "--registrar",
                             f"{second[0]}:{second[1]}", "--bind", probe_host(), AOR],
                            capture_output=True, text=True, timeout=30)
    assert lookup.returncode == 0, lookup.stderr
    assert [line.partition(";")[0] for line in lookup.stdout.splitlines()] == ["<sip:alice@192.0.2.50:5070>"]

    status, contacts = _register(first, "<sip:alice@192.0.2.50:5070>", expires=0, cseq=2)
    assert (status, contacts) == ("SIP/2.0 200 OK", [])
    wait_until(lambda: _register(second, None)[1] == [], timeout=5)
    assert _register(first, None)[1] == []
