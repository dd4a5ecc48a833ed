"""The array simulator: streams virtual-cortex (or recorded) MUA as wire frames at
real-time pace, with exactly counted fault injection.

Map: sources (CortexSource, DatasetSource) -> FaultConfig / SimulatorConfig ->
SimulatorCounts (what was injected, and what a correct decoder must therefore report) ->
Simulator (pacing loop; run() in any thread, stop() from another) -> sinks.

Pacing uses absolute deadlines on the monotonic clock: frame k leaves at
t0 + (k + 1) * frame_period (when its last sample exists on a real device), so sleeps that
overshoot never accumulate into drift, and a stall is followed by a catch-up burst, as a
device with a transmit buffer would do.

Fault accounting. Faults are decided per frame with a seeded generator, then per
transmitted copy at byte level (drops, bit flips). The simulator tracks which sequence
numbers reach the wire intact, in order, and derives the counters a correct decoder must
report: frames lost, duplicates, reordered, bytes discarded. The STATUS frames that open
(BOOT) and close (STOPPED) a run are the device's boot and shutdown messages and are never
faulted: a receiver cannot count frames lost after the last frame it sees, so the closing
frame is what makes the balance exact.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from phosphene.firmware_bridge.protocol import (
    DEFAULT_SAMPLE_FORMAT,
    SAMPLE_FORMATS,
    StatusFlag,
    StatusState,
    encode_event_stim,
    encode_samples,
    encode_status,
    quantize_uv,
)

__all__ = [
    "DEFAULT_SCALE_UV",
    "DEFAULT_SCALE_UV_FLOAT16",
    "CortexSource",
    "DatasetSource",
    "FaultConfig",
    "Simulator",
    "SimulatorConfig",
    "SimulatorCounts",
    "StreamSource",
    "default_scale_uv",
]

log = logging.getLogger(__name__)

# int16: virtual-cortex MUA lies in 0..~150 uV (artifact included); 0.02 uV/LSB spans
# +-655 uV and adds 0.006 uV rms of rounding noise, 100x below the 0.6 uV sample noise of
# live channels (but not below the ~0.05 uV of dead ones: hence float16 by default).
DEFAULT_SCALE_UV = 0.02
# float16: samples are microvolts, 11 significant bits at any amplitude up to +-65504 uV.
DEFAULT_SCALE_UV_FLOAT16 = 1.0


def default_scale_uv(sample_format: str) -> float:
    """The simulator's scale_uv for a wire sample format."""
    if sample_format not in SAMPLE_FORMATS:
        raise ValueError(f"sample_format must be one of {SAMPLE_FORMATS}, got {sample_format!r}")
    return DEFAULT_SCALE_UV if sample_format == "int16" else DEFAULT_SCALE_UV_FLOAT16


# --- sources ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceEvent:
    sample: int  # onset, in the source's own sample index (never restarts)
    electrode: int
    current_ua: float


class StreamSource(Protocol):
    n_channels: int
    sample_rate_hz: float

    def read(self, n_samples: int) -> tuple[np.ndarray, list[SourceEvent]]:
        """((n, C) float32 uV, events with onsets in the samples just returned)."""


class CortexSource:
    """An endless virtual-cortex session (phosphene.cortex.VirtualCortex.stream)."""

    def __init__(self, kind: str = "resting", *, seed: int = 0, day: int = 0, session_index: int = 0,
                 channel_map=None):
        from phosphene.cortex import VirtualCortex

        self.cortex = VirtualCortex(channel_map, seed=seed)
        self.stream = self.cortex.stream(kind, day=day, session_index=session_index)
        self.kind = kind
        self.n_channels = self.cortex.channel_map.n_channels
        self.sample_rate_hz = float(self.cortex.config.sample_rate_hz)

    def describe(self) -> dict:
        return {"source": "virtual-cortex", "kind": self.kind, "seed": self.cortex.seed}

    def read(self, n_samples: int) -> tuple[np.ndarray, list[SourceEvent]]:
        mua, events = self.stream.read(n_samples)
        return mua, [SourceEvent(int(e.sample), int(e.electrode), float(e.current_ua)) for e in events]


class DatasetSource:
    """One session of a dataset, looped: after the last sample it starts over, with its
    stimulation trials again at their onsets (shifted by the session length)."""

    def __init__(self, dataset, session: str | None = None, *, loop: bool = True):
        from phosphene.dataset import Dataset

        if not isinstance(dataset, Dataset):
            dataset = Dataset.open(dataset)
        if session is None:
            session = dataset.sessions[0].session
        info = dataset.session(session)
        self.dataset, self.session, self.loop = dataset, session, loop
        self.mua = dataset.mua(session)  # (T, C) memmap, uV
        self.n_channels = int(dataset.n_channels)
        self.sample_rate_hz = float(dataset.sample_rate_hz)
        trials = dataset.trials
        mask = trials.session == session
        order = np.argsort(trials.onset_sample[mask], kind="stable")
        self._onsets = trials.onset_sample[mask][order].astype(np.int64)
        self._electrodes = trials.electrode[mask][order].astype(np.int64)
        self._currents = trials.current_ua[mask][order].astype(np.float64)
        self.n_samples = int(info.n_samples)
        if self.n_samples <= 0:
            raise ValueError(f"session {session!r} of {dataset.path} is empty")
        self.t = 0

    def describe(self) -> dict:
        return {"source": "dataset", "path": str(self.dataset.path), "session": self.session}

    def read(self, n_samples: int) -> tuple[np.ndarray, list[SourceEvent]]:
        T = self.n_samples
        out = np.empty((n_samples, self.n_channels), np.float32)
        events: list[SourceEvent] = []
        done = 0
        while done < n_samples:
            lap, i = divmod(self.t, T)
            if lap and not self.loop:
                out[done:] = 0.0
                self.t += n_samples - done
                break
            k = min(n_samples - done, T - i)
            out[done:done + k] = self.mua[i:i + k]
            lo, hi = np.searchsorted(self._onsets, [i, i + k])
            events += [SourceEvent(int(lap * T + self._onsets[j]), int(self._electrodes[j]),
                                   float(self._currents[j])) for j in range(lo, hi)]
            done += k
            self.t += k
        return out, events


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultConfig:
    """What to break on the wire. Probabilities are per byte, per bit or per frame."""

    drop_bytes_p: float = 0.0  # each transmitted byte is lost with this probability
    flip_bits_p: float = 0.0  # each transmitted bit is inverted with this probability
    drop_frames_p: float = 0.0  # a whole frame is never sent
    duplicate_frames_p: float = 0.0  # a frame is sent twice in a row
    reorder_frames_p: float = 0.0  # a frame is held back and sent after the next one
    stall_ms: float = 0.0  # the link goes silent for this long ...
    stall_every_s: float = 0.0  # ... every this many seconds of stream (0: once, at 1 s)
    garbage_burst_bytes: int = 0  # random bytes inserted between two frames ...
    garbage_every_s: float = 0.0  # ... every this many seconds of stream (0: once, at 1 s)
    restart_seq_at_s: float | None = None  # the device reboots once, at this stream time

    def __post_init__(self) -> None:
        for name in ("drop_bytes_p", "flip_bits_p", "drop_frames_p", "duplicate_frames_p",
                     "reorder_frames_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        if self.stall_ms < 0 or self.stall_every_s < 0 or self.garbage_every_s < 0:
            raise ValueError("stall_ms, stall_every_s and garbage_every_s must be >= 0")
        if self.garbage_burst_bytes < 0:
            raise ValueError(f"garbage_burst_bytes must be >= 0, got {self.garbage_burst_bytes}")
        if self.restart_seq_at_s is not None and self.restart_seq_at_s <= 0:
            raise ValueError(f"restart_seq_at_s must be > 0 s, got {self.restart_seq_at_s}")

    @property
    def any(self) -> bool:
        return self != FaultConfig()


@dataclass(frozen=True)
class SimulatorConfig:
    frame_samples: int = 16  # samples per SAMPLES frame: one MAE patch at 1 kHz
    # uV per unit on the wire; None: default_scale_uv(sample_format) (0.02 int16, 1.0 float16)
    scale_uv: float | None = None
    sample_format: str = DEFAULT_SAMPLE_FORMAT  # "float16" (SAMPLES_F16) or "int16" (SAMPLES)
    speed: float = 1.0  # 1 = real time, 10 = ten times faster, 0 = as fast as possible
    status_every_s: float = 1.0  # periodic STATUS frames (stream time); 0 = only boot/close
    chunk_samples: int = 256  # samples drawn from the source at once (generation efficiency)
    seed: int = 0  # seeds the fault generator (the source has its own seed)
    faults: FaultConfig = field(default_factory=FaultConfig)
    progress_every_s: float = 1.0  # wall-clock period of the on_progress callback
    # How long the device's transmit buffer holds bytes nobody reads. After that the
    # device drops what it cannot send (counted as tx_overflow_*) until the reader drains.
    tx_timeout_s: float = 2.0
    # Keep ground truth of every SAMPLES frame and whether an intact copy reached the wire
    # (memory grows with the run: for tests that check what a receiver may decide on).
    track_samples: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.frame_samples <= 0xFFFF:
            raise ValueError(f"frame_samples must be 1..65535, got {self.frame_samples}")
        if self.sample_format not in SAMPLE_FORMATS:
            raise ValueError(f"sample_format must be one of {SAMPLE_FORMATS}, "
                             f"got {self.sample_format!r}")
        if self.scale_uv is None:
            object.__setattr__(self, "scale_uv", default_scale_uv(self.sample_format))
        if not (self.scale_uv > 0 and math.isfinite(self.scale_uv)):
            raise ValueError(f"scale_uv must be a positive uV per LSB, got {self.scale_uv}")
        if not (self.speed >= 0 and math.isfinite(self.speed)):
            raise ValueError(f"speed must be >= 0 (0 = unpaced), got {self.speed}")
        if self.status_every_s < 0:
            raise ValueError(f"status_every_s must be >= 0, got {self.status_every_s}")


@dataclass
class SimulatorCounts:
    """Running totals; `expected_*` is what a correct decoder reading this stream reports."""

    frames_sent: int = 0  # frame copies written (duplicates included, dropped excluded)
    bytes_sent: int = 0  # everything written, garbage included
    frames_generated: int = 0  # frames given a sequence number
    sample_frames: int = 0
    event_frames: int = 0
    status_frames: int = 0
    samples_streamed: int = 0  # per channel
    samples_clipped: int = 0  # values beyond the wire format's range at scale_uv (saturated)
    # injected faults
    bytes_dropped: int = 0
    bits_flipped: int = 0
    frames_corrupted: int = 0  # copies touched by byte drops or bit flips
    frames_dropped: int = 0
    frames_duplicated: int = 0
    frames_reordered: int = 0  # frames actually sent after a later one
    stalls: int = 0
    stall_ms_total: float = 0.0
    garbage_bursts: int = 0
    garbage_bytes: int = 0
    seq_restarts: int = 0
    # what the receiving decoder must report (derived from what reached the wire intact)
    expected_frames_lost: int = 0
    expected_duplicates: int = 0
    expected_reordered: int = 0
    expected_bytes_discarded: int = 0
    # timing
    stream_s: float = 0.0
    elapsed_s: float = 0.0
    max_late_ms: float = 0.0  # worst lateness of a frame against its deadline
    tx_blocked_s: float = 0.0  # time spent waiting for the port to take bytes
    tx_overflow_frames: int = 0  # copies not (fully) written: nobody read the port in time
    tx_overflow_bytes: int = 0
    done: bool = False

    FAULTS = ("bytes_dropped", "bits_flipped", "frames_corrupted", "frames_dropped",
              "frames_duplicated", "frames_reordered", "stalls", "stall_ms_total",
              "garbage_bursts", "garbage_bytes", "seq_restarts")

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        rate = self.frames_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        faults = ", ".join(f"{k} {getattr(self, k):g}" for k in self.FAULTS if getattr(self, k))
        return (f"{self.stream_s:7.1f} s streamed  {self.frames_sent} frames ({rate:.0f}/s)  "
                f"{self.bytes_sent / 1e6:.2f} MB  late max {self.max_late_ms:.1f} ms"
                + (f"  faults: {faults}" if faults else ""))


# --- sinks ---------------------------------------------------------------------------------
class _Sink:
    """write(data, timeout_s) -> bytes written (all, or fewer when timeout_s ran out)."""

    def __init__(self, write: Callable[[bytes, float | None], int], close: Callable[[], None] | None,
                 name: str):
        self.write, self.close, self.name = write, close, name


def _make_sink(port: Any, stop: threading.Event) -> _Sink:
    from phosphene.firmware_bridge.transport import PtyPair, open_port, write_fd

    if isinstance(port, PtyPair):
        return _Sink(lambda b, t: port.write(b, stop=stop, timeout_s=t), None, port.device_path)
    if isinstance(port, str):
        ser = open_port(port, timeout_s=0.1)
        sink = _make_sink(ser, stop)
        return _Sink(sink.write, ser.close, port)
    if hasattr(port, "write") and hasattr(port, "in_waiting"):  # an open pyserial port
        name = getattr(port, "name", None) or repr(port)
        fd = getattr(port, "fd", None)
        if isinstance(fd, int):  # a posix port (device path, pty): non-blocking fd + select
            return _Sink(lambda b, t: write_fd(fd, b, stop=stop, timeout_s=t), None, name)
        return _Sink(_url_writer(port), None, name)
    if hasattr(port, "write"):  # a binary file (BytesIO in tests, a capture file)
        def write(b: bytes, t: float | None) -> int:
            port.write(b)
            return len(b)
        return _Sink(write, getattr(port, "flush", None), getattr(port, "name", "file"))
    raise TypeError(f"cannot write frames to {type(port).__name__}; give a port path or URL, "
                    "a PtyPair, an open pyserial port or a binary file")


def _url_writer(ser) -> Callable[[bytes, float | None], int]:
    import queue

    import serial

    def write(b: bytes, t: float | None) -> int:
        ser.write_timeout = t
        try:
            n = ser.write(b)
        except (serial.SerialTimeoutException, queue.Full):  # loop:// raises queue.Full
            return 0  # pyserial does not say how much went out; count the block as lost
        return len(b) if n is None else n
    return write


# --- the simulator ---------------------------------------------------------------------------
class Simulator:
    """Streams a source as frames to a port at real-time pace, with counted faults.

    Usage (in-process, e.g. a test or the edge demo):
        sim = Simulator(CortexSource("psychometric", seed=0), SimulatorConfig(speed=0))
        with PtyPair() as pty:
            thread = sim.start(pty, duration_s=5.0)     # a runtime opens pty.device_path
            ...
            sim.wait(timeout_s=30); print(sim.counts.expected_frames_lost)

    `counts` is a live snapshot (thread-safe); `stop()` (or setting `stop_event`, which
    a runtime may share) ends the stream early, after the closing STATUS frame.
    """

    def __init__(self, source: StreamSource, config: SimulatorConfig = SimulatorConfig(), *,
                 on_progress: Callable[[SimulatorCounts], None] | None = None,
                 stop_event: threading.Event | None = None,
                 on_wire: Callable[[bytes], None] | None = None):
        self.source = source
        self.config = config
        self.on_progress = on_progress
        self.on_wire = on_wire  # gets every byte written, in order (e.g. CaptureWriter.write)
        self.n_channels = int(source.n_channels)
        self.sample_rate_hz = round(source.sample_rate_hz)
        self._rng = np.random.default_rng([config.seed, 7])
        self._lock = threading.Lock()
        self._counts = SimulatorCounts()
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # device state
        self._seq = 0  # next sequence number of this run (unwrapped; the wire takes mod 2**32)
        self._run_origin = 0  # source sample at which the current run (boot) began
        # differs between boots (protocol), including between two simulators with one seed
        self._boot_id = int.from_bytes(os.urandom(4), "little")
        # wire accounting for the current run
        self._held: list[tuple[bytes, int]] | None = None
        self._overflow = False
        self._delivered_recent: set[int] = set()
        self._delivered_count = 0
        self._max_delivered = -1
        # ground truth (track_samples): (boot_id, seq) -> (first device sample, n samples)
        self._sample_frames: dict[tuple[int, int], tuple[int, int]] = {}
        self._delivered_all: set[tuple[int, int]] = set()
        self._late_all: set[tuple[int, int]] = set()

    # --- public control ----------------------------------------------------------------
    @property
    def counts(self) -> SimulatorCounts:
        with self._lock:
            return replace(self._counts)

    def undelivered_samples(self, *, late: bool = False) -> list[tuple[int, int, int]]:
        """(boot_id, first device sample, n) of every SAMPLES frame no intact copy of
        reached the wire (dropped, corrupted or cut off); with late=True also those whose
        first intact copy arrived after a later frame (reordered). Needs track_samples=True."""
        if not self.config.track_samples:
            raise RuntimeError("construct the Simulator with SimulatorConfig(track_samples=True)")
        with self._lock:
            return sorted((key[0], first, n) for key, (first, n) in self._sample_frames.items()
                          if key not in self._delivered_all or (late and key in self._late_all))

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> threading.Event:
        return self._stop

    def start(self, port: Any, duration_s: float | None = None) -> threading.Thread:
        """run() in a daemon thread; errors land in `.error` (and are logged)."""
        return _run_in_thread(self, "simulator", lambda: self.run(port, duration_s))

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the stream has ended (closing frame written); True if it has."""
        return self._finished.wait(timeout_s)

    def run(self, port: Any, duration_s: float | None = None) -> SimulatorCounts:
        """Stream until duration_s of stream time (None: until stop()); returns the counts.

        port: a device path or pyserial URL, a PtyPair, an open pyserial port, or a binary
        file-like object.
        """
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 (or None to run until stopped), got {duration_s}")
        sink = _make_sink(port, self._stop)
        try:
            self._loop(sink, duration_s)
        finally:
            try:
                if sink.close is not None:
                    sink.close()
            finally:
                with self._lock:
                    self._counts.done = True
                self._finished.set()
        return self.counts

    # --- the pacing loop -----------------------------------------------------------------------
    def _loop(self, sink: _Sink, duration_s: float | None) -> None:
        cfg, faults = self.config, self.config.faults
        fs, F = self.sample_rate_hz, cfg.frame_samples
        total_frames = None if duration_s is None else max(1, math.ceil(duration_s * fs / F))
        period_s = F / fs / cfg.speed if cfg.speed > 0 else 0.0
        status_every = round(cfg.status_every_s * fs)
        stall_every = round((faults.stall_every_s or 0) * fs)
        garbage_every = round((faults.garbage_every_s or 0) * fs)
        # scheduled points in source samples; "every 0" means once, at 1 s
        next_stall = (stall_every or fs) if faults.stall_ms > 0 else None
        next_garbage = (garbage_every or fs) if faults.garbage_burst_bytes > 0 else None
        restart_at = (None if faults.restart_seq_at_s is None
                      else round(faults.restart_seq_at_s * fs))
        next_status = status_every if status_every else None

        mua_buf = np.empty((0, self.n_channels), np.float32)
        pending_events: list = []
        t0 = time.monotonic()
        last_progress = t0
        self._send(sink, [self._boot_frame()], clean=True)
        k = 0
        while not self._stop.is_set() and (total_frames is None or k < total_frames):
            start = k * F
            while len(mua_buf) < F:
                chunk, events = self.source.read(max(cfg.chunk_samples, F))
                mua_buf = np.concatenate([mua_buf, np.asarray(chunk, np.float32)])
                pending_events += events
            block, mua_buf = mua_buf[:F], mua_buf[F:]
            if period_s:
                deadline = t0 + (k + 1) * period_s
                wait_s = deadline - time.monotonic()
                if wait_s > 0 and self._stop.wait(wait_s):
                    break
                late_ms = (time.monotonic() - deadline) * 1e3
                if late_ms > self._counts.max_late_ms:
                    with self._lock:
                        self._counts.max_late_ms = late_ms
            if restart_at is not None and start >= restart_at:
                restart_at = None
                self._restart(sink, start)
            if next_stall is not None and start >= next_stall:
                next_stall = start + stall_every if stall_every else None
                if self._stop.wait(faults.stall_ms / 1e3):
                    break  # stopped mid-stall: not a completed (counted) stall
                with self._lock:
                    self._counts.stalls += 1
                    self._counts.stall_ms_total += faults.stall_ms
            if next_garbage is not None and start >= next_garbage:
                next_garbage = start + garbage_every if garbage_every else None
                self._send_garbage(sink, faults.garbage_burst_bytes)
            frames: list[tuple[bytes, int]] = []
            if next_status is not None and start >= next_status:
                next_status += status_every
                frames.append(self._status_frame(start, StatusState.STREAMING, 0))
            end = start + F
            still = []
            for ev in pending_events:
                if ev.sample < end:
                    frames.append(self._number(encode_event_stim(
                        self._seq, max(0, ev.sample - self._run_origin), ev.electrode, ev.current_ua)))
                    with self._lock:
                        self._counts.event_frames += 1
                else:
                    still.append(ev)
            pending_events = still
            data, n_clipped = quantize_uv(block, cfg.scale_uv, sample_format=cfg.sample_format)
            if cfg.track_samples:
                with self._lock:
                    self._sample_frames[(self._boot_id, self._seq)] = (start - self._run_origin, F)
            frames.append(self._number(encode_samples(
                self._seq, start - self._run_origin, data, scale_uv=cfg.scale_uv, sample_rate_hz=fs)))
            with self._lock:
                self._counts.sample_frames += 1
                self._counts.samples_clipped += n_clipped
                self._counts.samples_streamed += F
                self._counts.stream_s = (k + 1) * F / fs
            self._send(sink, frames, clean=False)
            k += 1
            now = time.monotonic()
            with self._lock:
                self._counts.elapsed_s = now - t0
            if self.on_progress is not None and now - last_progress >= cfg.progress_every_s:
                last_progress = now
                self.on_progress(self.counts)
        # the run closes with a clean STOPPED frame (after anything held for reordering)
        self._send(sink, [self._status_frame(k * F, StatusState.STOPPED, 0)], clean=True)
        with self._lock:
            self._counts.expected_frames_lost += self._seq - self._delivered_count
            self._counts.elapsed_s = time.monotonic() - t0
        if self.on_progress is not None:
            self.on_progress(self.counts)

    # --- frames ----------------------------------------------------------------------------------
    def _number(self, frame: bytes) -> tuple[bytes, int]:
        seq = self._seq
        self._seq += 1
        with self._lock:
            self._counts.frames_generated += 1
        return frame, seq

    def _status_frame(self, source_sample: int, state: int, flags: int) -> tuple[bytes, int]:
        with self._lock:
            self._counts.status_frames += 1
        return self._number(encode_status(
            self._seq, max(0, source_sample - self._run_origin), state=state, flags=flags,
            sample_rate_hz=self.sample_rate_hz, n_channels=self.n_channels,
            frame_samples=self.config.frame_samples, boot_id=self._boot_id))

    def _boot_frame(self) -> tuple[bytes, int]:
        return self._status_frame(self._run_origin, StatusState.STREAMING, StatusFlag.BOOT)

    def _restart(self, sink: _Sink, source_sample: int) -> None:
        """The device reboots: close the run, then seq and sample counter start at 0."""
        self._send(sink, [self._status_frame(source_sample, StatusState.STOPPED, 0)], clean=True)
        with self._lock:
            self._counts.seq_restarts += 1
            self._counts.expected_frames_lost += self._seq - self._delivered_count
        self._seq = 0
        self._run_origin = source_sample
        self._boot_id = (self._boot_id + 1) & 0xFFFFFFFF
        self._delivered_recent.clear()
        self._delivered_count = 0
        self._max_delivered = -1
        self._send(sink, [self._boot_frame()], clean=True)

    # --- faults and the wire ----------------------------------------------------------------------
    def _send(self, sink: _Sink, frames: list[tuple[bytes, int]], *, clean: bool,
              timeout_s: float | None = None) -> None:
        """Apply frame-level faults (unless clean), then byte faults per copy, then write."""
        f = self.config.faults
        rng = self._rng
        copies: list[tuple[bytes, int]] = []
        for frame in frames:
            if clean:
                if self._held is not None:
                    copies += self._held
                    self._held = None
                copies.append(frame)
                continue
            if f.drop_frames_p and rng.random() < f.drop_frames_p:
                with self._lock:
                    self._counts.frames_dropped += 1
                continue
            out = [frame]
            if f.duplicate_frames_p and rng.random() < f.duplicate_frames_p:
                out.append(frame)
                with self._lock:
                    self._counts.frames_duplicated += 1
            if self._held is not None:
                copies += out + self._held
                with self._lock:
                    self._counts.frames_reordered += 1
                self._held = None
            elif f.reorder_frames_p and rng.random() < f.reorder_frames_p:
                self._held = out
            else:
                copies += out
        if not copies:
            return
        wire = []
        for data, seq in copies:
            sent = data if clean else self._corrupt(data)
            wire.append((sent, seq, sent is data))  # _corrupt returns its input when untouched
        self._write_copies(sink, wire, timeout_s)

    def _corrupt(self, data: bytes) -> bytes:
        """Byte drops and bit flips on one copy; counts them."""
        f, rng = self.config.faults, self._rng
        n = len(data)
        n_drop = int(rng.binomial(n, f.drop_bytes_p)) if f.drop_bytes_p else 0
        n_flip = int(rng.binomial(8 * n, f.flip_bits_p)) if f.flip_bits_p else 0
        if not (n_drop or n_flip):
            return data
        arr = np.frombuffer(data, np.uint8).copy()
        if n_flip:
            bits = rng.choice(8 * n, size=min(n_flip, 8 * n), replace=False)
            np.bitwise_xor.at(arr, bits // 8, (1 << (bits % 8)).astype(np.uint8))
        if n_drop:
            arr = np.delete(arr, rng.choice(n, size=min(n_drop, n), replace=False))
        with self._lock:
            self._counts.bytes_dropped += n_drop
            self._counts.bits_flipped += n_flip
            self._counts.frames_corrupted += 1
        return arr.tobytes()

    def _write(self, sink: _Sink, blob: bytes, timeout_s: float | None) -> int:
        """Write with the device's buffer model: after one overflow, take only what fits."""
        if self._overflow:
            timeout_s = 0.0
        elif timeout_s is None:
            timeout_s = self.config.tx_timeout_s
        t = time.monotonic()
        written = sink.write(blob, timeout_s)
        if written and self.on_wire is not None:
            self.on_wire(blob if written == len(blob) else blob[:written])
        self._overflow = written < len(blob) and not self._stop.is_set()
        with self._lock:
            self._counts.tx_blocked_s += time.monotonic() - t
            self._counts.bytes_sent += written
            self._counts.tx_overflow_bytes += len(blob) - written
        return written

    def _write_copies(self, sink: _Sink, wire: list[tuple[bytes, int, bool]],
                      timeout_s: float | None) -> None:
        written = self._write(sink, b"".join(d for d, _, _ in wire), timeout_s)
        offset = 0
        with self._lock:
            c = self._counts
            for data, seq, intact in wire:
                size, start = len(data), offset
                offset += size
                if offset > written:  # only the written part of this copy exists
                    c.expected_bytes_discarded += max(0, written - start)
                    c.tx_overflow_frames += 1
                    continue
                c.frames_sent += 1
                if intact:
                    self._deliver(seq)
                else:
                    c.expected_bytes_discarded += size

    def _deliver(self, seq: int) -> None:
        c = self._counts
        if self.config.track_samples:
            if seq < self._max_delivered and (self._boot_id, seq) not in self._delivered_all:
                self._late_all.add((self._boot_id, seq))  # arrives after a later frame
            self._delivered_all.add((self._boot_id, seq))
        if seq in self._delivered_recent:
            c.expected_duplicates += 1
            return
        if seq < self._max_delivered:
            c.expected_reordered += 1
        self._delivered_recent.add(seq)
        self._delivered_count += 1
        self._max_delivered = max(self._max_delivered, seq)
        if len(self._delivered_recent) > 4096:  # faults displace frames by 1; keep a margin
            floor = self._max_delivered - 1024
            self._delivered_recent = {s for s in self._delivered_recent if s >= floor}

    def _send_garbage(self, sink: _Sink, n_bytes: int) -> None:
        junk = self._rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
        written = self._write(sink, junk, None)
        with self._lock:
            self._counts.garbage_bursts += 1
            self._counts.garbage_bytes += written
            self._counts.expected_bytes_discarded += written


def _run_in_thread(owner, what: str, run) -> threading.Thread:
    """Start run() in a daemon thread for a Simulator or Replayer (`owner`, run once): a
    failed port lands in owner.error (the owner reports it), any other exception too,
    logged with its traceback as the bug it is."""
    if owner._thread is not None:
        raise RuntimeError(f"this {type(owner).__name__} already ran; make a new one")

    def target() -> None:
        try:
            run()
        except OSError as exc:  # the port failed (device gone): the owner reports .error
            owner.error = exc
            log.info("%s stopped: %s", what, exc)
        except BaseException as exc:  # a bug: reported via .error and the log
            owner.error = exc
            log.exception("%s stopped with an error", what)

    owner._thread = threading.Thread(target=target, name=f"phosphene-{what}", daemon=True)
    owner._thread.start()
    return owner._thread
