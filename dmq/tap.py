"""
``twistd dmq``: run a DMQ node.

The options are named after Kamailio's ``dmq`` modparams (``--server-address``
is ``server_address``, ...) and mean the same; the others (listeners, SIP
timers, the control API, the manhole, metrics, bundled peers) follow the same
spelling.  ``--config node.toml`` reads the same settings from a TOML file
whose keys are the modparam names; an option given on the command line
overrides the file (a repeatable option given on the command line replaces
the file's list).  ``docs/operations.md`` describes every setting.

Settings are checked in :meth:`Options.postOptions`; a bad one is a
``UsageError`` naming the option (or the TOML key and file) and the reason.
:func:`makeService` then checks what only the machine can tell (a port in
use, an htable spec the peer refuses) before anything listens, and builds the
service tree: the :class:`~dmq.service.DMQService`, the control API, the
metrics endpoint and the manhole.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from dmq.errors import ConfigurationError
from dmq.node import Node, NodeListError, server_address_uri
from dmq.peer import is_channel_name
from dmq.sip.transaction import T1, T2, T4
from dmq.sip.transport import TLSSettings
from dmq.sip.uri import SIPURI, SIPParseError

__all__ = [
    "Options",
    "NodeConfig",
    "NodeService",
    "SETTINGS",
    "build_node",
    "check_ports",
    "makeService",
]

log = Logger()

LOOPBACK = "127.0.0.1"
KAMAILIO_MIN_PING_INTERVAL = 5
"""Kamailio raises a smaller ``ping_interval`` to this; dmq accepts 1 and up."""


@dataclass(frozen=True)
class Setting:
    """
    One setting: its TOML key (the modparam name), its option (the key with
    dashes), its kind, default and help.

    Kinds: ``str``, ``int``, ``ms`` (an integer of milliseconds), ``bool``
    (0/1, yes/no, true/false, on/off on the command line; a TOML boolean or
    0/1), ``list`` (a repeatable option; a TOML string or array of strings),
    ``path`` (a file or folder; relative paths in a TOML file are relative
    to the file's folder).
    """

    key: str
    kind: str
    default: Any
    help: str
    cli: bool = True
    minimum: Optional[int] = None

    @property
    def option(self) -> str:
        """The long option, ``--`` not included."""
        return self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    # Kamailio's dmq modparams
    Setting("server_address", "str", "sip:127.0.0.1:5060",
            "This node's DMQ address as other nodes reach it: sip:HOST:PORT[;transport=tcp|tls]."),
    Setting("server_socket", "str", None,
            "The local address to listen on and send from: [udp:|tcp:|tls:]HOST[:PORT] "
            "(default: the host of --server-address; the port, if given, must be that of --server-address)."),
    Setting("notification_address", "list", [],
            "A node to join the cluster through (sip:HOST:PORT); repeatable."),
    Setting("notification_channel", "str", "notification_peer",
            "The channel of node-list messages."),
    Setting("multi_notify", "bool", False,
            "1: every address of the notification address's host name (SRV, A, AAAA) becomes a seed."),
    Setting("ping_interval", "int", 60,
            "Seconds between pings of every node; at least 1 (Kamailio raises values below 5 to 5).",
            minimum=1),
    Setting("remove_inactive", "bool", True,
            "1: a node that stops answering becomes disabled and is then removed; 0: it only becomes not_active."),
    Setting("fail_count_enabled", "bool", False,
            "1: count timeouts per node and move it by the thresholds below (Kamailio 6.1)."),
    Setting("fail_count_threshold_not_active", "int", 0,
            "With fail counting: active -> not_active when the count exceeds this.", minimum=0),
    Setting("fail_count_threshold_disabled", "int", 1,
            "With fail counting: not_active -> disabled when the count exceeds this.", minimum=0),
    Setting("init_with_single", "bool", False,
            "1: run the peers' start-up sync also when no other node answers (a single node)."),
    # listeners and SIP timers
    Setting("udp", "bool", True, "1: listen on UDP (the port of --server-address)."),
    Setting("tcp", "bool", False, "1: also listen on TCP on the same port (on anyway for ;transport=tcp)."),
    Setting("tls_port", "int", None,
            "The TLS port (default: the --server-address port for ;transport=tls, else that port + 1).",
            minimum=1),
    Setting("tls_certificate", "path", None, "PEM certificate (chain) of this node; turns TLS on."),
    Setting("tls_private_key", "path", None, "PEM private key (default: in the certificate file)."),
    Setting("tls_ca_list", "path", None, "PEM file of the CAs that other nodes' certificates must chain to."),
    Setting("tls_verify_client", "bool", False, "1: require and verify client certificates (mutual TLS)."),
    Setting("tls_verify_server", "bool", True, "0: do not verify the certificate and name of nodes connected to."),
    Setting("udp_max_size", "int", 32000,
            "The largest datagram sent, in bytes (Kamailio 5.8+ drops 32767 and up); a larger message goes "
            "over TCP when --tcp is on, else it is refused with an error.", minimum=2048),
    Setting("t1", "ms", int(T1 * 1000), "SIP timer T1 in milliseconds (a request times out after 64*T1).", minimum=1),
    Setting("t2", "ms", int(T2 * 1000), "SIP timer T2 in milliseconds.", minimum=1),
    Setting("t4", "ms", int(T4 * 1000), "SIP timer T4 in milliseconds.", minimum=1),
    Setting("allow", "list", [],
            "Serve requests only from this network (CIDR or address); repeatable (default: from anyone)."),
    # operations
    Setting("control", "str", f"tcp:8060:interface={LOOPBACK}",
            "Endpoint of the JSON-RPC control API (POST /RPC), or none. A bare port or an endpoint "
            "without interface= listens on 127.0.0.1."),
    Setting("control_token_file", "path", None,
            "File holding a bearer token that control requests must present."),
    Setting("control_token", "str", None, "The bearer token itself (config file only).", cli=False),
    Setting("metrics", "str", None,
            "Endpoint serving Prometheus metrics at /metrics (loopback unless interface= says otherwise); "
            "the same endpoint as --control shares its HTTP server."),
    Setting("manhole", "str", None, "Endpoint of the manhole console (loopback only)."),
    Setting("manhole_protocol", "str", "ssh", "ssh or telnet."),
    Setting("manhole_keys", "path", None,
            "SSH manhole: folder with the host key (made on first start) and authorized_keys."),
    Setting("manhole_user", "str", "admin", "User name to log in to the manhole as."),
    Setting("manhole_password_file", "path", None, "File holding the manhole password."),
    Setting("manhole_password", "str", None, "The manhole password itself (config file only).", cli=False),
    # bundled peers
    Setting("htable", "list", [], "Replicate a Kamailio-compatible hash table: NAME[:expire=SECS]; repeatable."),
    Setting("htable_persist", "path", None, "Folder where the htable peer keeps its tables across restarts."),
)

_BY_KEY = {s.key: s for s in SETTINGS}

KAMAILIO_ONLY = {
    "num_workers": "Kamailio's worker processes; a dmq node is one process",
    "worker_usleep": "Kamailio's worker polling; a dmq node has no workers",
    "event_callback": "a Kamailio KEMI callback; use DMQService.add_event_listener",
    "sl_send": "Kamailio's stateless replies; dmq answers statefully",
}
"""Kamailio modparams that mean nothing here, refused with the reason."""

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
_DISABLED = {"", "none", "off", "no"}


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
    checked :class:`NodeConfig`.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a Kamailio-compatible DMQ node. Options are named after Kamailio's dmq modparams; "
        "--config FILE reads the same settings from TOML (keys = modparam names, e.g. "
        "server_address, notification_address, ping_interval) and the command line overrides it."
    )
    optParameters = [["config", "c", None, "TOML file with the settings (keys = modparam names)."]] + [
        [s.option, None, None, _help(s)] for s in SETTINGS if s.cli and s.kind != "list"
    ]

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

    def postOptions(self) -> None:  # noqa: N802
        """Merge defaults, the config file and the command line; check every setting."""
        self.config = resolve(self)


# -- reading values ------------------------------------------------------------------


@dataclass
class _Value:
    value: Any
    where: str
    base: Optional[Path] = None


def _label(setting: Setting, toml: Optional[Path]) -> str:
    return f"{setting.key} in {toml}" if toml is not None else f"--{setting.option}"


def _read_toml(path: str) -> tuple[dict[str, Any], Path]:
    where = Path(path)
    try:
        with open(where, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config {path}: cannot read it ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path}: not valid TOML ({e})") from None
    for key in data:
        if key in _BY_KEY:
            continue
        if key in KAMAILIO_ONLY:
            raise usage.UsageError(f"{key} in {path}: not supported ({KAMAILIO_ONLY[key]})")
        close = difflib.get_close_matches(key, list(_BY_KEY), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise usage.UsageError(f"{key} in {path}: unknown setting{hint}")
    return data, where


def _gather(options: Options) -> dict[str, _Value]:
    toml: dict[str, Any] = {}
    toml_path: Optional[Path] = None
    if options["config"]:
        toml, toml_path = _read_toml(options["config"])
    values: dict[str, _Value] = {}
    for setting in SETTINGS:
        if setting.kind == "list" and options.lists[setting.key]:
            values[setting.key] = _Value(list(options.lists[setting.key]), f"--{setting.option}")
        elif setting.kind != "list" and setting.cli and options[setting.option] is not None:
            values[setting.key] = _Value(options[setting.option], f"--{setting.option}")
        elif setting.key in toml:
            values[setting.key] = _Value(toml[setting.key], _label(setting, toml_path), toml_path.parent if toml_path else None)
        else:
            values[setting.key] = _Value(setting.default, f"--{setting.option}" if setting.cli else setting.key)
    return values


def _convert(setting: Setting, item: _Value) -> Any:
    value, where = item.value, item.where
    if value is None:
        return None
    kind = setting.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise usage.UsageError(f"{where}: expected 0 or 1, got {value!r}")
    if kind in ("int", "ms"):
        if isinstance(value, bool):
            raise usage.UsageError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise usage.UsageError(f"{where}: expected an integer, got {item.value!r}") from None
        if not isinstance(value, int):
            raise usage.UsageError(f"{where}: expected an integer, got {value!r}")
        if setting.minimum is not None and value < setting.minimum:
            raise usage.UsageError(f"{where}: must be at least {setting.minimum}, got {value}")
        return value
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise usage.UsageError(f"{where}: expected a string or a list of strings, got {value!r}")
        return list(value)
    if not isinstance(value, str):
        raise usage.UsageError(f"{where}: expected a string, got {value!r}")
    if kind == "path":
        if not value:
            return None
        path = Path(value).expanduser()
        if item.base is not None and not path.is_absolute():
            path = item.base / path
        return str(path)
    return value


# -- the checked configuration ---------------------------------------------------------


@dataclass(frozen=True)
class PortProbe:
    """A port this node will listen on, checked before anything listens."""

    where: str
    protocol: str
    host: str
    port: int


@dataclass
class NodeConfig:
    """Every setting, checked: what :func:`build_node` builds from."""

    server_address: str = "sip:127.0.0.1:5060"
    listen: Optional[str] = None
    notification_addresses: list[str] = field(default_factory=list)
    notification_channel: str = "notification_peer"
    multi_notify: bool = False
    ping_interval: int = 60
    remove_inactive: bool = True
    fail_count_enabled: bool = False
    fail_count_threshold_not_active: int = 0
    fail_count_threshold_disabled: int = 1
    init_with_single: bool = False
    udp: bool = True
    tcp: bool = False
    tls: Optional[TLSSettings] = None
    tls_port: Optional[int] = None
    t1: float = T1
    t2: float = T2
    t4: float = T4
    udp_max_size: int = 32000
    allow: list[str] = field(default_factory=list)
    control: Optional[str] = None
    control_token: Optional[str] = None
    metrics: Optional[str] = None
    manhole: Optional[str] = None
    manhole_protocol: str = "ssh"
    manhole_user: str = "admin"
    manhole_password: Optional[str] = None
    manhole_keys: Optional[str] = None
    htables: list[str] = field(default_factory=list)
    htable_persist: Optional[str] = None
    probes: list[PortProbe] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)

    def service_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~dmq.service.DMQService`."""
        return {
            "server_address": self.server_address,
            "notification_addresses": list(self.notification_addresses),
            "notification_channel": self.notification_channel,
            "ping_interval": self.ping_interval,
            "remove_inactive": self.remove_inactive,
            "fail_count_enabled": self.fail_count_enabled,
            "fail_count_threshold_not_active": self.fail_count_threshold_not_active,
            "fail_count_threshold_disabled": self.fail_count_threshold_disabled,
            "init_with_single": self.init_with_single,
            "multi_notify": self.multi_notify,
            "listen": self.listen,
            "udp": self.udp,
            "tcp": self.tcp,
            "tls": self.tls,
            "tls_port": self.tls_port,
            "t1": self.t1,
            "t2": self.t2,
            "t4": self.t4,
            "udp_max_size": self.udp_max_size,
            "allow": list(self.allow) or None,
        }


def _split_endpoint(description: str) -> list[str]:
    """Split an endpoint description on colons not escaped with a backslash (escapes removed)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _endpoint(value: Optional[str], where: str, loopback_only: bool = False) -> tuple[Optional[str], Optional[PortProbe]]:
    """
    Check a server endpoint description and put it on loopback when it
    names no interface.

    :returns: the description to listen with (``None`` when disabled) and the port to probe.
    """
    if value is None or value.strip().lower() in _DISABLED:
        return None, None
    value = value.strip()
    if value.isdigit():
        value = f"tcp:{value}"
    parts = _split_endpoint(value)
    kind = parts[0].lower()
    probe = None
    if loopback_only and kind not in ("tcp", "tcp6", "unix"):
        raise usage.UsageError(f"{where} {value}: the manhole takes a tcp:, tcp6: or unix: endpoint")
    if kind in ("tcp", "tcp6", "ssl"):
        positional = [p for p in parts[1:] if "=" not in p]
        named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if not positional:
            raise usage.UsageError(f"{where} {value}: no port")
        try:
            port = int(positional[0])
        except ValueError:
            raise usage.UsageError(f"{where} {value}: bad port {positional[0]!r}") from None
        if not 0 <= port <= 65535:
            raise usage.UsageError(f"{where} {value}: port {port} out of range")
        interface = named.get("interface")
        if interface is None:
            interface = "::1" if kind == "tcp6" else LOOPBACK
            value += ":interface=" + interface.replace(":", "\\:")
        if loopback_only and not _is_loopback(interface):
            raise usage.UsageError(f"{where} {value}: the manhole listens on loopback only, not on {interface}")
        if port:
            probe = PortProbe(f"{where} {value}", "tcp", interface, port)
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, value)
    except Exception as e:
        raise usage.UsageError(f"{where} {value}: not a usable endpoint ({e})") from None
    return value, probe


def _read_secret(path: str, where: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise usage.UsageError(f"{where} {path}: cannot read it ({e.strerror})") from None
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise usage.UsageError(f"{where} {path}: the file is empty")
    return secret


_HTABLE = re.compile(r"^[A-Za-z0-9_.\-]+(:.*)?$")


def resolve(options: Options) -> NodeConfig:
    """
    Merge defaults, the TOML file and the command line of parsed ``options``
    into a checked :class:`NodeConfig`.

    :raises usage.UsageError: naming the first bad setting and why.
    """
    raw = _gather(options)
    v: dict[str, Any] = {key: _convert(_BY_KEY[key], item) for key, item in raw.items()}
    where = {key: item.where for key, item in raw.items()}
    config = NodeConfig(origins=where)

    # server_address
    try:
        uri = server_address_uri(v["server_address"])
    except ConfigurationError as e:
        raise usage.UsageError(f"{where['server_address']} {v['server_address']}: {e}") from None
    config.server_address = str(uri)
    listen_host = uri.host.strip("[]")

    # server_socket
    if v["server_socket"]:
        text = v["server_socket"]
        match = re.match(r"^(?:(udp|tcp|tls):)?(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d+))?$", text, re.I)
        if match is None:
            raise usage.UsageError(f"{where['server_socket']} {text}: expected [udp:|tcp:|tls:]HOST[:PORT]")
        proto, host, port = match.groups()
        if proto and proto.lower() != uri.transport:
            raise usage.UsageError(
                f"{where['server_socket']} {text}: protocol {proto.lower()} differs from the "
                f"transport of server_address ({uri.transport})"
            )
        if port and int(port) != uri.port:
            raise usage.UsageError(
                f"{where['server_socket']} {text}: port {port} differs from the server_address port "
                f"{uri.port} (a node listens on the port of its address)"
            )
        listen_host = host.strip("[]")
        config.listen = listen_host

    # seeds
    seeds = []
    for seed in v["notification_address"]:
        try:
            node = Node.from_uri(seed)
        except NodeListError as e:
            raise usage.UsageError(f"{where['notification_address']} {seed}: {e}") from None
        if node.transport not in ("udp", "tcp", "tls"):
            raise usage.UsageError(f"{where['notification_address']} {seed}: transport {node.transport} is not supported")
        seeds.append(seed)
    config.notification_addresses = seeds
    if v["multi_notify"] and len(seeds) > 1:
        raise usage.UsageError(
            f"{where['multi_notify']}: takes one notification address, not {len(seeds)} "
            "(Kamailio: with several notification addresses multi_notify must be off)"
        )
    if not is_channel_name(v["notification_channel"]):
        raise usage.UsageError(f"{where['notification_channel']} {v['notification_channel']!r}: not a channel name")
    config.notification_channel = v["notification_channel"]

    for key in (
        "multi_notify",
        "ping_interval",
        "remove_inactive",
        "fail_count_enabled",
        "fail_count_threshold_not_active",
        "fail_count_threshold_disabled",
        "init_with_single",
        "udp",
        "tcp",
        "udp_max_size",
    ):
        setattr(config, key, v[key])

    # timers
    config.t1, config.t2, config.t4 = v["t1"] / 1000, v["t2"] / 1000, v["t4"] / 1000
    if v["udp_max_size"] > 65507:
        raise usage.UsageError(f"{where['udp_max_size']}: at most 65507 bytes fit a datagram, got {v['udp_max_size']}")
    if v["t2"] < v["t1"]:
        raise usage.UsageError(f"{where['t2']}: T2 ({v['t2']} ms) must not be below T1 ({v['t1']} ms)")

    # TLS
    if uri.transport == "tls" and not v["tls_certificate"]:
        raise usage.UsageError(f"{where['server_address']} {uri}: ;transport=tls needs --tls-certificate")
    if v["tls_certificate"]:
        settings = TLSSettings(
            certificate=v["tls_certificate"],
            private_key=v["tls_private_key"] or v["tls_certificate"],
            ca=v["tls_ca_list"],
            verify_client=v["tls_verify_client"],
            verify_server=v["tls_verify_server"],
        )
        if settings.verify_client and not settings.ca:
            raise usage.UsageError(f"{where['tls_verify_client']}: verifying clients needs --tls-ca-list")
        try:
            settings.server_options()
        except OSError as e:
            raise usage.UsageError(f"{where['tls_certificate']}: cannot read {e.filename} ({e.strerror})") from None
        except Exception as e:
            raise usage.UsageError(f"{where['tls_certificate']}: cannot load the certificate, key or CA ({e})") from None
        config.tls = settings
        config.tls_port = v["tls_port"]
    elif v["tls_port"] is not None or v["tls_private_key"] or v["tls_ca_list"] or v["tls_verify_client"]:
        given = next(k for k in ("tls_port", "tls_private_key", "tls_ca_list", "tls_verify_client") if v[k])
        raise usage.UsageError(f"{where[given]}: TLS needs --tls-certificate")
    if v["tls_port"] is not None and v["tls_port"] > 65535:
        raise usage.UsageError(f"{where['tls_port']}: port {v['tls_port']} out of range")
    if not (config.udp or config.tcp or config.tls or uri.transport != "udp"):
        raise usage.UsageError(f"{where['udp']}: with UDP off, turn TCP or TLS on")

    # allow
    for network in v["allow"]:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            raise usage.UsageError(f"{where['allow']} {network}: {e}") from None
    config.allow = v["allow"]

    # SIP ports to probe
    port = uri.port or 5060  # server_address_uri made sure there is one
    if config.udp:
        config.probes.append(PortProbe(f"{where['server_address']} {uri}", "udp", listen_host, port))
    if config.tcp or uri.transport == "tcp":
        config.probes.append(PortProbe(f"{where['server_address']} {uri}", "tcp", listen_host, port))
    if config.tls is not None:
        tls_port = config.tls_port or (port if uri.transport == "tls" else port + 1)
        config.probes.append(PortProbe(f"{where['tls_port']} {tls_port}", "tcp", listen_host, tls_port))

    # control API and metrics
    config.control, probe = _endpoint(v["control"], where["control"])
    if probe:
        config.probes.append(probe)
    token_where = where["control_token"]
    if v["control_token_file"]:
        token_where = where["control_token_file"]
        config.control_token = _read_secret(v["control_token_file"], token_where)
    elif v["control_token"] is not None:
        if not v["control_token"].strip():
            raise usage.UsageError(f"{token_where}: empty")
        config.control_token = v["control_token"].strip()
    if config.control_token is not None and not all(33 <= ord(c) < 127 for c in config.control_token):
        raise usage.UsageError(f"{token_where}: a token is printable ASCII without spaces")
    config.metrics, probe = _endpoint(v["metrics"], where["metrics"])
    if probe and config.metrics != config.control:
        config.probes.append(probe)

    # manhole
    config.manhole, probe = _endpoint(v["manhole"], where["manhole"], loopback_only=True)
    if probe:
        config.probes.append(probe)
    if config.manhole is not None:
        protocol = v["manhole_protocol"].lower()
        if protocol not in ("ssh", "telnet"):
            raise usage.UsageError(f"{where['manhole_protocol']} {v['manhole_protocol']}: ssh or telnet")
        config.manhole_protocol = protocol
        if not v["manhole_user"]:
            raise usage.UsageError(f"{where['manhole_user']}: empty")
        config.manhole_user = v["manhole_user"]
        if v["manhole_password_file"]:
            config.manhole_password = _read_secret(v["manhole_password_file"], where["manhole_password_file"])
        elif v["manhole_password"]:
            config.manhole_password = v["manhole_password"]
        if protocol == "telnet" and not config.manhole_password:
            raise usage.UsageError(f"{where['manhole']}: a telnet manhole needs --manhole-password-file")
        if protocol == "ssh":
            if not v["manhole_keys"]:
                raise usage.UsageError(f"{where['manhole']}: an SSH manhole needs --manhole-keys DIR")
            keys = Path(v["manhole_keys"])
            if keys.exists() and not keys.is_dir():
                raise usage.UsageError(f"{where['manhole_keys']} {keys}: not a folder")
            if not config.manhole_password and not (keys / "authorized_keys").is_file():
                raise usage.UsageError(
                    f"{where['manhole_keys']} {keys}: no authorized_keys file there and no "
                    "--manhole-password-file: nobody could log in"
                )
            config.manhole_keys = str(keys)

    # bundled peers
    for spec in v["htable"]:
        if not _HTABLE.match(spec):
            raise usage.UsageError(f"{where['htable']} {spec!r}: expected NAME[:expire=SECS]")
    config.htables = v["htable"]
    if v["htable_persist"]:
        folder = Path(v["htable_persist"])
        if folder.exists() and not folder.is_dir():
            raise usage.UsageError(f"{where['htable_persist']} {folder}: not a folder")
        config.htable_persist = str(folder)
    return config


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


class _Listener(Service):
    """Listen on a server endpoint description with a factory; a failure stops the node."""

    def __init__(self, description: str, factory: Any, what: str, reactor: Any = None) -> None:
        self.description = description
        self.factory = factory
        self.what = what
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:  # noqa: N802
        """Start listening."""
        super().startService()
        from twisted.internet.endpoints import serverFromString

        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        d = serverFromString(reactor, self.description).listen(self.factory)

        def listening(port: Any) -> None:
            self.port = port
            log.info("{what} listening on {endpoint}", what=self.what, endpoint=self.description)

        def failed(failure: Any) -> None:
            log.critical(
                "{what} cannot listen on {endpoint}: {reason}; stopping",
                what=self.what,
                endpoint=self.description,
                reason=failure.getErrorMessage(),
            )
            if reactor.running:
                reactor.stop()

        d.addCallbacks(listening, failed)

    def stopService(self) -> Any:  # noqa: N802
        """Stop listening."""
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class NodeService(MultiService):
    """
    The service tree of a node run by twistd: the :class:`~dmq.service.DMQService`
    (:attr:`dmq`, named ``dmq``) and the control, metrics and manhole
    listeners.  If the SIP listeners fail at start the reactor stops.
    """

    def __init__(self, dmq: Any, config: NodeConfig, reactor: Any = None) -> None:
        super().__init__()
        self.dmq = dmq
        self.config = config
        self.reactor = reactor if reactor is not None else dmq.reactor
        dmq.setName("dmq")
        dmq.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802
        """Start the node; stop the reactor if it cannot listen."""
        if self.config.ping_interval < KAMAILIO_MIN_PING_INTERVAL:
            log.warn(
                "ping_interval {seconds} is below Kamailio's minimum of {minimum}; Kamailio nodes of this "
                "cluster ping every {minimum} s at the most",
                seconds=self.config.ping_interval,
                minimum=KAMAILIO_MIN_PING_INTERVAL,
            )
        super().startService()

        def failed(failure: Any) -> None:
            log.critical("the DMQ node cannot listen: {reason}; stopping", reason=failure.getErrorMessage())
            if self.reactor.running:
                self.reactor.stop()

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

    resources = []
    if config.metrics is not None:
        from dmq.metrics import MetricsResource, make_registry

        resources.append((b"metrics", MetricsResource(make_registry(dmq))))
    if config.control is not None:
        from dmq.control import ControlAPI, make_site

        shared = config.metrics == config.control
        site = make_site(ControlAPI(dmq), config.control_token, resources if shared else ())
        what = "control API and metrics" if shared else "control API"
        _Listener(config.control, site, what, reactor).setServiceParent(node)
        if shared:
            resources = []
    if resources:
        from dmq.control import make_site

        _Listener(config.metrics or "", make_site(None, None, resources), "metrics", reactor).setServiceParent(node)
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
        _Listener(config.manhole, factory, f"{config.manhole_protocol} manhole", reactor).setServiceParent(node)
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
