"""Plain arrays (.npy / .csv) -> dataset: binned spike counts, MUA or broadband.

For labs whose acquisition gives threshold-crossing counts per bin instead of
broadband: counts become a rate (count / bin width, spikes/s) held over each bin at
1 kHz, so the train commands run unchanged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from phosphene.train.importers.common import (
    DEFAULT_BLANK_MS,
    DEFAULT_CHUNK_S,
    INPUT_KINDS,
    ImportReport,
    Log,
    RecordingError,
    SessionSpec,
    assign_events,
    collecting,
    read_trials_csv,
    resolve_channel_map,
    safe_session_id,
    write_import,
)

__all__ = ["import_array", "load_array"]

logger = logging.getLogger(__name__)


def load_array(path: Path) -> tuple[np.ndarray, list[int] | None]:
    """(T, C) samples (a memory map for .npy) and electrode ids from a CSV header, if any."""
    if not path.is_file():
        raise RecordingError(f"array file not found: {path}")
    suffix = path.suffix.lower()
    ids = None
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise RecordingError(f"{path} is not a readable .npy array (truncated?): {exc}") from None
    elif suffix == ".csv":
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordingError(f"{path} is not a readable text file: {exc}") from None
        lines = [ln for ln in lines if ln.strip()]
        if not lines:
            raise RecordingError(f"{path} is empty")
        first = [c.strip() for c in lines[0].split(",")]
        try:
            [float(c) for c in first]
        except ValueError:  # a header row: electrode ids, e.g. 1,2,3 or elec1,elec2
            ids = []
            for c in first:
                digits = re.findall(r"\d+", c)
                if not digits:
                    raise RecordingError(f"{path}: header cell {c!r} names no electrode id "
                                         "(expected e.g. 12 or elec12)")
                ids.append(int(digits[-1]))
            lines = lines[1:]
        try:
            arr = np.array([[float(c) for c in ln.split(",")] for ln in lines], dtype=np.float64)
        except ValueError as exc:
            raise RecordingError(f"{path}: every row must hold the same number of numbers "
                                 f"({exc})") from None
    else:
        raise RecordingError(f"{path}: expected a .npy or .csv array")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RecordingError(f"{path} has shape {arr.shape}; expected (samples or bins, channels)")
    if not np.issubdtype(arr.dtype, np.number):
        raise RecordingError(f"{path} holds {arr.dtype}, not numbers")
    if ids is not None and len(ids) != arr.shape[1]:
        raise RecordingError(f"{path}: header names {len(ids)} electrodes but rows have "
                             f"{arr.shape[1]} values")
    return arr, ids


def import_array(path: str | Path, *, out: str | Path, input_kind: str = "binned",
                 bin_ms: float | None = None, rate_hz: float | None = None,
                 map_path: str | Path | None = None, trials_csv: str | Path | None = None,
                 kind: str | None = None, session: str | None = None, day: int = 0,
                 blank_ms: float = DEFAULT_BLANK_MS, append: bool = False, overwrite: bool = False,
                 chunk_s: float = DEFAULT_CHUNK_S, log: Log = logger.info) -> ImportReport:
    """Import a (T, C) array: binned counts (bin_ms), MUA or broadband (rate_hz).

    Trial times in the --trials table are seconds from the first sample/bin.
    """
    notes, log = collecting(log)
    path = Path(path)
    if input_kind not in INPUT_KINDS:
        raise RecordingError(f"input kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    if input_kind == "binned":
        if bin_ms is None:
            raise RecordingError("binned counts need --bin-ms (the bin width in ms)")
        rate = 1000.0 / bin_ms
    else:
        if rate_hz is None or rate_hz <= 0:
            raise RecordingError(f"{input_kind} arrays need --rate-hz (samples per second)")
        rate = float(rate_hz)
    arr, header_ids = load_array(path)
    ids = header_ids or list(range(1, arr.shape[1] + 1))
    cmap = resolve_channel_map(ids, map_path=map_path, log=log)

    def read(a: int, b: int) -> np.ndarray:
        return np.asarray(arr[a:b], dtype=np.float64)

    sid = safe_session_id(session if session else path.stem)
    spec = SessionSpec(sid, kind, day, read, int(arr.shape[0]), rate, input_kind, 0.0, [],
                       {"file": str(path)})
    if trials_csv is not None:
        span = [(sid, 0.0, arr.shape[0] / rate)]
        spec.events = assign_events(read_trials_csv(trials_csv), span, str(trials_csv))[sid]
    report = ImportReport(dataset=str(out), format="array", notes=notes)
    source = {"format": "array", "file": str(path), "input_kind": input_kind,
              "bin_ms": bin_ms, "input_rate_hz": rate,
              "trials": str(trials_csv) if trials_csv else None, "channel_map": cmap.name}
    binned = input_kind == "binned"
    write_import(out, cmap, [spec], report=report, source=source,
                 units="spikes/s" if binned else "uV", signal="binned-rate" if binned else "mua",
                 append=append, overwrite=overwrite, blank_ms=blank_ms, bin_ms=bin_ms,
                 chunk_s=chunk_s, log=log)
    return report
