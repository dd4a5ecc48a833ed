"""`phosphene simulate stream`: exact errors, JSON counts that match a real receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from phosphene.firmware_bridge.protocol import StatusFrame, StatusState, StreamDecoder
from phosphene.firmware_bridge.transport import FrameReader, PtyPair

from phosphene.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("args, code, error", [
    (["--port", "/dev/nonexistent"], 1,
     ("Error: no such port: /dev/nonexistent (is the device plugged in? list ports with "
      "`python -m serial.tools.list_ports`)")),
    ([], 2, "Error: give exactly one of --port DEV or --pty"),
    (["--pty", "--port", "/dev/x"], 2, "Error: give exactly one of --port DEV or --pty"),
    (["--pty", "--dataset", "d", "--kind", "resting"], 2,
     "Error: --kind selects a virtual-cortex session; it cannot be used with --dataset"),
    (["--pty", "--session", "s1"], 2, "Error: --session needs --dataset"),
    (["--pty", "--dataset", "/nonexistent/data"], 1, "Error: dataset not found: /nonexistent/data"),
    (["--pty", "--drop-frames", "2"], 2,
     "Error: Invalid value for '--drop-frames': 2.0 is not in the range 0.0<=x<=1.0."),
    (["--pty", "--port", "loop://", "--frame-samples", "0"], 2,
     "Error: Invalid value for '--frame-samples': 0 is not in the range 1<=x<=65535."),
])
def test_bad_input_is_one_error_line(runner, args, code, error):
    r = runner.invoke(cli, ["simulate", "stream", *args])
    assert r.exit_code == code, r.output
    assert r.output.strip().splitlines()[-1] == error
    assert "Traceback" not in r.output


def read_until_stopped(pty: PtyPair, decoder: StreamDecoder, done: threading.Event, runs: int = 1):
    stops = 0
    while stops < runs:
        for frame in decoder.feed(pty.read(65536, timeout_s=0.2)):
            stops += isinstance(frame, StatusFrame) and frame.state == StatusState.STOPPED
    done.set()


def test_stream_to_a_port_json_counts_match_the_receiver(runner):
    decoder, done = StreamDecoder(), threading.Event()
    with PtyPair() as pty:
        t = threading.Thread(target=read_until_stopped, args=(pty, decoder, done, 2), daemon=True)
        t.start()
        r = runner.invoke(cli, ["simulate", "stream", "--port", pty.device_path, "--duration", "3",
                                "--speed", "0", "--seed", "4", "--drop-frames", "0.05",
                                "--duplicate-frames", "0.05", "--flip-bits", "1e-6",
                                "--garbage-burst", "100", "--restart-seq-at", "1.5", "--json"])
        assert r.exit_code == 0, r.output
        assert done.wait(30), "the receiver never saw both runs end"
    report = json.loads(r.stdout)
    assert report["port"] == pty.device_path and report["kind"] == "psychometric"
    assert report["frames_sent"] > 0 and report["bytes_sent"] == decoder.stats.bytes_received
    for fault in ("frames_dropped", "frames_duplicated", "bits_flipped", "garbage_bytes",
                  "seq_restarts", "bytes_dropped", "frames_reordered", "stalls"):
        assert fault in report
    assert report["frames_dropped"] > 0 and report["seq_restarts"] == 1
    s = decoder.stats
    assert (s.seq_gaps, s.duplicates, s.bytes_discarded, s.seq_restarts) == (
        report["expected_frames_lost"], report["expected_duplicates"],
        report["expected_bytes_discarded"], 1)


def test_stream_a_dataset_session(runner, tiny_dataset):
    session = tiny_dataset.sessions_of("threshold")[0].session
    decoder, done = StreamDecoder(), threading.Event()
    with PtyPair() as pty:
        threading.Thread(target=read_until_stopped, args=(pty, decoder, done), daemon=True).start()
        r = runner.invoke(cli, ["simulate", "stream", "--port", pty.device_path, "--dataset",
                                str(tiny_dataset.path), "--session", session, "--duration", "2",
                                "--speed", "0", "--quiet"])
        assert r.exit_code == 0, r.output
        assert done.wait(30)
    assert "expected at the receiver: frames lost 0" in r.output
    assert decoder.stats.sample_frames == 2000 // 16 and decoder.stats.seq_gaps == 0
    r = runner.invoke(cli, ["simulate", "stream", "--pty", "--dataset", str(tiny_dataset.path),
                            "--session", "nope"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == (
        f"Error: no session 'nope' in {tiny_dataset.path}")


def test_pty_mode_in_a_real_process_prints_the_device_path():
    proc = subprocess.Popen([sys.executable, "-m", "phosphene", "simulate", "stream", "--pty",
                             "--duration", "2", "--speed", "2", "--kind", "resting", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stderr.readline())  # {"pty": "/dev/pts/N"} comes first
        with FrameReader(first["pty"]) as reader:
            frames = reader.wait_for(lambda f: isinstance(f, StatusFrame)
                                     and f.state == StatusState.STOPPED, timeout_s=60)
            stats = reader.stats
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["port"] == first["pty"] and report["tx_overflow_frames"] == 0
    # the reader opened the pty a moment after the stream began; everything after is intact
    assert stats.seq_gaps == 0 and stats.crc_errors == 0
    assert frames[-1].seq == report["frames_generated"] - 1


def test_without_duration_it_streams_until_sigterm_then_closes_the_run():
    proc = subprocess.Popen([sys.executable, "-m", "phosphene", "simulate", "stream", "--pty",
                             "--speed", "4", "--json", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = json.loads(proc.stderr.readline())["pty"]
        with FrameReader(path) as reader:
            reader.wait_for(lambda f: isinstance(f, StatusFrame) and not f.boot, timeout_s=60)
            proc.terminate()  # SIGTERM: the stream must end with its STOPPED frame
            reader.wait_for(lambda f: isinstance(f, StatusFrame)
                            and f.state == StatusState.STOPPED, timeout_s=30)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["stream_s"] >= 1.0 and report["frames_sent"] > 60
