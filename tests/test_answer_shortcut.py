"""The shortcut for plain answers over UDP gives what the general parse and match give, whatever the answer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dmq.errors import SIPParseError
from dmq.sip import SIPURI, build_request, make_response, parse_message
from dmq.sip.address import Address
from dmq.sip.build import RequestTemplate
from dmq.sip.client import LazyResponse, plain_answer, server_of
from dmq.sip.message import Message, Response
from dmq.sip.transaction import TransactionLayer
from dmq.sip.udp import SIPDatagramProtocol
from dmq.testing import FakeSIPTransport

PEER = Address("udp", "127.0.0.1", 5071)
TEMPLATE = RequestTemplate(
    build_request(
        "KDMQ",
        SIPURI.parse("sip:htable@127.0.0.1:5071"),
        from_uri=SIPURI.parse("sip:htable@127.0.0.1:5070"),
        via_transport="UDP",
        via_sent_by="127.0.0.1:5070",
        body=b"",
        content_type="application/json",
        user_agent="dmq/0.1.0",
        branch=RequestTemplate.BRANCH_MARK,
        from_tag=RequestTemplate.TAG_MARK,
        call_id=RequestTemplate.CALL_ID_MARK,
    ),
    "127.0.0.1",
)
SERVER = b"kamailio (5.6.3 (x86_64/linux))"
CAPTURES = Path(__file__).parent / "data" / "captures"


def kamailio(request: bytes, code: bytes = b"200 OK", server: Optional[bytes] = SERVER) -> bytes:
    """The answer Kamailio's sl module builds: the request's Via, To (tagged), From, CSeq, Call-ID in its order."""
    head = request[: request.index(b"\r\n\r\n")].split(b"\r\n")
    out = [b"SIP/2.0 " + code]
    for line in head[1:]:
        name = line.split(b":")[0]
        if name in (b"Via", b"From", b"CSeq", b"Call-ID"):
            out.append(line)
        elif name == b"To":
            out.append(line + b";tag=1f2e3d")
    if server is not None:
        out.append(b"Server: " + server)
    return b"\r\n".join([*out, b"Content-Length: 0", b"", b""])


def dmq_answer(request: bytes) -> bytes:
    """The answer a dmq node builds (make_response)."""
    return make_response(parse_message(request), 200).to_bytes()


def shapes() -> dict[str, Callable[[bytes], bytes]]:
    """Answers of many shapes to one request: plain ones, and every way to leave the plain shape."""
    def replace(old: bytes, new: bytes, count: int = 1) -> Callable[[bytes], bytes]:
        return lambda r: kamailio(r).replace(old, new, count)

    return {
        "kamailio": kamailio,
        "kamailio 404": lambda r: kamailio(r, b"404 Not Here"),
        "provisional": lambda r: kamailio(r, b"180 Ringing"),
        "no reason": lambda r: kamailio(r, b"200 "),
        "no server": lambda r: kamailio(r, server=None),
        "dmq": dmq_answer,
        "compact": lambda r: kamailio(r).replace(b"\r\nVia:", b"\r\nv:").replace(b"\r\nCall-ID:", b"\r\ni:"),
        "lower case": replace(b"\r\nFrom:", b"\r\nfrom:"),
        "two vias": replace(b"\r\nVia: ", b"\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\nVia: "),
        "vias in one line": lambda r: kamailio(r).replace(b"\r\nTo:", b",SIP/2.0/UDP 10.0.0.9\r\nTo:", 1),
        "received": lambda r: kamailio(r).replace(b"\r\nTo:", b";received=10.1.1.1\r\nTo:", 1)
        if b"\r\nVia" in kamailio(r).split(b"\r\nTo:")[0] else kamailio(r),
        "extra header": replace(b"\r\nServer:", b"\r\nContact: <sip:a@b>\r\nServer:"),
        "body": lambda r: kamailio(r).replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 2\r\n\r\nhi"),
        "trailing bytes": lambda r: kamailio(r) + b"junk",
        "folded": replace(b"\r\nServer: ", b"\r\nServer:\r\n "),
        "tab": replace(b"Server: ", b"Server:\t"),
        "bad call-id": replace(b"\r\nCall-ID: ", b"\r\nCall-ID: a b"),
        "bad cseq": replace(b"\r\nCSeq: 10", b"\r\nCSeq: x"),
        "other method": replace(b" KDMQ\r\n", b" OPTIONS\r\n"),
        "two call-ids": lambda r: kamailio(r).replace(b"\r\nServer:", b"\r\n" + [
            line for line in kamailio(r).split(b"\r\n") if line.startswith(b"Call-ID")][0] + b"\r\nServer:"),
        "two servers": replace(b"\r\nServer: ", b"\r\nServer: a\r\nServer: "),
        "no to": lambda r: b"\r\n".join(line for line in kamailio(r).split(b"\r\n") if not line.startswith(b"To:")),
        "bad status": replace(b"SIP/2.0 200 OK", b"SIP/2.0 20 OK"),
        "version": replace(b"SIP/2.0 200", b"SIP/3.0 200"),
        "bad from": replace(b"\r\nFrom: <", b"\r\nFrom: <<"),
        "bad to": replace(b"\r\nTo: <", b"\r\nTo: <<"),
        "other branch": replace(b"branch=z9hG4bK", b"branch=z9hG4bKx"),
        "bare lf": replace(b"\r\nServer", b"\nServer"),
        "non-ascii server": replace(b"kamailio", "kamaïlio".encode()),
    }


class GeneralOnly:
    """A transaction layer's ``message_received`` alone: a UDP protocol whose owner has it parses every answer."""

    def __init__(self, layer: TransactionLayer) -> None:
        self.message_received = layer.message_received


class Side:
    """One node's transaction layer with ``request`` in flight, and a UDP protocol taking answers the shortcut way or only the general way."""

    def __init__(self, shortcut: bool, request: tuple[bytes, str]) -> None:
        self.clock = Clock()
        self.transport = FakeSIPTransport(self.clock)
        self.layer = TransactionLayer(self.transport, reactor=self.clock)
        self.transport.controller = self.layer if shortcut else GeneralOnly(self.layer)
        self.protocol = SIPDatagramProtocol(self.transport)
        self.request, branch = request
        self.outcomes: list[Any] = []
        self.layer.request_data_then(self.request, branch, "KDMQ", PEER, self.outcomes.append)

    def receive(self, data: bytes) -> None:
        """One datagram from the peer."""
        self.protocol.datagramReceived(data, (PEER.host, PEER.port))

    def state(self) -> tuple[Any, ...]:
        """What a caller and the counters can tell."""
        seen = []
        for outcome in self.outcomes:
            if isinstance(outcome, Failure):
                seen.append(repr(outcome.value))
            else:
                seen.append(described(outcome))
        stats = self.layer.stats
        return (seen, stats.responses_received, stats.stray_responses, self.transport.stats["rejected"],
                sorted(self.layer.clients), [t.state for t in self.layer.clients.values()],
                len(self.layer.completed_clients))


def described(response: Response) -> tuple[Any, ...]:
    """Everything a reader may ask of a response (what fails to parse, as its error)."""
    readers: list[Callable[[Response], Any]] = [
        lambda r: type(r) is LazyResponse,
        lambda r: (r.code, r.reason, r.headers.lines(), r.body, r.to_bytes(), repr(r)),
        lambda r: (r.call_id, r.cseq, r.content_length, r.headers.get("Server"), server_of(r)),
        lambda r: r.from_.tag,
        lambda r: r.to.tag,
        lambda r: [(v.branch, v.sent_by, v.params) for v in r.vias],
    ]
    seen = []
    for read in readers:
        try:
            seen.append(read(response))
        except SIPParseError as e:
            seen.append(repr(e))
    return tuple(seen)


def both(answer: Callable[[bytes], bytes], then: Optional[Callable[[Side], None]] = None) -> tuple[Side, Side]:
    """The same request answered the same way through the shortcut and through the general way."""
    request = TEMPLATE.render(b'{"action":2}')
    sides = Side(True, request), Side(False, request)
    data = answer(request[0])
    for side in sides:
        side.receive(data)
        if then is not None:
            then(side)
    return sides


def _lazy(state: tuple[Any, ...]) -> tuple[Any, ...]:
    """``state`` without whether the response was lazy."""
    return ([o[1:] if isinstance(o, tuple) else o for o in state[0]], *state[1:])


class ShortcutTests(SynchronousTestCase):
    """The shortcut takes only what the parser would take, and gives the same transaction the same response."""

    def test_every_shape_gives_the_same_outcome(self) -> None:
        """For answers of every shape (plain, compact, folded, several Vias, extra lines, bodies, malformed ones)
        the caller gets the same response, or the same nothing, and the counters agree."""
        taken = set()
        for name, answer in shapes().items():
            shortcut, general = both(answer)
            self.flushLoggedErrors()
            self.assertEqual(_lazy(shortcut.state()), _lazy(general.state()), name)
            if shortcut.outcomes and type(shortcut.outcomes[0]) is LazyResponse:
                taken.add(name)
        # (A provisional answer is taken too, but gives the caller nothing to tell.)
        self.assertEqual(taken, {"kamailio", "kamailio 404", "no reason", "no server", "dmq",
                                 "bad to"})

    def test_strays_and_late_copies_go_the_general_way(self) -> None:
        """An answer with no transaction of its own is counted a stray; a second copy of a final answer is absorbed (Timer K)."""
        shortcut, general = both(kamailio, lambda side: side.receive(kamailio(side.request)))
        self.assertEqual(shortcut.state()[1:], general.state()[1:])
        self.assertEqual(shortcut.layer.stats.responses_received, 2)
        stray = kamailio(TEMPLATE.render(b"{}")[0])
        for side in (shortcut, general):
            side.receive(stray)
        self.assertEqual(shortcut.state()[1:], general.state()[1:])
        self.assertEqual(shortcut.layer.stats.stray_responses, 1)

    def test_mutated_answers_give_the_same_outcome(self) -> None:
        """Random byte changes to plain answers never make the shortcut take what the general way refuses or
        matches otherwise."""
        rng = random.Random(3261)
        alphabet = b" :;,<>=@.\r\n\t-0123456789abzAZ\x80"
        for _ in range(1500):
            base = rng.choice([kamailio, dmq_answer])

            def mutated(request: bytes, base: Callable[[bytes], bytes] = base) -> bytes:
                data = bytearray(base(request))
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(data))
                    roll = rng.random()
                    if roll < 0.4:
                        data[at] = rng.choice(alphabet)
                    elif roll < 0.7:
                        del data[at]
                    else:
                        data.insert(at, rng.choice(alphabet))
                return bytes(data)

            shortcut, general = both(mutated)
            self.flushLoggedErrors()
            self.assertEqual(_lazy(shortcut.state()), _lazy(general.state()), shortcut.request)

    def test_lazy_response_reads_as_the_parsed_one(self) -> None:
        """A lazy response is equal to the parsed one, both ways, and parses only when more than its code,
        reason and Server is read."""
        side = Side(True, TEMPLATE.render(b"{}"))
        data = kamailio(side.request)
        side.receive(data)
        [response] = side.outcomes
        self.assertIs(type(response), LazyResponse)
        self.assertEqual((response.code, response.reason, server_of(response)), (200, "OK", SERVER.decode()))
        self.assertRaises(AttributeError, Message.__dict__["headers"].__get__, response, Message)  # not parsed yet
        parsed = parse_message(data)
        self.assertEqual(response, parsed)
        self.assertEqual(parsed, response)
        self.assertEqual(response.to_bytes(), data)
        self.assertEqual(plain_answer(data)[:2], (200, "OK"))  # type: ignore[index]
        self.assertIsNone(plain_answer(data + b"x"))

    def test_kamailio_answers_are_in_the_plain_shape(self) -> None:
        """Kamailio's own answers to KDMQs (captured) are in the shape the shortcut takes, and read as parsed."""
        for name in ("resp-200-KDMQ.sip", "resp-404-KDMQ.sip"):
            data = (CAPTURES / name).read_bytes()
            answer = plain_answer(data)
            assert answer is not None, name
            code, reason, via, cseq, server, _copied = answer
            parsed = parse_message(data)
            self.assertEqual((code, reason, server, via.decode(), cseq.decode()),
                             (parsed.code, parsed.reason, parsed.headers.get("Server"),
                              parsed.headers.get("Via"), parsed.headers.get("CSeq")))
            self.assertEqual(LazyResponse(data, code, reason, server), parsed)
