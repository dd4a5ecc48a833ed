"""Latency statistics in constant memory, and facts about the machine (CPU, RSS).

A bedside run lasts hours, so per-decision latencies go into a fixed log-spaced histogram
(1 % wide bins, exact count/mean/std/max) instead of a growing list; percentiles read from
it are within one bin (1 %) of the exact value. Benchmarks with a few thousand runs use
`summarise_us` on the exact samples instead.
"""

from __future__ import annotations

import math
import os
import platform
import resource

import numpy as np

__all__ = [
    "PERCENTILE_KEYS",
    "LatencyHistogram",
    "cpu_model",
    "cpu_name",
    "peak_rss_mb",
    "rss_mb",
    "summarise_us",
]

PERCENTILE_KEYS = ("mean", "std", "p50", "p90", "p99", "max")


class LatencyHistogram:
    """Running latency statistics in microseconds, O(1) memory.

    add(us) is a handful of float operations (no allocation), so it can sit on the
    decision path. Bins are geometric with ratio `ratio` from `low_us` to `high_us`;
    values outside land in the first/last bin (max stays exact).
    """

    def __init__(self, *, low_us: float = 1.0, high_us: float = 1e8, ratio: float = 1.01):
        self._log_low = math.log(low_us)
        self._log_ratio = math.log(ratio)
        self.n_bins = math.ceil((math.log(high_us) - self._log_low) / self._log_ratio) + 1
        self._low_us, self._ratio = low_us, ratio
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self.counts[:] = 0
        self.count = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self.max_us = 0.0

    def add(self, us: float) -> None:
        us = float(us)
        index = int((math.log(us) - self._log_low) / self._log_ratio) if us > self._low_us else 0
        self.counts[min(index, self.n_bins - 1)] += 1
        self.count += 1
        self._sum += us
        self._sum_sq += us * us
        self.max_us = max(self.max_us, us)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in us: the geometric centre of the bin holding it."""
        if self.count == 0:
            return float("nan")
        rank = q / 100.0 * self.count
        index = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1), side="left"))
        centre = self._low_us * self._ratio ** (index + 0.5) if index > 0 else self._low_us
        return min(centre, self.max_us)

    def summary(self) -> dict[str, float]:
        """{count, mean, std, p50, p90, p99, max} in us (NaN when empty)."""
        if self.count == 0:
            nan = float("nan")
            return {"count": 0, **{k: nan for k in PERCENTILE_KEYS}}
        mean = self._sum / self.count
        var = max(self._sum_sq / self.count - mean * mean, 0.0)
        return {"count": self.count, "mean": mean, "std": math.sqrt(var),
                "p50": self.percentile(50), "p90": self.percentile(90),
                "p99": self.percentile(99), "max": self.max_us}


def summarise_us(samples_us) -> dict[str, float]:
    """{mean, std, p50, p90, p99, max} of exact samples in us (benchmark runs)."""
    x = np.asarray(samples_us, dtype=np.float64)
    if x.size == 0:
        return {k: float("nan") for k in PERCENTILE_KEYS}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "std": float(x.std()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "max": float(x.max())}


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. getrusage's ru_maxrss
    does not: a runtime started by a large parent (the demo, with torch loaded) would
    report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux; arm boards give Model/Hardware)."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    name = value.strip()
                    if key.strip() == "model name":
                        break
    except OSError:
        pass
    return name or platform.processor() or platform.machine()


def cpu_model() -> str:
    """The CPU's model name with the core count and architecture."""
    return f"{cpu_name()} ({os.cpu_count()} cores, {platform.machine()})"
