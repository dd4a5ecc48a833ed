"""Monitor fixtures: the edge tests' tiny bundle, and a live run (simulator -> pty ->
runtime -> monitor server on loopback) whose simulated array can kill a channel on cue."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from tiny_bundle import make_tiny_bundle  # tests/edge, on pythonpath


@pytest.fixture(scope="session")
def monitor_bundle_path(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("monitor") / "bundle")


class KillableSource:
    """A simulator source whose channel `channel` dies (its signal x0.01, the electrode's
    noise floor gone) from the first read after `kill` is set."""

    def __init__(self, source, channel: int):
        self.source, self.channel = source, channel
        self.n_channels, self.sample_rate_hz = source.n_channels, source.sample_rate_hz
        self.kill = threading.Event()

    def describe(self) -> dict:
        return {**self.source.describe(), "killed_channel": self.channel}

    def read(self, n_samples: int):
        x, events = self.source.read(n_samples)
        if self.kill.is_set():
            x = x.copy()
            x[:, self.channel] *= 0.01
        return x, events


@contextmanager
def live_monitor(bundle_path, out_path, *, kill_channel: int, drop_frames_p: float = 0.0,
                 mode: str = "triggered", interval_s: float = 0.5):
    """Yields (server, source, runtime) while a simulated run streams at real time."""
    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.monitor import MonitorServer, attach_monitor
    from phosphene.edge.runtime import BundleDecoder, DecisionSinks, Runtime, RuntimeConfig
    from phosphene.edge.source import SimulatedArray, run_live
    from phosphene.firmware_bridge.simulator import FaultConfig

    bundle = load_bundle(bundle_path)
    sinks = DecisionSinks(out_path=out_path)
    runtime = Runtime(BundleDecoder(bundle), spec=bundle.window_spec, normaliser_config=bundle.normaliser_config,
                      n_channels=bundle.n_channels, sinks=sinks,
                      config=RuntimeConfig(mode=mode, latency_budget_ms=bundle.latency_budget_ms, status_interval_s=0),
                      health_reference=bundle.manifest.get("input_health"))
    feed = attach_monitor(runtime, bundle.channel_map, interval_s=interval_s)
    array = SimulatedArray(bundle.channel_map, kind="psychometric", seed=0,  # the cortex the reference was taken on
                           frame_samples=bundle.window_spec.patch_samples,
                           faults=FaultConfig(drop_frames_p=drop_frames_p))
    source = array.simulator.source = KillableSource(array.source, kill_channel)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            run_live(runtime, array.device_path, stop=stop)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    server = MonitorServer(feed, "127.0.0.1", 0).start()
    thread = threading.Thread(target=loop, name="live-run", daemon=True)
    thread.start()
    array.start()
    try:
        yield server, source, runtime
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
        array.close()
        runtime.close()
        sinks.close()
    assert not errors, f"the live run failed: {errors[0]!r}"


@pytest.fixture
def live_run():
    """live_monitor, for tests (conftest modules are not importable by name)."""
    return live_monitor
