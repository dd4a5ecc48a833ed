"""The paper's qualitative diagnostics, made into files and numbers.

- t-SNE of stimulation-trial latents coloured by stimulated electrode (point size by
  current) and by perceived / missed (PNG files).
- The spatial claim as a number: a Mantel permutation test of the correlation between
  the distance of electrode-mean latents and the distance of the electrodes on the array.
  The same test on raw MUA windows is reported beside it, because the evoked response
  itself spreads with distance: the latent should keep that structure, not invent it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from phosphene.dataset import Dataset
from phosphene.errors import InputError
from phosphene.io import atomic_path, write_json
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.data import trial_windows
from phosphene.train.probe import sklearn_threads

__all__ = [
    "electrode_distance_test",
    "embed_2d",
    "mantel_test",
    "plot_embedding",
    "run_diagnostics",
]

log = logging.getLogger(__name__)


def mantel_test(a: np.ndarray, b: np.ndarray, *, permutations: int = 999,
                seed: int = 0) -> dict:
    """Pearson r between the upper triangles of two (E, E) distance matrices, with a
    one-sided permutation p-value (rows and columns of `a` permuted together).

    p = (1 + #{r_perm >= r}) / (1 + permutations).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    E = a.shape[0]  # items (electrodes)
    if a.shape != (E, E) or b.shape != (E, E):
        raise ValueError(f"mantel_test needs two square matrices of one size, got {a.shape} "
                         f"and {b.shape}")
    if E < 3:
        raise ValueError(f"mantel_test needs at least 3 items, got {E}")
    iu = np.triu_indices(E, k=1)
    bv = b[iu] - b[iu].mean()
    bn = np.sqrt((bv ** 2).sum())

    def corr(m: np.ndarray) -> float:
        av = m[iu] - m[iu].mean()
        denom = np.sqrt((av ** 2).sum()) * bn
        return float((av * bv).sum() / denom) if denom > 0 else 0.0

    r = corr(a)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        perm = rng.permutation(E)
        hits += corr(a[np.ix_(perm, perm)]) >= r
    return {"r": r, "p_value": (1 + hits) / (1 + permutations), "permutations": permutations,
            "n_items": E}


def electrode_distance_test(features: np.ndarray, electrodes: np.ndarray, ds: Dataset, *,
                            permutations: int = 999, seed: int = 0) -> dict:
    """Mantel test: distance of electrode-mean features vs electrode distance in um.

    features: (N, D) per trial; electrodes: (N,) electrode ids on ds.channel_map.
    """
    ids = np.unique(electrodes)
    means = np.stack([features[electrodes == e].mean(axis=0) for e in ids])
    feat_dist = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    cols = [ds.channel_map.index_of(int(e)) for e in ids]
    array_dist = ds.channel_map.distances_um()[np.ix_(cols, cols)]
    out = mantel_test(feat_dist, array_dist, permutations=permutations, seed=seed)
    out["electrodes"] = [int(e) for e in ids]
    return out


def embed_2d(features: np.ndarray, *, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by t-SNE (after PCA to <= 50-d, the usual recipe) or PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features)
    n_pca = int(min(50, z.shape[0] - 1, z.shape[1]))
    z = PCA(n_components=n_pca, random_state=seed).fit_transform(z)
    if method == "pca" or z.shape[0] < 10:
        return z[:, :2] if z.shape[1] >= 2 else np.pad(z, ((0, 0), (0, 2 - z.shape[1])))
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    perplexity = float(min(30.0, (z.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                ).fit_transform(z)


def plot_embedding(xy: np.ndarray, electrodes: np.ndarray, current_ua: np.ndarray,
                   perceived: np.ndarray, path: str | os.PathLike, *, title: str) -> None:
    """Two panels: colour = stimulated electrode (size = current), colour = perceived."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2))
    ids = np.unique(electrodes)
    cmap = plt.get_cmap("tab20", max(len(ids), 1))
    cur = np.asarray(current_ua, float)
    span = np.ptp(np.log(cur)) if cur.size and np.ptp(np.log(cur)) > 0 else 1.0
    sizes = 8 + 60 * (np.log(cur) - np.log(cur).min()) / span if cur.size else 10
    for i, e in enumerate(ids):
        sel = electrodes == e
        ax1.scatter(xy[sel, 0], xy[sel, 1], s=np.asarray(sizes)[sel] if cur.size else 10,
                    color=cmap(i), alpha=0.7, label=f"e{int(e)}", edgecolors="none")
    ax1.set_title("stimulated electrode (point size = current)")
    ax1.legend(fontsize=7, ncol=2, markerscale=0.8, loc="best")
    for val, colour, label in ((0, "tab:grey", "missed"), (1, "tab:red", "perceived")):
        sel = perceived == val
        ax2.scatter(xy[sel, 0], xy[sel, 1], s=12, color=colour, alpha=0.6, label=label,
                    edgecolors="none")
    ax2.set_title("perceived vs missed")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_diagnostics(ds: Dataset, encode_fn, out_dir: str | os.PathLike, *,
                    spec: WindowSpec = WindowSpec(),
                    norm_config: NormaliserConfig = NormaliserConfig(),
                    tasks: tuple[str, ...] | None = None,
                    method: str = "tsne", permutations: int = 999, seed: int = 0) -> dict:
    """Write the latent embedding plots per task and the electrode-distance tests.

    encode_fn: (N, T, C) float32 -> (N, D), or a teacher model (anything with .encode).
    Writes out_dir/latents_<task>.png and out_dir/diagnostics.json; returns that dict.
    The Mantel test pools the trials of all given tasks (more distinct electrodes).
    """
    if hasattr(encode_fn, "encode"):
        from phosphene.train.probe import teacher_encode_fn

        encode_fn = teacher_encode_fn(encode_fn)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"tasks": {}, "method": method}
    pooled_lat, pooled_raw, pooled_e = [], [], []
    for task in ds.tasks if tasks is None else tasks:
        if not ds.sessions_of(ds.task_window(task, spec)[0]):
            continue
        X, y, trials = trial_windows(ds, task, spec, norm_config)
        latents = np.asarray(encode_fn(X), dtype=np.float64)
        with sklearn_threads():
            xy = embed_2d(latents, method=method, seed=seed)
        png = out_dir / f"latents_{task}.png"
        plot_embedding(xy, trials.electrode, trials.current_ua, y, png,
                       title=f"{task}: {method.upper()} of latents ({len(y)} trials)")
        report["tasks"][task] = {"plot": str(png), "n_trials": len(y),
                                 "electrodes": sorted(int(e) for e in np.unique(trials.electrode))}
        pooled_lat.append(latents)
        pooled_raw.append(X.reshape(X.shape[0], -1).astype(np.float64))
        pooled_e.append(trials.electrode)
    if not pooled_lat:
        raise InputError(f"dataset {ds.path} has no stimulation sessions for diagnostics")
    electrodes = np.concatenate(pooled_e)
    if len(np.unique(electrodes)) >= 3:
        report["mantel_latent"] = electrode_distance_test(
            np.concatenate(pooled_lat), electrodes, ds, permutations=permutations, seed=seed)
        report["mantel_raw"] = electrode_distance_test(
            np.concatenate(pooled_raw), electrodes, ds, permutations=permutations, seed=seed)
    else:
        report["mantel_latent"] = report["mantel_raw"] = None
        log.warning("fewer than 3 stimulated electrodes: no electrode-distance test")
    write_json(out_dir / "diagnostics.json", report)
    return report
