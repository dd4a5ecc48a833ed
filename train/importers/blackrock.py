"""Blackrock NSx (+ NEV) -> dataset, through Neo's BlackrockRawIO and the signal definition.

The NSx header is checked here first (file id, header sizes, every data block inside the
file), so a malformed or truncated file gives one sentence instead of a Neo traceback.
Samples are then read block by block with `get_analogsignal_chunk`, scaled to uV with
the file's own gains, and converted to 1 kHz MUA by phosphene.train.importers.mua.MuaExtractor.
"""

from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path

import numpy as np

from phosphene.train.importers.common import (
    DEFAULT_BLANK_MS,
    DEFAULT_CHUNK_S,
    ImportReport,
    Log,
    RecordedEvent,
    RecordingError,
    SessionSpec,
    assign_events,
    collecting,
    decode_digital_word,
    parse_stim_comment,
    read_trials_csv,
    resolve_channel_map,
    safe_session_id,
    split_session,
    window_from_options,
    write_import,
)

__all__ = ["NEV_EVENT_SOURCES", "check_nev_file", "check_nsx_file", "import_blackrock"]

logger = logging.getLogger(__name__)

NSX_BASIC_BYTES = 314  # NEURALCD basic header (spec 2.2-3.0)
NSX_EXT_BYTES = 66  # one extended header per channel
NSX21_BASIC_BYTES = 32  # NEURALSG (spec 2.1): id, label, period, channel count
NEV_BASIC_BYTES = 336
NEV_EVENT_SOURCES = ("auto", "comments", "digital", "none")
_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "microvolts": 1.0, "mv": 1e3, "v": 1e6, "volts": 1e6}


def check_nsx_file(path: Path) -> dict:
    """Validate an NSx file's headers and data-block layout; return {spec, rate_hz, channels}.

    Raises RecordingError naming the problem (not Blackrock, truncated header, a data
    block that runs past the end of the file, ...).
    """
    if not path.is_file():
        raise RecordingError(f"Blackrock file not found: {path}")
    if path.suffix not in tuple(f".ns{i}" for i in range(1, 7)):
        raise RecordingError(f"{path}: expected a Blackrock continuous file ending in .ns1 .. .ns6 "
                             "(lower case, as Central writes it)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(NSX_BASIC_BYTES)
    if len(head) < 10:
        raise RecordingError(f"{path} is too short ({size} bytes) to be an NSx file")
    file_id = head[:8]
    if file_id == b"NEURALSG":
        if size < NSX21_BASIC_BYTES:
            raise RecordingError(f"{path}: NSx 2.1 header is truncated ({size} bytes)")
        period, channels = struct.unpack_from("<II", head, 24)
        header_bytes = NSX21_BASIC_BYTES + 4 * channels
        _check_counts(path, period, channels)
        data = size - header_bytes
        if data < 0 or data % (2 * channels):
            raise RecordingError(f"{path}: NSx 2.1 data is truncated or the header is wrong "
                                 f"({data} data bytes for {channels} int16 channels)")
        return {"spec": "2.1", "rate_hz": 30_000.0 / period, "channels": channels}
    if file_id not in (b"NEURALCD", b"BRSMPGRP"):
        raise RecordingError(f"{path} is not a Blackrock NSx file (file id {file_id!r}, expected "
                             "NEURALCD, BRSMPGRP or NEURALSG)")
    if len(head) < NSX_BASIC_BYTES:
        raise RecordingError(f"{path}: NSx basic header is truncated ({size} of "
                             f"{NSX_BASIC_BYTES} bytes)")
    major, minor, header_bytes = struct.unpack_from("<BBI", head, 8)
    spec = f"{major}.{minor}"
    if spec not in ("2.2", "2.3", "3.0"):
        raise RecordingError(f"{path}: NSx file spec {spec} is not one Neo reads (2.1-3.0)")
    period, ts_resolution = struct.unpack_from("<II", head, 286)
    (channels,) = struct.unpack_from("<I", head, 310)
    _check_counts(path, period, channels)
    if header_bytes != NSX_BASIC_BYTES + NSX_EXT_BYTES * channels:
        raise RecordingError(f"{path}: malformed NSx header: it declares {header_bytes} header "
                             f"bytes but {channels} channels need "
                             f"{NSX_BASIC_BYTES + NSX_EXT_BYTES * channels}")
    if header_bytes > size:
        raise RecordingError(f"{path}: NSx extended headers are truncated (file has {size} bytes, "
                             f"headers need {header_bytes})")
    rate = 30_000.0 / period
    ptp = ts_resolution == 1_000_000_000
    if ptp:  # one packet per sample: reserved byte, uint64 time, uint32 count, samples
        packet = 1 + 8 + 4 + 2 * channels
        if (size - header_bytes) % packet:
            raise RecordingError(f"{path}: NSx 3.0 (PTP) data is truncated: "
                                 f"{size - header_bytes} bytes is not a whole number of "
                                 f"{packet}-byte samples")
        if size == header_bytes:
            raise RecordingError(f"{path} has headers but no samples")
        return {"spec": spec, "rate_hz": rate, "channels": channels}
    block_head = 1 + (8 if major >= 3 else 4) + 4
    offset, n_blocks = header_bytes, 0
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            raw = f.read(block_head)
            if len(raw) < block_head:
                raise RecordingError(f"{path} is truncated: data block {n_blocks + 1} header at byte "
                                     f"{offset} is cut off after {len(raw)} bytes")
            if raw[0] != 1:
                raise RecordingError(f"{path}: malformed NSx data: expected a data-block header "
                                     f"(byte 1) at byte {offset}, found {raw[0]}")
            (n_points,) = struct.unpack_from("<I", raw, block_head - 4)
            need = n_points * channels * 2
            left = size - offset - block_head
            if need > left:
                raise RecordingError(
                    f"{path} is truncated: data block {n_blocks + 1} at byte {offset} declares "
                    f"{n_points} samples x {channels} channels ({need} bytes) but only {left} "
                    "bytes remain")
            offset += block_head + need
            n_blocks += 1
    if n_blocks == 0:
        raise RecordingError(f"{path} has headers but no data blocks (an empty recording)")
    return {"spec": spec, "rate_hz": rate, "channels": channels}


def _check_counts(path: Path, period: int, channels: int) -> None:
    if period <= 0 or channels <= 0 or channels > 65535:
        raise RecordingError(f"{path}: malformed NSx header (sampling period {period} ticks, "
                             f"{channels} channels)")


def check_nev_file(path: Path) -> str:
    """Validate a NEV file's basic header; return its spec ('2.3', '3.0', ...)."""
    if not path.is_file():
        raise RecordingError(f"NEV file not found: {path}")
    if path.suffix != ".nev":
        raise RecordingError(f"{path}: expected a Blackrock event file ending in .nev")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(NEV_BASIC_BYTES)
    if len(head) < NEV_BASIC_BYTES:
        raise RecordingError(f"{path}: NEV header is truncated ({size} of {NEV_BASIC_BYTES} bytes)")
    if head[:8] not in (b"NEURALEV", b"BREVENTS"):
        raise RecordingError(f"{path} is not a Blackrock NEV file (file id {head[:8]!r})")
    major, minor, flags, header_bytes, packet_bytes = struct.unpack_from("<BBHII", head, 8)
    (n_ext,) = struct.unpack_from("<I", head, 332)
    if header_bytes != NEV_BASIC_BYTES + 32 * n_ext or header_bytes > size:
        raise RecordingError(f"{path}: malformed or truncated NEV header ({header_bytes} header "
                             f"bytes declared, {n_ext} extended headers, file {size} bytes)")
    if packet_bytes < 12:
        raise RecordingError(f"{path}: malformed NEV header (data packets of {packet_bytes} bytes)")
    if not flags & 1:
        # Neo 0.14 reads the waveform sizes only through this flag and fails without it
        raise RecordingError(f"{path}: its header does not set 'all spike waveforms are 16-bit' "
                             "(flag bit 0), which Neo cannot read; import without it "
                             "(--nev-events none) and give the trials with --trials CSV")
    return f"{major}.{minor}"


def _neo_events(rawio, seg: int, source: str, log: Log) -> list[RecordedEvent]:
    """Stimulations in one segment from NEV comments, else digital words (see docs/dataset.md)."""
    names = [str(n) for n in rawio.header["event_channels"]["name"]]
    found: dict[str, list[RecordedEvent]] = {"comments": [], "digital": []}
    if source in ("auto", "comments") and "comments" in names:
        i = names.index("comments")
        ts, _, labels = rawio.get_event_timestamps(block_index=0, seg_index=seg, event_channel_index=i)
        times = rawio.rescale_event_timestamp(ts, dtype="float64", event_channel_index=i)
        skipped = 0
        for t, text in zip(times, labels):
            stim = parse_stim_comment(str(text))
            if stim is None:
                skipped += 1
                continue
            found["comments"].append(RecordedEvent(float(t), **stim))
        if skipped:
            log(f"note: {skipped} NEV comment(s) are not stimulations (no electrode= and "
                "current_ua=) and were ignored")
    wants_digital = source == "digital" or (source == "auto" and not found["comments"])
    if wants_digital and "digital_input_port" in names:
        i = names.index("digital_input_port")
        ts, _, labels = rawio.get_event_timestamps(block_index=0, seg_index=seg,
                                                   event_channel_index=i)
        times = rawio.rescale_event_timestamp(ts, dtype="float64", event_channel_index=i)
        for t, word in zip(times, labels):
            decoded = decode_digital_word(int(word))
            if decoded is not None:
                found["digital"].append(RecordedEvent(float(t), decoded[0], decoded[1], -1))
        if found["digital"]:
            log(f"note: {len(found['digital'])} stimulations read from NEV digital words "
                "(low byte electrode, high byte current in uA); their perception is unknown "
                "(-1): give --trials for labels")
    return found["comments"] or found["digital"]


def import_blackrock(nsx: str | Path, *, out: str | Path, nev: str | Path | None = None,
                     map_path: str | Path | None = None, trials_csv: str | Path | None = None,
                     kind: str | None = None, session: str | None = None, day: int = 0,
                     nev_events: str = "auto", blank_ms: float = DEFAULT_BLANK_MS,
                     append: bool = False, overwrite: bool = False, chunk_s: float = DEFAULT_CHUNK_S,
                     label_column: str | None = None, window_offset_ms: float | None = None,
                     window_ms: float | None = None, split_at: float | None = None,
                     log: Log = logger.info) -> ImportReport:
    """Import one Blackrock recording (an .ns3-.ns6 broadband file, optional .nev) into `out`.

    Each recording segment (a pause in the file starts a new one) becomes a session
    `<session>` (or `<session>-seg<k>` when there are several). Electrode ids are the
    file's channel ids; analog inputs (labels 'ainp*') are left out. split_at (one-segment
    files): seconds on the NSP clock where a resting part `<session>-rest` ends.
    """
    notes, log = collecting(log)
    window = window_from_options(window_offset_ms, window_ms)
    if label_column is not None and trials_csv is None:
        raise RecordingError("--label-column names a column of the --trials table; give --trials")
    try:
        import neo
        from neo.rawio import BlackrockRawIO
    except ImportError:  # pragma: no cover - the io extra installs neo
        raise RecordingError("Blackrock import needs Neo: pip install 'phosphene[io]'") from None
    nsx = Path(nsx)
    if nev_events not in NEV_EVENT_SOURCES:
        raise RecordingError(f"nev_events must be one of {', '.join(NEV_EVENT_SOURCES)}")
    info = check_nsx_file(nsx)
    if nev is not None and nev_events == "none":
        log(f"note: --nev-events none: {nev} is not read")
        nev = None
    if nev is None and nsx.with_suffix(".nev").is_file() and nev_events != "none":
        nev = nsx.with_suffix(".nev")
        log(f"note: using the events in {nev} (pass --nev-events none to ignore them)")
    nev = Path(nev) if nev is not None else None
    if nev is not None:
        nev_spec = check_nev_file(nev)
        if nev_spec != info["spec"]:
            raise RecordingError(f"{nev} is NEV spec {nev_spec} but {nsx} is NSx spec "
                                 f"{info['spec']}; they must come from the same recording")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rawio = BlackrockRawIO(filename=str(nsx.with_suffix("")), nsx_override=str(nsx.with_suffix("")),
                                   nev_override=str(nev.with_suffix("")) if nev else None,
                                   nsx_to_load=int(nsx.suffix[-1]), load_nev=nev is not None)
            rawio.parse_header()
        except (ValueError, OSError, KeyError, IndexError, TypeError, struct.error) as exc:
            raise RecordingError(f"Neo {neo.__version__} could not read {nsx}"
                                 f"{' with ' + str(nev) if nev else ''}: {exc}") from None
        except Exception as exc:
            raise RecordingError(f"Neo {neo.__version__} could not read {nsx}: {exc}") from None
    neo_warnings = [f"Neo: {w.message}" for w in caught]
    stream_id = str(int(nsx.suffix[-1]))
    streams = [str(s) for s in rawio.header["signal_streams"]["id"]]
    if stream_id not in streams:
        raise RecordingError(f"{nsx} has no continuous channels")
    si = streams.index(stream_id)
    chans = rawio.header["signal_channels"]
    chans = chans[chans["stream_id"] == stream_id]
    keep = [i for i, c in enumerate(chans) if not str(c["name"]).lower().startswith("ainp")]
    if not keep:
        raise RecordingError(f"{nsx} holds only analog-input channels (ainp*), no electrodes")
    if len(keep) < len(chans):
        log(f"note: left out {len(chans) - len(keep)} analog-input channel(s) (ainp*)")
    factors = []
    for i in keep:
        unit = str(chans["units"][i]).strip().lower()
        if unit not in _UNIT_TO_UV:
            raise RecordingError(f"{nsx}: channel {chans['name'][i]} is in {unit!r}, not a voltage "
                                 "unit (uV, mV, V); without a scale it cannot become MUA")
        factors.append(_UNIT_TO_UV[unit])
    factors = np.asarray(factors)
    file_ids = [int(c) for c in chans["id"][keep]]
    chan_idx = np.asarray(keep)
    if map_path is None and nev is not None:
        try:
            mapfile = [m.decode(errors="replace") for m in rawio._nev_ext_header[b"MAPFILE"]["mapFile"]]
        except (AttributeError, KeyError):
            mapfile = []
        if mapfile:
            log(f"note: the .nev names the map file {mapfile[0]!r}; pass it with --map")
    cmap = resolve_channel_map(file_ids, map_path=map_path, log=log)

    base = safe_session_id(session if session else nsx.stem)
    n_seg = rawio.segment_count(0)
    rate = float(rawio.get_signal_sampling_rate(si))
    specs: list[SessionSpec] = []
    for seg in range(n_seg):
        n = int(rawio.get_signal_size(block_index=0, seg_index=seg, stream_index=si))
        t0 = float(rawio.get_signal_t_start(block_index=0, seg_index=seg, stream_index=si))

        def read(a: int, b: int, seg=seg) -> np.ndarray:
            raw = rawio.get_analogsignal_chunk(block_index=0, seg_index=seg, i_start=a, i_stop=b,
                                               stream_index=si, channel_indexes=chan_idx)
            return rawio.rescale_signal_raw_to_float(raw, dtype="float64", stream_index=si,
                                                     channel_indexes=chan_idx) * factors

        sid = base if n_seg == 1 else f"{base}-seg{seg}"
        events = [] if trials_csv is not None or nev is None or nev_events == "none" else \
            _neo_events(rawio, seg, nev_events, log)
        specs.append(SessionSpec(sid, kind, day, read, n, rate, "broadband", t0, events,
                                 {"file": str(nsx), "segment": seg, "t_start_s": round(t0, 6)}))
    if n_seg > 1:
        log(f"note: {nsx} has {n_seg} recording segments (pauses); each is a session")
    if trials_csv is not None:
        spans = [(s.session, s.t0_s, s.t0_s + s.n_input / s.rate_hz) for s in specs]
        by_session = assign_events(read_trials_csv(trials_csv, label_column=label_column, log=log),
                                   spans, str(trials_csv))
        for s in specs:
            s.events = by_session[s.session]
    for warning in neo_warnings:
        log(f"note: {warning}")
    if split_at is not None:
        if len(specs) != 1:
            raise RecordingError(f"--split-at-s cuts a recording of one segment; {nsx} has "
                                 f"{len(specs)} (each is already a session)")
        specs = split_session(specs[0], split_at, log=log)
    report = ImportReport(dataset=str(out), format="blackrock", notes=notes)
    source = {"format": "blackrock", "file": str(nsx), "nev": str(nev) if nev else None,
              "trials": str(trials_csv) if trials_csv else None, "spec": info["spec"],
              "input_rate_hz": rate, "reader": f"neo {neo.__version__} BlackrockRawIO",
              "channel_map": cmap.name, "blank_ms": blank_ms}
    source.update({k: v for k, v in (("label_column", label_column), ("split_at_s", split_at))
                   if v is not None})
    write_import(out, cmap, specs, report=report, source=source, append=append, overwrite=overwrite,
                 blank_ms=blank_ms, chunk_s=chunk_s, window=window, log=log)
    return report
