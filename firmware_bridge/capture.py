"""Capture and replay of raw wire bytes.

A capture file is the byte stream exactly as it went over the link (no header, no
framing of its own: the protocol is self-delimiting), so garbage, corrupted and
duplicated frames replay as they were. `CaptureWriter` writes one atomically;
`replay_frames` turns one back into timed pieces, paced by the frames' own sample
counters and sample rate; `Replayer` sends them to a port in real time (or scaled).

Pacing: a piece is every byte up to and including one SAMPLES / SAMPLES_F16 frame, due
when that frame's last sample existed on the device, (sample_counter + n_samples -
first counter) / sample_rate_hz, as the simulator sends it. Counters are followed across
gaps (lost frames keep their time); a frame behind the counter by up to 8 frames (a late
one) is due at once; a BOOT status, a change of sample rate or a larger backward jump (a
restart) continues the clock from the previous frame. Frames before the first SAMPLES
frame are due at 0; bytes after the last SAMPLES frame are due with it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Self

from phosphene.errors import ConfigError
from phosphene.firmware_bridge.protocol import (
    SYNC,
    VERSION,
    FrameType,
    Packetizer,
    RawFrame,
    StatusFlag,
)

__all__ = ["CaptureWriter", "ReplayCounts", "Replayer", "describe_capture", "replay_frames"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<4sBBHIQ")
_U32 = struct.Struct("<I")
_SAMPLES_HEAD = struct.Struct("<HHI")  # n_channels, n_samples, sample_rate_hz
_SAMPLE_TYPES = (FrameType.SAMPLES, FrameType.SAMPLES_F16)
_LATE_FRAMES = 8  # a frame this many frames behind the counter is late, not a restart
_READ_BYTES = 1 << 20
_MAX_PENDING = 4 << 20  # bytes without a SAMPLES frame before they are sent anyway


class CaptureWriter:
    """Writes raw wire bytes to `path` atomically: into a temporary file beside it, renamed
    onto `path` by close() (also when used as a context manager and the block raises,
    Ctrl-C included). Until then `path` is untouched; discard() drops the capture.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        token = os.urandom(4).hex()
        self.temp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.{token}.part")
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(fd, "wb")
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            self._file.write(data)
            self.bytes_written += len(data)

    def close(self) -> Path:
        """Flush, sync and rename the capture onto `path`; returns `path`."""
        with self._lock:
            if self.closed:
                return self.path
            self.closed = True
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
            os.replace(self.temp_path, self.path)
        return self.path

    def discard(self) -> None:
        """Drop the capture: `path` stays as it was."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._file.close()
            self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _frame_bytes(raw: RawFrame) -> bytes:
    """The exact bytes of an intact frame (its CRCs passed, so they are the original's)."""
    head = _HEAD.pack(SYNC, raw.version, raw.frame_type, len(raw.payload), raw.seq,
                      raw.sample_counter)
    return head + _U32.pack(zlib.crc32(head)) + raw.payload + _U32.pack(raw.crc)


def _samples_timing(raw: RawFrame) -> tuple[int, int] | None:
    """(n_samples, sample_rate_hz) of a well-formed SAMPLES / SAMPLES_F16 frame, else None."""
    if raw.version != VERSION or raw.frame_type not in _SAMPLE_TYPES:
        return None
    if len(raw.payload) < _SAMPLES_HEAD.size:
        return None
    n_channels, n_samples, rate = _SAMPLES_HEAD.unpack_from(raw.payload)
    if n_channels == 0 or n_samples == 0 or rate == 0:
        return None
    return n_samples, rate


def _is_boot(raw: RawFrame) -> bool:
    return (raw.version == VERSION and raw.frame_type == FrameType.STATUS
            and len(raw.payload) >= 4 and bool(raw.payload[2] & StatusFlag.BOOT))


def _pieces(path: str | os.PathLike, read_bytes: int = _READ_BYTES
            ) -> Iterator[tuple[float, bytes, int, RawFrame | None]]:
    """(due_s, bytes, frames in them, the SAMPLES frame that ends them or None)."""
    packetizer = Packetizer()
    pending = bytearray()  # bytes read and not yet yielded
    located = 0  # pending[:located] ends with the last frame found
    n_frames = 0
    last_due = 0.0
    base: tuple[float, int, int] | None = None  # (time, counter, rate) the clock runs from
    end_counter = 0  # sample counter after the last SAMPLES frame
    rebase = False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(read_bytes)
            if not chunk:
                break
            pending += chunk
            for raw in packetizer.feed(chunk):
                frame = _frame_bytes(raw)
                i = pending.find(frame, located)
                if i < 0:  # cannot happen: the packetizer found these exact bytes
                    raise RuntimeError("capture scan lost its place")
                located = i + len(frame)
                n_frames += 1
                if _is_boot(raw):
                    rebase = True
                timing = _samples_timing(raw)
                if timing is None:
                    if base is None:  # before the first SAMPLES frame (a boot status): at once
                        yield 0.0, bytes(pending[:located]), n_frames, None
                        del pending[:located]
                        located = n_frames = 0
                    continue
                n, rate = timing
                counter = raw.sample_counter
                if (base is None or rebase or rate != base[2]
                        or counter + _LATE_FRAMES * n < end_counter):
                    base = (last_due, counter, rate)
                    rebase = False
                due = base[0] + (counter + n - base[1]) / rate
                if due >= last_due:
                    last_due = due
                    end_counter = counter + n
                yield last_due, bytes(pending[:located]), n_frames, raw
                del pending[:located]
                located = n_frames = 0
            if len(pending) > _MAX_PENDING:  # a long run without SAMPLES frames (garbage)
                done = max(located, len(pending) - packetizer.bytes_buffered)
                yield last_due, bytes(pending[:done]), n_frames, None
                del pending[:done]
                located = n_frames = 0
    if pending:
        yield last_due, bytes(pending), n_frames, None


def replay_frames(path: str | os.PathLike) -> Iterator[tuple[float, bytes]]:
    """(due_s, bytes) pieces of a capture file, in order: sent at t0 + due_s, they
    reproduce the recorded stream bit for bit at its real-time pace (see the module doc).
    Every byte of the file is in exactly one piece."""
    for due_s, data, _, _ in _pieces(path):
        yield due_s, data


def describe_capture(path: str | os.PathLike) -> dict:
    """What a capture holds: bytes, intact frames, SAMPLES frames, stream seconds, and the
    format of its first SAMPLES frame (n_channels, sample_rate_hz, frame_samples)."""
    out: dict[str, Any] = {"path": str(path), "bytes": 0, "frames": 0, "sample_frames": 0,
                           "stream_s": 0.0, "n_channels": None, "sample_rate_hz": None,
                           "frame_samples": None}
    for due_s, data, n_frames, raw in _pieces(path):
        out["bytes"] += len(data)
        out["frames"] += n_frames
        out["stream_s"] = due_s
        if raw is not None:
            out["sample_frames"] += 1
            if out["n_channels"] is None:
                n_channels, n_samples, rate = _SAMPLES_HEAD.unpack_from(raw.payload)
                out.update(n_channels=n_channels, sample_rate_hz=rate, frame_samples=n_samples)
    return out


@dataclass
class ReplayCounts:
    bytes_sent: int = 0
    pieces_sent: int = 0  # writes (each ends with a SAMPLES frame, but the last)
    stream_s: float = 0.0  # due time of the last piece sent
    elapsed_s: float = 0.0
    max_late_ms: float = 0.0
    done: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        return (f"{self.stream_s:7.1f} s replayed  {self.bytes_sent / 1e6:.2f} MB  "
                f"late max {self.max_late_ms:.1f} ms")


class Replayer:
    """Sends a capture file to a port at its recorded pace (speed 2: twice as fast; 0: as
    fast as the port takes it). The same interface as Simulator: run(port) in any thread,
    or start(port) / wait() / stop(), with `counts` and `error`.

    port: a device path or pyserial URL, a PtyPair, an open pyserial port or a binary file.
    Writes wait for the port (nothing is dropped), so the bytes arrive exactly as captured.
    """

    def __init__(self, path: str | os.PathLike, *, speed: float = 1.0,
                 stop_event: threading.Event | None = None):
        if not (speed >= 0 and speed != float("inf")):
            raise ConfigError(f"speed must be >= 0 (0 = unpaced), got {speed}")
        self.path = Path(path)
        self.speed = speed
        self.error: BaseException | None = None
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._counts = ReplayCounts()
        self._thread: threading.Thread | None = None

    @property
    def counts(self) -> ReplayCounts:
        with self._lock:
            return replace(self._counts)

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._finished.wait(timeout_s)

    def start(self, port: Any, duration_s: float | None = None) -> threading.Thread:
        """run() in a daemon thread; errors land in `.error`. duration_s must be None."""
        if duration_s is not None:
            raise ConfigError("a replay sends the whole capture; it takes no duration")
        from phosphene.firmware_bridge.simulator import _run_in_thread

        return _run_in_thread(self, "replay", lambda: self.run(port))

    def run(self, port: Any) -> ReplayCounts:
        from phosphene.firmware_bridge.simulator import _make_sink

        sink = _make_sink(port, self._stop)
        try:
            t0 = time.monotonic()
            for due_s, data in replay_frames(self.path):
                if self.speed > 0:
                    deadline = t0 + due_s / self.speed
                    wait_s = deadline - time.monotonic()
                    if wait_s > 0 and self._stop.wait(wait_s):
                        break
                    late_ms = max(0.0, (time.monotonic() - deadline) * 1e3)
                else:
                    late_ms = 0.0
                if self._stop.is_set():
                    break
                written = sink.write(data, None)
                with self._lock:
                    c = self._counts
                    c.bytes_sent += written
                    c.pieces_sent += written == len(data)
                    c.stream_s = due_s
                    c.max_late_ms = max(c.max_late_ms, late_ms)
                    c.elapsed_s = time.monotonic() - t0
                if written < len(data):  # stopped while the port was full
                    break
        finally:
            try:
                if sink.close is not None:
                    sink.close()
            finally:
                with self._lock:
                    self._counts.done = True
                self._finished.set()
        return self.counts
