"""NWB <-> dataset through pynwb.

Import reads an ElectricalSeries (broadband -> MUA) or an already-extracted MUA or
binned-count TimeSeries, the electrodes table for geometry, and a trials/intervals
table for stimulation. Export writes one MUA ElectricalSeries per session (processing
module `ecephys`, FilteredEphys `MUA`), the electrodes table with positions, and the
trials table, so that import(export(ds)) gives back the same samples, map and trials.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import uuid
from pathlib import Path

import numpy as np

from phosphene.dataset import NO_ELECTRODE, Dataset, DatasetError
from phosphene.geometry import ChannelMap
from phosphene.io import atomic_path
from phosphene.signal import MUA_RATE_HZ, MuaConfig, NormaliserConfig, WindowSpec
from phosphene.train.importers.common import (
    DEFAULT_BLANK_MS,
    DEFAULT_CHUNK_S,
    INPUT_KINDS,
    ImportReport,
    Log,
    RecordedEvent,
    RecordingError,
    SessionSpec,
    assign_events,
    collecting,
    grid_from_positions,
    parse_label,
    read_trials_csv,
    resolve_channel_map,
    safe_session_id,
    split_session,
    window_from_options,
    write_import,
)

__all__ = ["MARKER", "export_nwb", "import_nwb"]

logger = logging.getLogger(__name__)

MARKER = "phosphene:"  # series comments / file notes written by export start with this
SESSION_GAP_S = 1.0  # exported sessions sit one after another on the file's clock
_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "microvolt": 1.0, "microvolts": 1.0, "mv": 1e3,
               "millivolts": 1e3, "v": 1e6, "volt": 1e6, "volts": 1e6}
_TRIAL_COLUMNS = {
    "electrode": ("electrode", "electrode_id", "stim_electrode", "electrodes"),
    "current_ua": ("current_ua", "current_uA", "current", "amplitude_ua"),
    "perceived": ("perceived", "detected"),
}


def _pynwb():
    try:
        import pynwb
    except ImportError:  # pragma: no cover - the io extra installs pynwb
        raise RecordingError("NWB import/export needs pynwb: pip install 'phosphene[io]'") from None
    return pynwb


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------
def _all_series(nwbfile) -> list[tuple[str, object]]:
    """(label, TimeSeries) for every series in acquisition and processing, containers opened."""
    from pynwb import TimeSeries

    found = []

    def visit(label: str, obj) -> None:
        if isinstance(obj, TimeSeries):
            found.append((label, obj))
            return
        for attr in ("electrical_series", "time_series"):
            inner = getattr(obj, attr, None)
            if isinstance(inner, dict):
                for name, ts in inner.items():
                    visit(f"{label}/{name}", ts)

    for name, obj in nwbfile.acquisition.items():
        visit(f"acquisition/{name}", obj)
    for mod_name, module in nwbfile.processing.items():
        for name, obj in module.data_interfaces.items():
            visit(f"processing/{mod_name}/{name}", obj)
    return found


def _marker(series) -> dict | None:
    text = getattr(series, "comments", "") or ""
    if not text.startswith(MARKER):
        return None
    try:
        return json.loads(text[len(MARKER):])
    except json.JSONDecodeError:
        return None


def _describe(found) -> str:
    return "; ".join(f"{label} ({type(s).__name__}, shape {tuple(s.data.shape)})"
                     for label, s in found) or "none"


def _pick_series(found, wanted: list[str] | None, path: Path):
    if wanted:
        picked = []
        for name in wanted:
            hits = [(lab, s) for lab, s in found if s.name == name or lab == name]
            if not hits:
                raise RecordingError(f"{path} has no series {name!r}; series in the file: "
                                     f"{_describe(found)}")
            if len(hits) > 1:
                raise RecordingError(f"{path}: {name!r} names several series "
                                     f"({', '.join(h[0] for h in hits)}); give the full path")
            picked.append(hits[0])
        return picked
    from pynwb.ecephys import ElectricalSeries

    marked = [(lab, s) for lab, s in found if _marker(s) is not None]
    if marked:  # containers come back in name order; the export's order is in the marker
        return sorted(marked, key=lambda m: (_marker(m[1]).get("order", 0), m[1].starting_time or 0.0))
    tiers = [
        [(lab, s) for lab, s in found if lab.startswith("acquisition/") and isinstance(s, ElectricalSeries)],
        [(lab, s) for lab, s in found if isinstance(s, ElectricalSeries)],
        [(lab, s) for lab, s in found if lab.startswith("acquisition/")],
    ]
    for tier in tiers:
        if len(tier) == 1:
            return tier
        if len(tier) > 1:
            raise RecordingError(f"{path} has several candidate series: {_describe(tier)}; "
                                 "choose with --series NAME (repeat it to import several as sessions)")
    raise RecordingError(f"{path} has no ElectricalSeries or TimeSeries to import; series in the "
                         f"file: {_describe(found)}")


def _rate_and_start(series, label: str) -> tuple[float, float]:
    rate = getattr(series, "rate", None)
    if rate:
        return float(rate), float(getattr(series, "starting_time", None) or 0.0)
    ts = series.timestamps
    if ts is None or len(ts) < 2:
        raise RecordingError(f"series {label} has neither a rate nor enough timestamps")
    t = np.asarray(ts[: min(len(ts), 100_000)], dtype=np.float64)
    step = np.diff(t)
    rate = 1.0 / float(np.median(step))
    if np.max(np.abs(step * rate - 1.0)) > 0.01:
        raise RecordingError(f"series {label} has irregular timestamps; phosphene needs a "
                             "constant sample rate")
    return round(rate, 6), float(t[0])


def _electrode_geometry(table, rows: np.ndarray) -> tuple[list[int], ChannelMap | None]:
    """Electrode ids of the given table rows and a ChannelMap when the table has positions."""
    ids = [int(i) for i in np.asarray(table.id[:])[rows]]
    cols = set(table.colnames)
    for xn, yn in (("rel_x", "rel_y"), ("x", "y")):
        if xn in cols and yn in cols:
            x = np.asarray(table[xn].data[:], dtype=float)[rows]
            y = np.asarray(table[yn].data[:], dtype=float)[rows]
            if np.all(np.isfinite(x)) and np.all(np.isfinite(y)):
                break
    else:
        return ids, None
    if "grid_row" in cols and "grid_col" in cols:
        grid_r = [int(v) for v in np.asarray(table["grid_row"].data[:])[rows]]
        grid_c = [int(v) for v in np.asarray(table["grid_col"].data[:])[rows]]
    else:
        grid_r, grid_c = grid_from_positions(x, y)
    try:
        cmap = ChannelMap(tuple(ids), tuple(grid_r), tuple(grid_c), tuple(float(v) for v in x),
                          tuple(float(v) for v in y), name="nwb-electrodes")
    except ValueError as exc:
        raise RecordingError(f"electrodes table: {exc}") from None
    return ids, cmap


def _series_channels(series, nwbfile, marker: dict | None, n_channels: int, label: str, log: Log):
    from pynwb.ecephys import ElectricalSeries

    if isinstance(series, ElectricalSeries):
        rows = np.asarray(series.electrodes.data[:], dtype=np.int64)
        if len(rows) != n_channels:
            raise RecordingError(f"series {label} has {n_channels} columns but links "
                                 f"{len(rows)} electrodes")
        return _electrode_geometry(series.electrodes.table, rows)
    table = nwbfile.electrodes
    if marker and "electrodes" in marker and table is not None:
        all_ids = [int(i) for i in table.id[:]]
        try:
            rows = np.asarray([all_ids.index(int(e)) for e in marker["electrodes"]])
        except ValueError:
            raise RecordingError(f"series {label} names electrodes missing from the "
                                 "electrodes table") from None
        return _electrode_geometry(table, rows)
    if table is not None and len(table) == n_channels:
        log(f"note: series {label} is a TimeSeries (no electrode links); taking the "
            f"{n_channels} rows of the electrodes table in order as its columns")
        return _electrode_geometry(table, np.arange(n_channels))
    return list(range(1, n_channels + 1)), None


def _scale_to_uv(series, input_kind: str, label: str, log: Log) -> tuple[np.ndarray | float, float]:
    """(factor, offset) turning stored values into uV (or counts, for binned input)."""
    from pynwb.ecephys import ElectricalSeries

    conversion = float(getattr(series, "conversion", 1.0) or 1.0)
    offset = float(getattr(series, "offset", 0.0) or 0.0)
    if input_kind == "binned":
        return conversion, offset
    if isinstance(series, ElectricalSeries):  # stored * conversion + offset is volts
        factor: np.ndarray | float = conversion * 1e6
        per_channel = getattr(series, "channel_conversion", None)
        if per_channel is not None:
            factor = factor * np.asarray(per_channel[:], dtype=np.float64)
        return factor, offset * 1e6
    unit = (series.unit or "").strip().lower()
    if unit in _UNIT_TO_UV:
        return conversion * _UNIT_TO_UV[unit], offset * _UNIT_TO_UV[unit]
    if input_kind == "broadband":
        raise RecordingError(f"series {label} is in {series.unit!r}, not a voltage; broadband "
                             "needs volts to become MUA")
    log(f"note: series {label} is in {series.unit!r}; values are kept as they are")
    return conversion, offset


def _nwb_events(nwbfile, path: Path, log: Log, label_column: str | None = None) -> list[RecordedEvent]:
    """Stimulation trials from the trials table or another intervals table with electrodes.

    With `label_column`, the first table holding that column gives the trials, with or
    without electrodes (a behavioural task: events without an electrode, NO_ELECTRODE).
    """
    from hdmf.common import DynamicTableRegion

    tables = []
    if nwbfile.trials is not None:
        tables.append(("trials", nwbfile.trials))
    for name, table in (nwbfile.intervals or {}).items():
        if name != "trials":
            tables.append((f"intervals/{name}", table))
    if not tables:
        if label_column is not None:
            raise RecordingError(f"{path} has no trials or intervals table, so no column "
                                 f"{label_column!r} (--label-column)")
        return []

    def find(table, key):
        lower = {c.lower(): c for c in table.colnames}
        if key == "perceived" and label_column is not None:
            return lower.get(label_column.lower())
        return next((lower[a.lower()] for a in _TRIAL_COLUMNS[key] if a.lower() in lower), None)

    if label_column is not None:
        labelled = [(n, t) for n, t in tables if find(t, "perceived") is not None]
        if not labelled:
            raise RecordingError(
                f"{path}: no trials/intervals table has a column {label_column!r} "
                "(--label-column); " + "; ".join(f"{n}: {', '.join(t.colnames)}" for n, t in tables))
        tables = labelled[:1]
    for name, table in tables:
        col_e = find(table, "electrode")
        if col_e is None and label_column is not None:
            return _behaviour_events(table, name, find(table, "perceived"), path)
        if col_e is None:
            continue
        col_c = find(table, "current_ua")
        if col_c is None:
            raise RecordingError(f"{path}: table {name} has electrodes but no current column "
                                 f"(one of {', '.join(_TRIAL_COLUMNS['current_ua'])}); columns: "
                                 f"{', '.join(table.colnames)}")
        start = np.asarray(table["start_time"].data[:], dtype=np.float64)
        e_col = table[col_e]
        if isinstance(e_col, DynamicTableRegion):  # row indices into the electrodes table
            e_ids = np.asarray(e_col.table.id[:])
            electrode = e_ids[np.asarray(e_col.data[:], dtype=np.int64)]
        else:
            electrode = np.asarray(e_col.data[:])
        current = np.asarray(table[col_c].data[:], dtype=np.float64)
        col_p = find(table, "perceived")
        perceived = (np.asarray(table[col_p].data[:]).astype(np.float64) if col_p
                     else np.full(len(start), -1.0))
        session = ([str(s.decode() if isinstance(s, bytes) else s) for s in table["session"].data[:]]
                   if "session" in table.colnames else [""] * len(start))
        onset = (np.asarray(table["onset_sample"].data[:], dtype=np.int64)
                 if "onset_sample" in table.colnames else None)
        p_true = (np.asarray(table["p_true"].data[:], dtype=np.float64)
                  if "p_true" in table.colnames else np.full(len(start), np.nan))
        events = []
        for i in range(len(start)):
            p = perceived[i]
            if not math.isfinite(p) or p == -1:
                p = -1
            elif p not in (0.0, 1.0):
                raise RecordingError(f"{path}: table {name} row {i}: perceived must be 0/1, got {p}")
            if not (math.isfinite(start[i]) and math.isfinite(current[i])):
                raise RecordingError(f"{path}: table {name} row {i}: start_time and current must "
                                     "be finite")
            events.append(RecordedEvent(float(start[i]), int(electrode[i]), float(current[i]), int(p),
                                    session[i], None if onset is None else int(onset[i]),
                                    float(p_true[i])))
        if not events:
            log(f"note: table {name} has no rows")
        return events
    log(f"warning: {path} has {'/'.join(n for n, _ in tables)} but no table with an electrode "
        "column, so no trials were imported: pass --label-column NAME to import a behavioural "
        "table's events with that label, or --trials CSV")
    return []


def _behaviour_events(table, name: str, col_label: str, path: Path) -> list[RecordedEvent]:
    """Events of an intervals table without electrodes: onset start_time, label `col_label`."""
    start = np.asarray(table["start_time"].data[:], dtype=np.float64)
    values = list(table[col_label].data[:])
    session = ([str(v.decode() if isinstance(v, bytes) else v) for v in table["session"].data[:]]
               if "session" in table.colnames else [""] * len(start))
    events = []
    for i, t in enumerate(start):
        if not math.isfinite(t):
            raise RecordingError(f"{path}: table {name} row {i}: start_time must be finite")
        v = values[i]
        v = v.decode() if isinstance(v, bytes) else v
        v = int(v) if isinstance(v, (bool, np.bool_)) else v
        label = parse_label(v, f"{path}: table {name} row {i}", f"column {col_label!r}")
        events.append(RecordedEvent(float(t), NO_ELECTRODE, 0.0, label, session[i]))
    return events


def import_nwb(path: str | Path, *, out: str | Path, series: list[str] | None = None,
               input_kind: str = "auto", bin_ms: float | None = None,
               map_path: str | Path | None = None, trials_csv: str | Path | None = None,
               kind: str | None = None, session: str | None = None, day: int = 0,
               blank_ms: float = DEFAULT_BLANK_MS, append: bool = False, overwrite: bool = False,
               chunk_s: float = DEFAULT_CHUNK_S, label_column: str | None = None,
               window_offset_ms: float | None = None, window_ms: float | None = None,
               split_at: float | None = None, normaliser: str = "auto",
               log: Log = logger.info) -> ImportReport:
    """Import series of an NWB file as sessions of a dataset at `out`.

    input_kind: auto (an ElectricalSeries at >= 2 kHz is broadband, any other series MUA),
    broadband, mua, or binned (spike counts per bin of `bin_ms`, default 1000 / rate).
    Binned counts record the counts normaliser (normaliser auto/counts: rolling z-score
    with the Poisson scale floor) or the paper's MUA one (mua). label_column: the trials
    table's label column (a behavioural table without electrodes then imports too).
    split_at: seconds on the file's clock where the resting part `<session>-rest` of a
    single series ends.
    """
    notes, log = collecting(log)
    window = window_from_options(window_offset_ms, window_ms)
    if normaliser not in ("auto", "counts", "mua"):
        raise RecordingError(f"normaliser must be auto, counts or mua, got {normaliser!r}")
    if bin_ms is not None and input_kind not in ("binned",):
        raise RecordingError(f"--bin-ms applies to --input-kind binned only (got --input-kind "
                             f"{input_kind}); MUA and broadband series carry their own rate")
    pynwb = _pynwb()
    from pynwb.ecephys import ElectricalSeries

    path = Path(path)
    if input_kind not in ("auto", *INPUT_KINDS):
        raise RecordingError(f"input kind must be auto, {', '.join(INPUT_KINDS)}; got {input_kind!r}")
    if not path.is_file():
        raise RecordingError(f"NWB file not found: {path}")
    try:
        io = pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True)
    except Exception as exc:
        raise RecordingError(f"{path} is not a readable NWB (HDF5) file: {exc}") from None
    with io:
        try:
            nwbfile = io.read()
        except Exception as exc:
            raise RecordingError(f"pynwb {pynwb.__version__} could not read {path}: {exc}") from None
        found = _all_series(nwbfile)
        picked = _pick_series(found, series, path)
        notes_meta = _file_marker(nwbfile)
        base = safe_session_id(session if session else path.stem)
        specs, cmap, units, signal, widths = [], None, None, None, set()
        for label, s in picked:
            marker = _marker(s)
            data = s.data
            if data.ndim not in (1, 2) or data.shape[0] == 0:
                raise RecordingError(f"series {label} has shape {tuple(data.shape)}; expected "
                                     "(samples, channels)")
            C = 1 if data.ndim == 1 else int(data.shape[1])
            rate, t0 = _rate_and_start(s, label)
            this_kind = input_kind
            if this_kind == "auto":  # raw voltage is an ElectricalSeries; anything else is MUA
                broadband = isinstance(s, ElectricalSeries) and rate >= 2000 and marker is None
                this_kind = "broadband" if broadband else "mua"
            if this_kind == "binned":
                width = bin_ms if bin_ms is not None else 1000.0 / rate
                if abs(width * rate - 1000.0) > 1e-3:
                    raise RecordingError(f"series {label} runs at {rate:g} bins/s but --bin-ms "
                                         f"{bin_ms:g} means {1000.0 / bin_ms:g} bins/s")
                widths.add(round(width, 9))
            ids, geometry = _series_channels(s, nwbfile, marker, C, label, log)
            this_map = resolve_channel_map(ids, map_path=map_path, from_file=geometry, log=log)
            if cmap is not None and this_map.ids != cmap.ids:
                raise RecordingError(f"series {label} records different electrodes from "
                                     f"{picked[0][0]}; import them into separate datasets")
            cmap = cmap or this_map
            this_units = "spikes/s" if this_kind == "binned" else "uV"
            this_signal = "binned-rate" if this_kind == "binned" else "mua"
            if marker is not None:
                this_units, this_signal = marker.get("units", "uV"), marker.get("signal", "mua")
            if marker is not None and this_units != "uV":  # exported as-is in its own unit
                factor, offset = float(getattr(s, "conversion", 1.0) or 1.0), 0.0
            else:
                factor, offset = _scale_to_uv(s, this_kind, label, log)
            if units is not None and (units, signal) != (this_units, this_signal):
                raise RecordingError(f"series {label} holds {this_signal} but {picked[0][0]} holds "
                                     f"{signal}; import them into separate datasets")
            units, signal = this_units, this_signal

            def read(a: int, b: int, data=data, factor=factor, offset=offset) -> np.ndarray:
                block = np.asarray(data[a:b], dtype=np.float64)
                if block.ndim == 1:
                    block = block[:, None]
                return block * factor + offset

            if marker is not None:
                sid, skind, sday = marker["session"], kind or marker.get("kind"), marker.get("day", day)
            else:
                sid = base if len(picked) == 1 else f"{base}-{safe_session_id(s.name)}"
                skind, sday = kind, day
            specs.append(SessionSpec(safe_session_id(sid), skind, int(sday), read, int(data.shape[0]),
                                     rate, this_kind, t0, [],
                                     {"series": label}))
        if len(widths) > 1:
            raise RecordingError(f"the chosen series use different bin widths ({sorted(widths)} ms)")
        events = (read_trials_csv(trials_csv, label_column=label_column, log=log)
                  if trials_csv is not None else _nwb_events(nwbfile, path, log, label_column))
        spans = [(sp.session, sp.t0_s, sp.t0_s + sp.n_input / sp.rate_hz) for sp in specs]
        by_session = assign_events(events, spans, str(trials_csv or path))
        for sp in specs:
            sp.events = by_session[sp.session]
        if split_at is not None:
            if len(specs) != 1 or (specs[0].events and specs[0].events[0].onset_sample is not None):
                raise RecordingError("--split-at-s cuts one recorded series; pick one with --series "
                                     "(a phosphene export already holds its sessions)")
            specs = split_session(specs[0], split_at, log=log)
        report = ImportReport(dataset=str(out), format="nwb", notes=notes)
        source = {"format": "nwb", "file": str(path), "series": [lab for lab, _ in picked],
                  "trials": str(trials_csv) if trials_csv else None,
                  "reader": f"pynwb {pynwb.__version__}", "channel_map": cmap.name,
                  "input_kind": sorted({sp.input_kind for sp in specs})}
        source.update({k: v for k, v in (("label_column", label_column), ("split_at_s", split_at))
                       if v is not None})
        norm_config = None
        if signal == "binned-rate" and widths:
            norm_config = (NormaliserConfig() if normaliser == "mua"
                           else NormaliserConfig.for_counts(next(iter(widths))))
        elif normaliser == "counts":
            raise RecordingError("--normaliser counts is for binned counts (--input-kind binned)")
        extra = {}
        if notes_meta:
            source["exported_from"] = notes_meta.get("source")
            for key in ("ideal_observer", "ideal_observer_all_trials"):
                if key in notes_meta:
                    extra[key] = notes_meta[key]
            if notes_meta.get("bin_ms"):
                extra["bin_ms"] = notes_meta["bin_ms"]
            if notes_meta.get("normaliser") and normaliser == "auto":
                norm_config = NormaliserConfig.from_dict(notes_meta["normaliser"])
            if notes_meta.get("window") and window is None:
                window = WindowSpec.from_dict(notes_meta["window"])
            if notes_meta.get("channel_map") and cmap.name == "nwb-electrodes":
                cmap = ChannelMap(cmap.ids, cmap.rows, cmap.cols, cmap.x_um, cmap.y_um,
                                  name=notes_meta["channel_map"])
        write_import(out, cmap, specs, report=report, source=source, units=units, signal=signal,
                     append=append, overwrite=overwrite, blank_ms=blank_ms,
                     bin_ms=widths.pop() if widths else None, chunk_s=chunk_s,
                     extra_meta=extra, normaliser=norm_config, window=window, log=log)
    return report


def _file_marker(nwbfile) -> dict | None:
    notes = getattr(nwbfile, "notes", None) or ""
    if notes.startswith(MARKER):
        try:
            return json.loads(notes[len(MARKER):])
        except json.JSONDecodeError:
            return None
    return None


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------
def _row_iterator(arr: np.ndarray):
    from hdmf.data_utils import GenericDataChunkIterator

    class RowBlocks(GenericDataChunkIterator):
        """Streams a (T, C) memory map to HDF5 in row blocks (never the whole session)."""

        def __init__(self, source: np.ndarray):
            self._source = source
            C = source.shape[1]
            rows = max(1, min(source.shape[0], (4 << 20) // (4 * C)))  # ~4 MB chunks
            super().__init__(chunk_shape=(rows, C), buffer_shape=(min(source.shape[0], rows * 16), C))

        def _get_data(self, selection):
            return np.asarray(self._source[selection], dtype=np.float32)

        def _get_maxshape(self):
            return self._source.shape

        def _get_dtype(self):
            return np.dtype("float32")

    return RowBlocks(arr)


def export_nwb(dataset: str | Path, out: str | Path, *, overwrite: bool = False,
               log: Log = logger.info) -> dict:
    """Write a dataset as one NWB file (atomically); returns a summary dict."""
    pynwb = _pynwb()
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import ElectricalSeries, FilteredEphys

    try:
        ds = Dataset.open(dataset)
    except DatasetError as exc:
        raise RecordingError(str(exc)) from None
    out = Path(out)
    if out.exists() and not overwrite:
        raise RecordingError(f"{out} already exists (pass --overwrite to replace it)")
    if ds.sample_rate_hz != MUA_RATE_HZ:
        raise RecordingError(f"{dataset} runs at {ds.sample_rate_hz:g} Hz; export expects "
                             f"{MUA_RATE_HZ:g} Hz datasets")
    cmap = ds.channel_map
    units = ds.meta.get("units", "uV")
    signal = ds.meta.get("signal", "mua")
    file_meta = {"format": "phosphene-dataset", "version": ds.meta.get("version"),
                 "source": ds.meta.get("source", {}), "channel_map": cmap.name,
                 "units": units, "signal": signal}
    for key in ("ideal_observer", "ideal_observer_all_trials", "normaliser", "window", "bin_ms"):
        if key in ds.meta:
            file_meta[key] = ds.meta[key]
    nwbfile = NWBFile(
        session_description=f"phosphene dataset {Path(dataset).name}: {len(ds.sessions)} sessions "
                            f"of {signal} at {ds.sample_rate_hz:g} Hz",
        identifier=str(uuid.uuid4()),
        session_start_time=dt.datetime.now(dt.UTC),
        notes=MARKER + json.dumps(file_meta, default=str),
        source_script="phosphene export nwb", source_script_file_name="phosphene/train/importers/nwb.py",
    )
    device = nwbfile.create_device(name="array", description=f"electrode array, map {cmap.name}")
    group = nwbfile.create_electrode_group(name="array", description=f"channel map {cmap.name}",
                                           location="unknown", device=device)
    nwbfile.add_electrode_column(name="grid_row", description="row on the array grid (-1: not a grid)")
    nwbfile.add_electrode_column(name="grid_col", description="column on the array grid (-1: not a grid)")
    for eid, r, c, x, y in zip(cmap.ids, cmap.rows, cmap.cols, cmap.x_um, cmap.y_um):
        nwbfile.add_electrode(id=int(eid), group=group, location="unknown", rel_x=float(x),
                              rel_y=float(y), grid_row=int(r), grid_col=int(c))
    region = nwbfile.create_electrode_table_region(region=list(range(cmap.n_channels)),
                                                   description="all electrodes, in the dataset's column order")
    module = nwbfile.create_processing_module(
        name="ecephys", description="phosphene MUA: common average reference, 500-5000 Hz band-pass, "
                                    "rectification, 200 Hz low-pass, 1 kHz average pooling")
    mua_cfg = MuaConfig()
    filtering = (f"MUA: CAR, clip {mua_cfg.clip_uv:g} uV, band-pass {mua_cfg.band_hz[0]:g}-"
                 f"{mua_cfg.band_hz[1]:g} Hz, rectify, low-pass {mua_cfg.lowpass_hz:g} Hz, pool to "
                 f"{mua_cfg.output_rate_hz:g} Hz")
    container = FilteredEphys(name="MUA") if units == "uV" else None
    if container is not None:  # attached first, so each series' electrodes link resolves
        module.add(container)
    t0, starts = 0.0, {}
    for order, s in enumerate(ds.sessions):
        starts[s.session] = t0
        marker = MARKER + json.dumps({"session": s.session, "kind": s.kind, "day": s.day,
                                      "order": order,
                                      "units": units, "signal": signal,
                                      "electrodes": [int(i) for i in cmap.ids]})
        arr = ds.mua(s.session)
        data = _row_iterator(arr) if s.n_samples > 0 else np.zeros((0, cmap.n_channels), np.float32)
        name = f"MUA_{s.session}"
        if container is not None:
            container.add_electrical_series(ElectricalSeries(
                name=name, data=data, electrodes=region, rate=ds.sample_rate_hz, starting_time=t0,
                conversion=1e-6, filtering=filtering, comments=marker,
                description=f"{s.kind} session {s.session}, day {s.day}: MUA in uV (x 1e-6 = V)"))
        else:
            module.add(TimeSeries(name=name, data=data, unit=units, rate=ds.sample_rate_hz,
                                  starting_time=t0, comments=marker,
                                  description=f"{s.kind} session {s.session}, day {s.day}: {signal}"))
        t0 = round(t0 + s.n_samples / ds.sample_rate_hz + SESSION_GAP_S, 3)
    tr = ds.trials
    if len(tr):
        window = ds.window_spec
        stop_after_s = (window.offset_ms + window.window_ms) / 1000.0
        for name, desc in (("session", "phosphene session id"),
                           ("onset_sample", "stimulation onset, sample index in the session at 1 kHz"),
                           ("electrode", "stimulated electrode id (electrodes table id)"),
                           ("current_ua", "stimulation current in uA"),
                           ("perceived", "1 perceived, 0 missed, -1 unknown"),
                           ("p_true", "ground-truth P(perceived) (virtual cortex; NaN otherwise)")):
            nwbfile.add_trial_column(name=name, description=desc)
        order = sorted(range(len(tr)), key=lambda i: starts[str(tr.session[i])]
                       + tr.onset_sample[i] / ds.sample_rate_hz)
        for i in order:
            start = starts[str(tr.session[i])] + int(tr.onset_sample[i]) / ds.sample_rate_hz
            nwbfile.add_trial(start_time=start, stop_time=start + stop_after_s,
                              session=str(tr.session[i]), onset_sample=int(tr.onset_sample[i]),
                              electrode=int(tr.electrode[i]), current_ua=float(tr.current_ua[i]),
                              perceived=int(tr.perceived[i]), p_true=float(tr.p_true[i]))
    log(f"writing {out} ({len(ds.sessions)} sessions, {len(tr)} trials)")
    try:
        with atomic_path(out, suffix=".nwb") as tmp, NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
    except OSError as exc:
        raise RecordingError(f"could not write {out}: {exc}") from None
    return {"nwb": str(out), "dataset": str(dataset), "sessions": len(ds.sessions),
            "trials": len(tr), "n_channels": cmap.n_channels, "units": units,
            "writer": f"pynwb {pynwb.__version__}", "bytes": out.stat().st_size}
