"""Pauses, in real processes: the writer goes silent and then sends its backlog, and the
runtime itself is stopped (SIGSTOP) and continued. No decision may be written later than
the staleness bound after its window's last sample was due, in either mode.

The test is the device: it writes a recorded stream into a pty, each frame when its last
sample is due (t0 + sample / rate), so the due time of every window is known exactly. The
runtime is `phosphene run --port PTY --json` in a subprocess; each line is timestamped
as it arrives on the test's side of the pipe.
"""

from __future__ import annotations

import io
import json
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
from tiny_bundle import make_tiny_bundle

from phosphene.edge.bundle import load_bundle
from phosphene.firmware_bridge.protocol import FrameType
from phosphene.firmware_bridge.simulator import CortexSource, Simulator, SimulatorConfig
from phosphene.firmware_bridge.transport import PtyPair

STREAM_S = 13.0
WRITER_PAUSE = (3.0, 5.5)  # the device is silent over these stream seconds, then bursts
RUNTIME_STOP = (8.0, 2.0)  # SIGSTOP the runtime at this stream second, for this long
BOUND_MS = 100.0
SLACK_S = 0.05  # the pipe to this test, and this test's own scheduling on a busy machine


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("pause") / "bundle")


def _frames(data: bytes, rate: float) -> list[tuple[float, bytes]]:
    """(due second, bytes) of every frame; a non-sample frame goes with the sample before it."""
    out, pos, due = [], 0, 0.0
    while pos < len(data):
        assert data[pos:pos + 4] == b"\xa5\xc3\x9e\xd1"
        ftype, length = data[pos + 5], struct.unpack_from("<H", data, pos + 6)[0]
        end = pos + 24 + length + 4
        if ftype in (FrameType.SAMPLES, getattr(FrameType, "SAMPLES_F16", -1)):
            first = struct.unpack_from("<Q", data, pos + 12)[0]
            n = struct.unpack_from("<H", data, pos + 24 + 2)[0]
            due = (first + n) / rate
        out.append((due, data[pos:end]))
        pos = end
    return out


@pytest.mark.parametrize("mode", ["continuous", "triggered"])
def test_no_decision_later_than_the_bound_after_writer_and_runtime_pauses(bundle_path, mode):
    bundle = load_bundle(bundle_path)
    rate = bundle.sample_rate_hz
    sink = io.BytesIO()
    Simulator(CortexSource("psychometric", seed=3, channel_map=bundle.channel_map),
              SimulatorConfig(speed=0, seed=3)).run(sink, duration_s=STREAM_S)
    frames = _frames(sink.getvalue(), rate)
    lines: list[tuple[float, dict]] = []
    with PtyPair() as pty:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phosphene", "run", str(bundle_path), "--port", pty.device_path,
             "--mode", mode, "--json", "--stale-ms", str(BOUND_MS), "--stall-ms", "200",
             "--status-s", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def read_stdout():
            for line in proc.stdout:
                lines.append((time.monotonic(), json.loads(line)))

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        for line in proc.stderr:  # the runtime prints its banner once the port is open
            if " probe, window " in line:  # the run header: the port is open
                break
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining stderr
        t0 = time.monotonic() + 0.2
        stopped = False
        for due, frame in frames:
            release = max(due, WRITER_PAUSE[1]) if WRITER_PAUSE[0] <= due < WRITER_PAUSE[1] else due
            wait = t0 + release - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not stopped and due >= RUNTIME_STOP[0]:
                proc.send_signal(signal.SIGSTOP)
                stopped = True
                threading.Timer(RUNTIME_STOP[1], proc.send_signal, (signal.SIGCONT,)).start()
            pty.write(frame, timeout_s=10.0)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=10)

    records = [(t, r) for t, r in lines if r["type"] in ("decision", "no_decision")]
    decided = [(t, r) for t, r in records if r["type"] == "decision"]
    stale = [r for _, r in records if r.get("reason") == "stale"]
    late = [(r["window"], round(t - (t0 + r["window"][1] / rate), 3)) for t, r in decided
            if t - (t0 + r["window"][1] / rate) > BOUND_MS / 1e3 + SLACK_S]
    assert not late, f"{len(late)} decisions written later than the bound after their window was due: {late[:5]}"
    # both pauses were seen as such, and decisions came back after each
    def due_s(r):
        return r["window"][1] / rate
    assert any(WRITER_PAUSE[0] < due_s(r) <= WRITER_PAUSE[1] for r in stale), "the writer's backlog"
    assert any(RUNTIME_STOP[0] - 0.5 < due_s(r) <= sum(RUNTIME_STOP) + 0.5 for r in stale), "the stopped runtime"
    assert any(WRITER_PAUSE[1] + 0.2 < due_s(r) < RUNTIME_STOP[0] for _, r in decided)
    assert any(due_s(r) > sum(RUNTIME_STOP) + 0.5 for _, r in decided)
    worst = max(t - (t0 + r["window"][1] / rate) for t, r in decided)
    print(f"\n{mode}: {len(decided)} decisions, latest {worst * 1e3:.1f} ms after its window was due; "
          f"{len(stale)} stale lines covering {lines[-1][1].get('stale_windows')} windows")
    summary = lines[-1][1]
    assert summary["type"] == "summary" and summary["stale_windows"] >= len(stale)
    if mode == "continuous":  # a backlog is skipped in a few lines, not one per 16 ms window
        assert len(stale) <= 6 and summary["stale_windows"] >= 100
