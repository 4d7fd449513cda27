"""The settings table and its Kamailio modparams, resolve() without twistd, and which SIP listeners are open to anyone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
from twisted.python.usage import UsageError

import dmq.tap
from dmq import config as config_module
from dmq import settings as settings_module
from dmq.config import NodeConfig, resolve
from dmq.settings import KAMAILIO_ONLY, SETTINGS, Modparam
from dmq.sip.transport import TLSSettings

BY_KEY = {s.key: s for s in SETTINGS}

KAMAILIO_61_DMQ_MODPARAMS = {
    "num_workers", "ping_interval", "server_address", "server_socket", "notification_address",
    "notification_channel", "multi_notify", "worker_usleep", "remove_inactive", "fail_count_enabled",
    "fail_count_threshold_not_active", "fail_count_threshold_disabled",
}
"""The parameters of Kamailio 6.1.4's dmq module (read from its dmq.so)."""


# -- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, module, name, since",
    [
        ("server_address", "dmq", "server_address", None),
        ("notification_address", "dmq", "notification_address", None),
        ("remove_inactive", "dmq", "remove_inactive", "6.0"),
        ("fail_count_enabled", "dmq", "fail_count_enabled", "6.1"),
        ("tls_certificate", "tls", "certificate", None),
        ("tls_verify_client", "tls", "require_certificate", None),
        ("t2", "tm", "retr_timer2", None),
        ("htable", "htable", "htable", None),
        ("usrloc", "dmq_usrloc", "enable", None),
    ],
)
def test_settings_name_the_modparam_they_mirror(key: str, module: str, name: str, since: Optional[str]) -> None:
    """A setting records the Kamailio module parameter it mirrors, and the release that brought it."""
    assert BY_KEY[key].modparam == Modparam(module, name, since)


@pytest.mark.parametrize("key", ["t1", "t4", "init_with_single", "udp", "tcp", "allow", "control", "manhole"])
def test_settings_without_a_kamailio_counterpart(key: str) -> None:
    """Settings Kamailio has nothing like (T1 included: its tm times out at fr_timer) say so with None."""
    assert BY_KEY[key].modparam is None


def test_every_kamailio_61_dmq_modparam_is_mirrored_or_refused() -> None:
    """Each dmq modparam of Kamailio 6.1 is a setting of the same TOML key, or refused with a reason."""
    mirrored = {s.modparam.name for s in SETTINGS if s.modparam is not None and s.modparam.module == "dmq"}
    assert KAMAILIO_61_DMQ_MODPARAMS <= mirrored | set(KAMAILIO_ONLY)
    for setting in SETTINGS:
        if setting.modparam is not None and setting.modparam.module == "dmq":
            assert setting.key == setting.modparam.name


def test_modparam_reads_as_kamailio_config() -> None:
    """A modparam prints as the line of a Kamailio config, with the release when it is newer than 5.6."""
    assert str(BY_KEY["server_address"].modparam) == 'modparam("dmq", "server_address")'
    assert str(BY_KEY["fail_count_enabled"].modparam) == 'modparam("dmq", "fail_count_enabled") (Kamailio 6.1)'


def test_table_keys_are_unique_and_its_defaults_are_the_defaults() -> None:
    """Every key appears once, and an empty command line gives the table's defaults."""
    assert len(BY_KEY) == len(SETTINGS)
    defaults = resolve({})
    assert defaults.ping_interval == BY_KEY["ping_interval"].default
    assert defaults.udp_max_size == BY_KEY["udp_max_size"].default
    assert defaults.t2 * 1000 == BY_KEY["t2"].default


def test_old_import_paths_name_the_same_objects() -> None:
    """dmq.tap still offers the names that moved: the very objects of dmq.settings and dmq.config."""
    assert dmq.tap.SETTINGS is settings_module.SETTINGS
    assert dmq.tap.NodeConfig is config_module.NodeConfig
    assert dmq.tap.PortProbe is config_module.PortProbe


# -- resolve() without twistd -----------------------------------------------------------------------


def test_resolve_takes_settings_by_key() -> None:
    """resolve() takes the command line as a dict by TOML key; None and [] count as not given."""
    config = resolve({"ping_interval": "7", "notification_address": ["sip:127.0.0.1:5071"], "tcp": None, "htable": []})
    assert (config.ping_interval, config.notification_addresses, config.tcp, config.htables) == (
        7, ["sip:127.0.0.1:5071"], False, [])
    assert config.origins["ping_interval"] == "--ping-interval"


def test_resolve_merges_a_toml_file(tmp_path: Path) -> None:
    """Given settings win over the file; the origin of each value names where it came from."""
    path = tmp_path / "node.toml"
    path.write_text('ping_interval = 10\ntcp = true\nallow = ["10.0.0.0/8"]\n')
    config = resolve({"ping_interval": "20", "allow": ["192.0.2.0/24"]}, str(path))
    assert (config.ping_interval, config.tcp, config.allow) == (20, True, ["192.0.2.0/24"])
    assert config.origins["tcp"] == f"tcp in {path}"


def test_resolve_ignores_file_only_keys_given_as_options() -> None:
    """A key with no option (control_token) is not taken from the command-line dict."""
    assert resolve({"control_token": "abc"}).control_token is None


@pytest.mark.parametrize(
    "given, message",
    [
        ({"t1": "1000", "t2": "500"}, "--t2: T2 (500 ms) must not be below T1 (1000 ms)"),
        ({"udp_max_size": "70000"}, "--udp-max-size: at most 65507 bytes fit a datagram, got 70000"),
        ({"server_socket": "tcp:127.0.0.1"},
         "--server-socket tcp:127.0.0.1: protocol tcp differs from the transport of server_address (udp)"),
        ({"notification_channel": "a b"}, "--notification-channel 'a b': not a channel name"),
        ({"udp": "0"}, "--udp: with UDP off, turn TCP or TLS on"),
        ({"manhole": "2222"}, "--manhole: an SSH manhole needs --manhole-keys DIR"),
    ],
)
def test_resolve_errors_name_the_option(given: dict[str, Any], message: str) -> None:
    """Each group's check fails with the option and the reason, word for word."""
    with pytest.raises(UsageError) as info:
        resolve(given)
    assert str(info.value) == message


# -- who can reach the node ----------------------------------------------------------------------------


def tls(verify_client: bool) -> TLSSettings:
    """TLS settings (the files are never read here)."""
    return TLSSettings(certificate="node.pem", private_key="node.pem", ca="ca.pem", verify_client=verify_client)


@pytest.mark.parametrize(
    "settings, open_transports",
    [
        ({}, []),
        ({"server_address": "sip:[::1]:5060"}, []),
        ({"server_address": "sip:localhost:5060"}, []),
        ({"server_address": "sip:10.0.0.1:5060"}, ["udp"]),
        ({"server_address": "sip:node1.example:5060"}, ["udp"]),
        ({"server_address": "sip:10.0.0.1:5060;transport=tcp"}, ["udp", "tcp"]),
        ({"listen": "0.0.0.0"}, ["udp"]),
        ({"server_address": "sip:10.0.0.1:5060", "allow": ["10.0.0.0/8"]}, []),
        ({"server_address": "sip:10.0.0.1:5060", "udp": False, "tls": tls(True)}, []),
        ({"server_address": "sip:10.0.0.1:5060", "tls": tls(True)}, ["udp"]),
        ({"server_address": "sip:10.0.0.1:5060", "udp": False, "tcp": True, "tls": tls(False)}, ["tcp", "tls"]),
    ],
)
def test_open_transports(settings: dict[str, Any], open_transports: list[str]) -> None:
    """Off loopback and without an allow list, every SIP listener but a mutual-TLS one is open to anyone."""
    assert NodeConfig(**settings).open_transports() == open_transports
