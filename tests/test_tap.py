"""``twistd dmq``: options, the TOML config file, every UsageError, the service tree, the plugin as installed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.usage import UsageError

from dmq import DMQService
from dmq.control import _QuietSite
from dmq.heap import IdleCollector
from dmq.tap import SETTINGS, Listener, NodeConfig, NodeService, Options, PortProbe, build_node, check_ports, makeService
from dmq.testing import FakeSIPTransport
from tests.certs import CertificateAuthority
from tests.helpers import free_port

TWISTD = str(Path(sys.executable).with_name("twistd"))


def parse(*args: str) -> NodeConfig:
    """Parse a ``twistd dmq`` command line; the checked config."""
    options = Options()
    options.parseOptions(list(args))
    assert options.config is not None
    return options.config


def usage_error(*args: str) -> str:
    """The message of the UsageError a command line raises."""
    with pytest.raises(UsageError) as info:
        parse(*args)
    return str(info.value)


@pytest.fixture
def busy_udp() -> Iterator[int]:
    """A UDP port held by another socket for the length of the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def busy_tcp() -> Iterator[int]:
    """A TCP port listened on by another socket for the length of the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


# -- options ------------------------------------------------------------------------------------


def test_defaults() -> None:
    """Without options: Kamailio's modparam defaults, sip:127.0.0.1:5060 over UDP, control API on loopback 8060."""
    config = parse()
    assert config.server_address == "sip:127.0.0.1:5060"
    assert config.notification_addresses == []
    assert config.notification_channel == "notification_peer"
    assert (config.ping_interval, config.remove_inactive, config.multi_notify, config.init_with_single) == (60, True, False, False)
    assert (config.fail_count_enabled, config.fail_count_threshold_not_active, config.fail_count_threshold_disabled) == (False, 0, 1)
    assert (config.udp, config.tcp, config.tls) == (True, False, None)
    assert (config.t1, config.t2, config.t4) == (0.5, 4.0, 5.0)
    assert config.control == "tcp:8060:interface=127.0.0.1"
    assert (config.metrics, config.manhole, config.control_token) == (None, None, None)
    assert config.probes == [
        PortProbe("--server-address sip:127.0.0.1:5060", "udp", "127.0.0.1", 5060),
        PortProbe("--control tcp:8060:interface=127.0.0.1", "tcp", "127.0.0.1", 8060),
    ]


def test_every_dmq_option() -> None:
    """Each modparam option, the listeners and the timers land in the service's keyword arguments."""
    config = parse(
        "--server-address", "sip:127.0.0.1:5070;transport=tcp",
        "--server-socket", "tcp:127.0.0.1:5070",
        "--notification-address", "sip:127.0.0.1:5071",
        "--notification-address", "sip:127.0.0.1:5072;transport=tcp",
        "--notification-channel", "peers",
        "--ping-interval", "7",
        "--remove-inactive", "0",
        "--fail-count-enabled", "1",
        "--fail-count-threshold-not-active", "2",
        "--fail-count-threshold-disabled", "4",
        "--init-with-single", "yes",
        "--udp", "off",
        "--tcp", "true",
        "--t1", "250", "--t2", "2000", "--t4", "3000",
        "--udp-max-size", "16000",
        "--seed-refresh", "3",
        "--max-nodes", "1024", "--max-nodes-per-list", "300",
        "--allow", "127.0.0.0/8", "--allow", "::1",
    )
    assert config.service_kwargs() == {
        "server_address": "sip:127.0.0.1:5070;transport=tcp",
        "notification_addresses": ["sip:127.0.0.1:5071", "sip:127.0.0.1:5072;transport=tcp"],
        "notification_channel": "peers",
        "ping_interval": 7,
        "remove_inactive": False,
        "fail_count_enabled": True,
        "fail_count_threshold_not_active": 2,
        "fail_count_threshold_disabled": 4,
        "init_with_single": True,
        "multi_notify": False,
        "seed_refresh": 3,
        "max_nodes": 1024,
        "max_nodes_per_list": 300,
        "listen": "127.0.0.1",
        "udp": False,
        "tcp": True,
        "tls": None,
        "tls_port": None,
        "t1": 0.25,
        "t2": 2.0,
        "t4": 3.0,
        "udp_max_size": 16000,
        "allow": ["127.0.0.0/8", "::1"],
    }
    assert [p.protocol for p in config.probes] == ["tcp", "tcp"]


@pytest.mark.parametrize("text, value", [("1", True), ("yes", True), ("ON", True), ("true", True), ("0", False), ("no", False), ("off", False), ("False", False)])
def test_boolean_spellings(text: str, value: bool) -> None:
    """A boolean option takes 0/1 like the modparam, and yes/no, true/false, on/off."""
    assert parse("--multi-notify", text).multi_notify is value


@pytest.mark.parametrize(
    "given, listened",
    [
        ("8061", "tcp:8061:interface=127.0.0.1"),
        ("tcp:8061", "tcp:8061:interface=127.0.0.1"),
        ("tcp6:8061", "tcp6:8061:interface=\\:\\:1"),
        ("tcp:8061:interface=0.0.0.0", "tcp:8061:interface=0.0.0.0"),
        ("none", None),
        ("", None),
    ],
)
def test_control_endpoint_defaults_to_loopback(given: str, listened: Any) -> None:
    """A bare port or an endpoint without interface= listens on loopback; none turns the API off."""
    assert parse("--control", given).control == listened


def test_metrics_sharing_the_control_endpoint_is_probed_once() -> None:
    """Metrics on the control API's endpoint share its server: one port to check."""
    config = parse("--control", "8061", "--metrics", "tcp:8061")
    assert config.metrics == config.control == "tcp:8061:interface=127.0.0.1"
    assert [p.port for p in config.probes if p.protocol == "tcp"] == [8061]


def test_server_socket_and_ipv6() -> None:
    """--server-socket sets the listen address; an IPv6 server address listens on its unbracketed host."""
    assert parse("--server-socket", "udp:127.0.0.2").listen == "127.0.0.2"
    config = parse("--server-address", "sip:[::1]:5070", "--control", "none")
    assert config.probes == [PortProbe("--server-address sip:[::1]:5070", "udp", "::1", 5070)]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--server-address", "nonsense"), ("--server-address nonsense", "not a SIP URI")),
        (("--server-address", "sips:127.0.0.1:5061"), ("--server-address", "use sip:")),
        (("--udp-max-size", "70000"), ("--udp-max-size", "at most 65507")),
        (("--udp-max-size", "100"), ("--udp-max-size", "at least 2048")),
        (("--server-address", "sip:127.0.0.1"), ("--server-address", "a port is needed")),
        (("--server-address", "sip:127.0.0.1:5060;transport=sctp"), ("--server-address", "sctp is not supported")),
        (("--server-socket", "udp:127.0.0.1:x"), ("--server-socket", "[udp:|tcp:|tls:]HOST[:PORT]")),
        (("--server-socket", "tcp:127.0.0.1"), ("--server-socket", "protocol tcp differs")),
        (("--server-socket", "udp:127.0.0.1:5099"), ("--server-socket", "port 5099 differs")),
        (("--notification-address", "127.0.0.1:5061"), ("--notification-address 127.0.0.1:5061",)),
        (("--notification-address", "sip:127.0.0.1:5061;transport=ws"), ("--notification-address", "transport ws")),
        (("--multi-notify", "1", "--notification-address", "sip:a.example:5060", "--notification-address", "sip:b.example:5060"),
         ("--multi-notify", "one notification address")),
        (("--notification-channel", "a b"), ("--notification-channel", "not a channel name")),
        (("--ping-interval", "0"), ("--ping-interval", "at least 1")),
        (("--ping-interval", "soon"), ("--ping-interval", "expected an integer")),
        (("--remove-inactive", "maybe"), ("--remove-inactive", "expected 0 or 1")),
        (("--fail-count-threshold-disabled", "-1"), ("--fail-count-threshold-disabled", "at least 0")),
        (("--t1", "0"), ("--t1", "at least 1")),
        (("--t1", "1000", "--t2", "500"), ("--t2", "must not be below T1")),
        (("--server-address", "sip:127.0.0.1:5061;transport=tls"), ("--server-address", "needs --tls-certificate")),
        (("--tls-port", "5071"), ("--tls-port", "TLS needs --tls-certificate")),
        (("--tls-certificate", "/nonexistent/cert.pem"), ("--tls-certificate", "cannot read")),
        (("--udp", "0"), ("--udp", "turn TCP or TLS on")),
        (("--allow", "10.0.0.0/33"), ("--allow 10.0.0.0/33",)),
        (("--control", "tcp:eighty"), ("--control tcp:eighty", "bad port")),
        (("--control", "tcp:70000"), ("--control", "out of range")),
        (("--control", "tcp"), ("--control", "no port")),
        (("--control", "bogus:1"), ("--control bogus:1", "not a usable endpoint")),
        (("--metrics", "tcp:x"), ("--metrics", "bad port")),
        (("--manhole", "tcp:2222:interface=0.0.0.0", "--manhole-password-file", __file__),
         ("--manhole", "loopback only")),
        (("--manhole", "ssl:2222"), ("--manhole", "tcp:, tcp6: or unix:")),
        (("--manhole", "2222", "--manhole-protocol", "telnet"), ("--manhole", "needs --manhole-password-file")),
        (("--manhole", "2222"), ("--manhole", "needs --manhole-keys")),
        (("--manhole", "2222", "--manhole-protocol", "rlogin", "--manhole-password-file", __file__),
         ("--manhole-protocol rlogin", "ssh or telnet")),
        (("--manhole", "2222", "--manhole-protocol", "telnet", "--manhole-password-file", "/nonexistent"),
         ("--manhole-password-file /nonexistent", "cannot read")),
        (("--control-token-file", "/nonexistent"), ("--control-token-file /nonexistent", "cannot read")),
        (("--htable", "bad name"), ("--htable 'bad name'", "NAME[:expire=SECS]")),
        (("--htable-persist", __file__), ("--htable-persist", "not a folder")),
        (("--config", "/nonexistent/node.toml"), ("--config /nonexistent/node.toml", "cannot read")),
    ],
)
def test_usage_errors(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    """Each bad setting is a UsageError naming the option and the reason."""
    message = usage_error(*args)
    for fragment in fragments:
        assert fragment in message


def test_manhole_settings(tmp_path: Path) -> None:
    """A telnet manhole reads its password file; an SSH one needs authorized_keys or a password."""
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    config = parse("--manhole", "2222", "--manhole-protocol", "telnet", "--manhole-password-file", str(password))
    assert (config.manhole, config.manhole_protocol, config.manhole_password, config.manhole_user) == (
        "tcp:2222:interface=127.0.0.1", "telnet", "s3cret", "admin")
    keys = tmp_path / "keys"
    keys.mkdir()
    assert "nobody could log in" in usage_error("--manhole", "2222", "--manhole-keys", str(keys))
    (keys / "authorized_keys").write_text("")
    assert parse("--manhole", "unix:/tmp/x.sock", "--manhole-keys", str(keys)).manhole_keys == str(keys)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in usage_error("--manhole", "2222", "--manhole-protocol", "telnet", "--manhole-password-file", str(empty))


def test_control_token_file(tmp_path: Path) -> None:
    """--control-token-file reads the token's first line; a token with spaces is refused."""
    token = tmp_path / "token"
    token.write_text("abc123\nignored\n")
    assert parse("--control-token-file", str(token)).control_token == "abc123"
    token.write_text("two words\n")
    assert "printable ASCII without spaces" in usage_error("--control-token-file", str(token))


def test_tls_settings(tmp_path: Path) -> None:
    """A certificate turns TLS on (port + 1 by default); verifying clients needs a CA; a bad PEM is refused."""
    ca = CertificateAuthority(str(tmp_path))
    issued = ca.issue("node", ips=("127.0.0.1",))
    config = parse("--tls-certificate", issued.certificate, "--tls-private-key", issued.private_key,
                   "--tls-ca-list", ca.path, "--tls-verify-client", "1", "--control", "none")
    assert config.tls is not None
    assert (config.tls.certificate, config.tls.private_key, config.tls.ca, config.tls.verify_client) == (
        issued.certificate, issued.private_key, ca.path, True)
    assert config.probes[-1] == PortProbe("--tls-port 5061", "tcp", "127.0.0.1", 5061)
    tls_node = parse("--server-address", "sip:127.0.0.1:5071;transport=tls", "--tls-certificate", issued.certificate,
                     "--tls-private-key", issued.private_key, "--control", "none")
    assert tls_node.probes[-1].port == 5071
    assert "needs --tls-ca-list" in usage_error("--tls-certificate", issued.certificate, "--tls-private-key",
                                                issued.private_key, "--tls-verify-client", "1")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert "cannot load" in usage_error("--tls-certificate", str(bad))


# -- the TOML file -----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return str(path)


def test_toml_settings(tmp_path: Path) -> None:
    """The config file's keys are the modparam names; notification_address may be a string or a list."""
    path = write(tmp_path, """
server_address = "sip:127.0.0.1:5080"
notification_address = ["sip:127.0.0.1:5081", "sip:127.0.0.1:5082"]
notification_channel = "peers"
ping_interval = 10
remove_inactive = 0
fail_count_enabled = true
fail_count_threshold_not_active = 1
fail_count_threshold_disabled = 3
init_with_single = 1
tcp = true
t1 = 300
allow = "127.0.0.0/8"
control = "8090"
control_token = "tok"
metrics = "tcp:9090"
htable = ["t", "u:expire=60"]
""")
    config = parse("--config", path)
    assert config.server_address == "sip:127.0.0.1:5080"
    assert config.notification_addresses == ["sip:127.0.0.1:5081", "sip:127.0.0.1:5082"]
    assert (config.notification_channel, config.ping_interval, config.remove_inactive) == ("peers", 10, False)
    assert (config.fail_count_enabled, config.fail_count_threshold_not_active, config.fail_count_threshold_disabled) == (True, 1, 3)
    assert (config.init_with_single, config.tcp, config.t1, config.allow) == (True, True, 0.3, ["127.0.0.0/8"])
    assert (config.control, config.control_token, config.metrics) == (
        "tcp:8090:interface=127.0.0.1", "tok", "tcp:9090:interface=127.0.0.1")
    assert config.htables == ["t", "u:expire=60"]
    assert parse("--config", write(tmp_path, 'notification_address = "sip:127.0.0.1:5081"')).notification_addresses == [
        "sip:127.0.0.1:5081"]


def test_command_line_overrides_toml(tmp_path: Path) -> None:
    """An option on the command line wins over the file; a repeated option replaces the file's list."""
    path = write(tmp_path, """
ping_interval = 10
remove_inactive = 1
notification_address = ["sip:127.0.0.1:5081", "sip:127.0.0.1:5082"]
server_address = "sip:127.0.0.1:5080"
""")
    config = parse("--config", path, "--ping-interval", "60", "--remove-inactive", "0",
                   "--notification-address", "sip:127.0.0.1:5099")
    assert (config.ping_interval, config.remove_inactive) == (60, False)
    assert config.notification_addresses == ["sip:127.0.0.1:5099"]
    assert config.server_address == "sip:127.0.0.1:5080"


def test_toml_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    """A relative path in the file is taken from the file's folder, not the working directory."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("s3cret")
    path = write(tmp_path, 'manhole = "2222"\nmanhole_protocol = "telnet"\nmanhole_password_file = "secrets/pw"\n')
    assert parse("--config", path).manhole_password == "s3cret"


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("ping_intervall = 5", ("ping_intervall in ", "unknown setting", "did you mean ping_interval?")),
        ("colour = 'blue'", ("colour in ", "unknown setting")),
        ("num_workers = 4", ("num_workers in ", "not supported", "one process")),
        ("ping_interval = 'often'", ("ping_interval in ", "expected an integer")),
        ("ping_interval = 0", ("ping_interval in ", "at least 1")),
        ("remove_inactive = 2", ("remove_inactive in ", "expected 0 or 1")),
        ("notification_address = [1, 2]", ("notification_address in ", "list of strings")),
        ("server_address = 5060", ("server_address in ", "expected a string")),
        ("server_address = 'sip:127.0.0.1'", ("server_address in ", "a port is needed")),
        ("ping_interval = ", ("--config", "not valid TOML")),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    """A bad file, an unknown or Kamailio-only key, a wrong type: UsageError naming the key and the file."""
    message = usage_error("--config", write(tmp_path, text))
    for fragment in fragments:
        assert fragment in message


# -- building and starting ---------------------------------------------------------------------


def test_build_node_tree(tmp_path: Path) -> None:
    """The tree: the DMQService (named dmq) configured as asked, the control API and metrics on one shared listener."""
    port = free_port("udp+tcp")
    config = parse("--server-address", f"sip:127.0.0.1:{port}", "--notification-address", "sip:127.0.0.1:5999",
                   "--ping-interval", "9", "--fail-count-enabled", "1", "--control", "tcp:0", "--metrics", "tcp:0")
    node = build_node(config, reactor=Clock())
    assert IService.providedBy(node)
    dmq = node.getServiceNamed("dmq")
    assert isinstance(dmq, DMQService) and dmq is node.dmq
    assert str(dmq.server_address) == f"sip:127.0.0.1:{port}"
    assert [str(u) for u in dmq.notification.seed_uris] == ["sip:127.0.0.1:5999"]
    assert dmq.notification.ping_interval == 9
    assert dmq.policy.fail_count_enabled
    listeners = [s for s in node if isinstance(s, Listener)]
    assert [(s.description, s.what) for s in listeners] == [("tcp:0:interface=127.0.0.1", "control API and metrics")]
    assert isinstance(listeners[0].factory, _QuietSite)
    assert set(listeners[0].factory.resource.children) == {b"RPC", b"metrics", b"", b"status.json"}


def test_build_node_separate_metrics_and_manhole(tmp_path: Path) -> None:
    """Metrics on their own endpoint get their own site; a manhole gets a listener of its protocol."""
    password = tmp_path / "pw"
    password.write_text("pw")
    config = parse("--server-address", f"sip:127.0.0.1:{free_port('udp+tcp')}", "--control", "none", "--metrics", "tcp:0",
                   "--manhole", "tcp:0", "--manhole-protocol", "telnet", "--manhole-password-file", str(password))
    node = build_node(config, reactor=Clock())
    listeners = [s for s in node if isinstance(s, Listener)]
    assert [s.what for s in listeners] == ["metrics", "telnet manhole"]
    assert set(listeners[0].factory.resource.children) == {b"metrics"}


def test_build_node_collects_when_idle_unless_told_not_to() -> None:
    """One IdleCollector on the node's reactor, lingering 64×T1, by default; --collect-when-idle 0 leaves it out."""
    clock = Clock()
    node = build_node(parse("--server-address", f"sip:127.0.0.1:{free_port('udp+tcp')}", "--control", "none",
                            "--t1", "1000"), reactor=clock)
    collector = node.getServiceNamed("collector")
    assert isinstance(collector, IdleCollector) and collector.clock is clock
    assert collector.linger == 64 * 1.0  # the answers of a node with this T1 are kept that long
    assert [s for s in node if s is not node.dmq] == [collector]
    node = build_node(parse("--server-address", f"sip:127.0.0.1:{free_port('udp+tcp')}", "--control", "none",
                            "--collect-when-idle", "0"), reactor=clock)
    assert [s for s in node] == [node.dmq]


def test_check_ports_finds_ports_in_use(busy_udp: int, busy_tcp: int) -> None:
    """A UDP or TCP port in use is a UsageError naming the setting, protocol and port; free ports pass."""
    with pytest.raises(UsageError) as info:
        check_ports([PortProbe("--server-address sip:127.0.0.1:x", "udp", "127.0.0.1", busy_udp)])
    assert str(info.value) == f"--server-address sip:127.0.0.1:x: cannot listen on UDP 127.0.0.1 port {busy_udp}: in use"
    with pytest.raises(UsageError) as info:
        check_ports([PortProbe("--control tcp:x", "tcp", "127.0.0.1", busy_tcp)])
    assert f"--control tcp:x: cannot listen on TCP 127.0.0.1 port {busy_tcp}: in use" == str(info.value)
    check_ports([PortProbe("x", "udp", "127.0.0.1", free_port("udp+tcp")), PortProbe("y", "tcp", "127.0.0.1", free_port("udp+tcp"))])


def test_make_service_exits_with_a_message_when_a_port_is_in_use(busy_udp: int) -> None:
    """makeService ends with a one-line message (exit status 1) before anything listens."""
    options = Options()
    options.parseOptions(["--server-address", f"sip:127.0.0.1:{busy_udp}", "--control", "none"])
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert str(info.value.code).startswith(f"twistd dmq: --server-address sip:127.0.0.1:{busy_udp}: cannot listen on UDP")


class FailingTransport(FakeSIPTransport):
    """A transport whose listen fails, as when a port is taken between the check and the start."""

    def listen(self) -> Any:
        return defer.fail(OSError("Address already in use"))


class StoppableClock(Clock):
    """A clock that records reactor.stop()."""

    running = True
    stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_node_stops_the_reactor_when_it_cannot_listen() -> None:
    """If the SIP listeners fail at start the node logs it and stops the reactor."""
    clock = StoppableClock()
    dmq = DMQService("sip:127.0.0.1:5060", reactor=clock, transport=FailingTransport())
    node = NodeService(dmq, NodeConfig(), clock)
    node.startService()
    assert clock.stopped
    assert not dmq.running


def test_node_warns_when_anyone_can_reach_it() -> None:
    """Off loopback with neither an allow list nor mutual TLS, the node warns at start that any host can join and reach peers."""
    clock = Clock()
    dmq = DMQService("sip:10.0.0.1:5060", reactor=clock, transport=FakeSIPTransport())
    node = NodeService(dmq, NodeConfig(server_address="sip:10.0.0.1:5060", tcp=True), clock)
    with capturedLogs() as events:
        node.startService()
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warnings == [
        "listening on 10.0.0.1 (UDP, TCP) with neither an allow list nor mutual TLS (tls_verify_client): "
        "any host that reaches it can add nodes to the cluster and reach its peers"
    ]


@pytest.mark.parametrize("args", [(), ("--server-address", "sip:127.0.0.2:5060"), ("--server-socket", "udp:127.0.0.3")])
def test_node_on_loopback_does_not_warn(args: tuple[str, ...]) -> None:
    """A node on a loopback address starts without a warning."""
    clock = Clock()
    config = parse("--control", "none", *args)
    dmq = DMQService(reactor=clock, transport=FakeSIPTransport(), **config.service_kwargs())
    with capturedLogs() as events:
        NodeService(dmq, config, clock).startService()
    assert [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn] == []


def test_node_with_an_allow_list_does_not_warn() -> None:
    """An allow list answers the warning: only those networks are served."""
    config = NodeConfig(server_address="sip:10.0.0.1:5060", allow=["10.0.0.0/8"])
    clock = Clock()
    dmq = DMQService(reactor=clock, transport=FakeSIPTransport(), **config.service_kwargs())
    with capturedLogs() as events:
        NodeService(dmq, config, clock).startService()
    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []


class StoppablePort:
    """A listening port that records stopListening."""

    stopped = False

    def stopListening(self) -> None:  # noqa: N802
        self.stopped = True


class PortReactor(MemoryReactorClock):
    """A reactor whose TCP ports record being stopped, or, with ``refuse``, are all taken."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.ports: list[StoppablePort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:  # noqa: N802
        if self.refuse:
            raise CannotListenError(interface, port, OSError("Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        self.ports.append(StoppablePort())
        return self.ports[-1]


def stopped(listener: Listener) -> list[Any]:
    """Stop ``listener``; what its Deferred fired with."""
    results: list[Any] = []
    listener.stopService().addBoth(results.append)
    return results


def test_listener_listens_and_stops_listening() -> None:
    """A listener listens on its endpoint when started, logs where, and stops listening when stopped."""
    reactor = PortReactor()
    listener = Listener("tcp:8061:interface=127.0.0.1", Factory(), "control API", reactor)
    assert listener.name == "control API"
    with capturedLogs() as events:
        listener.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(8061, "127.0.0.1")]
    assert [formatEvent(e) for e in events] == ["control API listening on tcp:8061:interface=127.0.0.1"]
    assert not reactor.ports[0].stopped
    assert stopped(listener) == [None]
    assert reactor.ports[0].stopped and not listener.running


def test_listener_that_cannot_listen_stops_the_reactor() -> None:
    """A listener that cannot listen logs one critical line naming it and the endpoint, and stops the reactor."""
    reactor = PortReactor(refuse=True)
    reactor.running = True
    listener = Listener("tcp:8061:interface=127.0.0.1", Factory(), "metrics", reactor)
    with capturedLogs() as events:
        listener.startService()
    assert reactor.hasStopped
    critical = [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical]
    assert len(critical) == 1
    assert critical[0].startswith("metrics cannot listen on tcp:8061:interface=127.0.0.1: ")
    assert critical[0].endswith("Address already in use.; stopping")
    assert stopped(listener) == [None]


def test_listener_failing_before_the_reactor_runs_stops_it_once_running() -> None:
    """twistd starts services before the reactor runs: a listener failing then has the reactor stop as it starts."""
    reactor = PortReactor(refuse=True)
    with capturedLogs():
        Listener("tcp:8061", Factory(), "control API", reactor).startService()
    assert not reactor.hasStopped
    assert reactor.whenRunningHooks == [(reactor.stop, (), {})]


# -- the plugin as a user runs it ---------------------------------------------------------------


def run_twistd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([TWISTD, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_twistd_help_lists_every_option(tmp_path: Path) -> None:
    """`twistd dmq --help`, run outside the source folder, finds the plugin and lists every option."""
    result = run_twistd("dmq", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: twistd [options] dmq [options]" in result.stdout
    options = ["--config"] + [f"--{s.option}" for s in SETTINGS if s.cli and s.kind != "flag"]
    flags = [f"--{s.option}" for s in SETTINGS if s.cli and s.kind == "flag"]
    assert len(options) + len(flags) == 45
    for option in options:
        assert f"{option}=" in result.stdout, option
    for flag in flags:
        assert f"{flag} " in result.stdout and f"{flag}=" not in result.stdout, flag


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    """`twistd --help` names dmq among its commands."""
    result = run_twistd("--help", cwd=tmp_path)
    assert any(line.split()[:1] == ["dmq"] for line in result.stdout.splitlines())


def twisted_version() -> tuple[int, int]:
    """The installed Twisted's (major, minor)."""
    import twisted

    major, minor = twisted.__version__.split(".")[:2]
    return int(major), int(minor)


def test_twistd_reports_a_bad_option(tmp_path: Path) -> None:
    """A bad setting stops twistd with status 1 and a last line naming the option and the reason."""
    result = run_twistd("-n", "--pidfile=", "dmq", "--ping-interval", "0", cwd=tmp_path)
    # twistd itself sets the status of a usage error: 1 from Twisted 26.10 on, 0 before (the
    # newest Twisted for PyPy 3.9 is 26.4).
    assert result.returncode == (1 if twisted_version() >= (26, 10) else 0)
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(" -n: --ping-interval: must be at least 1, got 0")  # twistd prefixes its argv[0:2]


def test_twistd_reports_a_port_in_use(tmp_path: Path, busy_udp: int) -> None:
    """A port in use stops twistd with status 1 and one clear line, no traceback, nothing left listening."""
    result = run_twistd("-n", "--pidfile=", "dmq", "--server-address", f"sip:127.0.0.1:{busy_udp}", "--control", "none", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip() == (
        f"twistd dmq: --server-address sip:127.0.0.1:{busy_udp}: cannot listen on UDP 127.0.0.1 port {busy_udp}: in use"
    )
    assert not (tmp_path / "twistd.pid").exists()


def test_a_node_without_tls_leaves_the_tls_library_out(tmp_path: Path) -> None:
    """A twistd dmq node with no TLS setting never loads pyOpenSSL; one with a TLS certificate does."""
    probe = (
        "import sys\n"
        "from twisted.scripts._twistd_unix import ServerOptions\n"
        "options = ServerOptions()\n"
        "options.parseOptions(sys.argv[1:])\n"
        "from dmq.tap import makeService\n"
        "makeService(options.subOptions)\n"
        "from twisted.internet import reactor\n"
        "print(sys.modules.get('OpenSSL') is not None)\n"
    )
    host, port = "127.0.0.1", free_port()
    plain = subprocess.run(
        [sys.executable, "-c", probe, "-n", "dmq", "--server-address", f"sip:{host}:{port}", "--control", "none"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert plain.stdout.strip().splitlines()[-1] == "False", plain.stderr[-2000:]
    from dmq.tap import uses_tls

    assert uses_tls(NodeConfig(control="ssl:8443:privateKey=k.pem"))
    assert not uses_tls(parse())
