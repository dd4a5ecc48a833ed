"""The bedside decision loop: frames in, normalised ring buffer, int8 encoder + probe, decisions out.

Map: Int8Ring (recent samples, normalised and quantised to the model's int8 input on
arrival, + lost runs; SampleRing: the float32 ring for any other WindowDecoder) <-
StreamIngest (gaps, restarts, the one Normaliser) <- Runtime.process_batch (one read's
frames) -> decide (a view of the ring's rows into the interpreter, the probe on its int8
output) / no-decision -> DecisionSinks. No allocation, garbage collection or inline
statistics refresh on the way: collections run between batches (collect_in_idle), the
normaliser's refresh is prepared in idle time (edge/normaliser.py).

Latency of a decision runs from the moment the read that delivered the last byte the window
needs returned (`t_read_ns` of that batch) to the moment its line has been written, split
into read_parse, normalise, invoke, probe and write. Its age is another matter: StreamClock
maps the device's sample counter onto the local clock, and a window whose last sample was
due longer than `stale_ms` ago is not decided, however quickly it could be. Imports: numpy, the core and edge only
(never torch, tensorflow, onnx, scikit-learn or scipy).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from phosphene.edge.health import HealthReport, InputHealth
from phosphene.edge.normaliser import EdgeNormaliser
from phosphene.edge.stats import LatencyHistogram, peak_rss_mb, rss_mb
from phosphene.errors import ConfigError
from phosphene.firmware_bridge.protocol import StimAck
from phosphene.signal import NormaliserConfig, WindowSpec

__all__ = [
    "MODES",
    "NO_DECISION_REASONS",
    "BundleDecoder",
    "DecisionSinks",
    "Int8Ring",
    "Runtime",
    "RuntimeConfig",
    "SampleBlock",
    "SampleRing",
    "StimOnset",
    "StreamClock",
    "StreamIngest",
    "StreamRestart",
    "WindowDecoder",
    "collect_in_idle",
]

log = logging.getLogger(__name__)

# gated: continuous decisions, and a Gate (edge/gate.py) that sends stimulation commands
MODES = ("triggered", "continuous", "gated")
# Every no-decision line names one of these, so a controller can switch on it.
NO_DECISION_REASONS = (
    "warming_up",  # the normaliser has not seen `warmup_samples` yet (after start or a reset)
    "lost_samples",  # the window holds more lost samples (frame loss, CRC failure) than allowed
    "stall",  # no samples for longer than stall_ms: pending trials are dropped, not decided late
    "stale",  # the window's last sample was due longer than stale_ms ago (a backlog, a pause)
    "stream_mismatch",  # channel count or sample rate of the stream differs from the bundle
    "window_expired",  # the trial's window is no longer (or never was) in the ring buffer
    "unhealthy_input",  # --refuse-unhealthy: dead/flat/saturated channels or input unlike calibration
)
STAGES = ("read_parse", "normalise", "invoke", "probe", "write")
STALL_LINE_MAX_NS = 60_000_000_000  # while the input stays silent, at least one stall line a minute


# --------------------------------------------------------------------------------------
# What the runtime consumes (the source adapter turns wire frames into these)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleBlock:
    """A block of MUA samples from the device.

    data: (n, C) float32 uV; sample: device counter of data[0]; seq: wire sequence number.
    sample_rate_hz: the rate the frame declares (None when the wire does not say).
    """

    seq: int
    sample: int
    data: np.ndarray
    sample_rate_hz: float | None = None


@dataclass(frozen=True)
class StimOnset:
    """A stimulation-onset event: device sample counter of the onset, electrode, current."""

    seq: int
    sample: int
    electrode: int
    current_ua: float


@dataclass(frozen=True)
class StreamRestart:
    """The device restarted (BOOT status or a sequence restart): counters begin anew here."""

    seq: int
    sample: int


class WindowDecoder(Protocol):
    """What the runtime needs from a bundle: window -> P(perceived), with stage times.

    decode(window: (window_samples, C) float32 normalised MUA) -> (p_perceived, invoke_ns,
    probe_ns). `threshold` turns p into the 0/1 decision.
    """

    threshold: float

    def decode(self, window: np.ndarray) -> tuple[float, int, int]: ...


@dataclass(frozen=True)
class RuntimeConfig:
    """How the decision loop behaves; window timing and normaliser come from the bundle."""

    mode: str = "triggered"  # "triggered": one decision per stimulation; "continuous": one per patch
    latency_budget_ms: float = 5.0  # per-decision budget (read -> written); misses are counted
    stall_ms: float = 100.0  # no samples for this long -> "stall"
    stale_ms: float = 100.0  # a window whose last sample was due longer ago -> "stale", not decided
    max_lost_samples: int = 0  # lost samples a window may hold and still be decided
    status_interval_s: float = 10.0  # periodic one-line status on stderr (0: never)
    ring_extra_s: float = 1.0  # ring holds offset + window + this much, for late events
    max_pending: int = 64  # triggered windows awaiting data; more -> oldest dropped as expired
    refuse_unhealthy: bool = False  # no decisions while input health reports a fault or a shift
    health_interval_s: float = 0.25  # how often input health is assessed (in poll, idle time)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.latency_budget_ms > 0:
            raise ConfigError(f"latency budget must be > 0 ms, got {self.latency_budget_ms}")
        if not self.stall_ms > 0:
            raise ConfigError(f"stall time must be > 0 ms, got {self.stall_ms}")
        if not self.stale_ms > 0:
            raise ConfigError(f"staleness bound must be > 0 ms, got {self.stale_ms}")
        if self.max_lost_samples < 0:
            raise ConfigError(f"max lost samples must be >= 0, got {self.max_lost_samples}")


# --------------------------------------------------------------------------------------
# Ring buffer of normalised samples, addressed by the device's absolute sample counter
# --------------------------------------------------------------------------------------
class SampleRing:
    """The last `capacity` normalised samples with a validity flag each.

    values: (capacity, C) float32; slot = sample counter % capacity, so a window is found by
    its device sample numbers. Lost samples (frame loss, CRC failure) are stored as invalid.
    """

    def __init__(self, n_channels: int, capacity: int):
        if capacity <= 0 or n_channels <= 0:
            raise ValueError("ring capacity and channel count must be positive")
        self.capacity, self.n_channels = int(capacity), int(n_channels)
        self.values = np.zeros((self.capacity, self.n_channels), dtype=np.float32)
        self.valid = np.zeros(self.capacity, dtype=bool)
        self.seqs = np.full(self.capacity, -1, dtype=np.int64)  # wire sequence number per sample
        self.clear(0)

    def clear(self, next_sample: int) -> None:
        """Forget everything; the next write is expected at `next_sample`."""
        self.valid[:] = False
        self.first = int(next_sample)  # oldest sample counter this ring has ever held since clear
        self.head = int(next_sample)  # one past the newest sample written

    @property
    def oldest(self) -> int:
        """Oldest sample counter still held."""
        return max(self.first, self.head - self.capacity)

    def write(self, sample: int, values: np.ndarray, valid: bool, seq: int = -1) -> None:
        """Store values: (n, C) at counters [sample, sample + n); sample must equal head."""
        n = values.shape[0]
        assert sample == self.head, "ring writes are contiguous; gaps are filled by the caller"
        if n > self.capacity:  # only the newest `capacity` samples can be kept
            values, sample = values[n - self.capacity:], sample + n - self.capacity
            n = self.capacity
        slot = sample % self.capacity
        first = min(n, self.capacity - slot)
        self.values[slot:slot + first] = values[:first]
        self.valid[slot:slot + first] = valid
        self.seqs[slot:slot + first] = seq
        if first < n:
            self.values[: n - first] = values[first:]
            self.valid[: n - first] = valid
            self.seqs[: n - first] = seq
        self.head = sample + n

    def seq_at(self, sample: int) -> int:
        """Wire sequence number of the frame that carried `sample` (-1: a filled gap)."""
        return int(self.seqs[sample % self.capacity])

    def holds(self, start: int, stop: int) -> bool:
        return self.oldest <= start and stop <= self.head

    def window(self, start: int, stop: int, out: np.ndarray) -> int:
        """Copy samples [start, stop) into out: (stop - start, C); return how many are invalid."""
        assert self.holds(start, stop), "caller checks holds() first"
        n = stop - start
        slot = start % self.capacity
        first = min(n, self.capacity - slot)
        out[:first] = self.values[slot:slot + first]
        invalid = first - int(np.count_nonzero(self.valid[slot:slot + first]))
        if first < n:
            out[first:n] = self.values[: n - first]
            invalid += (n - first) - int(np.count_nonzero(self.valid[: n - first]))
        return invalid


class Int8Ring:
    """The last `capacity` samples as the model's int8 input rows, any window one contiguous view.

    rows: (capacity + window, C) int8; sample s lives in row s % capacity, and rows
    [capacity, capacity + window) repeat rows [0, window), so the rows of any window of up
    to `window` samples are contiguous: view(start, stop) is the (1, n, C) input tensor
    itself, without a copy. Same addressing and API as SampleRing (head, oldest, holds,
    seq_at, clear); lost samples are kept as a short list of runs instead of a flag per
    sample, and the wire sequence number per block instead of per sample, so a block costs
    one write of its rows and no per-sample bookkeeping.
    """

    def __init__(self, n_channels: int, capacity: int, window: int):
        if capacity <= 0 or n_channels <= 0 or not 0 < window <= capacity:
            raise ValueError("ring capacity, window and channel count must be positive "
                             "(window <= capacity)")
        self.capacity, self.n_channels, self.window_samples = int(capacity), int(n_channels), int(window)
        self.values = np.zeros((1, self.capacity + self.window_samples, self.n_channels), dtype=np.int8)
        self.values.fill(0)  # every page touched now, not during a decision
        self.rows = self.values[0]
        self._views: list[np.ndarray | None] = [None] * self.capacity  # window views by first slot
        self._lost: deque[list[int]] = deque()  # [start, stop) runs of lost samples, oldest first
        self._blocks: deque[tuple[int, int]] = deque()  # (first sample, seq) per block, oldest first
        self.clear(0)

    def clear(self, next_sample: int) -> None:
        """Forget everything; the next write is expected at `next_sample`."""
        self._lost.clear()
        self._blocks.clear()
        self.first = int(next_sample)
        self.head = int(next_sample)

    @property
    def oldest(self) -> int:
        return max(self.first, self.head - self.capacity)

    def holds(self, start: int, stop: int) -> bool:
        return self.oldest <= start and stop <= self.head

    def slot_rows(self, sample: int, n: int) -> np.ndarray | None:
        """The rows that samples [sample, sample + n) go to, if contiguous (else None)."""
        slot = sample % self.capacity
        return self.rows[slot:slot + n] if slot + n <= self.capacity else None

    def commit(self, sample: int, n: int, valid: bool, seq: int = -1,
               rows: np.ndarray | None = None) -> None:
        """Samples [sample, sample + n) are written: into slot_rows() already (rows None), or
        given here as int8 rows (n, C) to be stored (the newest `capacity` of them)."""
        assert sample == self.head, "ring writes are contiguous; gaps are filled by the caller"
        cap, W = self.capacity, self.window_samples
        if rows is not None:
            if n > cap:
                rows, sample, n = rows[n - cap:], sample + n - cap, cap
            slot = sample % cap
            first = min(n, cap - slot)
            self.rows[slot:slot + first] = rows[:first]
            if first < n:
                self.rows[: n - first] = rows[first:]
        slot = sample % cap
        end = slot + n
        if slot < W:  # rows [0, window) are mirrored after the ring
            top = end if end < W else W
            self.rows[cap + slot:cap + top] = self.rows[slot:top]
        if end > cap:  # wrapped: the rows written at the ring's start too
            top = min(end - cap, W)
            self.rows[cap:cap + top] = self.rows[:top]
        head = self.head = sample + n
        oldest = head - cap if head - cap > self.first else self.first
        lost = self._lost
        if not valid:
            if lost and lost[-1][1] == sample:
                lost[-1][1] = head
            else:
                lost.append([sample, head])
        while lost and lost[0][1] <= oldest:
            lost.popleft()
        blocks = self._blocks
        blocks.append((sample, seq))
        while blocks[0][0] < oldest and len(blocks) > 1 and blocks[1][0] <= oldest:
            blocks.popleft()

    def append(self, slot: int, sample: int, n: int, seq: int) -> None:
        """commit() of the steady state: a valid block already in rows [slot, slot + n),
        no wrap (slot = sample % capacity, slot + n <= capacity)."""
        if slot < self.window_samples:  # rows [0, window) are mirrored after the ring
            top = min(slot + n, self.window_samples)
            self.rows[self.capacity + slot:self.capacity + top] = self.rows[slot:top]
        head = self.head = sample + n
        oldest = head - self.capacity
        blocks = self._blocks
        blocks.append((sample, seq))
        if oldest > self.first:
            if self._lost and self._lost[0][1] <= oldest:
                self._lost.popleft()
            while len(blocks) > 1 and blocks[1][0] <= oldest:
                blocks.popleft()

    def view(self, start: int, stop: int) -> np.ndarray:
        """(1, stop - start, C) int8 rows of samples [start, stop): a view, no copy."""
        slot = start % self.capacity
        if stop - start == self.window_samples:  # made once per slot, then reused
            v = self._views[slot]
            if v is None:
                v = self._views[slot] = self.values[:, slot:slot + self.window_samples]
            return v
        return self.values[:, slot:slot + (stop - start)]

    def lost_in(self, start: int, stop: int) -> int:
        """How many samples in [start, stop) were lost (filled)."""
        lost = self._lost
        if not lost or lost[-1][1] <= start:
            return 0
        return sum(max(0, min(b, stop) - max(a, start)) for a, b in lost)

    def seq_at(self, sample: int) -> int:
        """Wire sequence number of the frame that carried `sample` (-1: a filled gap)."""
        for first, seq in reversed(self._blocks):
            if first <= sample:
                return seq
        return -1

    def window(self, start: int, stop: int, out: np.ndarray) -> int:
        """Copy the int8 rows of [start, stop) into out; return how many are lost (as SampleRing)."""
        assert self.holds(start, stop), "caller checks holds() first"
        out[...] = self.view(start, stop)[0]
        return self.lost_in(start, stop)


# --------------------------------------------------------------------------------------
# When was a sample due? The device's sample counter mapped onto the local clock
# --------------------------------------------------------------------------------------
class StreamClock:
    """Maps the device's sample counter onto this machine's clock, to age windows by it.

    A sample's end is due at `offset + sample / rate`. Each block that arrives gives one
    observation, its read time minus its end's counter time: transport delay plus the
    offset between the two clocks. The offset is the lower envelope of the observations:
    it falls at once to any earlier observation and rises by at most `drift_ppm` of the
    elapsed time, so a device whose crystal runs slow is followed while a backlog (a
    device or a reader that paused, then delivered seconds of old samples in a burst) is
    seen as old, whatever the size of the reads that deliver it.

    If the observations stay later than the offset by more than `stale_ns` for
    `reanchor_s` of wall time, the device's timing itself has jumped (its counter paused
    while the clock ran on): the offset is moved to the earliest of those observations
    and `reanchors` counts it, so a device that lost time does not silence the decoder
    forever. A restart of the device's counter starts a new mapping (`reset`).
    """

    def __init__(self, sample_rate_hz: float, *, stale_ns: int, drift_ppm: float = 1000.0,
                 reanchor_s: float = 1.0):
        self.ns_per_sample = 1e9 / float(sample_rate_hz)
        self.stale_ns = int(stale_ns)
        self.drift = float(drift_ppm) * 1e-6
        self.reanchor_ns = int(reanchor_s * 1e9)
        self.reanchors = 0
        self.last_jump_ns = 0  # how far the last re-anchor moved the offset
        self.reset()

    def reset(self) -> None:
        """Forget the mapping (the device's counter restarted)."""
        self.origin: int | None = None  # a sample counter near the stream's start
        self.offset_ns = 0  # local time at which sample `origin` was due
        self._t_last = 0
        self._late_since: int | None = None
        self._late_min = 0

    def observe(self, t_read_ns: int, sample_end: int) -> None:
        """A block whose samples end (exclusive) at `sample_end` was read at t_read_ns."""
        if self.origin is None:
            self.origin, self.offset_ns, self._t_last = sample_end, t_read_ns, t_read_ns
            return
        obs = t_read_ns - round((sample_end - self.origin) * self.ns_per_sample)
        allowed = self.offset_ns + int(self.drift * max(t_read_ns - self._t_last, 0))
        self._t_last = t_read_ns
        self.offset_ns = min(allowed, obs)
        if obs - self.offset_ns <= self.stale_ns:
            self._late_since = None
            return
        if self._late_since is None:
            self._late_since, self._late_min = t_read_ns, obs
        else:
            self._late_min = min(self._late_min, obs)
            if t_read_ns - self._late_since >= self.reanchor_ns:
                self.last_jump_ns = self._late_min - self.offset_ns
                self.offset_ns, self._late_since = self._late_min, None
                self.reanchors += 1

    def due_ns(self, sample_end: int) -> int:
        """Local time by which the samples before `sample_end` were due."""
        if self.origin is None:
            return 0
        return self.offset_ns + round((sample_end - self.origin) * self.ns_per_sample)

    def age_ns(self, sample_end: int, now_ns: int) -> int:
        """How long ago the samples before `sample_end` were due (0 before any block)."""
        return now_ns - self.due_ns(sample_end) if self.origin is not None else 0


# --------------------------------------------------------------------------------------
# Ingest: device samples -> normaliser -> ring, with gaps, late frames and restarts
# --------------------------------------------------------------------------------------
class StreamIngest:
    """Feeds sample blocks through the bundle's Normaliser into a ring.

    The normaliser is EdgeNormaliser: the core Normaliser with its periodic statistics
    refresh prepared in idle time (call prepare() after decisions), same output bytes.
    With `quant` (the model's input quantisation) each sample is normalised and quantised
    once, on arrival, into an Int8Ring: a window is then a view of int8 rows, bit-identical
    to quant.quantize(normalise(x)), and deciding needs no gather or quantise. Without it
    the ring is a SampleRing of float32 normalised samples (any WindowDecoder).

    The normaliser sees one sample per device sample counter, in order, exactly as the
    offline `normalise_recording` sees a recording, so a window decoded here equals the
    offline computation on the same samples. A gap (lost frames) is filled by holding the
    last received sample (so the normaliser's refresh grid stays on the device counter)
    and marked invalid. A gap longer than the ring, or a counter that jumps back by more
    than the ring (device restart), resets the normaliser: decisions wait for a new
    warm-up. Frames that arrive late or twice are dropped and counted. On the int8 path a
    block holding a NaN (the wire rejects those; a direct caller might not; +-inf is clipped)
    is counted and stored as lost, like a gap, instead of poisoning the statistics.
    """

    def __init__(self, n_channels: int, normaliser_config: NormaliserConfig, capacity: int,
                 *, quant=None, window_samples: int | None = None):
        self.n_channels = n_channels
        self.normaliser = EdgeNormaliser(n_channels, normaliser_config)
        self.int8 = quant is not None
        if self.int8:
            self.normaliser.set_output_quant(quant)
            self.ring = Int8Ring(n_channels, capacity, window_samples or capacity)
            self._rows8 = np.zeros((64, n_channels), dtype=np.int8)  # a block that wraps the ring
            self._rows, self._capacity = self.ring.rows, self.ring.capacity
            self._steady_int8 = self.normaliser.steady_int8
        else:
            self.ring = SampleRing(n_channels, capacity)
        self.nonfinite_blocks = 0
        self.started = False
        self.next_sample = 0
        self.warm_from = 0  # first sample counter with finite normalised values
        self._hold = np.zeros((1, n_channels), dtype=np.float32)
        self.samples_received = 0
        self.samples_lost = 0  # filled gap samples (never decided on beyond the bound)
        self.late_blocks = 0  # duplicated or reordered blocks, dropped
        self.resets = 0

    def _reset(self, sample: int) -> None:
        self.normaliser.reset()
        self.ring.clear(sample)
        self.next_sample = sample
        self.warm_from = sample + self.normaliser.config.warmup_samples

    def prepare(self) -> None:
        """Idle-time work: sort the next statistics refresh's samples ahead of its boundary."""
        self.normaliser.prepare()

    def close(self) -> None:
        self.normaliser.close()

    def restart(self) -> bool:
        """The device restarted: the next block starts a new run (normaliser warms up again).

        Returns False when nothing had been received yet (a device's boot message).
        """
        was_running = self.started
        if was_running:
            self.resets += 1
        self.started = False
        return was_running

    def add(self, block: SampleBlock) -> str:
        """Ingest one block; returns "ok", "gap", "reset" or "late"."""
        data = block.data
        n = data.shape[0]
        sample = block.sample
        if self.int8 and sample == self.next_sample and self.started:
            # the steady state: the next block in order, float32, no NaN, not wrapping the ring
            slot = sample % self._capacity
            if (slot + n <= self._capacity and data.dtype == np.float32
                    and self._steady_int8(data, self._rows[slot:slot + n])):
                self.ring.append(slot, sample, n, block.seq)
                self.next_sample = sample + n
                self.samples_received += n
                return "ok"
        status = "ok"
        if not self.started:
            status = "reset" if self.samples_received else "ok"
            self.started = True
            self._reset(block.sample)
        elif block.sample < self.next_sample:
            if block.sample + n <= self.next_sample and block.sample >= self.next_sample - self.ring.capacity:
                self.late_blocks += 1  # a duplicate or a reordered frame: its slot is already filled
                return "late"
            self.resets += 1  # counter went back further than any reorder: the device restarted
            self._reset(block.sample)
            status = "reset"
        elif block.sample > self.next_sample:
            gap = block.sample - self.next_sample
            self.samples_lost += gap
            if gap > self.ring.capacity:
                self.resets += 1
                self._reset(block.sample)
                status = "reset"
            else:
                self._store(self.next_sample, self._filler(gap), False, -1)
                self.next_sample = block.sample
                status = "gap"
        if self.int8 and n and self._has_nan(data):
            self.nonfinite_blocks += 1
            self.samples_lost += n
            self._store(block.sample, self._filler(n), False, block.seq)
            self.next_sample = block.sample + n
            self.samples_received += n
            return "gap" if status == "ok" else status
        self._store(block.sample, data, True, block.seq)
        self.next_sample = block.sample + n
        self.samples_received += n
        return status

    def _filler(self, n: int) -> np.ndarray:
        """n copies of the last sample the normaliser saw (the last received, or a filler of it)."""
        norm = self.normaliser
        norm.flush()
        if norm.samples_seen:  # its ring keeps every raw sample: no copy per block needed
            np.copyto(self._hold, norm._ring[(norm.samples_seen - 1) % norm.config.window_samples])
        return np.broadcast_to(self._hold, (n, self.n_channels))

    def _has_nan(self, data: np.ndarray) -> bool:
        """Any NaN? (+-inf needs no check: the normaliser clips it exactly as the core does.)"""
        if data.dtype == np.float32:
            return self.normaliser.has_nan(data)
        return bool(np.isnan(data).any())

    def _store(self, sample: int, data: np.ndarray, valid: bool, seq: int) -> None:
        """Normalise [sample, sample + n) into the ring (quantised on the int8 path)."""
        if not self.int8:
            self.ring.write(sample, self.normaliser.process(data), valid=valid, seq=seq)
            return
        n = data.shape[0]
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        rows = self.ring.slot_rows(sample, n)
        if rows is not None:
            self.normaliser.process_int8(data, rows)
            self.ring.commit(sample, n, valid, seq)
            return
        if n > self._rows8.shape[0]:
            self._rows8 = np.zeros((n, self.n_channels), dtype=np.int8)
        rows = self._rows8[:n]
        self.normaliser.process_int8(data, rows)
        self.ring.commit(sample, n, valid, seq, rows=rows)


def collect_in_idle() -> int:
    """Run the garbage collection the next allocations would trigger, now (idle time).

    CPython collects generation 0 when its count passes the threshold, during whatever
    allocation gets there: with this called after every batch at half the threshold, that
    is never a decision. Returns the generation collected (-1: none).
    """
    c0, c1, c2 = gc.get_count()
    t0, t1, t2 = gc.get_threshold()
    if t0 == 0 or c0 < t0 // 2:
        return -1
    generation = 2 if c1 + 1 >= t1 and c2 + 1 >= t2 else 1 if c1 + 1 >= t1 else 0
    gc.collect(generation)
    return generation


# --------------------------------------------------------------------------------------
# Output: each record is one complete line
# --------------------------------------------------------------------------------------
class DecisionSinks:
    """Where decision and no-decision records go: stdout (JSON lines or text) and a log file.

    The log file is written to a temporary file beside the target (`.NAME.PID.partial`),
    one complete line per os.write call and flushed to the OS at once (a live `tail -f`
    sees whole lines); close() fsyncs it and renames it onto the target, so the target is
    either the previous complete log or this run's complete log, never half a file. A
    crash leaves the partial file beside it for inspection.
    """

    def __init__(self, *, stdout: IO[str] | None = None, json_stdout: bool = False,
                 out_path: str | os.PathLike | None = None):
        self.stdout = stdout
        self.json_stdout = json_stdout
        self.out_path = Path(out_path) if out_path else None
        self._fd: int | None = None
        self.partial_path: Path | None = None
        if self.out_path is not None:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            self.partial_path = self.out_path.with_name(f".{self.out_path.name}.{os.getpid()}.partial")
            self._fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                               0o644)

    def write(self, record: dict, text: str | None = None) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        if self._fd is not None:
            os.write(self._fd, line.encode())
        if self.stdout is not None:
            if self.json_stdout:
                self.stdout.write(line)
            elif text is not None:
                self.stdout.write(text + "\n")
            self.stdout.flush()

    def close(self) -> Path | None:
        """Flush the log to disk and move it onto the target path; returns the path."""
        if self._fd is None:
            return None
        fd, self._fd = self._fd, None
        os.fsync(fd)
        os.close(fd)
        os.replace(self.partial_path, self.out_path)
        return self.out_path


# --------------------------------------------------------------------------------------
# The bundle as a WindowDecoder
# --------------------------------------------------------------------------------------
class BundleDecoder:
    """A bundle's int8 encoder + probe behind the WindowDecoder protocol.

    decode(window): float32 normalised window; the "invoke" stage holds quantise +
    set_tensor + invoke, "probe" the output -> P(perceived). decode_int8(rows): the int8
    input tensor itself (a view of the runtime's Int8Ring; `input_quant` is what the ring
    quantises with): "invoke" is set_tensor + invoke, nothing else. Same P either way.
    """

    def __init__(self, bundle, *, threads: int = 1, runtime: str = "auto", task: str | None = None):
        from phosphene.edge.interpreter import Encoder

        self.bundle = bundle
        self.encoder = Encoder(bundle, threads=threads, runtime=runtime, task=task)
        self.threshold = float(self.encoder.probe.threshold)
        self.task = self.encoder.probe.task  # the probe applied: its name also says its window
        # rows: (1, T, C) int8 input tensor -> (p, invoke ns, probe ns); bound, no wrapper call
        self.decode_int8 = self.encoder.run_int8

    @property
    def runtime_name(self) -> str:
        return self.encoder.model.runtime_name

    @property
    def runtime_version(self) -> str:
        return self.encoder.model.runtime_version

    @property
    def input_quant(self):
        """The model's input quantisation (the int8 ring's)."""
        return self.encoder.input_quant

    def decode(self, window: np.ndarray) -> tuple[float, int, int]:
        d = self.encoder.decide(window)
        t = d.timings_us
        return d.p_perceived, int((t["quantize"] + t["invoke"]) * 1e3), int(t["probe"] * 1e3)


# --------------------------------------------------------------------------------------
# The decision loop
# --------------------------------------------------------------------------------------
@dataclass
class _Pending:
    onset: StimOnset
    start: int
    stop: int


@dataclass
class RuntimeCounters:
    decisions: int = 0
    no_decisions: Counter = field(default_factory=Counter)
    budget_misses: int = 0
    mismatched_blocks: int = 0
    events: int = 0
    stale_windows: int = 0  # windows not decided because they were stale (one line may cover many)


class Runtime:
    """Decides on windows of a live stream; feed it with process_batch() and poll().

    Single-threaded by design: the reader calls process_batch(t_read_ns, items) with all
    frames one read returned, then poll(now_ns) for stall checks and status. Nothing here
    blocks; `run_loop` in phosphene.edge.source drives it from a serial port.
    """

    def __init__(self, decoder: WindowDecoder, *, spec: WindowSpec, normaliser_config: NormaliserConfig,
                 n_channels: int, config: RuntimeConfig, sinks: DecisionSinks,
                 status_stream: IO[str] | None = None, clock_ns=time.perf_counter_ns,
                 health_reference: dict | None = None, wire_rails_uv: tuple[float, float] | None = None):
        if abs(normaliser_config.sample_rate_hz - spec.sample_rate_hz) > 1e-6:
            raise ValueError(f"bundle is inconsistent: normaliser at {normaliser_config.sample_rate_hz} Hz "
                             f"but windows at {spec.sample_rate_hz} Hz")
        self.decoder, self.spec, self.config, self.sinks = decoder, spec, config, sinks
        self.n_channels = int(n_channels)
        self.status_stream = status_stream
        self.clock_ns = clock_ns
        capacity = (max(spec.offset_samples, 0) + spec.window_samples
                    + int(config.ring_extra_s * spec.sample_rate_hz))
        # a decoder that takes the int8 input tensor gets an int8 ring: each sample is
        # normalised and quantised once, on arrival, and a decision copies nothing
        quant = getattr(decoder, "input_quant", None) if hasattr(decoder, "decode_int8") else None
        self._int8 = quant is not None
        if self._int8:  # whole patches per ring cycle: frames of a patch never wrap it
            capacity = -(-capacity // spec.patch_samples) * spec.patch_samples
        self.ingest = StreamIngest(self.n_channels, normaliser_config, capacity, quant=quant,
                                   window_samples=spec.window_samples)
        self._window = np.zeros((spec.window_samples, self.n_channels), dtype=np.float32)
        self._pending: deque[_Pending] = deque()
        self._stale_ns = int(config.stale_ms * 1e6)
        self.stream_clock = StreamClock(spec.sample_rate_hz, stale_ns=self._stale_ns)
        self._budget_ns = int(config.latency_budget_ms * 1e6)
        self.counters = RuntimeCounters()
        self.latency = LatencyHistogram()
        self.stage_latency = {s: LatencyHistogram() for s in STAGES}
        # the decision itself (window rows + invoke + probe), and normalise + quantise of
        # the batch into the ring: end-to-end stages read, parse, ring, decision, write
        self.stage_latency["decision"] = LatencyHistogram()
        self.external: dict[str, int] = {}  # counters from the wire decoder (frames lost, CRC ...)
        now = clock_ns()
        self.t_start_ns = now
        self._last_input_ns = now  # the start counts as input, so "no data at all" is a stall too
        self._stalled = False
        self._last_stall_line_ns = 0
        self._stall_lines = 0  # lines in the current stall: their spacing doubles up to a minute
        self._stale_run: tuple | None = None  # skipped stale windows not yet written: start, stop, age, n, t0
        self._last_mismatch_line_ns = 0
        self._mismatch_detail = ""
        self._decision_index = 0
        self._last_status_ns = now
        self._status_samples = 0
        self.rss_start_mb = rss_mb()
        # input health: raw uV against the bundle's calibration statistics (edge/health.py)
        self.health = InputHealth(self.n_channels, health_reference, spec.sample_rate_hz,
                                  rails_uv=wire_rails_uv)
        self.health_report: HealthReport | None = None
        self._health_state: tuple | None = None
        self._last_health_ns = now
        self._health_blocks: list[np.ndarray] = []
        self.health_changes = 0
        self.monitor = None  # a MonitorFeed (edge/monitor.py): poll() hands it the state to publish
        self.gate = None  # gated mode: a Gate (edge/gate.py), fed every decision and acknowledgement

    # ---- public loop API ---------------------------------------------------------------
    def process_batch(self, t_read_ns: int, items: list, t_parsed_ns: int | None = None) -> None:
        """Handle everything one read returned. items: SampleBlock / StimOnset in wire order."""
        t_parsed_ns = self.clock_ns() if t_parsed_ns is None else t_parsed_ns
        read_parse_ns = t_parsed_ns - t_read_ns
        normalise_ns = 0
        boundaries: list[int] = []  # continuous: stops of windows completed by this batch
        got_samples = link_alive = False
        for item in items:
            if isinstance(item, StimOnset):
                self._on_onset(item, t_read_ns)
                continue
            if isinstance(item, StimAck):
                if self.gate is not None:
                    self.gate.on_ack(item, t_read_ns)
                continue
            if isinstance(item, StreamRestart):
                self.stream_clock.reset()
                self.health.reset()
                if self.ingest.restart():
                    self._expire_all("window_expired", t_read_ns)
                    self._log_status(f"device restarted (seq {item.seq}, sample {item.sample}): "
                                     "normaliser warms up again")
                continue
            link_alive = True  # any sample frame, even a mismatched one, means the link is not stalled
            if not self._stream_matches(item):
                continue
            t0 = self.clock_ns()
            expected = self.ingest.next_sample
            status = self.ingest.add(item)
            normalise_ns += self.clock_ns() - t0
            if status == "late":
                continue
            got_samples = True
            n = item.data.shape[0]
            if status == "reset":
                self._expire_pending(before=item.sample)
                self.stream_clock.reset()
                self.health.reset()
            self._health_blocks.append(item.data)
            reanchors = self.stream_clock.reanchors
            self.stream_clock.observe(t_read_ns, item.sample + n)
            if self.stream_clock.reanchors != reanchors:
                self._log_status(f"the device's timing jumped by {self.stream_clock.last_jump_ns / 1e6:.0f} ms "
                                 f"(its samples stayed late for {self.stream_clock.reanchor_ns / 1e9:g} s): "
                                 "windows are aged from the new timing")
            self._status_samples += n
            if self.config.mode != "triggered":
                # every patch boundary gets a line, those inside a filled gap included
                first = expected if status == "gap" else item.sample
                P = self.spec.patch_samples
                first_stop = -(-(first + 1) // P) * P  # smallest multiple of P > first
                boundaries.extend(range(first_stop, item.sample + n + 1, P))
        if link_alive:
            self._last_input_ns = t_parsed_ns
            if self._stalled:
                self._stalled = False
                self._stall_lines = 0
                self._log_status(f"input resumed after {(t_parsed_ns - self._stall_began_ns) / 1e6:.0f} ms")
        head = self.ingest.ring.head
        if self.config.mode != "triggered":
            self._decide_boundaries(boundaries, head, t_read_ns, read_parse_ns, normalise_ns)
        else:
            self._decide_ready_triggers(head, t_read_ns, read_parse_ns, normalise_ns)
        if got_samples:
            self.ingest.prepare()  # after the decisions: idle time until the next frame
        for block in self._health_blocks:
            self.health.update(block)
        self._health_blocks.clear()
        collect_in_idle()  # so that no collection ever starts inside a decision

    def poll(self, now_ns: int | None = None) -> None:
        """Stall detection, mismatch reminders and the periodic status line."""
        now = self.clock_ns() if now_ns is None else now_ns
        stall_ns = int(self.config.stall_ms * 1e6)
        if now - self._last_input_ns > stall_ns:
            if not self._stalled:
                self._stalled = True
                self._stall_began_ns = self._last_input_ns
                self._log_status(f"input stalled (no samples for {self.config.stall_ms:g} ms)")
                while self._pending:
                    p = self._pending.popleft()
                    self._no_decision("stall", now, onset=p.onset, window=(p.start, p.stop))
            # the first line at once, then at doubling intervals up to one a minute
            spacing = min(stall_ns << min(max(self._stall_lines - 1, 0), 30), STALL_LINE_MAX_NS)
            if self._stall_lines == 0 or now - self._last_stall_line_ns >= spacing:
                self._last_stall_line_ns = now
                self._stall_lines += 1
                self._no_decision("stall", now, stalled_ms=round((now - self._last_input_ns) / 1e6, 1))
        if now - self._last_health_ns >= self.config.health_interval_s * 1e9:
            self._last_health_ns = now
            self._assess_health(now)
        if self._stale_run is not None and now - self._stale_run[4] > 1e9:
            self._flush_stale_run()  # a backlog that lasts: say so at least once a second
        interval = self.config.status_interval_s
        if interval > 0 and now - self._last_status_ns >= interval * 1e9:
            self._log_status(self.status_line(now))
            self._last_status_ns = now
            self._status_samples = 0
        if self.gate is not None:
            self.gate.poll(now)
        if self.monitor is not None:  # idle time: the monitor copies what it shows (rate-limited)
            self.monitor.publish(self, now)

    def close(self) -> None:
        """Stop the normaliser's helper thread (the summary stays available)."""
        self.ingest.close()

    def set_external_counters(self, counters: dict[str, int]) -> None:
        """Counters the wire decoder keeps (frames_lost, crc_errors, ...), shown in status/summary."""
        self.external = dict(counters)

    def _assess_health(self, now: int) -> None:
        """Classify the channels; a change of the fault set or of the shift flag is written
        as a `health` line (and to stderr), so the log says when the input went wrong."""
        r = self.health_report = self.health.assess((now - self.t_start_ns) / 1e9)
        state = (r.warming_up, tuple(r.dead), tuple(r.flat), tuple(r.saturated), bool(r.ood))
        if state == self._health_state or r.warming_up:
            return
        first = self._health_state is None
        self._health_state = state
        if first and r.ok:
            return  # healthy from the start: nothing to say
        self.health_changes += 1
        self._flush_stale_run()
        self.sinks.write({"type": "health", "mode": self.config.mode, **r.to_json(),
                          "time_unix": round(time.time(), 6)}, f"input {r.status_text()}")
        self._log_status(f"input {r.status_text()}")

    # ---- triggered mode ----------------------------------------------------------------
    def _on_onset(self, onset: StimOnset, t_read_ns: int) -> None:
        self.counters.events += 1
        if self.config.mode != "triggered":
            return
        start, stop = self.spec.triggered_window(onset.sample)
        if self._stalled:
            self._no_decision("stall", t_read_ns, onset=onset, window=(start, stop))
            return
        if len(self._pending) >= self.config.max_pending:
            p = self._pending.popleft()
            self._no_decision("window_expired", t_read_ns, onset=p.onset, window=(p.start, p.stop))
        self._pending.append(_Pending(onset, start, stop))

    def _decide_ready_triggers(self, head: int, t_read_ns: int, read_parse_ns: int,
                               normalise_ns: int) -> None:
        if not self._pending:
            return
        still = deque()
        for p in self._pending:
            if p.stop <= head:
                # the last byte needed is this batch's (samples or the late event itself)
                self._decide(p.start, p.stop, head, t_read_ns, read_parse_ns, normalise_ns,
                             onset=p.onset)
            else:
                still.append(p)
        self._pending = still

    def _expire_pending(self, before: int) -> None:
        still = deque()
        for p in self._pending:
            if p.start < before:
                self._no_decision("window_expired", self.clock_ns(), onset=p.onset, window=(p.start, p.stop))
            else:
                still.append(p)
        self._pending = still

    # ---- continuous mode ---------------------------------------------------------------
    def _decide_boundaries(self, stops: list[int], head: int, t_read_ns: int, read_parse_ns: int,
                           normalise_ns: int) -> None:
        """One decision per patch boundary; a run of stale windows gets one line, not one each.

        After a backlog the windows are aged oldest first: the stale ones are skipped and
        counted into one `stale` line (`skipped` windows, the newest one's window and age),
        written before the next line of any other kind, so the decoder goes straight to
        the newest data and the log says once what it skipped.
        """
        W = self.spec.window_samples
        for stop in stops:
            age = self._decide(stop - W, stop, head, t_read_ns, read_parse_ns, normalise_ns,
                               onset=None, report_stale=False)
            if age is not None:
                n = self._stale_run[3] + 1 if self._stale_run else 1
                self._stale_run = (stop - W, stop, age, n, self._stale_run[4] if self._stale_run else self.clock_ns())

    def _flush_stale_run(self) -> None:
        if self._stale_run is not None:
            start, stop, age, n, _ = self._stale_run
            self._stale_run = None
            self._stale_line(None, (start, stop, age), n)

    def _stale_line(self, onset: StimOnset | None, stale: tuple[int, int, int], skipped: int = 1) -> None:
        start, stop, age_ns = stale
        detail = {"age_ms": round(age_ns / 1e6, 1), "bound_ms": self.config.stale_ms}
        if skipped > 1:
            detail["skipped"] = skipped
        self.counters.stale_windows += skipped
        self._no_decision("stale", self.clock_ns(), onset=onset, window=(start, stop), **detail)

    # ---- one decision ------------------------------------------------------------------
    def _decide(self, start: int, stop: int, head: int, t_read_ns: int, read_parse_ns: int,
                normalise_ns: int, *, onset: StimOnset | None, report_stale: bool = True) -> int | None:
        """Decide on [start, stop), or write why not. A stale window returns its age (ns)
        instead of a line when report_stale is False (the caller coalesces them)."""
        ring, ingest = self.ingest.ring, self.ingest
        window = (start, stop)
        t0 = self.clock_ns()
        if start < ingest.warm_from:  # also a window reaching back before the stream (re)started
            self._no_decision("warming_up", t0, onset=onset, window=window)
            return None
        if not ring.holds(start, stop):
            self._no_decision("window_expired", t0, onset=onset, window=window)
            return None
        if self.config.refuse_unhealthy and self.health_report is not None:
            reason = self.health_report.refuse_reason()
            if reason:
                self._no_decision("unhealthy_input", t0, onset=onset, window=window, detail=reason)
                return None
        age = self.stream_clock.age_ns(stop, t0)
        if age > self._stale_ns:
            if not report_stale:
                return age
            self._stale_line(onset, (start, stop, age))
            return None
        # int8: lost samples counted from their runs; float: the window copied out, counted
        invalid = ring.lost_in(start, stop) if self._int8 else ring.window(start, stop, self._window)
        if invalid > self.config.max_lost_samples:
            self._no_decision("lost_samples", t0, onset=onset, window=window, lost=invalid)
            return None
        self._flush_stale_run()
        gather_ns = self.clock_ns() - t0
        if self._int8:
            p, invoke_ns, probe_ns = self.decoder.decode_int8(ring.view(start, stop))
        else:
            p, invoke_ns, probe_ns = self.decoder.decode(self._window)
        t_decided = self.clock_ns()
        decide_ns = t_decided - t0  # checks, window rows, invoke, probe
        age = self.stream_clock.age_ns(stop, t_decided)
        if age > self._stale_ns:  # the decoder itself was held up (a pause, a busy CPU)
            self._stale_line(onset, (start, stop, age))
            return None
        self._decision_index += 1
        self.counters.decisions += 1
        if self.gate is not None:  # only a decision made on valid input can stimulate; the
            # command goes out before the decision line is formatted and written (it precedes
            # that line in the log), so the log's write never delays a stimulation
            self.gate.on_decision(stop - 1, float(p), t_decided, decision_index=self._decision_index,
                                  refuse=self.health_report.refuse_reason() if self.health_report else None)
        record = {"type": "decision", "index": self._decision_index, "mode": self.config.mode,
                  "seq": ring.seq_at(stop - 1), "sample": stop - 1, "window": [start, stop],
                  "p_perceived": float(p), "decision": int(p >= self.decoder.threshold)}
        if onset is not None:
            record.update(onset_seq=onset.seq, onset_sample=onset.sample, electrode=onset.electrode,
                          current_ua=onset.current_ua)
        stages = {"read_parse": read_parse_ns, "normalise": normalise_ns + gather_ns,
                  "invoke": invoke_ns, "probe": probe_ns}
        t_format = self.clock_ns()
        latency = {k: round(v / 1e3, 1) for k, v in stages.items()}
        record["latency_us"] = latency
        record["time_unix"] = round(time.time(), 6)
        # the serialisation is the "write" stage in the line; the final OS write is added to
        # the statistics (and the budget check) below, since a line cannot contain its own write
        latency["write"] = round((self.clock_ns() - t_format) / 1e3, 1)
        latency["total"] = round((self.clock_ns() - t_read_ns) / 1e3, 1)
        text = (f"decision {self._decision_index} sample {stop - 1} p={p:.3f} -> {record['decision']}"
                + (f" (electrode {onset.electrode}, {onset.current_ua:g} uA)" if onset else "")
                + f" {latency['total']:.0f} us")
        self.sinks.write(record, text)
        t_end = self.clock_ns()
        total_ns = t_end - t_read_ns
        self.latency.add(total_ns / 1e3)
        stages["write"] = t_end - t_format
        for k, v in stages.items():
            self.stage_latency[k].add(max(v, 1) / 1e3)
        self.stage_latency["decision"].add(max(decide_ns, 1) / 1e3)
        if total_ns > self._budget_ns:
            self.counters.budget_misses += 1
        return None

    def _no_decision(self, reason: str, now_ns: int, *, onset: StimOnset | None = None,
                     window: tuple[int, int] | None = None, **detail) -> None:
        if reason != "stale":
            self._flush_stale_run()
        self.counters.no_decisions[reason] += 1
        record = {"type": "no_decision", "mode": self.config.mode, "reason": reason}
        if window is not None:
            record["window"] = list(window)
            record["sample"] = window[1] - 1
        if onset is not None:
            record.update(onset_seq=onset.seq, onset_sample=onset.sample, electrode=onset.electrode,
                          current_ua=onset.current_ua)
        record.update(detail)
        record["time_unix"] = round(time.time(), 6)
        extra = f" sample {window[1] - 1}" if window else ""
        self.sinks.write(record, f"no decision ({reason}){extra}")

    # ---- stream checks -----------------------------------------------------------------
    def _stream_matches(self, block: SampleBlock) -> bool:
        C = block.data.shape[1] if block.data.ndim == 2 else -1
        rate = block.sample_rate_hz
        if self.n_channels == C and (rate is None or abs(rate - self.spec.sample_rate_hz) < 1e-6):
            return True
        self.counters.mismatched_blocks += 1
        now = self.clock_ns()
        self._mismatch_detail = (f"stream has {C} channels at {rate if rate is not None else '?'} Hz, "
                                 f"bundle expects {self.n_channels} at {self.spec.sample_rate_hz:g} Hz")
        # one line per stall_ms at most: explicit, but a mismatched stream must not flood the log
        if now - self._last_mismatch_line_ns >= self.config.stall_ms * 1e6:
            self._last_mismatch_line_ns = now
            self._no_decision("stream_mismatch", now, stream_channels=C,
                              stream_rate_hz=rate, detail=self._mismatch_detail)
            self._expire_all("stream_mismatch", now)
        return False

    def _expire_all(self, reason: str, now: int) -> None:
        while self._pending:
            p = self._pending.popleft()
            self._no_decision(reason, now, onset=p.onset, window=(p.start, p.stop))

    # ---- status and summary ------------------------------------------------------------
    def _log_status(self, text: str) -> None:
        log.info(text)
        if self.status_stream is not None:
            self.status_stream.write(f"[phosphene run] {text}\n")
            self.status_stream.flush()

    def status_line(self, now_ns: int | None = None) -> str:
        now = self.clock_ns() if now_ns is None else now_ns
        elapsed = max((now - self._last_status_ns) / 1e9, 1e-9)
        s = self.latency.summary()
        nd = sum(self.counters.no_decisions.values())
        return (f"{(now - self.t_start_ns) / 1e9:.0f} s | decisions {self.counters.decisions} "
                f"(no-decision {nd}) | p50 {s['p50'] / 1e3:.2f} ms p99 {s['p99'] / 1e3:.2f} ms | "
                f"misses {self.counters.budget_misses} | frames lost {self.external.get('frames_lost', 0)} "
                f"| CRC errors {self.external.get('crc_errors', 0)} | "
                f"input {self._status_samples / elapsed:.0f} Hz | RSS {rss_mb():.0f} MB"
                + (f" | {self.health_report.status_text()}" if self.health_report else ""))

    def summary(self, *, flush: bool = True) -> dict:
        """The run's counters. flush=False (the monitor's copy during the run) leaves a run of
        skipped stale windows to be written when it ends, as without a monitor."""
        if flush:
            self._flush_stale_run()
        now = self.clock_ns()
        duration_s = (now - self.t_start_ns) / 1e9
        lat = self.latency.summary()
        return {
            "type": "summary",
            "mode": self.config.mode,
            "duration_s": round(duration_s, 3),
            "decisions": self.counters.decisions,
            "no_decisions": dict(self.counters.no_decisions),
            "events": self.counters.events,
            # no decisions yet: null, never NaN (not JSON)
            "latency_us": {k: (round(v, 1) if math.isfinite(v) else None) if isinstance(v, float) else v
                           for k, v in lat.items()},
            "stages_us": {k: {q: round(s[q], 1) for q in ("p50", "p90", "p99", "max")}
                          for k, s in ((k, h.summary()) for k, h in self.stage_latency.items() if h.count)},
            "budget_ms": self.config.latency_budget_ms,
            "budget_misses": self.counters.budget_misses,
            "samples_received": self.ingest.samples_received,
            "samples_lost": self.ingest.samples_lost,
            "late_blocks": self.ingest.late_blocks,
            "nonfinite_blocks": self.ingest.nonfinite_blocks,  # NaN samples: stored as lost
            "mismatched_blocks": self.counters.mismatched_blocks,
            "stale_windows": self.counters.stale_windows,
            "input_health": self.health_report.to_json() if self.health_report else None,
            "input_health_changes": self.health_changes,
            "clock_reanchors": self.stream_clock.reanchors,
            "resets": self.ingest.resets,
            "normaliser_refreshes": {"prepared": self.ingest.normaliser.fast_refreshes,
                                     "exact": self.ingest.normaliser.exact_refreshes,
                                     "inline": self.ingest.normaliser.slow_refreshes,
                                     "inline_reasons": dict(self.ingest.normaliser.inline_reasons)},
            "input_rate_hz": round(self.ingest.samples_received / duration_s, 1) if duration_s > 0 else 0.0,
            **{k: v for k, v in self.external.items()},
            "rss_mb_start": round(self.rss_start_mb, 1),
            "rss_mb_end": round(rss_mb(), 1),
            "rss_mb_peak": round(peak_rss_mb(), 1),
            **({"gate": self.gate.summary()} if self.gate is not None else {}),
        }


def format_summary(summary: dict) -> str:
    """A few readable lines for stderr."""
    lat = summary["latency_us"]
    nd = ", ".join(f"{k} {v}" for k, v in sorted(summary["no_decisions"].items())) or "none"
    def fmt(v):
        return (f"{v / 1e3:.3f} ms" if isinstance(v, float) and math.isfinite(v) else "n/a")
    lines = [
        f"summary: {summary['duration_s']:.1f} s, {summary['mode']} mode",
        f"  decisions {summary['decisions']}; no-decision: {nd}",
        f"  latency p50 {fmt(lat.get('p50'))}  p99 {fmt(lat.get('p99'))}  max {fmt(lat.get('max'))}"
        f"  (budget {summary['budget_ms']:g} ms, misses {summary['budget_misses']})",
        f"  samples {summary['samples_received']} received, {summary['samples_lost']} lost; "
        f"frames lost {summary.get('frames_lost', 0)}, CRC errors {summary.get('crc_errors', 0)}; "
        f"input {summary['input_rate_hz']:.0f} Hz",
        f"  RSS {summary['rss_mb_start']:.0f} MB at start, {summary['rss_mb_end']:.0f} MB at end "
        f"(peak {summary['rss_mb_peak']:.0f} MB)",
    ]
    return "\n".join(lines)
