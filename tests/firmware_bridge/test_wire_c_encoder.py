"""The C99 reference encoder: built with the system compiler, byte-identical to Python."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import phosphene.firmware_bridge as fb
import pytest
from phosphene.firmware_bridge.protocol import (
    EventFrame,
    SampleFrame,
    StatusFrame,
    StatusState,
    StreamDecoder,
    samples_frame_bytes,
)
from phosphene.firmware_bridge.transport import PtyPair

C_DIR = Path(fb.__file__).resolve().parent / "c"


@pytest.fixture(scope="module")
def test_wire(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler (cc) is required to build the reference encoder"
    exe = tmp_path_factory.mktemp("c") / "test_wire"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O2", "-o", str(exe),
                    str(C_DIR / "test_wire.c"), str(C_DIR / "phosphene_wire.c")],
                   check=True, capture_output=True, text=True)
    return exe


def test_c_python_and_the_spec_agree_byte_for_byte(test_wire, doc_vectors, python_vectors):
    out = subprocess.run([str(test_wire), "vectors"], check=True, capture_output=True, text=True).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    c_vectors = {name: bytes.fromhex(lines[name]) for name in doc_vectors}
    assert c_vectors == doc_vectors == python_vectors
    assert int(lines["crc32_check"], 16) == zlib.crc32(b"123456789") == 0xCBF43926
    assert lines["limits"].split() == [str(samples_frame_bytes(96, 341)), "0"]
    assert lines["small_buffer"] == "0"


def expected_c_samples(k: int, n_channels: int, n_samples: int) -> np.ndarray:
    i = np.arange(n_channels * n_samples, dtype=np.int64)
    return (((k * 7919 + i * 31) % 4001) - 2000).astype(np.int16).reshape(n_samples, n_channels)


def check_c_stream(frames, n_frames: int, n_channels: int, n_samples: int) -> None:
    samples = [f for f in frames if isinstance(f, SampleFrame)]
    events = [f for f in frames if isinstance(f, EventFrame)]
    status = [f for f in frames if isinstance(f, StatusFrame)]
    assert len(samples) == n_frames and len(events) == sum(k % 10 == 5 for k in range(n_frames))
    assert status[0].boot and status[-1].state == StatusState.STOPPED
    for k, f in enumerate(samples):
        assert f.sample_counter == k * n_samples and f.sample_rate_hz == 1000
        assert np.array_equal(f.data, expected_c_samples(k, n_channels, n_samples))
    assert events[0].electrode == 6 and events[0].current_ua == 6.0


def test_python_decodes_what_the_c_program_writes_to_a_pty(test_wire):
    n_frames = 200
    with PtyPair() as pty:
        proc = subprocess.Popen([str(test_wire), "stream", pty.device_path, str(n_frames)],
                                stderr=subprocess.PIPE)
        decoder = StreamDecoder()
        frames = []
        while True:
            chunk = pty.read(65536, timeout_s=0.2)
            frames += decoder.feed(chunk)
            if frames and isinstance(frames[-1], StatusFrame) and frames[-1].state == StatusState.STOPPED:
                break
            assert chunk or proc.poll() is None, f"C program ended early: {proc.stderr.read()!r}"
        assert proc.wait(10) == 0
    s = decoder.stats
    assert (s.seq_gaps, s.crc_errors, s.bytes_discarded, s.frames_ok) == (0, 0, 0, n_frames + 22)
    check_c_stream(frames, n_frames, 96, 16)


def test_c_program_other_geometry_to_a_file(test_wire, tmp_path):
    out = tmp_path / "stream.bin"
    subprocess.run([str(test_wire), "stream", str(out), "30", "4", "1"], check=True)
    decoder = StreamDecoder()
    frames = decoder.feed(out.read_bytes())
    check_c_stream(frames, 30, 4, 1)
    assert decoder.stats.seq_gaps == 0
