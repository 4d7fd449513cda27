"""
The settings of a dmq node, as data: one :class:`Setting` per option, each
with its TOML key, kind, default, help and the Kamailio modparam it mirrors.

This table is what the ``twistd dmq`` options, the TOML file and the
configuration reference are made from; it checks nothing (:mod:`dmq.config`
does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from dmq.nodelist import MAX_NEW_PER_LIST, MAX_NODES
from dmq.sip.address import UDP_MAX_SIZE
from dmq.sip.transaction import T1, T2, T4

__all__ = ["KAMAILIO_ONLY", "LOOPBACK", "Modparam", "SETTINGS", "Setting"]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Modparam:
    """
    The Kamailio module parameter a setting mirrors: the same setting in Kamailio's configuration.

    :ivar module: the Kamailio module (``dmq``, ``tls``, ``tm``, ``htable``, ``dmq_usrloc``).
    :ivar name: the parameter's name in that module.
    :ivar since: the first Kamailio release that has it, when later than 5.6.
    """

    module: str
    name: str
    since: Optional[str] = None

    def __str__(self) -> str:
        text = f'modparam("{self.module}", "{self.name}")'
        return f"{text} (Kamailio {self.since})" if self.since else text


@dataclass(frozen=True)
class Setting:
    """
    One setting: its TOML key, its option (the key with dashes), its kind,
    default and help, and the Kamailio modparam it mirrors (``None`` when
    Kamailio has none).

    Kinds: ``str``, ``int``, ``ms`` (an integer of milliseconds), ``bool``
    (0/1, yes/no, true/false, on/off on the command line; a TOML boolean or
    0/1), ``flag`` (a bool whose option takes no value: ``--dialog``), ``list`` (a repeatable option; a TOML string or array of strings),
    ``path`` (a file or folder; relative paths in a TOML file are relative
    to the file's folder).
    """

    key: str
    kind: str
    default: Any
    help: str
    cli: bool = True
    minimum: Optional[int] = None
    modparam: Optional[Modparam] = None

    @property
    def option(self) -> str:
        """The long option, ``--`` not included."""
        return self.key.replace("_", "-")


def _dmq(name: str, since: Optional[str] = None) -> Modparam:
    return Modparam("dmq", name, since)


def _tls(name: str) -> Modparam:
    return Modparam("tls", name)


SETTINGS: tuple[Setting, ...] = (
    # Kamailio's dmq modparams
    Setting("server_address", "str", "sip:127.0.0.1:5060",
            "This node's DMQ address as other nodes reach it: sip:HOST:PORT[;transport=tcp|tls].",
            modparam=_dmq("server_address")),
    Setting("server_socket", "str", None,
            "The local address to listen on and send from: [udp:|tcp:|tls:]HOST[:PORT] "
            "(default: the host of --server-address; the port, if given, must be that of --server-address).",
            modparam=_dmq("server_socket")),
    Setting("notification_address", "list", [],
            "A node to join the cluster through (sip:HOST:PORT); repeatable.", modparam=_dmq("notification_address")),
    Setting("notification_channel", "str", "notification_peer",
            "The channel of node-list messages.", modparam=_dmq("notification_channel")),
    Setting("multi_notify", "bool", False,
            "1: every address of the notification address's host name (SRV, A, AAAA) becomes a seed.",
            modparam=_dmq("multi_notify")),
    Setting("seed_refresh", "int", 10,
            "Resolve notification addresses given by host name again every this many ping intervals "
            "(also before every join attempt and whenever the node is alone; 0: only then).", minimum=0),
    Setting("max_nodes", "int", MAX_NODES,
            "The most nodes the node list holds (this node included); a received list adds none beyond it.",
            minimum=2),
    Setting("max_nodes_per_list", "int", MAX_NEW_PER_LIST,
            "The most nodes one received node list may add; the rest of its new nodes are refused and counted.",
            minimum=1),
    Setting("ping_interval", "int", 60,
            "Seconds between pings of every node; at least 1 (Kamailio raises values below 5 to 5).",
            minimum=1, modparam=_dmq("ping_interval")),
    Setting("remove_inactive", "bool", True,
            "1: a node that stops answering becomes disabled and is then removed; 0: it only becomes not_active.",
            modparam=_dmq("remove_inactive", "6.0")),
    Setting("fail_count_enabled", "bool", False,
            "1: count timeouts per node and move it by the thresholds below (Kamailio 6.1).",
            modparam=_dmq("fail_count_enabled", "6.1")),
    Setting("fail_count_threshold_not_active", "int", 0,
            "With fail counting: active -> not_active when the count exceeds this.", minimum=0,
            modparam=_dmq("fail_count_threshold_not_active", "6.1")),
    Setting("fail_count_threshold_disabled", "int", 1,
            "With fail counting: not_active -> disabled when the count exceeds this.", minimum=0,
            modparam=_dmq("fail_count_threshold_disabled", "6.1")),
    Setting("init_with_single", "bool", False,
            "1: run the peers' start-up sync also when no other node answers (a single node)."),
    # listeners and SIP timers
    Setting("udp", "bool", True, "1: listen on UDP (the port of --server-address)."),
    Setting("tcp", "bool", False, "1: also listen on TCP on the same port (on anyway for ;transport=tcp)."),
    Setting("tls_port", "int", None,
            "The TLS port (default: the --server-address port for ;transport=tls, else that port + 1).",
            minimum=1),
    Setting("tls_certificate", "path", None, "PEM certificate (chain) of this node; turns TLS on.",
            modparam=_tls("certificate")),
    Setting("tls_private_key", "path", None, "PEM private key (default: in the certificate file).",
            modparam=_tls("private_key")),
    Setting("tls_ca_list", "path", None, "PEM file of the CAs that other nodes' certificates must chain to.",
            modparam=_tls("ca_list")),
    Setting("tls_verify_client", "bool", False, "1: require and verify client certificates (mutual TLS).",
            modparam=_tls("require_certificate")),
    Setting("tls_verify_server", "bool", True, "0: do not verify the certificate and name of nodes connected to.",
            modparam=_tls("verify_certificate")),
    Setting("udp_max_size", "int", UDP_MAX_SIZE,
            "The largest datagram sent, in bytes (Kamailio 5.8+ drops 32767 and up); a larger message goes "
            "over TCP when --tcp is on, else it is refused with an error.", minimum=2048),
    # Kamailio's tm retr_timer1 is only where retransmissions start; a request there times out at fr_timer.
    Setting("t1", "ms", int(T1 * 1000), "SIP timer T1 in milliseconds (a request times out after 64*T1).", minimum=1),
    Setting("t2", "ms", int(T2 * 1000), "SIP timer T2 in milliseconds.", minimum=1,
            modparam=Modparam("tm", "retr_timer2")),
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
    Setting("collect_when_idle", "bool", True,
            "1: run one full garbage collection when the process goes quiet after a burst of work, so that "
            "the burst's garbage does not stay resident; 0: leave collections to the interpreter."),
    # bundled peers
    Setting("htable", "list", [], "Replicate a Kamailio-compatible hash table: NAME[:expire=SECS]; repeatable.",
            modparam=Modparam("htable", "htable")),
    Setting("htable_persist", "path", None, "Folder where the htable peer keeps its tables across restarts."),
    # the dialog peer
    Setting("dialog", "flag", False, "Share dialogs (calls) with Kamailio's dialog module (channel dialog).",
            modparam=Modparam("dialog", "enable_dmq")),
    Setting("dialog_hash_size", "int", 4096,
            "The dialog table size; every node of the cluster needs the same (a power of 2).",
            minimum=1, modparam=Modparam("dialog", "hash_size")),
    Setting("dialog_profiles_with_value", "list", [],
            "Dialog profiles with values: NAME[;NAME...]; repeatable.", modparam=Modparam("dialog", "profiles_with_value")),
    Setting("dialog_profiles_no_value", "list", [],
            "Dialog profiles without values: NAME[;NAME...]; repeatable.", modparam=Modparam("dialog", "profiles_no_value")),
    # the usrloc peer
    Setting("usrloc", "flag", False,
            "Share the location table (registrations) with Kamailio's dmq_usrloc on channel usrloc.",
            modparam=Modparam("dmq_usrloc", "enable")),
    Setting("usrloc_persist", "path", None, "Folder where the usrloc peer keeps its contacts across restarts."),
)

KAMAILIO_ONLY = {
    "num_workers": "Kamailio's worker processes; a dmq node is one process",
    "worker_usleep": "Kamailio's worker polling; a dmq node has no workers",
    "event_callback": "a Kamailio KEMI callback; use DMQService.add_event_listener",
    "sl_send": "Kamailio's stateless replies; dmq answers statefully",
}
"""Kamailio modparams that mean nothing here, refused with the reason."""
