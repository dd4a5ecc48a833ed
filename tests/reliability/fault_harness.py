"""Drive the real edge runtime through the simulator over real pseudo-terminals.

The runtime opens a stable path (a symlink, like /dev/serial/by-id/...) that points at
the current pty, so a test can make the device disappear and come back as a new pty.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phosphene.edge.bundle import load_bundle
from phosphene.edge.runtime import BundleDecoder, DecisionSinks, Runtime, RuntimeConfig
from phosphene.edge.source import run_live
from phosphene.firmware_bridge.simulator import (
    CortexSource,
    FaultConfig,
    Simulator,
    SimulatorConfig,
)
from phosphene.firmware_bridge.transport import PtyPair, open_port


class RateSource:
    """A source that claims another sample rate (a misconfigured acquisition board)."""

    def __init__(self, source, sample_rate_hz: float):
        self.source, self.sample_rate_hz, self.n_channels = source, sample_rate_hz, source.n_channels

    def read(self, n):
        return self.source.read(n)


class DeadChannels:
    """A source whose `channels` die `after_s` into the stream: 0.2 uV of 0.05 uV noise from
    then on (an electrode broken off, as the issue's 8-dead-channel cortex)."""

    def __init__(self, source, channels, after_s: float, seed: int = 0):
        self.source, self.n_channels = source, source.n_channels
        self.sample_rate_hz = getattr(source, "sample_rate_hz", 1000.0)
        self.channels, self.after = list(channels), int(after_s * self.sample_rate_hz)
        self.rng, self.pos = np.random.default_rng(seed), 0

    def read(self, n):
        data, events = self.source.read(n)
        data = np.array(data, dtype=np.float32, copy=True)
        first = max(self.after - self.pos, 0)
        if first < len(data):
            k = len(data) - first
            data[first:, self.channels] = 0.2 + 0.05 * self.rng.standard_normal((k, len(self.channels)))
        self.pos += len(data)
        return data, events

    def __getattr__(self, name):
        return getattr(self.source, name)


@dataclass
class Segment:
    """One simulated device run: its source, faults, stream seconds, and whether the device
    first disappears (the old pty is closed) and comes back as a new pty."""

    source: object
    seconds: float
    faults: FaultConfig = field(default_factory=FaultConfig)
    new_device: bool = False
    speed: float = 4.0
    track: bool = True  # keep per-frame ground truth (memory grows with the run)


@dataclass
class Result:
    summary: dict
    records: list[dict]
    simulators: list[Simulator]
    wall: list[tuple[float, float]]  # (start, end) unix time of each segment

    def of(self, kind: str, reason: str | None = None) -> list[dict]:
        return [r for r in self.records if r["type"] == kind and (reason is None or r.get("reason") == reason)]

    def expected(self, key: str) -> int:
        return sum(getattr(s.counts, key) for s in self.simulators)


def drive(bundle_path: Path, segments: list[Segment], tmp: Path, *, mode: str = "continuous",
          max_lost_samples: int = 0, stall_ms: float = 100.0, seed: int = 0,
          refuse_unhealthy: bool = False) -> Result:
    bundle = load_bundle(bundle_path)
    config = RuntimeConfig(mode=mode, latency_budget_ms=bundle.latency_budget_ms, stall_ms=stall_ms,
                           max_lost_samples=max_lost_samples, status_interval_s=0,
                           refuse_unhealthy=refuse_unhealthy)
    out = io.StringIO()
    runtime = Runtime(BundleDecoder(bundle, threads=1), spec=bundle.window_spec,
                      normaliser_config=bundle.normaliser_config, n_channels=bundle.n_channels,
                      config=config, sinks=DecisionSinks(stdout=out, json_stdout=True),
                      status_stream=io.StringIO(), health_reference=bundle.manifest.get("input_health"))
    link = tmp / "array"
    pty = PtyPair()
    _point(link, pty.device_path)
    stop = threading.Event()
    live: dict = {}

    def reader():
        live["result"] = run_live(runtime, lambda: open_port(str(link), timeout_s=0.1), stop=stop)

    thread = threading.Thread(target=reader, name="runtime", daemon=True)
    thread.start()
    stop.wait(0.3)  # the runtime opens the port before the device starts talking
    simulators, wall = [], []
    try:
        for i, seg in enumerate(segments):
            if seg.new_device:
                stop.wait(0.3)  # let the runtime read what the old device sent
                pty.close()  # the device disappears ...
                stop.wait(0.5)
                pty = PtyPair()  # ... and comes back under the same name
                before = _opened(pty.device_path)
                _point(link, pty.device_path)
                # like a USB device that waits for the host (DTR), start talking once the
                # runtime has the port open: what is sent before that is lost on open
                deadline = time.monotonic() + 10
                while _opened(pty.device_path) <= before and time.monotonic() < deadline:
                    stop.wait(0.02)
            sim = Simulator(seg.source, SimulatorConfig(speed=seg.speed, seed=seed + i, faults=seg.faults,
                                                        track_samples=seg.track))
            t0 = time.time()
            sim.run(pty, duration_s=seg.seconds)
            wall.append((t0, time.time()))
            assert sim.error is None
            simulators.append(sim)
        stop.wait(0.05 + 0.5 * stall_ms / 1000)  # drain, shorter than the stall bound
    finally:
        stop.set()
        thread.join(timeout=30)
        pty.close()
    assert not thread.is_alive(), "the runtime did not stop"
    assert "result" in live, "the runtime's reader thread died"
    runtime.close()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return Result(live["result"].summary, records, simulators, wall)


def _opened(device: str, pid: int | str = "self") -> int:
    """How many file descriptors of a process have `device` open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == device
    return n


def _point(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def cortex(kind: str = "resting", seed: int = 0, channel_map=None) -> CortexSource:
    from phosphene.geometry import utah_96

    return CortexSource(kind, seed=seed, channel_map=channel_map or utah_96())


def lost_in(window: tuple[int, int], lost: list[tuple[int, int, int]]) -> int:
    """Samples of [start, stop) inside undelivered frames (one boot)."""
    a, b = window
    return sum(max(0, min(b, first + n) - max(a, first)) for _, first, n in lost)
