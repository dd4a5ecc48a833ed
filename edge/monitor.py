"""The bedside monitor: a read-only web view of a live run (or of a finished run's log).

Map: Runtime.poll (idle time, under the reader's lock) -> MonitorFeed.publish (at most every
interval_s (1 s), and only while a client reads: copies counters, histograms, health and the recent decisions into a new
Snapshot and swaps one reference) -> MonitorServer (http.server, one thread; it only reads
`feed.snapshot`, render it once per snapshot and serve /, /snapshot, /status, /metrics).

Never on the decision path: the deciding thread adds one tuple to a bounded deque per
line it writes (MonitorFeed.observe); everything else runs in poll's idle time or in the
server's thread, which never touches the runtime. A snapshot is never changed after it is
published, so a reader needs no lock.

The page (monitor_page/index.html, served from the package, no external resources) polls
/snapshot once a second; `snapshot_from_records` builds the same data from a decision log
so that `phosphene monitor LOG` renders the same page, static, after the run.

Imports the standard library and numpy only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources

import numpy as np

from phosphene.errors import ConfigError, PhospheneError

__all__ = [
    "MonitorError",
    "MonitorFeed",
    "MonitorServer",
    "Snapshot",
    "attach_monitor",
    "is_loopback",
    "metrics_text",
    "parse_monitor_address",
    "render_page",
    "snapshot_from_records",
]

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "phosphene-monitor"
SNAPSHOT_VERSION = 1
# Prometheus buckets of the decision latency (seconds): a 1-2-5 series; the budget is added
PROMETHEUS_BOUNDS_US = (50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
# the page's histogram: 6 bars a decade from 10 us to 100 ms
PAGE_BOUNDS_US = tuple(round(10.0 * 10 ** (k / 6), 1) for k in range(1, 25))
NO_DECISION_REASONS = ("warming_up", "lost_samples", "stall", "stale", "stream_mismatch",
                       "window_expired", "unhealthy_input")  # as phosphene.edge.runtime names them
LINK_COUNTERS = ("frames_lost", "crc_errors", "bytes_discarded", "duplicates", "reordered",
                 "seq_restarts", "payload_errors", "frames_ok")
_PAGE = ("monitor_page", "index.html")
_PAGE_SLOT = "/*@SNAPSHOT@*/null"


class MonitorError(PhospheneError, ValueError):
    """The monitor cannot serve (address refused, port in use); the message says why."""


# --------------------------------------------------------------------------------------
# Snapshots: what the runtime publishes, and what the server renders from them
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Snapshot:
    """One published view of a run. `data` is the page's JSON object and is never mutated;
    renderings are made on first use and kept (two threads at once make the same text)."""

    data: dict
    _cache: dict = field(default_factory=dict, repr=False)

    def page_json(self) -> bytes:
        if "page" not in self._cache:
            self._cache["page"] = _dumps(self.data)
        return self._cache["page"]

    def status_json(self) -> bytes:
        if "status" not in self._cache:
            self._cache["status"] = _dumps({**self.data["status"], "type": "status",
                                            "time_unix": self.data["time_unix"]})
        return self._cache["status"]

    def metrics(self) -> bytes:
        if "metrics" not in self._cache:
            self._cache["metrics"] = metrics_text(self.data).encode()
        return self._cache["metrics"]


def _finite(obj):
    """NaN and infinities become null: the page's data is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj) -> bytes:
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode()


def _bins_under(hist, bounds_us) -> np.ndarray:
    """For each bound, how many of a LatencyHistogram's 1% bins lie wholly at or under it."""
    upper = hist._low_us * hist._ratio ** np.arange(1, hist.n_bins + 1)  # bin i: below upper[i]
    return np.searchsorted(upper, np.asarray(bounds_us, float), side="right")


def _cumulative_from_hist(cum: np.ndarray, bins_under: np.ndarray) -> list[int]:
    """Decisions at or under each bound (to the histogram's 1% bins), from its cumulative counts."""
    return [int(cum[k - 1]) if k > 0 else 0 for k in bins_under.tolist()]


def _cumulative_from_values(values_us, bounds_us) -> list[int]:
    v = np.sort(np.asarray(values_us, float))
    return [int(k) for k in np.searchsorted(v, np.asarray(bounds_us, float), side="right")]


def _latency_block(cumulative_prom, cumulative_page, count: int, sum_us: float, summary: dict,
                   budget_ms: float) -> dict:
    page_counts = np.diff([0, *cumulative_page]).tolist()
    return {"count": int(count), "sum_us": float(sum_us),
            "prometheus_bounds_us": _prometheus_bounds(budget_ms), "prometheus_cumulative": cumulative_prom,
            "page_bounds_us": list(PAGE_BOUNDS_US), "page_counts": page_counts,
            "over_page": int(count - (cumulative_page[-1] if cumulative_page else 0)),
            **{k: summary.get(k) for k in ("p50", "p90", "p99", "max")}}


def _prometheus_bounds(budget_ms: float) -> list[float]:
    return sorted({*(float(b) for b in PROMETHEUS_BOUNDS_US), round(budget_ms * 1e3, 3)})


def _channel_activity(health) -> list[float] | None:
    """Mean |sample-to-sample step| per channel over the health window (uV): the same
    statistic input health classifies on, read from its ring (no extra pass over samples)."""
    valid = np.arange(health.n_slots) < health._slots_filled
    steps = int(health._nsteps[valid].sum())
    if steps == 0:
        return None
    return [round(float(v), 4) for v in health._step_sum[valid].sum(axis=0) / steps]


def _channels_json(channel_map) -> dict:
    return {"name": channel_map.name, "ids": list(channel_map.ids), "rows": list(channel_map.rows),
            "cols": list(channel_map.cols)}


def _gaps(events: list) -> list[list]:
    """No-decision gaps [t_from, t_to, reasons] from (t, p, decision, reason) events in time
    order: a run of no-decisions spans from the decision before it to the decision after it."""
    gaps, start, reasons, last_decision = [], None, set(), None
    for t, p, _, reason in events:
        if p is None:
            if start is None:
                start = last_decision if last_decision is not None else t
            reasons.add(reason)
            end = t
        else:
            if start is not None:
                gaps.append([start, t, sorted(reasons)])
                start, reasons = None, set()
            last_decision = t
    if start is not None:
        gaps.append([start, end, sorted(reasons)])
    return gaps


def _snapshot_data(*, live: bool, t0_unix: float, now_unix: float, mode: str, threshold: float | None,
                   budget_ms: float, channel_map, activity, health: dict | None, events: list,
                   latency: dict, status: dict) -> dict:
    rel = [(round(t - t0_unix, 3), p, d, r) for t, p, d, r in events]
    return {
        "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "live": live,
        "time_unix": round(now_unix, 3), "elapsed_s": round(now_unix - t0_unix, 3),
        "mode": mode, "threshold": threshold, "budget_ms": budget_ms,
        "channels": _channels_json(channel_map), "activity_uv": activity, "health": health,
        "events": {"t": [e[0] for e in rel], "p": [None if e[1] is None else round(e[1], 4) for e in rel],
                   "decision": [e[2] for e in rel], "reason": [e[3] for e in rel]},
        "gaps": _gaps(rel),
        "latency": latency,
        "status": status,
    }


# --------------------------------------------------------------------------------------
# The live feed: the runtime publishes, the server reads
# --------------------------------------------------------------------------------------
class MonitorFeed:
    """The latest Snapshot of a live run, replaced whole at most every `interval_s`.

    observe(record) runs on the deciding thread for every decision/no-decision line (one
    tuple appended to a bounded deque); publish(runtime, now_ns) runs in Runtime.poll, in
    idle time under the reader's lock, and is what costs anything (about 0.2 ms), so it
    runs only while someone is reading (`wanted`, set by each request) and at most every
    interval_s; the server's thread only reads `snapshot`.
    """

    def __init__(self, channel_map, *, threshold: float | None, interval_s: float = 1.0,
                 history_s: float = 60.0, max_events: int = 2048):
        if not interval_s > 0:
            raise ConfigError(f"monitor interval must be > 0 s, got {interval_s}")
        self.channel_map = channel_map
        self.threshold = threshold
        self.interval_ns = int(interval_s * 1e9)
        self.history_s = float(history_s)
        self._events: deque = deque(maxlen=max_events)  # (time_unix, p, decision, reason)
        self._append = self._events.append
        self.snapshot: Snapshot | None = None
        self.published = 0
        self.publish_ns = 0  # time spent publishing, in total (under the reader's lock)
        self.publish_us: deque = deque(maxlen=1024)  # the latest publications' durations
        self._last_ns: int | None = None
        self._bins: tuple | None = None  # histogram bins under each bucket bound (fixed for a run)
        # set by the server on each request for data: without a client nothing is published
        self.wanted = False
        self.t0_unix = time.time()

    def observe(self, record: dict) -> None:
        """A line the runtime wrote (deciding thread: O(1), no allocation beyond the tuple)."""
        kind = record.get("type")
        if kind == "decision":
            self._append((record["time_unix"], record["p_perceived"], record["decision"], None))
        elif kind == "no_decision":
            self._append((record["time_unix"], None, None, record["reason"]))

    def publish(self, runtime, now_ns: int | None = None, *, force: bool = False) -> bool:
        """A new snapshot from the runtime's state, if interval_s has passed (or force).
        Call where the runtime's state is consistent: its poll(), under the reader's lock."""
        now_ns = runtime.clock_ns() if now_ns is None else now_ns
        if not force and (not self.wanted or (self._last_ns is not None
                                              and now_ns - self._last_ns < self.interval_ns)):
            return False
        self.wanted = False
        t_begin = time.perf_counter_ns()
        self._last_ns = now_ns
        now_unix = time.time()
        status = runtime.summary(flush=False)
        status.pop("type", None)
        budget_ms = runtime.config.latency_budget_ms
        hist = runtime.latency
        if self._bins is None:
            self._bins = (_bins_under(hist, _prometheus_bounds(budget_ms)), _bins_under(hist, PAGE_BOUNDS_US))
        lat = status["latency_us"]
        cum = np.cumsum(hist.counts)
        latency = _latency_block(_cumulative_from_hist(cum, self._bins[0]), _cumulative_from_hist(cum, self._bins[1]),
                                 hist.count, (lat.get("mean") or 0.0) * hist.count, lat, budget_ms)
        horizon = now_unix - self.history_s
        events = [e for e in list(self._events) if e[0] >= horizon]
        report = runtime.health_report
        self.snapshot = Snapshot(_snapshot_data(
            live=True, t0_unix=self.t0_unix, now_unix=now_unix, mode=runtime.config.mode,
            threshold=self.threshold, budget_ms=budget_ms, channel_map=self.channel_map,
            activity=_channel_activity(runtime.health), health=report.to_json() if report else None,
            events=events, latency=latency, status=status))
        self.published += 1
        took_ns = time.perf_counter_ns() - t_begin
        self.publish_ns += took_ns
        self.publish_us.append(took_ns / 1e3)
        return True


class _TappedSinks:
    """The runtime's sinks, with every record also shown to the feed after it is written."""

    def __init__(self, sinks, observe):
        self._sinks, self._observe = sinks, observe

    def write(self, record: dict, text: str | None = None) -> None:
        self._sinks.write(record, text)
        self._observe(record)

    def __getattr__(self, name):
        return getattr(self._sinks, name)


def attach_monitor(runtime, channel_map, *, interval_s: float = 1.0) -> MonitorFeed:
    """A feed for this runtime: its lines tapped, a snapshot from each poll (rate-limited),
    and a first snapshot now, before the run starts."""
    threshold = getattr(runtime.decoder, "threshold", None)
    feed = MonitorFeed(channel_map, threshold=None if threshold is None else float(threshold),
                       interval_s=interval_s)
    runtime.sinks = _TappedSinks(runtime.sinks, feed.observe)
    runtime.monitor = feed
    feed.publish(runtime, force=True)
    return feed


# --------------------------------------------------------------------------------------
# From a finished run's log
# --------------------------------------------------------------------------------------
def snapshot_from_records(records: list[dict], *, channel_map=None, activity=None,
                          threshold: float | None = None) -> Snapshot:
    """The page's data from a decision log's records (`phosphene run --out`).

    channel_map: default the Utah map for the channel count the log implies (96 unless a
    health line names a higher channel). activity: (C,) per-channel activity in uV (the
    log has none; `phosphene monitor --dataset` computes it). threshold: default the
    midpoint between the highest P decided 0 and the lowest decided 1, when both occur.
    """
    from phosphene.geometry import map_for_channels

    summary = next((r for r in reversed(records) if r.get("type") == "summary"), None)
    lines = [r for r in records if r.get("type") in ("decision", "no_decision")
             and isinstance(r.get("time_unix"), (int, float))]
    health_lines = [r for r in records if r.get("type") == "health"]
    health = (summary or {}).get("input_health") or (
        {k: v for k, v in health_lines[-1].items() if k not in ("type", "mode", "time_unix")}
        if health_lines else None)
    if channel_map is None:
        named = [c for h in [health or {}, *health_lines] for k in ("dead", "flat", "saturated",
                                                                     "dead_at_calibration")
                 for c in h.get(k, [])]
        channel_map = map_for_channels(max(96, max(named, default=0) + 1))
    decisions = [r for r in lines if r["type"] == "decision"]
    if threshold is None:
        zeros = [r["p_perceived"] for r in decisions if r.get("decision") == 0]
        ones = [r["p_perceived"] for r in decisions if r.get("decision") == 1]
        if zeros and ones:
            threshold = round((max(zeros) + min(ones)) / 2, 4)
    events = [(float(r["time_unix"]), float(r["p_perceived"]) if r["type"] == "decision" else None,
               r.get("decision"), r.get("reason")) for r in lines]
    events.sort(key=lambda e: e[0])
    totals = [float(r["latency_us"]["total"]) for r in decisions
              if isinstance(r.get("latency_us"), dict) and "total" in r["latency_us"]]
    if summary is not None:
        status = {k: v for k, v in summary.items() if k != "type"}
        duration = float(summary.get("duration_s") or 0.0)
    else:  # a log cut short (a crash): counters from its lines
        from collections import Counter

        status = {"mode": lines[0].get("mode") if lines else None, "decisions": len(decisions),
                  "no_decisions": dict(Counter(r.get("reason") for r in lines if r["type"] == "no_decision"))}
        duration = (events[-1][0] - events[0][0]) if events else 0.0
    # the log does not say when the run started: its time axis begins at its first line
    t0 = events[0][0] if events else 0.0
    end = events[-1][0] if events else 0.0
    budget_ms = float(status.get("budget_ms") or 0.0) or None
    lat_summary = status.get("latency_us") if isinstance(status.get("latency_us"), dict) else {}
    if not lat_summary and totals:
        lat_summary = {"p50": float(np.percentile(totals, 50)), "p90": float(np.percentile(totals, 90)),
                       "p99": float(np.percentile(totals, 99)), "max": max(totals)}
    latency = _latency_block(_cumulative_from_values(totals, _prometheus_bounds(budget_ms or 0.0)),
                             _cumulative_from_values(totals, PAGE_BOUNDS_US), len(totals), sum(totals),
                             lat_summary, budget_ms or 0.0)
    if budget_ms is None:
        latency["prometheus_bounds_us"] = [float(b) for b in PROMETHEUS_BOUNDS_US]
        latency["prometheus_cumulative"] = _cumulative_from_values(totals, PROMETHEUS_BOUNDS_US)
    if activity is not None:
        activity = [round(float(v), 4) if math.isfinite(float(v)) else None for v in activity]
        if len(activity) != channel_map.n_channels:
            raise MonitorError(f"activity has {len(activity)} channels but the channel map "
                               f"{channel_map.n_channels}")
    return Snapshot(_snapshot_data(
        live=False, t0_unix=t0, now_unix=t0 + max(duration, end - t0), mode=str(status.get("mode")),
        threshold=threshold, budget_ms=budget_ms, channel_map=channel_map, activity=activity,
        health=health, events=events, latency=latency, status=status))


# --------------------------------------------------------------------------------------
# Renderings: the page and the Prometheus text
# --------------------------------------------------------------------------------------
def render_page(snapshot: Snapshot | None = None) -> str:
    """The monitor page. Without a snapshot it polls `snapshot` beside it (live); with one
    the data is embedded and the page is a self-contained file (static)."""
    page = resources.files("phosphene.edge").joinpath(*_PAGE).read_text(encoding="utf-8")
    if snapshot is None:
        return page
    embedded = snapshot.page_json().decode().replace("</", "<\\/")  # no early </script>
    return page.replace(_PAGE_SLOT, embedded, 1)


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v) -> str:
    if v is None:
        return "NaN"
    v = float(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def metrics_text(data: dict) -> str:
    """Prometheus text exposition (format 0.0.4) of a snapshot's data."""
    s = data["status"]
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, object]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lbl = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lbl}}} {_num(value)}" if lbl else f"{name} {_num(value)}")

    def counter(name: str, help_text: str, value) -> None:
        family(f"phosphene_{name}_total", "counter", help_text, [({}, value or 0)])

    counter("decisions", "Decisions written.", s.get("decisions"))
    nd = s.get("no_decisions") or {}
    family("phosphene_no_decisions_total", "counter", "No-decision lines written, by reason.",
           [({"reason": r}, nd.get(r, 0)) for r in sorted({*NO_DECISION_REASONS, *nd})])
    counter("events", "Stimulation onsets received.", s.get("events"))
    counter("budget_misses", "Decisions slower than the latency budget.", s.get("budget_misses"))
    counter("frames_lost", "Wire frames lost (sequence gaps).", s.get("frames_lost"))
    counter("crc_errors", "Frames rejected for a bad CRC or header.", s.get("crc_errors"))
    counter("bytes_discarded", "Bytes the wire decoder discarded while resynchronising.",
            s.get("bytes_discarded"))
    counter("samples_received", "Samples received.", s.get("samples_received"))
    counter("samples_lost", "Samples lost (filled gaps).", s.get("samples_lost"))
    counter("stale_windows", "Windows not decided because they were stale.", s.get("stale_windows"))
    lat = data["latency"]
    buckets = [({"le": _num(b / 1e6)}, c) for b, c in zip(lat["prometheus_bounds_us"],
                                                           lat["prometheus_cumulative"])]
    buckets.append(({"le": "+Inf"}, lat["count"]))
    name = "phosphene_decision_latency_seconds"
    out.append(f"# HELP {name} Decision latency, last byte read to line written.")
    out.append(f"# TYPE {name} histogram")
    for labels, value in buckets:
        out.append(f'{name}_bucket{{le="{labels["le"]}"}} {_num(value)}')
    out.append(f"{name}_sum {_num(lat['sum_us'] / 1e6)}")
    out.append(f"{name}_count {_num(lat['count'])}")
    if data.get("budget_ms"):
        family("phosphene_latency_budget_seconds", "gauge", "The per-decision latency budget.",
               [({}, data["budget_ms"] / 1e3)])
    if data.get("threshold") is not None:
        family("phosphene_decision_threshold", "gauge", "P(perceived) at or above which the decision is 1.",
               [({}, data["threshold"])])
    last_p = next((p for p in reversed(data["events"]["p"]) if p is not None), None)
    if last_p is not None:
        family("phosphene_p_perceived", "gauge", "P(perceived) of the latest decision.", [({}, last_p)])
    family("phosphene_input_rate_hz", "gauge", "Samples per second received.", [({}, s.get("input_rate_hz"))])
    family("phosphene_uptime_seconds", "gauge", "Seconds since the run started.", [({}, data["elapsed_s"])])
    h = data.get("health")
    ids = data["channels"]["ids"]
    states = channel_states(h, len(ids))
    if h is not None:
        family("phosphene_input_healthy", "gauge", "1 when input health reports no fault and no shift.",
               [({}, 1 if h.get("ok") else 0)])
        if h.get("ood_score") is not None:
            family("phosphene_input_ood_score", "gauge",
                   "Share of calibration-live channels whose statistics moved.", [({}, h["ood_score"])])
    family("phosphene_channel_health", "gauge",
           "Per-channel input health: 1 on the series of the channel's current state.",
           [({"channel": c, "electrode": ids[c], "state": states[c]}, 1) for c in range(len(ids))])
    act = data.get("activity_uv")
    if act is not None:
        family("phosphene_channel_activity_microvolts", "gauge",
               "Mean absolute sample-to-sample step per channel over the health window.",
               [({"channel": c, "electrode": ids[c]}, v) for c, v in enumerate(act) if v is not None])
    return "\n".join(out) + "\n"


def channel_states(health: dict | None, n_channels: int) -> list[str]:
    """Each channel's state: ok, dead, flat, saturated, dead_at_calibration, or unknown
    (no assessment yet, or warming up)."""
    if health is None or health.get("warming_up"):
        states = ["unknown"] * n_channels
        for c in (health or {}).get("dead_at_calibration", []):
            if 0 <= c < n_channels:
                states[c] = "dead_at_calibration"
        return states
    states = ["ok"] * n_channels
    for key in ("dead_at_calibration", "dead", "flat", "saturated"):
        for c in health.get(key, []):
            if 0 <= c < n_channels:
                states[c] = key
    return states


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------
def parse_monitor_address(text: str) -> tuple[str, int, bool]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` -> (host, port, host_given). A bare port binds
    127.0.0.1; any other address has to be written out."""
    text = text.strip()
    host, explicit = "127.0.0.1", False
    port_text = text
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise MonitorError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
        host, port_text, explicit = inside, rest[1:], True
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        explicit = True
        if not host:
            raise MonitorError(f"{text!r} names no host: give PORT for loopback, or write the "
                               "address out (0.0.0.0:PORT serves every interface)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MonitorError(f"{text!r}: the port must be a number from 0 to 65535 (0: any free port)")
    return host, int(port_text), explicit


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


class _Server(HTTPServer):
    """One thread serves every request in turn: no thread started per request, and a
    snapshot's renderings are cached, so a 10 Hz scrape costs little CPU (and GIL)."""

    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up in DNS, which can hang a board offline
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "phosphene-monitor"
    protocol_version = "HTTP/1.0"  # one request per connection: none can hold the one thread
    timeout = 5  # a client that stalls mid-request is dropped after this

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse(self) -> None:
        self._send(405, b"read-only: GET and HEAD only\n", "text/plain; charset=utf-8", True,
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        feed: MonitorFeed = self.server.feed
        snap = feed.snapshot
        if path in ("/snapshot", "/status", "/metrics"):
            feed.wanted = True  # the next poll publishes a fresh one
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8", body)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", body)
        elif snap is None:
            self._send(503, b'{"error":"no snapshot yet"}', "application/json", body)
        elif path == "/snapshot":
            self._send(200, snap.page_json(), "application/json", body)
        elif path == "/status":
            self._send(200, snap.status_json(), "application/json", body)
        elif path == "/metrics":
            self._send(200, snap.metrics(), "text/plain; version=0.0.4; charset=utf-8", body)
        else:
            self._send(404, b"not found: /, /status, /metrics, /snapshot\n", "text/plain; charset=utf-8", body)

    def _send(self, code: int, payload: bytes, content_type: str, body: bool,
              headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)

    def log_message(self, format, *args) -> None:
        log.debug("monitor %s: " + format, self.address_string(), *args)


class MonitorServer:
    """Serves a MonitorFeed over HTTP, read-only, from one daemon thread.

    Binds a loopback address unless allow_remote (the address was written out on the
    command line); port 0 takes a free port (see `port`, `url`).
    """

    def __init__(self, feed: MonitorFeed, host: str = "127.0.0.1", port: int = 0, *,
                 allow_remote: bool = False):
        if not allow_remote and not is_loopback(host):
            raise MonitorError(f"the monitor serves loopback only unless the address is written out; "
                               f"refusing {host!r} (give HOST:PORT explicitly to serve it)")
        try:
            server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        except OSError as exc:
            raise MonitorError(f"cannot serve the monitor on {host}:{port}: {exc.strerror or exc}") from None
        except (OverflowError, UnicodeError) as exc:
            raise MonitorError(f"cannot serve the monitor on {host}:{port}: {exc}") from None
        server.feed = feed
        server.page = render_page().encode()
        self._server = server
        self.host = host
        self.port = int(server.server_address[1])
        self.remote = not is_loopback(host)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> MonitorServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="monitor-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5.0)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MonitorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
