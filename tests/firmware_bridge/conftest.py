"""Fixtures of the firmware_bridge tests: the protocol's test vectors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from phosphene.firmware_bridge.protocol import (
    AckStatus,
    StatusFlag,
    StatusState,
    encode_event_stim,
    encode_samples,
    encode_status,
    encode_stim_ack,
    encode_stim_command,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.fixture(scope="session")
def doc_vectors() -> dict[str, bytes]:
    """The test vectors as docs/protocol.md states them (the ```test-vectors block)."""
    block = re.search(r"```test-vectors\n(.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    return {name: bytes.fromhex(hexstr) for name, hexstr in
            (line.split() for line in block.strip().splitlines())}


@pytest.fixture(scope="session")
def python_vectors() -> dict[str, bytes]:
    """The same frames from the Python encoder, built from the fields the doc lists."""
    return {
        "samples": encode_samples(0, 0, np.array([[1, -1], [2, -2], [32767, -32768]], np.int16),
                                  scale_uv=0.25, sample_rate_hz=1000),
        "event_stim": encode_event_stim(1, 170, 42, 2.5),
        "status_boot": encode_status(0, 0, state=StatusState.STREAMING, flags=StatusFlag.BOOT,
                                     sample_rate_hz=1000, n_channels=96, frame_samples=16,
                                     boot_id=0x12345678),
        "samples_wrap": encode_samples(0xFFFFFFFF, 1 << 40, np.array([[-1, 0, 1, 1000]], np.int16),
                                       scale_uv=0.02, sample_rate_hz=30000),
        "samples_f16": encode_samples(7, 160, np.array([[1.0, -2.5], [0.1, -0.0], [65504.0, 2.0**-24]],
                                                       np.float16),
                                      scale_uv=1.0, sample_rate_hz=1000),
        "stim_command": encode_stim_command(3, 5000, 7, 25, 12.345, deadline_samples=20),
        "stim_command_at": encode_stim_command(4, (1 << 33) + 16, 0xFFFFFFFF, 96, 80.0, at_sample=True),
        "stim_ack": encode_stim_ack(9, 5003, 7, 25, 12.345, AckStatus.DELIVERED),
        "stim_ack_expired": encode_stim_ack(10, 6000, 8, 25, 12.345, AckStatus.EXPIRED),
    }
