"""phosphene.firmware_bridge: the serial link from the acquisition firmware to the edge.

protocol   frame encoder and streaming decoder (docs/protocol.md is the specification),
           both directions: samples and events up, stimulation commands down
capture    raw wire captures (atomic) and their replay at the recorded pace
handler    decoded frames -> contiguous microvolt blocks, sample gaps, events, restarts
transport  pyserial ports, pseudo-terminal pairs, a reconnecting reader
simulator  the array simulator: virtual-cortex frames at real-time pace, counted faults
c/         the C99 reference encoder for firmware (phosphene_wire.h / .c)
"""

from importlib.metadata import PackageNotFoundError, version

from phosphene.firmware_bridge.capture import (
    CaptureWriter,
    ReplayCounts,
    Replayer,
    describe_capture,
    replay_frames,
)
from phosphene.firmware_bridge.protocol import (
    COMMAND_AT_SAMPLE,
    CRC_BYTES,
    DEFAULT_SAMPLE_FORMAT,
    HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    SAMPLE_FORMATS,
    SYNC,
    VERSION,
    AckStatus,
    DecoderStats,
    EventFrame,
    Frame,
    FrameType,
    Packetizer,
    RawFrame,
    SampleFrame,
    SequenceTracker,
    StatusFlag,
    StatusFrame,
    StatusState,
    StimAck,
    StimCommand,
    StreamDecoder,
    encode_event_stim,
    encode_frame,
    encode_samples,
    encode_status,
    encode_stim_ack,
    encode_stim_command,
    quantize_uv,
    required_baud,
    samples_to_uv,
    wire_roundtrip_uv,
)
from phosphene.firmware_bridge.simulator import (
    CortexSource,
    DatasetSource,
    FaultConfig,
    Simulator,
    SimulatorConfig,
    SimulatorCounts,
)
from phosphene.firmware_bridge.transport import (
    DEFAULT_BAUD,
    FrameReader,
    PortError,
    PtyPair,
    ReaderStats,
    SerialReader,
    open_port,
)

try:
    __version__ = version("phosphene")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "COMMAND_AT_SAMPLE",
    "CRC_BYTES",
    "DEFAULT_BAUD",
    "DEFAULT_SAMPLE_FORMAT",
    "HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "SAMPLE_FORMATS",
    "SYNC",
    "VERSION",
    "AckStatus",
    "CaptureWriter",
    "CortexSource",
    "DatasetSource",
    "DecoderStats",
    "EventFrame",
    "FaultConfig",
    "Frame",
    "FrameReader",
    "FrameType",
    "Packetizer",
    "PortError",
    "PtyPair",
    "RawFrame",
    "ReaderStats",
    "ReplayCounts",
    "Replayer",
    "SampleFrame",
    "SequenceTracker",
    "SerialReader",
    "Simulator",
    "SimulatorConfig",
    "SimulatorCounts",
    "StatusFlag",
    "StatusFrame",
    "StatusState",
    "StimAck",
    "StimCommand",
    "StreamDecoder",
    "__version__",
    "describe_capture",
    "encode_event_stim",
    "encode_frame",
    "encode_samples",
    "encode_status",
    "encode_stim_ack",
    "encode_stim_command",
    "open_port",
    "quantize_uv",
    "replay_frames",
    "required_baud",
    "samples_to_uv",
    "wire_roundtrip_uv",
]
