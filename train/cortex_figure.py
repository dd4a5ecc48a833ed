"""The virtual cortex at a glance: one figure a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phosphene.dataset import Dataset
from phosphene.io import atomic_path

__all__ = ["plot_virtual_cortex"]


def plot_virtual_cortex(ds: Dataset, out_png: str | Path, *, seconds: float = 3.0) -> Path:
    """Write a 3-panel PNG: MUA over the array, a stimulation trial, psychometric curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = ds.sample_rate_hz
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.5, 1.0, 1.0]})

    # A: a few seconds of resting MUA, channels ordered by array position
    rest = ds.sessions_of("resting")[0]
    n = int(min(seconds * fs, rest.n_samples))
    x = np.asarray(ds.mua(rest.session)[:n], dtype=np.float32)
    order = np.lexsort((ds.channel_map.cols, ds.channel_map.rows))
    z = (x - np.median(x, 0)) / (np.std(x, 0) + 1e-6)
    ax = axes[0]
    im = ax.imshow(z[:, order].T, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3,
                   extent=[0, n / fs, len(order), 0], interpolation="nearest")
    ax.set(xlabel="time (s)", ylabel="electrode (row-major on the array)",
           title=f"Resting MUA, session {rest.session} (z-scored per channel)")
    fig.colorbar(im, ax=ax, fraction=0.03, label="z")

    # B: one stimulation trial, MUA at the stimulated electrode and neighbours
    ax = axes[1]
    tr = ds.task_trials("psychometric") if ds.sessions_of("psychometric") else None
    if tr is not None and len(tr):
        k = int(np.argmax(tr.current_ua))
        sid, onset, e = tr.session[k], int(tr.onset_sample[k]), int(tr.electrode[k])
        seg = np.asarray(ds.mua(sid)[max(0, onset - 300): onset + 600], dtype=np.float32)
        t_ms = (np.arange(len(seg)) - min(300, onset)) * 1000 / fs
        d = ds.channel_map.distances_um()[ds.channel_map.index_of(e)]
        for label, sel, color in (("stimulated", d == 0, "C3"), ("< 600 um", (d > 0) & (d < 600), "C1"),
                                  ("> 2 mm", d > 2000, "C0")):
            ax.plot(t_ms, seg[:, sel].mean(1), color=color, label=label, lw=1)
        ax.axvspan(0, 170, color="0.85", label="artifact (blanked)")
        ax.axvspan(170, 298, color="C2", alpha=0.15, label="decoded window")
        ax.set(xlabel="time from onset (ms)", ylabel="MUA (uV)", yscale="log",
               title=f"Stimulation: electrode {e}, {tr.current_ua[k]:g} uA")
        ax.legend(fontsize=7, loc="upper right")

    # C: psychometric curves (empirical) per electrode
    ax = axes[2]
    if tr is not None and len(tr):
        for e in np.unique(tr.electrode)[:12]:
            sel = tr.electrode == e
            cur = np.unique(tr.current_ua[sel])
            frac = [tr.perceived[sel & (tr.current_ua == c)].mean() for c in cur]
            ax.plot(cur, frac, marker="o", ms=3, lw=1, alpha=0.8, label=str(e))
        ax.set(xscale="log", xlabel="current (uA)", ylabel="fraction perceived",
               title="Psychometric curves (per electrode)", ylim=(-0.05, 1.05))
        ax.legend(fontsize=6, ncol=2, title="electrode", title_fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
