"""Serial input for the runtime: wire frames -> runtime items, and the live loop.

Map: FrameAdapter (bytes -> firmware_bridge StreamDecoder -> SampleBlock / StimOnset /
StreamRestart, timestamped at the read) -> run_live (SerialReader thread feeds the runtime;
the main thread polls for stalls, status, the watchdog, the duration and a stop request).

The reader thread runs the whole decision path inside its data callback: the bytes are
timestamped the moment `read()` returns, and decoded, normalised and decided on without a
queue hand-off, so the measured latency is the real one from the last byte read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from phosphene.edge.runtime import Runtime, SampleBlock, StimOnset, StreamRestart
from phosphene.firmware_bridge.protocol import EventFrame, SampleFrame, StatusFrame, StreamDecoder
from phosphene.firmware_bridge.transport import DEFAULT_BAUD, SerialReader, open_port

__all__ = ["FrameAdapter", "LiveResult", "run_live", "SimulatedArray", "open_port"]

log = logging.getLogger(__name__)

_SEQ_MASK = (1 << 32) - 1


class FrameAdapter:
    """Decodes bytes with firmware_bridge's StreamDecoder and hands the frames to a Runtime.

    on_data(bytes) is the SerialReader callback. It holds `lock` while the runtime works, so
    the main thread's poll() never interleaves with a decision. A device restart (a STATUS
    frame with the BOOT flag, or a sequence restart the decoder detected) becomes a
    StreamRestart item before the first samples of the new run.
    """

    def __init__(self, runtime: Runtime, *, decoder: StreamDecoder | None = None,
                 clock_ns: Callable[[], int] = time.perf_counter_ns):
        self.runtime = runtime
        self.decoder = decoder or StreamDecoder()
        self.clock_ns = clock_ns
        self.lock = threading.Lock()
        self._restarts_seen = 0
        self._last_sample_end: int | None = None
        self.batches = 0

    def on_connect(self, n_connects: int) -> None:
        """A (re)connected port: bytes buffered from before belong to no frame."""
        with self.lock:
            self.decoder.packetizer.flush()

    def on_data(self, data: bytes) -> None:
        t_read_ns = self.clock_ns()
        with self.lock:
            frames = self.decoder.feed(data)
            items = self._convert(frames)
            t_parsed_ns = self.clock_ns()
            self.batches += 1
            if items:
                self.runtime.process_batch(t_read_ns, items, t_parsed_ns)

    def _convert(self, frames: list) -> list:
        restarts = self.decoder.sequence.restarts
        unexplained = restarts - self._restarts_seen  # restarts without a BOOT status in this batch
        self._restarts_seen = restarts
        items: list = []
        for frame in frames:
            if isinstance(frame, SampleFrame):
                if (unexplained > 0 and self._last_sample_end is not None
                        and frame.sample_counter < self._last_sample_end):
                    items.append(StreamRestart(frame.seq, frame.sample_counter))
                    unexplained -= 1
                items.append(SampleBlock(frame.seq, frame.sample_counter, frame.to_uv(),
                                         float(frame.sample_rate_hz)))
                self._last_sample_end = frame.sample_counter + frame.n_samples
            elif isinstance(frame, EventFrame):
                items.append(StimOnset(frame.seq, frame.sample_counter, frame.electrode,
                                       frame.current_ua))
            elif isinstance(frame, StatusFrame) and frame.boot:
                items.append(StreamRestart(frame.seq, frame.sample_counter))
                unexplained -= 1
                self._last_sample_end = None
        return items

    def counters(self) -> dict[str, int]:
        """The wire counters the status line and summary show."""
        s = self.decoder.stats
        return {"frames_lost": int(s.seq_gaps), "crc_errors": int(s.crc_errors + s.header_errors),
                "bytes_discarded": int(s.bytes_discarded), "duplicates": int(s.duplicates),
                "reordered": int(s.reordered), "seq_restarts": int(s.seq_restarts),
                "payload_errors": int(s.payload_errors), "frames_ok": int(s.frames_ok)}


@dataclass
class LiveResult:
    """How a live run ended."""

    summary: dict
    stopped_by: str  # "duration", "signal" or "stop"
    reader: dict


def run_live(runtime: Runtime, port: str | Callable, *, stop: threading.Event,
             duration_s: float | None = None, baudrate: int = DEFAULT_BAUD,
             poll_s: float = 0.01, watchdog=None, on_tick: Callable[[], None] | None = None,
             stop_reason: Callable[[], str] | None = None) -> LiveResult:
    """Read `port` until `stop` is set or `duration_s` passes; return the runtime's summary.

    port: a device path, a pyserial URL, or a callable returning an open pyserial port
    (SerialReader reopens it with backoff if it disappears). watchdog: an object with
    ready(), ping() and stopping() (phosphene.edge.deploy.watchdog.Watchdog), optional.
    """
    adapter = FrameAdapter(runtime)
    reader = SerialReader(port, adapter.on_data, baudrate=baudrate, on_connect=adapter.on_connect)
    t_start = time.monotonic()
    stopped_by = "stop"
    reader.start()
    if watchdog is not None:
        watchdog.ready()
    try:
        while True:
            if stop.wait(poll_s):
                stopped_by = stop_reason() if stop_reason else "stop"
                break
            with adapter.lock:
                runtime.set_external_counters(adapter.counters())
                runtime.poll()
            if reader.error is not None:
                raise RuntimeError(f"frame handler failed: {reader.error!r}") from reader.error
            if on_tick is not None:
                on_tick()
            if watchdog is not None and reader.running:
                watchdog.ping()
            if duration_s is not None and time.monotonic() - t_start >= duration_s:
                stopped_by = "duration"
                break
    finally:
        if watchdog is not None:
            watchdog.stopping()
        reader.stop()
    with adapter.lock:
        runtime.set_external_counters(adapter.counters())
        summary = runtime.summary()
    summary["reconnects"] = reader.stats.reconnects
    summary["disconnects"] = reader.stats.disconnects
    return LiveResult(summary=summary, stopped_by=stopped_by, reader=reader.stats.to_dict())



class SimulatedArray:
    """The firmware_bridge Simulator streaming into a pseudo-terminal, in this process.

    `device_path` is opened like a real port. Start the simulator (start()) only once the
    reader is ready to read, so the run does not begin with a backlog.

        with SimulatedArray(bundle.channel_map, kind="psychometric") as array:
            ... open array.device_path ...; array.start()
    """

    def __init__(self, channel_map, *, kind: str = "psychometric", speed: float = 1.0, seed: int = 0,
                 frame_samples: int = 16, faults=None):
        from phosphene.firmware_bridge.simulator import (CortexSource, FaultConfig, Simulator,
                                                         SimulatorConfig)
        from phosphene.firmware_bridge.transport import PtyPair

        self.source = CortexSource(kind, seed=seed, channel_map=channel_map)
        self.simulator = Simulator(self.source, SimulatorConfig(
            frame_samples=frame_samples, speed=speed, seed=seed, faults=faults or FaultConfig()))
        self.pty = PtyPair()
        self.device_path = self.pty.device_path

    def start(self, duration_s: float | None = None) -> None:
        self.simulator.start(self.pty, duration_s=duration_s)

    def close(self) -> None:
        self.simulator.stop()
        self.simulator.wait(timeout_s=5.0)
        self.pty.close()

    def __enter__(self) -> SimulatedArray:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
