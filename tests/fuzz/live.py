"""A live dmq node for the hardening tests, and the member that talks to it.

:class:`LiveNode` runs ``twistd -n dmq`` as a subprocess on a loopback address of its own
(:func:`tests.helpers.free_address`), with the htable, usrloc and dialog peers on and a
control endpoint for its counters. Its one seed is a :class:`Member`: a UDP socket on
another address of its own, so that everything the member sends comes from a node of the
list (trusted, not rate-limited) and reaches the peers. The member answers every request
the node sends it with an empty 200 (joins, pings, sync answers), so it stays active.

Replies are told apart by the socket they come back to (UDP answers go back to the
source address), and checked with :func:`reply_fault`, which reads them with the
harness's own plain parser (:func:`tests.interop.kamailio.parse_sip`) and with dmq's codec.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from ..helpers import free_address, free_port, stop_process, wait_until
from ..interop.kamailio import kdmq_request, parse_sip, sip_response

TWISTD = str(Path(sys.executable).with_name("twistd"))

CHANNELS = ("notification_peer", "htable", "usrloc", "dialog")


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class Member:
    """
    A DMQ member made of UDP sockets on one loopback host of its own.

    ``sock`` (the first socket) is the member's node address, the seed the node joins
    through; ``sockets`` more are ephemeral ports of the same host for sending many
    requests at once (a reply comes back to the socket its request left from).
    """

    def __init__(self, extra_sockets: int = 0, host: Optional[str] = None) -> None:
        address = free_address("udp") if host is None else (host, 0)
        self.sock = self._bind(address)
        self.host, self.port = self.sock.getsockname()
        self.sockets = [self._bind((self.host, 0)) for _ in range(extra_sockets)]
        self.requests_answered = 0

    @staticmethod
    def _bind(address: tuple[str, int]) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(address)
        sock.setblocking(False)
        return sock

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    def all_sockets(self) -> list[socket.socket]:
        return [self.sock, *self.sockets]

    def read(self, sock: socket.socket) -> list[bytes]:
        """Every datagram waiting on ``sock``; requests are answered 200 at once and not returned."""
        replies = []
        while True:
            try:
                data, source = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return replies
            except ConnectionRefusedError:
                continue
            if data.startswith(b"SIP/"):
                replies.append(data)
            elif data.strip(b"\r\n"):
                self.requests_answered += 1
                sock.sendto(sip_response(data), source)

    def serve(self, timeout: float) -> None:
        """Answer the node's requests to the member's address for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0]:
                self.read(self.sock)

    def exchange(self, data: bytes, target: tuple[str, int], timeout: float = 2.0,
                 sock: Optional[socket.socket] = None) -> Optional[bytes]:
        """Send ``data`` to ``target`` and return the first final reply to reach the socket, or None."""
        sock = sock or self.sock
        sock.sendto(data, target)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                for reply in self.read(sock):
                    if not reply.startswith(b"SIP/2.0 1"):
                        return reply
        return None

    def ping(self, node: "LiveNode", timeout: float = 2.0) -> Optional[float]:
        """A node-list query from this member's own address (a member's ping); its round trip in s, or None."""
        request = kdmq_request("notification_peer", node.address, (self.host, self.port),
                               f"{self.uri};status=active\r\n".encode())
        call_id = parse_sip(request)[1]["call-id"]
        started = time.monotonic()
        self.sock.sendto(request, node.address)
        deadline = started + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0]:
                for reply in self.read(self.sock):
                    first, headers, _ = parse_sip(reply)
                    if headers.get("call-id") == call_id and first.startswith("SIP/2.0 200"):
                        return time.monotonic() - started
        return None

    def close(self) -> None:
        for sock in self.all_sockets():
            sock.close()

    def __enter__(self) -> "Member":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LiveNode:
    """
    ``twistd -n dmq`` on a loopback address of its own, seeded with ``member``, peers
    htable (table ``t``), usrloc and dialog on, control API on a free port.
    """

    def __init__(self, member: Member, workdir: Path, *extra: str) -> None:
        self.host, self.port = free_address("udp")
        self.control = free_port("tcp")
        self.member = member
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # The log goes to a file: a pipe nobody reads would stop the node once it is full.
        self.log_path = workdir / "twistd.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", f"sip:{self.host}:{self.port}",
             "--notification-address", member.uri, "--ping-interval", "5", "--htable", "t", "--usrloc",
             "--dialog", "--control", f"tcp:{self.control}:interface=127.0.0.1", *extra],
            cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._joined, timeout=20, interval=0.05)
        except BaseException:
            self.stop()
            raise

    def _joined(self) -> bool:
        assert self.process.poll() is None, f"twistd dmq exited: {self.log_tail()}"
        self.member.serve(0.05)
        try:
            nodes = self.rpc("dmq.list_nodes")
        except OSError:
            return False
        return any(n["host"] == self.member.host and n["status"] == "active" for n in nodes)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.process.pid)

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call to the node's control endpoint; its result."""
        call = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.control}/RPC", data=call,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            decoded = json.loads(answer.read())
        if "error" in decoded:
            raise RuntimeError(f"{method}: {decoded['error']}")
        return decoded["result"]

    def log_tail(self, size: int = 3000) -> str:
        """The end of the node's log."""
        return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")

    def stop(self) -> str:
        """Stop the process; the end of its log."""
        stop_process(self.process)
        self._log.close()
        return self.log_tail()


_TOKEN = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+")


def framing_fault(reply: bytes) -> Optional[str]:
    """Why ``reply`` is not a well-framed SIP/2.0 response (None when it is), read without dmq's codec."""
    head, blank, body = reply.partition(b"\r\n\r\n")
    if not blank:
        return "no blank line after the headers"
    lines = head.split(b"\r\n")
    if not re.fullmatch(rb"SIP/2\.0 [1-6][0-9][0-9] [^\r\n\x00]*", lines[0]):
        return f"bad status line {lines[0][:80]!r}"
    lengths = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name.strip()) or b"\r" in value or b"\n" in value:
            return f"bad header line {line[:80]!r}"
        if name.strip().lower() in (b"content-length", b"l"):
            lengths.append(value.strip())
    if lengths != [str(len(body)).encode()]:
        return f"Content-Length {lengths} for a body of {len(body)} bytes"
    return None


def reply_fault(request: bytes, reply: bytes) -> Optional[str]:
    """
    Why ``reply`` is no right answer to ``request`` (None when it is).

    The reply must be a well-framed final SIP/2.0 response (:func:`framing_fault`).
    When dmq's codec reads the request (every header it knows, ``strict``), it must read the
    reply as well, and the reply must carry the request's Call-ID, CSeq and top Via
    branch. When it does not, the reply must carry the code of the request's fault
    (400, 413, 505...) and the request's own Call-ID and CSeq text, if any.
    """
    from dmq.sip import Request, Response, SIPParseError, parse_message

    fault = framing_fault(reply)
    if fault is not None:
        return fault
    lines = reply.partition(b"\r\n\r\n")[0].split(b"\r\n")
    code = int(lines[0].split(b" ")[1])
    if code < 200:
        return f"a provisional reply {lines[0]!r}"
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines[1:])}
    try:
        sent = parse_message(request, strict=True)
        if not isinstance(sent, Request):
            return "a reply to a message that is no request"
        wanted = (sent.call_id, sent.cseq, sent.vias[0].branch)
    except SIPParseError as e:
        # With two faults, the node may find another first (a 404 for the channel before a
        # bad Content-Type): any 4xx answers a 400; 413 and 505 must be exact.
        if code != e.code and not (e.code == 400 and 400 <= code < 500):
            return f"{code} to a request whose fault is a {e.code} ({e})"
        for name in (b"call-id", b"i", b"cseq"):
            if headers.get(name) and headers[name] not in request:
                return f"{name} {headers[name]!r} is not the request's"
        return None
    try:
        answer = parse_message(reply)
        assert isinstance(answer, Response)
        got = (answer.call_id, answer.cseq, answer.vias[0].branch)
    except (SIPParseError, AssertionError, IndexError) as e:
        return f"the reply does not parse: {e}"
    if got != wanted:
        return f"reply {got} does not match request {wanted}"
    return None
