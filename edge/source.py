"""Serial input for the runtime: wire frames -> runtime items, and the live loop.

Map: FrameAdapter (bytes -> firmware_bridge StreamDecoder -> SampleBlock / StimOnset /
StreamRestart, timestamped at the read) -> run_live (SerialReader thread feeds the runtime;
the main thread polls for stalls, status, the watchdog, the duration and a stop request).

The reader thread runs the whole decision path inside its data callback: the bytes are
timestamped the moment `read()` returns, and decoded, normalised and decided on without a
queue hand-off, so the measured latency is the real one from the last byte read.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from phosphene.edge.runtime import Runtime, SampleBlock, StimOnset, StreamRestart
from phosphene.firmware_bridge.capture import CaptureWriter
from phosphene.firmware_bridge.protocol import (
    EventFrame,
    SampleFrame,
    StatusFrame,
    StimAck,
    StreamDecoder,
)
from phosphene.firmware_bridge.transport import DEFAULT_BAUD, SerialReader, open_port

__all__ = ["FrameAdapter", "LiveResult", "SimulatedArray", "SimulatedArrayProcess", "open_port", "run_live"]

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
                 clock_ns: Callable[[], int] = time.perf_counter_ns, realtime_priority: int | None = None,
                 capture: CaptureWriter | None = None):
        self.runtime = runtime
        self.capture = capture
        self.realtime_priority = realtime_priority
        self.realtime_error: str | None = None
        self.decoder = decoder or StreamDecoder()
        self.clock_ns = clock_ns
        self.lock = threading.Lock()
        self._restarts_seen = 0
        self._last_sample_end: int | None = None
        self.batches = 0

    def on_connect(self, n_connects: int) -> None:
        """A (re)connected port: bytes buffered from before belong to no frame.

        Runs in the reader thread, so this is where that thread (the one that decides)
        takes its real-time priority when asked to.
        """
        if self.realtime_priority and n_connects == 1:
            self.realtime_error = set_realtime_priority(self.realtime_priority)
            if self.realtime_error:
                log.warning("real-time priority refused (%s); deciding at normal priority",
                            self.realtime_error)
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
            if self.capture is not None:
                self.capture.write(data)  # after the decisions: never on their path

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
            elif isinstance(frame, StimAck):  # the answer to a gated run's command
                items.append(frame)
            elif isinstance(frame, StatusFrame) and frame.boot:
                items.append(StreamRestart(frame.seq, frame.sample_counter))
                unexplained -= 1
                self._last_sample_end = None
        return items

    def counters(self) -> dict[str, int]:
        """The wire counters the status line and summary show."""
        s = self.decoder.stats
        return {"frames_lost": int(s.frames_lost), "crc_errors": int(s.crc_errors + s.header_errors),
                "bytes_discarded": int(s.bytes_discarded), "duplicates": int(s.duplicates),
                "reordered": int(s.reordered), "seq_restarts": int(s.seq_restarts),
                "payload_errors": int(s.payload_errors), "frames_ok": int(s.frames_ok)}


def set_realtime_priority(priority: int) -> str | None:
    """SCHED_FIFO at `priority` for the calling thread (Linux); returns why not, or None.

    A bedside board runs nothing more important than the decoder; on a shared machine it
    keeps other processes from delaying a decision. Needs root or CAP_SYS_NICE (systemd:
    CPUSchedulingPolicy=fifo does the same for the whole service).
    """
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
        return None
    except AttributeError:
        return "not supported on this system"
    except (OSError, ValueError) as exc:
        return str(exc)


def _current_scheduling():
    import os

    try:
        return os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):
        return None


def _restore_scheduling(saved) -> None:
    import os

    if saved is None:
        return
    # lowering one's own priority is always allowed; nothing else to do if it fails
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, saved[0], saved[1])


@dataclass
class LiveResult:
    """How a live run ended."""

    summary: dict
    stopped_by: str  # "duration", "signal" or "stop"
    reader: dict


def run_live(runtime: Runtime, port: str | Callable, *, stop: threading.Event,
             duration_s: float | None = None, baudrate: int = DEFAULT_BAUD,
             poll_s: float = 0.01, watchdog=None, on_tick: Callable[[], None] | None = None,
             stop_reason: Callable[[], str] | None = None,
             realtime_priority: int | None = None, port_name: str | None = None,
             capture: CaptureWriter | None = None) -> LiveResult:
    """Read `port` until `stop` is set or `duration_s` passes; return the runtime's summary.

    port: a device path, a pyserial URL, or a callable returning an open pyserial port
    (SerialReader reopens it with backoff if it disappears). watchdog: an object with
    ready(), ping() and stopping() (phosphene.edge.deploy.watchdog.Watchdog), optional.
    realtime_priority: SCHED_FIFO priority for the reading/deciding thread (None: normal).
    port_name: how log lines name the device (default: the path, when `port` is one).
    capture: every byte read is appended to it, after the decisions it fed: the raw wire
    bytes `phosphene simulate stream --replay` re-sends.
    """
    import gc

    adapter = FrameAdapter(runtime, realtime_priority=realtime_priority, capture=capture)
    # everything loaded so far (interpreter, numpy, bundle) lives for the whole run: keep it
    # out of the cyclic collector, so a full collection never pauses a decision for long
    gc.collect()
    gc.freeze()
    reader = SerialReader(port, adapter.on_data, baudrate=baudrate, on_connect=adapter.on_connect,
                          name=port_name)
    t_start = time.monotonic()
    stopped_by = "stop"
    restore_main = None
    if realtime_priority:
        # this thread polls while holding the GIL now and then: preempted by an ordinary
        # process at that moment, it would stall the deciding thread behind the GIL
        restore_main = _current_scheduling()
        set_realtime_priority(max(1, realtime_priority - 1))
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
        gc.unfreeze()
        if restore_main is not None:
            _restore_scheduling(restore_main)
    with adapter.lock:
        runtime.set_external_counters(adapter.counters())
        summary = runtime.summary()
    summary["reconnects"] = reader.stats.reconnects
    summary["disconnects"] = reader.stats.disconnects
    summary["realtime"] = bool(realtime_priority) and adapter.realtime_error is None
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
        from phosphene.firmware_bridge.simulator import (
            CortexSource,
            FaultConfig,
            Simulator,
            SimulatorConfig,
        )
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


class SimulatedArrayProcess:
    """SimulatedArray in a child process: the same pty stream, without sharing this GIL.

    The benchmark uses it so the simulator's Python work never delays the runtime's
    thread (as a real array, a separate device, never would). Same interface as
    SimulatedArray: device_path, start(duration_s), close().
    """

    def __init__(self, channel_map, *, kind: str = "psychometric", speed: float = 1.0, seed: int = 0,
                 frame_samples: int = 16, realtime_priority: int | None = None):
        import json
        import subprocess
        import sys
        import tempfile

        self._map_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
        json.dump(channel_map.to_json(), self._map_file)
        self._map_file.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phosphene.edge.source", self._map_file.name, kind, str(speed),
             str(seed), str(frame_samples), str(realtime_priority or 0)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("/"):
            self.close()
            raise OSError(f"the simulator process did not start (said {line!r})")
        self.device_path = line

    def start(self, duration_s: float | None = None) -> None:
        self.proc.stdin.write(f"{duration_s or 0}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        import os

        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the child stops its simulator when stdin closes
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self._map_file.name)

    def __enter__(self) -> SimulatedArrayProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _child_main(argv: list[str]) -> None:
    """python -m phosphene.edge.source MAP.json KIND SPEED SEED FRAME_SAMPLES PRIORITY (0: normal)."""
    import sys

    from phosphene.geometry import ChannelMap

    map_path, kind, speed, seed, frame_samples, priority = argv
    if int(priority):  # a device is not starved by the host's other work: neither is its stand-in
        refused = set_realtime_priority(int(priority))
        if refused:
            log.warning("simulator: real-time priority refused (%s)", refused)
    array = SimulatedArray(ChannelMap.load(map_path), kind=kind, speed=float(speed), seed=int(seed),
                           frame_samples=int(frame_samples))
    print(array.device_path, flush=True)
    go = sys.stdin.readline()
    if go.strip():
        duration = float(go)
        array.start(duration if duration > 0 else None)
        sys.stdin.readline()  # EOF (the parent closed stdin) ends the stream
    array.close()


if __name__ == "__main__":
    import sys

    _child_main(sys.argv[1:])
