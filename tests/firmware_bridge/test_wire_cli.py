"""`phosphene simulate stream`: exact errors, JSON counts that match a real receiver."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.firmware_bridge.protocol import SampleFrame, StatusFrame, StatusState, StreamDecoder
from phosphene.firmware_bridge.transport import FrameReader, PtyPair


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


def read_until_stopped(pty: PtyPair, decoder: StreamDecoder, done: threading.Event, runs: int = 1,
                       frames: list | None = None, raw: bytearray | None = None):
    stops = 0
    while stops < runs:
        data = pty.read(65536, timeout_s=0.2)
        if raw is not None:
            raw += data
        for frame in decoder.feed(data):
            if frames is not None:
                frames.append(frame)
            stops += isinstance(frame, StatusFrame) and frame.state == StatusState.STOPPED
    done.set()


def test_stream_to_a_port_json_counts_match_the_receiver(runner):
    decoder, done, frames = StreamDecoder(), threading.Event(), []
    with PtyPair() as pty:
        t = threading.Thread(target=read_until_stopped, args=(pty, decoder, done, 2, frames), daemon=True)
        t.start()
        r = runner.invoke(cli, ["simulate", "stream", "--port", pty.device_path, "--duration", "3",
                                "--speed", "0", "--seed", "4", "--drop-frames", "0.05",
                                "--duplicate-frames", "0.05", "--flip-bits", "1e-6",
                                "--garbage-burst", "100", "--restart-seq-at", "1.5",
                                "--wire-format", "int16", "--json"])
        assert r.exit_code == 0, r.output
        assert done.wait(30), "the receiver never saw both runs end"
    samples = [f for f in frames if isinstance(f, SampleFrame)]
    assert samples and {(f.sample_format, f.scale_uv) for f in samples} == {("int16", float(np.float32(0.02)))}
    report = json.loads(r.stdout)
    assert report["port"] == pty.device_path and report["kind"] == "psychometric"
    assert report["frames_sent"] > 0 and report["bytes_sent"] == decoder.stats.bytes_received
    for fault in ("frames_dropped", "frames_duplicated", "bits_flipped", "garbage_bytes",
                  "seq_restarts", "bytes_dropped", "frames_reordered", "stalls"):
        assert fault in report
    assert report["frames_dropped"] > 0 and report["seq_restarts"] == 1
    s = decoder.stats
    assert (s.frames_lost, s.duplicates, s.bytes_discarded, s.seq_restarts) == (
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
    assert decoder.stats.sample_frames == 2000 // 16 and decoder.stats.frames_lost == 0
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
    assert stats.frames_lost == 0 and stats.crc_errors == 0
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


def stream_via_cli(runner, args: list[str]) -> tuple[object, bytes, list]:
    """Run `simulate stream --port <a pty> ARGS` and read the pty's other side until STOPPED."""
    decoder, done, frames, raw = StreamDecoder(), threading.Event(), [], bytearray()
    with PtyPair() as pty:
        threading.Thread(target=read_until_stopped, args=(pty, decoder, done, 1, frames, raw),
                         daemon=True).start()
        r = runner.invoke(cli, ["simulate", "stream", "--port", pty.device_path, *args])
        assert r.exit_code == 0, r.output
        assert done.wait(30), "the receiver never saw the run end"
    return r, bytes(raw), frames


def test_capture_then_replay_is_bit_for_bit_and_paced(runner, tmp_path):
    capture = tmp_path / "session.wire"
    r1, sent, frames1 = stream_via_cli(runner, [
        "--duration", "2", "--speed", "0", "--kind", "threshold", "--garbage-burst", "300",
        "--drop-bytes", "2e-5", "--scale-uv", "0.5", "--capture", str(capture), "--baud", "3000000",
        "--json", "--quiet"])
    assert "warning" not in r1.stderr
    assert capture.read_bytes() == sent and len(sent) == json.loads(r1.stdout)["bytes_sent"]
    assert [p.name for p in tmp_path.iterdir()] == ["session.wire"]
    samples = [f for f in frames1 if isinstance(f, SampleFrame)]
    assert {(f.sample_format, f.scale_uv) for f in samples} == {("float16", 0.5)}
    r2, resent, frames2 = stream_via_cli(runner, ["--replay", str(capture), "--speed", "4",
                                                  "--baud", "9600", "--json"])
    assert resent == sent and frames2 == frames1
    report = json.loads(r2.stdout)
    assert report["source"] == "replay" and report["bytes_sent"] == len(sent)
    assert report["stream_s"] == pytest.approx(2.0, abs=0.02) and report["elapsed_s"] >= 0.49
    # the capture's own format sets the rate it needs
    assert ("warning: --baud 9600 is below the 1945000 baud (8N1) that 96 channels at 1000 Hz "
            "in 16-sample frames need") in r2.stderr


def test_a_slow_baud_is_warned_about_not_refused(runner):
    r, _, frames = stream_via_cli(runner, ["--duration", "0.1", "--speed", "0", "--baud", "115200",
                                           "--frame-samples", "8", "--quiet"])
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [("warning: --baud 115200 is below the 1970000 baud (8N1) that 96 channels "
                        "at 1000 Hz in 8-sample frames need; the link will fall behind and the "
                        "device will drop frames")]
    assert sum(isinstance(f, SampleFrame) for f in frames) == 13


def test_replay_refuses_what_it_cannot_honour(runner, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a capture" * 100)
    r = runner.invoke(cli, ["simulate", "stream", "--pty", "--replay", str(junk)])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == (
        f"Error: {junk} holds no phosphene frames (is it a wire capture?)")
    r = runner.invoke(cli, ["simulate", "stream", "--pty", "--replay", str(junk), "--kind", "resting",
                            "--drop-frames", "0.1"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
        "Error: --replay re-sends a capture as it was recorded; it cannot be used with --kind, "
        "--drop-frames")
    r = runner.invoke(cli, ["simulate", "stream", "--pty", "--capture", str(tmp_path / "no" / "x.wire")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(
        f"Error: cannot write capture {tmp_path / 'no' / 'x.wire'}: No such file")
    assert "Traceback" not in r.output
    # a port that cannot be opened leaves no capture behind, not even a temporary one
    r = runner.invoke(cli, ["simulate", "stream", "--port", "/dev/nonexistent", "--capture",
                            str(tmp_path / "x.wire")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("Error: no such port")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.bin"]


def test_ctrl_c_still_writes_a_complete_capture(tmp_path):
    capture = tmp_path / "live.wire"
    proc = subprocess.Popen([sys.executable, "-m", "phosphene", "simulate", "stream", "--pty",
                             "--speed", "4", "--capture", str(capture), "--json", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = json.loads(proc.stderr.readline())["pty"]
        with FrameReader(path) as reader:
            reader.wait_for(lambda f: isinstance(f, SampleFrame) and f.sample_counter >= 320,
                            timeout_s=30)
            assert not capture.exists()  # still being written, under a temporary name
            assert len(list(tmp_path.glob(".live.wire.*.part"))) == 1
            proc.send_signal(signal.SIGINT)
            reader.wait_for(lambda f: isinstance(f, StatusFrame) and f.state == StatusState.STOPPED,
                            timeout_s=30)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["live.wire"]
    data = capture.read_bytes()
    frames = StreamDecoder().feed(data)
    assert frames[0].boot and frames[-1].state == StatusState.STOPPED
    assert len(data) == json.loads(out)["bytes_sent"]


def test_a_port_that_disappears_mid_run_is_one_error_line_with_the_counts(tmp_path):
    capture = tmp_path / "cut.wire"
    pty = PtyPair()
    proc = subprocess.Popen([sys.executable, "-m", "phosphene", "simulate", "stream", "--port",
                             pty.device_path, "--speed", "0", "--json", "--quiet",
                             "--capture", str(capture)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        decoder, received = StreamDecoder(), bytearray()
        deadline = time.monotonic() + 30
        while decoder.stats.sample_frames < 20:
            received += pty.read(65536, timeout_s=0.2)
            decoder.feed(received[decoder.stats.bytes_received:])
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        pty.close()  # the device is unplugged
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        pty.close()
    assert proc.returncode == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    assert errors[0].startswith(f"Error: port {pty.device_path} failed mid-stream: ")
    report = json.loads(out)
    assert report["frames_sent"] >= 20 and report["bytes_sent"] > 0
    assert report["error"] == errors[0][len("Error: "):]
    # the capture holds every byte sent before the port went, the ones read first among them
    captured = capture.read_bytes()
    assert len(captured) == report["bytes_sent"] and captured.startswith(bytes(received))
    assert [p.name for p in tmp_path.iterdir()] == ["cut.wire"]
