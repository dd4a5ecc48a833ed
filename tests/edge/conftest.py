"""Edge fixtures: a tiny real bundle, a recorded simulator byte stream, and a runtime factory."""

from __future__ import annotations

import io

import pytest
from tiny_bundle import make_tiny_bundle


@pytest.fixture(scope="session")
def edge_bundle_path(tmp_path_factory):
    """A full-int8 bundle: 96 channels, 128-sample window from +170 ms, fast-warming normaliser."""
    return make_tiny_bundle(tmp_path_factory.mktemp("edge") / "bundle")


@pytest.fixture(scope="session")
def edge_bundle(edge_bundle_path):
    from phosphene.edge.bundle import load_bundle

    return load_bundle(edge_bundle_path)


@pytest.fixture(scope="session")
def edge_decoder(edge_bundle):
    from phosphene.edge.runtime import BundleDecoder

    return BundleDecoder(edge_bundle, threads=1)


def record_stream(channel_map, *, seconds: float, kind: str = "psychometric", seed: int = 0,
                  faults=None) -> tuple[bytes, object]:
    """Bytes the simulator writes for `seconds` of stream (unpaced), and its counts."""
    from phosphene.firmware_bridge.simulator import (
        CortexSource,
        FaultConfig,
        Simulator,
        SimulatorConfig,
    )

    sink = io.BytesIO()
    sim = Simulator(CortexSource(kind, seed=seed, channel_map=channel_map),
                    SimulatorConfig(speed=0, seed=seed, faults=faults or FaultConfig()))
    counts = sim.run(sink, duration_s=seconds)
    return sink.getvalue(), counts


@pytest.fixture(scope="session")
def psychometric_bytes(edge_bundle):
    """6 s of psychometric stream as wire bytes (fault-free), recorded once."""
    return record_stream(edge_bundle.channel_map, seconds=6.0)[0]
