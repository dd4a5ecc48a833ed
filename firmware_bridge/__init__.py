"""phosphene.firmware_bridge: the serial link from the acquisition firmware to the edge.

protocol   frame encoder and streaming decoder (docs/protocol.md is the specification)
transport  pyserial ports, pseudo-terminal pairs, a reconnecting reader
simulator  the array simulator: virtual-cortex frames at real-time pace, counted faults
c/         the C99 reference encoder for firmware (phosphene_wire.h / .c)
"""

from importlib.metadata import PackageNotFoundError, version

from phosphene.firmware_bridge.protocol import (
    CRC_BYTES,
    HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    SYNC,
    VERSION,
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
    StreamDecoder,
    encode_event_stim,
    encode_frame,
    encode_samples,
    encode_status,
    quantize_uv,
    samples_to_uv,
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
    "SYNC", "VERSION", "HEADER_BYTES", "CRC_BYTES", "MAX_PAYLOAD_BYTES",
    "FrameType", "StatusState", "StatusFlag", "SampleFrame", "EventFrame", "StatusFrame", "Frame",
    "RawFrame", "encode_samples", "encode_event_stim", "encode_status", "encode_frame",
    "quantize_uv", "samples_to_uv", "Packetizer", "SequenceTracker", "StreamDecoder",
    "DecoderStats", "open_port", "PortError", "PtyPair", "SerialReader", "ReaderStats",
    "FrameReader", "DEFAULT_BAUD", "Simulator", "SimulatorConfig", "SimulatorCounts",
    "FaultConfig", "CortexSource", "DatasetSource", "__version__",
]
