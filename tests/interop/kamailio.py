"""Run real Kamailio DMQ nodes (Debian's 5.6 and a 6.1 build) from tests.

The helpers here start throw-away Kamailio processes on loopback, each on a loopback
address of its own (127.x.y.z, from :func:`tests.helpers.free_address`) with its own
config, port, control sockets and log file, and talk to them the way a test needs:
JSON-RPC over the ``jsonrpcs`` datagram socket (or its FIFO for large answers), raw
SIP over UDP, and a KDMQ liveness probe. :func:`find_builds` says which Kamailio builds
the tests run against.

Nothing here depends on the ``dmq`` package under test: the SIP messages are built
by hand, so the harness stays an independent witness of what goes over the wire.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from ..helpers import free_address, free_port, probe_host, wait_until

__all__ = [
    "DEFAULT_TABLES",
    "KamailioBuild",
    "KamailioError",
    "KamailioNode",
    "KamailioRPCError",
    "NodeFactory",
    "RawMember",
    "build_sip_message",
    "default_build",
    "eventually",
    "find_builds",
    "find_kamailio",
    "free_address",
    "free_port",
    "group_processes",
    "kdmq_request",
    "liveness_probe",
    "parse_sip",
    "send_sip",
    "sip_response",
    "wait_until",
]

T = TypeVar("T")

#: htable definition used when a node is given no ``tables``.
DEFAULT_TABLES: tuple[str, ...] = ("t=>size=8;dmqreplicate=1;",)

#: Folders where Debian and source builds put Kamailio's modules.
MODULE_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)

#: Where Debian's package puts the binary (then ``PATH`` is searched).
SYSTEM_BINARIES: tuple[str, ...] = ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio")

#: The project's root folder (this file is ``tests/interop/kamailio.py``).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: The Kamailio 6.1 build used when ``$KAMAILIO6_DIR`` is not set, relative to the project root.
DEFAULT_KAMAILIO6_DIR = Path("..", "shared", "kamailio-6.1.4")

#: Modules every node loads, in load order.
BASE_MODULES: tuple[str, ...] = (
    "kex",
    "corex",
    "tm",
    "sl",
    "pv",
    "maxfwd",
    "textops",
    "ctl",
    "jsonrpcs",
    "dmq",
    "htable",
)

_PR_SET_CHILD_SUBREAPER = 36

# Unix socket paths are limited to 108 bytes; keep ours well below.
_MAX_SOCKET_DIR_LEN = 80

_rpc_ids = itertools.count(1)

_VERSION_LINE = re.compile(r"version:\s*kamailio\s+(\d+(?:\.\d+)+)", re.IGNORECASE)


class KamailioError(RuntimeError):
    """A Kamailio node failed to start, stop or answer."""


class KamailioRPCError(KamailioError):
    """A JSON-RPC call was answered with an ``error`` object."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        """Record the failed ``method`` and the error's ``code`` and ``message``."""
        super().__init__(f"RPC {method} failed: {code} {message}")
        self.method = method
        self.code = code
        self.message = message


@dataclass(frozen=True)
class KamailioBuild:
    """One Kamailio build the tests run against: binary, module folder, kamcmd and version.

    A build that cannot be used carries the reason in ``missing`` (its binary, module
    folder or version may then be unknown). ``label`` is the version text (``"6.1.4"``)
    when known, else a short name of what was looked for.
    """

    name: str
    label: str
    binary: str = ""
    module_dir: str = ""
    kamcmd: str = ""
    version: tuple[int, ...] = ()
    missing: str | None = None

    @property
    def id(self) -> str:
        """The build in test ids: ``kamailio-5.6.3``."""
        return f"kamailio-{self.label}"

    def __str__(self) -> str:
        """Name, version and where it is."""
        if self.missing:
            return f"{self.name}: {self.missing}"
        return f"Kamailio {self.label} ({self.binary}, modules in {self.module_dir})"


def read_version(binary: str) -> tuple[int, ...]:
    """The version ``binary -v`` prints on its first line (``version: kamailio 6.1.4 (x86_64/linux)``).

    Raises KamailioError when it cannot be run or says something else.
    """
    try:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KamailioError(f"cannot run {binary} -v: {exc}") from exc
    first = (done.stdout or done.stderr).strip().splitlines()[:1]
    found = _VERSION_LINE.match(first[0].strip()) if first else None
    if found is None:
        raise KamailioError(f"{binary} -v printed no version line: {first!r}")
    return tuple(int(part) for part in found.group(1).split("."))


def probe_build(name: str, label: str, binary: str | None, module_dir: str | None,
                missing_binary: str | None = None) -> KamailioBuild:
    """Describe the build of ``binary`` with modules in ``module_dir``, or why it cannot be used."""
    if not binary or not os.access(binary, os.X_OK):
        reason = missing_binary or f"{binary or 'kamailio'} is not an executable file"
        return KamailioBuild(name, label, binary or "", module_dir or "", missing=reason)
    if not module_dir or not os.path.exists(os.path.join(module_dir, "dmq.so")):
        reason = f"no dmq.so in the module folder {module_dir}" if module_dir else "no Kamailio module folder with dmq.so"
        return KamailioBuild(name, label, binary, module_dir or "", missing=reason)
    try:
        version = read_version(binary)
    except KamailioError as exc:
        return KamailioBuild(name, label, binary, module_dir, missing=str(exc))
    beside = Path(binary).with_name("kamcmd")
    kamcmd = str(beside) if os.access(beside, os.X_OK) else (shutil.which("kamcmd") or "kamcmd")
    return KamailioBuild(name, ".".join(map(str, version)), binary, module_dir, kamcmd, version)


def _system_module_dir() -> str | None:
    """The first of :data:`MODULE_DIRS` that holds ``dmq.so``, or None."""
    return next((d for d in MODULE_DIRS if os.path.exists(os.path.join(d, "dmq.so"))), None)


def _system_kamailio() -> str | None:
    """Debian's ``kamailio`` binary (``/usr/sbin``, then ``PATH``), or None."""
    return next((p for p in SYSTEM_BINARIES if os.access(p, os.X_OK)), None) or shutil.which("kamailio")


def find_builds(environ: Mapping[str, str] = os.environ, root: Path = PROJECT_ROOT) -> list[KamailioBuild]:
    """The Kamailio builds to test against, found ones and missing ones alike.

    With ``$KAMAILIO`` set, only that binary, with its modules in ``$KAMAILIO_MPATH``, else in
    a ``modules`` folder beside its ``sbin`` folder, else in Debian's folder. Otherwise
    Debian's system ``kamailio`` and the 6.1 build in ``$KAMAILIO6_DIR`` (default
    ``../shared/kamailio-6.1.4`` from the project root: ``sbin/kamailio`` and ``modules``).
    """
    configured = environ.get("KAMAILIO")
    if configured:
        beside = Path(configured).resolve().parent.parent / "modules"
        module_dir = environ.get("KAMAILIO_MPATH") or (str(beside) if beside.is_dir() else _system_module_dir())
        return [probe_build("$KAMAILIO", "configured", configured, module_dir)]
    builds = [probe_build("Debian's kamailio", "debian", _system_kamailio(), _system_module_dir(),
                          "kamailio binary not found (apt-get install kamailio)")]
    folder = Path(environ.get("KAMAILIO6_DIR") or root / DEFAULT_KAMAILIO6_DIR).resolve()
    label = folder.name.removeprefix("kamailio-")
    if folder.is_dir():
        builds.append(probe_build("the Kamailio 6.1 build", label, str(folder / "sbin" / "kamailio"),
                                  str(folder / "modules")))
    else:
        builds.append(KamailioBuild("the Kamailio 6.1 build", label,
                                    missing=f"no Kamailio 6.1 build folder {folder} (set KAMAILIO6_DIR)"))
    return builds


def default_build() -> KamailioBuild:
    """The first usable build :func:`find_builds` finds (``$KAMAILIO``'s, else Debian's); KamailioError if none."""
    builds = find_builds()
    for build in builds:
        if not build.missing:
            return build
    raise KamailioError("no usable Kamailio: " + "; ".join(str(b) for b in builds))


def find_kamailio() -> str | None:
    """Return the path of the ``kamailio`` binary (``$KAMAILIO`` or Debian's), or None."""
    configured = os.environ.get("KAMAILIO")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return _system_kamailio()


def group_processes(pgid: int, include_zombies: bool = False) -> list[int]:
    """Return the pids of processes in process group ``pgid``, read from /proc.

    Zombies (exited, not yet reaped) are left out unless ``include_zombies`` is true.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold anything.
        fields = raw[raw.rfind(b")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and (include_zombies or state not in (b"Z", b"X")):
            found.append(int(entry))
    return found


_subreaper_lock = threading.Lock()
_subreaper_set = False


def _become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    When a node's main process is SIGKILLed its children are orphaned; where PID 1 does not
    reap (as in some containers and VMs) they would stay as zombies for good. As a
    subreaper this process inherits them and :meth:`KamailioNode.kill` reaps them.
    """
    global _subreaper_set
    with _subreaper_lock:
        if _subreaper_set:
            return
        _subreaper_set = True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _reap_orphans(pgid: int) -> None:
    """Reap exited members of process group ``pgid`` that were re-parented to this process."""
    for pid in group_processes(pgid, include_zombies=True):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _kill_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid`` if any of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _new_token() -> str:
    """Return a random hex token for tags, branches and Call-IDs."""
    return secrets.token_hex(8)


def build_sip_message(
    method: str,
    uri: str,
    *,
    local: tuple[str, int],
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    to_uri: str | None = None,
    from_uri: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    max_forwards: int = 70,
) -> bytes:
    """Build a SIP request over UDP from ``local`` (host, port) with a fresh branch, tag and Call-ID.

    The Via carries ``rport`` so the answer comes back to the sending socket. ``headers``
    are added after the standard ones; Content-Length is always computed.
    """
    host, port = local
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{_new_token()};rport",
        f"From: <{from_uri or f'sip:harness@{host}:{port}'}>;tag={_new_token()}",
        f"To: <{to_uri or uri}>",
        f"Call-ID: {call_id or _new_token()}@{host}",
        f"CSeq: {cseq} {method}",
        f"Max-Forwards: {max_forwards}",
    ]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def kdmq_request(
    channel: str,
    target: tuple[str, int],
    local: tuple[str, int],
    body: bytes = b"",
    *,
    max_forwards: int = 1,
    content_type: str = "text/plain",
) -> bytes:
    """Build a KDMQ request on ``channel`` to ``target`` as sent by a node at ``local``.

    Request-URI and To are ``sip:<channel>@target``, From is ``sip:<channel>@local``: the
    From host and port are what Kamailio uses to recognise the sending node.
    """
    thost, tport = target
    lhost, lport = local
    return build_sip_message(
        "KDMQ",
        f"sip:{channel}@{thost}:{tport}",
        local=local,
        body=body,
        from_uri=f"sip:{channel}@{lhost}:{lport}",
        cseq=10,
        max_forwards=max_forwards,
        headers={"Content-Type": content_type},
    )


def parse_sip(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Split a SIP message into its first line, headers (lower-case names, last wins) and body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def sip_response(request: bytes, code: int = 200, reason: str = "OK", body: bytes = b"",
                 content_type: str | None = None) -> bytes:
    """Build a stateless response to ``request`` (Via, From, To with a tag, Call-ID, CSeq copied)."""
    head = request.partition(b"\r\n\r\n")[0].decode("utf-8", "replace").split("\r\n")[1:]
    kept = []
    for line in head:
        name = line.partition(":")[0].strip().lower()
        if name in ("via", "v", "from", "f", "call-id", "i", "cseq"):
            kept.append(line)
        elif name in ("to", "t"):
            kept.append(line if ";tag=" in line else f"{line};tag={_new_token()}")
    if content_type is not None:
        kept.append(f"Content-Type: {content_type}")
    kept.append(f"Content-Length: {len(body)}")
    return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(kept) + "\r\n\r\n").encode() + body


def _loopback_socket(host: str, port: int) -> socket.socket:
    """Return a UDP socket on an ephemeral port, connected to (``host``, ``port``).

    For a loopback target the socket is bound to this process's probe host
    (:func:`tests.helpers.probe_host`, a 127.x.y.z that no node has), so answers come back
    to it whichever 127.x address the target listens on.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((probe_host() if host.startswith("127.") else "0.0.0.0", 0))
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def send_sip(host: str, port: int, data: bytes, timeout: float = 2.0) -> bytes:
    """Send ``data`` over UDP from a fresh socket and return the first final response's bytes.

    Provisional (1xx) responses are skipped. ``data`` should carry ``rport`` in its Via (as
    :func:`build_sip_message` does) or name the socket's own address. Raises TimeoutError
    when no final response arrives within ``timeout`` seconds.
    """
    with _loopback_socket(host, port) as sock:
        sock.send(data)
        return _final_response(sock, timeout)


def _final_response(sock: socket.socket, timeout: float) -> bytes:
    """Wait on connected UDP ``sock`` for a final (non-1xx) SIP response; TimeoutError if none."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no SIP response from {sock.getpeername()} within {timeout}s")
        sock.settimeout(left)
        try:
            answer = sock.recv(65535)
        except socket.timeout:
            continue
        except ConnectionRefusedError as exc:
            raise TimeoutError(f"nothing listens on udp {sock.getpeername()}") from exc
        if not answer.startswith(b"SIP/2.0 1"):
            return answer


def liveness_probe(host: str, port: int, timeout: float = 1.0, channel: str = "notification_peer") -> bool:
    """Tell whether a DMQ node answers a fresh node-list query with ``SIP/2.0 200`` within ``timeout``.

    The probe is a hand-built KDMQ on the node-list channel with an empty body (a read-only
    query: neither Kamailio 5.6.3 nor 6.1.4 adds the probe's address or changes any status),
    Max-Forwards 1, From ``sip:<channel>@<probe socket address>``, new Call-ID and branch. It
    exercises the node-list lock that a bad node-list line leaves held in Kamailio 5.6.3.

    Side effect: any node-list request, this one too, marks Kamailio's "first node list
    received" flag and so runs its init callbacks (htable's sync-on-join) if they have not run
    yet. Probe a node only after it has joined, or its join-time sync may be skipped.
    """
    try:
        sock = _loopback_socket(host, port)
    except OSError:
        return False
    with sock:
        local = sock.getsockname()
        request = kdmq_request(channel, (host, port), (local[0], local[1]))
        call_id = parse_sip(request)[1]["call-id"]
        try:
            sock.send(request)
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            try:
                answer = sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return False
            first, headers, _ = parse_sip(answer)
            if headers.get("call-id") != call_id or first.startswith("SIP/2.0 1"):
                continue
            return first.startswith("SIP/2.0 200")


class SupportsCallLater(Protocol):
    """What :func:`eventually` needs of a reactor: ``IReactorTime``'s ``seconds`` and ``callLater``."""

    def seconds(self) -> float:
        """Return the current time in seconds."""
        ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Call ``callable`` after ``delay`` seconds."""
        ...


def eventually(
    predicate: Callable[[], T],
    timeout: float = 2.0,
    interval: float = 0.05,
    reactor: SupportsCallLater | None = None,
) -> "Deferred[T]":
    """Poll ``predicate`` on the reactor until it returns a truthy value; fire with that value.

    ``predicate`` is a zero-argument callable run in the reactor thread (blocking RPCs are
    fine: they are short). The Deferred errbacks with an AssertionError naming the last value
    once ``timeout`` seconds pass; an exception from ``predicate`` errbacks it at once.
    ``reactor`` defaults to the global reactor; a ``twisted.internet.task.Clock`` works too.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        clock = cast(SupportsCallLater, global_reactor)
    else:
        clock = reactor

    async def poll() -> T:
        """Run the polling loop."""
        deadline = clock.seconds() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if clock.seconds() >= deadline:
                raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
            await deferLater(cast(IReactorTime, clock), interval, lambda: None)

    return Deferred.fromCoroutine(poll())


def _modparam_value(value: str | int) -> str:
    """Render a modparam value: ints bare, strings quoted."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


class KamailioNode:
    """One Kamailio process with the dmq and htable modules, listening on ``host`` (loopback).

    ``build`` (default: :func:`default_build`) says which Kamailio runs. The node's config,
    runtime folder, control sockets and log live in ``directory`` (control sockets go to a
    short folder under the system temp dir when ``directory``'s path is too long for a unix
    socket). Its script answers KDMQ with ``dmq_handle_message()``; a SIP MESSAGE to user
    ``bcast`` broadcasts the body on script channel ``custom1``; a MESSAGE to user ``send``
    sends the body on ``custom1`` to the node named by its ``X-Node`` header (a URI as listed
    by ``dmq.list_nodes``); anything else gets ``404 Not here``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        port: int,
        seeds: Sequence["str | KamailioNode"] = (),
        *,
        host: str = "127.0.0.1",
        build: KamailioBuild | None = None,
        ping_interval: int = 5,
        fr_timer_ms: int = 3000,
        tables: Sequence[str] = DEFAULT_TABLES,
        transports: Sequence[str] = ("udp",),
        extra_modparams: Iterable[tuple[str, str, str | int]] = (),
        extra_modules: Sequence[str] = (),
        routes: str = "",
        enable_dmq: bool = True,
        dmq_init_sync: bool = True,
        shm_mb: int = 256,
        debug: int = 2,
        children: int = 2,
        startup_timeout: float = 10.0,
    ) -> None:
        """Describe a node on ``host``:``port``; nothing runs until :meth:`start`.

        Give every node of a cluster its own ``host`` (:func:`tests.helpers.free_address`):
        from 5.8 on, Kamailio tells nodes of a received node list apart by IP alone.
        ``seeds`` are ``sip:HOST:PORT`` URIs (or nodes) written as ``notification_address``;
        ``tables`` are htable definitions (``name=>size=8;dmqreplicate=1;``); ``transports``
        is any of ``"udp"`` and ``"tcp"``, both on ``port``; ``extra_modparams`` are
        ``(module, param, value)`` triples appended after the others; ``extra_modules``
        are loaded after the base modules, in order (``"usrloc"``, ``"registrar"``, ...);
        ``routes`` is config text run in ``request_route`` for anything that is not a KDMQ,
        before the script's own MESSAGE handling (``exit`` there to answer yourself), and may
        be followed by more route blocks after a line ``#!ROUTES``.
        """
        unknown = set(transports) - {"udp", "tcp"}
        if unknown or not transports:
            raise ValueError(f"transports must be udp and/or tcp, not {tuple(transports)!r}")
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.build = build or default_build()
        if self.build.missing:
            raise KamailioError(str(self.build))
        self.seeds = [seed.uri if isinstance(seed, KamailioNode) else seed for seed in seeds]
        self.ping_interval = ping_interval
        self.fr_timer_ms = fr_timer_ms
        self.tables = list(tables)
        self.transports = tuple(transports)
        self.extra_modparams = list(extra_modparams)
        self.extra_modules = tuple(extra_modules)
        self.routes = routes
        self.enable_dmq = enable_dmq
        self.dmq_init_sync = dmq_init_sync
        self.shm_mb = shm_mb
        self.debug = debug
        self.children = children
        self.startup_timeout = startup_timeout
        self.binary = self.build.binary
        self.config_path = self.directory / "node.cfg"
        self.log_path = self.directory / "kamailio.log"
        self.run_dir = self.directory / "run"
        self.socket_dir = self._pick_socket_dir()
        self.ctl_socket = self.socket_dir / "node.ctl"
        self.rpc_socket = self.socket_dir / "node.jsock"
        self.rpc_fifo = self.socket_dir / "node.fifo"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._pgid: int | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None

    def _pick_socket_dir(self) -> Path:
        """Return the folder for unix sockets: ``directory`` or, if its path is too long, a temp one."""
        if len(str(self.directory)) <= _MAX_SOCKET_DIR_LEN:
            return self.directory
        short = Path(tempfile.mkdtemp(prefix="kam-"))
        weakref.finalize(self, shutil.rmtree, str(short), True)
        return short

    # ----------------------------------------------------------------- identity

    @property
    def version(self) -> tuple[int, ...]:
        """The Kamailio version the node runs, as in ``(6, 1, 4)``."""
        return self.build.version

    @property
    def uri(self) -> str:
        """The node's DMQ address, ``sip:HOST:PORT`` (its ``server_address``)."""
        return f"sip:{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """The node's SIP (host, port)."""
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        """Pid of the main Kamailio process while started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the main Kamailio process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        """Show the node's URI and pid."""
        return f"<KamailioNode {self.uri} pid={self.pid}>"

    # ------------------------------------------------------------------- config

    def config_text(self) -> str:
        """Return the Kamailio config this node runs with."""
        mpath = self.build.module_dir.rstrip("/")
        lines = [
            "#!KAMAILIO",
            f"debug={self.debug}",
            "log_stderror=yes",
            f"children={self.children}",
            "auto_aliases=no",
            "dns=no",
            "rev_dns=no",
            "disable_sctp=yes",
            f"disable_tcp={'no' if 'tcp' in self.transports else 'yes'}",
        ]
        if "tcp" in self.transports:
            lines.append(f"tcp_children={self.children}")
        lines.extend(f"listen={proto}:{self.host}:{self.port}" for proto in self.transports)
        lines.append(f'mpath="{mpath}/"')
        lines.extend(f'loadmodule "{name}.so"' for name in (*BASE_MODULES, *self.extra_modules))
        params: list[tuple[str, str, str | int]] = [
            ("tm", "fr_timer", self.fr_timer_ms),
            ("ctl", "binrpc", f"unix:{self.ctl_socket}"),
            ("jsonrpcs", "fifo_name", str(self.rpc_fifo)),
            ("jsonrpcs", "fifo_reply_dir", f"{self.socket_dir}/"),
            ("jsonrpcs", "dgram_socket", str(self.rpc_socket)),
            ("dmq", "server_address", self.uri),
        ]
        params.extend(("dmq", "notification_address", seed) for seed in self.seeds)
        params.append(("dmq", "ping_interval", self.ping_interval))
        params.append(("htable", "enable_dmq", int(self.enable_dmq)))
        params.append(("htable", "dmq_init_sync", int(self.dmq_init_sync)))
        params.extend(("htable", "htable", table) for table in self.tables)
        params.extend(self.extra_modparams)
        lines.extend(f'modparam("{m}", "{p}", {_modparam_value(v)})' for m, p, v in params)
        own_route, _, more_routes = self.routes.partition("#!ROUTES")
        lines.append(
            """
request_route {
    if (is_method("KDMQ")) {
        dmq_handle_message();
        exit;
    }
"""
            + own_route
            + """
    if (is_method("MESSAGE") && $rU == "bcast") {
        if (dmq_bcast_message("custom1", "$rb", "text/plain")) {
            sl_send_reply("200", "OK");
        } else {
            sl_send_reply("500", "Broadcast failed");
        }
        exit;
    }
    if (is_method("MESSAGE") && $rU == "send") {
        if (dmq_send_message("custom1", "$hdr(X-Node)", "$rb", "text/plain")) {
            sl_send_reply("200", "OK");
        } else {
            sl_send_reply("500", "Send failed");
        }
        exit;
    }
    sl_send_reply("404", "Not here");
}
"""
            + more_routes
        )
        return "\n".join(lines)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Write the config, start Kamailio in the foreground and wait until RPC ``core.uptime`` answers.

        Raises KamailioError with the tail of the log when the process exits or does not
        answer within ``startup_timeout`` seconds (the process is killed then).
        """
        if self.running:
            raise KamailioError(f"{self!r} is already running")
        if self._proc is not None:  # exited on its own (crashed): clean up what it left
            self._reap(5.0)
        self.config_path.write_text(self.config_text())
        self.run_dir.mkdir(exist_ok=True)
        for stale in (self.ctl_socket, self.rpc_socket, self.rpc_fifo):
            stale.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
        self._log.flush()
        _become_subreaper()
        command = [
            self.binary, "-f", str(self.config_path), "-DD", "-E",
            "-Y", str(self.run_dir), "-m", str(self.shm_mb),
        ]
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(self.directory),
            start_new_session=True,
        )
        self._pgid = self._proc.pid
        self._finalizer = weakref.finalize(self, _kill_group, self._pgid, signal.SIGKILL)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._reap(5.0)
                raise KamailioError(f"{self.uri}: kamailio exited with {code} at start:\n{self.log_tail()}")
            try:
                self.rpc("core.uptime", timeout=0.5)
                return
            except (OSError, KamailioError):
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise KamailioError(
                    f"{self.uri}: no RPC answer within {self.startup_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the node, wait up to ``timeout`` s, then SIGKILL its whole process group.

        Returns once no process of the group is left. Stopping a stopped node does nothing.
        """
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._reap(timeout)

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as a crash would (no leave notification)."""
        if self._proc is None:
            return
        assert self._pgid is not None
        _kill_group(self._pgid, signal.SIGKILL)
        self._reap(5.0)

    def restart(self) -> None:
        """Stop the node (gracefully) and start it again on the same port and config."""
        self.stop()
        self.start()

    def _reap(self, timeout: float) -> None:
        """SIGKILL what is left of the process group and wait until none of it lives."""
        assert self._proc is not None and self._pgid is not None
        _kill_group(self._pgid, signal.SIGKILL)
        self._proc.wait()
        deadline = time.monotonic() + timeout
        while True:
            _reap_orphans(self._pgid)
            left = group_processes(self._pgid)
            if not left:
                _reap_orphans(self._pgid)  # those that died since the first pass
                break
            if time.monotonic() >= deadline:
                raise KamailioError(f"{self.uri}: processes {left} outlived SIGKILL")
            time.sleep(0.01)
        self._cleanup_after_exit()

    def _cleanup_after_exit(self) -> None:
        """Forget the exited process and close the log."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._pgid = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # ---------------------------------------------------------------------- RPC

    def rpc(self, method: str, *params: Any, timeout: float = 5.0, via: str = "dgram") -> Any:
        """Call a Kamailio RPC over JSON-RPC 2.0 and return its ``result``.

        ``via="dgram"`` (default) uses the jsonrpcs datagram socket, whose answers are limited
        to about 64 KB; ``via="fifo"`` uses the jsonrpcs FIFO, which has no such limit.
        Raises KamailioRPCError when the answer holds an ``error``, OSError / TimeoutError
        when nothing answers.
        """
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(_rpc_ids)}
        if params:
            request["params"] = list(params)
        if via == "dgram":
            answer = self._rpc_dgram(request, timeout)
        elif via == "fifo":
            answer = self._rpc_fifo(request, timeout)
        else:
            raise ValueError(f"via must be dgram or fifo, not {via!r}")
        reply = json.loads(answer)
        if "error" in reply:
            error = reply["error"]
            raise KamailioRPCError(method, error.get("code"), str(error.get("message")))
        return reply.get("result")

    def _rpc_dgram(self, request: dict[str, Any], timeout: float) -> bytes:
        """Send one JSON-RPC request over the datagram socket and return the raw answer."""
        client_path = self.socket_dir / f"rpc-{os.getpid()}-{secrets.token_hex(4)}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(client_path))
            try:
                sock.settimeout(timeout)
                sock.sendto(json.dumps(request).encode(), str(self.rpc_socket))
                try:
                    return sock.recv(1 << 20)
                except socket.timeout as exc:
                    raise TimeoutError(f"{self.uri}: RPC {request['method']} timed out") from exc
            finally:
                client_path.unlink(missing_ok=True)

    def _rpc_fifo(self, request: dict[str, Any], timeout: float) -> bytes:
        """Send one JSON-RPC request through the FIFO and read the answer from a reply FIFO."""
        reply_name = f"rpcreply{os.getpid()}x{secrets.token_hex(4)}"
        reply_path = self.socket_dir / reply_name
        os.mkfifo(reply_path, 0o600)
        try:
            # Open our end first (non-blocking) so Kamailio's open for writing succeeds.
            reply_fd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                fifo_fd = os.open(self.rpc_fifo, os.O_WRONLY | os.O_NONBLOCK)
                try:
                    os.write(fifo_fd, json.dumps({**request, "reply_name": reply_name}).encode() + b"\n")
                finally:
                    os.close(fifo_fd)
                return self._read_reply_fifo(reply_fd, request["method"], timeout)
            finally:
                os.close(reply_fd)
        finally:
            reply_path.unlink(missing_ok=True)

    def _read_reply_fifo(self, fd: int, method: str, timeout: float) -> bytes:
        """Read a whole JSON answer from non-blocking FIFO ``fd`` until the writer closes it."""
        chunks: list[bytes] = []
        writer_seen = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                writer_seen = True
                time.sleep(0.005)
                continue
            if chunk:
                chunks.append(chunk)
                writer_seen = True
            elif writer_seen and chunks:
                return b"".join(chunks)
            else:
                time.sleep(0.005)
        raise TimeoutError(f"{self.uri}: RPC {method} over FIFO timed out")

    def list_nodes(self) -> list[dict[str, Any]]:
        """Return ``dmq.list_nodes`` as a list of dicts (host, port, proto, status, local, ...)."""
        result = self.rpc("dmq.list_nodes")
        if result is None:
            return []
        return result if isinstance(result, list) else [result]

    def node_status(self, other: "str | int | tuple[str, int] | KamailioNode | RawMember") -> str | None:
        """Return the status this node lists for another node, or None if it does not list it.

        ``other`` is a node (anything with ``host`` and ``port``), a ``sip:HOST:PORT`` URI, a
        (host, port) pair, or a bare port (matched on any host).
        """
        host: str | None
        if isinstance(other, int):
            host, port = None, other
        elif isinstance(other, tuple):
            host, port = other
        elif isinstance(other, str):
            hostport = other.split(":", 1)[1].split(";", 1)[0]
            host, _, port_text = hostport.rpartition(":")
            port = int(port_text)
        else:
            host, port = other.host, other.port
        for entry in self.list_nodes():
            if entry.get("local") or str(entry.get("port")) != str(port):
                continue
            if host is None or entry.get("host") == host:
                return str(entry.get("status"))
        return None

    def htable_dump(self, table: str) -> list[dict[str, Any]]:
        """Return ``htable.dump <table>``: the non-empty slots, each with its ``slot`` cells (via FIFO)."""
        result = self.rpc("htable.dump", table, via="fifo")
        if result is None:
            return []
        return result if isinstance(result, list) else [result]

    def htable_items(self, table: str) -> dict[str, Any]:
        """Return the cells of ``table`` as {name: value} (ints as int, strings as str)."""
        items: dict[str, Any] = {}
        for slot in self.htable_dump(table):
            for cell in slot.get("slot") or []:
                items[cell["name"]] = cell["value"]
        return items

    # --------------------------------------------------------------- SIP helpers

    def message(self, user: str, body: bytes, headers: Mapping[str, str] | None = None,
                timeout: float = 2.0) -> int:
        """Send a SIP MESSAGE to ``sip:<user>@node`` and return the response status code."""
        with _loopback_socket(self.host, self.port) as sock:
            local = sock.getsockname()
            sock.send(build_sip_message(
                "MESSAGE", f"sip:{user}@{self.host}:{self.port}", local=(local[0], local[1]),
                body=body, headers={"Content-Type": "text/plain", **(headers or {})},
            ))
            answer = _final_response(sock, timeout)
        return int(answer.split(b" ", 2)[1])

    def bcast(self, body: bytes, timeout: float = 2.0) -> int:
        """Make the node broadcast ``body`` on script channel ``custom1``; return the MESSAGE's status."""
        return self.message("bcast", body, timeout=timeout)

    def send_to(self, node_uri: str, body: bytes, timeout: float = 2.0) -> int:
        """Make the node send ``body`` on ``custom1`` to ``node_uri`` only; return the MESSAGE's status."""
        return self.message("send", body, {"X-Node": node_uri}, timeout)

    # --------------------------------------------------------------------- logs

    def log_text(self) -> str:
        """Return everything the node logged so far (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])


class NodeFactory:
    """``factory(seeds=[...], **kw) -> KamailioNode``: a started node of one build, on an address of its own.

    ``build`` and ``version`` (a tuple such as ``(6, 1, 4)``) say which Kamailio the nodes
    run; ``nodes`` are all the nodes made, for stopping them. ``make_dir`` returns a new
    empty folder for each node.
    """

    def __init__(self, build: KamailioBuild, make_dir: Callable[[], Path]) -> None:
        """Make nodes of ``build``, each in a folder from ``make_dir``."""
        self.build = build
        self.version = build.version
        self.nodes: list[KamailioNode] = []
        self._make_dir = make_dir

    def __call__(self, seeds: Sequence["str | KamailioNode"] = (), *, address: tuple[str, int] | None = None,
                 start: bool = True, **options: Any) -> KamailioNode:
        """Create (and by default start) one node on ``address`` (default: a new one from :func:`free_address`).

        Keyword arguments go to :class:`KamailioNode`; ``start=False`` returns the node unstarted.
        """
        transports = options.get("transports", ("udp",))
        if address is None:
            address = free_address("udp+tcp" if "tcp" in transports else "udp")
        host, port = address
        node = KamailioNode(self._make_dir(), port, seeds, host=host, build=self.build, **options)
        self.nodes.append(node)
        if start:
            node.start()
        return node


class RawMember:
    """A bare UDP socket that Kamailio treats as a DMQ cluster member, for capturing its KDMQ traffic.

    :meth:`join` announces the socket's address to a node in a node-list KDMQ; from then on
    the node includes it in broadcasts and pings. :meth:`receive` answers every KDMQ with an
    empty ``200 OK`` (never a body: Kamailio 5.6.3 parses 200 bodies to script-channel
    messages as node lists) and returns the first request on the wanted channel.
    """

    def __init__(self, host: str | None = None) -> None:
        """Bind a UDP socket on an ephemeral port of ``host``, or by default on an address of its own.

        The default address comes from :func:`tests.helpers.free_address`, like a node's.
        """
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(free_address("udp") if host is None else (host, 0))
        except OSError:
            self.sock.close()
            raise
        self.host: str = self.sock.getsockname()[0]
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []

    @property
    def uri(self) -> str:
        """The member's DMQ address, ``sip:HOST:PORT``."""
        return f"sip:{self.host}:{self.port}"

    def join(self, node: KamailioNode, timeout: float = 2.0) -> bytes:
        """Send ``node`` a node-list KDMQ listing this socket as active; return the 200's bytes.

        Max-Forwards is 1, so the node adds the member without re-broadcasting the news.
        """
        body = f"{self.uri};status=active\r\n".encode()
        request = kdmq_request("notification_peer", node.address, (self.host, self.port), body)
        call_id = parse_sip(request)[1]["call-id"]
        self.sock.sendto(request, node.address)
        answer = self._wait(lambda data: parse_sip(data)[1].get("call-id") == call_id, timeout)
        if not answer.startswith(b"SIP/2.0 200"):
            raise KamailioError(f"{node.uri} refused the join: {answer[:80]!r}")
        return answer

    def receive(self, channel: str, timeout: float = 2.0) -> bytes:
        """Answer KDMQs with 200 until one on ``channel`` arrives; return that request's bytes."""
        prefix = f"KDMQ sip:{channel}@".encode()
        return self._wait(lambda data: data.startswith(prefix), timeout)

    def _wait(self, wanted: Callable[[bytes], bool], timeout: float) -> bytes:
        """Read datagrams (answering requests with an empty 200) until ``wanted`` accepts one."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.uri}: nothing wanted arrived within {timeout}s")
            self.sock.settimeout(left)
            try:
                data, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.received.append(data)
            if data.startswith(b"KDMQ "):
                self.sock.sendto(sip_response(data), source)
            if wanted(data):
                return data

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> "RawMember":
        """Use the member as a context manager that closes its socket."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the socket."""
        self.close()
