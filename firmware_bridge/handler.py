"""The handler side of the link: decoded frames -> contiguous microvolt samples and events.

The decoder (protocol.StreamDecoder) answers "which frames arrived intact"; this answers
"which samples do I have, which are missing, and did the stream's format change". It
checks every SAMPLES frame against the format the consumer expects (channel count, sample
rate) and follows the device sample counter, so lost frames become counted sample gaps
and a device restart becomes an explicit event, never silently spliced data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from phosphene.firmware_bridge.protocol import EventFrame, Frame, SampleFrame, StatusFrame

__all__ = ["HandlerOutput", "HandlerStats", "SampleAssembler", "SampleBlock", "StreamFormat"]


@dataclass(frozen=True)
class StreamFormat:
    n_channels: int
    sample_rate_hz: int
    scale_uv: float
    sample_format: str = "int16"  # "int16" (SAMPLES) or "float16" (SAMPLES_F16)


@dataclass(frozen=True, eq=False)
class SampleBlock:
    """Samples in microvolts. data_uv: (n_samples, C) float32, from sample_counter on."""

    sample_counter: int
    data_uv: np.ndarray


@dataclass
class HandlerStats:
    samples: int = 0  # samples (per channel) delivered
    samples_missing: int = 0  # forward jumps of the sample counter (lost SAMPLES frames)
    blocks_out_of_order: int = 0  # SAMPLES frames behind the counter (late): dropped
    format_changes: int = 0
    format_rejected: int = 0  # SAMPLES frames whose format differs from the expected one
    restarts: int = 0  # BOOT status after data, or the counter jumping backwards a lot
    events: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HandlerOutput:
    """What one batch of frames meant."""

    blocks: list[SampleBlock] = field(default_factory=list)
    events: list[EventFrame] = field(default_factory=list)
    status: list[StatusFrame] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (first missing sample, count)
    restarted: bool = False  # the device restarted: discard history before the next block
    format_changed: StreamFormat | None = None


class SampleAssembler:
    """handle(frames) -> HandlerOutput; running totals in `.stats`.

    expect_channels / expect_rate_hz: frames in any other format are rejected (counted),
    because a model trained on C channels at R Hz must not be fed anything else.
    """

    def __init__(self, *, expect_channels: int | None = None, expect_rate_hz: int | None = None,
                 max_late_frames: int = 8):
        self.expect_channels = expect_channels
        self.expect_rate_hz = expect_rate_hz
        # a reordered frame lands a few frames back; a larger backward jump is a restart
        self.max_late_frames = max_late_frames
        self.format: StreamFormat | None = None
        self.next_counter: int | None = None
        self.stats = HandlerStats()

    def handle(self, frames: list[Frame]) -> HandlerOutput:
        out = HandlerOutput()
        for frame in frames:
            if isinstance(frame, SampleFrame):
                self._samples(frame, out)
            elif isinstance(frame, EventFrame):
                self.stats.events += 1
                out.events.append(frame)
            elif isinstance(frame, StatusFrame):
                out.status.append(frame)
                if frame.boot and self.next_counter is not None:
                    self._restart(out)
        return out

    def _samples(self, frame: SampleFrame, out: HandlerOutput) -> None:
        fmt = StreamFormat(frame.n_channels, frame.sample_rate_hz, frame.scale_uv,
                           frame.sample_format)
        if ((self.expect_channels is not None and fmt.n_channels != self.expect_channels)
                or (self.expect_rate_hz is not None and fmt.sample_rate_hz != self.expect_rate_hz)):
            self.stats.format_rejected += 1
            return
        if fmt != self.format:
            if self.format is not None:
                self.stats.format_changes += 1
                out.format_changed = fmt
            self.format = fmt
        if self.next_counter is not None:
            delta = frame.sample_counter - self.next_counter
            if delta < -self.max_late_frames * frame.n_samples:
                self._restart(out)
            elif delta < 0:
                self.stats.blocks_out_of_order += 1
                return
            elif delta > 0:
                self.stats.samples_missing += delta
                out.gaps.append((self.next_counter, delta))
        out.blocks.append(SampleBlock(frame.sample_counter, frame.to_uv()))
        self.stats.samples += frame.n_samples
        self.next_counter = frame.sample_counter + frame.n_samples

    def _restart(self, out: HandlerOutput) -> None:
        self.stats.restarts += 1
        out.restarted = True
        self.next_counter = None
