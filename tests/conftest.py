"""Shared fixtures: small data the tests make themselves (no downloads)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny virtual-cortex dataset: 3 short resting sessions, 60 + 60 trials, 96 channels."""
    from phosphene.cortex import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=0)
