"""
The control API: JSON-RPC 2.0 over HTTP, with Kamailio's method names.

A client POSTs a JSON-RPC request (or a batch) to ``/RPC``, the path
Kamailio's ``jsonrpcs`` module answers on over HTTP, and gets the JSON-RPC
answer back.  The methods:

- ``dmq.list_nodes``, ``dmq.add``, ``dmq.remove``, ``dmq.change_status``:
  Kamailio's, with its result shapes, answers and faults (``docs/operations.md``);
- ``dmq.send_message``, ``dmq.bcast_message``, ``dmq.stats``: this node's own;
- ``system.listMethods``, ``system.methodHelp``: as in Kamailio's core;
- every method a registered peer offers through ``rpc_methods()`` (a dict of
  name to callable, e.g. ``htable.get``).

A method takes the JSON-RPC params positionally (a JSON array) or by name (a
JSON object), returns a JSON-able value or a Deferred of one, and raises
:class:`dmq.errors.RPCError` for an error answer.  Protocol faults have the
JSON-RPC codes: parse error -32700, invalid request -32600, bad params
-32602, internal error -32603; an unknown method is answered as Kamailio's
``jsonrpcs`` does, ``500 Method Not Found``.

:class:`ControlAPI` does the JSON-RPC part without HTTP (so it is testable on
its own); :class:`RPCResource` serves it with ``twisted.web``, optionally
behind a bearer token (:class:`BearerToken`).  :func:`make_site` builds the
control endpoint: ``/RPC`` and the node's status page (:mod:`dmq.status`).
"""

from __future__ import annotations

import hmac
import inspect
import json
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from dmq.errors import RPCError
from dmq.node import Node, NodeListError, NodeStatus
from dmq.views import node_entry, service_stats
from dmq.peer import is_channel_name

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = [
    "BearerToken",
    "ControlAPI",
    "RPCResource",
    "make_site",
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "MAX_REQUEST_BYTES",
]

log = Logger()

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = 500
"""Kamailio's code for an unknown method (JSON-RPC's own is -32601), with the message ``Method Not Found``."""
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

MAX_REQUEST_BYTES = 1 << 20
"""The largest request body the HTTP resource reads (413 above)."""

MAX_BATCH = 1000
"""The most calls one batch may hold."""

RPCMethod = Callable[..., Any]

# Kamailio's fault texts (src/modules/dmq/dmq.c), all with code 500.
_INVALID_PARAMETERS = "Invalid Parameters"
_FAILURE = "Failure"



def _string_param(params: tuple[Any, ...], index: int) -> str:
    """Kamailio's ``rpc->scan(".S")``: a string parameter, else 500 Invalid Parameters."""
    if len(params) <= index or not isinstance(params[index], str):
        raise RPCError(500, _INVALID_PARAMETERS)
    return params[index]


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RPCError(400, f"Invalid Parameters ({name} must be a string)")
    return value


class ControlAPI:
    """
    The JSON-RPC methods of one :class:`~dmq.service.DMQService`.

    :param service: the node to control.
    """

    def __init__(self, service: "DMQService") -> None:
        self.service = service
        self._core: dict[str, RPCMethod] = {
            "dmq.list_nodes": self.list_nodes,
            "dmq.add": self.add,
            "dmq.remove": self.remove,
            "dmq.change_status": self.change_status,
            "dmq.send_message": self.send_message,
            "dmq.bcast_message": self.bcast_message,
            "dmq.stats": self.stats,
            "system.listMethods": self.list_methods,
            "system.methodHelp": self.method_help,
        }

    # -- the method table -------------------------------------------------------

    def methods(self) -> dict[str, RPCMethod]:
        """
        Every method by name: the core ones and those of each registered
        peer with an ``rpc_methods()`` (read at each call, so peers
        registered later count; a core name is never overridden).
        """
        table: dict[str, RPCMethod] = {}
        for peer in list(self.service.peers.values()):
            provider = getattr(peer, "rpc_methods", None)
            if provider is None:
                continue
            try:
                offered = provider()
            except Exception:
                log.failure("rpc_methods() of peer {channel} failed", channel=peer.channel)
                continue
            for name, method in offered.items():
                if name in self._core:
                    log.warn(
                        "peer {channel} offers RPC method {method}, a core method; ignored",
                        channel=peer.channel,
                        method=name,
                    )
                    continue
                table[name] = method
        table.update(self._core)
        return table

    def call(self, method: str, params: Union[list[Any], dict[str, Any], None] = None) -> "Deferred[Any]":
        """
        Call one method.

        :returns: a Deferred firing with the result, or failing with
            :class:`RPCError` (the JSON-RPC error to answer).
        """
        table = self.methods()
        function = table.get(method)
        if function is None:
            return defer.fail(RPCError(METHOD_NOT_FOUND, "Method Not Found"))
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if isinstance(params, list):
            args = tuple(params)
        elif isinstance(params, dict):
            kwargs = params
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as e:
                return defer.fail(RPCError(INVALID_PARAMS, f"Invalid params: {e}"))
        return defer.maybeDeferred(function, *args, **kwargs)

    # -- JSON-RPC framing ---------------------------------------------------------

    def handle(self, body: bytes) -> "Deferred[Optional[bytes]]":
        """
        Answer a JSON-RPC request body (one call or a batch).

        :returns: a Deferred firing with the answer's bytes, or ``None`` when
            nothing is to be answered (only notifications).  It never fails.
        """
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            log.info("rejected control request: not JSON ({reason})", reason=str(e))
            return defer.succeed(_dump(_error(None, PARSE_ERROR, f"Parse error: {e}")))
        if isinstance(payload, list):
            if not payload:
                return defer.succeed(_dump(_error(None, INVALID_REQUEST, "Invalid Request: empty batch")))
            if len(payload) > MAX_BATCH:
                return defer.succeed(
                    _dump(_error(None, INVALID_REQUEST, f"Invalid Request: more than {MAX_BATCH} calls"))
                )
            d: Deferred[Any] = defer.gatherResults([self._one(item) for item in payload])
            d.addCallback(lambda answers: [a for a in answers if a is not None])
            d.addCallback(lambda answers: _dump(answers) if answers else None)
            return d
        one: Deferred[Any] = self._one(payload)
        return one.addCallback(lambda answer: _dump(answer) if answer is not None else None)

    def _one(self, call: Any) -> "Deferred[Optional[dict[str, Any]]]":
        """The answer object to one call (``None`` for a notification)."""
        if not isinstance(call, dict):
            return defer.succeed(_error(None, INVALID_REQUEST, "Invalid Request: not an object"))
        request_id = call.get("id")
        if not isinstance(request_id, (str, int, float, type(None))) or isinstance(request_id, bool):
            return defer.succeed(_error(None, INVALID_REQUEST, "Invalid Request: bad id"))
        if call.get("jsonrpc") != "2.0":
            return defer.succeed(_error(request_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"'))
        method = call.get("method")
        if not isinstance(method, str):
            return defer.succeed(_error(request_id, INVALID_REQUEST, 'Invalid Request: "method" must be a string'))
        params = call.get("params")
        if params is not None and not isinstance(params, (list, dict)):
            return defer.succeed(
                _error(request_id, INVALID_REQUEST, 'Invalid Request: "params" must be an array or an object')
            )
        notification = "id" not in call
        log.debug("control call {method}", method=method)
        d = self.call(method, params)

        def answered(result: Any) -> Optional[dict[str, Any]]:
            if notification:
                return None
            return {"jsonrpc": "2.0", "result": result, "id": request_id}

        def failed(failure: Failure) -> Optional[dict[str, Any]]:
            if failure.check(RPCError):
                error = failure.value
                code, message = error.code, error.message
            else:
                log.failure("control method {method} failed", failure, method=method)
                code, message = INTERNAL_ERROR, f"Internal error: {failure.getErrorMessage()}"
            if notification:
                return None
            return _error(request_id, code, message)

        d.addCallbacks(answered, failed)
        d.addCallback(self._checked_json, request_id)
        return d

    def _checked_json(self, answer: Optional[dict[str, Any]], request_id: Any) -> Optional[dict[str, Any]]:
        if answer is None:
            return None
        try:
            json.dumps(answer)
        except (TypeError, ValueError) as e:
            log.error("a control method returned a result that is not JSON: {reason}", reason=str(e))
            return _error(request_id, INTERNAL_ERROR, "Internal error: result is not JSON")
        return answer

    # -- Kamailio's methods -------------------------------------------------------

    def list_nodes(self, *params: Any) -> list[dict[str, Any]]:
        """Print all nodes (Kamailio's order: newest first, the local node last)."""
        return [node_entry(node) for node in reversed(list(self.service.nodes))]

    def add(self, *params: Any) -> str:
        """Add a DMQ node: ``dmq.add URI`` (active unless the URI says ``;status=``)."""
        uri = _string_param(params, 0)
        try:
            if self.service.nodes.get(uri) is not None:
                raise RPCError(500, "Node is already added")
            self.service.add_node(uri)
        except (NodeListError, ValueError) as e:
            log.info("dmq.add {uri} refused: {reason}", uri=uri, reason=str(e))
            raise RPCError(500, _FAILURE) from None
        return "Ok. DMQ node added."

    def remove(self, *params: Any) -> str:
        """
        Remove a DMQ node: ``dmq.remove URI``.  Like Kamailio, the answer is
        the same whether or not such a node was listed (the local node stays).
        """
        uri = _string_param(params, 0)
        try:
            self.service.remove_node(uri)
        except NodeListError as e:
            log.info("dmq.remove {uri} refused: {reason}", uri=uri, reason=str(e))
            raise RPCError(500, _FAILURE) from None
        return "Ok. DMQ node removed."

    def change_status(self, *params: Any) -> str:
        """Change the status of a DMQ node: ``dmq.change_status URI active|not_active|disabled``."""
        if len(params) < 2:
            raise RPCError(500, _INVALID_PARAMETERS)
        uri = _string_param(params, 0)
        wanted = _string_param(params, 1)
        try:
            status = NodeStatus(wanted)
        except ValueError:
            raise RPCError(500, "Invalid Status - use: active, not_active, disabled") from None
        try:
            node = self.service.nodes.get(uri)
        except NodeListError:
            node = None
        if node is None:
            raise RPCError(500, "Node Not Found")
        if node.local:
            raise RPCError(500, "Node is local")
        if not self.service.set_node_status(node, status):
            return f"Ok. DMQ node status is already {wanted}."
        return "Ok. DMQ node status changed."

    # -- this node's own ---------------------------------------------------------------

    def _channel(self, value: Any) -> str:
        channel = _text(value, "channel")
        if not is_channel_name(channel):
            raise RPCError(400, f"Invalid Parameters (bad channel name {channel!r})")
        return channel

    def send_message(self, channel: Any, node: Any, body: Any, content_type: Any = "text/plain") -> "Deferred[dict[str, Any]]":
        """
        Send BODY on CHANNEL to one NODE (a URI): ``dmq.send_message CHANNEL
        NODE BODY [CONTENT_TYPE]``; the result is the node's final answer
        ``{"node", "code", "reason"}`` (408 when it did not answer).
        """
        name = self._channel(channel)
        text = _text(body, "body")
        ctype = _text(content_type, "content_type")
        target_uri = _text(node, "node")
        try:
            target = self.service.nodes.get(target_uri) or Node.from_uri(target_uri)
        except NodeListError as e:
            raise RPCError(400, f"Invalid Parameters (node: {e})") from None
        d: Deferred[Any] = self.service.send_message(name, text.encode("utf-8"), target, ctype or None)
        d.addCallback(lambda response: {"node": str(target.uri), "code": response.code, "reason": response.reason})
        return d

    def bcast_message(self, channel: Any, body: Any, content_type: Any = "text/plain") -> "Deferred[list[dict[str, Any]]]":
        """
        Send BODY on CHANNEL to every active node but this one:
        ``dmq.bcast_message CHANNEL BODY [CONTENT_TYPE]``; the result lists
        each node's final answer ``{"node", "code", "reason"}``.
        """
        name = self._channel(channel)
        text = _text(body, "body")
        ctype = _text(content_type, "content_type")
        d: Deferred[Any] = self.service.bcast_message(name, text.encode("utf-8"), ctype or None)
        d.addCallback(
            lambda results: [
                {"node": str(node.uri), "code": response.code, "reason": response.reason}
                for node, response in results
            ]
        )
        return d

    def stats(self) -> dict[str, Any]:
        """This node's counters: nodes by status, messages per channel, transactions, transport, ping RTTs."""
        return service_stats(self.service)

    def list_methods(self) -> list[str]:
        """The names of every method, sorted."""
        return sorted(self.methods())

    def method_help(self, name: Any) -> str:
        """The first line of a method's documentation."""
        method = self.methods().get(_text(name, "name"))
        if method is None:
            raise RPCError(METHOD_NOT_FOUND, "Method Not Found")
        doc = inspect.getdoc(method) or ""
        return " ".join(doc.split("\n\n", 1)[0].split())


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


def _dump(answer: Any) -> bytes:
    return json.dumps(answer).encode("utf-8")


class BearerToken:
    """
    The secret that guards the control endpoint, compared in constant time.

    A client shows it as ``Authorization: Bearer <token>``; where a browser
    must be able to open a page (the status page), also as ``?token=<token>``.

    :param value: the token.
    """

    def __init__(self, value: str) -> None:
        self.value = value
        self._expected = value.encode("utf-8")

    def in_header(self, request: Request) -> bool:
        """Whether ``request`` carries the token in its ``Authorization`` header."""
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._expected)

    def in_query(self, request: Request) -> bool:
        """Whether ``request`` carries the token as its one ``token`` query argument."""
        args: dict[bytes, list[bytes]] = request.args or {}
        given = args.get(b"token", [])
        return len(given) == 1 and hmac.compare_digest(given[0], self._expected)

    def refuse(self, request: Request) -> bytes:
        """Answer ``request`` 401 (and log it); the body to return."""
        log.info("rejected control request from {client}: bad or no token", client=str(request.getClientAddress()))
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="dmq"')
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"a bearer token is needed\n"


class RPCResource(Resource):
    """
    ``POST /RPC``: a JSON-RPC request in the body, the answer back as
    ``application/json`` (204 when it held only notifications).

    :param api: the :class:`ControlAPI` to answer with.
    :param token: when given (text or a :class:`BearerToken`), every
        request needs ``Authorization: Bearer <token>`` (else 401).
    :param max_body: requests above this many bytes get 413.
    """

    isLeaf = True

    def __init__(
        self, api: ControlAPI, token: Union[str, "BearerToken", None] = None, max_body: int = MAX_REQUEST_BYTES
    ) -> None:
        super().__init__()
        self.api = api
        self.token = BearerToken(token) if isinstance(token, str) else token
        self.max_body = max_body

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        """Only POST is served: 405."""
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"POST a JSON-RPC request\n"

    def render_POST(self, request: Request) -> Any:  # noqa: N802
        """Answer one JSON-RPC request body."""
        if self.token is not None and not self.token.in_header(request):
            return self.token.refuse(request)
        assert request.content is not None
        body = request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            request.setResponseCode(413)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"request too large\n"
        finished = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))
        d = self.api.handle(body)

        def write(answer: Optional[bytes]) -> None:
            if finished:
                return
            if answer is None:
                request.setResponseCode(204)
            else:
                request.setHeader(b"content-type", b"application/json")
                request.write(answer)
            request.finish()

        d.addCallback(write)
        d.addErrback(lambda f: log.failure("answering a control request failed", f))
        return NOT_DONE_YET


class _Root(Resource):
    """The site's root: its children, and 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> Resource:  # noqa: N802
        """Not found (an escaped page, unlike Resource's default)."""
        from twisted.web import pages

        return pages.notFound()  # type: ignore[return-value]


class _QuietSite(Site):
    """
    A Site that keeps HTTP access lines out of the log (scrapes and RPC
    calls are frequent), and runs ``services`` while it listens.
    """

    def __init__(self, resource: Resource, services: Iterable[Any] = ()) -> None:
        super().__init__(resource)
        self.services = list(services)

    def startFactory(self) -> None:  # noqa: N802
        """Start the services along with the first listening port."""
        super().startFactory()
        for service in self.services:
            service.startService()

    def stopFactory(self) -> None:  # noqa: N802
        """Stop the services along with the last listening port."""
        for service in self.services:
            service.stopService()
        super().stopFactory()

    def log(self, request: Any) -> None:
        """Log nothing per request."""


def make_site(
    api: Optional[ControlAPI] = None,
    token: Optional[str] = None,
    extra: Iterable[tuple[bytes, Resource]] = (),
) -> Site:
    """
    The HTTP site of a node: for ``api`` (when given) ``/RPC``, and the
    status page of its node at ``/`` and ``/status.json`` (:mod:`dmq.status`;
    its message rates are read while the site listens); then the ``extra``
    (path segment, resource) pairs, e.g. ``(b"metrics", ...)``.  The token
    guards ``/RPC`` and the status page, not the extras.
    """
    root = _Root()
    services = []
    if api is not None:
        from dmq.status import RateSampler, StatusResource

        guard = BearerToken(token) if token is not None else None
        root.putChild(b"RPC", RPCResource(api, guard))
        sampler = RateSampler(api.service)
        services.append(sampler)
        root.putChild(b"", StatusResource(api.service, sampler, guard))
        root.putChild(b"status.json", StatusResource(api.service, sampler, guard, as_json=True))
    for name, resource in extra:
        root.putChild(name, resource)
    site = _QuietSite(root, services)
    site.displayTracebacks = False
    return site
