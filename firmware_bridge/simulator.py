"""The array simulator: streams virtual-cortex (or recorded) MUA as wire frames at
real-time pace, with exactly counted fault injection.

Map: sources (CortexSource, DatasetSource) -> FaultConfig / SimulatorConfig ->
SimulatorCounts (what was injected, and what a correct decoder must therefore report) ->
Simulator (pacing loop; run() in any thread, stop() from another) -> sinks.

The device also obeys: a port it can read (a pty, a serial device) is read for
STIM_COMMAND frames while the loop waits for the next frame's deadline. A command is
delivered at the sample being acquired when it arrived (or at the sample it names) to a
`closed-loop` virtual cortex, which decides perception from its state at that sample, and
is answered with a STIM_ACK (and an EVENT_STIM) before the SAMPLES frame holding the
onset; each answer's ground truth goes to `Simulator.truth` and `on_truth`.

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

from phosphene.errors import ConfigError, InputError
from phosphene.firmware_bridge.protocol import (
    DEFAULT_SAMPLE_FORMAT,
    SAMPLE_FORMATS,
    AckStatus,
    StatusFlag,
    StatusState,
    StimCommand,
    StreamDecoder,
    encode_event_stim,
    encode_samples,
    encode_status,
    encode_stim_ack,
    quantize_uv,
)

__all__ = [
    "CLOSED_LOOP_KIND",
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
# A virtual-cortex session that stimulates only when commanded (STIM_COMMAND frames): the
# resting session of the same seed, plus the commanded stimulations and their responses.
CLOSED_LOOP_KIND = "closed-loop"
CORTEX_KINDS = ("resting", "psychometric", "threshold", CLOSED_LOOP_KIND)


def default_scale_uv(sample_format: str) -> float:
    """The simulator's scale_uv for a wire sample format."""
    if sample_format not in SAMPLE_FORMATS:
        raise ConfigError(f"sample_format must be one of {SAMPLE_FORMATS}, got {sample_format!r}")
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
    """An endless virtual-cortex session (phosphene.cortex.VirtualCortex.stream).

    kind `closed-loop` schedules no stimulation of its own: it is `commanded`, and the
    simulator delivers the host's STIM_COMMANDs to it (stimulate()); `state_at()` is the
    true cortical state g of a recent sample (for an oracle's benchmark only).
    """

    def __init__(self, kind: str = "resting", *, seed: int = 0, day: int = 0, session_index: int = 0,
                 channel_map=None):
        from phosphene.cortex import VirtualCortex

        if kind not in CORTEX_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(CORTEX_KINDS)}, got {kind!r}")
        self.cortex = VirtualCortex(channel_map, seed=seed)
        self.commanded = kind == CLOSED_LOOP_KIND
        self.stream = self.cortex.stream("resting" if self.commanded else kind, day=day,
                                         session_index=session_index)
        if self.commanded:
            self.stream.record_state(60.0)
        self.kind = kind
        self.n_channels = self.cortex.channel_map.n_channels
        self.sample_rate_hz = float(self.cortex.config.sample_rate_hz)

    def stimulate(self, sample: int, electrode: int, current_ua: float, command_id: int) -> None:
        """Deliver a stimulation with onset `sample` (not generated yet); closed-loop only."""
        self.stream.stimulate(sample, electrode, current_ua, command_id)

    def take_delivered(self) -> list:
        """Ground truth of the commanded stimulations read since the last call."""
        return self.stream.take_delivered()

    def state_at(self, sample: int) -> float:
        """The true cortical state g at a sample generated in the last minute (else NaN)."""
        return self.stream.state_at(sample)

    def has_electrode(self, electrode: int) -> bool:
        return int(electrode) in self.cortex.i50_ua

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
            raise InputError(f"session {session!r} of {dataset.path} is empty")
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
                raise ConfigError(f"{name} is a probability in [0, 1], got {p}")
        if self.stall_ms < 0 or self.stall_every_s < 0 or self.garbage_every_s < 0:
            raise ConfigError("stall_ms, stall_every_s and garbage_every_s must be >= 0")
        if self.garbage_burst_bytes < 0:
            raise ConfigError(f"garbage_burst_bytes must be >= 0, got {self.garbage_burst_bytes}")
        if self.restart_seq_at_s is not None and self.restart_seq_at_s <= 0:
            raise ConfigError(f"restart_seq_at_s must be > 0 s, got {self.restart_seq_at_s}")

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
    # The stimulator's own limits (commands beyond them are refused, whatever the host says):
    max_current_ua: float = 100.0  # INVALID above this
    busy_ms: float = 170.0  # BUSY within the previous onset's artifact period

    def __post_init__(self) -> None:
        if not 0 < self.frame_samples <= 0xFFFF:
            raise ConfigError(f"frame_samples must be 1..65535, got {self.frame_samples}")
        if self.sample_format not in SAMPLE_FORMATS:
            raise ConfigError(f"sample_format must be one of {SAMPLE_FORMATS}, "
                              f"got {self.sample_format!r}")
        if self.scale_uv is None:
            object.__setattr__(self, "scale_uv", default_scale_uv(self.sample_format))
        if not (self.scale_uv > 0 and math.isfinite(self.scale_uv)):
            raise ConfigError(f"scale_uv must be a positive uV per LSB, got {self.scale_uv}")
        if not (self.speed >= 0 and math.isfinite(self.speed)):
            raise ConfigError(f"speed must be >= 0 (0 = unpaced), got {self.speed}")
        if self.status_every_s < 0:
            raise ConfigError(f"status_every_s must be >= 0, got {self.status_every_s}")


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
    # the way back (STIM_COMMAND in, STIM_ACK out)
    commands_received: int = 0  # intact STIM_COMMAND frames
    commands_delivered: int = 0
    commands_refused: int = 0
    ack_frames: int = 0
    uplink_bytes: int = 0  # bytes read from the host
    uplink_errors: int = 0  # damaged frames and payload errors in what the host sent
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
    """write(data, timeout_s) -> bytes written (all, or fewer when timeout_s ran out);
    read(timeout_s) -> what the host sent (b"" after timeout_s), None for a write-only sink."""

    def __init__(self, write: Callable[[bytes, float | None], int], close: Callable[[], None] | None,
                 name: str, read: Callable[[float], bytes] | None = None):
        self.write, self.close, self.name, self.read = write, close, name, read


def _fd_reader(fd: int) -> Callable[[float], bytes]:
    import errno
    import select

    def read(timeout_s: float) -> bytes:
        ready, _, _ = select.select([fd], [], [], max(timeout_s, 0.0))
        if not ready:
            return b""
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # nobody holds the other side open (yet)
                return b""
            raise
    return read


def _make_sink(port: Any, stop: threading.Event) -> _Sink:
    from phosphene.firmware_bridge.transport import PtyPair, open_port, write_fd

    if isinstance(port, PtyPair):
        return _Sink(lambda b, t: port.write(b, stop=stop, timeout_s=t), None, port.device_path,
                     _fd_reader(port.master_fd))
    if isinstance(port, str):
        ser = open_port(port, timeout_s=0.1)
        sink = _make_sink(ser, stop)
        return _Sink(sink.write, ser.close, port, sink.read)
    if hasattr(port, "write") and hasattr(port, "in_waiting"):  # an open pyserial port
        name = getattr(port, "name", None) or repr(port)
        fd = getattr(port, "fd", None)
        if isinstance(fd, int):  # a posix port (device path, pty): non-blocking fd + select
            return _Sink(lambda b, t: write_fd(fd, b, stop=stop, timeout_s=t), None, name,
                         _fd_reader(fd))
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
                 on_wire: Callable[[bytes], None] | None = None,
                 on_truth: Callable[[dict], None] | None = None):
        self.source = source
        self.on_truth = on_truth  # gets each STIM_ACK's ground truth (see `truth`)
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
        # the way back: the host's commands, and the answers owed to them
        self.truth: list[dict] = []  # one record per STIM_ACK sent, in order
        self._uplink = StreamDecoder(max_payload_bytes=64)  # commands are 16-byte payloads
        self._commanded: dict[int, tuple[StimCommand, int]] = {}  # id -> (command, received at)
        self._onsets: list[int] = []  # source samples of accepted onsets (BUSY checks)
        self._acked: set[int] = set()  # delivered "now": acknowledged before generated
        self._sink: _Sink | None = None

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
            raise ConfigError(f"duration_s must be > 0 (or None to run until stopped), got {duration_s}")
        sink = self._sink = _make_sink(port, self._stop)
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
        # a commanded source generates each frame after its wait, so that a command that
        # arrives while the frame's samples are being acquired can still stimulate in it
        commanded = bool(getattr(self.source, "commanded", False))
        k = 0
        while not self._stop.is_set() and (total_frames is None or k < total_frames):
            start = k * F
            if not commanded:
                while len(mua_buf) < F:
                    chunk, events = self.source.read(max(cfg.chunk_samples, F))
                    mua_buf = np.concatenate([mua_buf, np.asarray(chunk, np.float32)])
                    pending_events += events
                block, mua_buf = mua_buf[:F], mua_buf[F:]
            if period_s:
                deadline = t0 + (k + 1) * period_s
                if sink.read is not None:
                    if self._wait_reading(sink, t0 + k * period_s, deadline, start):
                        break
                else:
                    wait_s = deadline - time.monotonic()
                    if wait_s > 0 and self._stop.wait(wait_s):
                        break
                late_ms = (time.monotonic() - deadline) * 1e3
                if late_ms > self._counts.max_late_ms:
                    with self._lock:
                        self._counts.max_late_ms = late_ms
            if sink.read is not None:  # arrived since the wait (or unpaced): the frame's last sample
                self._on_uplink(sink.read(0.0), start + F - 1 if period_s else start)
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
            if commanded:  # its events are the commands', announced by _command or _answers
                block = np.asarray(self.source.read(F)[0], np.float32)
            frames += self._answers()
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

    # --- the way back: commands in, acknowledgements out ---------------------------------------
    def _wait_reading(self, sink: _Sink, frame_t0: float, deadline: float, start: int) -> bool:
        """Wait for the deadline while reading the host's commands; True if stopped.

        A command is delivered at the sample being acquired when it arrived: frame k's F
        samples are acquired between frame_t0 and its deadline, one per 1/F of that.
        """
        F = self.config.frame_samples
        period_s = deadline - frame_t0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stop.is_set():
                return True
            data = sink.read(min(remaining, 0.05))  # wakes at once when bytes arrive
            if data:
                acquiring = int((time.monotonic() - frame_t0) / period_s * F)
                self._on_uplink(data, start + min(max(acquiring, 0), F - 1))

    def _on_uplink(self, data: bytes, source_sample: int) -> None:
        """Decode what the host sent; accept or refuse each STIM_COMMAND at source_sample."""
        if not data:
            return
        frames = self._uplink.feed(data)
        s = self._uplink.stats
        with self._lock:
            self._counts.uplink_bytes += len(data)
            self._counts.uplink_errors = int(s.crc_errors + s.header_errors + s.payload_errors)
        for cmd in frames:
            if isinstance(cmd, StimCommand):
                self._command(cmd, source_sample)

    def _command(self, cmd: StimCommand, now: int) -> None:
        """Accept or refuse one command at source sample `now`, and answer it.

        A refusal, or a stimulation now, is acknowledged at once (with its EVENT_STIM: the
        onset is the sample being acquired, so both precede the SAMPLES frame holding it);
        a stimulation at a later sample is acknowledged in the frame that holds its onset.
        """
        cfg, origin = self.config, self._run_origin
        with self._lock:
            self._counts.commands_received += 1
        onset = cmd.sample_counter + origin if cmd.at_sample else now
        busy = round(cfg.busy_ms * self.sample_rate_hz / 1000)
        if not getattr(self.source, "commanded", False):
            status = AckStatus.UNAVAILABLE  # this source cannot be stimulated (a recording)
        elif (not self.source.has_electrode(cmd.electrode) or cmd.current_ua <= 0
              or cmd.current_ua > cfg.max_current_ua):
            status = AckStatus.INVALID
        elif onset < now or (not cmd.at_sample and cmd.deadline_samples
                             and now - origin > cmd.sample_counter + cmd.deadline_samples):
            status = AckStatus.EXPIRED
        elif any(abs(onset - other) < busy for other in self._onsets):
            status = AckStatus.BUSY
        else:
            self.source.stimulate(onset, cmd.electrode, cmd.current_ua, cmd.command_id)
            self._commanded[cmd.command_id] = (cmd, now)
            self._onsets = [o for o in self._onsets if o > now - busy] + [onset]
            if not cmd.at_sample:
                self._send(self._sink, self._delivery_frames(cmd.command_id, onset, cmd.electrode,
                                                             cmd.current_ua), clean=False)
                self._acked.add(cmd.command_id)
            return
        self._send(self._sink, [self._number(encode_stim_ack(
            self._seq, max(0, now - origin), cmd.command_id, cmd.electrode, cmd.current_ua, status))],
            clean=False)
        self._record({"command_id": cmd.command_id, "status": AckStatus.NAMES[status],
                      "sample": max(0, now - origin), "electrode": cmd.electrode,
                      "current_ua": cmd.current_ua, "command_sample": cmd.sample_counter,
                      "received_sample": now - origin})

    def _delivery_frames(self, command_id: int, onset: int, electrode: int,
                         current_ua: float) -> list[tuple[bytes, int]]:
        """STIM_ACK (delivered) and EVENT_STIM of a stimulation at source sample `onset`."""
        counter = onset - self._run_origin
        ack = self._number(encode_stim_ack(self._seq, counter, command_id, electrode, current_ua,
                                           AckStatus.DELIVERED))
        event = self._number(encode_event_stim(self._seq, counter, electrode, current_ua))
        with self._lock:
            self._counts.event_frames += 1
        return [ack, event]

    def _answers(self) -> list[tuple[bytes, int]]:
        """Ground truth of the stimulations generated in this frame; the frames (ack and
        event) of those that were scheduled for a sample, not acknowledged yet."""
        out = []
        if not getattr(self.source, "commanded", False):
            return out
        origin = self._run_origin
        for d in self.source.take_delivered():
            cmd, now = self._commanded.pop(d.command_id)
            if d.command_id in self._acked:
                self._acked.discard(d.command_id)
            else:
                out += self._delivery_frames(d.command_id, d.sample, d.electrode, d.current_ua)
            self._record({"command_id": d.command_id, "status": "delivered",
                          "sample": d.sample - origin, "electrode": d.electrode,
                          "current_ua": d.current_ua, "perceived": d.perceived,
                          "p_true": round(d.p_true, 6), "p_state": round(d.p_state, 6),
                          "state": round(d.state, 6), "r_norm": round(d.r_norm, 6),
                          "command_sample": cmd.sample_counter, "received_sample": now - origin})
        return out

    def _record(self, record: dict) -> None:
        delivered = record["status"] == "delivered"
        with self._lock:
            self._counts.ack_frames += 1
            self._counts.commands_delivered += delivered
            self._counts.commands_refused += not delivered
            self.truth.append(record)
        if self.on_truth is not None:
            self.on_truth(record)

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
