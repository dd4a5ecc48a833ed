"""Capture files (atomic, exact bytes) and their replay, paced by the frames' own clock."""

from __future__ import annotations

import io

import numpy as np
import pytest

from phosphene.firmware_bridge.capture import (
    CaptureWriter,
    Replayer,
    describe_capture,
    replay_frames,
)
from phosphene.firmware_bridge.protocol import (
    SampleFrame,
    StatusFrame,
    StatusState,
    StreamDecoder,
    encode_samples,
)
from phosphene.firmware_bridge.simulator import (
    CortexSource,
    FaultConfig,
    Simulator,
    SimulatorConfig,
)
from phosphene.firmware_bridge.transport import FrameReader, PtyPair


def simulated_bytes(duration_s: float, faults: FaultConfig | None = None, **config) -> bytes:
    buf = io.BytesIO()
    config = SimulatorConfig(speed=0, seed=5, faults=faults or FaultConfig(), **config)
    Simulator(CortexSource("psychometric", seed=2), config).run(buf, duration_s)
    return buf.getvalue()


def test_capture_writer_is_atomic(tmp_path):
    path = tmp_path / "run.wire"
    path.write_bytes(b"old")
    w = CaptureWriter(path)
    w.write(b"abc")
    w.write(b"def")
    assert path.read_bytes() == b"old" and w.temp_path.exists() and w.temp_path.parent == tmp_path
    assert w.close() == path and path.read_bytes() == b"abcdef" and w.bytes_written == 6
    w.close()  # idempotent
    with CaptureWriter(path) as w:
        w.write(b"gone")
        w.discard()
    assert path.read_bytes() == b"abcdef"
    with pytest.raises(KeyboardInterrupt), CaptureWriter(path) as w:
        w.write(b"kept")
        raise KeyboardInterrupt  # Ctrl-C mid-stream: what was sent is kept, complete
    assert path.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.wire"]  # no temporary left
    with pytest.raises(FileNotFoundError):
        CaptureWriter(tmp_path / "missing" / "x.wire")


def test_replay_pieces_are_the_file_paced_by_the_sample_clock(tmp_path):
    faults = FaultConfig(drop_frames_p=0.03, reorder_frames_p=0.03, duplicate_frames_p=0.03,
                         flip_bits_p=2e-6, garbage_burst_bytes=500, garbage_every_s=0.7,
                         restart_seq_at_s=1.5)
    data = simulated_bytes(3.0, faults)
    path = tmp_path / "faulty.wire"
    path.write_bytes(data)
    pieces = list(replay_frames(path))
    assert b"".join(p for _, p in pieces) == data  # every byte, in order, once
    dues = [due for due, _ in pieces]
    assert dues[0] == 0.0 and dues == sorted(dues)
    # the BOOT status goes at once; each later piece ends with the SAMPLES frame whose last
    # sample makes it due: (counter + 16) / 1000 s in the first run, as the simulator sent it
    assert isinstance(StreamDecoder().feed(pieces[0][1])[-1], StatusFrame)
    late = checked = 0
    for due, piece in pieces[1:]:
        frames = StreamDecoder().feed(piece)
        if any(isinstance(f, StatusFrame) and f.boot for f in frames):
            break  # the restart
        last = frames[-1]
        if isinstance(last, SampleFrame):
            expected = (last.sample_counter + 16) / 1000
            late += due > expected  # a late frame goes at once, after its successor
            checked += 1
            assert due == pytest.approx(expected) or due > expected
    assert checked > 80 and late <= 5
    # the clock runs on through the restart: 188 frames of 16 samples, one per 16 ms
    assert dues[-1] == pytest.approx(188 * 0.016)
    info = describe_capture(path)
    decoder = StreamDecoder()
    decoder.feed(data)
    assert info["bytes"] == len(data) and info["frames"] == decoder.stats.frames_ok
    assert (info["n_channels"], info["sample_rate_hz"], info["frame_samples"]) == (96, 1000, 16)
    assert info["stream_s"] == dues[-1]


def test_replay_of_garbage_and_of_a_mid_frame_start(tmp_path):
    frames = [encode_samples(i, 16 * i, np.full((16, 4), i, np.float16), scale_uv=1.0,
                             sample_rate_hz=1000) for i in range(5)]
    data = b"\xa5\xc3junk" + frames[0][7:] + b"".join(frames[1:]) + b"\xa5\xc3\x9e"
    path = tmp_path / "cut.wire"
    path.write_bytes(data)
    pieces = list(replay_frames(path))
    assert b"".join(p for _, p in pieces) == data
    assert [due for due, _ in pieces] == pytest.approx([0.016, 0.032, 0.048, 0.064, 0.064])
    garbage = tmp_path / "garbage.wire"
    garbage.write_bytes(bytes(range(256)) * 40)
    assert list(replay_frames(garbage)) == [(0.0, bytes(range(256)) * 40)]
    assert describe_capture(garbage)["frames"] == 0


def test_replayer_over_a_real_pty_delivers_the_captured_frames(tmp_path):
    data = simulated_bytes(2.0, FaultConfig(garbage_burst_bytes=200, drop_bytes_p=2e-5))
    path = tmp_path / "run.wire"
    path.write_bytes(data)
    expected_decoder = StreamDecoder()
    expected = expected_decoder.feed(data)
    replayer = Replayer(path, speed=4.0)
    with PtyPair() as pty, FrameReader(pty.device_path) as reader:  # pyserial on the device side
        assert reader.reader.wait_connected(5.0)
        counts = replayer.run(pty)
        got = reader.wait_for(lambda f: isinstance(f, StatusFrame) and f.state == StatusState.STOPPED,
                              timeout_s=10.0)
        stats = reader.stats
    assert got == expected
    assert stats.bytes_received == len(data) == counts.bytes_sent
    assert (stats.bytes_discarded, stats.frames_lost) == (expected_decoder.stats.bytes_discarded,
                                                       expected_decoder.stats.frames_lost)
    # 2 s of stream at 4x: at least 0.5 s of wall time, not much more
    assert counts.stream_s == pytest.approx(2.0, abs=0.02) and 0.49 <= counts.elapsed_s < 1.5
    with pytest.raises(ValueError, match="speed"):
        Replayer(path, speed=-1)
