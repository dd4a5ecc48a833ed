"""Linear probes on frozen features, the paper's baselines, and label efficiency (Table 1).

Every feature set is scored the same way: per session, the first 80% of trials train and
the last 20% test (generalisation over time); an L2 logistic regression whose strength
is chosen by cross-validation on the training split only; balanced accuracy on the test
split. Feature sets: raw MUA flattened, PCA of raw MUA to the latent size, and the
latents of any encoder given as `encode_fn: (N, T, C) float32 -> (N, D)` (the teacher,
the distilled student or the int8 model all plug in here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from phosphene.dataset import Dataset
from phosphene.io import atomic_path, write_json
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.data import trial_windows

__all__ = ["probe_task", "make_probe", "fit_probe", "fold_probe", "save_probe", "sklearn_threads", "load_probe",
           "teacher_encode_fn", "format_table", "plot_label_efficiency", "FEATURE_SETS",
           "FEATURE_LABELS", "PROBE_FORMAT", "RowSpace"]

log = logging.getLogger(__name__)

FEATURE_SETS = ("raw", "pca", "latent")
FEATURE_LABELS = {"raw": "raw MUA, flattened", "pca": "PCA of raw MUA",
                  "latent": "MAE latents"}
PROBE_FORMAT = "phosphene-probe"
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
CS = np.logspace(-4, 2, 7)  # inverse L2 strengths tried by cross-validation


EncodeFn = Callable[[np.ndarray], np.ndarray]


class RowSpace(TransformerMixin, BaseEstimator):
    """Project (N, D) features with D > N onto the span of the training rows: z = x @ V.

    Exact for an L2-penalised linear model: its optimum weight vector is a combination of
    the training rows (representer theorem), and the penalty is rotation-invariant, so
    fitting on z gives the same decision function as fitting on x (and also within every
    CV fold, whose rows span a subspace of this one). It turns the raw-MUA baseline's
    12,288-d L-BFGS problem into an N-d one (one CV fit: 17.6 s -> 0.34 s of CPU).
    """

    def __init__(self, rtol: float = 1e-10):
        self.rtol = rtol

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        keep = s > self.rtol * (s[0] if s.size else 0.0)
        self.components_ = vt[keep]  # (r, D), orthonormal rows
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return np.asarray(X, dtype=np.float64) @ self.components_.T


def teacher_encode_fn(model, *, device: str = "cpu", batch_size: int = 64) -> EncodeFn:
    """Wrap a teacher (anything with .encode(x: (N, T, C) tensor) -> (N, D)) as an EncodeFn."""
    import torch

    def encode(x: np.ndarray) -> np.ndarray:
        out = []
        model.eval()
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size],
                                                           dtype=np.float32)).to(device)
                out.append(model.encode(xb).float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)

    return encode


def make_probe(y_train: np.ndarray, *, n_components: int | None = None,
               n_features: int | None = None, seed: int = 0):
    """Pipeline: [PCA(n_components)] -> StandardScaler -> [RowSpace] -> L2 logistic regression.

    RowSpace (an exact speed-up, see its docstring) is used when n_features > trials.
    The regularisation is chosen by stratified k-fold CV (k <= 5, limited by the rarer
    class) on the training data the pipeline is fitted on, scored by balanced accuracy;
    classes are weighted by their inverse frequency. With fewer than 2 trials of a class
    there is nothing to cross-validate and C = 1 is used.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(5, np.bincount(np.asarray(y_train, dtype=np.int64), minlength=2).min()))
    if k >= 2:
        clf = LogisticRegressionCV(Cs=CS, l1_ratios=(0.0,), scoring="balanced_accuracy",
                                   cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                   class_weight="balanced", max_iter=3000,
                                   use_legacy_attributes=False)
    else:
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000)
    steps = [StandardScaler(), clf]
    if n_components is not None:
        steps.insert(0, PCA(n_components=n_components, random_state=seed))
    elif n_features is not None and n_features > len(y_train):
        steps.insert(1, RowSpace())
    return make_pipeline(*steps)


def fit_probe(features_train: np.ndarray, y_train: np.ndarray, *,
              n_components: int | None = None, seed: int = 0):
    """Fit make_probe on (N, D) features; ValueError when the labels have one class only."""
    if len(np.unique(y_train)) < 2:
        raise ValueError("the training split has only one class (all perceived or all missed): "
                         "a probe needs both; record more trials")
    return make_probe(y_train, n_components=n_components, n_features=features_train.shape[1],
                      seed=seed).fit(features_train, y_train)


def fold_probe(pipeline) -> tuple[np.ndarray, float]:
    """Fold every linear step into one weight vector: P(perceived) = sigmoid(x @ w + b).

    Handles [PCA] -> StandardScaler -> [RowSpace] -> LogisticRegression(CV) pipelines; the edge then
    runs a dot product on the raw latent, with the standardisation inside w and b.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in pipeline.steps]
    clf = steps[-1]
    w = np.asarray(clf.coef_, dtype=np.float64).reshape(-1)
    b = float(np.asarray(clf.intercept_).reshape(-1)[0])
    for step in reversed(steps[:-1]):
        if isinstance(step, StandardScaler):
            scale = step.scale_ if step.scale_ is not None else np.ones_like(w)
            mean = step.mean_ if step.mean_ is not None else np.zeros_like(w)
            w = w / scale
            b -= float(w @ mean)
        elif isinstance(step, PCA):
            if step.whiten:
                w = w / np.sqrt(step.explained_variance_)
            b -= float(w @ (step.components_ @ step.mean_))
            w = step.components_.T @ w
        elif isinstance(step, RowSpace):
            w = step.components_.T @ w
        else:
            raise TypeError(f"cannot fold a {type(step).__name__} into a linear probe")
    return w, b


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y_true, y_pred))


def sklearn_threads(n: int = 1):
    """Cap BLAS/OpenMP threads for scikit-learn. The default 1 is deliberate: on a shared
    2-core machine OpenBLAS's spinning threads made a probe fit 50x slower (3 s -> 160 s),
    and these problems are too small to gain from a second thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def _score(name: str, feats_train, y_train, feats_test, y_test, *, latent_dim: int,
           seed: int) -> tuple[dict, object]:
    n_components = None
    if name == "pca":
        n_components = int(max(1, min(latent_dim, feats_train.shape[0] - 1,
                                      feats_train.shape[1])))
    pipe = fit_probe(feats_train, y_train, n_components=n_components, seed=seed)
    clf = pipe.steps[-1][1]
    return {
        "balanced_accuracy": _balanced_accuracy(y_test, pipe.predict(feats_test)),
        "train_balanced_accuracy": _balanced_accuracy(y_train, pipe.predict(feats_train)),
        "dim": int(n_components or feats_train.shape[1]),
        "C": float(np.asarray(getattr(clf, "C_", getattr(clf, "C", np.nan))).reshape(-1)[0]),
    }, pipe


def probe_task(ds: Dataset, encode_fn: EncodeFn, task: str, *,
               spec: WindowSpec = WindowSpec(), norm_config: NormaliserConfig = NormaliserConfig(),
               feature_sets: tuple[str, ...] = FEATURE_SETS, curve: bool = False,
               fractions: tuple[float, ...] = CURVE_FRACTIONS, repeats: int = 3,
               seed: int = 0, latent_label: str = "MAE latents") -> dict:
    """Score probes on one task's trials; returns a JSON-ready dict.

    Keys: task, n_train, n_test, n_trials, latent_dim, features {name: {balanced_accuracy,
    train_balanced_accuracy, dim, C}}, ideal_observer (or None), probe (the folded latent
    probe: weights, bias, threshold) and, with curve=True, curve {name: [{fraction,
    n_train, mean, std, runs}]}. The curve subsamples the training split (stratified,
    `repeats` random draws per fraction below 1); the test split never changes.
    """
    unknown = set(feature_sets) - set(FEATURE_SETS)
    if unknown:
        raise ValueError(f"unknown feature sets {sorted(unknown)}; choose from {FEATURE_SETS}")
    X, y, trials = trial_windows(ds, task, spec, norm_config)
    train, test = trials.split_80_20()
    if not test.any() or not train.any():
        raise ValueError(f"{task}: too few trials for an 80/20 split ({len(y)} usable)")
    N = X.shape[0]  # trials
    feats: dict[str, np.ndarray] = {}
    if "raw" in feature_sets or "pca" in feature_sets:
        feats["raw"] = X.reshape(N, -1)
    if "latent" in feature_sets:
        latents = np.asarray(encode_fn(X), dtype=np.float64)
        if latents.ndim != 2 or latents.shape[0] != N:
            raise ValueError(f"encode_fn returned shape {latents.shape}; expected ({N}, D)")
        if not np.isfinite(latents).all():
            raise ValueError("the encoder produced NaN/inf latents: the checkpoint is broken "
                             "or the input is not normalised MUA")
        feats["latent"] = latents
    latent_dim = feats["latent"].shape[1] if "latent" in feats else 128

    result: dict = {"task": task, "n_trials": int(N), "n_train": int(train.sum()),
                    "n_test": int(test.sum()), "n_sessions": len(np.unique(trials.session)),
                    "perceived_fraction": round(float(y.mean()), 4), "latent_dim": int(latent_dim),
                    "latent_label": latent_label,
                    "ideal_observer": ds.ideal_observer.get(task)}
    with sklearn_threads():
        result.update(_fit_all(feats, y, train, test, feature_sets, latent_dim, seed, task,
                               curve, fractions, repeats))
    return result


def _fit_all(feats, y, train, test, feature_sets, latent_dim, seed, task, curve, fractions,
             repeats) -> dict:
    result: dict = {"features": {}}
    pipelines = {}
    for name in feature_sets:
        F = feats["raw" if name == "pca" else name]
        metrics, pipe = _score(name, F[train], y[train], F[test], y[test],
                               latent_dim=latent_dim, seed=seed)
        result["features"][name] = metrics
        pipelines[name] = pipe
        log.info("%s %s: balanced accuracy %.3f (dim %d, C %.3g)", task, name,
                 metrics["balanced_accuracy"], metrics["dim"], metrics["C"])
    if "latent" in pipelines:
        w, b = fold_probe(pipelines["latent"])
        result["probe"] = {"weights": [float(v) for v in w], "bias": float(b),
                           "threshold": 0.5, "threshold_on": "probability"}
    if curve:
        result["curve"] = _label_efficiency(feats, y, train, test, feature_sets, fractions,
                                            repeats, latent_dim, seed)
    return result


def _label_efficiency(feats, y, train, test, feature_sets, fractions, repeats, latent_dim,
                      seed) -> dict:
    rng = np.random.default_rng(seed)
    train_idx = np.flatnonzero(train)
    draws = {}
    for frac in fractions:
        n_sub = max(4, round(frac * len(train_idx)))
        if n_sub >= len(train_idx):
            draws[frac] = [train_idx]
            continue
        runs = []
        for _ in range(repeats):
            # stratified: each class keeps its share, at least 2 trials of each
            parts = []
            for cls in (0, 1):
                idx = train_idx[y[train_idx] == cls]
                k = min(len(idx), max(2, round(n_sub * len(idx) / len(train_idx))))
                parts.append(rng.choice(idx, size=k, replace=False))
            runs.append(np.sort(np.concatenate(parts)))
        draws[frac] = runs
    curve: dict[str, list] = {}
    for name in feature_sets:
        F = feats["raw" if name == "pca" else name]
        points = []
        for frac, runs in draws.items():
            scores = []
            for idx in runs:
                if len(np.unique(y[idx])) < 2:
                    continue
                metrics, _ = _score(name, F[idx], y[idx], F[test], y[test],
                                    latent_dim=latent_dim, seed=seed)
                scores.append(metrics["balanced_accuracy"])
            points.append({"fraction": frac, "n_train": int(np.mean([len(r) for r in runs])),
                           "mean": float(np.mean(scores)) if scores else None,
                           "std": float(np.std(scores)) if scores else None, "runs": scores})
        curve[name] = points
    return curve


def plot_label_efficiency(result: dict, path: str | os.PathLike) -> None:
    """Balanced accuracy against labelled training trials, one line per feature set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "curve" not in result:
        raise ValueError("no label-efficiency curve in this result: run probe_task(curve=True)")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in result["curve"].items():
        pts = [p for p in points if p["mean"] is not None]
        if not pts:
            continue
        label = _label(name, result)
        ax.errorbar([p["n_train"] for p in pts], [100 * p["mean"] for p in pts],
                    yerr=[100 * p["std"] for p in pts], marker="o", capsize=3, label=label)
    if result.get("ideal_observer") is not None:
        ax.axhline(100 * result["ideal_observer"], color="k", ls="--", lw=1,
                   label="ideal observer")
    ax.axhline(50, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ticks = sorted({p["n_train"] for pts in result["curve"].values() for p in pts})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training trials")
    ax.set_ylabel("balanced accuracy on test split (%)")
    ax.set_title(f"Label efficiency: {result['task']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _label(name: str, result: dict, n_channels: int | None = None,
           window_samples: int | None = None) -> str:
    dim = result["features"].get(name, {}).get("dim")
    if name == "latent":
        return f"{result.get('latent_label', FEATURE_LABELS[name])} ({dim}-d)"
    if name == "raw" and n_channels and window_samples:
        return f"{FEATURE_LABELS[name]} ({n_channels} x {window_samples} = {dim}-d)"
    return f"{FEATURE_LABELS[name]} ({dim}-d)"


def format_table(results: list[dict], *, n_channels: int, window_samples: int) -> str:
    """The paper's Table 1 layout: feature sets as rows, tasks as columns, balanced accuracy."""
    tasks = [r["task"] for r in results]
    names = [n for n in FEATURE_SETS if any(n in r["features"] for r in results)]
    labels = {n: _label(n, results[0], n_channels, window_samples) for n in names}
    # the PCA dimension can differ between tasks (capped by n_train): show it per cell
    width = max([len(v) for v in labels.values()] + [len("ideal observer (ground truth)")]) + 2
    lines = [f"{'features':<{width}}" + "".join(f"{t:>14}" for t in tasks)]
    for n in names:
        cells = []
        for r in results:
            m = r["features"].get(n)
            cells.append(f"{100 * m['balanced_accuracy']:13.1f}%" if m else f"{'-':>14}")
        lines.append(f"{labels[n]:<{width}}" + "".join(cells))
    if any(r.get("ideal_observer") is not None for r in results):
        cells = [f"{100 * r['ideal_observer']:13.1f}%" if r.get("ideal_observer") is not None
                 else f"{'-':>14}" for r in results]
        lines.append(f"{'ideal observer (ground truth)':<{width}}" + "".join(cells))
    lines.append(f"{'test trials':<{width}}" + "".join(f"{r['n_test']:>14}" for r in results))
    return "\n".join(lines)


def save_probe(path: str | os.PathLike, result: dict, *, extra: dict | None = None) -> dict:
    """Write the folded latent probe (probe.json, atomically); returns what was written.

    P(perceived) = sigmoid(latent @ weights + bias); decide perceived iff P >= threshold.
    """
    if "probe" not in result:
        raise ValueError("this result has no latent probe to save (feature set 'latent' "
                         "was not scored)")
    doc = {"format": PROBE_FORMAT, "version": 1, "task": result["task"],
           "latent_dim": result["latent_dim"], **result["probe"],
           "metrics": {"balanced_accuracy": result["features"]["latent"]["balanced_accuracy"],
                       "train_balanced_accuracy":
                           result["features"]["latent"]["train_balanced_accuracy"],
                       "C": result["features"]["latent"]["C"],
                       "n_train": result["n_train"], "n_test": result["n_test"],
                       "ideal_observer": result.get("ideal_observer")},
           **(extra or {})}
    write_json(path, doc)
    return doc


def load_probe(path: str | os.PathLike) -> dict:
    """Read probe.json; ValueError when it is not one. weights come back as float64 array."""
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read probe {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != PROBE_FORMAT:
        raise ValueError(f"{path} is not a phosphene probe file")
    doc["weights"] = np.asarray(doc["weights"], dtype=np.float64)
    if doc["weights"].shape != (int(doc["latent_dim"]),):
        raise ValueError(f"{path}: {doc['weights'].shape[0]} weights for a "
                         f"{doc['latent_dim']}-d latent")
    return doc
