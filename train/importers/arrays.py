"""Plain arrays (.npy / .npz / .mat / .csv) -> dataset: binned spike counts, MUA or broadband.

For labs whose acquisition gives threshold-crossing counts per bin instead of
broadband: counts become a rate (count / bin width, spikes/s) held over each bin at
1 kHz, so the train commands run unchanged. A binned dataset records a normaliser whose
normaliser is a rolling z-score whose scale floor is the Poisson SD of each unit's count
(`NormaliserConfig.for_counts`), so a sparse unit is not blown up to the clip value.

Arrays are (time, channels) as stored; `layout="channel-by-time"` takes the transpose. An
array with more channels than samples is refused without an explicit layout (a units x bins
array would otherwise import as thousands of channels). MATLAB files: v4/v5/v7 through
scipy.io.loadmat, v7.3 (HDF5) through h5py, both with the shape MATLAB shows.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from phosphene.signal import NormaliserConfig
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
    split_session,
    window_from_options,
    write_import,
)

__all__ = ["ARRAY_SUFFIXES", "LAYOUTS", "NORMALISER_CHOICES", "import_array", "load_array"]

logger = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".npy", ".npz", ".mat", ".csv")
LAYOUTS = ("time-by-channel", "channel-by-time")
NORMALISER_CHOICES = ("auto", "counts", "mua")  # --normaliser
# header cells of a leading column that holds no channel: a row index or the bin's time
_INDEX_NAMES = {"", "index", "idx", "i", "row", "bin", "bins", "bin_index", "sample", "t", "time",
                "time_s", "time_ms", "times", "timestamp", "timestamps", "seconds", "unnamed: 0"}


def _shape(value) -> tuple:
    return tuple(getattr(value, "shape", ()))


def _numeric(name: str, value) -> bool:
    dtype = getattr(value, "dtype", None)
    shape = _shape(value)
    return (dtype is not None and dtype.kind in "iuf" and len(shape) in (1, 2)
            and int(np.prod(shape)) > 1 and not name.startswith("__"))


def _describe(value) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{_shape(value)} {dtype}" if dtype is not None else type(value).__name__


def _pick_variable(found: dict, variable: str | None, path: Path) -> tuple[str, object]:
    """The variable to import: `variable`, else the file's only numeric 1-D/2-D array."""
    listing = ", ".join(f"{k} {_describe(v)}" for k, v in found.items()) or "none"
    if variable is not None:
        if variable not in found:
            raise RecordingError(f"{path}: no variable {variable!r}; it holds: {listing}")
        return variable, found[variable]
    numeric = [k for k, v in found.items() if _numeric(k, v)]
    if len(numeric) == 1:
        return numeric[0], found[numeric[0]]
    if not numeric:
        raise RecordingError(f"{path} holds no numeric 1-D or 2-D array (it holds: {listing})")
    raise RecordingError(f"{path} holds several arrays; pass --variable NAME, one of: "
                         + ", ".join(f"{k} {_describe(found[k])}" for k in numeric))


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts (MATLAB structs) -> {"a.b": value}."""
    out = {}
    for k, v in d.items():
        if k.startswith("__"):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _load_mat(path: Path, variable: str | None) -> tuple[np.ndarray, str]:
    try:
        import scipy.io
    except ImportError as exc:  # pragma: no cover - the io extra includes scipy
        raise RecordingError("reading .mat files needs scipy: pip install 'phosphene[io]'") from exc
    try:
        found = _flatten(scipy.io.loadmat(str(path), simplify_cells=True))
    except NotImplementedError:  # MATLAB v7.3: an HDF5 file
        return _load_mat73(path, variable)
    except (ValueError, OSError, TypeError) as exc:
        raise RecordingError(f"{path} is not a readable MATLAB file: {exc}") from None
    name, value = _pick_variable(found, variable, path)
    return np.asarray(value), name


def _load_mat73(path: Path, variable: str | None) -> tuple[np.ndarray, str]:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - the io extra includes h5py
        raise RecordingError(f"{path} is a MATLAB v7.3 (HDF5) file: reading it needs h5py: "
                             "pip install 'phosphene[io]'") from exc
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise RecordingError(f"{path} is not a readable MATLAB v7.3 file: {exc}") from None
    with f:
        found: dict = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("#"):
                found[name.replace("/", ".")] = obj

        f.visititems(visit)
        shapes = {k: _Shaped(tuple(reversed(v.shape)), v.dtype) for k, v in found.items()}
        name, _ = _pick_variable(shapes, variable, path)
        # HDF5 holds MATLAB's column-major array with the dimensions reversed: transpose
        # back, so the array has the shape MATLAB shows
        return np.asarray(found[name][()]).T, name


class _Shaped:
    """Shape and dtype of a stored array, without reading it (for picking and listing)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


def _load_npz(path: Path, variable: str | None) -> tuple[np.ndarray, str]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RecordingError(f"{path} is not a readable .npz archive: {exc}") from None
    with npz:
        found = {k: _npz_header(npz, k) for k in npz.files}
        name, _ = _pick_variable(found, variable, path)
        try:
            return np.asarray(npz[name]), name
        except (ValueError, OSError, EOFError) as exc:
            raise RecordingError(f"{path}: variable {name!r} cannot be read: {exc}") from None


def _npz_header(npz, key: str):
    """Shape and dtype of one member of an .npz, read from its header only."""
    fmt = np.lib.format
    try:
        with npz.zip.open(f"{key}.npy") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
        return _Shaped(shape, dtype)
    except Exception:
        a = npz[key]
        return _Shaped(a.shape, a.dtype)


def _load_csv(path: Path, drop_columns: tuple[str, ...], log: Log) -> tuple[np.ndarray, list[int] | None]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path} is not a readable text file: {exc}") from None
    numbered = [(i, ln) for i, ln in enumerate(lines, start=1) if ln.strip()]
    if not numbered:
        raise RecordingError(f"{path} is empty")
    first = [c.strip() for c in numbered[0][1].split(",")]
    header, header_line = None, numbered[0][0]

    def number(c: str) -> bool:
        try:
            float(c)
            return True
        except ValueError:
            return False

    # a header row: electrode ids (12 or elec12), maybe an index/time column first (a
    # pandas index has an empty name)
    if any(c and not number(c) for c in first) or (len(first) > 1 and not first[0]
                                                    and all(first[1:])):
        header = first
        numbered = numbered[1:]
    drop: list[int] = []
    if header is not None:
        lower = [h.lower() for h in header]
        for name in drop_columns:
            if name.lower() not in lower:
                raise RecordingError(f"{path}: --drop-column {name!r} is not in the header "
                                     f"({', '.join(header)})")
            drop.append(lower.index(name.lower()))
        if not drop_columns and lower and lower[0] in _INDEX_NAMES and not re.search(r"\d", lower[0]):
            drop.append(0)
            log(f"note: {path}: the first column {header[0]!r} is an index or time column, not "
                "an electrode; it is left out (--drop-column names others)")
    elif drop_columns:
        raise RecordingError(f"{path}: --drop-column needs a header row naming the columns")
    keep = [j for j in range(len(first)) if j not in drop]
    ids = None
    if header is not None:
        ids = []
        for j in keep:
            digits = re.findall(r"\d+", header[j])
            if not digits:
                raise RecordingError(f"{path} line {header_line}, column {j + 1}: header "
                                     f"cell {header[j]!r} names no electrode id (expected e.g. 12 "
                                     "or elec12); a column that is not an electrode is left out "
                                     "with --drop-column NAME")
            ids.append(int(digits[-1]))
    if not numbered:
        raise RecordingError(f"{path} has a header but no rows")
    arr = np.empty((len(numbered), len(keep)), dtype=np.float64)
    width = len(first)
    for r, (line_no, text) in enumerate(numbered):
        cells = text.split(",")
        if len(cells) != width:
            raise RecordingError(f"{path} line {line_no} has {len(cells)} values but line "
                                 f"{header_line} has {width}; every row must hold one value "
                                 "per column")
        for k, j in enumerate(keep):
            cell = cells[j].strip()
            if not cell:
                raise RecordingError(f"{path} line {line_no}, column {j + 1}"
                                     + (f" ({header[j]})" if header else "")
                                     + ": empty cell (fill the gap, or cut the recording there)")
            try:
                arr[r, k] = float(cell)
            except ValueError:
                raise RecordingError(f"{path} line {line_no}, column {j + 1}"
                                     + (f" ({header[j]})" if header else "")
                                     + f": {cell!r} is not a number") from None
    return arr, ids


def load_array(path: Path, *, variable: str | None = None, layout: str | None = None,
               drop_columns: tuple[str, ...] = (), log: Log = logger.info,
               ) -> tuple[np.ndarray, list[int] | None]:
    """(T, C) samples (a memory map for .npy) and electrode ids from a CSV header, if any.

    variable: the array inside a .npz or .mat (default: the only numeric one). layout:
    "time-by-channel" (rows are samples or bins) or "channel-by-time" (transposed on
    load); None refuses an array with more columns than rows.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"array file not found: {path}")
    if layout is not None and layout not in LAYOUTS:
        raise RecordingError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    suffix = path.suffix.lower()
    ids, what = None, str(path)
    if variable is not None and suffix not in (".npz", ".mat"):
        raise RecordingError(f"--variable picks an array inside a .npz or .mat file; {path} is "
                             f"a {suffix or 'suffix-less'} file")
    if drop_columns and suffix != ".csv":
        raise RecordingError("--drop-column applies to CSV files only")
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise RecordingError(f"{path} is not a readable .npy array (truncated?): {exc}") from None
    elif suffix == ".npz":
        arr, name = _load_npz(path, variable)
        what = f"{path} variable {name!r}"
    elif suffix == ".mat":
        arr, name = _load_mat(path, variable)
        what = f"{path} variable {name!r}"
    elif suffix == ".csv":
        arr, ids = _load_csv(path, tuple(drop_columns), log)
    else:
        raise RecordingError(f"{path}: expected a {', '.join(ARRAY_SUFFIXES)} array")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise RecordingError(f"{what} holds {arr.dtype}, not real numbers")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RecordingError(f"{what} has shape {arr.shape}; expected (samples or bins, channels)")
    if layout == "channel-by-time":
        arr = arr.T
        if ids is not None:
            raise RecordingError(f"{path}: a CSV header names the columns (electrodes); "
                                 "--layout channel-by-time does not apply")
    elif layout is None and arr.shape[1] > arr.shape[0]:
        raise RecordingError(
            f"{what} has shape {arr.shape}: more columns than rows, i.e. {arr.shape[1]} channels "
            f"of only {arr.shape[0]} samples. If it is stored channels x time (units x bins) pass "
            "--layout channel-by-time; if it really is time x channels pass --layout "
            "time-by-channel")
    if ids is not None and len(ids) != arr.shape[1]:
        raise RecordingError(f"{path}: header names {len(ids)} electrodes but rows have "
                             f"{arr.shape[1]} values")
    return arr, ids


def import_array(path: str | Path, *, out: str | Path, input_kind: str = "binned",
                 bin_ms: float | None = None, rate_hz: float | None = None,
                 map_path: str | Path | None = None, trials_csv: str | Path | None = None,
                 kind: str | None = None, session: str | None = None, day: int = 0,
                 blank_ms: float = DEFAULT_BLANK_MS, append: bool = False, overwrite: bool = False,
                 chunk_s: float = DEFAULT_CHUNK_S, variable: str | None = None,
                 layout: str | None = None, drop_columns: tuple[str, ...] = (),
                 split_at: float | None = None, label_column: str | None = None,
                 window_offset_ms: float | None = None, window_ms: float | None = None,
                 normaliser: str = "auto", log: Log = logger.info) -> ImportReport:
    """Import a (T, C) array: binned counts (bin_ms), MUA or broadband (rate_hz).

    Trial times in the --trials table are seconds from the first sample/bin. split_at:
    seconds at which the recording is cut into a resting session `<id>-rest` and the task
    session `<id>` (which keeps the trials). normaliser: the signal's normaliser recorded
    in the dataset; auto = "counts" for binned counts (`NormaliserConfig.for_counts`:
    rolling z-score with the Poisson scale floor), "mua" (the paper's robust default)
    otherwise.
    """
    notes, log = collecting(log)
    path = Path(path)
    if input_kind not in INPUT_KINDS:
        raise RecordingError(f"input kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    if normaliser not in NORMALISER_CHOICES:
        raise RecordingError(f"normaliser must be one of {', '.join(NORMALISER_CHOICES)}, "
                             f"got {normaliser!r}")
    if input_kind == "binned":
        if bin_ms is None:
            raise RecordingError("binned counts need --bin-ms (the bin width in ms)")
        if rate_hz is not None and abs(rate_hz * bin_ms - 1000.0) > 1e-6:
            raise RecordingError(f"--rate-hz {rate_hz:g} contradicts --bin-ms {bin_ms:g} "
                                 f"({1000.0 / bin_ms:g} bins/s); binned counts need only --bin-ms")
        rate = 1000.0 / bin_ms
    else:
        if bin_ms is not None:
            raise RecordingError(f"--bin-ms applies to binned counts only; a {input_kind} array "
                                 "takes its sample rate from --rate-hz")
        if rate_hz is None or rate_hz <= 0:
            raise RecordingError(f"{input_kind} arrays need --rate-hz (samples per second)")
        if normaliser == "counts":
            raise RecordingError("--normaliser counts is for binned counts (--input-kind binned)")
        rate = float(rate_hz)
    window = window_from_options(window_offset_ms, window_ms)
    norm_config = None
    if input_kind == "binned":
        norm_config = (NormaliserConfig() if normaliser == "mua"
                       else NormaliserConfig.for_counts(bin_ms))
    arr, header_ids = load_array(path, variable=variable, layout=layout,
                                 drop_columns=tuple(drop_columns), log=log)
    ids = header_ids or list(range(1, arr.shape[1] + 1))
    cmap = resolve_channel_map(ids, map_path=map_path, log=log)

    def read(a: int, b: int) -> np.ndarray:
        return np.asarray(arr[a:b], dtype=np.float64)

    sid = safe_session_id(session if session else path.stem)
    spec = SessionSpec(sid, kind, day, read, int(arr.shape[0]), rate, input_kind, 0.0, [],
                       {"file": str(path)})
    if trials_csv is not None:
        span = [(sid, 0.0, arr.shape[0] / rate)]
        events = read_trials_csv(trials_csv, label_column=label_column, log=log)
        spec.events = assign_events(events, span, str(trials_csv))[sid]
    elif label_column is not None:
        raise RecordingError("--label-column names a column of the --trials table; give --trials")
    specs = split_session(spec, split_at, log=log) if split_at is not None else [spec]
    report = ImportReport(dataset=str(out), format="array", notes=notes)
    source = {"format": "array", "file": str(path), "input_kind": input_kind,
              "bin_ms": bin_ms, "input_rate_hz": rate,
              "trials": str(trials_csv) if trials_csv else None, "channel_map": cmap.name}
    source.update({k: v for k, v in (("variable", variable), ("layout", layout),
                                     ("split_at_s", split_at), ("label_column", label_column),
                                     ("drop_columns", list(drop_columns) or None))
                   if v is not None})
    binned = input_kind == "binned"
    write_import(out, cmap, specs, report=report, source=source,
                 units="spikes/s" if binned else "uV", signal="binned-rate" if binned else "mua",
                 append=append, overwrite=overwrite, blank_ms=blank_ms, bin_ms=bin_ms,
                 chunk_s=chunk_s, normaliser=norm_config, window=window, log=log)
    return report
