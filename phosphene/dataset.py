"""The dataset format every stage reads (docs/dataset.md is the written specification).

A dataset is a directory:

    dataset.json        format, version, sample rate, channel count, units, provenance
    channel_map.csv     id,row,col,x_um,y_um: one row per column of the sample arrays
    sessions.csv        session,kind,day,n_samples,file
    trials.csv          session,onset_sample,electrode,current_ua,perceived[,p_true]
    sessions/<id>.npy   (T, C) MUA in uV at the dataset's sample rate (float32 or float16)

Session arrays are opened as memory maps, so training draws random windows from hours
of data without loading it. Normalised copies (the model's input) are derived on demand
by the one signal definition and cached under cache/.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phosphene.errors import PhospheneError
from phosphene.geometry import ChannelMap
from phosphene.io import atomic_dir, atomic_path, write_json, write_text
from phosphene.signal import PRE_STIMULUS, Normaliser, NormaliserConfig, WindowSpec, task_window

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "NO_ELECTRODE",
    "SESSION_KINDS",
    "TASKS",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "SessionInfo",
    "Trials",
    "first_non_finite",
    "is_session_kind",
    "task_name_problem",
]

FORMAT_NAME = "phosphene-dataset"
FORMAT_VERSION = 1
SESSION_KINDS = ("resting", "psychometric", "threshold")  # the virtual cortex's; any task name is valid
TASKS = ("psychometric", "threshold")  # the paper's two tasks, the defaults
_TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
TRIAL_FIELDS = ("session", "onset_sample", "electrode", "current_ua", "perceived", "p_true")
NO_ELECTRODE = -1  # trials.csv electrode of an event that stimulated nothing (a behavioural event)


class DatasetError(PhospheneError, ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message says which file."""


def task_name_problem(name: str) -> str | None:
    """Why `name` cannot name a task (a session kind with labelled trials), or None.

    A task name is lower-case letters, digits and underscores, starting with a letter (up
    to 40); "resting" is the unlabelled kind, and a trailing "_pre" is reserved for the
    window before onset (`phosphene.signal.task_window`).
    """
    if not _TASK_NAME.fullmatch(name):
        return (f"task name {name!r} must be lower-case letters, digits and '_', starting with a "
                "letter (at most 40)")
    if name == "resting":
        return "'resting' is the kind of unlabelled sessions, not a task"
    if name.endswith(PRE_STIMULUS):
        return f"task name {name!r} ends in {PRE_STIMULUS!r}, which names the window before onset"
    return None


def is_session_kind(kind: str) -> bool:
    """resting, or a valid task name (psychometric, threshold, or one named on import)."""
    return kind == "resting" or task_name_problem(kind) is None


@dataclass(frozen=True)
class SessionInfo:
    session: str
    kind: str  # resting, or the task its trials belong to (psychometric, threshold, or named)
    day: int  # recording day index (validation uses the last days)
    n_samples: int
    file: str  # relative to the dataset directory

    @property
    def duration_s(self) -> float:
        return self.n_samples / 1000.0


@dataclass(frozen=True)
class Trials:
    """Stimulation trials as parallel arrays (N,), ordered by session then onset."""

    session: np.ndarray  # str
    onset_sample: np.ndarray  # int64, stimulation onset in the session's samples
    electrode: np.ndarray  # int64, electrode id on the channel map, or NO_ELECTRODE (-1)
    current_ua: np.ndarray  # float64
    perceived: np.ndarray  # int8: 1 perceived, 0 missed, -1 unknown
    p_true: np.ndarray  # float64, ground-truth P(perceived) (virtual cortex only; NaN otherwise)

    def __len__(self) -> int:
        return len(self.onset_sample)

    def select(self, mask: np.ndarray) -> Trials:
        return Trials(*(getattr(self, f)[mask] for f in TRIAL_FIELDS))

    def split_80_20(self, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """The paper's split: per session, first 80% of trials train, last 20% test.

        Returns boolean masks (train, test) over these trials.
        """
        train = np.zeros(len(self), dtype=bool)
        for sid in np.unique(self.session):
            idx = np.flatnonzero(self.session == sid)
            idx = idx[np.argsort(self.onset_sample[idx], kind="stable")]
            n_train = int(np.floor(train_fraction * len(idx)))
            train[idx[:n_train]] = True
        return train, ~train


class Dataset:
    """Read access to a dataset directory. Construct with `Dataset.open(path)`."""

    def __init__(self, path: Path, meta: dict, channel_map: ChannelMap,
                 sessions: list[SessionInfo], trials: Trials):
        self.path = path
        self.meta = meta
        self.channel_map = channel_map
        self.sessions = sessions
        self.trials = trials
        self._by_id = {s.session: s for s in sessions}

    # --- opening and validation ----------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> Dataset:
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"dataset not found: {path}")
        if not path.is_dir():
            raise DatasetError(f"{path} is not a dataset directory (expected dataset.json inside)")
        meta_file = path / "dataset.json"
        if not meta_file.is_file():
            raise DatasetError(f"{path} has no dataset.json: not a phosphene dataset")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_file} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise DatasetError(f"{meta_file} is not a {FORMAT_NAME} file")
        version = meta.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DatasetError(f"{meta_file} has format version {version!r}; this phosphene "
                               f"reads version {FORMAT_VERSION} (upgrade phosphene)")
        try:
            rate = float(meta["sample_rate_hz"])
            n_channels = int(meta["n_channels"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{meta_file} must give sample_rate_hz and n_channels") from None
        if not (rate > 0 and np.isfinite(rate)) or n_channels <= 0:
            raise DatasetError(f"{meta_file}: sample rate and channel count must be positive")
        try:
            channel_map = ChannelMap.load(path / "channel_map.csv")
            channel_map = ChannelMap(channel_map.ids, channel_map.rows, channel_map.cols,
                                     channel_map.x_um, channel_map.y_um,
                                     name=str(meta.get("channel_map_name", "custom")))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path / 'channel_map.csv'}: {exc}") from None
        if channel_map.n_channels != n_channels:
            raise DatasetError(f"{path}: channel_map.csv has {channel_map.n_channels} electrodes "
                               f"but dataset.json says {n_channels} channels")
        sessions = _read_sessions(path)
        trials = _read_trials(path, {s.session for s in sessions}, channel_map)
        ds = cls(path, meta, channel_map, sessions, trials)
        for s in sessions:  # header check only: cheap, and catches truncated files
            ds._open_array(s)
        return ds

    def _open_array(self, s: SessionInfo) -> np.ndarray:
        file = self.path / s.file
        if not file.is_file():
            raise DatasetError(f"session {s.session}: sample file {file} is missing")
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DatasetError(f"session {s.session}: {file} is not a readable .npy array "
                               f"(truncated or corrupt?): {exc}") from None
        if arr.ndim != 2 or arr.shape[1] != self.n_channels:
            raise DatasetError(f"session {s.session}: {file} has shape {arr.shape}, expected "
                               f"(n_samples, {self.n_channels})")
        if arr.shape[0] != s.n_samples:
            raise DatasetError(f"session {s.session}: {file} has {arr.shape[0]} samples but "
                               f"sessions.csv says {s.n_samples}")
        if arr.dtype not in (np.float32, np.float16, np.float64):
            raise DatasetError(f"session {s.session}: {file} has dtype {arr.dtype}; "
                               "expected float16/32/64")
        return arr

    # --- properties ------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return float(self.meta["sample_rate_hz"])

    @property
    def n_channels(self) -> int:
        return int(self.meta["n_channels"])

    @property
    def normaliser_config(self) -> NormaliserConfig:
        """The normaliser this dataset's signal needs (dataset.json "normaliser"; MUA: the default).

        Binned-count imports record a Poisson scale floor for their bin width; pretraining
        starts from it and checkpoints, students and bundles carry it on.
        """
        d = self.meta.get("normaliser")
        if not d:
            return NormaliserConfig()
        try:
            return NormaliserConfig.from_dict(dict(d))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{self.path / 'dataset.json'}: normaliser {d!r} is not valid: "
                               f"{exc}") from None

    @property
    def window_spec(self) -> WindowSpec:
        """The decoded window set at import (dataset.json "window"), else the paper's:
        128 ms starting 170 ms after onset. Pretraining starts from it."""
        d = self.meta.get("window")
        if not d:
            return WindowSpec(sample_rate_hz=self.sample_rate_hz)
        try:
            return WindowSpec.from_dict({"sample_rate_hz": self.sample_rate_hz, **dict(d)})
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{self.path / 'dataset.json'}: window {d!r} is not valid: "
                               f"{exc}") from None

    @property
    def bin_ms(self) -> float | None:
        """Bin width of binned-count datasets (None for MUA)."""
        if self.meta.get("bin_ms"):
            return float(self.meta["bin_ms"])
        widths = {float(i["bin_ms"]) for i in self.meta.get("source", {}).get("imports", [])
                  if isinstance(i, dict) and i.get("bin_ms")}
        return widths.pop() if len(widths) == 1 else None

    @property
    def ideal_observer(self) -> dict:
        """{task: balanced accuracy of the ground-truth observer on the test split} if known."""
        return dict(self.meta.get("ideal_observer", {}))

    def evaluation(self) -> Dataset | None:
        """The evaluation set written beside this dataset (<path>/eval), or None.

        Its labelled trials come from new sessions of the same array and days and are never
        used for fitting or selection: every reported accuracy is measured on them.
        """
        rel = (self.meta.get("evaluation_set") or {}).get("path", "eval")
        path = self.path / rel
        if ".." in Path(rel).parts or not (path / "dataset.json").is_file():
            return None
        return Dataset.open(path)

    def session(self, session_id: str) -> SessionInfo:
        try:
            return self._by_id[session_id]
        except KeyError:
            raise DatasetError(f"no session {session_id!r} in {self.path}") from None

    def sessions_of(self, kind: str) -> list[SessionInfo]:
        return [s for s in self.sessions if s.kind == kind]

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this dataset has sessions of: the paper's two first, then named ones."""
        kinds = [s.kind for s in self.sessions if s.kind != "resting"]
        return tuple([t for t in TASKS if t in kinds]
                     + sorted({k for k in kinds if k not in TASKS}, key=kinds.index))

    @property
    def task_offsets_ms(self) -> dict[str, float]:
        """Window offsets set per task on import (dataset.json "tasks"); the others read
        `window_spec`'s."""
        out = {}
        for name, t in (self.meta.get("tasks") or {}).items():
            if isinstance(t, dict) and isinstance(t.get("offset_ms"), (int, float)):
                out[str(name)] = float(t["offset_ms"])
        return out

    def task_window(self, task: str, spec: WindowSpec | None = None) -> tuple[str, WindowSpec]:
        """(trial kind, window) a task decodes here (signal.task_window with this dataset's
        per-task offsets); spec: the model's window (default: the dataset's)."""
        return task_window(task, spec or self.window_spec, self.task_offsets_ms)

    def task_trials(self, task: str) -> Trials:
        """Trials of the sessions of one task (a kind: psychometric, threshold or named)."""
        ids = {s.session for s in self.sessions_of(task)}
        return self.trials.select(np.isin(self.trials.session, list(ids)))

    def mua(self, session_id: str) -> np.ndarray:
        """(T, C) memory map of a session's MUA in uV."""
        return self._open_array(self.session(session_id))

    def check_finite(self, session_id: str, chunk_samples: int = 1 << 18) -> None:
        """Raise DatasetError naming the first non-finite sample of a session."""
        arr = self.mua(session_id)
        for start in range(0, arr.shape[0], chunk_samples):
            block = np.asarray(arr[start:start + chunk_samples])
            if (found := first_non_finite(block)) is not None:
                t, c = found
                raise DatasetError(
                    f"session {session_id}: sample {start + t} on electrode "
                    f"{self.channel_map.ids[c]} is {block[t, c]} (NaN/inf is not valid MUA)")

    def normalised(self, session_id: str, config: NormaliserConfig | None = None) -> np.ndarray:
        """(T, C) float32 memory map of the session through the one normaliser (cached).

        config: None = the dataset's own (`normaliser_config`). The first
        `config.warmup_samples` rows are NaN (no statistics yet).
        """
        if config is None:
            config = self.normaliser_config
        s = self.session(session_id)
        key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        cache = self.path / "cache" / f"norm-{key}" / f"{s.session}.npy"
        if cache.is_file():
            try:
                arr = np.load(cache, mmap_mode="r")
                if arr.shape == (s.n_samples, self.n_channels):
                    return arr
            except (ValueError, OSError):
                pass  # a broken cache is rebuilt below
        src = self.mua(session_id)
        self.check_finite(session_id)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache, suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(s.n_samples, self.n_channels))
            norm = Normaliser(self.n_channels, config)
            step = 1 << 16
            for start in range(0, s.n_samples, step):
                out[start:start + step] = norm.process(np.asarray(src[start:start + step]))
            out.flush()
            del out
        return np.load(cache, mmap_mode="r")

    def summary(self) -> dict:
        """Everything `phosphene info` prints, as JSON-ready data."""
        by_kind = {}
        for kind in ("resting", *self.tasks):
            ss = self.sessions_of(kind)
            if not ss:
                continue
            tr = self.task_trials(kind) if kind != "resting" else None
            entry = {
                "sessions": len(ss),
                "days": len({s.day for s in ss}),
                "hours": round(sum(s.n_samples for s in ss) / self.sample_rate_hz / 3600, 4),
            }
            if tr is not None:
                labelled = tr.perceived >= 0
                stim = tr.electrode != NO_ELECTRODE
                entry["trials"] = len(tr)
                entry["labelled"] = int(labelled.sum())
                entry["perceived_fraction"] = (round(float(tr.perceived[labelled].mean()), 4)
                                               if labelled.any() else None)
                entry["electrodes"] = sorted(int(e) for e in np.unique(tr.electrode[stim]))
                entry["currents_ua"] = sorted(round(float(c), 2)
                                              for c in np.unique(tr.current_ua[stim]))
                if (~stim).any():
                    entry["events_without_electrode"] = int((~stim).sum())
                if kind in self.task_offsets_ms:
                    entry["window_offset_ms"] = self.task_offsets_ms[kind]
            by_kind[kind] = entry
        return {
            "path": str(self.path),
            "format_version": self.meta.get("version"),
            "source": self.meta.get("source", {}),
            "sample_rate_hz": self.sample_rate_hz,
            "n_channels": self.n_channels,
            "channel_map": self.channel_map.name,
            "units": self.meta.get("units", "uV"),
            "signal": self.meta.get("signal", "mua"),
            **({"bin_ms": self.bin_ms} if self.bin_ms else {}),
            "normaliser": self.normaliser_config.to_dict(),
            "window": {"offset_ms": self.window_spec.offset_ms,
                       "window_ms": self.window_spec.window_ms},
            "kinds": by_kind,
            "ideal_observer": self.ideal_observer,
        }


def first_non_finite(block: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first NaN/inf in a (T, C) block, or None when all are finite."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return None
    t, c = np.argwhere(bad)[0]
    return int(t), int(c)


def _read_csv(file: Path) -> list[dict]:
    if not file.is_file():
        raise DatasetError(f"{file} is missing")
    try:
        return list(csv.DictReader(io.StringIO(file.read_text(encoding="utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{file} is not a readable CSV file: {exc}") from None


def _read_sessions(path: Path) -> list[SessionInfo]:
    rows = _read_csv(path / "sessions.csv")
    sessions = []
    for i, r in enumerate(rows, start=2):
        try:
            s = SessionInfo(str(r["session"]), str(r["kind"]), int(r["day"]),
                            int(r["n_samples"]), str(r["file"]))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path / 'sessions.csv'} line {i}: expected "
                               "session,kind,day,n_samples,file") from None
        if not is_session_kind(s.kind):
            raise DatasetError(f"{path / 'sessions.csv'} line {i}: kind {s.kind!r}: "
                               f"{task_name_problem(s.kind)}")
        if s.n_samples < 0 or ".." in Path(s.file).parts or Path(s.file).is_absolute():
            raise DatasetError(f"{path / 'sessions.csv'} line {i}: bad n_samples or file path")
        sessions.append(s)
    if len({s.session for s in sessions}) != len(sessions):
        raise DatasetError(f"{path / 'sessions.csv'} lists a session id twice")
    return sessions


def _read_trials(path: Path, session_ids: set[str], channel_map: ChannelMap) -> Trials:
    file = path / "trials.csv"
    rows = _read_csv(file) if file.exists() else []
    cols: dict[str, list] = {f: [] for f in TRIAL_FIELDS}
    known_ids = set(channel_map.ids)
    for i, r in enumerate(rows, start=2):
        try:
            session = str(r["session"])
            onset = int(r["onset_sample"])
            electrode = int(r["electrode"])
            current = float(r["current_ua"])
            perceived = int(r["perceived"]) if r.get("perceived", "") not in ("", None) else -1
            p_true = float(r["p_true"]) if r.get("p_true", "") not in ("", None) else float("nan")
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{file} line {i}: expected "
                               "session,onset_sample,electrode,current_ua,perceived") from None
        if session not in session_ids:
            raise DatasetError(f"{file} line {i}: session {session!r} is not in sessions.csv")
        if electrode not in known_ids and electrode != NO_ELECTRODE:
            raise DatasetError(f"{file} line {i}: electrode {electrode} is not on the channel map "
                               f"(or {NO_ELECTRODE} for an event without one)")
        if perceived not in (-1, 0, 1) or not np.isfinite(current) or onset < 0:
            raise DatasetError(f"{file} line {i}: perceived must be 0/1, current finite, onset >= 0")
        for f, v in zip(TRIAL_FIELDS, (session, onset, electrode, current, perceived, p_true)):
            cols[f].append(v)
    return Trials(
        session=np.asarray(cols["session"], dtype=str),
        onset_sample=np.asarray(cols["onset_sample"], dtype=np.int64),
        electrode=np.asarray(cols["electrode"], dtype=np.int64),
        current_ua=np.asarray(cols["current_ua"], dtype=np.float64),
        perceived=np.asarray(cols["perceived"], dtype=np.int8),
        p_true=np.asarray(cols["p_true"], dtype=np.float64),
    )


class DatasetWriter:
    """Write a dataset atomically: it appears at `path` only when `close()` succeeds.

    with DatasetWriter(out, channel_map, source={...}) as w:
        arr = w.add_session("rest-000", kind="resting", day=0, n_samples=T)  # memmap to fill
        w.add_trials([...])
    """

    def __init__(self, path: str | os.PathLike, channel_map: ChannelMap, *,
                 sample_rate_hz: float = 1000.0, source: dict | None = None,
                 dtype: str = "float32", overwrite: bool = False):
        if np.dtype(dtype) not in (np.float32, np.float16):
            raise ValueError(f"dataset dtype must be float32 or float16, got {dtype}")
        self.path = Path(path)
        self.channel_map = channel_map
        self.sample_rate_hz = float(sample_rate_hz)
        self.dtype = np.dtype(dtype)
        self.meta: dict = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                           "sample_rate_hz": self.sample_rate_hz,
                           "n_channels": channel_map.n_channels, "units": "uV", "signal": "mua",
                           "channel_map_name": channel_map.name,
                           "source": source or {}}
        self._ctx = atomic_dir(self.path, overwrite=overwrite)
        self._tmp = self._ctx.__enter__()
        (self._tmp / "sessions").mkdir()
        self._sessions: list[SessionInfo] = []
        self._trials: list[dict] = []
        self._open: list[np.memmap] = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    def add_session(self, session: str, *, kind: str, day: int, n_samples: int) -> np.ndarray:
        """Create a session file and return a writable (n_samples, C) memory map."""
        if not is_session_kind(kind):
            raise ValueError(f"session kind {kind!r}: {task_name_problem(kind)}")
        if any(s.session == session for s in self._sessions):
            raise ValueError(f"session {session!r} added twice")
        rel = f"sessions/{session}.npy"
        arr = np.lib.format.open_memmap(self._tmp / rel, mode="w+", dtype=self.dtype,
                                        shape=(int(n_samples), self.channel_map.n_channels))
        self._sessions.append(SessionInfo(session, kind, int(day), int(n_samples), rel))
        self._open.append(arr)
        return arr

    def finish_session(self, arr: np.ndarray) -> None:
        """Flush and unmap a session array, so hours of data never sit in memory at once."""
        arr.flush()
        self._open = [a for a in self._open if a is not arr]

    def add_trials(self, trials: list[dict]) -> None:
        for t in trials:
            missing = [f for f in TRIAL_FIELDS[:5] if f not in t]
            if missing:
                raise ValueError(f"trial is missing {missing}")
            self._trials.append(t)

    def close(self) -> Dataset:
        for arr in self._open:
            arr.flush()
        self._open.clear()
        tmp = self._tmp
        write_json(tmp / "dataset.json", self.meta)
        write_text(tmp / "channel_map.csv", self.channel_map.to_csv())
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["session", "kind", "day", "n_samples", "file"])
        for s in self._sessions:
            w.writerow([s.session, s.kind, s.day, s.n_samples, s.file])
        write_text(tmp / "sessions.csv", out.getvalue())
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(TRIAL_FIELDS)
        for t in sorted(self._trials, key=lambda t: (t["session"], t["onset_sample"])):
            p = t.get("p_true", "")
            w.writerow([t["session"], int(t["onset_sample"]), int(t["electrode"]),
                        f"{float(t['current_ua']):.4g}", int(t["perceived"]),
                        "" if p in ("", None) or not np.isfinite(p) else f"{float(p):.6f}"])
        write_text(tmp / "trials.csv", out.getvalue())
        self._ctx.__exit__(None, None, None)
        return Dataset.open(self.path)

    def abort(self, *exc_info) -> None:
        self._open.clear()
        self._ctx.__exit__(*(exc_info or (RuntimeError, RuntimeError("aborted"), None)))


