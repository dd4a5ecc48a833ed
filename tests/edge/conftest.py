"""Edge fixtures: a tiny real bundle, its decoder, and a recorded simulator byte stream."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helper modules beside the tests
from streams import record_stream
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


@pytest.fixture(scope="session")
def psychometric_bytes(edge_bundle):
    """6 s of psychometric stream as wire bytes (fault-free), recorded once."""
    return record_stream(edge_bundle.channel_map, seconds=6.0)[0]
