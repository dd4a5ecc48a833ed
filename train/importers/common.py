"""What every import path shares: trials, channel maps, the chunked signal pipeline, output.

An importer reads a recording as (n, C) blocks and hands them to `convert_session`,
which runs them through the one signal definition (phosphene.signal) into a session
memory map at 1 kHz. Nothing here holds a whole recording in memory.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from phosphene.dataset import (
    NO_ELECTRODE,
    Dataset,
    DatasetError,
    DatasetWriter,
    is_session_kind,
    task_name_problem,
)
from phosphene.errors import PhospheneError
from phosphene.geometry import ChannelMap, map_for_channels
from phosphene.signal import (
    MUA_RATE_HZ,
    NormaliserConfig,
    WindowSpec,
    interpolate_blanked,
)

__all__ = [
    "DEFAULT_BLANK_MS",
    "INPUT_KINDS",
    "ImportReport",
    "Log",
    "RecordedEvent",
    "RecordingError",
    "SessionSpec",
    "collecting",
    "convert_session",
    "decode_digital_word",
    "grid_from_positions",
    "output_samples",
    "parse_label",
    "parse_stim_comment",
    "read_trials_csv",
    "resolve_channel_map",
    "safe_session_id",
    "split_session",
    "window_from_options",
    "write_import",
]

logger = logging.getLogger(__name__)

Log = Callable[[str], None]

# Paper: 50 pulses at 300 Hz is a 167 ms train; the artifact lasts that long.
DEFAULT_BLANK_MS = 167.0
INPUT_KINDS = ("broadband", "mua", "binned")
# Broadband is read this many seconds at a time: ~25 MB of float64 per copy for 96
# channels at 30 kHz, and the filters make a handful of copies.
DEFAULT_CHUNK_S = 1.0
ASSUMED = "-assumed"  # suffix of a map's name when its positions were made up (no --map)


class RecordingError(PhospheneError, ValueError):
    """A recording or side file cannot be imported; the message names the file and the fix."""


@dataclass(frozen=True)
class RecordedEvent:
    """One stimulation on the recording's clock (before conversion to 1 kHz samples)."""

    time_s: float  # seconds on the file's clock
    electrode: int  # electrode id on the channel map
    current_ua: float
    perceived: int = -1  # 1 perceived, 0 missed, -1 unknown
    session: str = ""  # from a trials table; "" = whichever session contains time_s
    onset_sample: int | None = None  # exact 1 kHz onset when the source has it (NWB export)
    p_true: float = float("nan")


@dataclass
class SessionSpec:
    """One session to write: where its samples come from and how to convert them.

    read(start, stop) -> (stop - start, C) float64 block of the input, in `units`
    (uV for broadband/MUA, counts per bin for binned). t0_s: the file-clock time of the
    first input sample; events are placed relative to it.
    """

    session: str
    kind: str | None  # None: resting without trials, psychometric with trials
    day: int
    read: Callable[[int, int], np.ndarray]
    n_input: int
    rate_hz: float
    input_kind: str  # broadband | mua | binned
    t0_s: float = 0.0
    events: list[RecordedEvent] = field(default_factory=list)
    source: dict = field(default_factory=dict)


@dataclass
class ImportReport:
    """What an import wrote (printed by the CLI, JSON with --json)."""

    dataset: str
    format: str
    sessions: list[dict] = field(default_factory=list)
    n_channels: int = 0
    channel_map: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def collecting(log: Log) -> tuple[list[str], Log]:
    """Wrap a log so that its 'note: ...' and 'warning: ...' lines are also kept for the
    JSON report."""
    notes: list[str] = []

    def wrapped(message: str) -> None:
        if message.startswith("note: "):
            notes.append(message[len("note: "):])
        elif message.startswith("warning: "):
            notes.append(message)
        log(message)

    return notes, wrapped


# --------------------------------------------------------------------------------------
# Names, trials, comments
# --------------------------------------------------------------------------------------
_SESSION_RE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_session_id(name: str) -> str:
    """A session id usable as a file name: letters, digits, '.', '_' and '-' only."""
    sid = _SESSION_RE.sub("-", str(name)).strip("-.")
    if not sid:
        raise RecordingError(f"session id {name!r} has no usable characters; pass --session ID")
    return sid


_ALIASES = {
    "session": ("session", "session_id"),
    "time_s": ("time_s", "onset_s", "start_time", "time"),
    "electrode": ("electrode", "electrode_id", "stim_electrode", "channel"),
    "current_ua": ("current_ua", "current_uA", "current", "amplitude_ua"),
    "perceived": ("perceived", "detected"),
}


def _column(header: list[str], name: str) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    for alias in _ALIASES[name]:
        if alias.lower() in lower:
            return lower[alias.lower()]
    return None


def _perceived(value, where: str, name: str = "perceived") -> int:
    if value is None or (isinstance(value, str) and value.strip() in ("", "-1", "nan", "NaN")):
        return -1
    try:
        v = float(value)
    except (TypeError, ValueError):
        text = str(value).strip().lower()
        if text in ("true", "yes", "y", "perceived", "seen", "hit", "correct"):
            return 1
        if text in ("false", "no", "n", "missed", "unseen", "miss", "incorrect"):
            return 0
        raise RecordingError(f"{where}: {name} must be 0, 1 (or true/false) or empty, "
                             f"got {value!r}") from None
    if math.isnan(v) or v == -1:
        return -1
    if v not in (0.0, 1.0):
        raise RecordingError(f"{where}: {name} must be 0, 1 (or true/false) or empty, got {value!r}")
    return int(v)


parse_label = _perceived  # a 0/1 label cell (0/1, true/false, hit/miss, empty = unknown) -> 1/0/-1


def read_trials_csv(path: str | Path, *, label_column: str | None = None,
                    log: Log = logger.info) -> list[RecordedEvent]:
    """Read a trials table: one row a trial (a stimulation or any labelled event).

    Columns: time_s (seconds on the recording's clock; aliases in _ALIASES), the label
    (`label_column`, else perceived/detected; 0/1, true/false or empty = unknown), and
    optionally session, electrode and current_ua. A behavioural event has no electrode
    (stored as NO_ELECTRODE, -1) and no current (0 uA). A label column named but absent is
    an error naming the columns there are; a table without any label column imports with
    every trial unlabelled and says so loudly (a 'warning:' line on the log).
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"trials table not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path} is not a readable text file: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h for h in (reader.fieldnames or []) if h is not None]
    cols = {name: _column(header, name) for name in _ALIASES}
    if cols["time_s"] is None:
        raise RecordingError(f"{path}: trials table needs a time column (time_s, or one of "
                             f"{', '.join(_ALIASES['time_s'][1:])}: seconds on the recording's "
                             f"clock); found {', '.join(header) or 'no header'}")
    if label_column is not None:
        lower = {h.strip().lower(): h for h in header}
        if label_column.strip().lower() not in lower:
            raise RecordingError(f"{path}: --label-column {label_column!r} is not a column of the "
                                 f"trials table; its columns are {', '.join(header) or 'none'}")
        cols["perceived"] = lower[label_column.strip().lower()]
    label = cols["perceived"]
    if label is None:
        log(f"warning: {path} has no label column (perceived or detected; columns: "
            f"{', '.join(header)}): every trial imports UNLABELLED and probes cannot use them; "
            "pass --label-column NAME to name the column holding the 0/1 label")
    if (cols["electrode"] is None) != (cols["current_ua"] is None):
        have, lack = (("electrode", "current_ua") if cols["current_ua"] is None
                      else ("current_ua", "electrode"))
        raise RecordingError(f"{path}: the trials table has a {have} column but no {lack} "
                             f"column; give both (a stimulation) or neither (a behavioural event)")
    events = []
    for line, row in enumerate(reader, start=2):
        where = f"{path} line {line}"
        try:
            time_s = float(row[cols["time_s"]])
        except (TypeError, ValueError):
            raise RecordingError(f"{where}: column {cols['time_s']!r} must be a number (seconds), "
                                 f"got {row.get(cols['time_s'])!r}") from None
        electrode, current = NO_ELECTRODE, 0.0
        if cols["electrode"] is not None:
            try:
                electrode = int(float(row[cols["electrode"]]))
                current = float(row[cols["current_ua"]])
            except (TypeError, ValueError):
                raise RecordingError(f"{where}: {cols['electrode']} and {cols['current_ua']} must "
                                     "be numbers") from None
        if not (math.isfinite(time_s) and math.isfinite(current)):
            raise RecordingError(f"{where}: time and current_ua must be finite")
        perceived = _perceived(row.get(label) if label else None, where,
                               f"label column {label!r}" if label else "perceived")
        session = (row.get(cols["session"]) or "").strip() if cols["session"] else ""
        events.append(RecordedEvent(time_s, electrode, current, perceived, session))
    if not events:
        raise RecordingError(f"{path}: trials table has a header but no rows")
    if label is not None and all(e.perceived < 0 for e in events):
        log(f"warning: {path}: every value of the label column {label!r} is empty: all "
            f"{len(events)} trials import unlabelled and probes cannot use them")
    return events


_KV_RE = re.compile(r"([A-Za-z_]+)\s*[=:]\s*([-+0-9.eE]+|[A-Za-z]+)")


def parse_stim_comment(text: str) -> dict | None:
    """Parse a stimulation comment such as 'stim electrode=37 current_ua=20 perceived=1'.

    Returns {electrode, current_ua, perceived} or None when the text is not a
    stimulation comment (it names no electrode and current).
    """
    values = {k.lower(): v for k, v in _KV_RE.findall(text)}
    key = {name: next((a.lower() for a in _ALIASES[name] if a.lower() in values), None)
           for name in ("electrode", "current_ua", "perceived")}
    if key["electrode"] is None or key["current_ua"] is None:
        return None
    try:
        electrode = int(float(values[key["electrode"]]))
        current = float(values[key["current_ua"]])
    except ValueError:
        return None
    perceived = -1
    if key["perceived"] is not None:
        try:
            perceived = _perceived(values[key["perceived"]], "comment")
        except RecordingError:
            perceived = -1
    return {"electrode": electrode, "current_ua": current, "perceived": perceived}


def decode_digital_word(word: int) -> tuple[int, float] | None:
    """A digital-input word as (electrode, current_ua): low byte electrode, high byte uA.

    Word 0 (port cleared) is not a stimulation.
    """
    word = int(word) & 0xFFFF
    electrode, current = word & 0xFF, word >> 8
    if electrode == 0 or current == 0:
        return None
    return electrode, float(current)


# --------------------------------------------------------------------------------------
# Channel maps
# --------------------------------------------------------------------------------------
def grid_from_positions(x_um: np.ndarray, y_um: np.ndarray) -> tuple[list[int], list[int]]:
    """Grid rows/cols when positions sit on a regular lattice, else all -1."""
    x, y = np.asarray(x_um, float), np.asarray(y_um, float)
    steps = np.concatenate([np.diff(np.unique(x)), np.diff(np.unique(y))])
    steps = steps[steps > 1e-6]
    if not len(steps):  # one electrode, or all on one point: no lattice to read
        return ([0], [0]) if len(x) == 1 else ([-1] * len(x), [-1] * len(x))
    pitch = steps.min()
    cols, rows = (x - x.min()) / pitch, (y - y.min()) / pitch
    if np.allclose(cols, np.round(cols), atol=1e-3) and np.allclose(rows, np.round(rows), atol=1e-3):
        pairs = set(zip(np.round(rows).astype(int).tolist(), np.round(cols).astype(int).tolist()))
        if len(pairs) == len(x):
            return np.round(rows).astype(int).tolist(), np.round(cols).astype(int).tolist()
    return [-1] * len(x), [-1] * len(x)


def resolve_channel_map(file_ids: list[int], *, map_path: str | Path | None = None,
                        from_file: ChannelMap | None = None, log: Log = logger.info) -> ChannelMap:
    """The channel map for a recording whose columns carry `file_ids`, in that order.

    Priority: --map (its ids must be the file's ids), then geometry in the file, then a
    near-square grid in channel order (said on the log: positions are then made up).
    """
    file_ids = [int(i) for i in file_ids]
    if len(set(file_ids)) != len(file_ids):
        raise RecordingError(f"the recording lists an electrode id twice: {file_ids}")
    if map_path is not None:
        try:
            cmap = ChannelMap.load(map_path)
        except (OSError, ValueError) as exc:
            raise RecordingError(f"--map {map_path}: {exc}") from None
        if cmap.n_channels != len(file_ids):
            raise RecordingError(
                f"--map {map_path} has {cmap.n_channels} electrodes but the recording has "
                f"{len(file_ids)} channels (ids {_id_range(file_ids)}); give a map with one "
                "row per recorded channel")
        missing = sorted(set(file_ids) - set(cmap.ids))
        if missing:
            raise RecordingError(
                f"--map {map_path} does not list electrode ids {_short(missing)} that the "
                f"recording has (map ids {_id_range(cmap.ids)}); map ids must be the file's "
                "channel ids")
        return _reorder(cmap, file_ids)
    if from_file is not None:
        return from_file
    grid = map_for_channels(len(file_ids))
    log(f"note: no channel map given; placing the {len(file_ids)} electrodes on the "
        f"{grid.name} layout in channel order (positions are assumed, not measured); "
        "pass --map FILE (CSV/JSON/.cmp) for the array's real geometry")
    return ChannelMap(tuple(file_ids), grid.rows, grid.cols, grid.x_um, grid.y_um,
                      name=f"{grid.name}{ASSUMED}")


def _reorder(cmap: ChannelMap, ids: list[int]) -> ChannelMap:
    idx = [cmap.index_of(i) for i in ids]
    return ChannelMap(tuple(ids), tuple(cmap.rows[k] for k in idx), tuple(cmap.cols[k] for k in idx),
                      tuple(cmap.x_um[k] for k in idx), tuple(cmap.y_um[k] for k in idx),
                      name=cmap.name)


def _id_range(ids) -> str:
    ids = list(ids)
    return f"{min(ids)}..{max(ids)}" if ids else "none"


def _short(values: list, n: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:n])
    return text + (f", ... ({len(values)} in all)" if len(values) > n else "")


# --------------------------------------------------------------------------------------
# The chunked pipeline: input blocks -> 1 kHz session array
# --------------------------------------------------------------------------------------
def _ratio(rate_hz: float) -> tuple[str, int]:
    """('pool', k) when rate = k kHz, ('hold', k) when rate = 1/k kHz, else RecordingError."""
    r = rate_hz / MUA_RATE_HZ
    if abs(r - round(r)) < 1e-9 and round(r) >= 1:
        return "pool", round(r)
    inv = MUA_RATE_HZ / rate_hz
    if abs(inv - round(inv)) < 1e-9:
        return "hold", round(inv)
    raise RecordingError(
        f"a {rate_hz:g} Hz signal cannot be brought to {MUA_RATE_HZ:g} Hz by pooling or "
        f"holding whole samples (the rate must be k x 1000 Hz or 1000 / k Hz); resample it first")


def output_samples(spec: SessionSpec, *, bin_ms: int | None = None) -> int:
    """Samples at 1 kHz that `convert_session` writes for this input."""
    if spec.input_kind == "broadband":
        how, k = _ratio(spec.rate_hz)
        if how != "pool" or k < 2:
            raise RecordingError(
                f"session {spec.session}: broadband at {spec.rate_hz:g} Hz is too slow for the "
                "500-5000 Hz spiking band; MUA needs >= 2 kHz broadband (Blackrock ns3-ns6); "
                "a 1 kHz signal that is already MUA imports with --input-kind mua")
        return spec.n_input // k
    if spec.input_kind == "mua":
        how, k = _ratio(spec.rate_hz)
        return spec.n_input // k if how == "pool" else spec.n_input * k
    if spec.input_kind == "binned":
        return spec.n_input * _bin_samples(bin_ms)
    raise RecordingError(f"unknown input kind {spec.input_kind!r}; choose {', '.join(INPUT_KINDS)}")


def _bin_samples(bin_ms) -> int:
    if bin_ms is None or bin_ms <= 0 or abs(bin_ms - round(bin_ms)) > 1e-9:
        raise RecordingError(f"binned counts need a whole number of milliseconds per bin "
                             f"(--bin-ms), got {bin_ms!r}")
    return round(bin_ms)


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-touching intervals, so every interval's neighbours are real samples."""
    merged: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


def _check_finite(block: np.ndarray, start: int, spec: SessionSpec, channel_ids) -> None:
    from phosphene.dataset import first_non_finite

    if (found := first_non_finite(block)) is not None:
        t, c = found
        raise RecordingError(
            f"session {spec.session}: input sample {start + t} on electrode {channel_ids[c]} is "
            f"{block[t, c]}; NaN/inf samples cannot be imported (fill or cut the gap first)")


def convert_session(spec: SessionSpec, out: np.ndarray, *, channel_ids, blank_ms: float = DEFAULT_BLANK_MS,
                    bin_ms: int | None = None, chunk_s: float = DEFAULT_CHUNK_S,
                    progress: Callable[[float], None] | None = None) -> None:
    """Run one session's input through the signal definition into `out` (T, C) at 1 kHz.

    broadband: stimulation periods [onset, onset + blank_ms) are interpolated across
    (phosphene.signal.interpolate_blanked) and the result goes through MuaExtractor, block
    by block; MUA at k kHz is average-pooled, at 1/k kHz held; binned counts become a rate
    (count / bin width in s, spikes/s) held constant over each bin.
    """
    _n_out, C = out.shape
    if spec.input_kind == "broadband":
        _convert_broadband(spec, out, channel_ids, blank_ms, chunk_s, progress)
        return
    if spec.input_kind == "binned":
        width = _bin_samples(bin_ms)
        step = max(1, int(chunk_s * 60_000) // width)  # bins per block (~60 s at 1 kHz x chunk_s)
        for start in range(0, spec.n_input, step):
            stop = min(spec.n_input, start + step)
            counts = spec.read(start, stop)
            _check_finite(counts, start, spec, channel_ids)
            if (counts < 0).any():
                t, c = np.argwhere(counts < 0)[0]
                raise RecordingError(f"session {spec.session}: bin {start + t} on electrode "
                                     f"{channel_ids[c]} has a negative count ({counts[t, c]})")
            rate = counts * (1000.0 / width)  # spikes/s over the bin
            out[start * width:stop * width] = np.repeat(rate, width, axis=0)
            if progress:
                progress(stop / spec.n_input)
        return
    how, k = _ratio(spec.rate_hz)
    step = max(k, int(chunk_s * spec.rate_hz * 60) // k * k)  # whole pooling groups per block
    for start in range(0, spec.n_input, step):
        stop = min(spec.n_input, start + step)
        block = spec.read(start, stop)
        _check_finite(block, start, spec, channel_ids)
        if how == "pool":
            n = (stop - start) // k
            out[start // k:start // k + n] = block[:n * k].reshape(n, k, C).mean(axis=1)
        else:
            out[start * k:stop * k] = np.repeat(block, k, axis=0)
        if progress:
            progress(stop / spec.n_input)


def _convert_broadband(spec: SessionSpec, out: np.ndarray, channel_ids, blank_ms: float,
                       chunk_s: float, progress) -> None:
    C = out.shape[1]
    from phosphene.train.importers.mua import MuaExtractor

    extractor = MuaExtractor(n_channels=C, input_rate_hz=spec.rate_hz)
    blank = round(blank_ms * spec.rate_hz / 1000.0)
    intervals = []
    if blank > 0:
        for ev in spec.events:
            if ev.electrode == NO_ELECTRODE:  # a behavioural event: nothing to blank
                continue
            onset = round((ev.time_s - spec.t0_s) * spec.rate_hz)
            intervals.append((onset, onset + blank))
    intervals = [(max(0, a), min(spec.n_input, b)) for a, b in _merge(intervals)]
    intervals = [(a, b) for a, b in intervals if b > a]
    step = max(extractor.pool, int(chunk_s * spec.rate_hz))
    written = 0
    for start in range(0, spec.n_input, step):
        stop = min(spec.n_input, start + step)
        # An interval is interpolated from its two neighbouring samples: read whatever
        # part of an interval crossing this block's edges (plus one sample each side) so
        # each block gets exactly the values a whole-recording pass would give.
        lo, hi = start, stop
        inside = [(a, b) for a, b in intervals if a < stop and b > start]
        for a, b in inside:
            lo, hi = min(lo, a - 1), max(hi, b + 1)
        lo, hi = max(0, lo), min(spec.n_input, hi)
        block = spec.read(lo, hi)
        _check_finite(block, lo, spec, channel_ids)
        if inside:
            block = interpolate_blanked(block, [(a - lo, b - lo) for a, b in inside])
        mua = extractor.process(block[start - lo:stop - lo])
        out[written:written + len(mua)] = mua
        written += len(mua)
        if progress:
            progress(stop / spec.n_input)
    assert written == out.shape[0], (written, out.shape)


# --------------------------------------------------------------------------------------
# Writing (new dataset, or appending to one)
# --------------------------------------------------------------------------------------
def _onsets(spec: SessionSpec, n_out: int, cmap: ChannelMap) -> list[dict]:
    rows = []
    known = set(cmap.ids)
    for ev in spec.events:
        onset = ev.onset_sample
        if onset is None:
            onset = round((ev.time_s - spec.t0_s) * MUA_RATE_HZ)
        if not 0 <= onset < n_out:
            raise RecordingError(
                f"session {spec.session}: a stimulation at {ev.time_s:.3f} s lies outside the "
                f"recording ({spec.t0_s:.3f}..{spec.t0_s + n_out / MUA_RATE_HZ:.3f} s on the "
                "file's clock); check that trial times use the recording's clock")
        if ev.electrode not in known and ev.electrode != NO_ELECTRODE:
            raise RecordingError(
                f"session {spec.session}: stimulated electrode {ev.electrode} (at {ev.time_s:.3f} s) "
                f"is not on the channel map (ids {_id_range(cmap.ids)})")
        rows.append({"session": spec.session, "onset_sample": onset, "electrode": ev.electrode,
                     "current_ua": ev.current_ua, "perceived": ev.perceived, "p_true": ev.p_true})
    return rows


def write_import(out: str | Path, cmap: ChannelMap, specs: list[SessionSpec], *, report: ImportReport,
                 source: dict, units: str = "uV", signal: str = "mua", append: bool = False,
                 overwrite: bool = False, blank_ms: float = DEFAULT_BLANK_MS, bin_ms: int | None = None,
                 chunk_s: float = DEFAULT_CHUNK_S, extra_meta: dict | None = None,
                 normaliser: NormaliserConfig | None = None, window: WindowSpec | None = None,
                 log: Log = logger.info) -> Dataset:
    """Convert `specs` into a dataset at `out` (atomically), or append them to the dataset there.

    Appending rewrites the dataset with the old sessions copied block by block, so a
    crash leaves the old dataset untouched. `normaliser` (binned counts: the Poisson scale
    floor for the bin width) and `window` (the decoded window, when set on import) are
    recorded in dataset.json; appending keeps the dataset's bin width, normaliser and window
    length and refuses others. A window offset given with task sessions is also recorded
    for those tasks (dataset.json "tasks"): appending another task with its own offset
    keeps the dataset's window for the rest, so each task decodes the window it was
    imported with.
    """
    out = Path(out)
    old: Dataset | None = None
    if append and out.exists():
        try:
            old = Dataset.open(out)
        except DatasetError as exc:
            raise RecordingError(f"--append: {exc}") from None
        if cmap.name.endswith(ASSUMED) and old.channel_map.ids == cmap.ids:
            log(f"note: using {out}'s channel map ({old.channel_map.name}) for the appended sessions")
            cmap = old.channel_map
        _check_compatible(old, cmap, units, signal, out)
        _check_same_signal(old, bin_ms, normaliser, window, out)
        task_window = window
        if old.meta.get("window") or (window is not None and window != old.window_spec):
            window = old.window_spec  # the dataset's stays; a new offset is the task's own
        if normaliser is None and old.meta.get("normaliser"):
            normaliser = old.normaliser_config
        taken = {s.session for s in old.sessions}
        clash = [s.session for s in specs if s.session in taken]
        if clash:
            raise RecordingError(f"{out} already has session(s) {', '.join(clash)}; "
                                 "pass --session with a new id")
    else:
        task_window = window
    if out.exists() and not append and not overwrite:
        raise RecordingError(f"{out} already exists: pass --append to add sessions to it or "
                             "--overwrite to replace it")
    ids = [s.session for s in specs]
    if len(set(ids)) != len(ids):
        raise RecordingError(f"two sessions would both be called {ids}; pass distinct ids")
    sizes = [output_samples(s, bin_ms=bin_ms) for s in specs]
    if any(s.input_kind == "broadband" for s in specs) and cmap.n_channels < 2:
        raise RecordingError("MUA extraction subtracts the common average of the channels, which "
                             "leaves nothing of a single channel; import at least 2 channels")
    check_window = window or WindowSpec()
    check_norm = normaliser or NormaliserConfig()
    plan = []
    for spec, n_out in zip(specs, sizes):
        if n_out <= 0:
            raise RecordingError(f"session {spec.session} is empty (no samples at 1 kHz)")
        trials = _onsets(spec, n_out, cmap)
        kind = spec.kind or ("psychometric" if trials else "resting")
        if not is_session_kind(kind):
            raise RecordingError(f"session kind {kind!r}: {task_name_problem(kind)}")
        if spec.kind is None and trials:
            what = ("stimulation trials" if any(t["electrode"] != NO_ELECTRODE for t in trials)
                    else "event trials (no electrode)")
            log(f"note: session {spec.session} has {len(trials)} {what}; stored as "
                "kind 'psychometric' (pass --kind threshold for threshold-tracking sessions)")
        if kind == "resting" and trials:
            log(f"note: session {spec.session} is marked resting but has {len(trials)} "
                "stimulations; pretraining will see their artifacts")
        _report_unusable(spec.session, trials, n_out, task_window or check_window, check_norm, log)
        plan.append((spec, n_out, kind, trials))

    meta_source = {"imports": []}
    if old is not None:
        prev = old.meta.get("source", {})
        meta_source["imports"] = list(prev.get("imports", [])) if "imports" in prev else (
            [{"format": "existing", "source": prev}] if prev else [])
    meta_source["imports"].append(source)
    writer_map = old.channel_map if old is not None else cmap
    try:
        writer = DatasetWriter(out, writer_map, source=meta_source, overwrite=old is not None or overwrite)
    except (FileExistsError, OSError, ValueError) as exc:
        raise RecordingError(str(exc)) from None
    with writer as w:
        w.meta["units"], w.meta["signal"] = units, signal
        if signal == "binned-rate" and bin_ms:
            w.meta["bin_ms"] = float(bin_ms)
        if normaliser is not None:
            w.meta["normaliser"] = normaliser.to_dict()
        if window is not None:
            w.meta["window"] = {k: v for k, v in window.to_dict().items() if k != "sample_rate_hz"}
        tasks_meta = dict((old.meta.get("tasks") or {}) if old is not None else {})
        if task_window is not None:
            for _, _, kind, _ in plan:
                if kind != "resting":
                    tasks_meta[kind] = {"offset_ms": task_window.offset_ms}
        if tasks_meta:
            w.meta["tasks"] = tasks_meta
        if extra_meta:
            w.meta.update(extra_meta)
        if old is not None:
            _copy_sessions(old, w)
        for spec, n_out, kind, trials in plan:
            arr = w.add_session(spec.session, kind=kind, day=spec.day, n_samples=n_out)
            last = [time.monotonic()]

            def progress(frac: float, sid=spec.session, last=last) -> None:
                if frac >= 1.0 or time.monotonic() - last[0] >= 5.0:  # a line every 5 s at most
                    last[0] = time.monotonic()
                    log(f"  {sid}: {100 * frac:.0f}%")

            convert_session(spec, arr, channel_ids=writer_map.ids, blank_ms=blank_ms, bin_ms=bin_ms,
                            chunk_s=chunk_s, progress=progress)
            w.finish_session(arr)  # unmapped now: hours of output never sit in memory together
            w.add_trials(trials)
            report.sessions.append({"session": spec.session, "kind": kind, "day": spec.day,
                                    "n_samples": n_out, "duration_s": round(n_out / MUA_RATE_HZ, 3),
                                    "n_trials": len(trials), "input_kind": spec.input_kind,
                                    "input_rate_hz": spec.rate_hz, **spec.source})
    report.dataset = str(out)
    report.n_channels = writer_map.n_channels
    report.channel_map = writer_map.name
    return Dataset.open(out)


def _check_compatible(old: Dataset, cmap: ChannelMap, units: str, signal: str, out: Path) -> None:
    if old.sample_rate_hz != MUA_RATE_HZ:
        raise RecordingError(f"{out} runs at {old.sample_rate_hz:g} Hz, not {MUA_RATE_HZ:g} Hz")
    if old.channel_map.ids != cmap.ids:
        raise RecordingError(
            f"cannot append: {out} has {old.n_channels} electrodes (ids {_id_range(old.channel_map.ids)}) "
            f"but this recording has {cmap.n_channels} (ids {_id_range(cmap.ids)}); import into a new dataset")
    if not np.allclose(old.channel_map.positions_um(), cmap.positions_um(), atol=1e-3):
        raise RecordingError(f"cannot append: {out} places the electrodes differently from this "
                             "recording's map; pass the same --map as for the first import")
    if (old.meta.get("units", "uV"), old.meta.get("signal", "mua")) != (units, signal):
        raise RecordingError(f"cannot append {signal} in {units} to {out}, which holds "
                             f"{old.meta.get('signal', 'mua')} in {old.meta.get('units', 'uV')}")


def _check_same_signal(old: Dataset, bin_ms, normaliser: NormaliserConfig | None,
                       window: WindowSpec | None, out: Path) -> None:
    """Appending keeps one bin width, one normaliser and one decoded window per dataset."""
    if old.meta.get("signal") == "binned-rate" and bin_ms:
        have = old.bin_ms
        if have is not None and abs(have - float(bin_ms)) > 1e-9:
            raise RecordingError(
                f"cannot append {float(bin_ms):g} ms bins to {out}, which holds {have:g} ms bins "
                "(the normaliser's floor and the decoded window are set per dataset); rebin the "
                f"counts to {have:g} ms or import them into a new dataset")
    if normaliser is not None and old.meta.get("normaliser") and normaliser != old.normaliser_config:
        raise RecordingError(f"cannot append: {out} normalises with {old.normaliser_config.describe()} "
                             f"but this import asks for {normaliser.describe()}")
    if window is not None and window.window_samples != old.window_spec.window_samples:
        have = old.window_spec
        raise RecordingError(
            f"cannot append with --window-ms {window.window_ms:g}: {out} decodes "
            f"{have.window_ms:g} ms windows (the model's input length is one per dataset; "
            "--window-offset-ms alone may differ per task)")


def _report_unusable(session: str, trials: list[dict], n_out: int, window: WindowSpec,
                     norm: NormaliserConfig, log: Log) -> None:
    """Say at import which trials no probe will be able to use, and why."""
    if not trials:
        return
    unlabelled = sum(1 for t in trials if t["perceived"] < 0)
    labelled = [t for t in trials if t["perceived"] >= 0]
    starts = [t["onset_sample"] + window.offset_samples for t in labelled]
    warm = sum(1 for a in starts if a < norm.warmup_samples)
    past = sum(1 for a in starts if a >= norm.warmup_samples and a + window.window_samples > n_out)
    where = (f"(decoded window {window.window_ms:g} ms from {window.offset_ms:g} ms after each "
             "event)")
    if warm or past:
        parts = []
        if warm:
            parts.append(f"{warm} fall in the normaliser's warm-up (their window starts in the "
                         f"first {norm.warmup_samples / MUA_RATE_HZ:g} s of the session, before "
                         "any statistics exist)")
        if past:
            parts.append(f"{past} run past the session's end")
        log(f"warning: session {session}: of {len(labelled)} labelled trials, "
            f"{' and '.join(parts)} {where}; probes will skip them")
    if unlabelled:
        log(f"note: session {session}: {unlabelled} of {len(trials)} trials are unlabelled "
            "(probes skip them)")


def window_from_options(offset_ms: float | None, window_ms: float | None,
                        *, sample_rate_hz: float = MUA_RATE_HZ) -> WindowSpec | None:
    """The decoded window of --window-offset-ms / --window-ms (None when neither is given).

    A missing one keeps the paper's value (170 ms offset, 128 ms window). The window must be
    a whole number of 16 ms patches (the model's token).
    """
    if offset_ms is None and window_ms is None:
        return None
    base = WindowSpec(sample_rate_hz=sample_rate_hz)
    offset = base.offset_ms if offset_ms is None else float(offset_ms)
    length = base.window_ms if window_ms is None else float(window_ms)
    if not math.isfinite(offset):
        raise RecordingError(f"--window-offset-ms must be a number of ms (negative: the window "
                             f"starts before the event), got {offset:g}")
    samples = length * sample_rate_hz / 1000.0
    patch_ms = base.patch_samples * 1000.0 / sample_rate_hz
    if not math.isfinite(samples) or samples <= 0 or abs(samples - round(samples)) > 1e-9 \
            or round(samples) % base.patch_samples:
        lo = max(1, math.floor(length / patch_ms)) * patch_ms
        raise RecordingError(f"--window-ms {length:g} is not a whole number of {patch_ms:g} ms "
                             f"patches (the model's token); use e.g. {lo:g} or {lo + patch_ms:g}")
    return WindowSpec(sample_rate_hz=sample_rate_hz, window_samples=round(samples),
                      patch_samples=base.patch_samples, offset_ms=offset)


def split_session(spec: SessionSpec, at_s: float, *, log: Log = logger.info) -> list[SessionSpec]:
    """Cut one recording at `at_s` (seconds on its clock) into a resting part `<id>-rest`
    and the task part `<id>`, which keeps the trials. Trials before the cut are left out
    (said on the log). The cut falls on the nearest whole input sample (bin)."""
    k = round((at_s - spec.t0_s) * spec.rate_hz)
    if not 0 < k < spec.n_input:
        raise RecordingError(
            f"--split-at-s {at_s:g} s is outside the recording ({spec.t0_s:g}..."
            f"{spec.t0_s + spec.n_input / spec.rate_hz:g} s on its clock)")
    cut_s = spec.t0_s + k / spec.rate_hz
    if abs(cut_s - at_s) > 1e-9:
        log(f"note: --split-at-s {at_s:g} s falls inside an input sample; cutting at {cut_s:g} s")
    before = [e for e in spec.events if e.time_s < cut_s]
    if before:
        log(f"warning: {len(before)} of {len(spec.events)} trials lie before --split-at-s "
            f"{cut_s:g} s and are left out (the resting part carries no trials)")
    read = spec.read

    def read_task(a: int, b: int) -> np.ndarray:
        return read(a + k, b + k)

    rest = SessionSpec(safe_session_id(f"{spec.session}-rest"), "resting", spec.day, read, k,
                       spec.rate_hz, spec.input_kind, spec.t0_s, [],
                       {**spec.source, "part": f"before {cut_s:g} s (--split-at)"})
    task = SessionSpec(spec.session, spec.kind, spec.day, read_task, spec.n_input - k,
                       spec.rate_hz, spec.input_kind, cut_s,
                       [e for e in spec.events if e.time_s >= cut_s],
                       {**spec.source, "part": f"from {cut_s:g} s (--split-at)"})
    return [rest, task]


def _copy_sessions(old: Dataset, w: DatasetWriter, block: int = 1 << 18) -> None:
    for s in old.sessions:
        src = old.mua(s.session)
        dst = w.add_session(s.session, kind=s.kind, day=s.day, n_samples=s.n_samples)
        for start in range(0, s.n_samples, block):
            dst[start:start + block] = src[start:start + block]
        w.finish_session(dst)
    t = old.trials
    w.add_trials([{"session": str(t.session[i]), "onset_sample": int(t.onset_sample[i]),
                   "electrode": int(t.electrode[i]), "current_ua": float(t.current_ua[i]),
                   "perceived": int(t.perceived[i]), "p_true": float(t.p_true[i])}
                  for i in range(len(t))])
    for key in ("ideal_observer", "ideal_observer_all_trials"):
        if key in old.meta:
            w.meta[key] = old.meta[key]


def assign_events(events: list[RecordedEvent], spans: list[tuple[str, float, float]],
                  where: str) -> dict[str, list[RecordedEvent]]:
    """Give each event to the session named in it, else to the session whose [t0, t1) holds it.

    spans: [(session, t0_s, t1_s)]. Events naming a session not in `spans` are dropped
    when some event names an imported session (a table covering many recordings), and
    are an error when none does.
    """
    out: dict[str, list[RecordedEvent]] = {sid: [] for sid, _, _ in spans}
    named = [e for e in events if e.session]
    if named and not any(e.session in out for e in named):
        raise RecordingError(f"{where}: no trial names an imported session "
                             f"({', '.join(out)}); sessions in the table: "
                             f"{_short(sorted({e.session for e in named}))}")
    for ev in events:
        if ev.session:
            if ev.session in out:
                out[ev.session].append(ev)
            continue
        for sid, t0, t1 in spans:
            if t0 <= ev.time_s < t1:
                out[sid].append(ev)
                break
        else:
            raise RecordingError(
                f"{where}: a stimulation at {ev.time_s:.3f} s lies outside every recorded "
                f"segment ({', '.join(f'{a:.3f}..{b:.3f} s' for _, a, b in spans)}); check that "
                "trial times use the recording's clock")
    return out


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
