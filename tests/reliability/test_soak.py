"""Soak: the runtime (its own process, the real CLI) decodes a long stream at 10x real time
with faults at a low rate. Memory must stay flat and the counters must balance.

CI runs the short version; `make soak` runs an hour of wall time (10 hours of recording)
and writes bench/results/soak.json, summarised in docs/reliability.md.
Set PHOSPHENE_SOAK_S to change the soak's wall time; PHOSPHENE_SOAK_BUNDLE to soak another
bundle (default: demo-run/bundle when it exists, else a tiny test bundle).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_harness import _opened
from tiny_bundle import make_tiny_bundle

from phosphene.firmware_bridge.simulator import CortexSource, FaultConfig, Simulator, SimulatorConfig
from phosphene.firmware_bridge.transport import PtyPair

ROOT = Path(__file__).resolve().parents[2]
SPEED = 10.0
FAULTS = FaultConfig(drop_frames_p=2e-4, flip_bits_p=2e-9, garbage_burst_bytes=200,
                     garbage_every_s=120.0, stall_ms=400.0, stall_every_s=900.0)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(bundle: Path, wall_s: float, *, sample_every_s: float = 5.0) -> dict:
    from phosphene.edge.bundle import load_bundle

    b = load_bundle(bundle)
    pty = PtyPair()
    cmd = [sys.executable, "-m", "phosphene", "run", str(bundle), "--port", pty.device_path,
           "--mode", "continuous", "--json", "--status-s", "0", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    counts = {"decision": 0, "no_decision": 0}
    reasons: dict[str, int] = {}
    last: list[dict] = []

    def read_stdout():
        for line in proc.stdout:
            rec = json.loads(line)
            counts[rec["type"]] = counts.get(rec["type"], 0) + 1
            if rec["type"] == "no_decision":
                reasons[rec["reason"]] = reasons.get(rec["reason"], 0) + 1
            if rec["type"] == "summary":
                last.append(rec)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while _opened(pty.device_path, proc.pid) == 0 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        stop.wait(0.05)
    sim = Simulator(CortexSource("psychometric", seed=7, channel_map=b.channel_map),
                    SimulatorConfig(speed=SPEED, seed=7, faults=FAULTS))
    t0 = time.monotonic()
    sim.start(pty, duration_s=wall_s * SPEED)
    rss = []
    while not sim.wait(sample_every_s):
        rss.append((round(time.monotonic() - t0, 1), round(_rss_mb(proc.pid), 2)))
    stop.wait(0.05)  # drain, well under the stall bound
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=60)
    stderr = proc.stderr.read()
    pty.close()
    assert proc.returncode == 0, stderr[-2000:]
    assert last, "no summary line"
    return {"wall_s": wall_s, "speed": SPEED, "recording_h": wall_s * SPEED / 3600, "rss_mb": rss,
            "summary": last[0], "simulator": sim.counts.to_dict(), "records": counts,
            "no_decision_reasons": reasons, "faults": {k: v for k, v in vars(FAULTS).items()},
            "bundle": str(bundle)}


def check(result: dict) -> None:
    s, sim = result["summary"], result["simulator"]
    assert s["stopped_by"] in ("SIGTERM", "signal", "stop") or s["stopped_by"]
    assert s["frames_lost"] == sim["expected_frames_lost"]
    assert s["bytes_discarded"] == sim["expected_bytes_discarded"]
    assert s["duplicates"] == sim["expected_duplicates"] and s["reordered"] == sim["expected_reordered"]
    assert s["frames_ok"] + 0 == sim["frames_sent"] - sim["frames_corrupted"] - sim["tx_overflow_frames"]
    assert s["decisions"] == result["records"]["decision"] > 0
    rss = [mb for _, mb in result["rss_mb"]]
    if len(rss) >= 4:  # flat after warm-up: the last quarter within 5 MB of the second quarter
        q = len(rss) // 4
        assert max(rss[-q:]) - max(rss[q:2 * q]) < 5.0, result["rss_mb"]
    assert s["rss_mb_end"] < 150


@pytest.fixture(scope="module")
def soak_bundle(tmp_path_factory):
    chosen = os.environ.get("PHOSPHENE_SOAK_BUNDLE")
    if chosen:
        return Path(chosen)
    return make_tiny_bundle(tmp_path_factory.mktemp("soak") / "bundle")


def test_soak_short(soak_bundle):
    """CI's version: 20 s of wall time, 200 s of recording."""
    check(soak(soak_bundle, 20.0, sample_every_s=2.0))


@pytest.mark.soak
def test_soak_long(tmp_path_factory):
    wall_s = float(os.environ.get("PHOSPHENE_SOAK_S", "3600"))
    demo = ROOT / "demo-run" / "bundle"
    bundle = Path(os.environ.get("PHOSPHENE_SOAK_BUNDLE") or (
        demo if (demo / "manifest.json").is_file() else make_tiny_bundle(tmp_path_factory.mktemp("soak") / "b")))
    result = soak(bundle, wall_s, sample_every_s=30.0)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    print(f"\nsoak: {wall_s:.0f} s wall, {result['recording_h']:.1f} h of recording at {SPEED:g}x; "
          f"{s['decisions']} decisions, p50/p99 {s['latency_us']['p50']}/{s['latency_us']['p99']} us, "
          f"budget misses {s['budget_misses']}; frames lost {s['frames_lost']} (injected "
          f"{result['simulator']['frames_dropped']} drops, {result['simulator']['frames_corrupted']} "
          f"corrupted); RSS {result['rss_mb'][0][1]} -> {result['rss_mb'][-1][1]} MB")
    check(result)
