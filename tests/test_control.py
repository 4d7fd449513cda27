"""The JSON-RPC control API: Kamailio's dmq.* methods, this node's own, peers' methods, JSON-RPC framing, HTTP."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from dmq import CallbackPeer, DMQService, EventKind, NodeStatus, Peer
from dmq.control import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ControlAPI,
    RPCResource,
    make_site,
)
from dmq.errors import RPCError
from dmq.testing import FakeCluster, FakeSIPTransport, cluster_of, rpc, rpc_raw as raw
from dmq.service import SERVER_NAME

# Twisted's own Agent response transport lacks abortConnection; nothing to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")

KAMAILIO_KEYS = {"host", "port", "proto", "resolved_ip", "status", "last_notification", "local"}


def pair(*ports: int, **kw: Any) -> FakeCluster:
    """Nodes on 127.0.0.1 over one fake network and one clock; by default 5060 and 5061 (seeded with 5060)."""
    return cluster_of(*(ports or (5060, 5061)), **kw)


class ListNodesTests(SynchronousTestCase):
    """dmq.list_nodes: Kamailio's keys, value types and order."""

    def setUp(self) -> None:
        self.pair = pair()
        self.pair.run(1)
        self.api = ControlAPI(self.pair.nodes[5061])

    def test_keys_and_types_are_kamailios(self) -> None:
        """Each entry has Kamailio's keys plus 6.1's fail_count and our agent, with Kamailio's value types."""
        result = rpc(self.api, "dmq.list_nodes")["result"]
        self.assertEqual(len(result), 2)
        for entry in result:
            self.assertEqual(set(entry), KAMAILIO_KEYS | {"fail_count", "agent"})
            for key in ("host", "port", "proto", "resolved_ip", "status", "agent"):
                self.assertIsInstance(entry[key], str)
            for key in ("last_notification", "local", "fail_count"):
                self.assertIs(type(entry[key]), int)

    def test_values_and_order(self) -> None:
        """The remote node comes first and the local node last (Kamailio's order); UDP is proto '*'."""
        first, last = rpc(self.api, "dmq.list_nodes")["result"]
        self.assertEqual(
            first,
            {
                "host": "127.0.0.1",
                "port": "5060",
                "proto": "*",
                "resolved_ip": "127.0.0.1",
                "status": "active",
                "last_notification": 1 if first["last_notification"] else 0,
                "local": 0,
                "fail_count": 0,
                "agent": SERVER_NAME,
            },
        )
        self.assertEqual((last["port"], last["local"], last["status"], last["agent"]), ("5061", 1, "active", SERVER_NAME))
        self.assertEqual(last["last_notification"], 0)

    def test_last_notification_is_whole_seconds_of_last_contact(self) -> None:
        """A node heard from at t=12.3 shows last_notification 12; a node never heard from shows 0."""
        self.pair.clock.advance(12.3 - self.pair.clock.seconds())
        node = self.pair.nodes[5061].nodes.get("sip:127.0.0.1:5060")
        assert node is not None
        node.last_seen = self.pair.clock.seconds()
        entries = {e["port"]: e for e in rpc(self.api, "dmq.list_nodes")["result"]}
        self.assertEqual(entries["5060"]["last_notification"], 12)
        self.assertEqual(entries["5061"]["last_notification"], 0)

    def test_ipv6_host_keeps_brackets_resolved_ip_does_not(self) -> None:
        """An IPv6 node lists host '[::1]' (as Kamailio's parsed URI host) and resolved_ip '::1'."""
        rpc(self.api, "dmq.add", "sip:[::1]:5070;transport=tcp")
        entry = rpc(self.api, "dmq.list_nodes")["result"][0]
        self.assertEqual((entry["host"], entry["resolved_ip"], entry["proto"], entry["port"]), ("[::1]", "::1", "tcp", "5070"))

    def test_extra_params_are_ignored(self) -> None:
        """Like Kamailio, dmq.list_nodes ignores parameters it does not take."""
        self.assertEqual(len(rpc(self.api, "dmq.list_nodes", 1)["result"]), 2)


class KamailioMethodTests(SynchronousTestCase):
    """dmq.add, dmq.remove, dmq.change_status: Kamailio's answers and faults (src/modules/dmq/dmq.c)."""

    def setUp(self) -> None:
        self.pair = pair()
        self.pair.run(1)
        self.svc = self.pair.nodes[5060]
        self.api = ControlAPI(self.svc)
        del self.pair.events[5060][:]

    def error(self, answer: dict[str, Any]) -> tuple[int, str]:
        return answer["error"]["code"], answer["error"]["message"]

    def test_add(self) -> None:
        """dmq.add lists a new node as active, reports peer-up and answers Kamailio's text."""
        answer = rpc(self.api, "dmq.add", "sip:127.0.0.1:5099")
        self.assertEqual(answer, {"jsonrpc": "2.0", "result": "Ok. DMQ node added.", "id": 7})
        node = self.svc.nodes.get("sip:127.0.0.1:5099")
        assert node is not None
        self.assertIs(node.status, NodeStatus.ACTIVE)
        self.assertEqual([(e.kind, e.node.port) for e in self.pair.events[5060]], [(EventKind.PEER_UP, 5099)])

    def test_add_takes_status_from_uri(self) -> None:
        """dmq.add sip:...;status=disabled adds the node disabled, as Kamailio's node params say."""
        rpc(self.api, "dmq.add", "sip:127.0.0.1:5099;status=disabled")
        node = self.svc.nodes.get("sip:127.0.0.1:5099")
        assert node is not None
        self.assertIs(node.status, NodeStatus.DISABLED)

    def test_add_faults(self) -> None:
        """A listed node, a bad URI and a missing parameter get Kamailio's 500 faults."""
        self.assertEqual(self.error(rpc(self.api, "dmq.add", "sip:127.0.0.1:5061")), (500, "Node is already added"))
        self.assertEqual(self.error(rpc(self.api, "dmq.add", "garbage")), (500, "Failure"))
        self.assertEqual(self.error(rpc(self.api, "dmq.add")), (500, "Invalid Parameters"))
        self.assertEqual(self.error(rpc(self.api, "dmq.add", 5)), (500, "Invalid Parameters"))
        self.assertEqual(len(self.svc.nodes), 2)

    def test_remove(self) -> None:
        """dmq.remove drops the node, reports peer-disabled and answers Kamailio's text."""
        answer = rpc(self.api, "dmq.remove", "sip:127.0.0.1:5061")
        self.assertEqual(answer["result"], "Ok. DMQ node removed.")
        self.assertIsNone(self.svc.nodes.get("sip:127.0.0.1:5061"))
        self.assertEqual([e.kind for e in self.pair.events[5060]], [EventKind.PEER_DISABLED])

    def test_remove_unknown_and_local_answer_ok_as_kamailio(self) -> None:
        """As Kamailio 5.6.3 does, removing an unknown node or the local one answers Ok and changes nothing."""
        self.assertEqual(rpc(self.api, "dmq.remove", "sip:127.0.0.9:4444")["result"], "Ok. DMQ node removed.")
        self.assertEqual(rpc(self.api, "dmq.remove", "sip:127.0.0.1:5060")["result"], "Ok. DMQ node removed.")
        self.assertEqual(len(self.svc.nodes), 2)

    def test_remove_faults(self) -> None:
        """A bad URI is 500 Failure, a missing parameter 500 Invalid Parameters (as Kamailio 5.6.3 answers)."""
        self.assertEqual(self.error(rpc(self.api, "dmq.remove", "garbage")), (500, "Failure"))
        self.assertEqual(self.error(rpc(self.api, "dmq.remove")), (500, "Invalid Parameters"))

    def test_change_status(self) -> None:
        """dmq.change_status sets the status (with its event); the same status again is 'already'."""
        answer = rpc(self.api, "dmq.change_status", "sip:127.0.0.1:5061", "disabled")
        self.assertEqual(answer["result"], "Ok. DMQ node status changed.")
        node = self.svc.nodes.get("sip:127.0.0.1:5061")
        assert node is not None
        self.assertIs(node.status, NodeStatus.DISABLED)
        self.assertEqual([e.kind for e in self.pair.events[5060]], [EventKind.PEER_DISABLED])
        again = rpc(self.api, "dmq.change_status", "sip:127.0.0.1:5061", "disabled")
        self.assertEqual(again["result"], "Ok. DMQ node status is already disabled.")
        rpc(self.api, "dmq.change_status", "sip:127.0.0.1:5061", "not_active")
        self.assertIs(node.status, NodeStatus.NOT_ACTIVE)

    def test_change_status_faults(self) -> None:
        """Unknown status, unknown node, the local node and missing params get Kamailio's 500 faults."""
        uri = "sip:127.0.0.1:5061"
        self.assertEqual(
            self.error(rpc(self.api, "dmq.change_status", uri, "asleep")),
            (500, "Invalid Status - use: active, not_active, disabled"),
        )
        self.assertEqual(self.error(rpc(self.api, "dmq.change_status", "sip:127.0.0.9:1", "active")), (500, "Node Not Found"))
        self.assertEqual(self.error(rpc(self.api, "dmq.change_status", "garbage", "active")), (500, "Node Not Found"))
        self.assertEqual(self.error(rpc(self.api, "dmq.change_status", "sip:127.0.0.1:5060", "disabled")), (500, "Node is local"))
        self.assertEqual(self.error(rpc(self.api, "dmq.change_status", uri)), (500, "Invalid Parameters"))

    def test_service_methods_directly(self) -> None:
        """DMQService.add_node refuses a listed node; set_node_status refuses the local node and an unknown one."""
        with self.assertRaises(ValueError):
            self.svc.add_node("sip:127.0.0.1:5061")
        with self.assertRaises(ValueError):
            self.svc.set_node_status("sip:127.0.0.1:5060", NodeStatus.DISABLED)
        with self.assertRaises(ValueError):
            self.svc.set_node_status("sip:127.0.0.1:5999", NodeStatus.DISABLED)
        self.assertFalse(self.svc.remove_node("sip:127.0.0.1:5060"))


class OwnMethodTests(SynchronousTestCase):
    """dmq.send_message, dmq.bcast_message, dmq.stats, system.*."""

    def setUp(self) -> None:
        self.pair = pair(5060, 5061, 5062)
        self.received: list[tuple[int, bytes, Optional[str]]] = []
        for port in (5061, 5062):
            self.pair.nodes[port].register_peer(
                CallbackPeer("custom1", lambda m, port=port: self.received.append((port, m.body, m.content_type)))
            )
        self.pair.run(2)
        self.api = ControlAPI(self.pair.nodes[5060])

    def call(self, method: str, *params: Any) -> dict[str, Any]:
        d = self.api.handle(json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode())
        self.pair.run(0.1)
        return json.loads(self.successResultOf(d))

    def test_send_message(self) -> None:
        """dmq.send_message delivers the body to one node and answers its final response."""
        answer = self.call("dmq.send_message", "custom1", "sip:127.0.0.1:5061", "hello", "application/json")
        self.assertEqual(answer["result"], {"node": "sip:127.0.0.1:5061", "code": 200, "reason": "OK"})
        self.assertEqual(self.received, [(5061, b"hello", "application/json")])

    def test_send_message_to_unknown_channel_and_silent_node(self) -> None:
        """A channel without a peer answers 404; a node that never answers ends in 408."""
        answer = self.call("dmq.send_message", "nosuch", "sip:127.0.0.1:5061", "x")
        self.assertEqual(answer["result"]["code"], 404)
        d = self.api.handle(
            json.dumps({"jsonrpc": "2.0", "method": "dmq.send_message", "params": ["custom1", "sip:127.0.0.1:5999", "x"], "id": 2}).encode()
        )
        self.assertNoResult(d)
        self.pair.run(33, step=0.5)
        self.assertEqual(json.loads(self.successResultOf(d))["result"]["code"], 408)

    def test_send_message_faults(self) -> None:
        """A bad channel name, a bad node URI and a non-string body are 400 errors naming the fault."""
        for params, fragment in (
            (["bad channel", "sip:127.0.0.1:5061", "x"], "channel"),
            (["custom1", "nonsense", "x"], "node"),
            (["custom1", "sip:127.0.0.1:5061", 5], "body"),
        ):
            error = self.call("dmq.send_message", *params)["error"]
            self.assertEqual(error["code"], 400)
            self.assertIn(fragment, error["message"])
        self.assertEqual(self.call("dmq.send_message", "custom1")["error"]["code"], INVALID_PARAMS)

    def test_bcast_message(self) -> None:
        """dmq.bcast_message reaches every active node and lists each answer."""
        answer = self.call("dmq.bcast_message", "custom1", "to all")
        results = sorted(answer["result"], key=lambda r: r["node"])
        self.assertEqual(
            results,
            [
                {"node": "sip:127.0.0.1:5061", "code": 200, "reason": "OK"},
                {"node": "sip:127.0.0.1:5062", "code": 200, "reason": "OK"},
            ],
        )
        self.assertEqual(sorted(self.received), [(5061, b"to all", "text/plain"), (5062, b"to all", "text/plain")])

    def test_stats(self) -> None:
        """dmq.stats counts nodes by status, channel messages by code, transactions and ping RTTs."""
        self.call("dmq.bcast_message", "custom1", "x")
        self.pair.run(6)
        stats = self.call("dmq.stats")["result"]
        self.assertEqual(stats["nodes"], {"total": 3, "active": 3, "not_active": 0, "disabled": 0})
        self.assertEqual(stats["channels"]["custom1"]["sent"], 2)
        self.assertEqual(stats["channels"]["custom1"]["results"], {"200": 2})
        self.assertGreater(stats["channels"]["notification_peer"]["received"], 0)
        self.assertGreater(stats["transactions"]["requests_sent"], 2)
        self.assertIn("sip:127.0.0.1:5061", stats["ping_rtt"])
        self.assertGreater(stats["notification"]["pings"], 0)
        self.assertTrue(stats["ready"])
        json.dumps(stats)

    def test_system_methods(self) -> None:
        """system.listMethods names every core method; system.methodHelp gives a method's first line."""
        names = self.call("system.listMethods")["result"]
        for name in ("dmq.list_nodes", "dmq.add", "dmq.remove", "dmq.change_status", "dmq.send_message",
                     "dmq.bcast_message", "dmq.stats", "system.listMethods", "system.methodHelp"):
            self.assertIn(name, names)
        self.assertIn("Change the status", self.call("system.methodHelp", "dmq.change_status")["result"])
        self.assertEqual(self.call("system.methodHelp", "no.such")["error"]["code"], METHOD_NOT_FOUND)


class EchoPeer(Peer):
    """A peer offering RPC methods the way bundled peers do (rpc_methods)."""

    channel = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.later: Deferred[Any] = Deferred()

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        def fail(*params: Any) -> Any:
            raise RPCError(404, "no such key")

        def broken() -> Any:
            raise ValueError("bug")

        return {
            "echo.say": lambda text: text,
            "echo.pair": lambda a, b=0: [a, b],
            "echo.fail": fail,
            "echo.later": lambda: self.later,
            "echo.broken": broken,
            "echo.set": lambda: {1, 2},
            "dmq.list_nodes": lambda: "hijacked",
        }


class PeerMethodAndFramingTests(SynchronousTestCase):
    """Peers' rpc_methods, and the JSON-RPC 2.0 framing: errors, notifications, batches."""

    def setUp(self) -> None:
        self.svc = DMQService("sip:127.0.0.1:5060", reactor=Clock(), transport=FakeSIPTransport())
        self.peer = self.svc.register_peer(EchoPeer())
        self.api = ControlAPI(self.svc)

    def test_positional_and_named_params(self) -> None:
        """A peer method gets array params positionally and object params by name."""
        self.assertEqual(rpc(self.api, "echo.say", "hi")["result"], "hi")
        self.assertEqual(rpc(self.api, "echo.pair", named={"a": 1, "b": 2})["result"], [1, 2])
        self.assertEqual(rpc(self.api, "echo.pair", 5)["result"], [5, 0])

    def test_rpc_error_keeps_code_and_message(self) -> None:
        """An RPCError(code, message) from a method is the JSON-RPC error object with that code and message."""
        self.assertEqual(rpc(self.api, "echo.fail", "t", "k")["error"], {"code": 404, "message": "no such key"})

    def test_deferred_result(self) -> None:
        """A method returning a Deferred is answered when it fires."""
        d = self.api.handle(b'{"jsonrpc": "2.0", "method": "echo.later", "id": 3}')
        self.assertNoResult(d)
        self.peer.later.callback({"done": True})
        self.assertEqual(json.loads(self.successResultOf(d)), {"jsonrpc": "2.0", "result": {"done": True}, "id": 3})

    def test_core_methods_cannot_be_overridden(self) -> None:
        """A peer method named like a core method is ignored; listMethods shows the peer's others."""
        self.assertIsInstance(rpc(self.api, "dmq.list_nodes")["result"], list)
        self.assertIn("echo.say", rpc(self.api, "system.listMethods")["result"])

    def test_peer_registered_later_is_seen(self) -> None:
        """Methods are read at each call: a peer registered after the API was made is reachable."""

        class Late(Peer):
            channel = "late"

            def rpc_methods(self) -> dict[str, Callable[..., Any]]:
                return {"late.ping": lambda: "pong"}

        self.assertEqual(rpc(self.api, "late.ping")["error"]["code"], METHOD_NOT_FOUND)
        self.svc.register_peer(Late())
        self.assertEqual(rpc(self.api, "late.ping")["result"], "pong")

    def test_protocol_errors(self) -> None:
        """Parse error, invalid requests, unknown method, bad params, internal error: the JSON-RPC codes."""
        self.assertEqual(raw(self.api, b"{not json")["error"]["code"], PARSE_ERROR)
        self.assertIsNone(raw(self.api, b"{not json")["id"])
        cases = [
            (b"42", INVALID_REQUEST),
            (b'{"method": "echo.say", "params": ["x"], "id": 1}', INVALID_REQUEST),
            (b'{"jsonrpc": "1.0", "method": "echo.say", "params": ["x"], "id": 1}', INVALID_REQUEST),
            (b'{"jsonrpc": "2.0", "method": 5, "id": 1}', INVALID_REQUEST),
            (b'{"jsonrpc": "2.0", "method": "echo.say", "params": "x", "id": 1}', INVALID_REQUEST),
            (b'{"jsonrpc": "2.0", "method": "echo.say", "params": ["x"], "id": [1]}', INVALID_REQUEST),
            (b"[]", INVALID_REQUEST),
            (b'{"jsonrpc": "2.0", "method": "no.such", "id": 1}', METHOD_NOT_FOUND),
            (b'{"jsonrpc": "2.0", "method": "echo.say", "params": [], "id": 1}', INVALID_PARAMS),
            (b'{"jsonrpc": "2.0", "method": "echo.say", "params": {"nope": 1}, "id": 1}', INVALID_PARAMS),
            (b'{"jsonrpc": "2.0", "method": "echo.broken", "id": 1}', INTERNAL_ERROR),
            (b'{"jsonrpc": "2.0", "method": "echo.set", "id": 1}', INTERNAL_ERROR),
        ]
        for body, code in cases:
            answer = raw(self.api, body)
            self.assertEqual(answer["error"]["code"], code, body)
            self.assertEqual(answer["jsonrpc"], "2.0")
        self.flushLoggedErrors(ValueError)

    def test_notifications_get_no_answer(self) -> None:
        """A call without id is run but not answered; a batch of only notifications has no answer."""
        self.assertIsNone(raw(self.api, b'{"jsonrpc": "2.0", "method": "dmq.add", "params": ["sip:127.0.0.1:5099"]}'))
        self.assertIsNotNone(self.svc.nodes.get("sip:127.0.0.1:5099"))
        self.assertIsNone(raw(self.api, b'[{"jsonrpc": "2.0", "method": "echo.say", "params": ["x"]}]'))
        self.assertIsNone(raw(self.api, b'{"jsonrpc": "2.0", "method": "no.such"}'))

    def test_batch(self) -> None:
        """A batch answers every call with an id, in order, errors included, notifications left out."""
        batch = [
            {"jsonrpc": "2.0", "method": "echo.say", "params": ["a"], "id": 1},
            {"jsonrpc": "2.0", "method": "echo.say", "params": ["b"]},
            {"jsonrpc": "2.0", "method": "echo.fail", "id": "two"},
            7,
        ]
        answers = raw(self.api, json.dumps(batch).encode())
        self.assertEqual(
            answers,
            [
                {"jsonrpc": "2.0", "result": "a", "id": 1},
                {"jsonrpc": "2.0", "error": {"code": 404, "message": "no such key"}, "id": "two"},
                {"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST, "message": "Invalid Request: not an object"}, "id": None},
            ],
        )


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def http_node(reactor: Any) -> Any:
    """A DMQService (fake SIP transport) whose control site listens on a free loopback port."""
    ports: list[Any] = []

    def make(token: Optional[str] = None) -> tuple[DMQService, str]:
        svc = DMQService("sip:127.0.0.1:5060", reactor=reactor, transport=FakeSIPTransport())
        site = make_site(ControlAPI(svc), token)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return svc, f"http://127.0.0.1:{port.getHost().port}"

    yield make
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def post(reactor: Any, url: str, body: bytes, headers: Optional[dict[bytes, list[bytes]]] = None, method: bytes = b"POST") -> Deferred[Any]:
    """POST ``body`` to ``url``; fires with (response, body bytes)."""
    from twisted.web.client import FileBodyProducer
    from io import BytesIO

    agent = Agent(reactor)
    producer = FileBodyProducer(BytesIO(body)) if method == b"POST" else None
    d = agent.request(method, url.encode(), Headers(headers or {b"content-type": [b"application/json"]}), producer)
    d.addCallback(lambda response: readBody(response).addCallback(lambda data: (response, data)))
    return d


@pytest_twisted.inlineCallbacks
def test_http_post_rpc(http_node: Any, reactor: Any) -> Any:
    """POST /RPC answers 200 with an application/json JSON-RPC answer."""
    svc, base = http_node()
    response, data = yield post(reactor, base + "/RPC", b'{"jsonrpc": "2.0", "method": "dmq.list_nodes", "id": 1}')
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(data)["result"][0]["local"] == 1


@pytest_twisted.inlineCallbacks
def test_http_notification_is_204(http_node: Any, reactor: Any) -> Any:
    """A notification over HTTP is run and answered 204 No Content."""
    svc, base = http_node()
    response, data = yield post(reactor, base + "/RPC", b'{"jsonrpc": "2.0", "method": "dmq.add", "params": ["sip:127.0.0.1:5099"]}')
    assert (response.code, data) == (204, b"")
    assert svc.nodes.get("sip:127.0.0.1:5099") is not None


@pytest_twisted.inlineCallbacks
def test_http_get_and_other_paths(http_node: Any, reactor: Any) -> Any:
    """GET /RPC is 405 and an unknown path 404."""
    svc, base = http_node()
    response, _ = yield post(reactor, base + "/RPC", b"", method=b"GET")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"POST"]
    response, _ = yield post(reactor, base + "/nothing", b"{}")
    assert response.code == 404


@pytest_twisted.inlineCallbacks
def test_http_bearer_token(http_node: Any, reactor: Any) -> Any:
    """With a token, a request without it or with a wrong one is 401; the right one is served."""
    svc, base = http_node(token="s3cret")
    body = b'{"jsonrpc": "2.0", "method": "dmq.stats", "id": 1}'
    response, _ = yield post(reactor, base + "/RPC", body)
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="dmq"']
    response, _ = yield post(reactor, base + "/RPC", body, {b"authorization": [b"Bearer wrong"]})
    assert response.code == 401
    response, data = yield post(reactor, base + "/RPC", body, {b"authorization": [b"Bearer s3cret"]})
    assert response.code == 200
    assert json.loads(data)["result"]["nodes"]["total"] == 1


@pytest_twisted.inlineCallbacks
def test_http_too_large(reactor: Any) -> Any:
    """A body above the limit is refused with 413 and not parsed."""
    svc = DMQService("sip:127.0.0.1:5060", reactor=reactor, transport=FakeSIPTransport())
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"RPC", RPCResource(ControlAPI(svc), max_body=64))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        response, _ = yield post(reactor, f"http://127.0.0.1:{port.getHost().port}/RPC", b"[" + b" " * 100 + b"]")
        assert response.code == 413
    finally:
        yield port.stopListening()
