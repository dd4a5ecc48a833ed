"""The C99 reference encoder: built with the system compiler, byte-identical to Python."""

from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import phosphene.firmware_bridge as fb
from phosphene.firmware_bridge.protocol import (
    EventFrame,
    FrameType,
    SampleFrame,
    StatusFrame,
    StatusState,
    StreamDecoder,
    encode_samples,
    quantize_uv,
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
    assert lines["f16_nan"] == "0"  # a NaN sample: the encoder refuses the block


def expected_c_samples(k: int, n_channels: int, n_samples: int, seed: int = 0,
                       f16: bool = False) -> np.ndarray:
    i = np.arange(n_channels * n_samples, dtype=np.int64)
    v = (((k * 7919 + i * 31 + seed) % 4001) - 2000).reshape(n_samples, n_channels)
    if f16:  # the C program sends v / 7 (float32), rounded to binary16 by its encoder
        return (v.astype(np.float32) / np.float32(7)).astype(np.float16)
    return v.astype(np.int16)


def c_boot_and_seed(stderr: str) -> tuple[int, int]:
    m = re.search(r"boot_id (\d+) seed (\d+)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def check_c_stream(frames, n_frames: int, n_channels: int, n_samples: int, seed: int = 0,
                   boot_id: int | None = None, f16: bool = False) -> None:
    samples = [f for f in frames if isinstance(f, SampleFrame)]
    events = [f for f in frames if isinstance(f, EventFrame)]
    status = [f for f in frames if isinstance(f, StatusFrame)]
    assert len(samples) == n_frames and len(events) == sum(k % 10 == 5 for k in range(n_frames))
    assert status[0].boot and status[-1].state == StatusState.STOPPED
    if boot_id is not None:
        assert status[0].boot_id == status[-1].boot_id == boot_id
    for k, f in enumerate(samples):
        assert f.sample_counter == k * n_samples and f.sample_rate_hz == 1000
        assert f.sample_format == ("float16" if f16 else "int16")
        expected = expected_c_samples(k, n_channels, n_samples, seed, f16)
        assert np.array_equal(f.data.view(np.uint16), expected.view(np.uint16))
    assert events[0].electrode == 6 and events[0].current_ua == 6.0


def test_python_decodes_what_the_c_program_writes_to_a_pty(test_wire):
    n_frames = 200
    with PtyPair() as pty:
        proc = subprocess.Popen([str(test_wire), "stream", "-b", "77", "-s", "12345", pty.device_path,
                                 str(n_frames)], stderr=subprocess.PIPE)
        decoder = StreamDecoder()
        frames = []
        while True:
            chunk = pty.read(65536, timeout_s=0.2)
            frames += decoder.feed(chunk)
            if frames and isinstance(frames[-1], StatusFrame) and frames[-1].state == StatusState.STOPPED:
                break
            assert chunk or proc.poll() is None, f"C program ended early: {proc.stderr.read()!r}"
        assert proc.wait(10) == 0
        assert c_boot_and_seed(proc.stderr.read().decode()) == (77, 12345)
    s = decoder.stats
    assert (s.frames_lost, s.crc_errors, s.bytes_discarded, s.frames_ok) == (0, 0, 0, n_frames + 22)
    check_c_stream(frames, n_frames, 96, 16, seed=12345, boot_id=77)


def test_c_program_other_geometry_to_a_file(test_wire, tmp_path):
    out = tmp_path / "stream.bin"
    subprocess.run([str(test_wire), "stream", "-s", "0", str(out), "30", "4", "1"], check=True,
                   capture_output=True)
    decoder = StreamDecoder()
    frames = decoder.feed(out.read_bytes())
    check_c_stream(frames, 30, 4, 1)
    assert decoder.stats.frames_lost == 0


def test_c_program_sends_float16_frames_to_a_pty(test_wire):
    with PtyPair() as pty:
        proc = subprocess.Popen([str(test_wire), "stream", "-f", "-s", "99", pty.device_path, "40"],
                                stderr=subprocess.PIPE)
        decoder, frames = StreamDecoder(), []
        while not (frames and isinstance(frames[-1], StatusFrame) and frames[-1].state == StatusState.STOPPED):
            chunk = pty.read(65536, timeout_s=0.2)
            frames += decoder.feed(chunk)
            assert chunk or proc.poll() is None, f"C program ended early: {proc.stderr.read()!r}"
        assert proc.wait(10) == 0
        boot_id, seed = c_boot_and_seed(proc.stderr.read().decode())
    assert seed == 99 and decoder.stats.payload_errors == 0 and decoder.stats.frames_lost == 0
    check_c_stream(frames, 40, 96, 16, seed=99, boot_id=boot_id, f16=True)


def test_a_rerun_of_the_c_program_is_a_restart_not_duplicates(test_wire, tmp_path):
    def run(name: str, *args: str) -> tuple[bytes, tuple[int, int]]:
        path = tmp_path / name
        r = subprocess.run([str(test_wire), "stream", *args, str(path), "12", "8", "2"],
                           check=True, capture_output=True, text=True)
        return path.read_bytes(), c_boot_and_seed(r.stderr)

    first, (boot1, seed1) = run("a.bin")
    second, (boot2, seed2) = run("b.bin")  # the device killed and started again
    assert boot1 != boot2 and seed1 != seed2
    decoder = StreamDecoder()
    frames = decoder.feed(first + second)
    s = decoder.stats
    assert (s.seq_restarts, s.duplicates, s.frames_lost) == (1, 0, 0)
    assert len(frames) == 2 * (1 + 12 + 1 + 1)  # boot, samples, one event, stopped; per run
    # the same boot id and data twice is what a receiver must take as a retransmission
    same, _ = run("c.bin", "-b", str(boot1), "-s", str(seed1))
    assert same == first
    decoder = StreamDecoder()
    assert len(decoder.feed(first + same)) == 15 and decoder.stats.duplicates == 15


def float16_edge_values() -> np.ndarray:
    """float32 values at and around every binary16: each finite half, each midpoint between
    neighbours (a tie), the float32 just either side of it, saturation and signed zeros."""
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)  # exact in float32
    assert np.array_equal(mids.astype(np.float64), (halves[:-1] + halves[1:]) / 2)
    up, down = np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))
    special = np.array([0.0, 65504.0, 65519.996, 65520.0, 65536.0, 1e10, np.inf,
                        np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, 2.0**-25,
                        np.nextafter(np.float32(2.0**-25), np.float32(1)), 2.0**-24, 2.0**-14],
                       np.float32)
    pos = np.concatenate([halves.astype(np.float32), mids, up, down, special])
    return np.concatenate([pos, -pos])


def test_c_float16_encoder_is_byte_identical_to_python(test_wire, tmp_path):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32)
    random_bits = bits.view(np.float32)
    random_bits = random_bits[~np.isnan(random_bits)]
    log_uniform = (rng.choice([-1, 1], 100_000) * 2.0 ** rng.uniform(-27, 17, 100_000)).astype(np.float32)
    values = np.concatenate([float16_edge_values(), random_bits, log_uniform])
    ch, ns = 96, 341
    values = np.concatenate([values, np.zeros(-len(values) % (ch * ns), np.float32)])
    src = tmp_path / "values.f32"
    src.write_bytes(values.astype("<f4").tobytes())
    out = subprocess.run([str(test_wire), "f16", str(src), str(ch), str(ns), "0.5"], check=True,
                         capture_output=True).stdout
    blocks = values.reshape(-1, ns, ch)
    halves, clipped = quantize_uv(blocks, 1.0, sample_format="float16")
    assert clipped > 0  # saturation is exercised
    python = b"".join(encode_samples(k, k * ns, block, scale_uv=0.5, sample_rate_hz=1000)
                      for k, block in enumerate(halves))
    assert out[5] == FrameType.SAMPLES_F16 and len(out) == len(blocks) * samples_frame_bytes(ch, ns)
    assert out == python
    # ties went to the even neighbour (checked without numpy's conversion)
    h = np.arange(0x7C00, dtype=np.uint16)
    first_mid = 0x7C00
    tie_bits = np.frombuffer(out[24 + 12:24 + 12 + 2 * (ch * ns)], "<u2")
    got = tie_bits[first_mid:first_mid + 100]
    lo, hi = h[:100], h[1:101]
    assert np.array_equal(got, np.where(lo % 2 == 0, lo, hi))


def test_c_float16_encoder_refuses_nan(test_wire, tmp_path):
    src = tmp_path / "nan.f32"
    values = np.ones(8, np.float32)
    values[5] = np.nan
    src.write_bytes(values.astype("<f4").tobytes())
    r = subprocess.run([str(test_wire), "f16", str(src), "4", "2", "1.0"], check=False,
                       capture_output=True)
    assert r.returncode == 3 and r.stdout == b"" and b"refused" in r.stderr


def test_c_half_to_float_is_exact_for_all_65536_patterns(test_wire):
    out = subprocess.run([str(test_wire), "half2float"], check=True, capture_output=True).stdout
    c = np.frombuffer(out, "<f4")
    ref = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert len(c) == 65536 and np.array_equal(np.isnan(c), nan) and nan.sum() == 2 * 1023
    assert np.array_equal(c.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


# --- the device's side of the way back: the C scanner and command decoder ----------------------
def python_scan(data: bytes, max_payload: int) -> list[str]:
    """What `test_wire scan` must print, from the Python decoder."""
    from phosphene.firmware_bridge.protocol import Packetizer, PayloadError, StimAck, StimCommand, parse_payload

    p = Packetizer(max_payload_bytes=max_payload)
    lines = []
    for raw in p.feed(data):
        lines.append(f"frame {raw.frame_type} {raw.seq} {raw.sample_counter} {len(raw.payload)}")
        if raw.frame_type in (FrameType.STIM_COMMAND, FrameType.STIM_ACK):
            name = "command" if raw.frame_type == FrameType.STIM_COMMAND else "ack"
            try:
                f = parse_payload(raw)
            except PayloadError:
                lines.append(f"{name} invalid")
                continue
            current_na = round(f.current_ua * 1000)
            lines.append(f"command {f.command_id} {f.electrode} {int(f.at_sample)} {current_na} "
                         f"{f.deadline_samples}" if isinstance(f, StimCommand)
                         else f"ack {f.command_id} {f.electrode} {f.status} {current_na}")
            assert isinstance(f, (StimCommand, StimAck))
    lines.append(f"discarded {p.bytes_discarded} buffered {p.bytes_buffered}")
    return lines


def command_stream(rng: np.random.Generator, n: int) -> bytes:
    from phosphene.firmware_bridge.protocol import encode_stim_ack, encode_stim_command

    frames = []
    for seq in range(n):
        kind = rng.integers(0, 4)
        if kind == 0:
            frames.append(encode_stim_ack(seq, int(rng.integers(0, 2**40)), int(rng.integers(0, 2**32)),
                                          int(rng.integers(0, 97)), float(rng.integers(0, 10**6)) / 1000,
                                          int(rng.integers(0, 5))))
        elif kind == 1:  # a samples frame: more than a device's 16-byte payload limit
            frames.append(encode_samples(seq, seq * 4, rng.integers(-9, 9, (4, 3)).astype(np.int16),
                                         scale_uv=1.0, sample_rate_hz=1000))
        else:
            frames.append(encode_stim_command(seq, int(rng.integers(0, 2**40)), int(rng.integers(0, 2**32)),
                                              int(rng.integers(0, 97)), float(rng.integers(0, 10**6)) / 1000,
                                              at_sample=bool(rng.integers(0, 2)),
                                              deadline_samples=int(rng.integers(0, 50))))
    return b"".join(frames)


def corrupt(rng: np.random.Generator, data: bytes, n_faults: int) -> bytes:
    buf = bytearray(data)
    for _ in range(n_faults):
        pos = int(rng.integers(0, max(len(buf), 1)))
        kind = rng.integers(0, 4)
        if kind == 0 and buf:
            buf[pos % len(buf)] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and buf:
            del buf[pos % len(buf)]
        elif kind == 2:
            buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        else:  # a sync pattern with a forged length: the header CRC must catch it
            buf[pos:pos] = bytes((0xA5, 0xC3, 0x9E, 0xD1, 1, 5, 0xFF, 0xFF))
    return bytes(buf)


@pytest.mark.parametrize("max_payload", [16, 65535])
def test_c_scanner_finds_exactly_the_frames_python_finds_in_damaged_streams(test_wire, max_payload):
    """The device's receive loop (pw_scan in CHUNK-sized reads) against the Python
    Packetizer on clean and corrupted command streams: same frames, same fields, same bytes
    discarded and buffered. With a 16-byte limit the samples frames are refused unread."""
    rng = np.random.default_rng(max_payload)
    for trial in range(40):
        data = command_stream(rng, int(rng.integers(1, 30)))
        if trial % 4:
            data = corrupt(rng, data, int(rng.integers(1, 12)))
        chunk = int(rng.integers(1, 200))
        out = subprocess.run([str(test_wire), "scan", str(max_payload), str(chunk)], input=data,
                             check=True, capture_output=True).stdout.decode().splitlines()
        assert out == python_scan(data, max_payload), f"trial {trial}, chunk {chunk}"
    clean = command_stream(np.random.default_rng(1), 20)
    out = subprocess.run([str(test_wire), "scan", str(max_payload), "7"], input=clean, check=True,
                         capture_output=True).stdout.decode().splitlines()
    commands = [line for line in out if line.startswith("command ")]
    assert commands and out[-1] == "discarded 0 buffered 0" if max_payload > 16 else commands


def test_c_refuses_a_command_with_an_unknown_flag(test_wire):
    out = subprocess.run([str(test_wire), "vectors"], check=True, capture_output=True, text=True).stdout
    assert "command_bad_flag 0" in out
    import struct

    payload = struct.pack("<IHHII", 1, 2, 0x0004, 3, 4)
    head = struct.pack("<4sBBHIQ", bytes((0xA5, 0xC3, 0x9E, 0xD1)), 1, FrameType.STIM_COMMAND, 16, 0, 9)
    body = head + struct.pack("<I", zlib.crc32(head)) + payload
    frame = body + struct.pack("<I", zlib.crc32(body))
    out = subprocess.run([str(test_wire), "scan", "16", "64"], input=frame, check=True,
                         capture_output=True).stdout.decode().splitlines()
    assert out == ["frame 5 0 9 16", "command invalid", "discarded 0 buffered 0"]
