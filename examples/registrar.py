"""
A SIP registrar whose bindings every node of a DMQ cluster shares.

Each registrar is a DMQ node (a :class:`dmq.DMQService`) that answers the SIP
requests other than ``KDMQ`` through the service's ``request_hook``:

- ``REGISTER`` (RFC 3261 section 10.3) adds, refreshes and removes bindings of
  an address of record (the To URI) to contacts, each with its expiry;
  ``Expires: 0`` (or ``;expires=0`` on a contact) removes one, ``Contact: *``
  with ``Expires: 0`` all of them.  A REGISTER without a Contact is a query:
  the answer lists the bindings and nothing changes.
- Each REGISTER that changed something is replicated to the other nodes with
  ``svc.replicate(request)``, unless it came from a node of the cluster
  (``svc.is_from_node(source)``): the way a Kamailio registrar script does it
  with ``dmq_is_from_node()`` and ``dmq_t_replicate()``.
- ``OPTIONS`` is answered 200, anything else 405.

Run two registrars, each on a loopback address of its own::

    python examples/registrar.py serve --address 127.0.0.2:5060 --show-bindings
    python examples/registrar.py serve --address 127.0.0.3:5060 --seed 127.0.0.2:5060 --show-bindings

register on one and look the user up on the other::

    python examples/registrar.py register --registrar 127.0.0.2:5060 sip:alice@example.com sip:alice@192.0.2.10:5070
    python examples/registrar.py lookup --registrar 127.0.0.3:5060 sip:alice@example.com

A registrar that joins later knows only the REGISTERs made after it joined
(Kamailio's ``dmq_usrloc`` adds a full sync on join; this example keeps to
replication).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from dmq import DMQService
from dmq.service import SERVER_NAME
from dmq.sip import SIPURI, NameAddr, Request, Response, SIPParseError, build_request, make_response, parse_message
from dmq.sip.transaction import Source

log = Logger()

DEFAULT_EXPIRES = 3600
"""Seconds a binding lives when the REGISTER names no expiry."""

MAX_EXPIRES = 2**32 - 1
"""The largest expiry RFC 3261 admits (delta-seconds)."""

ALLOW = "REGISTER, OPTIONS, KDMQ"


@dataclass
class Binding:
    """
    One contact of an address of record.

    :ivar contact: the contact URI, as the REGISTER wrote it.
    :ivar expires_at: when it lapses, on the service's clock.
    :ivar call_id: the Call-ID of the REGISTER that made it.
    :ivar cseq: that REGISTER's CSeq number.
    """

    contact: str
    expires_at: float
    call_id: str
    cseq: int


Change = tuple[str, str, Optional[int]]
"""``(aor, contact, seconds it lives, or None when removed)``, as passed to change listeners."""


class Registrar:
    """
    The bindings of one registrar node, and its answers to SIP requests.

    Hooks itself into ``service`` as its ``request_hook``.

    :param service: the DMQ node the registrar runs on.
    :ivar bindings: address of record -> contact -> :class:`Binding`.
    """

    def __init__(self, service: DMQService) -> None:
        self.service = service
        self.bindings: dict[str, dict[str, Binding]] = {}
        self._listeners: list[Callable[[Change], Any]] = []
        service.request_hook = self.handle_request

    def add_change_listener(self, listener: Callable[[Change], Any]) -> None:
        """Call ``listener((aor, contact, seconds or None))`` for each binding added, refreshed or removed."""
        self._listeners.append(listener)

    def lookup(self, aor: str) -> list[tuple[str, int]]:
        """
        The live bindings of ``aor``: ``(contact, seconds left)``, oldest first.

        :raises SIPParseError: when ``aor`` is not a SIP URI with a user part.
        """
        key = address_of_record(SIPURI.parse(aor))
        return self._live(key)

    def _live(self, aor: str) -> list[tuple[str, int]]:
        """The bindings of ``aor`` that have not lapsed (lapsed ones are dropped)."""
        now = self.service.clock.seconds()
        contacts = self.bindings.get(aor, {})
        for contact in [c for c, b in contacts.items() if b.expires_at <= now]:
            del contacts[contact]
        if not contacts:
            self.bindings.pop(aor, None)
        return [(b.contact, int(b.expires_at - now + 0.5)) for b in contacts.values()]

    # -- SIP -------------------------------------------------------------------------

    def handle_request(self, request: Request, source: Source) -> Response:
        """The service's ``request_hook``: REGISTER and OPTIONS; 405 for anything else."""
        if request.method == "REGISTER":
            return self.register(request, source)
        code = 200 if request.method == "OPTIONS" else 405
        return make_response(request, code, headers=[("Allow", ALLOW)], server=SERVER_NAME)

    def register(self, request: Request, source: Source) -> Response:
        """
        Apply a REGISTER and answer it with the bindings that are left; 400
        for a malformed one, 500 for one older than a binding it updates.
        Replicate it when it changed something and did not come from a node.
        """
        try:
            aor, updates = read_register(request)
        except SIPParseError as e:
            return make_response(request, 400, f"Bad Request ({e})", server=SERVER_NAME)
        call_id, cseq = request.call_id, request.cseq[0]
        now = self.service.clock.seconds()
        current = self.bindings.get(aor, {})
        star = updates == "*"
        if isinstance(updates, str):
            updates = [(contact, 0) for contact in current]
        for contact, _ in updates:
            known = current.get(contact)
            if known is not None and known.call_id == call_id and cseq <= known.cseq:
                return make_response(request, 500, "Server Internal Error (out of order REGISTER)", server=SERVER_NAME)
        changes: list[Change] = []
        for contact, expires in updates:
            if expires == 0:
                if current.pop(contact, None) is not None:
                    changes.append((aor, contact, None))
            else:
                current[contact] = Binding(contact, now + expires, call_id, cseq)
                changes.append((aor, contact, expires))
        if current:
            self.bindings[aor] = current
        else:
            self.bindings.pop(aor, None)
        if (updates or star) and not self.service.is_from_node(source):
            # The check above is the loop test, on the address the request came from rather
            # than on its top Via (which any client writes), so replicate's own is skipped.
            self.service.replicate(request, skip_loop_test=True)
        for change in changes:
            for listener in list(self._listeners):
                listener(change)
        contacts = [("Contact", f"<{contact}>;expires={left}") for contact, left in self._live(aor)]
        return make_response(request, 200, headers=contacts, server=SERVER_NAME)


def address_of_record(uri: Union[SIPURI, str]) -> str:
    """
    The canonical address of record of a To URI: ``scheme:user@host[:port]``,
    host in lower case, parameters dropped (RFC 3261 section 10.3, step 5).

    :raises SIPParseError: when ``uri`` is not a SIP URI with a user part.
    """
    if not isinstance(uri, SIPURI):
        raise SIPParseError(f"not a SIP URI: {uri}")
    if not uri.user:
        raise SIPParseError(f"no user part in {uri}")
    return str(SIPURI(uri.host.lower(), uri.port, user=uri.user, scheme=uri.scheme))


def read_register(request: Request) -> tuple[str, Union[list[tuple[str, int]], str]]:
    """
    The address of record of a REGISTER and what it asks for: a list of
    ``(contact, expires)`` (empty for a query), or ``"*"`` to remove every
    binding.

    :raises SIPParseError: naming what is wrong.
    """
    aor = address_of_record(request.to.uri)
    header = request.headers.get("Expires")
    default = _expires(header, "Expires") if header is not None else DEFAULT_EXPIRES
    values = [v for line in request.headers.getall("Contact") for v in split_list(line)]
    if values == ["*"]:
        if default != 0:
            raise SIPParseError("Contact * needs Expires: 0")
        return aor, "*"
    updates = []
    for value in values:
        if value == "*":
            raise SIPParseError("Contact * must stand alone")
        contact = NameAddr.parse(value, "Contact")
        param = contact.params.get("expires")
        expires = _expires(param, "Contact expires") if param is not None else default
        updates.append((str(contact.uri), expires))
    return aor, updates


def _expires(text: str, where: str) -> int:
    """A delta-seconds value; SIPParseError naming ``where`` when it is none."""
    if not text.strip().isdigit() or int(text) > MAX_EXPIRES:
        raise SIPParseError(f"bad {where} value {text!r}")
    return int(text)


def split_list(value: str) -> list[str]:
    """Split a header value at the commas that separate its entries (not those in quotes or ``<...>``)."""
    parts, start, quoted, bracketed = [], 0, False, False
    for i, char in enumerate(value):
        if char == '"' and not bracketed:
            quoted = not quoted
        elif char == "<" and not quoted:
            bracketed = True
        elif char == ">" and not quoted:
            bracketed = False
        elif char == "," and not quoted and not bracketed:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p.strip(" \t") for p in parts if p.strip(" \t")]


# -- a one-shot SIP client, for the register and lookup commands ------------------------


class _FinalResponse(DatagramProtocol):
    """Fires :attr:`answer` with the first final response that arrives."""

    def __init__(self) -> None:
        self.answer: Deferred[Response] = Deferred()

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        """Keep the first final response; ignore anything else."""
        try:
            message = parse_message(data)
        except SIPParseError:
            return
        if isinstance(message, Response) and message.code >= 200 and not self.answer.called:
            self.answer.callback(message)


async def send_register(
    reactor: Any,
    registrar: tuple[str, int],
    aor: str,
    contacts: list[str],
    expires: Optional[int],
    bind: str = "127.0.0.1",
    timeout: float = 5.0,
) -> Response:
    """
    Send one REGISTER for ``aor`` to ``registrar`` (host, port) from an
    ephemeral UDP port on ``bind`` and return the final response (no
    retransmissions: this is for loopback).  No contacts: a query.
    """
    protocol = _FinalResponse()
    port = reactor.listenUDP(0, protocol, interface=bind)
    try:
        local = port.getHost()
        headers = [("Contact", contact if contact == "*" else f"<{contact}>") for contact in contacts]
        if expires is not None:
            headers.append(("Expires", str(expires)))
        uri = SIPURI.parse(aor)
        request = build_request(
            "REGISTER",
            SIPURI(registrar[0], registrar[1]),
            from_uri=uri,
            to_uri=uri,
            via_transport="udp",
            via_sent_by=f"{local.host}:{local.port}",
            headers=headers,
            user_agent="registrar.py",
        )
        port.write(request.to_bytes(), registrar)
        protocol.answer.addTimeout(timeout, reactor)
        return await protocol.answer
    finally:
        await defer.maybeDeferred(port.stopListening)


# -- the command line -----------------------------------------------------------------


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; argparse reports a bad one."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line: ``serve``, ``register`` or ``lookup``."""
    parser = argparse.ArgumentParser(description="A SIP registrar whose bindings a DMQ cluster shares.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a registrar node")
    serve.add_argument("--address", type=host_port, required=True, help="HOST:PORT for SIP and DMQ (UDP)")
    serve.add_argument("--seed", type=host_port, action="append", default=[], help="a node to join through")
    serve.add_argument("--ping-interval", type=int, default=10)
    serve.add_argument("--control", help="endpoint of the JSON-RPC control API, e.g. tcp:8070:interface=127.0.0.2")
    serve.add_argument("--show-bindings", action="store_true", help="print each binding added or removed")
    for name, text in (("register", "register a contact (Expires 0 removes it)"), ("lookup", "print a user's bindings")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--registrar", type=host_port, required=True, help="HOST:PORT of a registrar")
        command.add_argument("--bind", default="127.0.0.1", help="the address to send from")
        command.add_argument("aor", help="the address of record, e.g. sip:alice@example.com")
        if name == "register":
            command.add_argument("contact", help="the contact URI, or * (with --expires 0) for all")
            command.add_argument("--expires", type=int, help="seconds (the registrar's default: 3600)")
    return parser.parse_args(argv)


async def serve(reactor: Any, args: argparse.Namespace) -> None:
    """Run a registrar node until the process is stopped."""
    host, port = args.address
    svc = DMQService(f"sip:{host}:{port}", [f"sip:{h}:{p}" for h, p in args.seed],
                     ping_interval=args.ping_interval, reactor=reactor)
    registrar = Registrar(svc)
    if args.show_bindings:
        registrar.add_change_listener(_print_change)
    svc.add_event_listener(lambda event: print(f"{event.kind.value}: {event.node.uri}", flush=True))
    if args.control:
        from twisted.application.strports import service as endpoint_service

        from dmq.control import ControlAPI, make_site

        endpoint_service(args.control, make_site(ControlAPI(svc))).setServiceParent(svc)
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    await svc.when_listening()
    print(f"registrar listening on {host}:{port}", flush=True)
    await Deferred()  # until the process is stopped


def _print_change(change: Change) -> None:
    """Print one binding change: ``AOR: + CONTACT (SECONDS s)`` or ``AOR: - CONTACT``."""
    aor, contact, expires = change
    print(f"{aor}: {'-' if expires is None else '+'} {contact}" + ("" if expires is None else f" ({expires} s)"),
          flush=True)


async def client(reactor: Any, args: argparse.Namespace) -> None:
    """Send a REGISTER (``register``) or a query (``lookup``) and print the bindings the answer lists."""
    contacts = [] if args.command == "lookup" else [args.contact]
    expires = getattr(args, "expires", None)
    if contacts == ["*"] and expires != 0:
        raise SystemExit("registrar.py: contact * needs --expires 0")
    try:
        response = await send_register(reactor, args.registrar, args.aor, contacts, expires, args.bind)
    except SIPParseError as e:
        raise SystemExit(f"registrar.py: {e}") from None
    if response.code != 200:
        raise SystemExit(f"registrar.py: {response.code} {response.reason}")
    listed = response.headers.getall("Contact")
    for value in listed:
        print(value)
    if not listed:
        print(f"{args.aor}: no bindings")


def main(argv: list[str]) -> None:
    """Run the command under the reactor."""
    args = parse(argv)
    run = serve if args.command == "serve" else client
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main(sys.argv[1:])
