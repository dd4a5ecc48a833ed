"""Wire protocol: encoding, the streaming decoder's resync and its running counters."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phosphene.firmware_bridge.protocol import (
    DEFAULT_SAMPLE_FORMAT,
    HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    SAMPLE_FORMATS,
    SYNC,
    AckStatus,
    EventFrame,
    FrameType,
    SampleFrame,
    SequenceTracker,
    StatusFlag,
    StatusFrame,
    StatusState,
    StimAck,
    StimCommand,
    StreamDecoder,
    encode_event_stim,
    encode_frame,
    encode_samples,
    encode_status,
    encode_stim_ack,
    encode_stim_command,
    quantize_uv,
    required_baud,
    samples_frame_bytes,
    samples_to_uv,
    wire_roundtrip_uv,
)


def random_halves(rng, shape) -> np.ndarray:
    """Finite float16 samples of every kind: normal, subnormal, +-0, +-65504."""
    bits = rng.integers(0, 0x7C00, shape, dtype=np.uint16) | (rng.integers(0, 2, shape, dtype=np.uint16) << 15)
    return bits.view(np.float16)


def make_stream(n_frames: int, *, n_channels: int = 8, n_samples: int = 4, seed: int = 0,
                start_seq: int = 0) -> tuple[bytes, list[bytes]]:
    """A valid stream mixing every frame type (SAMPLES as int16 and as float16, commands
    and acknowledgements too); returns (bytes, per-frame bytes)."""
    rng = np.random.default_rng(seed)
    frames = []
    counter = 0
    for i in range(n_frames):
        seq = (start_seq + i) & 0xFFFFFFFF
        kind = i % 7
        if kind == 5:
            frames.append(encode_stim_command(seq, counter, int(rng.integers(0, 1 << 32)),
                                              int(rng.integers(1, 97)), float(rng.integers(1, 81000)) / 1000,
                                              at_sample=bool(rng.integers(0, 2)),
                                              deadline_samples=int(rng.integers(0, 100))))
        elif kind == 6:
            frames.append(encode_stim_ack(seq, counter, int(rng.integers(0, 1 << 32)), int(rng.integers(1, 97)),
                                          float(rng.integers(1, 81000)) / 1000, int(rng.integers(0, 5))))
        elif kind == 3:
            frames.append(encode_event_stim(seq, counter + 1, int(rng.integers(1, 97)),
                                            float(rng.integers(1, 81000)) / 1000))
        elif kind == 4:
            frames.append(encode_status(seq, counter, state=StatusState.STREAMING, flags=0,
                                        sample_rate_hz=1000, n_channels=n_channels,
                                        frame_samples=n_samples, boot_id=7))
        elif kind == 1:
            data = random_halves(rng, (n_samples, n_channels))
            frames.append(encode_samples(seq, counter, data, scale_uv=1.0, sample_rate_hz=1000))
            counter += n_samples
        else:
            data = rng.integers(-32768, 32768, (n_samples, n_channels)).astype(np.int16)
            frames.append(encode_samples(seq, counter, data, scale_uv=0.02, sample_rate_hz=1000))
            counter += n_samples
    return b"".join(frames), frames


# --- encoding -------------------------------------------------------------------------------
def test_python_encoder_reproduces_the_documented_test_vectors(doc_vectors, python_vectors):
    assert doc_vectors == python_vectors


def test_documented_vectors_decode_to_their_documented_fields(doc_vectors):
    d = StreamDecoder()
    frames = d.feed(b"".join(doc_vectors.values()))
    assert [type(f) for f in frames] == [SampleFrame, EventFrame, StatusFrame, SampleFrame, SampleFrame,
                                         StimCommand, StimCommand, StimAck, StimAck]
    s, e, st_, w, h, now, at, ack, expired = frames
    assert s.data.tolist() == [[1, -1], [2, -2], [32767, -32768]] and s.scale_uv == 0.25
    assert (s.seq, s.sample_counter, s.sample_rate_hz, s.n_channels, s.n_samples) == (0, 0, 1000, 2, 3)
    assert (e.seq, e.sample_counter, e.electrode, e.current_ua) == (1, 170, 42, 2.5)
    assert st_.boot and st_.state == StatusState.STREAMING and st_.boot_id == 0x12345678
    assert (st_.n_channels, st_.frame_samples, st_.sample_rate_hz) == (96, 16, 1000)
    assert (w.seq, w.sample_counter, w.sample_rate_hz) == (0xFFFFFFFF, 1 << 40, 30000)
    assert w.data.tolist() == [[-1, 0, 1, 1000]] and w.scale_uv == pytest.approx(0.02, rel=1e-7)
    assert s.sample_format == w.sample_format == "int16" and h.sample_format == "float16"
    assert (h.seq, h.sample_counter, h.sample_rate_hz, h.scale_uv, h.data.shape) == (7, 160, 1000, 1.0, (3, 2))
    assert h.data.view(np.uint16).ravel().tolist() == [0x3C00, 0xC100, 0x2E66, 0x8000, 0x7BFF, 0x0001]
    assert h.to_uv().ravel().tolist() == [1.0, -2.5, 0.0999755859375, -0.0, 65504.0, 2.0**-24]
    assert doc_vectors["samples_f16"][5] == FrameType.SAMPLES_F16 == 4
    assert now == StimCommand(3, 5000, 7, 25, 12.345, at_sample=False, deadline_samples=20)
    assert at == StimCommand(4, (1 << 33) + 16, 0xFFFFFFFF, 96, 80.0, at_sample=True, deadline_samples=0)
    assert ack == StimAck(9, 5003, 7, 25, 12.345, AckStatus.DELIVERED) and ack.delivered
    assert (expired.status_name, expired.sample_counter, expired.delivered) == ("expired", 6000, False)
    assert doc_vectors["stim_command"][5] == FrameType.STIM_COMMAND == 5
    assert doc_vectors["stim_ack"][5] == FrameType.STIM_ACK == 6


def test_header_layout_and_both_crcs(python_vectors):
    frame = python_vectors["samples"]
    assert frame[:4] == SYNC and frame[4] == 1 and frame[5] == FrameType.SAMPLES
    (payload_len,) = struct.unpack_from("<H", frame, 6)
    assert len(frame) == HEADER_BYTES + payload_len + 4 == samples_frame_bytes(2, 3)
    assert struct.unpack_from("<I", frame, 20)[0] == zlib.crc32(frame[:20])
    assert struct.unpack_from("<I", frame, len(frame) - 4)[0] == zlib.crc32(frame[:-4])


def test_round_trip_of_every_frame_type():
    _, frames = make_stream(15)
    decoded = StreamDecoder().feed(b"".join(frames))
    assert [encode_frame(f) for f in decoded] == frames


def test_encoder_rejects_bad_input_with_a_fix():
    with pytest.raises(ValueError, match="quantize_uv"):
        encode_samples(0, 0, np.zeros((4, 2), np.float32), scale_uv=0.1, sample_rate_hz=1000)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="finite"):
            encode_samples(0, 0, np.array([[1.0, bad]], np.float16), scale_uv=1.0, sample_rate_hz=1000)
    with pytest.raises(ValueError, match="exceeds"):
        encode_samples(0, 0, np.zeros((400, 96), np.int16), scale_uv=0.1, sample_rate_hz=1000)
    with pytest.raises(ValueError, match="scale_uv"):
        encode_samples(0, 0, np.zeros((4, 2), np.int16), scale_uv=0.0, sample_rate_hz=1000)
    with pytest.raises(ValueError, match="current_ua"):
        encode_event_stim(0, 0, 1, -1.0)


def test_quantize_and_back_to_microvolts_within_half_an_lsb():
    rng = np.random.default_rng(0)
    x = rng.uniform(-600, 600, (64, 96)).astype(np.float32)
    q, clipped = quantize_uv(x, 0.02)
    assert clipped == 0 and q.dtype == np.int16
    assert np.max(np.abs(samples_to_uv(q, 0.02) - x)) <= 0.01 + 1e-4
    q, clipped = quantize_uv(np.array([[1e6, -1e6, np.nan]]), 0.02)
    assert clipped == 3 and q.tolist() == [[32767, -32768, 0]]
    frame = StreamDecoder().feed(encode_samples(0, 0, q, scale_uv=0.02, sample_rate_hz=1000))[0]
    assert frame.to_uv().dtype == np.float32
    assert np.allclose(frame.to_uv(), q * np.float32(0.02))


def test_float16_frames_round_trip_bit_for_bit():
    rng = np.random.default_rng(3)
    data = random_halves(rng, (16, 96))
    data[0, :4] = [0.0, -0.0, 65504.0, -(2.0**-24)]
    raw = encode_samples(5, 80, data, scale_uv=0.5, sample_rate_hz=1000)
    assert raw[5] == FrameType.SAMPLES_F16 and len(raw) == samples_frame_bytes(96, 16)
    frame = StreamDecoder().feed(raw)[0]
    assert frame.sample_format == "float16" and frame.data.dtype == np.float16
    assert np.array_equal(frame.data.view(np.uint16), data.view(np.uint16))  # -0.0 kept
    assert encode_frame(frame) == raw
    assert frame == SampleFrame(5, 80, data.copy(), 0.5, 1000)
    uv = frame.to_uv()
    assert uv.dtype == np.float32 and np.array_equal(uv, data.astype(np.float32) * np.float32(0.5))
    assert np.signbit(uv[0, 1]) and uv[0, 2] == 32752.0


def test_sample_frame_equality_sees_format_and_signed_zero():
    zeros = np.zeros((1, 2), np.float16)
    neg = zeros.copy()
    neg[0, 1] = -0.0
    assert SampleFrame(0, 0, zeros, 1.0, 1000) != SampleFrame(0, 0, neg, 1.0, 1000)
    assert SampleFrame(0, 0, zeros, 1.0, 1000) != SampleFrame(0, 0, np.zeros((1, 2), np.int16), 1.0, 1000)
    big_endian = np.array([[1.5, -2.0]], ">f2")
    assert SampleFrame(0, 0, big_endian, 1.0, 1000) == SampleFrame(0, 0, np.array([[1.5, -2.0]], np.float16),
                                                                    1.0, 1000)
    with pytest.raises(ValueError, match="int16 or float16"):
        SampleFrame(0, 0, np.zeros((1, 2), np.float32), 1.0, 1000)


def _raw_frame(version: int, ftype: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("<4sBBHIQ", SYNC, version, ftype, len(payload), seq, 0)
    body = head + struct.pack("<I", zlib.crc32(head)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("bits", [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF])
def test_a_non_finite_half_is_a_payload_error(bits):
    samples = np.array([0x3C00, bits, 0x0001, 0x8000], "<u2").tobytes()
    bad = _raw_frame(1, FrameType.SAMPLES_F16, 0, struct.pack("<HHIf", 2, 2, 1000, 1.0) + samples)
    ok = encode_samples(1, 2, np.ones((2, 2), np.float16), scale_uv=1.0, sample_rate_hz=1000)
    d = StreamDecoder()
    out = d.feed(bad + ok)
    assert [f.seq for f in out] == [1]
    s = d.stats
    assert (s.payload_errors, s.frames_lost, s.sample_frames, s.crc_errors) == (1, 0, 1, 0)


@settings(max_examples=80, deadline=None)
@given(bits=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=48), n_samples=st.integers(1, 3))
def test_any_float16_payload_is_delivered_exactly_or_counted_as_an_error(bits, n_samples):
    bits = (bits * n_samples)[:len(bits) * n_samples]
    payload = struct.pack("<HHIf", len(bits) // n_samples, n_samples, 1000, 1.0)
    d = StreamDecoder()
    out = d.feed(_raw_frame(1, FrameType.SAMPLES_F16, 0, payload + np.array(bits, "<u2").tobytes()))
    if any((b & 0x7C00) == 0x7C00 for b in bits):
        assert out == [] and d.stats.payload_errors == 1
    else:
        assert d.stats.payload_errors == 0 and out[0].data.view(np.uint16).ravel().tolist() == bits
        assert np.isfinite(out[0].to_uv()).all()


def test_quantize_float16_rounds_to_nearest_even_and_saturates():
    # ties: 1 + 2^-11 lies halfway between 1 (even) and 1 + 2^-10 (odd)
    x = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 2.0**-25, 3 * 2.0**-25, -(2.0**-26), 65504.0,
                  65519.0, 65520.0, 1e9, np.inf, -np.inf, np.nan, -1e-30])
    q, clipped = quantize_uv(x, 1.0, sample_format="float16")
    assert q.dtype == np.float16
    assert q.view(np.uint16).tolist() == [0x3C00, 0x3C02, 0x0000, 0x0002, 0x8000, 0x7BFF,
                                          0x7BFF, 0x7BFF, 0x7BFF, 0x7BFF, 0xFBFF, 0x0000, 0x8000]
    assert clipped == 6  # beyond +-65504 (65519, 65520, 1e9, +-inf) and the NaN
    # scale_uv divides first: 3 uV at 2 uV per unit is 1.5
    assert quantize_uv(np.array([3.0, -131008.0]), 2.0, sample_format="float16")[0].tolist() == [1.5, -65504.0]
    with pytest.raises(ValueError, match="sample_format"):
        quantize_uv(x, 1.0, sample_format="float32")
    assert SAMPLE_FORMATS == ("int16", "float16") and DEFAULT_SAMPLE_FORMAT == "float16"


@pytest.mark.parametrize("fmt, scale", [("float16", 1.0), ("float16", 0.25), ("int16", 0.02)])
def test_wire_roundtrip_is_what_the_decoder_delivers(fmt, scale):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 96)) * np.logspace(-3, 4, 96)).astype(np.float32)
    x[0, :3] = [1e9, -np.inf, np.nan]
    seen, clipped = wire_roundtrip_uv(x, fmt, scale)
    q, n = quantize_uv(x, scale, sample_format=fmt)
    frame = StreamDecoder().feed(encode_samples(0, 0, q, scale_uv=scale, sample_rate_hz=1000))[0]
    assert seen.dtype == np.float32 and clipped == n >= 3
    assert np.array_equal(seen, frame.to_uv()) and frame.sample_format == fmt


def test_wire_roundtrip_in_chunks_equals_one_cast():
    # more than one conversion chunk (2^20 elements): the same as a single numpy cast
    x = np.random.default_rng(2).normal(0, 40, (12_000, 96)).astype(np.float32)
    x[11_999, 95] = 70000.0
    seen, clipped = wire_roundtrip_uv(x)
    ref = np.clip(x, -65504, 65504).astype(np.float16).astype(np.float32)
    assert clipped == 1 and np.array_equal(seen, ref)


def test_float16_keeps_quiet_channels_that_int16_rounds_away():
    # a dead channel: ~0.05 uV of noise. Rounding error relative to the channel's own SD.
    x = np.random.default_rng(4).normal(3.0, 0.05, 200_000)
    err16 = (wire_roundtrip_uv(x, "int16", 0.02)[0] - x).std() / x.std()
    errf = (wire_roundtrip_uv(x, "float16", 1.0)[0] - x).std() / x.std()
    assert err16 > 0.1 and errf < 0.02
    # and float16's relative error is at most 2^-11 over its normal range, 6.1e-5..65504
    rng = np.random.default_rng(5)
    y = rng.choice([-1.0, 1.0], 100_000) * 2.0 ** rng.uniform(-14, 15.99, 100_000)
    rel = np.abs(wire_roundtrip_uv(y)[0] - y) / np.abs(y)
    assert 2.0**-12 < rel.max() <= 2.0**-11 * (1 + 1e-6)


def test_required_baud_matches_the_bandwidth_table():
    assert required_baud(96, 1000, 16) == 1_945_000
    assert [required_baud(96, 1000, n) for n in (1, 8, 32)] == [2_320_000, 1_970_000, 1_932_500]
    assert required_baud(96, 1000, 16, bits_per_byte=8) == 1_556_000
    assert required_baud(4, 30000, 3) == -(-samples_frame_bytes(4, 3) * 10 * 30000 // 3)
    with pytest.raises(ValueError):
        required_baud(0, 1000, 16)


# --- the streaming decoder --------------------------------------------------------------------
def test_byte_at_a_time_equals_all_at_once():
    stream, frames = make_stream(12)
    d = StreamDecoder()
    out = []
    for b in stream:
        out += d.feed(bytes([b]))
    assert [encode_frame(f) for f in out] == frames
    assert d.stats.bytes_discarded == 0 and d.stats.frames_ok == 12 and d.packetizer.bytes_buffered == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 10_000), max_size=30), seed=st.integers(0, 2**16))
def test_any_split_of_a_valid_stream_decodes_to_the_same_frames(cuts, seed):
    stream, frames = make_stream(20, seed=seed)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    d = StreamDecoder()
    out = []
    for a, b in zip([0, *points], [*points, len(stream)]):
        out += d.feed(stream[a:b])
    assert [encode_frame(f) for f in out] == frames
    s = d.stats
    assert (s.frames_lost, s.crc_errors, s.header_errors, s.bytes_discarded) == (0, 0, 0, 0)


def _frame_spans(frames: list[bytes]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for f in frames:
        spans.append((pos, pos + len(f)))
        pos += len(f)
    return spans


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), position=st.integers(0, 10**9), kind=st.sampled_from(
    ["flip", "drop", "insert", "replace"]), value=st.integers(0, 255), bit=st.integers(0, 7),
    chunk=st.integers(1, 5000))
def test_a_single_corruption_loses_only_the_frames_it_touches(seed, position, kind, value, bit, chunk):
    stream, frames = make_stream(12, seed=seed)
    pos = position % len(stream)
    corrupted = bytearray(stream)
    if kind == "flip":
        corrupted[pos] ^= 1 << bit
    elif kind == "drop":
        del corrupted[pos]
    elif kind == "insert":
        corrupted.insert(pos, value)
    elif value != corrupted[pos]:
        corrupted[pos] = value
    d = StreamDecoder()
    out = []
    for i in range(0, len(corrupted), chunk):
        out += d.feed(bytes(corrupted[i:i + chunk]))
    got = [encode_frame(f) for f in out]
    # every delivered frame is one of the originals, bit for bit, in order
    assert all(g in frames for g in got)
    assert [frames.index(g) for g in got] == sorted(frames.index(g) for g in got)
    # only the frame(s) holding the corrupted byte may be missing (an insert between two
    # frames touches none; at a frame boundary a drop/insert touches at most one)
    touched = {i for i, (a, b) in enumerate(_frame_spans(frames)) if a <= pos < b}
    missing = {i for i, f in enumerate(frames) if f not in got}
    assert missing <= touched
    if bytes(corrupted) == stream:
        assert not missing
    # each loss is a counted sequence gap, except at the edges where no later (or no
    # earlier) frame can reveal it
    assert d.stats.frames_lost == len(missing - {0, len(frames) - 1})


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=4000), chunk=st.integers(1, 700))
def test_garbage_never_raises_and_is_counted(garbage, chunk):
    d = StreamDecoder()
    for i in range(0, len(garbage), chunk):
        assert d.feed(garbage[i:i + chunk]) == []
    s = d.stats
    assert s.bytes_received == len(garbage)
    assert s.bytes_discarded + d.packetizer.bytes_buffered == len(garbage)


@settings(max_examples=40, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=3000), seed=st.integers(0, 1000))
def test_frames_after_garbage_are_recovered_exactly(garbage, seed):
    stream, frames = make_stream(6, seed=seed)
    d = StreamDecoder()
    out = d.feed(garbage + stream + garbage[:50] + stream[:0])
    assert [encode_frame(f) for f in out] == frames
    assert d.stats.bytes_discarded == len(garbage) + min(50, len(garbage)) - d.packetizer.bytes_buffered


def test_garbage_that_imitates_sync_and_headers_never_raises():
    rng = random.Random(0)
    d = StreamDecoder()
    valid = [encode_samples(0, 0, np.zeros((4, 2), np.int16), scale_uv=1.0, sample_rate_hz=1000),
             encode_samples(0, 0, np.zeros((4, 2), np.float16), scale_uv=1.0, sample_rate_hz=1000)]
    for _ in range(2000):
        piece = bytearray(SYNC + bytes(rng.randrange(256) for _ in range(rng.randrange(60))))
        if rng.random() < 0.3:  # a real header with a corrupted payload
            piece = bytearray(rng.choice(valid))
            piece[rng.randrange(HEADER_BYTES, len(piece))] ^= 0xFF
        d.feed(bytes(piece))
    assert d.stats.frames_ok == 0 and d.stats.header_errors + d.stats.crc_errors > 0


def test_memory_is_bounded_and_a_lower_payload_limit_is_enforced():
    d = StreamDecoder(max_payload_bytes=1024)
    big = encode_samples(0, 0, np.zeros((16, 96), np.int16), scale_uv=1.0, sample_rate_hz=1000)
    small = encode_samples(1, 16, np.zeros((4, 8), np.int16), scale_uv=1.0, sample_rate_hz=1000)
    out = d.feed(big + small)
    assert len(out) == 1 and out[0].seq == 1 and d.stats.oversize == 1
    # a header that validly claims 65535 bytes, then nothing: the buffer stays one frame
    head = struct.pack("<4sBBHIQ", SYNC, 1, 1, MAX_PAYLOAD_BYTES, 0, 0)
    d = StreamDecoder()
    d.feed(head + struct.pack("<I", zlib.crc32(head)))
    for _ in range(300):
        d.feed(bytes(1000))
        assert d.packetizer.bytes_buffered <= HEADER_BYTES + MAX_PAYLOAD_BYTES + 4
    with pytest.raises(ValueError, match="max_payload_bytes"):
        StreamDecoder(max_payload_bytes=10**6)


def test_unknown_version_type_and_bad_payloads_are_skipped_and_counted():
    frame = _raw_frame
    good = encode_event_stim(4, 0, 5, 1.0)
    d = StreamDecoder()
    out = d.feed(frame(2, 1, 0, b"xx") + frame(1, 9, 1, b"new") + frame(1, 1, 2, bytes(13))
                 + frame(1, 4, 3, bytes(13)) + good)
    assert [type(f) for f in out] == [EventFrame]
    s = d.stats
    assert (s.unknown_frames, s.payload_errors, s.frames_lost) == (2, 2, 0)


# --- sequence accounting -------------------------------------------------------------------------
def _decode_frames(frames: list[bytes], **kw) -> StreamDecoder:
    d = StreamDecoder(**kw)
    d.feed(b"".join(frames))
    return d


def test_gaps_duplicates_reordering_and_wrap_are_counted_exactly():
    _, frames = make_stream(40, start_seq=0xFFFFFFFF - 20)  # wraps through 0 in the middle
    sent = list(frames)
    del sent[30]  # lost
    del sent[10:13]  # 3 lost
    sent.insert(5, sent[4])  # duplicate
    sent[20], sent[21] = sent[21], sent[20]  # reordered (21 arrives late)
    sent.append(sent[-1])  # duplicate at the end
    d = _decode_frames(sent)
    s = d.stats
    assert (s.frames_lost, s.duplicates, s.reordered, s.seq_restarts) == (4, 2, 1, 0)
    assert s.frames_delivered == 36  # 40 - 4 lost, duplicates dropped, the late one delivered
    assert _decode_frames(sent, deliver_late=False).stats.frames_delivered == 35


def test_restart_by_boot_status_and_by_backward_jump():
    _, run1 = make_stream(10)
    boot = encode_status(0, 0, state=StatusState.STREAMING, flags=StatusFlag.BOOT,
                         sample_rate_hz=1000, n_channels=8, frame_samples=4, boot_id=2)
    _, run2 = make_stream(10, seed=5)
    d = _decode_frames([*run1, boot, *run2[1:]])
    assert (d.stats.seq_restarts, d.stats.frames_lost, d.stats.duplicates) == (1, 0, 0)
    # the boot frame lost: the backward jump still reveals the restart, and frame 0 is lost
    d = _decode_frames(run1 + run2[3:])
    assert (d.stats.seq_restarts, d.stats.frames_lost) == (1, 3)


def test_sequence_tracker_window_bounds_memory():
    t = SequenceTracker(window=16)
    t.observe(0, 0)
    t.observe(100_000, 1)  # a huge gap remembers only `window` missing numbers
    assert t.frames_lost == 99_999 and len(t._missing) == 16
    assert t.observe(99_999, 2) == "late" and t.frames_lost == 99_998


# --- the way back: STIM_COMMAND and STIM_ACK ------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, 2**32 - 1), counter=st.integers(0, 2**64 - 1), command_id=st.integers(0, 2**32 - 1),
       electrode=st.integers(0, 65535), current_na=st.integers(0, 2**32 - 1), at_sample=st.booleans(),
       deadline=st.integers(0, 2**32 - 1), status=st.integers(0, 255))
def test_any_command_and_ack_round_trips_exactly(seq, counter, command_id, electrode, current_na, at_sample,
                                                 deadline, status):
    current_ua = current_na / 1000.0
    cmd = encode_stim_command(seq, counter, command_id, electrode, current_ua, at_sample=at_sample,
                              deadline_samples=deadline)
    ack = encode_stim_ack(seq, counter, command_id, electrode, current_ua, status)
    assert len(cmd) == 28 + 16 and len(ack) == 28 + 12
    got_cmd, got_ack = StreamDecoder().feed(cmd + ack)
    assert got_cmd == StimCommand(seq, counter, command_id, electrode, current_ua, at_sample, deadline)
    assert got_ack == StimAck(seq, counter, command_id, electrode, current_ua, status)
    assert encode_frame(got_cmd) == cmd and encode_frame(got_ack) == ack


def test_command_encoder_rejects_out_of_range_fields():
    for kwargs, match in (({"command_id": -1}, "command_id"), ({"command_id": 2**32}, "command_id"),
                          ({"electrode": 70000}, "electrode"), ({"current_ua": -1.0}, "current_ua"),
                          ({"deadline_samples": -5}, "deadline_samples")):
        args = {"command_id": 1, "electrode": 25, "current_ua": 10.0, **kwargs}
        deadline = args.pop("deadline_samples", 0)
        with pytest.raises(ValueError, match=match):
            encode_stim_command(0, 0, args["command_id"], args["electrode"], args["current_ua"],
                                deadline_samples=deadline)
    with pytest.raises(ValueError, match="status"):
        encode_stim_ack(0, 0, 1, 25, 10.0, 256)


def test_a_command_with_an_unknown_flag_or_size_is_a_payload_error_never_a_stimulation():
    good = struct.pack("<IHHII", 7, 25, 0, 12345, 20)
    unknown_flag = struct.pack("<IHHII", 7, 25, 0x0002, 12345, 20)
    d = StreamDecoder()
    out = d.feed(_raw_frame(1, FrameType.STIM_COMMAND, 0, unknown_flag)
                 + _raw_frame(1, FrameType.STIM_COMMAND, 1, good + b"\0")
                 + _raw_frame(1, FrameType.STIM_ACK, 2, bytes(11))
                 + _raw_frame(1, FrameType.STIM_COMMAND, 3, good))
    assert out == [StimCommand(3, 0, 7, 25, 12.345, False, 20)]
    assert (d.stats.payload_errors, d.stats.command_frames, d.stats.frames_lost) == (3, 1, 0)
    assert d.stats.ack_frames == 0 and AckStatus.NAMES[AckStatus.UNAVAILABLE] == "unavailable"
