"""The phosphene wire protocol (docs/protocol.md is the specification): encode and decode.

Map: constants and frame dataclasses -> encoders -> payload parsing (meaning) ->
Packetizer (bytes -> CRC-checked raw frames, resync) -> SequenceTracker (loss, duplicates,
reordering, restarts) -> StreamDecoder (the three together: feed(bytes) -> frames).

Every frame (little-endian):

    0  sync         4 bytes  A5 C3 9E D1
    4  version      u8       1
    5  type         u8       1 SAMPLES (int16), 2 EVENT_STIM, 3 STATUS, 4 SAMPLES_F16 (binary16)
    6  payload_len  u16      bytes of payload
    8  seq          u32      one counter over all frame types; wraps; 0 after (re)boot
    12 sample_ctr   u64      device sample counter (SAMPLES: first sample; EVENT: onset)
    20 header_crc   u32      CRC-32 of bytes 0..19
    24 payload      payload_len bytes
    .. frame_crc    u32      CRC-32 of bytes 0..(23 + payload_len)
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import ClassVar, NamedTuple

import numpy as np

__all__ = [
    "COMMAND_AT_SAMPLE",
    "CRC_BYTES",
    "DEFAULT_SAMPLE_FORMAT",
    "HEADER_BYTES",
    "MAX_FLOAT16",
    "MAX_PAYLOAD_BYTES",
    "SAMPLE_FORMATS",
    "SYNC",
    "VERSION",
    "AckStatus",
    "DecoderStats",
    "EventFrame",
    "Frame",
    "FrameType",
    "Packetizer",
    "PayloadError",
    "RawFrame",
    "SampleFrame",
    "SequenceTracker",
    "StatusFlag",
    "StatusFrame",
    "StatusState",
    "StimAck",
    "StimCommand",
    "StreamDecoder",
    "encode_event_stim",
    "encode_frame",
    "encode_samples",
    "encode_status",
    "encode_stim_ack",
    "encode_stim_command",
    "frame_size",
    "parse_payload",
    "quantize_uv",
    "required_baud",
    "samples_frame_bytes",
    "samples_to_uv",
    "wire_roundtrip_uv",
]

SYNC = bytes((0xA5, 0xC3, 0x9E, 0xD1))  # 4 distinct non-ASCII bytes: no self-overlap, not text
VERSION = 1
HEADER_BYTES = 24
CRC_BYTES = 4
FRAME_OVERHEAD_BYTES = HEADER_BYTES + CRC_BYTES
MAX_PAYLOAD_BYTES = 0xFFFF  # the u16 length field is itself the allocation bound
SEQ_MODULO = 1 << 32
_SEQ_MASK = SEQ_MODULO - 1
_SEQ_HALF = 1 << 31

_HEAD = struct.Struct("<4sBBHIQ")  # bytes 0..19, covered by header_crc
_HEAD_FULL = struct.Struct("<4sBBHIQI")  # bytes 0..23
_U32 = struct.Struct("<I")
_SAMPLES_HEAD = struct.Struct("<HHIf")  # n_channels, n_samples, sample_rate_hz, scale_uv
_EVENT = struct.Struct("<HHI")  # electrode, reserved, current_na
_STATUS = struct.Struct("<BBHIHHII")  # state, reserved, flags, rate, n_ch, frame_samples, dropped, boot_id
_COMMAND = struct.Struct("<IHHII")  # command_id, electrode, flags, current_na, deadline_samples
_ACK = struct.Struct("<IHBBI")  # command_id, electrode, status, reserved, current_na

assert _HEAD.size + 4 == HEADER_BYTES


class FrameType:
    """Values of the header's type byte."""

    SAMPLES = 1  # int16 samples
    EVENT_STIM = 2
    STATUS = 3
    SAMPLES_F16 = 4  # IEEE-754 binary16 samples, same payload layout as SAMPLES
    STIM_COMMAND = 5  # host -> device: stimulate (the only frame a host sends)
    STIM_ACK = 6  # device -> host: what became of a STIM_COMMAND


# Sample encodings on the wire. int16: a fixed LSB (scale_uv uV); the right choice for a
# device whose ADC has one. float16: 11 significant bits at every amplitude (a relative
# step of 2^-11), so quiet channels keep their precision; same 2 bytes per sample.
SAMPLE_FORMATS = ("int16", "float16")
DEFAULT_SAMPLE_FORMAT = "float16"
MAX_FLOAT16 = 65504.0  # the largest finite binary16
_SAMPLE_DTYPES = {"int16": np.dtype(np.int16), "float16": np.dtype(np.float16)}
_FORMAT_OF_TYPE = {1: "int16", 4: "float16"}
_TYPE_OF_FORMAT = {"int16": 1, "float16": 4}


class StatusState:
    """Values of STATUS.state."""

    IDLE = 0
    STREAMING = 1
    STOPPED = 2  # the device's last frame before it stops or restarts (closes the run)
    ERROR = 3


class StatusFlag:
    """Bits of STATUS.flags."""

    BOOT = 0x0001  # first frame after (re)boot: seq and sample counter restart at 0 here
    ADC_OVERRUN = 0x0002
    TX_OVERFLOW = 0x0004  # the device itself dropped frames (see device_dropped_frames)
    STIM_ARMED = 0x0008


class AckStatus:
    """Values of STIM_ACK.status: delivered, or why the device refused the command."""

    DELIVERED = 0
    EXPIRED = 1  # it could not be delivered by its deadline (or its requested sample had passed)
    INVALID = 2  # no such electrode, or a current outside the device's range
    BUSY = 3  # the stimulator is still in the previous stimulation's artifact period
    UNAVAILABLE = 4  # the device cannot stimulate now (not acquiring, stimulator disarmed)

    NAMES: ClassVar[dict[int, str]] = {0: "delivered", 1: "expired", 2: "invalid", 3: "busy",
                                       4: "unavailable"}


COMMAND_AT_SAMPLE = 0x0001  # STIM_COMMAND.flags: deliver at the header's sample_counter, not now


# --- frames (what the handler side sees) ---------------------------------------------------
@dataclass(frozen=True, eq=False)
class SampleFrame:
    """A block of samples. data: (n_samples, C) int16 (SAMPLES) or float16 (SAMPLES_F16);
    value_uv = data * scale_uv. `sample_format` follows from data's dtype."""

    seq: int
    sample_counter: int  # device counter of data[0]
    data: np.ndarray
    scale_uv: float
    sample_rate_hz: int

    def __post_init__(self) -> None:
        _sample_format(self.data)  # int16 or float16, nothing else

    @property
    def sample_format(self) -> str:
        """'int16' or 'float16': the encoding this frame has (or gets) on the wire."""
        return _sample_format(self.data)

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])

    def to_uv(self) -> np.ndarray:
        """(n_samples, C) float32 microvolts."""
        return samples_to_uv(self.data, self.scale_uv)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleFrame):
            return NotImplemented
        return (self.seq == other.seq and self.sample_counter == other.sample_counter
                and self.scale_uv == other.scale_uv and self.sample_rate_hz == other.sample_rate_hz
                and self.sample_format == other.sample_format
                and self.data.shape == other.data.shape
                and bool(np.array_equal(_sample_bits(self.data), _sample_bits(other.data))))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class EventFrame:
    """A stimulation onset; sample_counter is the onset sample on the device counter."""

    seq: int
    sample_counter: int
    electrode: int  # electrode id on the channel map
    current_ua: float  # carried on the wire as integer nA


@dataclass(frozen=True)
class StatusFrame:
    """Device state; sent at boot (flags & BOOT), periodically, and before stopping."""

    seq: int
    sample_counter: int
    state: int  # StatusState
    flags: int  # StatusFlag bits
    sample_rate_hz: int
    n_channels: int
    frame_samples: int  # samples per SAMPLES frame the device sends
    device_dropped_frames: int = 0  # frames the device could not send (its own overflow)
    boot_id: int = 0  # differs between consecutive boots

    @property
    def boot(self) -> bool:
        return bool(self.flags & StatusFlag.BOOT)


@dataclass(frozen=True)
class StimCommand:
    """Host -> device: stimulate `electrode` at `current_ua`.

    `at_sample` False ("now"): the device delivers at its current sample; sample_counter is
    the newest device sample the host had seen when it decided (the decision's basis), and
    the device refuses (EXPIRED) if it would deliver more than `deadline_samples` after it.
    `at_sample` True: deliver at sample_counter exactly (EXPIRED if that sample has passed).
    deadline_samples 0: no deadline. `seq` is the host's own counter (one per command sent).
    """

    seq: int
    sample_counter: int
    command_id: int  # chosen by the host; the acknowledgement echoes it
    electrode: int
    current_ua: float  # carried on the wire as integer nA
    at_sample: bool = False
    deadline_samples: int = 0


@dataclass(frozen=True)
class StimAck:
    """Device -> host: what became of command `command_id`. sample_counter is the onset
    sample when delivered, else the device's sample when it refused."""

    seq: int
    sample_counter: int
    command_id: int
    electrode: int
    current_ua: float
    status: int  # AckStatus

    @property
    def delivered(self) -> bool:
        return self.status == AckStatus.DELIVERED

    @property
    def status_name(self) -> str:
        return AckStatus.NAMES.get(self.status, f"status_{self.status}")


Frame = SampleFrame | EventFrame | StatusFrame | StimCommand | StimAck


def _sample_format(data: np.ndarray) -> str:
    dtype = np.asarray(data).dtype  # either byte order
    if dtype.kind == "i" and dtype.itemsize == 2:
        return "int16"
    if dtype.kind == "f" and dtype.itemsize == 2:
        return "float16"
    raise ValueError(f"samples must be int16 or float16, got {dtype}; convert microvolts with "
                     "quantize_uv(x_uv, scale_uv, sample_format=...)")


def _sample_bits(data: np.ndarray) -> np.ndarray:
    """The samples as their 16-bit patterns (so -0.0 and 0.0 differ, as on the wire)."""
    data = np.asarray(data)
    return data.astype(data.dtype.newbyteorder("="), copy=False).view(np.uint16)


# --- encoding ------------------------------------------------------------------------------
def _frame(frame_type: int, seq: int, sample_counter: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the protocol's {MAX_PAYLOAD_BYTES}; "
                         "send fewer samples per frame")
    if not 0 <= sample_counter < (1 << 64):
        raise ValueError(f"sample_counter must fit in u64, got {sample_counter}")
    head = _HEAD.pack(SYNC, VERSION, frame_type, len(payload), seq & _SEQ_MASK, sample_counter)
    body = head + _U32.pack(zlib.crc32(head)) + payload
    return body + _U32.pack(zlib.crc32(body))


def samples_frame_bytes(n_channels: int, n_samples: int) -> int:
    """Size on the wire of one SAMPLES (or SAMPLES_F16) frame."""
    return FRAME_OVERHEAD_BYTES + _SAMPLES_HEAD.size + 2 * n_channels * n_samples


def required_baud(n_channels: int, sample_rate_hz: float, frame_samples: int, *,
                  bits_per_byte: int = 10) -> int:
    """Line rate (baud) that the SAMPLES frames of a stream need, overhead included.

    Bytes per second of frames times bits_per_byte (10 for an 8N1 UART), rounded up;
    STATUS and EVENT_STIM frames (tens of bytes a second) are not included.
    96 channels at 1000 Hz in 16-sample frames: 1,945,000.
    """
    if n_channels < 1 or frame_samples < 1 or not sample_rate_hz > 0 or bits_per_byte < 1:
        raise ValueError("n_channels, sample_rate_hz, frame_samples and bits_per_byte must be > 0")
    frame_bits = samples_frame_bytes(n_channels, frame_samples) * bits_per_byte
    return int(-(-(frame_bits * sample_rate_hz) // frame_samples))  # ceil, exact for ints


def frame_size(payload_len: int) -> int:
    return FRAME_OVERHEAD_BYTES + payload_len


def encode_samples(seq: int, sample_counter: int, data: np.ndarray, *, scale_uv: float,
                   sample_rate_hz: int) -> bytes:
    """A SAMPLES frame from (n_samples, C) int16 data, or a SAMPLES_F16 frame from float16
    data (quantize_uv makes either from microvolts). float16 data must be finite."""
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype.itemsize != 2 or data.dtype.kind not in "if":
        raise ValueError(f"data must be (n_samples, C) int16 or float16, got {data.dtype} "
                         f"{data.shape}; convert microvolts with quantize_uv(x_uv, scale_uv, "
                         "sample_format=...)")
    fmt = _sample_format(data)
    if fmt == "float16" and not np.isfinite(data).all():
        raise ValueError("float16 samples must be finite (NaN/Inf frames are rejected by the "
                         "decoder); quantize_uv saturates them")
    n_samples, n_channels = data.shape
    if not (0 < n_channels <= 0xFFFF and 0 < n_samples <= 0xFFFF):
        raise ValueError(f"n_samples and n_channels must be 1..65535, got {data.shape}")
    if not (scale_uv > 0 and np.isfinite(scale_uv)):
        raise ValueError(f"scale_uv must be a positive finite uV per LSB, got {scale_uv}")
    wire_dtype = "<i2" if fmt == "int16" else "<f2"
    payload = (_SAMPLES_HEAD.pack(n_channels, n_samples, int(sample_rate_hz), scale_uv)
               + data.astype(wire_dtype, copy=False).tobytes())
    return _frame(_TYPE_OF_FORMAT[fmt], seq, sample_counter, payload)


def encode_event_stim(seq: int, sample_counter: int, electrode: int, current_ua: float) -> bytes:
    """An EVENT_STIM frame; the current travels as integer nanoamps (rounded)."""
    current_na = _current_na(current_ua)
    return _frame(FrameType.EVENT_STIM, seq, sample_counter, _EVENT.pack(_electrode_id(electrode), 0,
                                                                         current_na))


def _current_na(current_ua: float) -> int:
    current_na = round(current_ua * 1000.0)
    if not 0 <= current_na <= 0xFFFFFFFF:
        raise ValueError(f"current_ua must be 0..4294967 uA, got {current_ua}")
    return current_na


def _electrode_id(electrode: int) -> int:
    if not 0 <= electrode <= 0xFFFF:
        raise ValueError(f"electrode id must be 0..65535, got {electrode}")
    return int(electrode)


def encode_stim_command(seq: int, sample_counter: int, command_id: int, electrode: int,
                        current_ua: float, *, at_sample: bool = False,
                        deadline_samples: int = 0) -> bytes:
    """A STIM_COMMAND frame (host -> device); see StimCommand for the fields' meaning."""
    if not 0 <= command_id <= 0xFFFFFFFF:
        raise ValueError(f"command_id must fit in u32, got {command_id}")
    if not 0 <= deadline_samples <= 0xFFFFFFFF:
        raise ValueError(f"deadline_samples must be 0..4294967295 (0: none), got {deadline_samples}")
    payload = _COMMAND.pack(command_id, _electrode_id(electrode),
                            COMMAND_AT_SAMPLE if at_sample else 0, _current_na(current_ua),
                            deadline_samples)
    return _frame(FrameType.STIM_COMMAND, seq, sample_counter, payload)


def encode_stim_ack(seq: int, sample_counter: int, command_id: int, electrode: int,
                    current_ua: float, status: int) -> bytes:
    """A STIM_ACK frame (device -> host): sample_counter is the delivered onset sample."""
    if not 0 <= command_id <= 0xFFFFFFFF:
        raise ValueError(f"command_id must fit in u32, got {command_id}")
    if not 0 <= status <= 0xFF:
        raise ValueError(f"status must be 0..255, got {status}")
    payload = _ACK.pack(command_id, _electrode_id(electrode), status, 0, _current_na(current_ua))
    return _frame(FrameType.STIM_ACK, seq, sample_counter, payload)


def encode_status(seq: int, sample_counter: int, *, state: int, flags: int, sample_rate_hz: int,
                  n_channels: int, frame_samples: int, device_dropped_frames: int = 0,
                  boot_id: int = 0) -> bytes:
    payload = _STATUS.pack(state, 0, flags, sample_rate_hz, n_channels, frame_samples,
                           device_dropped_frames & 0xFFFFFFFF, boot_id & 0xFFFFFFFF)
    return _frame(FrameType.STATUS, seq, sample_counter, payload)


def encode_frame(frame: Frame) -> bytes:
    """Bytes of any frame dataclass (the inverse of StreamDecoder for intact frames)."""
    if isinstance(frame, SampleFrame):
        return encode_samples(frame.seq, frame.sample_counter, frame.data, scale_uv=frame.scale_uv,
                              sample_rate_hz=frame.sample_rate_hz)
    if isinstance(frame, EventFrame):
        return encode_event_stim(frame.seq, frame.sample_counter, frame.electrode, frame.current_ua)
    if isinstance(frame, StatusFrame):
        return encode_status(frame.seq, frame.sample_counter, state=frame.state, flags=frame.flags,
                             sample_rate_hz=frame.sample_rate_hz, n_channels=frame.n_channels,
                             frame_samples=frame.frame_samples,
                             device_dropped_frames=frame.device_dropped_frames, boot_id=frame.boot_id)
    if isinstance(frame, StimCommand):
        return encode_stim_command(frame.seq, frame.sample_counter, frame.command_id, frame.electrode,
                                   frame.current_ua, at_sample=frame.at_sample,
                                   deadline_samples=frame.deadline_samples)
    if isinstance(frame, StimAck):
        return encode_stim_ack(frame.seq, frame.sample_counter, frame.command_id, frame.electrode,
                               frame.current_ua, frame.status)
    raise TypeError(f"not a frame: {type(frame).__name__}")


_CHUNK = 1 << 20  # elements converted at once: bounds the float64 temporaries


def quantize_uv(x_uv: np.ndarray, scale_uv: float, *,
                sample_format: str = "int16") -> tuple[np.ndarray, int]:
    """Microvolts -> (samples as sent, number of samples clipped); any shape.

    int16 (the default here, for compatibility): round(x / scale_uv) to nearest, saturated
    to -32768..32767. float16: x / scale_uv rounded to nearest binary16 (ties to even),
    values beyond +-65504 saturated to +-65504. Either way NaN becomes 0, and NaN, +-Inf
    and every saturated value count as clipped.
    """
    if sample_format not in _SAMPLE_DTYPES:
        raise ValueError(f"sample_format must be one of {SAMPLE_FORMATS}, got {sample_format!r}")
    if not (scale_uv > 0 and math.isfinite(scale_uv)):
        raise ValueError(f"scale_uv must be a positive finite uV per LSB, got {scale_uv}")
    x = np.asarray(x_uv)
    out = np.empty(x.shape, _SAMPLE_DTYPES[sample_format])
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    convert = _to_int16 if sample_format == "int16" else _to_float16
    n_clipped = 0
    for i in range(0, flat_in.size, _CHUNK):
        n_clipped += convert(flat_in[i:i + _CHUNK], float(scale_uv), flat_out[i:i + _CHUNK])
    return out, n_clipped


def _to_int16(x: np.ndarray, scale_uv: float, out: np.ndarray) -> int:
    q = np.rint(x.astype(np.float64) / scale_uv)
    bad = ~np.isfinite(q)
    over = (q > 32767) | (q < -32768) | bad
    n_clipped = int(np.count_nonzero(over))
    if n_clipped:
        q = np.where(bad, 0.0, np.clip(q, -32768, 32767))
    out[:] = q
    return n_clipped


def _to_float16(x: np.ndarray, scale_uv: float, out: np.ndarray) -> int:
    # float32 / float64 to binary16 is one correctly rounded (ties-to-even) cast in numpy;
    # float32 input at scale 1 is cast directly (the same result as through float64).
    v = x if scale_uv == 1.0 and x.dtype in (np.float32, np.float64) else x.astype(np.float64) / scale_uv
    n_clipped = 0
    if v.size and not (v.min() >= -MAX_FLOAT16 and v.max() <= MAX_FLOAT16):  # NaN fails too
        n_clipped = int(v.size - np.count_nonzero(np.abs(v) <= MAX_FLOAT16))
        v = np.where(np.isnan(v), 0.0, np.clip(v, -MAX_FLOAT16, MAX_FLOAT16))
    out[:] = v
    return n_clipped


def samples_to_uv(data: np.ndarray, scale_uv: float) -> np.ndarray:
    """int16 or float16 samples -> float32 microvolts (data * scale_uv)."""
    out = np.asarray(data).astype(np.float32)  # a new array: scaled in place
    if scale_uv != 1.0:
        out *= np.float32(scale_uv)
    return out


def wire_roundtrip_uv(x_uv: np.ndarray, sample_format: str = DEFAULT_SAMPLE_FORMAT,
                      scale_uv: float = 1.0) -> tuple[np.ndarray, int]:
    """What a receiver sees of x_uv: (float32 microvolts, number of samples clipped).

    The values after encoding (quantize_uv) and decoding (samples_to_uv) in the given wire
    format, exactly as through encode_samples and StreamDecoder. Any shape; numpy only.
    """
    data, n_clipped = quantize_uv(x_uv, scale_uv, sample_format=sample_format)
    return samples_to_uv(data, scale_uv), n_clipped


# --- payload parsing: meaning ----------------------------------------------------------------
class PayloadError(ValueError):
    """An intact frame (CRC passed) whose payload contradicts its own header."""


def parse_payload(raw: RawFrame) -> Frame | None:
    """RawFrame -> frame dataclass; None for a type this version does not know.

    Raises PayloadError when a payload's declared sizes disagree with its length.
    """
    payload = raw.payload
    if raw.frame_type in _FORMAT_OF_TYPE:
        name = "SAMPLES" if raw.frame_type == FrameType.SAMPLES else "SAMPLES_F16"
        if len(payload) < _SAMPLES_HEAD.size:
            raise PayloadError(f"{name} payload of {len(payload)} bytes is shorter than its header")
        n_channels, n_samples, rate_hz, scale_uv = _SAMPLES_HEAD.unpack_from(payload)
        expected = _SAMPLES_HEAD.size + 2 * n_channels * n_samples
        if len(payload) != expected or n_channels == 0 or not (scale_uv > 0):
            raise PayloadError(f"{name} says {n_channels} ch x {n_samples} samples "
                               f"({expected} bytes) in a {len(payload)}-byte payload")
        if raw.frame_type == FrameType.SAMPLES:
            data = np.frombuffer(payload, dtype="<i2", offset=_SAMPLES_HEAD.size)
            data = data.reshape(n_samples, n_channels).astype(np.int16, copy=True)
        else:
            bits = np.frombuffer(payload, dtype="<u2", offset=_SAMPLES_HEAD.size)
            if ((bits & 0x7C00) == 0x7C00).any():  # exponent all ones: Inf or NaN
                raise PayloadError("SAMPLES_F16 holds a NaN or infinite sample")
            data = bits.astype(np.uint16, copy=True).view(np.float16).reshape(n_samples, n_channels)
        return SampleFrame(raw.seq, raw.sample_counter, data, float(scale_uv), int(rate_hz))
    if raw.frame_type == FrameType.EVENT_STIM:
        if len(payload) != _EVENT.size:
            raise PayloadError(f"EVENT_STIM payload must be {_EVENT.size} bytes, got {len(payload)}")
        electrode, _reserved, current_na = _EVENT.unpack(payload)
        return EventFrame(raw.seq, raw.sample_counter, int(electrode), current_na / 1000.0)
    if raw.frame_type == FrameType.STATUS:
        if len(payload) < _STATUS.size:  # later versions may append fields
            raise PayloadError(f"STATUS payload must be >= {_STATUS.size} bytes, got {len(payload)}")
        state, _r, flags, rate, n_ch, fs, dropped, boot_id = _STATUS.unpack_from(payload)
        return StatusFrame(raw.seq, raw.sample_counter, state, flags, rate, n_ch, fs, dropped, boot_id)
    if raw.frame_type == FrameType.STIM_COMMAND:
        if len(payload) != _COMMAND.size:
            raise PayloadError(f"STIM_COMMAND payload must be {_COMMAND.size} bytes, got {len(payload)}")
        command_id, electrode, flags, current_na, deadline = _COMMAND.unpack(payload)
        if flags & ~COMMAND_AT_SAMPLE:  # an unknown flag may change the meaning: never guess
            raise PayloadError(f"STIM_COMMAND has unknown flags 0x{flags:04x}")
        return StimCommand(raw.seq, raw.sample_counter, command_id, electrode, current_na / 1000.0,
                           bool(flags & COMMAND_AT_SAMPLE), deadline)
    if raw.frame_type == FrameType.STIM_ACK:
        if len(payload) != _ACK.size:
            raise PayloadError(f"STIM_ACK payload must be {_ACK.size} bytes, got {len(payload)}")
        command_id, electrode, status, _r, current_na = _ACK.unpack(payload)
        return StimAck(raw.seq, raw.sample_counter, command_id, electrode, current_na / 1000.0, status)
    return None


# --- framing: bytes -> CRC-checked raw frames ---------------------------------------------------
class RawFrame(NamedTuple):
    """A frame whose header and CRC checked out; payload not yet interpreted."""

    version: int
    frame_type: int
    seq: int
    sample_counter: int
    payload: bytes
    crc: int  # the frame CRC (identifies identical retransmissions)


class Packetizer:
    """Bytes in any pieces -> RawFrames. Never raises on garbage; resynchronises on SYNC.

    A candidate frame is a SYNC whose 20-byte header passes header_crc (so a corrupt length
    can neither stall the search nor make it buffer a bogus 64 KiB), then whose whole-frame
    CRC passes. On any failure it skips one byte and searches for the next SYNC, so a
    corruption costs only the frames it touches. Memory is bounded by one maximal frame.
    """

    def __init__(self, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES):
        if not 0 < max_payload_bytes <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must be 1..{MAX_PAYLOAD_BYTES}, got {max_payload_bytes}")
        self.max_payload_bytes = max_payload_bytes
        self._buf = bytearray()
        self._need = 0  # bytes the buffer must hold before scanning again can find a frame
        self.bytes_received = 0
        self.frames_ok = 0
        self.bytes_discarded = 0
        self.header_errors = 0  # SYNC found but header_crc failed
        self.crc_errors = 0  # header fine, frame CRC failed
        self.oversize = 0  # valid header announcing more than max_payload_bytes

    @property
    def bytes_buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        self.bytes_received += len(data)
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:  # still inside a frame whose header checked out
                return []
            buf: bytes | bytearray = self._buf
        else:
            # Nothing pending (the usual case): scan the caller's bytes in place, no copy.
            buf = data if isinstance(data, bytes) else bytes(data)
        out: list[RawFrame] = []
        pos = self._scan(buf, out)
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < len(buf):
            self._buf += memoryview(buf)[pos:]
        self.frames_ok += len(out)
        return out

    def _scan(self, buf: bytes | bytearray, out: list[RawFrame]) -> int:
        """Append the intact frames in buf to out; return how many leading bytes are done."""
        n = len(buf)
        pos = 0
        discarded = 0
        self._need = 0
        crc32 = zlib.crc32
        unpack_u32 = _U32.unpack_from
        mv = memoryview(buf)
        try:
            while True:
                i = buf.find(SYNC, pos)
                if i < 0:
                    keep = max(pos, n - (len(SYNC) - 1))  # a SYNC may be split across feeds
                    discarded += keep - pos
                    pos = keep
                    break
                discarded += i - pos
                pos = i
                if n - pos < HEADER_BYTES:
                    break
                _, version, ftype, length, seq, counter, header_crc = _HEAD_FULL.unpack_from(buf, pos)
                if crc32(mv[pos:pos + 20]) != header_crc:
                    self.header_errors += 1
                    discarded += 1
                    pos += 1
                    continue
                if length > self.max_payload_bytes:
                    self.oversize += 1
                    discarded += 1
                    pos += 1
                    continue
                end = pos + HEADER_BYTES + length + CRC_BYTES
                if end > n:
                    self._need = end - pos  # wait for the rest of this frame
                    break
                frame_crc = unpack_u32(buf, end - CRC_BYTES)[0]
                if crc32(mv[pos:end - CRC_BYTES]) != frame_crc:
                    self.crc_errors += 1
                    discarded += 1
                    pos += 1
                    continue
                out.append(RawFrame(version, ftype, seq, counter,
                                    bytes(mv[pos + HEADER_BYTES:end - CRC_BYTES]), frame_crc))
                pos = end
        finally:
            mv.release()
        self.bytes_discarded += discarded
        return pos

    def flush(self) -> int:
        """Drop buffered bytes (e.g. after a reconnect); they count as discarded."""
        self._need = 0
        n = len(self._buf)
        self.bytes_discarded += n
        self._buf.clear()
        return n


# --- sequence accounting -------------------------------------------------------------------------
class SequenceTracker:
    """Running balance of frames lost, duplicated and reordered, from 32-bit sequence numbers.

    A frame ahead of the expected number opens a gap (frames_lost += gap) and remembers the
    missing numbers; one of them arriving later is `reordered` and is taken off the loss.
    A frame behind that was already received with the same CRC is a `duplicate`. Anything
    else behind, or a STATUS with the BOOT flag, is a device restart: the new run started at
    seq 0, so the frames before the one seen are lost. Memory: `window` numbers each.
    """

    def __init__(self, *, window: int = 4096):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.expected: int | None = None
        self._missing: OrderedDict[int, None] = OrderedDict()
        self._recent: OrderedDict[int, int] = OrderedDict()  # seq -> frame crc
        self.frames_lost = 0
        self.duplicates = 0
        self.reordered = 0
        self.restarts = 0

    def observe(self, seq: int, crc: int, *, boot: bool = False) -> str:
        """Account one intact frame: returns 'ok', 'late', 'duplicate' or 'restart'."""
        if self.expected is None:
            self._start(seq, crc)
            if boot:
                self.frames_lost += seq
            return "ok"
        if self._recent.get(seq) == crc:
            self.duplicates += 1
            return "duplicate"
        if boot:
            self._restart(seq, crc)
            return "restart"
        delta = (seq - self.expected) & _SEQ_MASK
        if delta == 0:
            self._remember(seq, crc)
            self.expected = (seq + 1) & _SEQ_MASK
            return "ok"
        if delta < _SEQ_HALF:
            self.frames_lost += delta
            for missing in range(max(0, delta - self.window), delta):
                self._missing[(self.expected + missing) & _SEQ_MASK] = None
            while len(self._missing) > self.window:
                self._missing.popitem(last=False)
            self._remember(seq, crc)
            self.expected = (seq + 1) & _SEQ_MASK
            return "ok"
        if seq in self._missing:
            del self._missing[seq]
            self.frames_lost -= 1
            self.reordered += 1
            self._remember(seq, crc)
            return "late"
        self._restart(seq, crc)
        return "restart"

    def _start(self, seq: int, crc: int) -> None:
        self._missing.clear()
        self._recent.clear()
        self._remember(seq, crc)
        self.expected = (seq + 1) & _SEQ_MASK

    def _restart(self, seq: int, crc: int) -> None:
        self.restarts += 1
        self.frames_lost += seq  # a run starts at 0: frames 0..seq-1 of it never arrived
        self._start(seq, crc)

    def _remember(self, seq: int, crc: int) -> None:
        self._recent[seq] = crc
        if len(self._recent) > self.window:
            self._recent.popitem(last=False)


# --- the decoder: framing + meaning + accounting ---------------------------------------------
@dataclass
class DecoderStats:
    """Running totals since the decoder was made (never reset per interval)."""

    bytes_received: int = 0
    bytes_discarded: int = 0  # bytes that were not part of any intact frame
    frames_ok: int = 0  # frames whose CRC passed (including duplicates)
    frames_delivered: int = 0  # frames returned by feed()
    header_errors: int = 0
    crc_errors: int = 0
    oversize: int = 0
    frames_lost: int = 0  # frames lost (running balance; late arrivals are taken off)
    duplicates: int = 0
    reordered: int = 0  # frames that arrived after a later one (delivered unless deliver_late=False)
    seq_restarts: int = 0
    unknown_frames: int = 0  # intact frames of an unknown version or type (skipped)
    payload_errors: int = 0  # intact frames whose payload contradicts itself (skipped)
    sample_frames: int = 0
    event_frames: int = 0
    status_frames: int = 0
    command_frames: int = 0  # STIM_COMMAND (a device's decoder sees these)
    ack_frames: int = 0  # STIM_ACK

    def to_dict(self) -> dict:
        return asdict(self)


class StreamDecoder:
    """feed(bytes) -> list of frames, in arrival order, with running counters in `.stats`.

    Takes bytes in any pieces (one at a time or megabytes), never raises on garbage, and
    resynchronises at the next intact frame. Duplicates are counted and dropped; late
    (reordered) frames are counted and delivered unless deliver_late=False.
    """

    def __init__(self, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES, deliver_late: bool = True,
                 window: int = 4096):
        self.packetizer = Packetizer(max_payload_bytes=max_payload_bytes)
        self.sequence = SequenceTracker(window=window)
        self.deliver_late = deliver_late
        self._counts = {"frames_delivered": 0, "unknown_frames": 0, "payload_errors": 0,
                        "sample_frames": 0, "event_frames": 0, "status_frames": 0,
                        "command_frames": 0, "ack_frames": 0}

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        out: list[Frame] = []
        counts = self._counts
        for raw in self.packetizer.feed(data):
            if raw.version != VERSION:
                counts["unknown_frames"] += 1
                continue
            try:
                frame = parse_payload(raw)
            except PayloadError:
                counts["payload_errors"] += 1
                self.sequence.observe(raw.seq, raw.crc)  # it used a sequence number
                continue
            boot = isinstance(frame, StatusFrame) and frame.boot
            verdict = self.sequence.observe(raw.seq, raw.crc, boot=boot)
            if frame is None:
                counts["unknown_frames"] += 1
                continue
            if verdict == "duplicate" or (verdict == "late" and not self.deliver_late):
                continue
            if isinstance(frame, SampleFrame):
                counts["sample_frames"] += 1
            elif isinstance(frame, EventFrame):
                counts["event_frames"] += 1
            elif isinstance(frame, StatusFrame):
                counts["status_frames"] += 1
            elif isinstance(frame, StimAck):
                counts["ack_frames"] += 1
            else:
                counts["command_frames"] += 1
            out.append(frame)
        counts["frames_delivered"] += len(out)
        return out

    @property
    def stats(self) -> DecoderStats:
        p, s = self.packetizer, self.sequence
        return DecoderStats(bytes_received=p.bytes_received, bytes_discarded=p.bytes_discarded,
                            frames_ok=p.frames_ok, header_errors=p.header_errors,
                            crc_errors=p.crc_errors, oversize=p.oversize, frames_lost=s.frames_lost,
                            duplicates=s.duplicates, reordered=s.reordered,
                            seq_restarts=s.restarts, **self._counts)
