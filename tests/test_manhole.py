"""The manhole: its namespace, logins, real telnet and OpenSSH sessions evaluating len(nodes), SSH host keys."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dmq import DMQService
from dmq.manhole import (
    AUTHORIZED_KEYS_NAME,
    HOST_KEY_NAME,
    PasswordChecker,
    load_host_key,
    make_manhole_factory,
    manhole_namespace,
)
from dmq.testing import FakeSIPTransport

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78DEHMZc]")


def two_node_service() -> DMQService:
    """A service (not started) whose node list holds itself and one other node."""
    svc = DMQService("sip:127.0.0.1:5060", reactor=Clock(), transport=FakeSIPTransport())
    svc.add_node("sip:127.0.0.1:5099")
    return svc


def temporary_folder(case: SynchronousTestCase) -> Path:
    """A new folder path (not created) in the system's temp dir, removed after the test."""
    parent = Path(tempfile.mkdtemp(prefix="dmq-manhole-"))
    case.addCleanup(shutil.rmtree, parent, True)
    return parent / "keys"


class NamespaceAndLoginTests(SynchronousTestCase):
    """What a console starts with, and who may log in."""

    def test_namespace(self) -> None:
        """The console names the service, its node list and its peers."""
        svc = two_node_service()
        namespace = manhole_namespace(svc)
        self.assertIs(namespace["service"], svc)
        self.assertIs(namespace["nodes"], svc.nodes)
        self.assertIs(namespace["peers"], svc.peers)
        self.assertEqual(len(namespace["nodes"]), 2)

    def test_password_checker(self) -> None:
        """The right user and password log in; a wrong password or user is refused."""
        checker = PasswordChecker("admin", "pw")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"admin", b"pw"))), b"admin")
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"admin", b"nope")), UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"root", b"pw")), UnauthorizedLogin)

    def test_factory_refuses_impossible_logins(self) -> None:
        """Telnet without a password, SSH without keys folder or any login means, an unknown protocol: ValueError."""
        namespace = manhole_namespace(two_node_service())
        with self.assertRaises(ValueError):
            make_manhole_factory(namespace, "telnet")
        with self.assertRaises(ValueError):
            make_manhole_factory(namespace, "ssh", password="pw")
        with self.assertRaises(ValueError):
            make_manhole_factory(namespace, "ssh", keys_dir=str(temporary_folder(self)))
        with self.assertRaises(ValueError):
            make_manhole_factory(namespace, "gopher", password="pw")


class HostKeyTests(SynchronousTestCase):
    """The SSH host key is made on first start and kept."""

    def test_generated_once_private_and_reused(self) -> None:
        """The first start writes a 0600 ed25519 key (and its .pub); the next start loads the same key."""
        folder = temporary_folder(self)
        first = load_host_key(str(folder))
        path = folder / HOST_KEY_NAME
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(first.sshType(), b"ssh-ed25519")
        self.assertTrue((folder / f"{HOST_KEY_NAME}.pub").read_bytes().startswith(b"ssh-ed25519 "))
        content = path.read_bytes()
        second = load_host_key(str(folder))
        self.assertEqual(path.read_bytes(), content)
        self.assertEqual(first.fingerprint(), second.fingerprint())

    def test_ssh_factory_with_authorized_keys(self) -> None:
        """An SSH factory takes public keys from authorized_keys and offers its host key."""
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from twisted.conch.ssh import keys

        folder = temporary_folder(self)
        folder.mkdir()
        user_key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        (folder / AUTHORIZED_KEYS_NAME).write_bytes(b"# operators\n" + user_key.public().toString("openssh") + b"\n")
        factory = make_manhole_factory(manhole_namespace(two_node_service()), "ssh", keys_dir=str(folder))
        self.assertEqual(list(factory.privateKeys), [b"ssh-ed25519"])  # type: ignore[attr-defined]
        self.assertTrue((folder / HOST_KEY_NAME).exists())


class ConsoleClient:
    """
    A telnet client that agrees to the server's option negotiation and
    collects what it is sent.  Its TelnetTransport turns each LF written into
    the CR LF a terminal sends for Return.
    """

    def __init__(self) -> None:
        from twisted.conch.telnet import ECHO, LINEMODE, NAWS, SGA, TelnetProtocol

        client = self

        class Protocol(TelnetProtocol):
            def enableRemote(self, option: bytes) -> bool:  # noqa: N802
                return option in (ECHO, SGA)

            def enableLocal(self, option: bytes) -> bool:  # noqa: N802
                return option in (SGA, NAWS, LINEMODE)

            def disableLocal(self, option: bytes) -> None:  # noqa: N802
                pass

            def disableRemote(self, option: bytes) -> None:  # noqa: N802
                pass

            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                client.received(data)

        self.protocol_class = Protocol
        self.data = b""
        self.waiters: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []
        self.transport: Any = None

    def received(self, data: bytes) -> None:
        self.data += data
        for waiter in list(self.waiters):
            pattern, d = waiter
            match = pattern.search(ANSI.sub(b"", self.data))
            if match:
                self.waiters.remove(waiter)
                d.callback(match)

    def wait_for(self, pattern: bytes, reactor: Any, timeout: float = 5.0) -> "Deferred[re.Match[bytes]]":
        d: Deferred[re.Match[bytes]] = Deferred()
        self.waiters.append((re.compile(pattern), d))
        self.received(b"")
        return d.addTimeout(timeout, reactor)

    def send(self, data: bytes) -> None:
        self.data = b""
        self.transport.write(data)


@pytest_twisted.inlineCallbacks
def test_telnet_manhole_answers_len_nodes(reactor: Any) -> Any:
    """Over a real telnet connection with a password, the console evaluates len(nodes) to 2."""
    from twisted.conch.telnet import TelnetTransport

    svc = two_node_service()
    factory = make_manhole_factory(manhole_namespace(svc), "telnet", user="admin", password="s3cret")
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = ConsoleClient()
    transport: Optional[TelnetTransport] = None
    try:
        transport = TelnetTransport(client.protocol_class)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), transport)
        client.transport = transport
        yield client.wait_for(b"Username: ", reactor)
        client.send(b"admin\n")
        yield client.wait_for(b"Password: ", reactor)
        client.send(b"s3cret\n")
        yield client.wait_for(b">>> ", reactor)
        client.send(b"len(nodes)\n")
        match = yield client.wait_for(rb"len\(nodes\)\s*\n(\d+)\r*\n", reactor)
        assert match.group(1) == b"2"
        client.send(b"service.nodes.local.port\n")
        match = yield client.wait_for(rb"port\s*\n(\d+)\r*\n", reactor)
        assert match.group(1) == b"5060"
    finally:
        if transport is not None and transport.transport is not None:
            transport.transport.loseConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_telnet_manhole_refuses_wrong_password(reactor: Any) -> Any:
    """A wrong password gets 'Authentication failed' and a new Username prompt, no console."""
    from twisted.conch.telnet import TelnetTransport

    factory = make_manhole_factory(manhole_namespace(two_node_service()), "telnet", password="s3cret")
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = ConsoleClient()
    transport = TelnetTransport(client.protocol_class)
    try:
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), transport)
        client.transport = transport
        yield client.wait_for(b"Username: ", reactor)
        client.send(b"admin\n")
        yield client.wait_for(b"Password: ", reactor)
        client.send(b"guess\n")
        yield client.wait_for(b"Authentication failed\r*\nUsername: ", reactor)
        assert b">>> " not in client.data
    finally:
        if transport.transport is not None:
            transport.transport.loseConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_ssh_manhole_speaks_ssh(reactor: Any, tmp_path: Path) -> Any:
    """An SSH manhole answers a connection with an SSH-2.0 version line."""
    factory = make_manhole_factory(manhole_namespace(two_node_service()), "ssh", password="pw", keys_dir=str(tmp_path))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        from twisted.internet.protocol import Protocol

        received: Deferred[bytes] = Deferred()

        class Banner(Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                if not received.called:
                    received.callback(data)
                    self.transport.loseConnection()

        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Banner())
        banner = yield received.addTimeout(5, reactor)
        assert banner.startswith(b"SSH-2.0-")
    finally:
        yield port.stopListening()


def test_conch_is_imported_only_for_a_manhole() -> None:
    """Importing dmq and building a node without a manhole does not import twisted.conch."""
    code = (
        "import sys\n"
        "from twisted.python import usage\n"
        "import dmq, dmq.tap, dmq.control, dmq.metrics, dmq.manhole, dmq.ctl\n"
        "from dmq.tap import Options, build_node\n"
        "o = Options(); o.parseOptions(['--control', 'none', '--metrics', '0'])\n"
        "build_node(o.config, probe=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('twisted.conch')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest_twisted.inlineCallbacks
def test_ssh_manhole_key_login_answers_len_nodes(reactor: Any, tmp_path: Path) -> Any:
    """OpenSSH's client logs in with a key from authorized_keys (host key made on first start) and gets len(nodes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys
    from twisted.internet.protocol import ProcessProtocol

    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("no ssh client (openssh-client)")
    keys_dir = tmp_path / "manhole"
    keys_dir.mkdir()
    private = ed25519.Ed25519PrivateKey.generate()
    identity = tmp_path / "id_ed25519"
    identity.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    identity.chmod(0o600)
    (keys_dir / AUTHORIZED_KEYS_NAME).write_bytes(keys.Key(private).public().toString("openssh") + b"\n")
    factory = make_manhole_factory(manhole_namespace(two_node_service()), "ssh", keys_dir=str(keys_dir))
    assert (keys_dir / HOST_KEY_NAME).exists()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    class Session(ProcessProtocol):
        def __init__(self) -> None:
            self.data = b""
            self.got: Deferred[bytes] = Deferred()
            self.ended: Deferred[None] = Deferred()

        def outReceived(self, data: bytes) -> None:  # noqa: N802
            self.data += data
            text = ANSI.sub(b"", self.data)
            if b">>> " in text and b"len(nodes)" not in text and not getattr(self, "asked", False):
                self.asked = True
                self.transport.write(b"len(nodes)\r")
            match = re.search(rb"len\(nodes\)\s*\n(\d+)\r*\n", text)
            if match and not self.got.called:
                self.got.callback(match.group(1))

        errReceived = outReceived

        def processEnded(self, reason: Any) -> None:  # noqa: N802
            if not self.got.called:
                self.got.errback(AssertionError(f"ssh ended: {self.data[-500:]!r}"))
            self.ended.callback(None)

    session = Session()
    args = [ssh, "-tt", "-F", "/dev/null", "-i", str(identity), "-p", str(port.getHost().port),
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "admin@127.0.0.1"]
    process = reactor.spawnProcess(session, ssh, args, env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    try:
        answer = yield session.got.addTimeout(20, reactor)
        assert answer == b"2"
        known = (tmp_path / "known_hosts").read_text()
        assert "ssh-ed25519" in known
    finally:
        if not session.ended.called:
            process.signalProcess("TERM")
            yield session.ended
        yield port.stopListening()
