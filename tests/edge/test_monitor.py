"""The bedside monitor's server: /status and /metrics of a live `phosphene run --monitor`
parse (the latter with prometheus_client's parser), it binds loopback unless an address is
written out, it is read-only, and the runtime only publishes a snapshot from poll()."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.edge.monitor import (
    MonitorError,
    MonitorFeed,
    MonitorServer,
    attach_monitor,
    parse_monitor_address,
    snapshot_from_records,
)
from phosphene.geometry import utah_96


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def _families(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels) -> float:
    return next(s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.parametrize(("text", "expected"), [
    ("8080", ("127.0.0.1", 8080, False)),
    ("0", ("127.0.0.1", 0, False)),
    ("localhost:9000", ("localhost", 9000, True)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080, True)),
    ("[::1]:8080", ("::1", 8080, True)),
])
def test_parse_monitor_address(text, expected):
    assert parse_monitor_address(text) == expected


@pytest.mark.parametrize("text", [":8080", "70000", "host:port", "[::1]8080", ""])
def test_parse_monitor_address_refuses(text):
    with pytest.raises(MonitorError):
        parse_monitor_address(text)


def _feed() -> MonitorFeed:
    return MonitorFeed(utah_96(), threshold=0.5)


def test_server_refuses_a_non_loopback_address_unless_asked():
    with pytest.raises(MonitorError, match="loopback only"):
        MonitorServer(_feed(), "0.0.0.0", 0)
    with MonitorServer(_feed(), "0.0.0.0", 0, allow_remote=True) as server:  # written out: served
        assert server.remote and server.port > 0
        status, _, body = _get(f"http://127.0.0.1:{server.port}/status")
        assert status == 503 and "no snapshot" in body  # nothing published yet
    with MonitorServer(_feed(), "localhost", 0) as server:
        assert not server.remote


def test_port_in_use_is_one_error_line(edge_bundle_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--duration", "1",
                                          "--monitor", str(port)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: cannot serve the monitor on 127.0.0.1:{port}")


def test_bad_monitor_address_is_a_usage_error(edge_bundle_path):
    result = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--monitor", ":8080"])
    assert result.exit_code == 2
    assert "Error: Invalid value for '--monitor': ':8080' names no host" in result.output


def test_live_run_serves_status_metrics_and_the_page(edge_bundle_path, tmp_path):
    """A real `phosphene run --monitor 0` on a simulated array with dropped frames, with the
    workstation stack (and matplotlib) blocked as on a board."""
    from test_cli import SITECUSTOMIZE

    site = tmp_path / "site"
    site.mkdir()
    hook = SITECUSTOMIZE.replace("'tf_keras')", "'tf_keras', 'matplotlib')")
    assert "'matplotlib'" in hook
    (site / "sitecustomize.py").write_text(hook)
    attempts = tmp_path / "attempts.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(site), "PHOSPHENE_BLOCKED_LOG": str(attempts)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "phosphene", "run", str(edge_bundle_path), "--pty-from-simulator",
         "--duration", "6", "--sim-drop-frames", "0.02", "--monitor", "0", "--status-s", "0", "--json",
         "--out", str(tmp_path / "decisions.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"monitor: (http://127\.0\.0\.1:\d+/) \(read-only", line)
            if m:
                url = m.group(1)
                break
        assert url, "the run did not say where its monitor is"
        deadline = time.monotonic() + 20
        while True:
            code, ctype, body = _get(url + "status")
            assert code == 200 and ctype == "application/json"
            status = json.loads(body)
            if status["decisions"] >= 2 and status["frames_lost"] >= 1:
                break
            assert time.monotonic() < deadline, f"no decisions or losses on /status: {status}"
            time.sleep(0.25)
        code, ctype, text = _get(url + "metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        fams = _families(text)
        code, _, body = _get(url + "status")
        after = json.loads(body)
        # counters never run backwards between a scrape and a later /status
        assert _value(fams["phosphene_decisions"]) <= after["decisions"]
        assert 1 <= _value(fams["phosphene_frames_lost"]) <= after["frames_lost"]
        for name in ("phosphene_crc_errors", "phosphene_bytes_discarded", "phosphene_budget_misses"):
            assert fams[name].type == "counter" and _value(fams[name]) >= 0
        reasons = {s.labels["reason"] for s in fams["phosphene_no_decisions"].samples}
        assert {"stall", "lost_samples", "warming_up", "stale"} <= reasons
        hist = fams["phosphene_decision_latency_seconds"]
        assert hist.type == "histogram"
        buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
        assert _value(hist, le="+Inf") == next(s.value for s in hist.samples if s.name.endswith("_count")) >= 2
        assert any(float(s.labels["le"]) == 0.05 for s in buckets[:-1])  # the bundle's 50 ms budget
        health = fams["phosphene_channel_health"].samples
        assert len(health) == 96 and {s.labels["state"] for s in health} <= {
            "ok", "dead", "flat", "saturated", "dead_at_calibration", "unknown"}
        code, ctype, page = _get(url)
        assert code == 200 and ctype.startswith("text/html") and "<svg id=\"array\"" in page
        code, _, snapshot = _get(url + "snapshot")
        data = json.loads(snapshot)
        assert data["live"] and len(data["channels"]["ids"]) == 96 and data["threshold"] is not None
        request = urllib.request.Request(url + "status", method="POST", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not attempts.exists(), f"imports attempted: {attempts.read_text()}"
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["type"] == "summary" and summary["decisions"] >= after["decisions"]


def test_runtime_publishes_from_poll_at_most_every_interval(edge_decoder, edge_bundle):
    from phosphene.edge.runtime import DecisionSinks, Runtime, RuntimeConfig

    clock = [0]
    runtime = Runtime(edge_decoder, spec=edge_bundle.window_spec, normaliser_config=edge_bundle.normaliser_config,
                      n_channels=edge_bundle.n_channels, config=RuntimeConfig(status_interval_s=0),
                      sinks=DecisionSinks(), clock_ns=lambda: clock[0])
    try:
        feed = attach_monitor(runtime, edge_bundle.channel_map, interval_s=0.5)
        first = feed.snapshot
        assert feed.published == 1 and first.data["status"]["decisions"] == 0
        feed.wanted = True
        for ms in (100, 200, 400):
            clock[0] = ms * 1_000_000
            runtime.poll()
        assert feed.snapshot is first  # nothing new inside the interval
        feed.wanted = False
        clock[0] = 600_000_000
        runtime.poll()
        assert feed.snapshot is first  # nobody asked since: nothing published
        feed.wanted = True  # what a request for /status, /metrics or /snapshot does
        runtime.poll()  # the start counts as input: a stall line by now, and a new snapshot
        assert feed.published == 2 and feed.snapshot is not first
        assert first.data["status"]["no_decisions"] == {}  # a published snapshot never changes
        reasons = feed.snapshot.data["events"]["reason"]
        assert reasons == ["stall"] * runtime.counters.no_decisions["stall"] and reasons
        assert len(feed.snapshot.data["gaps"]) == 1 and feed.snapshot.data["gaps"][0][2] == ["stall"]
    finally:
        runtime.close()


def test_a_log_gives_the_same_metrics():
    t = 1_800_000_000.0
    records = [
        {"type": "no_decision", "reason": "warming_up", "time_unix": t + 0.2},
        {"type": "decision", "p_perceived": 0.8, "decision": 1, "latency_us": {"total": 300.0}, "time_unix": t + 1},
        {"type": "no_decision", "reason": "lost_samples", "time_unix": t + 2},
        {"type": "no_decision", "reason": "stall", "time_unix": t + 2.5},
        {"type": "decision", "p_perceived": 0.2, "decision": 0, "latency_us": {"total": 9000.0}, "time_unix": t + 3},
        {"type": "health", "dead": [5], "flat": [], "saturated": [7], "dead_at_calibration": [1],
         "warming_up": False, "ok": False, "time_unix": t + 3.5},
        {"type": "summary", "mode": "triggered", "duration_s": 4.0, "decisions": 2, "budget_ms": 5.0,
         "budget_misses": 1, "no_decisions": {"warming_up": 1, "lost_samples": 1, "stall": 1},
         "frames_lost": 3, "crc_errors": 1, "bytes_discarded": 40, "latency_us": {"p50": 300.0, "p99": 9000.0}},
    ]
    data = snapshot_from_records(records).data
    assert data["threshold"] == 0.5 and not data["live"]
    # a gap runs from the decision before the no-decisions (or the first of them) to the decision after
    assert data["gaps"] == [[0.0, 0.8, ["warming_up"]], [0.8, 2.8, ["lost_samples", "stall"]]]
    fams = _families(snapshot_from_records(records).metrics().decode())
    assert _value(fams["phosphene_no_decisions"], reason="stall") == 1
    assert _value(fams["phosphene_crc_errors"]) == 1 and _value(fams["phosphene_bytes_discarded"]) == 40
    hist = fams["phosphene_decision_latency_seconds"]
    assert _value(hist, le="0.005") == 1 and _value(hist, le="+Inf") == 2
    states = {s.labels["channel"]: s.labels["state"] for s in fams["phosphene_channel_health"].samples}
    assert (states["5"], states["7"], states["1"], states["0"]) == ("dead", "saturated", "dead_at_calibration", "ok")
