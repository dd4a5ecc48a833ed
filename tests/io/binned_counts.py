"""Binned spike counts with known rates, written by the tests themselves (never downloaded).

`make_counts` draws Poisson counts per bin for units whose rates span sparse (< 1 spike/s)
to busy (tens of spikes/s), under a slow shared gain, with behavioural events whose label
raises the rate of a known subset of units for a known time after the event. The tests,
bench/bench_binned_counts.py and the example in docs/dataset.md all build their recordings
with it (the doc inlines the same few lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Counts:
    counts: np.ndarray  # (n_bins, n_units) float64 counts per bin
    rates_hz: np.ndarray  # (n_units,) baseline rate of each unit
    modulated: np.ndarray  # (n_units,) bool: units whose rate the label raises
    event_bins: np.ndarray  # (n_events,) bin index of each event (onset at the bin's start)
    labels: np.ndarray  # (n_events,) 0/1
    bin_ms: float

    @property
    def event_times_s(self) -> np.ndarray:
        return self.event_bins * self.bin_ms / 1000.0

    def trials_csv(self, path, *, label_column: str = "choice", stim_columns: bool = False,
                   time_column: str = "time_s") -> None:
        """Write the events as a trials table: time, label (and electrode/current if asked)."""
        head = [time_column, label_column] + (["electrode", "current_ua"] if stim_columns else [])
        rows = [",".join(head)]
        for t, y in zip(self.event_times_s, self.labels):
            rows.append(",".join([f"{t:.3f}", str(int(y))] + (["1", "0"] if stim_columns else [])))
        path.write_text("\n".join(rows) + "\n")


def make_counts(*, n_units: int = 24, bin_ms: float = 50.0, rest_s: float = 120.0,
                task_s: float = 240.0, iti_s: float = 1.5, rate_lo_hz: float = 0.3,
                rate_hi_hz: float = 40.0, modulated_fraction: float = 0.3, gain: float = 1.0,
                response_ms: float = 300.0, drift: float = 0.3, seed: int = 0) -> Counts:
    """Poisson counts (bins x units): `rest_s` seconds without events, then `task_s` with one
    event every ~`iti_s` seconds (on a bin edge). Rates are log-uniform in
    [rate_lo_hz, rate_hi_hz]; a slow shared gain exp(drift * OU(tau 5 s)) modulates every
    unit; on label-1 events the modulated units fire (1 + gain) x their rate for
    `response_ms` after the event.
    """
    rng = np.random.default_rng(seed)
    w = bin_ms / 1000.0
    n_bins = round((rest_s + task_s) / w)
    rates = np.exp(rng.uniform(np.log(rate_lo_hz), np.log(rate_hi_hz), n_units))
    modulated = np.zeros(n_units, dtype=bool)
    modulated[rng.choice(n_units, max(1, round(modulated_fraction * n_units)), replace=False)] = True
    # slow shared state: an Ornstein-Uhlenbeck process with a 5 s time constant
    a = np.exp(-w / 5.0)
    ou = np.zeros(n_bins)
    noise = rng.standard_normal(n_bins) * np.sqrt(1 - a * a)
    for t in range(1, n_bins):
        ou[t] = a * ou[t - 1] + noise[t]
    lam = rates[None, :] * w * np.exp(drift * ou[:, None] - drift ** 2 / 2)
    first = round(rest_s / w) + round(1.0 / w)
    step = round(iti_s / w)
    event_bins = []
    b = first
    while b + round(1.0 / w) < n_bins:
        event_bins.append(b)
        b += step + int(rng.integers(0, max(1, step // 3)))
    event_bins = np.asarray(event_bins, dtype=np.int64)
    labels = rng.integers(0, 2, len(event_bins))
    resp = max(1, round(response_ms / bin_ms))
    for b, y in zip(event_bins, labels):
        if y:
            lam[b:b + resp, modulated] *= 1.0 + gain
    counts = rng.poisson(lam).astype(np.float64)
    return Counts(counts, rates, modulated, event_bins, labels, float(bin_ms))
