"""
From the command line and a TOML file to a checked :class:`NodeConfig`.

:func:`resolve` takes each setting of :data:`dmq.settings.SETTINGS` from the
command line, else the TOML file (``--config``), else its default (a list
given on the command line replaces the file's), converts it to its kind, and
checks the settings group by group: the server address and socket, the
seeds, the timers, TLS, the allow list, the SIP listeners, the control and
metrics endpoints, the manhole, the bundled peers.  A bad value is a
:class:`twisted.python.usage.UsageError` naming the option (or the TOML key
and file) and the reason.  Nothing here listens; :func:`dmq.tap.build_node`
builds the node from the result.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from twisted.python import usage

if sys.version_info >= (3, 11):
    import tomllib
else:  # PyPy 3.9 and 3.10
    import tomli as tomllib

from dmq.errors import ConfigurationError
from dmq.node import Node, NodeListError, server_address_uri
from dmq.nodelist import MAX_NEW_PER_LIST, MAX_NODES
from dmq.peer import is_channel_name
from dmq.settings import KAMAILIO_ONLY, LOOPBACK, SETTINGS, Setting
from dmq.sip.address import UDP_HARD_LIMIT, UDP_MAX_SIZE
from dmq.sip.transaction import T1, T2, T4
from dmq.sip.transport import TLSSettings
from dmq.sip.uri import SIPURI

__all__ = ["NodeConfig", "PortProbe", "resolve"]

_BY_KEY = {s.key: s for s in SETTINGS}
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
_DISABLED = {"", "none", "off", "no"}


# -- reading and merging -------------------------------------------------------------------------


@dataclass
class _Value:
    """A setting's raw value and where it came from (``base``: the TOML file's folder)."""

    value: Any
    where: str
    base: Optional[Path] = None


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


def _gather(given: Mapping[str, Any], config_file: Optional[str]) -> dict[str, _Value]:
    """Each setting's value from the command line, else the TOML file, else its default."""
    toml: dict[str, Any] = {}
    toml_path: Optional[Path] = None
    if config_file:
        toml, toml_path = _read_toml(config_file)
    values: dict[str, _Value] = {}
    for setting in SETTINGS:
        option = f"--{setting.option}"
        if setting.cli and given.get(setting.key) not in (None, []):
            values[setting.key] = _Value(given[setting.key], option)
        elif toml_path is not None and setting.key in toml:
            values[setting.key] = _Value(toml[setting.key], f"{setting.key} in {toml_path}", toml_path.parent)
        else:
            values[setting.key] = _Value(setting.default, option if setting.cli else setting.key)
    return values


def _convert(setting: Setting, item: _Value) -> Any:
    """A raw value as its setting's kind."""
    value, where = item.value, item.where
    if value is None:
        return None
    kind = setting.kind
    if kind in ("bool", "flag"):
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class NodeConfig:
    """Every setting, checked: what :func:`dmq.tap.build_node` builds from."""

    server_address: str = "sip:127.0.0.1:5060"
    listen: Optional[str] = None
    notification_addresses: list[str] = field(default_factory=list)
    notification_channel: str = "notification_peer"
    multi_notify: bool = False
    seed_refresh: int = 10
    max_nodes: int = MAX_NODES
    max_nodes_per_list: int = MAX_NEW_PER_LIST
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
    udp_max_size: int = UDP_MAX_SIZE
    allow: list[str] = field(default_factory=list)
    control: Optional[str] = None
    control_token: Optional[str] = None
    metrics: Optional[str] = None
    manhole: Optional[str] = None
    manhole_protocol: str = "ssh"
    manhole_user: str = "admin"
    manhole_password: Optional[str] = None
    manhole_keys: Optional[str] = None
    collect_when_idle: bool = True
    htables: list[str] = field(default_factory=list)
    htable_persist: Optional[str] = None
    dialog: bool = False
    dialog_hash_size: int = 4096
    dialog_profiles_with_value: list[str] = field(default_factory=list)
    dialog_profiles_no_value: list[str] = field(default_factory=list)
    usrloc: bool = False
    usrloc_persist: Optional[str] = None
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
            "seed_refresh": self.seed_refresh,
            "max_nodes": self.max_nodes,
            "max_nodes_per_list": self.max_nodes_per_list,
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

    @property
    def listen_host(self) -> str:
        """The host the SIP listeners bind: ``listen``, else the host of ``server_address``."""
        return self.listen or SIPURI.parse(self.server_address).host.strip("[]")

    def open_transports(self) -> list[str]:
        """
        The SIP transports on which any host can reach this node: none on
        loopback or with an ``allow`` list; else UDP and TCP when on, and
        TLS unless it verifies client certificates.
        """
        if self.allow or _is_loopback(self.listen_host):
            return []
        transport = SIPURI.parse(self.server_address).transport
        open_ = []
        if self.udp:
            open_.append("udp")
        if self.tcp or transport == "tcp":
            open_.append("tcp")
        if self.tls is not None and not self.tls.verify_client:
            open_.append("tls")
        return open_


# -- the checks, one group of settings each ----------------------------------------------------

_Values = dict[str, Any]
_Origins = dict[str, str]

_SERVER_SOCKET = re.compile(r"^(?:(udp|tcp|tls):)?(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d+))?$", re.I)
_HTABLE = re.compile(r"^[A-Za-z0-9_.\-]+(:.*)?$")
_PLAIN = (
    "multi_notify", "seed_refresh", "max_nodes", "max_nodes_per_list", "ping_interval", "remove_inactive", "fail_count_enabled", "fail_count_threshold_not_active",
    "fail_count_threshold_disabled", "init_with_single", "udp", "tcp", "udp_max_size",
    "collect_when_idle",
)
"""Settings taken as converted, with no check beyond their kind and minimum."""


def _check_server(v: _Values, where: _Origins, config: NodeConfig) -> SIPURI:
    """``server_address`` and ``server_socket``: the node's URI, and the host it listens on."""
    try:
        uri = server_address_uri(v["server_address"])
    except ConfigurationError as e:
        raise usage.UsageError(f"{where['server_address']} {v['server_address']}: {e}") from None
    config.server_address = str(uri)
    text = v["server_socket"]
    if not text:
        return uri
    match = _SERVER_SOCKET.match(text)
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
    config.listen = host.strip("[]")
    return uri


def _check_seeds(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """``notification_address``, ``multi_notify`` and ``notification_channel``."""
    for seed in v["notification_address"]:
        try:
            node = Node.from_uri(seed)
        except NodeListError as e:
            raise usage.UsageError(f"{where['notification_address']} {seed}: {e}") from None
        if node.transport not in ("udp", "tcp", "tls"):
            raise usage.UsageError(f"{where['notification_address']} {seed}: transport {node.transport} is not supported")
    config.notification_addresses = list(v["notification_address"])
    if v["multi_notify"] and len(config.notification_addresses) > 1:
        raise usage.UsageError(
            f"{where['multi_notify']}: takes one notification address, not {len(config.notification_addresses)} "
            "(Kamailio: with several notification addresses multi_notify must be off)"
        )
    if not is_channel_name(v["notification_channel"]):
        raise usage.UsageError(f"{where['notification_channel']} {v['notification_channel']!r}: not a channel name")
    config.notification_channel = v["notification_channel"]


def _check_timers(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """``t1``, ``t2``, ``t4`` (milliseconds to seconds) and ``udp_max_size``."""
    config.t1, config.t2, config.t4 = v["t1"] / 1000, v["t2"] / 1000, v["t4"] / 1000
    if v["udp_max_size"] > UDP_HARD_LIMIT:
        raise usage.UsageError(
            f"{where['udp_max_size']}: at most {UDP_HARD_LIMIT} bytes fit a datagram, got {v['udp_max_size']}"
        )
    if v["t2"] < v["t1"]:
        raise usage.UsageError(f"{where['t2']}: T2 ({v['t2']} ms) must not be below T1 ({v['t1']} ms)")


def _check_tls(v: _Values, where: _Origins, config: NodeConfig, uri: SIPURI) -> None:
    """The ``tls_*`` settings: the files load, and nothing TLS is set without a certificate."""
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


def _check_listeners(where: _Origins, config: NodeConfig, uri: SIPURI) -> None:
    """Some SIP listener is on; the ports of those that are, to probe."""
    if not (config.udp or config.tcp or config.tls or uri.transport != "udp"):
        raise usage.UsageError(f"{where['udp']}: with UDP off, turn TCP or TLS on")
    host, port = config.listen_host, uri.port or 5060  # server_address_uri made sure there is a port
    if config.udp:
        config.probes.append(PortProbe(f"{where['server_address']} {uri}", "udp", host, port))
    if config.tcp or uri.transport == "tcp":
        config.probes.append(PortProbe(f"{where['server_address']} {uri}", "tcp", host, port))
    if config.tls is not None:
        tls_port = config.tls_port or (port if uri.transport == "tls" else port + 1)
        config.probes.append(PortProbe(f"{where['tls_port']} {tls_port}", "tcp", host, tls_port))


def _check_allow(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """``allow``: each entry a network or an address."""
    for network in v["allow"]:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            raise usage.UsageError(f"{where['allow']} {network}: {e}") from None
    config.allow = list(v["allow"])


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
    if kind in ("tcp", "tcp6"):
        return value, probe  # checked above, without loading the reactor or the endpoint parsers
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing makes the endpoint without touching the reactor it is given.
        serverFromString(object(), value)
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


def _check_control(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """``control``, its token, and ``metrics`` (one port to probe when they share the endpoint)."""
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


def _check_manhole(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """``manhole`` and its protocol, user, password and keys: somebody can log in, nobody else."""
    config.manhole, probe = _endpoint(v["manhole"], where["manhole"], loopback_only=True)
    if config.manhole is None:
        return
    if probe:
        config.probes.append(probe)
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


def _persist_folder(v: _Values, where: _Origins, key: str) -> Optional[str]:
    """The folder a ``*_persist`` setting names (it may not exist yet), or ``None``."""
    if not v[key]:
        return None
    folder = Path(v[key])
    if folder.exists() and not folder.is_dir():
        raise usage.UsageError(f"{where[key]} {folder}: not a folder")
    return str(folder)


def _check_peers(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """The bundled peers: ``htable`` specs and ``htable_persist``; ``usrloc`` and ``usrloc_persist``."""
    for spec in v["htable"]:
        if not _HTABLE.match(spec):
            raise usage.UsageError(f"{where['htable']} {spec!r}: expected NAME[:expire=SECS]")
    config.htables = list(v["htable"])
    config.htable_persist = _persist_folder(v, where, "htable_persist")
    config.usrloc = bool(v["usrloc"])
    config.usrloc_persist = _persist_folder(v, where, "usrloc_persist")
    if config.usrloc_persist is not None and not config.usrloc:
        raise usage.UsageError(f"{where['usrloc_persist']}: needs --usrloc (usrloc = true)")


def _check_dialog(v: _Values, where: _Origins, config: NodeConfig) -> None:
    """The dialog peer: ``dialog``, ``dialog_hash_size`` (a power of 2) and the profile names."""
    config.dialog = v["dialog"]
    size = v["dialog_hash_size"]
    if size & (size - 1):
        raise usage.UsageError(f"{where['dialog_hash_size']}: {size} is not a power of 2 (Kamailio would use {1 << (size.bit_length() - 1)})")
    config.dialog_hash_size = size
    for key in ("dialog_profiles_with_value", "dialog_profiles_no_value"):
        for item in v[key]:
            if any(not name.strip() or any(c.isspace() for c in name.strip()) for name in item.split(";")):
                raise usage.UsageError(f"{where[key]} {item!r}: expected NAME[;NAME...]")
        setattr(config, key, list(v[key]))


def resolve(given: Mapping[str, Any], config_file: Optional[str] = None) -> NodeConfig:
    """
    Merge the defaults, the TOML file and the command line into a checked
    :class:`NodeConfig`.

    :param given: the settings given on the command line, by key (a list
        for a repeatable one); ``None`` or an empty list counts as not given.
    :param config_file: the TOML file (``--config``), if any.
    :raises usage.UsageError: naming the first bad setting and why.
    """
    raw = _gather(given, config_file)
    v: _Values = {key: _convert(_BY_KEY[key], item) for key, item in raw.items()}
    where: _Origins = {key: item.where for key, item in raw.items()}
    config = NodeConfig(origins=where)
    uri = _check_server(v, where, config)
    _check_seeds(v, where, config)
    for key in _PLAIN:
        setattr(config, key, v[key])
    _check_timers(v, where, config)
    _check_tls(v, where, config, uri)
    _check_listeners(where, config, uri)
    _check_allow(v, where, config)
    _check_control(v, where, config)
    _check_manhole(v, where, config)
    _check_peers(v, where, config)
    _check_dialog(v, where, config)
    return config
