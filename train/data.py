"""Windows for training and probing, drawn from memory-mapped normalised sessions.

Every array here is time-major like the dataset: a window is `(T, C)` and a batch of
windows `(N, T, C)`. Nothing loads a whole dataset: the sampler keeps one memory map per
session (the normalised cache of `Dataset.normalised`) and copies out only the rows a
batch needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phosphene.dataset import Dataset, Trials
from phosphene.errors import ConfigError, InputError
from phosphene.signal import PRE_STIMULUS, NormaliserConfig, WindowSpec

__all__ = ["Source", "WindowSampler", "check_spec", "split_sessions", "trial_windows"]

log = logging.getLogger(__name__)


def check_spec(ds: Dataset, spec: WindowSpec) -> None:
    """Raise ValueError when the dataset's sample rate does not match the window timing."""
    if abs(ds.sample_rate_hz - spec.sample_rate_hz) > 1e-6:
        raise InputError(f"dataset {ds.path} is sampled at {ds.sample_rate_hz:g} Hz but the "
                         f"window spec expects {spec.sample_rate_hz:g} Hz: resample the data "
                         "or use a WindowSpec with the dataset's rate")


@dataclass(frozen=True)
class Source:
    """A stretch of one session that windows may be drawn from: rows [start, stop)."""

    session: str
    start: int
    stop: int

    @property
    def n_samples(self) -> int:
        return self.stop - self.start


def split_sessions(ds: Dataset, *, kind: str = "resting", val_days: int = 4,
                   warmup_samples: int = 0) -> tuple[list[Source], list[Source]]:
    """Train/validation sources: validation = the sessions of the last recording days.

    The paper holds out the last 4 of 96 days. With few days the held-out share is capped
    at a quarter of the days (at least one); with a single day the last session is held
    out; with a single session its last 10% is. Warm-up rows (NaN in the normalised data)
    are excluded from every source.
    """
    sessions = ds.sessions_of(kind)
    if not sessions:
        raise InputError(f"dataset {ds.path} has no {kind} sessions to pretrain on "
                         f"(it has: {', '.join(sorted({s.kind for s in ds.sessions})) or 'none'})")

    def source(s, start=0, stop=None) -> Source:
        return Source(s.session, max(start, warmup_samples), s.n_samples if stop is None else stop)

    days = sorted({s.day for s in sessions})
    if len(days) >= 2:
        n_val = max(1, min(val_days, len(days) // 4))
        val_set = set(days[-n_val:])
        train = [source(s) for s in sessions if s.day not in val_set]
        val = [source(s) for s in sessions if s.day in val_set]
    elif len(sessions) >= 2:
        train, val = [source(s) for s in sessions[:-1]], [source(sessions[-1])]
    else:
        s = sessions[0]
        cut = warmup_samples + int(0.9 * (s.n_samples - warmup_samples))
        train, val = [source(s, stop=cut)], [source(s, start=cut)]
    return train, val


class WindowSampler:
    """Random (T, C) windows from normalised sessions.

    sample(n) -> (x: (n, T, C) float32, session_index: (n,) int64). A window start is
    uniform over all valid starts of all sources, so long sessions are drawn from more.
    `session_index` maps each session id through `session_index_map` (sessions not in the
    map get `unknown_index`).
    """

    def __init__(self, ds: Dataset, sources: list[Source], *, spec: WindowSpec,
                 norm_config: NormaliserConfig, session_index_map: dict[str, int],
                 unknown_index: int, seed: int = 0):
        check_spec(ds, spec)
        self.window_samples = spec.window_samples
        self.sources = [s for s in sources if s.n_samples >= spec.window_samples]
        if not self.sources:
            raise InputError(f"no session in {ds.path} is long enough for one "
                             f"{spec.window_samples}-sample window after the normaliser's "
                             f"{norm_config.warmup_samples}-sample warm-up")
        self.arrays = {s.session: ds.normalised(s.session, norm_config) for s in self.sources}
        self.n_starts = np.array([s.n_samples - spec.window_samples + 1 for s in self.sources])
        self.cum_starts = np.cumsum(self.n_starts)
        self.index = np.array([session_index_map.get(s.session, unknown_index)
                               for s in self.sources], dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    @property
    def n_windows(self) -> int:
        """Distinct window starts available."""
        return int(self.cum_starts[-1])

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        flat = self.rng.integers(0, self.n_windows, size=n)
        which = np.searchsorted(self.cum_starts, flat, side="right")
        offsets = flat - np.concatenate([[0], self.cum_starts[:-1]])[which]
        return self._gather(which, offsets)

    def fixed(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A reproducible set of n windows (validation), independent of the sampler state."""
        saved, self.rng = self.rng, np.random.default_rng(seed)
        try:
            return self.sample(n)
        finally:
            self.rng = saved

    def _gather(self, which: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        T = self.window_samples
        first = self.arrays[self.sources[0].session]
        x = np.empty((len(which), T, first.shape[1]), dtype=np.float32)
        for i, (w, off) in enumerate(zip(which, offsets)):
            src = self.sources[w]
            start = src.start + int(off)
            x[i] = self.arrays[src.session][start:start + T]
        if not np.isfinite(x).all():  # warm-up rows are excluded, so this is a real fault
            raise InputError("a sampled window contains NaN/inf: the normalised cache may be "
                             "stale or the warm-up longer than the NormaliserConfig says")
        return x, self.index[which]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def trial_windows(ds: Dataset, task: str, spec: WindowSpec,
                  norm_config: NormaliserConfig | None = None, *,
                  normalised: Callable[[str], np.ndarray] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, Trials]:
    """Triggered windows of one task's labelled stimulation trials.

    The task picks the trials and the window (`Dataset.task_window`: "threshold_pre" is
    the threshold trials' window that ends at onset; a task named on import may have its
    own offset).
    Returns X: (N, T, C) float32 normalised MUA from the window's `triggered_window(onset)`,
    y: (N,) int64 (1 perceived, 0 missed) and the matching Trials (same order, so
    `trials.split_80_20()` gives the paper's split). Trials without a label, whose window
    runs past the session end, or that fall in the normaliser warm-up are dropped (logged).
    `normalised(session_id)` replaces `ds.normalised` as the source of the normalised
    session (quantize passes the session as it arrives through the wire). norm_config None:
    the dataset's own (`Dataset.normaliser_config`).
    """
    check_spec(ds, spec)
    if norm_config is None:
        norm_config = ds.normaliser_config
    kind, spec = ds.task_window(task, spec)
    if kind not in ds.tasks:
        raise ConfigError(f"dataset {ds.path} has no task {kind!r}: its tasks are "
                          f"{', '.join(ds.tasks) or 'none'} (each also with {PRE_STIMULUS}, "
                          "the window before onset)")
    trials = ds.task_trials(kind)
    if len(trials) == 0:
        raise InputError(f"dataset {ds.path} has no {kind} trials")
    T, C = spec.window_samples, ds.n_channels
    X = np.empty((len(trials), T, C), dtype=np.float32)
    keep = np.zeros(len(trials), dtype=bool)
    reasons = {"unlabelled": 0, "past the session end": 0, "in the normaliser warm-up": 0,
               "non-finite": 0}
    for sid in np.unique(trials.session):
        arr = normalised(str(sid)) if normalised else ds.normalised(str(sid), norm_config)
        for i in np.flatnonzero(trials.session == sid):
            start, stop = spec.triggered_window(int(trials.onset_sample[i]))
            if trials.perceived[i] < 0:
                reasons["unlabelled"] += 1
                continue
            if stop > arr.shape[0]:
                reasons["past the session end"] += 1
                continue
            if start < norm_config.warmup_samples:
                reasons["in the normaliser warm-up"] += 1
                continue
            X[i] = arr[start:stop]
            keep[i] = bool(np.isfinite(X[i]).all())
            reasons["non-finite"] += int(not keep[i])
    dropped = int((~keep).sum())
    why = ", ".join(f"{n} {r}" for r, n in reasons.items() if n)
    where = (f"(window {spec.window_ms:g} ms from {spec.offset_ms:g} ms after onset; warm-up: "
             f"the first {norm_config.warmup_samples / spec.sample_rate_hz:g} s of each session)")
    if dropped:
        log.warning("%s: dropped %d of %d trials: %s %s", task, dropped, len(trials), why, where)
    if not keep.any():
        raise InputError(f"no usable {task} trial windows in {ds.path}: all {len(trials)} "
                         f"trials dropped ({why}) {where}"
                         + ("; a trials table's label column is named with --label-column on "
                            "import" if reasons["unlabelled"] == len(trials) else ""))
    trials = trials.select(keep)
    return X[keep], trials.perceived.astype(np.int64), trials
