"""Recorded simulator streams for the edge tests (the wire bytes a real array would send)."""

from __future__ import annotations

import io


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


def stream_through(normaliser, x, chunks, prepare=True):
    """Feed x through `normaliser` in chunks of the given sizes; with `prepare`, the edge
    normaliser's refresh is prepared (and its sort finished, so the test is deterministic)
    after each chunk. Returns the concatenated output."""
    import numpy as np

    out, pos = [], 0
    for n in chunks:
        out.append(normaliser.process(x[pos:pos + n]))
        if prepare:
            normaliser.prepare()
            normaliser._prepared and normaliser._prepared.future.result()
        pos += n
    return np.concatenate(out)
