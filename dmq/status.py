"""
The status page of a node: the cluster at a glance, served by the control endpoint.

``GET /`` answers a self-contained HTML page (inline CSS and SVG, no scripts,
nothing fetched from elsewhere) that reloads itself every :data:`REFRESH`
seconds; ``GET /status.json`` answers the same data as JSON for tools.  Both
show:

- the nodes: URI, status, transport, agent, last ping round trip, fail
  count, which one is this node;
- the channels: messages received and sent, answers given and results got
  by status code, errors (4xx to 6xx, 408 for a timeout included);
- what each registered peer reports about itself through a ``status()``
  method (a small JSON object, e.g. an htable peer's tables and their
  sizes); peers without one are listed by channel;
- the recent membership events (peer-up, peer-down, peer-disabled);
- messages received and sent per second, all channels together, over the
  last minutes: :class:`RateSampler` reads the counters every
  :data:`SAMPLE_INTERVAL` seconds on the node's clock.

:func:`status_data` gathers the data, :func:`render_page` turns it into
HTML (everything that came from the network is escaped there), and
:class:`StatusResource` serves either, behind the control endpoint's bearer
token when one is set.  :func:`dmq.control.make_site` puts them on the site
when the control API is on.
"""

from __future__ import annotations

import json
import math
from collections import deque
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote

from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

if TYPE_CHECKING:
    from dmq.control import BearerToken
    from dmq.service import DMQService

__all__ = [
    "REFRESH",
    "SAMPLE_INTERVAL",
    "SAMPLES",
    "RateSampler",
    "StatusResource",
    "render_chart",
    "render_page",
    "status_data",
]

log = Logger()

REFRESH = 5
"""Seconds between two reloads of the page."""

SAMPLE_INTERVAL = 5.0
"""Seconds between two readings of the message counters."""

SAMPLES = 61
"""Readings kept: 60 rates, five minutes at :data:`SAMPLE_INTERVAL`."""

MAX_EVENTS = 30
"""The most membership events shown, newest first."""

MAX_CHANNELS = 100
"""The most channels shown; any node can make up channel names, so the rest are only counted."""

MAX_PEER_STATUS = 8192
"""The most characters of JSON one peer's ``status()`` may take; a larger one is shown as an error."""

_CSP = b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


class RateSampler(TimerService):
    """
    Reads a node's message counters (received and sent, all channels) at
    regular intervals on the node's clock, and keeps the last readings.

    :param dmq: the node.
    :param interval: seconds between readings (the timer's ``step``).
    :param keep: how many readings to keep.
    :ivar samples: ``(time, received, sent)`` readings, oldest first.
    """

    def __init__(self, dmq: "DMQService", interval: float = SAMPLE_INTERVAL, keep: int = SAMPLES) -> None:
        super().__init__(interval, self.sample)
        self.clock = dmq.clock
        self.dmq = dmq
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=keep)

    def sample(self) -> None:
        """Take one reading."""
        stats = list(self.dmq.channel_stats.values())
        received = sum(s.received for s in stats)
        sent = sum(s.sent for s in stats)
        self.samples.append((float(self.dmq.clock.seconds()), received, sent))

    def rates(self) -> list[tuple[float, float, float]]:
        """``(time, received per second, sent per second)`` between each two readings, oldest first."""
        readings = list(self.samples)
        rates = []
        for (t0, r0, s0), (t1, r1, s1) in zip(readings, readings[1:]):
            span = t1 - t0
            if span > 0:
                rates.append((t1, max(0, r1 - r0) / span, max(0, s1 - s0) / span))
        return rates


# -- the data -------------------------------------------------------------------------------


def _errors(by_code: dict[int, int]) -> int:
    return sum(n for code, n in by_code.items() if 400 <= code < 700)


def _codes(by_code: dict[int, int]) -> dict[str, int]:
    return {str(code): n for code, n in sorted(by_code.items())}


def _peer_status(peer: Any) -> dict[str, Any]:
    """What a peer reports through ``status()``: ``{"status": ...}``, or ``{"error": ...}`` saying why not."""
    try:
        reported = peer.status()
    except Exception:
        log.failure("status() of peer {channel} failed", channel=peer.channel)
        return {"error": "status() failed (see the log)"}
    if not isinstance(reported, dict):
        return {"error": f"status() returned {type(reported).__name__}, not an object"}
    try:
        text = json.dumps(reported)
    except (TypeError, ValueError):
        return {"error": "status() returned something that is not JSON"}
    if len(text) > MAX_PEER_STATUS:
        return {"error": f"status() returned {len(text)} characters of JSON (at most {MAX_PEER_STATUS} shown)"}
    return {"status": json.loads(text)}


def status_data(dmq: "DMQService", sampler: Optional[RateSampler] = None) -> dict[str, Any]:
    """
    Everything the status page shows, JSON-able (``/status.json`` answers it).

    :param dmq: the node.
    :param sampler: where the message rates come from (none: no rates).
    :returns: ``node``, ``time``, ``ready``, ``refresh``; ``nodes`` (this node
        first, then the others as listed), ``channels`` (registered ones first, at most
        :data:`MAX_CHANNELS`, ``channels_omitted`` the rest), ``peers``
        (``channel`` and ``status`` or ``error``, or neither without a
        ``status()``), ``events`` (newest first), ``rates``.
    """
    rtt = dmq.rtt
    nodes = [
        {
            "uri": str(node.uri),
            "status": node.status.value,
            "transport": node.transport,
            "agent": node.agent or "",
            "rtt": rtt.get(node.key),
            "fail_count": node.fail_count,
            "local": node.local,
        }
        for node in dmq.nodes
    ]
    peers = dict(dmq.peers)
    stats = dmq.channel_stats
    names = sorted(peers) + sorted((c for c in stats if c not in peers), key=lambda c: -stats[c].received)
    channels = []
    for name in names[:MAX_CHANNELS]:
        s = stats.get(name)
        answered = dict(s.answered) if s else {}
        results = dict(s.results) if s else {}
        channels.append(
            {
                "channel": name,
                "peer": name in peers,
                "received": s.received if s else 0,
                "sent": s.sent if s else 0,
                "answered": _codes(answered),
                "results": _codes(results),
                "errors": _errors(answered) + _errors(results),
            }
        )
    summaries = []
    for channel, peer in sorted(peers.items()):
        entry: dict[str, Any] = {"channel": channel}
        if callable(getattr(peer, "status", None)):
            entry.update(_peer_status(peer))
        summaries.append(entry)
    history = list(dmq.membership.history)[-MAX_EVENTS:]
    events = [{"time": t, "kind": e.kind.value, "node": str(e.node.uri)} for t, e in reversed(history)]
    rates = sampler.rates() if sampler is not None else []
    return {
        "node": str(dmq.nodes.local.uri),
        "time": float(dmq.clock.seconds()),
        "ready": dmq.ready,
        "refresh": REFRESH,
        "nodes": nodes,
        "channels": channels,
        "channels_omitted": max(0, len(names) - MAX_CHANNELS),
        "peers": summaries,
        "events": events,
        "rates": {
            "interval": sampler.step if sampler is not None else SAMPLE_INTERVAL,
            "samples": [{"time": t, "received": r, "sent": s} for t, r, s in rates],
        },
    }


# -- the page ---------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#1d232a;background:#f6f7f9}
h1{font-size:1.35em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
.sub{color:#5b6570;margin:0 0 .6em}.sub b{color:#1d232a}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.3em .8em;text-align:left;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;font-size:.85em;font-weight:600}
.active{background:#d5f2dc;color:#135d27}.not_active{background:#fbecc6;color:#7a5200}
.disabled{background:#f8d7d7;color:#8a1c1c}.local{background:#dde7f7;color:#1e4a8c}
.err{color:#b42318;font-weight:600}.muted{color:#8a939c}
.grid{display:flex;flex-wrap:wrap;gap:2em}.grid>div{min-width:20em}
ol.events{list-style:none;padding:0;margin:0;background:#fff;box-shadow:0 1px 2px #0002}
ol.events li{padding:.25em .8em;border-bottom:1px solid #e3e6ea}
ol.events time{font-variant-numeric:tabular-nums;color:#5b6570;margin-right:.6em}
.kv td,.kv th{border:none;padding:.05em .6em .05em 0;background:none}.kv{box-shadow:none;background:none}
svg{background:#fff;box-shadow:0 1px 2px #0002}svg text{font:11px system-ui,sans-serif;fill:#5b6570}
"""


def _e(value: Any) -> str:
    """``value`` as text, safe in HTML content and in quoted attributes."""
    return escape(str(value), quote=True)


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S")


def _age(now: float, t: float) -> str:
    seconds = max(0, int(now - t))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _by_code(codes: dict[str, int]) -> str:
    if not codes:
        return '<span class="muted">none</span>'
    return " ".join(
        f'<span class="{"err" if 400 <= int(code) < 700 else ""}">{_e(code)}&times;{_e(n)}</span>' for code, n in codes.items()
    )


def _value(value: Any, depth: int = 0) -> str:
    """A JSON value as HTML: objects as small key/value tables, arrays as lists, the rest as text."""
    if isinstance(value, dict) and depth < 4:
        if not value:
            return '<span class="muted">empty</span>'
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list) and depth < 4:
        return ", ".join(_value(v, depth + 1) for v in value) or '<span class="muted">none</span>'
    if isinstance(value, (dict, list)):
        return _e(json.dumps(value))
    if value is None:
        return '<span class="muted">-</span>'
    return _e(value)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (1 at the least)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(f * power for f in (1, 2, 5, 10) if f * power >= value)


def render_chart(rates: dict[str, Any], width: int = 640, height: int = 170) -> str:
    """
    Messages received and sent per second as an inline SVG line chart.

    :param rates: the ``rates`` of :func:`status_data`.
    """
    interval = float(rates["interval"])
    samples = rates["samples"]
    left, right, top, bottom = 44, 10, 10, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="messages per second, received and sent">'
    ]
    if len(samples) < 2:
        parts.append(
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">collecting: one reading every '
            f"{interval:g} s</text></svg>"
        )
        return "".join(parts)
    span = interval * (SAMPLES - 1)
    end = samples[-1]["time"]
    peak = _nice_ceiling(max(max(s["received"], s["sent"]) for s in samples))
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e3e6ea"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{peak * fraction:g}</text>')
    minutes = span / 60
    parts.append(f'<text x="{left}" y="{height - 6}">-{minutes:g} min</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">messages/s</text>')
    parts.append(f'<text x="{width - right}" y="{height - 6}" text-anchor="end">now</text>')
    for key, colour in (("received", "#1f6feb"), ("sent", "#e8710a")):
        points = " ".join(
            f"{left + plot_w * max(0.0, 1 - (end - s['time']) / span):.1f},{top + plot_h * (1 - s[key] / peak):.1f}"
            for s in samples
        )
        parts.append(f'<polyline class="{key}" fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
    latest = samples[-1]
    parts.append(
        f'<text x="{left + 8}" y="{top + 12}"><tspan fill="#1f6feb">&#9632; received {latest["received"]:.1f}/s</tspan>'
        f'<tspan dx="12" fill="#e8710a">&#9632; sent {latest["sent"]:.1f}/s</tspan></text>'
    )
    parts.append("</svg>")
    return "".join(parts)


_UNKNOWN = '<span class="muted">unknown</span>'


def _nodes_table(data: dict[str, Any]) -> str:
    rows = []
    for n in data["nodes"]:
        rtt = "-" if n["rtt"] is None else f"{n['rtt'] * 1000:.1f} ms"
        local = ' <span class="badge local">this node</span>' if n["local"] else ""
        rows.append(
            f'<tr class="node" data-uri="{_e(n["uri"])}" data-status="{_e(n["status"])}">'
            f"<td>{_e(n['uri'])}{local}</td>"
            f'<td><span class="badge {_e(n["status"])}">{_e(n["status"])}</span></td>'
            f"<td>{_e(n['transport'])}</td><td>{_e(n['agent']) or _UNKNOWN}</td>"
            f'<td class="n">{rtt}</td><td class="n">{_e(n["fail_count"])}</td></tr>'
        )
    head = "<tr><th>node</th><th>status</th><th>transport</th><th>agent</th><th>ping rtt</th><th>fails</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _channels_table(data: dict[str, Any]) -> str:
    rows = []
    for c in data["channels"]:
        peer = "" if c["peer"] else ' <span class="muted">(no peer)</span>'
        errors = f'<span class="err">{c["errors"]}</span>' if c["errors"] else "0"
        rows.append(
            f'<tr class="channel" data-channel="{_e(c["channel"])}"><td>{_e(c["channel"])}{peer}</td>'
            f'<td class="n">{c["received"]}</td><td class="n">{c["sent"]}</td>'
            f"<td>{_by_code(c['answered'])}</td><td>{_by_code(c['results'])}</td><td class=\"n\">{errors}</td></tr>"
        )
    if data["channels_omitted"]:
        rows.append(f'<tr><td colspan="6" class="muted">{data["channels_omitted"]} more channels not shown</td></tr>')
    head = "<tr><th>channel</th><th>received</th><th>sent</th><th>answered</th><th>results</th><th>errors</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _peers_table(data: dict[str, Any]) -> str:
    rows = []
    for p in data["peers"]:
        if "error" in p:
            shown = f'<span class="err">{_e(p["error"])}</span>'
        elif "status" in p:
            shown = _value(p["status"])
        else:
            shown = '<span class="muted">no status</span>'
        rows.append(f'<tr class="peer" data-channel="{_e(p["channel"])}"><td>{_e(p["channel"])}</td><td>{shown}</td></tr>')
    return f"<table><tr><th>peer</th><th>status</th></tr>{''.join(rows)}</table>"


def _events_list(data: dict[str, Any]) -> str:
    if not data["events"]:
        return '<p class="muted">no membership events yet</p>'
    badge = {"peer-up": "active", "peer-down": "not_active", "peer-disabled": "disabled"}
    items = "".join(
        f'<li class="event"><time>{_clock(ev["time"])}</time>'
        f'<span class="badge {badge.get(ev["kind"], "")}">{_e(ev["kind"])}</span> {_e(ev["node"])} '
        f'<span class="muted">{_age(data["time"], ev["time"])}</span></li>'
        for ev in data["events"]
    )
    return f'<ol class="events">{items}</ol>'


def render_page(data: dict[str, Any], token: Optional[str] = None) -> str:
    """
    The status page of :func:`status_data`'s ``data``.

    :param token: the bearer token to carry in the page's own links (the
        reload and the JSON), when the page was opened with ``?token=``.
    """
    query = f"?token={quote(token, safe='')}" if token is not None else ""
    refresh = f"{data['refresh']}; url={query}" if query else str(data["refresh"])
    counts: dict[str, int] = {}
    for n in data["nodes"]:
        counts[n["status"]] = counts.get(n["status"], 0) + 1
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("active", "not_active", "disabled"))
    ready = "ready" if data["ready"] else "waiting for the first node list"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{_e(refresh)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dmq {_e(data['node'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>dmq node {_e(data['node'])}</h1>"
        f'<p class="sub"><b>{len(data["nodes"])} nodes</b>: {summary} &middot; {ready} &middot; '
        f"{_clock(data['time'])} UTC &middot; reloads every {data['refresh']} s &middot; "
        f'<a href="status.json{_e(query)}">JSON</a></p>'
        f"<h2>Nodes</h2>{_nodes_table(data)}"
        f'<div class="grid"><div><h2>Messages per second</h2>{render_chart(data["rates"])}</div>'
        f"<div><h2>Membership events</h2>{_events_list(data)}</div></div>"
        f'<div class="grid"><div><h2>Channels</h2>{_channels_table(data)}</div>'
        f"<div><h2>Peers</h2>{_peers_table(data)}</div></div>"
        "</body></html>"
    )


# -- the resource -------------------------------------------------------------------------------


class StatusResource(Resource):
    """
    ``GET /`` (the page) or ``GET /status.json`` (the data) of one node.

    :param dmq: the node.
    :param sampler: the message rate readings (see :class:`RateSampler`).
    :param token: when given, a request needs it as ``Authorization:
        Bearer <token>`` or as ``?token=<token>`` (else 401); a page opened
        with the latter keeps it in its links.
    :param as_json: answer the data as JSON rather than the page.
    """

    isLeaf = True

    def __init__(
        self,
        dmq: "DMQService",
        sampler: Optional[RateSampler] = None,
        token: Optional["BearerToken"] = None,
        as_json: bool = False,
    ) -> None:
        super().__init__()
        self.dmq = dmq
        self.sampler = sampler
        self.token = token
        self.as_json = as_json

    def render(self, request: Request) -> bytes:
        """GET (and HEAD) only; any other method is answered 405."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"GET this page\n"
        result: bytes = super().render(request)
        return result

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        """The page or the data, once the token (if any) is shown."""
        carried: Optional[str] = None
        if self.token is not None:
            in_query = self.token.in_query(request)
            if not (in_query or self.token.in_header(request)):
                return self.token.refuse(request)
            if in_query:
                carried = self.token.value
        data = status_data(self.dmq, self.sampler)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if self.as_json:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(data).encode("utf-8")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", _CSP)
        return render_page(data, carried).encode("utf-8")
