"""
``twistd dmq``: run a DMQ node.

The options are named after Kamailio's ``dmq`` modparams (``--server-address``
is ``server_address``, ...) and mean the same; the others (listeners, SIP
timers, the control API, the manhole, metrics, bundled peers) follow the same
spelling.  ``--config node.toml`` reads the same settings from a TOML file
whose keys are the modparam names; an option given on the command line
overrides the file (a repeatable option given on the command line replaces
the file's list).  The settings are listed in :mod:`dmq.settings` and
checked by :func:`dmq.config.resolve`; ``docs/operations.md`` describes every
one.

:class:`Options` parses the command line; a bad setting is a ``UsageError``
naming the option (or the TOML key and file) and the reason.
:func:`makeService` then checks what only the machine can tell (a port in
use, an htable spec the peer refuses) before anything listens, and builds the
service tree: the :class:`~dmq.service.DMQService`, the control API, the
metrics endpoint and the manhole.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from dmq.config import NodeConfig, PortProbe, resolve
from dmq.errors import ConfigurationError
from dmq.settings import SETTINGS, Setting

__all__ = [
    "Listener",
    "Options",
    "NodeConfig",
    "NodeService",
    "PortProbe",
    "SETTINGS",
    "build_node",
    "check_ports",
    "makeService",
]

log = Logger()

KAMAILIO_MIN_PING_INTERVAL = 5
"""Kamailio raises a smaller ``ping_interval`` to this; dmq accepts 1 and up."""


def _help(setting: Setting) -> str:
    if setting.kind == "list" or setting.default in (None, "", []):
        return setting.help
    default = setting.default
    if setting.kind == "bool":
        default = int(default)
    return f"{setting.help} [default: {default}]"


class Options(usage.Options):
    """
    The options of ``twistd dmq``; after parsing, :attr:`config` holds the
    checked :class:`~dmq.config.NodeConfig`.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a Kamailio-compatible DMQ node. Options are named after Kamailio's dmq modparams; "
        "--config FILE reads the same settings from TOML (keys = modparam names, e.g. "
        "server_address, notification_address, ping_interval) and the command line overrides it."
    )
    optParameters = [["config", "c", None, "TOML file with the settings (keys = modparam names)."]] + [
        [s.option, None, None, _help(s)] for s in SETTINGS if s.cli and s.kind not in ("list", "flag")
    ]
    optFlags = [[s.option, None, s.help] for s in SETTINGS if s.cli and s.kind == "flag"]

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[str, list[str]] = {s.key: [] for s in SETTINGS if s.kind == "list"}
        self.config: Optional[NodeConfig] = None

    def opt_notification_address(self, value: str) -> None:
        """A node to join the cluster through (sip:HOST:PORT); repeatable."""
        self.lists["notification_address"].append(value)

    def opt_allow(self, value: str) -> None:
        """Serve requests only from this network (CIDR or address); repeatable (default: from anyone)."""
        self.lists["allow"].append(value)

    def opt_htable(self, value: str) -> None:
        """Replicate a Kamailio-compatible hash table: NAME[:expire=SECS]; repeatable."""
        self.lists["htable"].append(value)

    def opt_dialog_profiles_with_value(self, value: str) -> None:
        """Dialog profiles with values: NAME[;NAME...]; repeatable."""
        self.lists["dialog_profiles_with_value"].append(value)

    def opt_dialog_profiles_no_value(self, value: str) -> None:
        """Dialog profiles without values: NAME[;NAME...]; repeatable."""
        self.lists["dialog_profiles_no_value"].append(value)

    def postOptions(self) -> None:  # noqa: N802
        """Merge defaults, the config file and the command line; check every setting."""
        given: dict[str, Any] = {s.key: self[s.option] for s in SETTINGS if s.cli and s.kind != "list"}
        given.update({s.key: True if self[s.option] else None for s in SETTINGS if s.cli and s.kind == "flag"})
        given.update(self.lists)
        self.config = resolve(given, self["config"])
        if not uses_tls(self.config):
            leave_out_tls_library()


def uses_tls(config: NodeConfig) -> bool:
    """Whether the node speaks TLS anywhere: SIP over TLS, or an ``ssl:`` control, metrics or manhole endpoint."""
    endpoints = (config.control, config.metrics, config.manhole)
    return config.tls is not None or any(e is not None and e.lower().startswith("ssl:") for e in endpoints)


def leave_out_tls_library() -> None:
    """
    Keep pyOpenSSL (and the cryptography it loads, some 13 MB) out of a node
    that speaks no TLS.  Twisted's TCP support loads it whenever it can, for
    TLS the node would never use; marking it absent before the reactor loads
    makes Twisted do without, as on a system without pyOpenSSL.  Nothing
    changes once the library or the reactor is loaded already.
    """
    if "OpenSSL" not in sys.modules and "twisted.internet.reactor" not in sys.modules:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]


# -- before listening ------------------------------------------------------------------------


def check_ports(probes: list[PortProbe]) -> None:
    """
    Bind each port for a moment to find one in use before anything listens.

    :raises usage.UsageError: naming the setting and the port in use.
    """
    for probe in probes:
        family = socket.AF_INET6 if ":" in probe.host else socket.AF_INET
        kind = socket.SOCK_DGRAM if probe.protocol == "udp" else socket.SOCK_STREAM
        try:
            with socket.socket(family, kind) as sock:
                if kind == socket.SOCK_STREAM:
                    # As Twisted's listenTCP does: a port in TIME_WAIT is free.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((probe.host, probe.port))
        except OSError as e:
            reason = "in use" if e.errno in (98, 48) else (e.strerror or str(e))
            raise usage.UsageError(
                f"{probe.where}: cannot listen on {probe.protocol.upper()} {probe.host} port {probe.port}: {reason}"
            ) from None


# -- the service tree ----------------------------------------------------------------------------


def _stop_reactor(reactor: Any) -> None:
    """Stop ``reactor``, or have it stop as soon as it runs (twistd starts services before it runs)."""
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """Listen through ``endpoint``; log where, or log that it cannot and stop the reactor."""

    def __init__(self, endpoint: Any, description: str, what: str, reactor: Any) -> None:
        self.endpoint = endpoint
        self.description = description
        self.what = what
        self.reactor = reactor

    def listen(self, factory: Any) -> "Deferred[Any]":
        """Listen with ``factory``; the port, or ``None`` when it cannot listen (reported here)."""

        def listening(port: Any) -> Any:
            log.info("{what} listening on {endpoint}", what=self.what, endpoint=self.description)
            return port

        def failed(failure: Failure) -> None:
            log.critical(
                "{what} cannot listen on {endpoint}: {reason}; stopping",
                what=self.what,
                endpoint=self.description,
                reason=failure.getErrorMessage(),
            )
            _stop_reactor(self.reactor)

        d: Deferred[Any] = self.endpoint.listen(factory)
        return d.addCallbacks(listening, failed)


class Listener(StreamServerEndpointService):
    """
    A server on an endpoint description for the life of the node, named
    ``what``; it logs where it listens, and if it cannot, logs a critical
    line and stops the reactor.

    :ivar description: the endpoint description (``tcp:8060:interface=...``).
    :ivar what: what listens there, for the logs (``control API``, ...).
    """

    def __init__(self, description: str, factory: Any, what: str, reactor: Any = None) -> None:
        from twisted.internet.endpoints import serverFromString

        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        endpoint = _ReportingEndpoint(serverFromString(reactor, description), description, what, reactor)
        super().__init__(endpoint, factory)
        self.description = description
        self.what = what
        self.setName(what)


class NodeService(MultiService):
    """
    The service tree of a node run by twistd: the :class:`~dmq.service.DMQService`
    (:attr:`dmq`, named ``dmq``), the control, metrics and manhole
    :class:`Listener` services, and the process's
    :class:`~dmq.heap.IdleCollector` (named ``collector``).  If the SIP listeners fail at start the
    reactor stops.
    """

    def __init__(self, dmq: Any, config: NodeConfig, reactor: Any = None) -> None:
        super().__init__()
        self.dmq = dmq
        self.config = config
        self.reactor = reactor if reactor is not None else dmq.reactor
        dmq.setName("dmq")
        dmq.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802
        """Warn about risky settings, start the node; stop the reactor if it cannot listen."""
        if self.config.ping_interval < KAMAILIO_MIN_PING_INTERVAL:
            log.warn(
                "ping_interval {seconds} is below Kamailio's minimum of {minimum}; Kamailio nodes of this "
                "cluster ping every {minimum} s at the most",
                seconds=self.config.ping_interval,
                minimum=KAMAILIO_MIN_PING_INTERVAL,
            )
        open_transports = self.config.open_transports()
        if open_transports:
            log.warn(
                "listening on {host} ({transports}) with neither an allow list nor mutual TLS "
                "(tls_verify_client): any host that reaches it can add nodes to the cluster and reach its peers",
                host=self.config.listen_host,
                transports=", ".join(t.upper() for t in open_transports),
            )
        super().startService()

        def failed(failure: Failure) -> None:
            log.critical("the DMQ node cannot listen: {reason}; stopping", reason=failure.getErrorMessage())
            _stop_reactor(self.reactor)

        self.dmq.when_listening().addErrback(failed)


def build_node(config: NodeConfig, reactor: Any = None, probe: bool = True) -> NodeService:
    """
    Build the service tree of ``config``; nothing listens until it starts.

    :param probe: check first that no port is in use (:func:`check_ports`).
    :raises usage.UsageError: for a port in use, or a setting the service or
        a peer refuses.
    """
    if probe:
        check_ports(config.probes)
    from dmq.service import DMQService

    try:
        dmq = DMQService(reactor=reactor, **config.service_kwargs())
    except ConfigurationError as e:
        raise usage.UsageError(str(e)) from None
    node = NodeService(dmq, config, reactor)
    if config.collect_when_idle:
        from dmq.heap import IdleCollector

        collector = IdleCollector(dmq.reactor, linger=dmq.transactions.completed_servers.lifetime)
        collector.setName("collector")
        collector.setServiceParent(node)

    if config.htables:
        from dmq.peers.htable import HTablePeer

        kwargs: dict[str, Any] = {"tables": list(config.htables)}
        if config.htable_persist is not None:
            kwargs["persist_dir"] = config.htable_persist
        try:
            peer = HTablePeer(**kwargs)
        except (ValueError, TypeError) as e:
            raise usage.UsageError(f"{config.origins.get('htable', '--htable')}: {e}") from None
        dmq.register_peer(peer)

    if config.dialog:
        from dmq.peers.dialog import DialogPeer

        try:
            dialog = DialogPeer(
                config.dialog_hash_size, config.dialog_profiles_with_value, config.dialog_profiles_no_value
            )
        except ConfigurationError as e:
            raise usage.UsageError(f"{config.origins.get('dialog', '--dialog')}: {e}") from None
        dmq.register_peer(dialog)

    if config.usrloc:
        from dmq.peers.usrloc import UsrlocPeer

        dmq.register_peer(UsrlocPeer(persist_dir=config.usrloc_persist))

    resources = []
    if config.metrics is not None:
        from dmq.metrics import MetricsResource, make_registry

        resources.append((b"metrics", MetricsResource(make_registry(dmq))))
    if config.control is not None:
        from dmq.control import ControlAPI, make_site

        shared = config.metrics == config.control
        site = make_site(ControlAPI(dmq), config.control_token, resources if shared else ())
        what = "control API and metrics" if shared else "control API"
        Listener(config.control, site, what, reactor).setServiceParent(node)
        if shared:
            resources = []
    if resources:
        from dmq.control import make_site

        Listener(config.metrics or "", make_site(None, None, resources), "metrics", reactor).setServiceParent(node)
    if config.manhole is not None:
        from dmq.manhole import make_manhole_factory, manhole_namespace

        try:
            factory = make_manhole_factory(
                manhole_namespace(dmq),
                config.manhole_protocol,
                user=config.manhole_user,
                password=config.manhole_password,
                keys_dir=config.manhole_keys,
            )
        except ImportError as e:
            raise usage.UsageError(f"{config.origins['manhole']}: needs twisted.conch (pip install 'txdmq[conch]'): {e}") from None
        except (ValueError, OSError) as e:
            raise usage.UsageError(f"{config.origins['manhole']}: {e}") from None
        Listener(config.manhole, factory, f"{config.manhole_protocol} manhole", reactor).setServiceParent(node)
    return node


def makeService(options: Options) -> NodeService:  # noqa: N802
    """
    The service of ``twistd dmq``.  A problem found here (a port in use, a
    setting refused) ends the process with a one-line message and status 1,
    before anything listens.
    """
    assert options.config is not None, "parseOptions() first"
    try:
        return build_node(options.config)
    except usage.UsageError as e:
        raise SystemExit(f"twistd dmq: {e}") from None
