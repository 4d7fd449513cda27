"""
The manhole: a Python console inside a running node, over SSH or telnet.

The console's namespace holds ``service`` (the :class:`~dmq.service.DMQService`),
``nodes`` (its :class:`~dmq.nodelist.NodeList`) and ``peers`` (channel -> peer).

- SSH: the host key is read from ``KEYS_DIR/ssh_host_ed25519_key`` and
  generated there (mode 0600) on first start; users log in as ``user`` with
  a public key listed in ``KEYS_DIR/authorized_keys`` and/or the password.
- telnet: ``user`` and the password.  Telnet is clear text: the tap allows a
  manhole on loopback only (reach it from elsewhere through an SSH tunnel).

``twisted.conch`` (the ``conch`` extra) is imported only by the functions
here, never at module import, so a node without a manhole does not need it.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.protocol import Factory

    from dmq.service import DMQService

__all__ = [
    "HOST_KEY_NAME",
    "AUTHORIZED_KEYS_NAME",
    "PasswordChecker",
    "manhole_namespace",
    "make_manhole_factory",
    "load_host_key",
    "read_authorized_keys",
]

log = Logger()

HOST_KEY_NAME = "ssh_host_ed25519_key"
"""The host key's file name in the keys folder."""
AUTHORIZED_KEYS_NAME = "authorized_keys"
"""The file of public keys allowed to log in, in the keys folder."""


def manhole_namespace(service: "DMQService") -> dict[str, Any]:
    """The names a manhole console starts with: ``service``, ``nodes``, ``peers``."""
    return {
        "__name__": "__manhole__",
        "__doc__": "dmq manhole: service, nodes, peers",
        "service": service,
        "nodes": service.nodes,
        "peers": service.peers,
    }


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    One user name and password, compared in constant time.

    :param user: the user name.
    :param password: the password.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, user: str, password: str) -> None:
        self.user = user.encode("utf-8")
        self.password = password.encode("utf-8")

    def requestAvatarId(self, credentials: Any) -> "defer.Deferred[bytes | tuple[()]]":  # noqa: N802
        """The user name when both match, else an :class:`UnauthorizedLogin` failure."""
        username = credentials.username
        password = credentials.password
        if isinstance(username, str):
            username = username.encode("utf-8")
        if isinstance(password, str):
            password = password.encode("utf-8")
        user_ok = hmac.compare_digest(username, self.user)
        password_ok = hmac.compare_digest(password, self.password)
        if user_ok and password_ok:
            return defer.succeed(self.user)
        log.info("manhole login refused for {user}", user=username.decode("utf-8", "replace"))
        return defer.fail(UnauthorizedLogin("bad user name or password"))


def load_host_key(keys_dir: str) -> Any:
    """
    The SSH host key from ``keys_dir``, generated (ed25519, mode 0600) when
    the file does not exist yet.

    :returns: a ``twisted.conch.ssh.keys.Key``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    folder = Path(keys_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / HOST_KEY_NAME
    if not path.exists():
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.OpenSSH,
            encryption_algorithm=serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public = keys.Key(private).public().toString("openssh")
        (folder / f"{HOST_KEY_NAME}.pub").write_bytes(public + b"\n")
        log.info("manhole: generated SSH host key {path}", path=str(path))
    return keys.Key.fromFile(str(path))


def read_authorized_keys(keys_dir: str) -> list[Any]:
    """The public keys in ``keys_dir/authorized_keys`` (none when the file is missing)."""
    from twisted.conch.ssh import keys

    path = Path(keys_dir) / AUTHORIZED_KEYS_NAME
    if not path.exists():
        return []
    found = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            found.append(keys.Key.fromString(line))
        except keys.BadKeyError as e:
            log.warn("manhole: skipping line {number} of {path}: {reason}", number=number, path=str(path), reason=str(e))
    return found


def make_manhole_factory(
    namespace: dict[str, Any],
    protocol: str = "ssh",
    *,
    user: str = "admin",
    password: Optional[str] = None,
    keys_dir: Optional[str] = None,
) -> "Factory":
    """
    A protocol factory serving a manhole console over ``protocol`` (``ssh``
    or ``telnet``).

    :param namespace: the console's names (:func:`manhole_namespace`).
    :param user: the user name to log in as.
    :param password: the password (needed for telnet; for SSH optional when
        ``keys_dir`` has an ``authorized_keys`` file).
    :param keys_dir: for SSH: where the host key and ``authorized_keys`` are.
    :raises ValueError: when no login would be possible.
    """
    from twisted.conch import manhole
    from twisted.conch.insults import insults
    from twisted.cred import portal

    if protocol == "telnet":
        if not password:
            raise ValueError("a telnet manhole needs a password")
        from twisted.conch import telnet
        from twisted.internet.protocol import ServerFactory as _ServerFactory

        @implementer(portal.IRealm)
        class TelnetRealm:
            def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802
                if telnet.ITelnetProtocol in interfaces:
                    console = telnet.TelnetBootstrapProtocol(insults.ServerProtocol, manhole.ColoredManhole, namespace)
                    return telnet.ITelnetProtocol, console, lambda: None
                raise NotImplementedError()

        telnet_portal = portal.Portal(TelnetRealm(), [PasswordChecker(user, password)])
        factory = _ServerFactory()
        factory.protocol = lambda: telnet.TelnetTransport(telnet.AuthenticatingTelnetProtocol, telnet_portal)
        return factory

    if protocol != "ssh":
        raise ValueError(f"unknown manhole protocol {protocol!r} (ssh or telnet)")
    if keys_dir is None:
        raise ValueError("an SSH manhole needs a keys folder")
    from twisted.conch import checkers as conch_checkers, manhole_ssh

    checkers: list[Any] = []
    authorized = read_authorized_keys(keys_dir)
    if authorized:
        checkers.append(
            conch_checkers.SSHPublicKeyChecker(conch_checkers.InMemorySSHKeyDB({user.encode("utf-8"): authorized}))
        )
    if password:
        checkers.append(PasswordChecker(user, password))
    if not checkers:
        raise ValueError(
            f"an SSH manhole needs public keys in {Path(keys_dir) / AUTHORIZED_KEYS_NAME} or a password"
        )
    def console() -> Any:
        return insults.ServerProtocol(manhole.ColoredManhole, namespace)

    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory = console  # type: ignore[assignment]
    # TerminalRealm has IRealm's requestAvatar but Twisted does not declare it with @implementer.
    ssh_factory = manhole_ssh.ConchFactory(portal.Portal(realm, checkers))  # type: ignore[arg-type]
    host_key = load_host_key(keys_dir)
    # Instance attributes: ConchFactory's class-level dicts are shared by every instance.
    ssh_factory.publicKeys = {host_key.sshType(): host_key.public()}
    ssh_factory.privateKeys = {host_key.sshType(): host_key}
    return ssh_factory
