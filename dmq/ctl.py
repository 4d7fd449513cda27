"""
``dmqctl``: the command line client of a node's control API.

::

    dmqctl [--url URL] [--token TOKEN] [--json] COMMAND ...

    list-nodes                      the node list (dmq.list_nodes)
    add URI                         add a node (dmq.add)
    remove URI                      remove a node (dmq.remove)
    change-status URI STATUS        active, not_active or disabled (dmq.change_status)
    send CHANNEL NODE BODY          send a message to one node (dmq.send_message)
    bcast CHANNEL BODY              send a message to every active node (dmq.bcast_message)
    stats                           counters (dmq.stats)
    htable get|sets|seti|setex|delete|dump|list|sync ...   Kamailio's htable.* methods
    dlg list                        the dialogs (dlg.list)
    dlg profile PROFILE [VALUE]     dialogs in a profile (dlg.profile_get_size)
    ul show AOR | dump [--brief] | rm AOR | rm-contact AOR CONTACT   Kamailio's ul.* methods
    call METHOD [PARAM ...]         any method; PARAMs are JSON when they parse as JSON
                                    (s:TEXT forces a string, i:NUMBER an integer, as kamcmd)

Output is a table or plain text by default and the JSON ``result`` with
``--json``.  Exit status: 0 done, 1 the node answered with an error, 2 bad
usage, 3 the node could not be reached or gave no JSON-RPC answer.

The URL defaults to ``$DMQCTL_URL`` or ``http://127.0.0.1:8060/RPC``; the
token to ``$DMQCTL_TOKEN``.  It is a plain blocking client (urllib): no
reactor is needed to call a node.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import IO, Any, Optional, Sequence

__all__ = ["main", "RPCClient", "CallFailed", "Unreachable", "DEFAULT_URL", "format_dialogs"]

DEFAULT_URL = "http://127.0.0.1:8060/RPC"
DEFAULT_TIMEOUT = 60.0
"""Seconds to wait for an answer: more than a SIP transaction's 32 s, so a send to a silent node ends in its 408."""

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class Unreachable(Exception):
    """The node could not be reached, refused the request, or gave no JSON-RPC answer."""


class CallFailed(Exception):
    """The node answered with a JSON-RPC error."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message


class RPCClient:
    """
    A blocking JSON-RPC 2.0 client over HTTP POST.

    :param url: the ``/RPC`` URL.
    :param token: a bearer token, if the node wants one.
    :param timeout: seconds to wait for an answer.
    """

    def __init__(self, url: str = DEFAULT_URL, token: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        """
        Call ``method`` with positional ``params``; return its result.

        :raises CallFailed: for an error answer.
        :raises Unreachable: when there is no usable answer.
        """
        payload: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params:
            payload["params"] = list(params)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, json.dumps(payload).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise Unreachable(f"{self.url} refused the request: a valid token is needed (--token)") from None
            raise Unreachable(f"{self.url} answered HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            raise Unreachable(f"cannot reach {self.url}: {reason}") from None
        except (OSError, ValueError) as e:
            raise Unreachable(f"cannot reach {self.url}: {e}") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise Unreachable(f"{self.url} did not answer JSON") from None
        if not isinstance(answer, dict):
            raise Unreachable(f"{self.url} gave no JSON-RPC answer")
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {}
            raise CallFailed(error.get("code"), str(error.get("message", answer["error"])))
        if "result" not in answer:
            raise Unreachable(f"{self.url} gave no JSON-RPC answer")
        return answer["result"]


# -- parameters -------------------------------------------------------------------


def parse_param(text: str) -> Any:
    """
    A ``call`` parameter: ``s:TEXT`` is a string, ``i:NUMBER`` an integer,
    text that parses as JSON is that JSON value, anything else a string.
    """
    if text.startswith("s:"):
        return text[2:]
    if text.startswith("i:"):
        try:
            return int(text[2:])
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


# -- output ------------------------------------------------------------------------


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines) + "\n"


def format_nodes(nodes: list[dict[str, Any]]) -> str:
    """``dmq.list_nodes`` as a table: URI, status, local, IP, when last heard from, fail count, software."""
    rows = []
    for node in nodes:
        host, port, proto = node.get("host", "?"), node.get("port", ""), node.get("proto", "*")
        uri = f"sip:{host}:{port}" if port else f"sip:{host}"
        if proto not in ("*", "udp"):
            uri += f";transport={proto}"
        rows.append(
            [
                uri,
                str(node.get("status", "?")),
                "yes" if node.get("local") else "",
                str(node.get("resolved_ip", "")),
                _seen(node.get("last_notification", 0)),
                str(node.get("fail_count", "")),
                str(node.get("agent", "")),
            ]
        )
    return _table(rows, ["NODE", "STATUS", "LOCAL", "IP", "LAST_SEEN", "FAILS", "AGENT"])


def _seen(seconds: Any) -> str:
    """``last_notification`` for people: the local time of day, or ``-`` for never (0)."""
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def format_dialogs(dialogs: list[dict[str, Any]]) -> str:
    """``dlg.list`` as a table: id, state, Call-ID, from, to, seconds since confirmed."""
    if not dialogs:
        return "no dialog\n"
    rows = [
        [f"{d.get('h_entry', '?')}:{d.get('h_id', '?')}", str(d.get("state", "?")), str(d.get("call-id", "")),
         str(d.get("from_uri", "")), str(d.get("to_uri", "")), str(d.get("duration", ""))]
        for d in dialogs
    ]
    return _table(rows, ["ID", "STATE", "CALL-ID", "FROM", "TO", "DURATION"])


def format_results(results: list[dict[str, Any]]) -> str:
    """Answers of send/bcast as a table: node, code, reason."""
    if not results:
        return "no active node to send to\n"
    return _table([[r.get("node", "?"), str(r.get("code", "?")), str(r.get("reason", ""))] for r in results], ["NODE", "CODE", "REASON"])


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, inner in value.items():
            out.extend(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix, value)]


def format_value(value: Any) -> str:
    """Any result as text: a string as it is, a mapping as ``key: value`` lines, the rest as JSON."""
    if isinstance(value, str):
        return value + "\n"
    if isinstance(value, dict):
        pairs = _flatten(value)
        if not pairs:
            return "{}\n"
        return "".join(f"{key}: {json.dumps(inner) if not isinstance(inner, str) else inner}\n" for key, inner in pairs)
    return json.dumps(value, indent=2) + "\n"


# -- the command line -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dmqctl``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"the node's /RPC URL (default: $DMQCTL_URL or {DEFAULT_URL})")
    common.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (default: $DMQCTL_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the JSON result instead of a table")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for the node's answer (default: 60)")
    parser = argparse.ArgumentParser(
        prog="dmqctl",
        parents=[common],
        description="Control a dmq node through its JSON-RPC API (Kamailio's dmq.* method names).",
        epilog="Exit status: 0 done, 1 the node answered with an error, 2 bad usage, 3 node unreachable. "
        "The options may also follow the command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("list-nodes", parents=[common], help="the node list (dmq.list_nodes)")
    p = commands.add_parser("add", parents=[common], help="add a node (dmq.add)")
    p.add_argument("uri")
    p = commands.add_parser("remove", parents=[common], help="remove a node (dmq.remove)")
    p.add_argument("uri")
    p = commands.add_parser("change-status", parents=[common], help="change a node's status (dmq.change_status)")
    p.add_argument("uri")
    p.add_argument("status", choices=["active", "not_active", "disabled"])
    p = commands.add_parser("send", parents=[common], help="send a message to one node (dmq.send_message)")
    p.add_argument("channel")
    p.add_argument("node")
    p.add_argument("body")
    p.add_argument("--content-type", default="text/plain")
    p = commands.add_parser("bcast", parents=[common], help="send a message to every active node (dmq.bcast_message)")
    p.add_argument("channel")
    p.add_argument("body")
    p.add_argument("--content-type", default="text/plain")
    commands.add_parser("stats", parents=[common], help="counters (dmq.stats)")
    p = commands.add_parser("call", parents=[common], help="call any method; PARAMs are JSON when they parse (s:TEXT, i:NUMBER force a type)")
    p.add_argument("method")
    p.add_argument("params", nargs="*", type=parse_param, metavar="PARAM")

    htable = commands.add_parser("htable", parents=[common], help="Kamailio's htable.* methods")
    actions = htable.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("get", parents=[common], help="a cell's value (htable.get)")
    p.add_argument("table")
    p.add_argument("key")
    p = actions.add_parser("sets", parents=[common], help="set a string value (htable.sets)")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("value")
    p = actions.add_parser("seti", parents=[common], help="set an integer value (htable.seti)")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("value", type=_integer)
    p = actions.add_parser("setex", parents=[common], help="set a cell's expiry in seconds (htable.setex)")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("seconds", type=_integer)
    p = actions.add_parser("delete", parents=[common], help="delete a cell (htable.delete)")
    p.add_argument("table")
    p.add_argument("key")
    p = actions.add_parser("dump", parents=[common], help="every cell of a table (htable.dump)")
    p.add_argument("table")
    actions.add_parser("list", parents=[common], help="the tables (htable.listTables)")
    p = actions.add_parser("sync", parents=[common], help="ask the cluster for its tables again (htable.dmqsync)")
    p.add_argument("table", nargs="?")

    dlg = commands.add_parser("dlg", parents=[common], help="Kamailio's dlg.* methods")
    dlg_actions = dlg.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlg_actions.add_parser("list", parents=[common], help="the dialogs (dlg.list)")
    p = dlg_actions.add_parser("profile", parents=[common], help="dialogs in a profile (dlg.profile_get_size)")
    p.add_argument("profile")
    p.add_argument("value", nargs="?")

    ul = commands.add_parser("ul", parents=[common], help="Kamailio's ul.* methods (the usrloc peer's location table)")
    ul_actions = ul.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ul_actions.add_parser("show", parents=[common], help="the live contacts of an AoR (ul.lookup location AOR)")
    p.add_argument("aor")
    p = ul_actions.add_parser("dump", parents=[common], help="every AoR and contact (ul.dump)")
    p.add_argument("--brief", action="store_true", help="the AoRs only (ul.dump brief)")
    p = ul_actions.add_parser("rm", parents=[common], help="remove an AoR with its contacts (ul.rm location AOR)")
    p.add_argument("aor")
    p = ul_actions.add_parser("rm-contact", parents=[common], help="remove one contact (ul.rm_contact location AOR CONTACT)")
    p.add_argument("aor")
    p.add_argument("contact")
    return parser


def _ul_call(args: argparse.Namespace) -> tuple[str, list[Any]]:
    """The ``ul.*`` method and params of a ``dmqctl ul`` command line."""
    if args.action == "show":
        return "ul.lookup", ["location", args.aor]
    if args.action == "dump":
        return "ul.dump", ["brief"] if args.brief else []
    if args.action == "rm":
        return "ul.rm", ["location", args.aor]
    return "ul.rm_contact", ["location", args.aor, args.contact]


def format_contacts(result: dict[str, Any]) -> str:
    """``ul.lookup`` or ``ul.dump`` as a table: AoR, contact, expires, q, ruid, user agent (brief dumps: AoRs only)."""
    if "Domains" in result:
        aors = [a for d in result["Domains"] for a in d.get("Domain", {}).get("AoRs", [])]
        if all("AoR" in a for a in aors):
            return "".join(f"{a['AoR']}\n" for a in aors)
        records = [a.get("Info", {}) for a in aors]
    else:
        records = [result]
    rows = []
    for record in records:
        for item in record.get("Contacts", []):
            contact = item.get("Contact", {})
            rows.append([str(record.get("AoR", "")), str(contact.get("Address", "")), str(contact.get("Expires", "")),
                         str(contact.get("Q", "")), str(contact.get("Ruid", "")), str(contact.get("User-Agent", ""))])
    return _table(rows, ["AOR", "CONTACT", "EXPIRES", "Q", "RUID", "USER_AGENT"])


_HTABLE_METHODS = {
    "get": "htable.get",
    "sets": "htable.sets",
    "seti": "htable.seti",
    "setex": "htable.setex",
    "delete": "htable.delete",
    "dump": "htable.dump",
    "list": "htable.listTables",
    "sync": "htable.dmqsync",
}


def _call_of(args: argparse.Namespace) -> tuple[str, list[Any]]:
    """The method and params a parsed command line stands for."""
    command = args.command
    if command == "list-nodes":
        return "dmq.list_nodes", []
    if command == "add":
        return "dmq.add", [args.uri]
    if command == "remove":
        return "dmq.remove", [args.uri]
    if command == "change-status":
        return "dmq.change_status", [args.uri, args.status]
    if command == "send":
        return "dmq.send_message", [args.channel, args.node, args.body, args.content_type]
    if command == "bcast":
        return "dmq.bcast_message", [args.channel, args.body, args.content_type]
    if command == "stats":
        return "dmq.stats", []
    if command == "call":
        return args.method, list(args.params)
    if command == "dlg":
        if args.action == "list":
            return "dlg.list", []
        return "dlg.profile_get_size", [args.profile] + ([args.value] if args.value is not None else [])
    if command == "ul":
        return _ul_call(args)
    action = args.action
    method = _HTABLE_METHODS[action]
    if action in ("get", "delete"):
        return method, [args.table, args.key]
    if action in ("sets", "seti"):
        return method, [args.table, args.key, args.value]
    if action == "setex":
        return method, [args.table, args.key, args.seconds]
    if action == "dump":
        return method, [args.table]
    if action == "sync":
        return method, [args.table] if args.table else []
    return method, []


def _render(command: str, result: Any) -> str:
    if command == "list-nodes" and isinstance(result, list):
        return format_nodes(result)
    if command == "dlg" and isinstance(result, list):
        return format_dialogs(result)
    if command in ("send", "bcast"):
        if isinstance(result, dict):
            result = [result]
        if isinstance(result, list):
            return format_results(result)
    if command == "ul" and isinstance(result, dict) and ("Domains" in result or "Contacts" in result):
        return format_contacts(result)
    return format_value(result)


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[IO[str]] = None, stderr: Optional[IO[str]] = None) -> int:
    """
    Run ``dmqctl`` with ``argv`` (default: the process's arguments).

    :returns: the exit status.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    # The options may come before or after the command; their defaults are filled in here
    # (argparse shares the actions of a parent parser, so defaults set there would mask them).
    url = getattr(args, "url", None) or os.environ.get("DMQCTL_URL", DEFAULT_URL)
    token = getattr(args, "token", None) or os.environ.get("DMQCTL_TOKEN") or None
    as_json = getattr(args, "json", False)
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    method, params = _call_of(args)
    client = RPCClient(url, token, timeout)
    try:
        result = client.call(method, *params)
    except Unreachable as e:
        err.write(f"dmqctl: {e}\n")
        return EXIT_UNREACHABLE
    except CallFailed as e:
        err.write(f"dmqctl: {method}: {e}\n")
        return EXIT_RPC_ERROR
    if as_json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        out.write(_render(args.command, result))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
