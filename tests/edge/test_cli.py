"""`phosphene run` and `phosphene bench` as a user runs them: real ptys, real simulator,
real interpreter; clean SIGTERM shutdown; the edge never imports the workstation stack."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from phosphene.cli import cli

BLOCKED = ("torch", "tensorflow", "onnx", "onnxruntime", "onnx2tf", "sklearn", "scipy", "keras",
           "tf_keras")

SITECUSTOMIZE = f"""
import os, sys
BLOCKED = {BLOCKED!r}
class _BlockWorkstationStack:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open(os.environ["PHOSPHENE_BLOCKED_LOG"], "a") as f:
                f.write(name + "\\n")
            raise ImportError(f"the edge must not import {{name}}")
        return None
sys.meta_path.insert(0, _BlockWorkstationStack())
"""


def phosphene(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phosphene.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


# --------------------------------------------------------------------------------------
def test_run_from_simulator_json_and_log(edge_bundle_path, tmp_path):
    log = tmp_path / "decisions.jsonl"
    result = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator",
                                      "--mode", "continuous", "--json", "--out", str(log),
                                      "--duration", "1.5", "--sim-speed", "2", "--status-s", "0.5"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["stopped_by"] == "duration"
    decisions = [r for r in lines if r["type"] == "decision"]
    assert decisions and summary["decisions"] == len(decisions)
    assert summary["frames_lost"] == 0 and summary["crc_errors"] == 0 and summary["samples_lost"] == 0
    assert {r["reason"] for r in lines[:-1] if r["type"] == "no_decision"} <= {"warming_up"}
    # the log holds exactly what stdout held, complete, and no partial file is left behind
    assert [json.loads(line) for line in log.read_text().splitlines()] == lines
    assert not list(tmp_path.glob(".*partial"))
    assert "decisions" in result.stderr and "p99" in result.stderr  # status lines and summary


def test_run_mismatched_array_never_decides(edge_bundle_path):
    result = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--json",
                                      "--mode", "continuous", "--duration", "1.0",
                                      "--sim-channels", "64", "--sim-speed", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["decisions"] == 0 and lines[-1]["mismatched_blocks"] > 0
    assert lines[:-1] and all(r["reason"] == "stream_mismatch" for r in lines[:-1])
    assert "64 channels" in lines[0]["detail"]


def test_sigterm_ends_cleanly_with_summary_and_complete_log(edge_bundle_path, tmp_path):
    log = tmp_path / "run.jsonl"
    proc = phosphene("run", str(edge_bundle_path), "--pty-from-simulator", "--mode", "continuous",
                     "--json", "--out", str(log), "--sim-speed", "2")
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        first = None
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
                if json.loads(line)["type"] == "decision":
                    first = line
        assert first is not None, "no decision within 60 s"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["type"] == "summary" and summary["stopped_by"] == "SIGTERM"
    assert "Traceback" not in err and "summary:" in err
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged[-1] == summary and logged[0]["type"] in ("decision", "no_decision")


@pytest.mark.parametrize("args, message", [
    (["run", "{missing}", "--port", "/dev/null"], "Error: bundle not found: {missing}"),
    (["run", "{bundle}", "--port", "/dev/phosphene-no-such-port"],
     "Error: no such port: /dev/phosphene-no-such-port (is the device plugged in? list ports with "
     "`python -m serial.tools.list_ports`)"),
    (["bench", "{missing}"], "Error: bundle not found: {missing}"),
])
def test_cli_errors_are_one_line(edge_bundle_path, tmp_path, args, message):
    fill = {"missing": str(tmp_path / "nope"), "bundle": str(edge_bundle_path)}
    result = CliRunner().invoke(cli, [a.format(**fill) for a in args])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == message.format(**fill)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("extra", [[], ["--port", "/dev/null", "--pty-from-simulator"]])
def test_run_needs_exactly_one_input(edge_bundle_path, extra):
    result = CliRunner().invoke(cli, ["run", str(edge_bundle_path), *extra])
    assert result.exit_code == 2
    assert "give exactly one input: --port DEV or --pty-from-simulator" in result.stderr


def test_bench_json_keys(edge_bundle_path):
    result = CliRunner().invoke(cli, ["bench", str(edge_bundle_path), "--runs", "200", "--warmup", "10",
                                      "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    for key in ("invoke_us", "decision_us"):
        assert set(r[key]) == {"mean", "std", "p50", "p90", "p99", "max"}
        assert 0 < r[key]["p50"] <= r[key]["p90"] <= r[key]["p99"] <= r[key]["max"]
    assert r["invoke_us"]["p50"] < r["decision_us"]["p50"]  # the decision includes the invoke
    for key in ("init_ms", "first_ms", "rss_mb", "threads", "runtime", "budget_ms", "budget_ok"):
        assert key in r
    assert r["runtime"] == "litert" and r["threads"] == 1 and r["budget_ms"] == 50.0
    assert r["budget_ok"] == (r["decision_us"]["p99"] <= 50_000)


def test_edge_never_imports_the_workstation_stack(edge_bundle_path, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    attempts = tmp_path / "attempts.txt"
    env = {**os.environ, "PYTHONPATH": str(site), "PHOSPHENE_BLOCKED_LOG": str(attempts)}
    probe = subprocess.run([sys.executable, "-c", "import scipy"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "the edge must not import scipy" in probe.stderr  # the hook works
    attempts.unlink()

    run = phosphene("run", str(edge_bundle_path), "--pty-from-simulator", "--mode", "triggered",
                    "--json", "--duration", "2.5", "--sim-speed", "2", env=env)
    bench = subprocess.run([sys.executable, "-m", "phosphene.cli", "bench", str(edge_bundle_path),
                            "--runs", "50", "--warmup", "5", "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[-1]["type"] == "summary" and lines[-1]["decisions"] >= 1
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["decision_us"]["p50"] > 0
    assert not attempts.exists(), f"imports attempted: {attempts.read_text()}"


@pytest.mark.timeout(30)
def test_the_signal_handler_never_waits_for_the_stop_events_lock():
    """SIGTERM arrives while the main thread sits in stop.wait(), holding the Event's lock;
    the handler must return at once (setting the event there deadlocked `run` once in CI)."""
    import signal
    import threading

    from phosphene.edge.cli import _Signals

    stop = threading.Event()
    handler = _Signals(stop)
    with stop._cond:  # what Event.wait() holds while the handler runs on the same thread
        handler._handle(signal.SIGTERM, None)
    assert stop.wait(5.0) and handler.received == "SIGTERM"


def test_a_captured_session_replays_to_the_same_decisions(edge_bundle_path, tmp_path):
    """`run --capture` records the bytes it read; `simulate stream --replay`'s Replayer sends
    them into a pty at their own pace, and a second runtime decides exactly as the first."""
    from phosphene.firmware_bridge.capture import Replayer
    from phosphene.firmware_bridge.protocol import StreamDecoder
    from phosphene.firmware_bridge.transport import PtyPair

    capture = tmp_path / "session.wire"
    first = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--mode",
                                     "continuous", "--json", "--duration", "2.5", "--capture", str(capture)])
    assert first.exit_code == 0, first.output
    lines1 = [json.loads(line) for line in first.stdout.splitlines()]
    summary1 = lines1[-1]
    assert summary1["capture"] == {"path": str(capture), "bytes": capture.stat().st_size}
    assert not list(tmp_path.glob(".*part*"))
    frames = StreamDecoder().feed(capture.read_bytes())
    assert len(frames) == summary1["frames_ok"] and summary1["frames_lost"] == 0

    with PtyPair() as pty:
        proc = phosphene("run", str(edge_bundle_path), "--port", pty.device_path, "--mode", "continuous",
                         "--json", "--status-s", "0")
        for line in proc.stderr:
            if " probe, window " in line:  # the port is open (the run header)
                break
        Replayer(capture, speed=1.0).run(pty)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines2 = [json.loads(line) for line in out.splitlines()]

    def decided(lines):
        return [(r["window"], r["p_perceived"]) for r in lines if r["type"] == "decision"]

    assert decided(lines1) and decided(lines2) == decided(lines1)


def test_run_warns_when_the_baud_rate_cannot_carry_the_array(edge_bundle_path):
    slow = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--baud", "9600",
                                    "--duration", "0.3", "--status-s", "0"])
    assert slow.exit_code == 0, slow.output
    assert "warning: --baud 9600 is below the 1,945,000 baud" in slow.stderr
    fast = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--baud", "3000000",
                                    "--duration", "0.3", "--status-s", "0"])
    assert fast.exit_code == 0 and "warning" not in fast.stderr


def test_bench_exits_non_zero_when_the_budget_does_not_hold(edge_bundle_path):
    r = CliRunner().invoke(cli, ["bench", str(edge_bundle_path), "--runs", "50", "--warmup", "5",
                                 "--budget-ms", "0.0001", "--json"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout)["budget_ok"] is False  # the full report is still printed
    assert r.stderr.strip().splitlines()[-1].startswith("Error: the 0.0001 ms latency budget does not hold")
    ok = CliRunner().invoke(cli, ["bench", str(edge_bundle_path), "--runs", "50", "--warmup", "5",
                                  "--budget-ms", "1000", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["budget_ok"] is True
