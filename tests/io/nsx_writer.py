"""A small Blackrock NSx / NEV writer for tests (Neo reads the format but does not write it).

Follows Blackrock's published "NEV and NSx File Specification" (2.3 and 3.0): a basic
header, one 66-byte extended header per NSx channel or one 32-byte extended header per
NEV entry, then data. NSx data come in blocks (header byte 1, timestamp, sample count,
then int16 samples channel-interleaved); NEV data are fixed-size packets (timestamp,
packet id, body). Spec 2.3 stores timestamps as uint32, spec 3.0 as uint64. Only what
phosphene reads is written: continuous channels, comments and digital-input events.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

CLOCK_HZ = 30_000  # the NSP clock: periods and timestamps count 1/30 kHz ticks

NSX_BASIC_BYTES = 314  # 8 + 2 + 4 + 16 + 256 + 4 + 4 + 16 + 4
NSX_EXT_BYTES = 66
NEV_BASIC_BYTES = 336  # 8 + 2 + 2 + 4 + 4 + 4 + 4 + 16 + 32 + 256 + 4
NEV_EXT_BYTES = 32
TIME_ORIGIN = (2024, 5, 3, 15, 10, 30, 0, 0)  # year, month, weekday, day, h, m, s, ms


def _text(s: str, n: int) -> bytes:
    raw = s.encode("latin-1")[:n]
    return raw + b"\0" * (n - len(raw))


def _spec_version(spec: str) -> tuple[int, int]:
    if spec not in ("2.3", "3.0"):
        raise ValueError(f"this writer knows specs 2.3 and 3.0, not {spec}")
    major, minor = spec.split(".")
    return int(major), int(minor)


def nsx_header(n_channels: int, *, period: int = 1, electrode_ids: list[int] | None = None,
               labels: list[str] | None = None, spec: str = "3.0", uv_per_bit: float = 0.25) -> bytes:
    """Basic header + one extended header per channel (everything before the data)."""
    C = n_channels
    major, minor = _spec_version(spec)
    ids = list(electrode_ids or range(1, C + 1))
    labels = labels or [f"elec{i}" for i in ids]
    max_digital = 32764
    max_analog = round(max_digital * uv_per_bit)
    header = bytearray()
    header += b"NEURALCD" + struct.pack("<BB", major, minor)
    header += struct.pack("<I", NSX_BASIC_BYTES + NSX_EXT_BYTES * C)
    header += _text(f"{CLOCK_HZ // period} S/s", 16) + _text("phosphene test file", 256)
    header += struct.pack("<II", period, CLOCK_HZ)
    header += struct.pack("<8H", *TIME_ORIGIN)
    header += struct.pack("<I", C)
    assert len(header) == NSX_BASIC_BYTES
    for k, (eid, label) in enumerate(zip(ids, labels)):
        ext = b"CC" + struct.pack("<H", eid) + _text(label, 16)
        ext += struct.pack("<BB", 1 + k // 32, 1 + k % 32)  # connector bank, pin
        ext += struct.pack("<hhhh", -max_digital, max_digital, -max_analog, max_analog)
        ext += _text("uV", 16)
        ext += struct.pack("<IIH", 250, 1, 1)  # high-pass 0.25 Hz (mHz), order 1, Butterworth
        ext += struct.pack("<IIH", 7_500_000, 3, 1)  # low-pass 7.5 kHz, order 3, Butterworth
        assert len(ext) == NSX_EXT_BYTES
        header += ext
    return bytes(header)


def block_header(n_points: int, tick: int, *, spec: str = "3.0") -> bytes:
    """A data-block header: flag byte 1, timestamp (uint32 / uint64 in 3.0), sample count."""
    major, _ = _spec_version(spec)
    return struct.pack("<B", 1) + struct.pack("<Q" if major >= 3 else "<I", tick) \
        + struct.pack("<I", n_points)


def write_nsx(path: str | Path, samples: np.ndarray, *, period: int = 1,
              electrode_ids: list[int] | None = None, labels: list[str] | None = None,
              spec: str = "3.0", uv_per_bit: float = 0.25, blocks: list[tuple[int, int]] | None = None,
              start_tick: int = 0) -> Path:
    """Write an NSx file of int16 samples.

    samples: (T, C) int16 digital values; analog uV = samples * uv_per_bit.
    period: 30 kHz ticks per sample (1 -> ns5/ns6 30 kHz, 3 -> 10 kHz, 15 -> 2 kHz).
    blocks: [(start, stop)] sample ranges written as separate data blocks (a pause between
    them), default one block. Returns the path.
    """
    path = Path(path)
    samples = np.asarray(samples)
    if samples.dtype != np.int16 or samples.ndim != 2:
        raise ValueError("samples must be a (T, C) int16 array")
    T, C = samples.shape
    with open(path, "wb") as f:
        f.write(nsx_header(C, period=period, electrode_ids=electrode_ids, labels=labels, spec=spec,
                           uv_per_bit=uv_per_bit))
        for start, stop in blocks or [(0, T)]:
            tick = start_tick + start * period + (1000 if start > 0 else 0)  # a pause
            f.write(block_header(stop - start, tick, spec=spec))
            f.write(np.ascontiguousarray(samples[start:stop], dtype="<i2").tobytes())
    return path


def write_nev(path: str | Path, *, electrode_ids: list[int], spec: str = "3.0",
              comments: list[tuple[float, str]] = (), digital: list[tuple[float, int]] = (),
              map_file: str | None = None, packet_bytes: int = 104, flags: int = 1) -> Path:
    """Write a NEV file with comments and digital-input events (no spikes).

    comments: [(time_s, text)]; digital: [(time_s, 16-bit word)]; times on the 30 kHz clock.
    """
    path = Path(path)
    major, minor = _spec_version(spec)
    ext_headers = []
    for k, eid in enumerate(electrode_ids):
        ext_headers.append(b"NEUEVWAV" + struct.pack("<HBBHHhhBBH", eid, 1 + k // 32, 1 + k % 32,
                                                     250, 0, 0, -200, 0, 2, 48) + b"\0" * 8)
        ext_headers.append(b"NEUEVLBL" + struct.pack("<H", eid) + _text(f"elec{eid}", 16) + b"\0" * 6)
    if map_file:
        ext_headers.append(b"MAPFILE\0" + _text(map_file, 24))
    assert all(len(e) == NEV_EXT_BYTES for e in ext_headers)
    bytes_in_headers = NEV_BASIC_BYTES + NEV_EXT_BYTES * len(ext_headers)
    header = bytearray()
    header += b"NEURALEV" + struct.pack("<BB", major, minor)
    # flag bit 0: all spike waveforms are 16-bit (what current NSPs write; Neo 0.14 needs it)
    header += struct.pack("<HIIII", flags, bytes_in_headers, packet_bytes, CLOCK_HZ, CLOCK_HZ)
    header += struct.pack("<8H", *TIME_ORIGIN)
    header += _text("phosphene tests", 32) + _text("", 256)
    header += struct.pack("<I", len(ext_headers))
    assert len(header) == NEV_BASIC_BYTES
    ts_format = "<Q" if major >= 3 else "<I"
    head_bytes = struct.calcsize(ts_format) + 2
    packets = []
    for time_s, text in comments:
        tick = round(time_s * CLOCK_HZ)
        body = struct.pack("<BBI", 0, 0, 0) + _text(text, packet_bytes - head_bytes - 6)
        packets.append((tick, struct.pack(ts_format, tick) + struct.pack("<H", 0xFFFF) + body))
    for time_s, word in digital:
        tick = round(time_s * CLOCK_HZ)
        body = struct.pack("<BBH", 1, 0, word)  # insertion reason 1: digital input changed
        body += b"\0" * (packet_bytes - head_bytes - len(body))
        packets.append((tick, struct.pack(ts_format, tick) + struct.pack("<H", 0) + body))
    packets.sort(key=lambda p: p[0])  # the file is in time order
    with open(path, "wb") as f:
        f.write(header)
        f.write(b"".join(ext_headers))
        for _, packet in packets:
            assert len(packet) == packet_bytes
            f.write(packet)
    return path
