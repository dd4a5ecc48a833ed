"""The handler: frames -> contiguous microvolt blocks, counted sample gaps, restarts, format."""

from __future__ import annotations

import numpy as np
from phosphene.firmware_bridge.handler import SampleAssembler, StreamFormat
from phosphene.firmware_bridge.protocol import (
    EventFrame,
    SampleFrame,
    StatusFlag,
    StatusFrame,
    StatusState,
)


def block(k: int, *, n_channels: int = 4, n_samples: int = 16, rate: int = 1000,
          counter: int | None = None) -> SampleFrame:
    data = np.full((n_samples, n_channels), k, np.int16)
    return SampleFrame(k, k * n_samples if counter is None else counter, data, 0.5, rate)


def boot(seq: int = 0) -> StatusFrame:
    return StatusFrame(seq, 0, StatusState.STREAMING, StatusFlag.BOOT, 1000, 4, 16, 0, 1)


def test_gaps_late_blocks_events_restart_and_format():
    frames = [boot(), block(0), block(1), EventFrame(3, 40, 7, 2.5), block(3), block(5),
              block(4),  # late (swapped with 5): dropped, its samples stay a counted gap
              block(6, n_channels=8),  # wrong channel count for this consumer
              block(7), boot(), block(0, counter=0), block(1, counter=16)]
    asm = SampleAssembler(expect_channels=4, expect_rate_hz=1000)
    out = asm.handle(frames)
    s = asm.stats
    assert [b.sample_counter for b in out.blocks] == [0, 16, 48, 80, 112, 0, 16]
    assert out.gaps == [(32, 16), (64, 16), (96, 16)]
    assert (s.samples, s.samples_missing, s.blocks_out_of_order) == (7 * 16, 48, 1)
    assert (s.format_rejected, s.restarts, s.events) == (1, 1, 1) and out.restarted
    assert out.blocks[2].data_uv.dtype == np.float32 and float(out.blocks[2].data_uv[0, 0]) == 1.5
    assert [e.sample_counter for e in out.events] == [40] and len(out.status) == 2


def test_a_lost_boot_frame_still_reads_as_a_restart_and_format_changes_are_reported():
    asm = SampleAssembler()
    asm.handle([block(k) for k in range(100)])
    out = asm.handle([block(0, counter=0)])  # the counter went back 1600 samples: a reboot
    assert out.restarted and asm.stats.restarts == 1 and asm.stats.samples_missing == 0
    out = asm.handle([block(1, counter=16, rate=2000)])
    assert out.format_changed == StreamFormat(4, 2000, 0.5) and asm.stats.format_changes == 1


def test_float16_blocks_in_microvolts_and_a_switch_of_encoding_is_a_format_change():
    asm = SampleAssembler(expect_channels=4)
    out = asm.handle([block(0)])
    halves = np.array([[0.05, -0.0, 65504.0, 2.0**-24]] * 16, np.float16)
    out = asm.handle([SampleFrame(1, 16, halves, 0.5, 1000)])
    assert out.format_changed == StreamFormat(4, 1000, 0.5, "float16")
    assert out.blocks[0].data_uv.dtype == np.float32 and out.gaps == []
    assert out.blocks[0].data_uv[0].tolist() == [float(np.float16(0.05)) * 0.5, -0.0, 32752.0, 2.0**-25]
    assert asm.stats.format_changes == 1 and asm.stats.samples == 32
