"""Bad input at the entry points not covered beside their own code: one `Error:` line,
a non-zero exit, no traceback, and never a half-written output."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import serial
from click.testing import CliRunner
from tiny_bundle import make_tiny_bundle

from phosphene.cli import cli
from phosphene.dataset import Dataset
from phosphene.firmware_bridge.transport import PtyPair


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bad") / "bundle")


def _one_error_line(result, expected_start: str) -> None:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert lines[-1].startswith(f"Error: {expected_start}"), lines[-1]


def test_pretrain_on_nan_samples(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.path, data, ignore=shutil.ignore_patterns("cache"))
    arr = np.load(data / "sessions" / "rest-000.npy", mmap_mode="r+")
    arr[5000, 3] = np.inf
    arr.flush()
    del arr
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["pretrain", str(data), "--preset", "tiny", "--steps", "2", "--out", str(run)])
    _one_error_line(r, "session rest-000: sample 5000 on electrode 4 is inf")
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


def test_resume_with_a_checkpoint_of_another_preset(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["pretrain", str(tiny_dataset.path), "--preset", "tiny", "--steps", "2",
                                 "--out", str(run)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["pretrain", str(tiny_dataset.path), "--preset", "small", "--steps", "4",
                                 "--out", str(run), "--resume"])
    _one_error_line(r, "")
    assert "preset 'tiny'" in r.output.strip().splitlines()[-1]


def test_bundle_with_a_missing_file(bundle_path, tmp_path):
    broken = tmp_path / "bundle"
    shutil.copytree(bundle_path, broken)
    (broken / "probe.json").unlink()
    for command in (["verify", str(broken)], ["bench", str(broken), "--runs", "10"]):
        r = CliRunner().invoke(cli, command)
        _one_error_line(r, "")
        assert "probe.json" in r.output.strip().splitlines()[-1]


def test_port_that_is_busy(bundle_path):
    with PtyPair() as pty:
        holder = serial.Serial(pty.device_path, exclusive=True)
        try:
            r = CliRunner().invoke(cli, ["run", str(bundle_path), "--port", pty.device_path,
                                         "--duration", "1"])
        finally:
            holder.close()
    _one_error_line(r, "")
    assert "busy" in r.output.strip().splitlines()[-1]


def test_output_where_nothing_can_be_written(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    r = CliRunner().invoke(cli, ["simulate", "dataset", str(target / "data"), "--preset", "tiny"])
    _one_error_line(r, "could not write")
    r = CliRunner().invoke(cli, ["simulate", "dataset", "/proc/phosphene-denied", "--preset", "tiny"])
    _one_error_line(r, "could not write")


def _kill_after(cmd: list[str], seconds: float, *, wait_for: str | None = None) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "phosphene", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if wait_for:  # wait until the process says it is writing, then kill it mid-write
        for line in proc.stderr:
            if wait_for in line:
                break
    time.sleep(seconds)  # a crash at an arbitrary moment, not an event to wait for
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_a_crash_mid_write_keeps_the_previous_dataset(tiny_dataset, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(tiny_dataset.path, out, ignore=shutil.ignore_patterns("cache"))
    before = Dataset.open(out).summary()
    _kill_after(["simulate", "dataset", str(out), "--preset", "demo", "--overwrite"], 1.0,
                wait_for="simulate")
    after = Dataset.open(out).summary()
    assert after == before  # the previous good dataset, whole


def test_a_crash_mid_run_leaves_no_half_written_decision_log(bundle_path, tmp_path):
    log = tmp_path / "decisions.jsonl"
    log.write_text('{"type": "summary", "previous": true}\n')
    _kill_after(["run", str(bundle_path), "--pty-from-simulator", "--mode", "continuous", "--out", str(log),
                 "--duration", "30"], 2.5, wait_for="[phosphene run]")
    assert json.loads(log.read_text()) == {"type": "summary", "previous": True}
    partial = list(tmp_path.glob(".decisions.jsonl.*.partial"))
    assert partial, "the killed run's lines are kept beside the log for inspection"
    lines = partial[0].read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # whole lines only
