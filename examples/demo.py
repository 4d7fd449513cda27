"""
A mixed DMQ cluster on loopback: two Kamailio nodes and one dmq node.

``make demo`` runs this.  Each node gets a 127.0.0.N address of its own (from
127.0.0.2 up, the first whose port 5060 is free), since Kamailio 5.8 and later
tell nodes apart by IP alone.  The Kamailio nodes run
``examples/kamailio/kamailio.cfg`` with their addresses filled in (the configs
are written into a temp folder, with the logs); the dmq node runs
``examples/kamailio/node.toml`` with its address given on the command line.
Where Kamailio is not installed (or with ``--python-only``) three dmq nodes
run instead.

Once the nodes know each other, the demo prints every node's node list, sets
a key in the replicated htable ``greetings`` on the first node and prints what
every node reads for it.  Then it keeps the cluster running (try the commands
it prints) until Ctrl-C, and stops every process it started, by pid.  With
``--once`` it stops and exits after printing; the exit status is 1 when the
cluster did not form or the key did not reach every node.

Kamailio builds: ``--kamailio BINARY[:MODULES]`` (repeatable), else Debian's
``kamailio`` and the build in ``$KAMAILIO6_DIR`` (default
``../shared/kamailio-6.1.4`` beside the repository: ``sbin/kamailio`` and
``modules/``); the first two found run, or one found runs twice.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = HERE / "kamailio" / "kamailio.cfg"
NODE_TOML = HERE / "kamailio" / "node.toml"
TABLE = "greetings"
KEY = "hello"
DEFAULT_PORT = 5060
CONTROL_PORT = 8060


class DemoError(Exception):
    """The cluster could not be started or did not behave; the message says why."""


# -- nodes ----------------------------------------------------------------------------


class DemoNode:
    """One process of the cluster on ``host``:``port``, with its folder and log."""

    kind = "node"

    def __init__(self, host: str, port: int, seed: str, directory: Path) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.directory = directory
        self.log_path = directory / f"{self.kind}-{host}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.label = self.kind

    @property
    def uri(self) -> str:
        """The node's DMQ address."""
        return f"sip:{self.host}:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        """The pid of the process while started."""
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        """The command line that runs the node."""
        raise NotImplementedError

    def rpc(self, method: str, *params: Any) -> Any:
        """Call a JSON-RPC method of the node and return its result (DemoError for an error)."""
        raise NotImplementedError

    def extra(self) -> str:
        """What to show about the node beside its address."""
        return ""

    def start(self) -> None:
        """Start the process, in a session of its own (Ctrl-C reaches the demo, which stops it)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process, then SIGKILL its process group if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # children a killed Kamailio left
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def alive(self) -> None:
        """DemoError with the log's tail when the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
            raise DemoError(f"{self.label} on {self.uri} exited with {self.process.returncode}:\n" + "\n".join(tail))


class KamailioNode(DemoNode):
    """A Kamailio node running kamailio.cfg; RPC over its ``jsonrpcs`` datagram socket."""

    kind = "kamailio"

    def __init__(self, host: str, port: int, seed: str, directory: Path, binary: str, modules: Optional[str]) -> None:
        super().__init__(host, port, seed, directory)
        self.binary = binary
        self.modules = modules
        self.version = kamailio_version(binary)
        self.label = f"Kamailio {self.version}"
        self.run_dir = directory / f"run-{host}"
        self.config_path = directory / f"kamailio-{host}.cfg"

    def config_text(self) -> str:
        """kamailio.cfg with this node's three values in place of the defaults."""
        values = {"DMQ_LISTEN": f"udp:{self.host}:{self.port}", "DMQ_ADDRESS": f'"{self.uri}"',
                  "DMQ_SEED": f'"{self.seed}"'}
        text = CONFIG.read_text()
        for name, value in values.items():
            text, count = re.subn(rf"^#!trydef {name} .*$", f"#!define {name} {value}", text, flags=re.M)
            if count != 1:
                raise DemoError(f"{CONFIG} has no '#!trydef {name}' line")
        return text

    def command(self) -> list[str]:
        """Foreground, logging to stderr, with its own runtime folder (and module folder)."""
        self.run_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text())
        command = [self.binary, "-f", str(self.config_path), "-DD", "-E", "-Y", str(self.run_dir)]
        return command + (["-L", self.modules] if self.modules else [])

    def extra(self) -> str:
        """The config file and the kamcmd socket."""
        return f"config {self.config_path}; kamcmd -s unix:{self.run_dir}/kamailio_ctl"

    def rpc(self, method: str, *params: Any) -> Any:
        """JSON-RPC over ``kamailio_rpc.sock``: a datagram from a socket of our own, answered to it."""
        reply = self.run_dir / f"demo-{os.getpid()}.sock"
        reply.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(reply))
            try:
                sock.settimeout(2.0)
                request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
                sock.sendto(json.dumps(request).encode(), str(self.run_dir / "kamailio_rpc.sock"))
                answer = json.loads(sock.recv(65535))
            finally:
                reply.unlink(missing_ok=True)
        return _result(answer, method)


class PythonNode(DemoNode):
    """A dmq node running node.toml; RPC over its HTTP control API."""

    kind = "dmq"

    def __init__(self, host: str, port: int, seed: str, directory: Path) -> None:
        super().__init__(host, port, seed, directory)
        from dmq import __version__

        self.label = f"dmq {__version__}"
        self.control_port = free_port(host, CONTROL_PORT, socket.SOCK_STREAM)

    @property
    def url(self) -> str:
        """The control API's URL."""
        return f"http://{self.host}:{self.control_port}/RPC"

    def command(self) -> list[str]:
        """``twistd dmq --config node.toml`` with this node's address, seed and control endpoint."""
        return [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "--logfile=-", "dmq",
                "--config", str(NODE_TOML), "--server-address", self.uri, "--notification-address", self.seed,
                "--control", f"tcp:{self.control_port}:interface={self.host}"]

    def extra(self) -> str:
        """The dmqctl command line."""
        return f"dmqctl --url {self.url}"

    def rpc(self, method: str, *params: Any) -> Any:
        """JSON-RPC over HTTP."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        # Loopback only: no proxy from the environment may be asked.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=2.0) as answer:
            return _result(json.loads(answer.read()), method)


def _result(answer: dict[str, Any], method: str) -> Any:
    """The result of a JSON-RPC answer; DemoError with the error's message."""
    if "error" in answer:
        raise DemoError(f"{method}: {answer['error'].get('message')}")
    return answer.get("result")


# -- finding addresses and Kamailio ----------------------------------------------------------


def free_port(host: str, preferred: int, kind: int) -> int:
    """``preferred`` when it is free on ``host``, else a port the system picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, kind) as sock:
            # As the listener will: a port in TIME_WAIT from earlier connections is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DemoError(f"no free port on {host}")


def loopback_addresses(count: int) -> list[tuple[str, int]]:
    """The first ``count`` hosts 127.0.0.N (N from 2) whose UDP port 5060 is free."""
    found = []
    for n in range(2, 255):
        host = f"127.0.0.{n}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((host, DEFAULT_PORT))
        except OSError:
            continue
        found.append((host, DEFAULT_PORT))
        if len(found) == count:
            return found
    raise DemoError(f"fewer than {count} loopback addresses with port {DEFAULT_PORT} free")


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on loopback, for argparse."""
    host, _, port = text.rpartition(":")
    try:
        if not ipaddress.IPv4Address(host).is_loopback or not port.isdigit():
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a 127.x.y.z host") from None
    return host, int(port)


def kamailio_version(binary: str) -> str:
    """The version ``binary -v`` prints (``6.1.4``)."""
    try:
        first = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DemoError(f"cannot run {binary}: {e}") from None
    found = re.search(r"kamailio (\d+(?:\.\d+)+)", first[0]) if first else None
    if found is None:
        raise DemoError(f"{binary} -v printed no Kamailio version")
    return found.group(1)


def find_kamailio(given: list[str]) -> list[tuple[str, Optional[str]]]:
    """The Kamailio builds to run, as ``(binary, module folder or None)``: given ones, else those found."""
    builds: list[tuple[str, Optional[str]]] = []
    for text in given:
        binary, _, modules = text.partition(":")
        builds.append((binary, modules or None))
    if given:
        return builds
    system = shutil.which("kamailio") or next((p for p in ("/usr/sbin/kamailio",) if os.access(p, os.X_OK)), None)
    if system:
        builds.append((system, None))
    folder = Path(os.environ.get("KAMAILIO6_DIR") or ROOT.parent / "shared" / "kamailio-6.1.4")
    if os.access(folder / "sbin" / "kamailio", os.X_OK) and (folder / "modules" / "dmq.so").exists():
        builds.append((str(folder / "sbin" / "kamailio"), str(folder / "modules")))
    return builds


# -- the demo ---------------------------------------------------------------------------------


def plan(args: argparse.Namespace, directory: Path) -> list[DemoNode]:
    """The three nodes: Kamailio, Kamailio, dmq (or dmq three times), the first seeded by the second."""
    addresses = args.nodes or loopback_addresses(3)
    uris = [f"sip:{host}:{port}" for host, port in addresses]
    seeds = [uris[1], uris[0], uris[0]]
    builds = [] if args.python_only else find_kamailio(args.kamailio)
    nodes: list[DemoNode] = []
    for i, (host, port) in enumerate(addresses):
        if builds and i < 2:
            binary, modules = builds[min(i, len(builds) - 1)]
            nodes.append(KamailioNode(host, port, seeds[i], directory, binary, modules))
        else:
            nodes.append(PythonNode(host, port, seeds[i], directory))
    return nodes


def wait_for(what: str, check: Callable[[], Any], nodes: list[DemoNode], timeout: float) -> Any:
    """Poll ``check`` until it returns something true; DemoError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        for node in nodes:
            node.alive()
        try:
            last = check()
        except (OSError, ValueError, DemoError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise DemoError(f"{what} within {timeout:.0f} s (last: {last})")
        time.sleep(0.2)


def node_list(node: DemoNode) -> list[tuple[str, str, bool]]:
    """``(uri, status, local)`` for every node ``node`` lists."""
    return [(f"sip:{n['host']}:{n['port']}", n["status"], bool(int(n["local"]))) for n in node.rpc("dmq.list_nodes")]


def read_key(node: DemoNode) -> Optional[str]:
    """What ``node`` holds for the demo key, or None."""
    try:
        item = node.rpc("htable.get", TABLE, KEY)
    except DemoError:
        return None  # no such key (yet)
    value = item.get("item", {}).get("value") if isinstance(item, dict) else None
    return None if value is None else str(value)


def run(args: argparse.Namespace, directory: Path, nodes: list[DemoNode], out: Callable[[str], None]) -> None:
    """Start the nodes, wait until they form one cluster, and print node lists and the replicated key."""
    out(f"dmq demo: {len(nodes)} nodes on loopback; configs and logs in {directory}")
    nodes[0].start()  # the others join through it
    wait_for(f"{nodes[0].uri} did not answer RPC", lambda: node_list(nodes[0]), nodes, args.timeout)
    for node in nodes[1:]:
        node.start()
    for node in nodes:
        wait_for(f"{node.uri} did not answer RPC", lambda: node_list(node), nodes, args.timeout)
        out(f"  {node.uri}  {node.label:<15} pid {node.pid}  {node.extra()}")
    everyone = {node.uri for node in nodes}

    def formed() -> bool:
        return all({uri for uri, status, _ in node_list(n) if status == "active"} == everyone for n in nodes)

    wait_for("the nodes did not all list each other as active", formed, nodes, args.timeout)
    for node in nodes:
        out(f"\nnode list of {node.uri} ({node.label}):")
        for uri, status, local in node_list(node):
            out(f"  {uri:<24} {status}{'  (this node)' if local else ''}")
    value = f"hello from {nodes[0].uri}"
    nodes[0].rpc("htable.sets", TABLE, KEY, value)
    out(f"\nhtable {TABLE}: {KEY} set to {value!r} on {nodes[0].uri}")
    wait_for(f"the key did not reach every node", lambda: all(read_key(n) == value for n in nodes), nodes, args.timeout)
    for node in nodes:
        out(f"  {node.uri} reads {TABLE}[{KEY}] = {read_key(node)!r}")


def main(argv: list[str]) -> int:
    """Run the demo; the exit status."""
    parser = argparse.ArgumentParser(description="A mixed DMQ cluster on loopback (Kamailio and dmq).")
    parser.add_argument("--once", action="store_true", help="print, stop everything and exit")
    parser.add_argument("--python-only", action="store_true", help="three dmq nodes, even where Kamailio is installed")
    parser.add_argument("--kamailio", action="append", default=[], metavar="BINARY[:MODULES]",
                        help="a Kamailio build to run (repeatable; default: those found)")
    parser.add_argument("--nodes", type=host_port, nargs=3, metavar="HOST:PORT",
                        help="the three nodes' addresses (default: free 127.0.0.N:5060)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each step")
    args = parser.parse_args(argv)

    def out(line: str) -> None:
        try:
            print(line, flush=True)
        except OSError:
            pass  # the reader went away (``| head``): the nodes must still be stopped

    directory = Path(tempfile.mkdtemp(prefix="dmq-demo-"))
    nodes: list[DemoNode] = []
    stopping = False

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Set here, not inherited: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    status = 0
    try:
        nodes = plan(args, directory)
        run(args, directory, nodes, out)
        if not args.once:
            out("\nThe cluster runs. Try the commands above (dmqctl from .venv/bin). Ctrl-C stops it.")
            while True:
                for node in nodes:
                    node.alive()
                time.sleep(1)
    except KeyboardInterrupt:
        stopping = True
    except DemoError as e:
        out(f"demo: {e}")
        status = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the stopping short
        for node in reversed(nodes):
            if node.pid is not None:
                pid = node.pid
                node.stop()
                out(f"stopped {node.uri} (pid {pid})")
        if status == 0 or stopping:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            out(f"logs kept in {directory}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
