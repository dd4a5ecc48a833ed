"""Linear probes on frozen features, the baselines, and label efficiency (Table 1).

Every feature set is scored the same way: an L2 logistic regression whose strength is
chosen by blocked cross-validation on the training trials only (time-contiguous folds, a
wide grid, the one-standard-error rule), then balanced accuracy with a bootstrap 95% CI on
the evaluation trials, and paired comparisons on the same trials. The evaluation trials
are the dataset's evaluation set (`Dataset.evaluation`) when it has one, else the paper's
split (per session, the last 20% of trials).

Feature sets: raw MUA flattened, PCA of raw MUA to the latent size, the per-electrode
window mean and its resting-whitened form, and the latents of any encoder given as
`encode_fn: (N, T, C) float32 -> (N, D)` or `-> {readout: (N, D_r)}` (the teacher with
its readouts, the distilled student or the int8 model all plug in here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from phosphene.dataset import Dataset
from phosphene.errors import ConfigError, InputError
from phosphene.io import atomic_path, write_json
from phosphene.metrics import balanced_accuracy, bootstrap_ci, p_text, paired_comparison
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.data import trial_windows

__all__ = [
    "BASELINES",
    "C_GRID",
    "FEATURE_LABELS",
    "FEATURE_SETS",
    "PROBE_FORMAT",
    "RowSpace",
    "baseline_features",
    "blocked_folds",
    "check_probe_doc",
    "choose_readout",
    "cross_validate_C",
    "fit_probe",
    "fold_probe",
    "format_paired",
    "format_table",
    "load_probe",
    "make_probe",
    "paired_table",
    "plot_label_efficiency",
    "pre_stimulus_ceiling_of",
    "probe_task",
    "probe_teacher",
    "resting_whitening",
    "save_probe",
    "sklearn_threads",
    "task_split",
    "teacher_encode_fn",
]

log = logging.getLogger(__name__)

BASELINES = ("raw", "pca", "electrode_mean", "electrode_mean_whitened")
FEATURE_SETS = ("raw", "pca", "electrode_mean", "electrode_mean_whitened", "latent")
FEATURE_LABELS = {"raw": "raw MUA, flattened", "pca": "PCA of raw MUA",
                  "electrode_mean": "per-electrode window mean",
                  "electrode_mean_whitened": "per-electrode mean, resting-whitened",
                  "latent": "MAE latents", "latent_mean": "MAE, mean of all tokens (paper)",
                  "latent_electrode_k1": "MAE, per-electrode readout (k=1, whitened)",
                  "latent_electrode_k4": "MAE, per-electrode readout (k=4, whitened)"}
PROBE_FORMAT = "phosphene-probe"
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


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


C_GRID = np.logspace(-7, 3, 21)  # inverse L2 strengths, half a decade apart
N_FOLDS = 5


def blocked_folds(session: np.ndarray, onset_sample: np.ndarray, k: int = N_FOLDS) -> np.ndarray:
    """Fold id (0..k-1) per trial: each session's trials, in time order, cut into k
    contiguous blocks; fold j is block j of every session.

    Trials close in time share the slow cortical state (~2 trials), so shuffled folds put
    near-copies of a validation trial into training and reward weak regularisation.
    """
    session = np.asarray(session)
    onset = np.asarray(onset_sample)
    folds = np.zeros(len(session), dtype=np.int64)
    for sid in np.unique(session):
        idx = np.flatnonzero(session == sid)
        idx = idx[np.argsort(onset[idx], kind="stable")]
        for j, block in enumerate(np.array_split(idx, min(k, len(idx)))):
            folds[block] = j
    return folds


def _preprocess(n_components: int | None, n_features: int, n_train: int, seed: int) -> list:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    steps: list = [StandardScaler()]
    if n_components is not None:
        steps.insert(0, PCA(n_components=n_components, random_state=seed))
    elif n_features > n_train:
        steps.append(RowSpace())
    return steps


def _classifier(C: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=float(C), class_weight="balanced", max_iter=3000)


def cross_validate_C(features: np.ndarray, y: np.ndarray, folds: np.ndarray, *,
                     Cs: np.ndarray = C_GRID, n_components: int | None = None,
                     seed: int = 0) -> dict:
    """Blocked cross-validation of the L2 strength, with the one-standard-error rule.

    Returns {"Cs", "cv_mean", "cv_se" (per C), "C_best" (highest mean balanced accuracy),
    "C" (the smallest C, i.e. the strongest penalty, whose mean is within one standard
    error of the best), "cv_score" (mean at C), "cv_se_best", "edge" (C_best sits on the
    grid's edge: widen the grid or distrust the pick), "n_folds"}.
    """
    from sklearn.pipeline import make_pipeline

    from phosphene.metrics import balanced_accuracy

    X = np.asarray(features, np.float64)
    y = np.asarray(y, np.int64)
    fold_ids = [f for f in np.unique(folds)
                if len(np.unique(y[folds != f])) == 2 and (folds == f).any()]
    if len(fold_ids) < 2:
        raise InputError("cross-validation needs at least 2 folds whose training part holds "
                         "both classes: record more trials")
    scores = np.full((len(fold_ids), len(Cs)), np.nan)
    oof = np.full((len(y), len(Cs)), np.nan)  # out-of-fold logits, for calibration
    for j, f in enumerate(fold_ids):
        train, val = folds != f, folds == f
        n_comp = None if n_components is None else int(min(n_components, train.sum() - 1, X.shape[1]))
        pre = make_pipeline(*_preprocess(n_comp, X.shape[1], int(train.sum()), seed))
        Z_train, Z_val = pre.fit_transform(X[train]), pre.transform(X[val])
        for i, C in enumerate(Cs):
            clf = _classifier(C).fit(Z_train, y[train])
            oof[val, i] = clf.decision_function(Z_val)
            scores[j, i] = balanced_accuracy(y[val], oof[val, i] > 0)
    mean = scores.mean(0)
    se = scores.std(0, ddof=1) / np.sqrt(len(fold_ids))
    best = int(np.argmax(mean))
    chosen = int(np.flatnonzero(mean >= mean[best] - se[best])[0])  # Cs ascend: simplest first
    return {"Cs": [float(c) for c in Cs], "cv_mean": [float(v) for v in mean],
            "cv_se": [float(v) for v in se], "C_best": float(Cs[best]), "C": float(Cs[chosen]),
            "cv_score": float(mean[chosen]), "cv_score_best": float(mean[best]),
            "cv_se_best": float(se[best]), "edge": on_grid_edge(mean),
            "n_folds": len(fold_ids), "oof_logits": oof[:, chosen]}


def logit_scale(logits: np.ndarray, y: np.ndarray) -> float:
    """The factor a > 0 that makes sigmoid(a * logit) calibrated (class-balanced log loss).

    A strongly penalised probe decides well but squeezes P(perceived) towards 0.5 (at
    C = 1e-5 every P lies within 1e-4 of it); scaling the logit keeps every decision and
    makes the probability mean what it says. Fitted on out-of-fold logits.
    """
    logits = np.asarray(logits, np.float64)
    ok = np.isfinite(logits)
    z, t = logits[ok], np.where(np.asarray(y)[ok] == 1, 1.0, -1.0)
    if z.size == 0 or not np.any(z != 0) or len(np.unique(t)) < 2:
        return 1.0
    weight = np.where(t > 0, 0.5 / (t > 0).sum(), 0.5 / (t < 0).sum())
    spread = np.median(np.abs(z[z != 0]))
    grid = np.exp(np.linspace(-6, 6, 481)) / spread  # 0.025 steps in log a around 1/spread
    loss = [(weight * np.logaddexp(0.0, -a * t * z)).sum() for a in grid]
    return float(grid[int(np.argmin(loss))])


def on_grid_edge(cv_mean: np.ndarray) -> bool:
    """True when the best CV score is reached only at an end of the C grid: the optimum may
    lie beyond the grid. A plateau that reaches into the interior is resolved."""
    mean = np.asarray(cv_mean, np.float64)
    if mean.size < 3:
        return True
    top = mean.max()
    return bool(mean[1:-1].max() < top)


def make_probe(C: float, *, n_components: int | None = None, n_features: int | None = None,
               n_train: int = 0, seed: int = 0):
    """Pipeline: [PCA(n_components)] -> StandardScaler -> [RowSpace] -> L2 logistic regression.

    RowSpace (an exact speed-up, see its docstring) is used when n_features > trials.
    Classes are weighted by their inverse frequency.
    """
    from sklearn.pipeline import make_pipeline

    steps = _preprocess(n_components, n_features or 0, n_train, seed)
    return make_pipeline(*steps, _classifier(C))


def fit_probe(features_train: np.ndarray, y_train: np.ndarray, *,
              folds: np.ndarray | None = None, n_components: int | None = None,
              seed: int = 0, label: str = "probe"):
    """Fit make_probe on (N, D) features with C chosen by blocked CV (one-SE rule).

    folds: fold id per trial (`blocked_folds`); None cuts the trials, in the order given,
    into N_FOLDS contiguous blocks. With fewer than 2 trials of a class per fold there is
    nothing to cross-validate and C = 1 is used. The CV record is the pipeline's `cv_`.
    ValueError when the labels have one class only.
    """
    y_train = np.asarray(y_train, np.int64)
    if len(np.unique(y_train)) < 2:
        raise InputError("the training split has only one class (all perceived or all missed): "
                         "a probe needs both; record more trials")
    if folds is None:
        folds = np.zeros(len(y_train), np.int64)
        for j, block in enumerate(np.array_split(np.arange(len(y_train)), N_FOLDS)):
            folds[block] = j
    cv: dict = {"C": 1.0, "edge": False, "n_folds": 0}
    if np.bincount(y_train, minlength=2).min() >= 2:
        try:
            cv = cross_validate_C(features_train, y_train, folds, n_components=n_components,
                                  seed=seed)
        except ValueError as exc:
            log.warning("%s: %s; using C = 1", label, exc)
    if cv["edge"]:
        log.warning("%s: the best C (%.3g) sits on the edge of the grid %.0e..%.0e: the "
                    "regularisation is not resolved", label, cv["C_best"], C_GRID[0], C_GRID[-1])
    pipe = make_probe(cv["C"], n_components=n_components, n_features=features_train.shape[1],
                      n_train=len(y_train), seed=seed).fit(features_train, y_train)
    scale = logit_scale(cv.pop("oof_logits"), y_train) if "oof_logits" in cv else 1.0
    clf = pipe.steps[-1][1]
    clf.coef_ = clf.coef_ * scale  # a > 0: every decision stays, P(perceived) is calibrated
    clf.intercept_ = clf.intercept_ * scale
    cv["logit_scale"] = scale
    pipe.cv_ = cv
    return pipe


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


def sklearn_threads(n: int = 1):
    """Cap BLAS/OpenMP threads for scikit-learn. The default 1 is deliberate: on a shared
    2-core machine OpenBLAS's spinning threads made a probe fit 50x slower (3 s -> 160 s),
    and these problems are too small to gain from a second thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def _score(name: str, feats_train, y_train, folds, feats_eval, y_eval, *, latent_dim: int,
           seed: int, label: str = "") -> tuple[dict, object, np.ndarray]:
    """Fit one feature set's probe on the training trials; score it on the evaluation trials.

    Returns (metrics, fitted pipeline, P(perceived) on the evaluation trials).
    """
    n_components = None
    if name == "pca":
        n_components = int(max(1, min(latent_dim, feats_train.shape[0] - 1,
                                      feats_train.shape[1])))
    pipe = fit_probe(feats_train, y_train, folds=folds, n_components=n_components, seed=seed,
                     label=f"{label} {name}".strip())
    p_eval = pipe.predict_proba(feats_eval)[:, 1]
    decided = (p_eval >= 0.5).astype(np.int64)
    cv = pipe.cv_
    return {
        "balanced_accuracy": balanced_accuracy(y_eval, decided),
        "ci95": list(bootstrap_ci(y_eval, decided, seed=seed)),
        "train_balanced_accuracy": balanced_accuracy(y_train, pipe.predict(feats_train)),
        "dim": int(n_components or feats_train.shape[1]),
        "C": float(cv["C"]),
        "cv": {k: cv[k] for k in ("C_best", "cv_score", "cv_score_best", "cv_se_best", "edge",
                                  "n_folds", "logit_scale") if k in cv},
    }, pipe, p_eval


def task_split(ds: Dataset, task: str, spec: WindowSpec, norm_config: NormaliserConfig) -> dict:
    """Training and evaluation trials of one task.

    With an evaluation set (`Dataset.evaluation`), every labelled trial of the dataset trains
    and the evaluation set's trials evaluate; without one, the paper's split (per session,
    first 80% train, last 20% test).
    """
    X, y, trials = trial_windows(ds, task, spec, norm_config)
    ev = ds.evaluation()
    if ev is not None and len(ev.task_trials(ds.task_window(task, spec)[0])):
        Xe, ye, te = trial_windows(ev, task, spec, norm_config)
        return {"X": X, "y": y, "trials": trials, "X_eval": Xe, "y_eval": ye, "trials_eval": te,
                "evaluation": "evaluation set"}
    train, test = trials.split_80_20()
    if not test.any() or not train.any():
        raise InputError(f"{task}: too few trials for an 80/20 split ({len(y)} usable)")
    return {"X": X[train], "y": y[train], "trials": trials.select(train), "X_eval": X[test],
            "y_eval": y[test], "trials_eval": trials.select(test),
            "evaluation": "test split (last 20% of each session)"}


def resting_whitening(ds: Dataset, spec: WindowSpec, norm_config: NormaliserConfig, *,
                      n_windows: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, W) whitening the per-electrode window mean on resting windows; None without any."""
    from phosphene.train.distill import sample_resting_windows
    from phosphene.train.readout import whitening

    if not ds.sessions_of("resting"):
        return None
    x = sample_resting_windows(ds, spec, norm_config, n_windows, seed=seed + 7)
    return whitening(x.mean(axis=1))


def baseline_features(name: str, X: np.ndarray, whiten: tuple | None) -> np.ndarray:
    """(N, T, C) windows -> a baseline's features (raw and pca share the flattened window)."""
    N = X.shape[0]  # trials
    if name in ("raw", "pca"):
        return X.reshape(N, -1)
    if name == "electrode_mean":
        return X.mean(axis=1)
    if name == "electrode_mean_whitened":
        mean, W = whiten
        return (X.mean(axis=1) - mean) @ W
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


def probe_task(ds: Dataset, encode_fn: EncodeFn, task: str, *,
               spec: WindowSpec = WindowSpec(), norm_config: NormaliserConfig = NormaliserConfig(),
               feature_sets: tuple[str, ...] = FEATURE_SETS, curve: bool = False,
               fractions: tuple[float, ...] = CURVE_FRACTIONS, repeats: int = 3,
               seed: int = 0, latent_label: str = "MAE latents",
               whiten: tuple | None = None, train_draws: int = 0) -> dict:
    """Score probes on one task's trials; returns a JSON-ready dict.

    encode_fn: (N, T, C) -> (N, D) latents, or -> {readout: (N, D_r)} for an encoder with
    several readouts (feature sets "latent_<readout>"). Baselines in `feature_sets`: raw,
    pca, electrode_mean, electrode_mean_whitened (resting whitening: `whiten`, or fitted
    here). Every probe's C is chosen by blocked CV on the training trials only.

    Keys: task, evaluation, n_train, n_eval, features {name: {balanced_accuracy, ci95,
    train_balanced_accuracy, dim, C, cv}}, paired {"a-b": paired_comparison}, ideal_observer
    (+ ideal_ci95), probes {latent name: folded weights, bias, threshold}, eval_trials and
    eval_p {name: P(perceived) per evaluation trial}, and with curve=True the label
    efficiency curve (subsampled training trials, same evaluation trials). With
    train_draws = k > 0, `train_draws` {name: [balanced accuracy]}: the probe refitted k
    times, each time without one of the k time-contiguous blocks of every training session
    (the training split's own variance, on the same evaluation trials).
    """
    unknown = set(feature_sets) - set(FEATURE_SETS)
    if unknown:
        raise ValueError(f"unknown feature sets {sorted(unknown)}; choose from {FEATURE_SETS}")
    split = task_split(ds, task, spec, norm_config)
    X, y, Xe, ye = split["X"], split["y"], split["X_eval"], split["y_eval"]
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "latent" in feature_sets:
        train_lat, eval_lat = _encode(encode_fn, X), _encode(encode_fn, Xe)
        for name in train_lat:
            feats[name] = (train_lat[name], eval_lat[name])
    latent_names = list(feats)
    latent_dim = feats[latent_names[0]][0].shape[1] if latent_names else 128
    baselines = [b for b in BASELINES if b in feature_sets]
    if "electrode_mean_whitened" in baselines and whiten is None:
        whiten = resting_whitening(ds, spec, norm_config, seed=seed)
        if whiten is None:
            baselines.remove("electrode_mean_whitened")
    for name in baselines:
        feats[name] = (baseline_features(name, X, whiten), baseline_features(name, Xe, whiten))
    trials, te = split["trials"], split["trials_eval"]
    folds = blocked_folds(trials.session, trials.onset_sample)
    result: dict = {"task": task, "evaluation": split["evaluation"], "n_train": len(y),
                    "n_eval": len(ye),
                    "n_sessions": len(np.unique(trials.session)),
                    "perceived_fraction": round(float(y.mean()), 4), "latent_dim": int(latent_dim),
                    "latent_label": latent_label, "features": {}, "probes": {}, "eval_p": {},
                    "eval_trials": {"session": [str(v) for v in te.session],
                                    "onset_sample": [int(v) for v in te.onset_sample],
                                    "perceived": [int(v) for v in ye]}}
    kind, window = ds.task_window(task, spec)
    result["trials"], result["window"] = kind, {"offset_ms": window.offset_ms,
                                                 "window_ms": window.window_ms}
    # The ideal observer knows the evoked response: a ceiling for a window after onset only.
    # Before onset the virtual cortex's ceiling is an oracle that knows the cortical state.
    if kind != task:
        result["pre_stimulus_ceiling"] = pre_stimulus_ceiling_of(ds, te)
    if np.isfinite(te.p_true).all() and kind == task:
        ideal = (te.p_true > 0.5).astype(np.int64)
        result["ideal_observer"] = balanced_accuracy(ye, ideal)
        result["ideal_ci95"] = list(bootstrap_ci(ye, ideal, seed=seed))
        result["eval_p"]["ideal"] = [float(v) for v in te.p_true]
    else:
        result["ideal_observer"] = None
    with sklearn_threads():
        for name, (F, Fe) in feats.items():
            metrics, pipe, p_eval = _score(name, F, y, folds, Fe, ye, latent_dim=latent_dim,
                                           seed=seed, label=task)
            result["features"][name] = metrics
            result["eval_p"][name] = [float(v) for v in p_eval]
            log.info("%s %s: balanced accuracy %.3f [%.3f, %.3f] (dim %d, C %.3g)", task, name,
                     metrics["balanced_accuracy"], *metrics["ci95"], metrics["dim"], metrics["C"])
            if name in latent_names:
                w, b = fold_probe(pipe)
                result["probes"][name] = {"weights": [float(v) for v in w], "bias": float(b),
                                          "threshold": 0.5, "threshold_on": "probability"}
        if curve:
            result["curve"] = _label_efficiency(feats, y, folds, ye, list(feats), fractions,
                                                repeats, latent_dim, seed)
        if train_draws:
            result["train_draws"] = _train_draws(feats, y, trials, ye, train_draws, latent_dim, seed)
    result["paired"] = paired_table(result, ye, latent_names, baselines, seed=seed)
    return result


def pre_stimulus_ceiling_of(ds: Dataset, trials) -> float | None:
    """The best balanced accuracy a decoder of the window before onset can reach on a
    virtual-cortex dataset: an oracle that knows the cortical state at onset
    (`cortex.pre_stimulus_ceiling`) over the trials' (electrode, current) conditions.
    None for a recording, whose perception model nobody knows."""
    from phosphene.cortex import CortexConfig, VirtualCortex, pre_stimulus_ceiling

    source = ds.meta.get("source")
    if not isinstance(source, dict) or source.get("generator") != "phosphene.cortex":
        return None
    config = CortexConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in source.get("config", {}).items()})
    cortex = VirtualCortex(ds.channel_map, seed=int(source.get("seed", 0)), config=config)
    conditions = sorted({(int(e), float(c)) for e, c in zip(trials.electrode, trials.current_ua)})
    return pre_stimulus_ceiling(cortex, conditions)


def _encode(encode_fn: EncodeFn, X: np.ndarray) -> dict[str, np.ndarray]:
    out = encode_fn(X)
    named = {f"latent_{k}": v for k, v in out.items()} if isinstance(out, dict) else {"latent": out}
    for name, z in named.items():
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] != X.shape[0]:
            raise ValueError(f"encode_fn returned shape {z.shape} for {name}; expected "
                             f"({X.shape[0]}, D)")
        if not np.isfinite(z).all():
            raise InputError("the encoder produced NaN/inf latents: the checkpoint is broken "
                             "or the input is not normalised MUA")
        named[name] = z
    return named


def paired_table(result: dict, y_eval: np.ndarray, latent_names: list[str],
                 baselines: list[str], *, seed: int = 0) -> dict:
    """Every latent feature set against every baseline and against each other, paired on the
    same evaluation trials: {"a-b": {diff, ci95, p_value, mcnemar_p, n}}."""
    def decided(name):
        return np.asarray(result["eval_p"][name]) >= 0.5

    pairs = [(a, b) for a in latent_names for b in baselines]
    pairs += [(a, b) for i, a in enumerate(latent_names) for b in latent_names[i + 1:]]
    if "electrode_mean_whitened" in baselines:
        pairs += [(b, "pca") for b in ("electrode_mean", "electrode_mean_whitened")
                  if b in baselines and "pca" in baselines]
    return {f"{a}-{b}": paired_comparison(y_eval, decided(a), decided(b), seed=seed)
            for a, b in pairs}


def choose_readout(results: list[dict]) -> dict:
    """Pick the teacher's readout from training-split CV only, across the tasks probed.

    Each readout's score is its CV balanced accuracy (at its chosen C) averaged over tasks;
    the one-standard-error rule then takes the lowest-dimensional readout within one SE of
    the best. Returns {"readout", "feature", "scores": {readout: {cv, se, dim}}}.
    """
    names = sorted({n for r in results for n in r["features"] if n.startswith("latent_")})
    if not names:
        raise ValueError("no readouts were probed (encode_fn returned a single latent)")
    scores = {}
    for n in names:
        cvs = [r["features"][n]["cv"] for r in results if n in r["features"]]
        scores[n[len("latent_"):]] = {
            "cv": float(np.mean([c.get("cv_score_best", np.nan) for c in cvs])),
            "se": float(np.sqrt(np.mean([c.get("cv_se_best", 0.0) ** 2 for c in cvs]))),
            "dim": int(results[0]["features"][n]["dim"])}
    best = max(scores, key=lambda k: scores[k]["cv"])
    floor = scores[best]["cv"] - scores[best]["se"]
    chosen = min((k for k in scores if scores[k]["cv"] >= floor), key=lambda k: scores[k]["dim"])
    return {"readout": chosen, "feature": f"latent_{chosen}", "scores": scores,
            "rule": "highest CV balanced accuracy (blocked folds, training trials, mean over "
                    "tasks); the lowest-dimensional readout within one standard error"}


def _train_draws(feats, y, trials, y_eval, k, latent_dim, seed) -> dict:
    """Refit every feature set k times, each without one contiguous block per session."""
    blocks = blocked_folds(trials.session, trials.onset_sample, k=k)
    out: dict[str, list[float]] = {}
    for name, (F, Fe) in feats.items():
        scores = []
        for j in range(k):
            keep = blocks != j
            if len(np.unique(y[keep])) < 2:
                continue
            sub = blocked_folds(trials.session[keep], trials.onset_sample[keep])
            metrics, _, _ = _score(name, F[keep], y[keep], sub, Fe, y_eval,
                                   latent_dim=latent_dim, seed=seed)
            scores.append(metrics["balanced_accuracy"])
        out[name] = scores
    return out


def _label_efficiency(feats, y, folds, y_eval, names, fractions, repeats, latent_dim,
                      seed) -> dict:
    rng = np.random.default_rng(seed)
    train_idx = np.arange(len(y))
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
    for name in names:
        F, Fe = feats[name]
        points = []
        for frac, runs in draws.items():
            scores = []
            for idx in runs:
                if len(np.unique(y[idx])) < 2:
                    continue
                metrics, _, _ = _score(name, F[idx], y[idx], folds[idx], Fe, y_eval,
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
    ax.set_ylabel(f"balanced accuracy, {result.get('n_eval', '?')} evaluation trials (%)")
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
    return f"{FEATURE_LABELS.get(name, name)} ({dim}-d)"


def _ordered_names(results: list[dict]) -> list[str]:
    seen = [n for r in results for n in r["features"]]
    order = [n for n in BASELINES if n in seen]
    return order + sorted({n for n in seen if n not in order}, key=seen.index)


def format_table(results: list[dict], *, n_channels: int, window_samples: int,
                 chosen: str | None = None) -> str:
    """Table 1: feature sets as rows, tasks as columns, balanced accuracy [95% CI].

    chosen: the latent feature set the bundle carries (marked with *).
    """
    tasks = [r["task"] for r in results]
    names = _ordered_names(results)
    labels = {n: _label(n, results[0], n_channels, window_samples) + (" *" if n == chosen else "")
              for n in names}
    width = max([len(v) for v in labels.values()] + [len("state oracle (pre-stimulus ceiling)")]) + 2
    cell = 22
    lines = [f"{'features':<{width}}" + "".join(f"{t:>{cell}}" for t in tasks)]

    def fmt(value, ci) -> str:
        return f"{100 * value:5.1f} [{100 * ci[0]:4.1f}, {100 * ci[1]:4.1f}]"

    for n in names:
        cells = [fmt(r["features"][n]["balanced_accuracy"], r["features"][n]["ci95"])
                 if n in r["features"] else "-" for r in results]
        lines.append(f"{labels[n]:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    if any(r.get("ideal_observer") is not None for r in results):
        cells = [fmt(r["ideal_observer"], r["ideal_ci95"]) if r.get("ideal_observer") is not None
                 else "-" for r in results]
        lines.append(f"{'ideal observer (ground truth)':<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    if any(r.get("pre_stimulus_ceiling") is not None for r in results):
        cells = [f"{100 * r['pre_stimulus_ceiling']:.1f}" if r.get("pre_stimulus_ceiling") is not None
                 else "-" for r in results]
        lines.append(f"{'state oracle (pre-stimulus ceiling)':<{width}}"
                     + "".join(f"{c:>{cell}}" for c in cells))
    lines.append(f"{'evaluation trials':<{width}}" + "".join(f"{r['n_eval']:>{cell}}" for r in results))
    lines.append(f"{'training trials':<{width}}" + "".join(f"{r['n_train']:>{cell}}" for r in results))
    return "\n".join(lines)


def format_paired(results: list[dict], keys: list[str] | None = None) -> str:
    """Paired differences (percentage points) with 95% CI and p-values, one line each."""
    lines = []
    for r in results:
        for key, c in r.get("paired", {}).items():
            if keys is not None and key not in keys:
                continue
            lines.append(f"{r['task']:<13} {key:<48} {100 * c['diff']:+5.1f} "
                         f"[{100 * c['ci95'][0]:+5.1f}, {100 * c['ci95'][1]:+5.1f}]  "
                         f"{p_text(c['p_value'])} (McNemar {p_text(c['mcnemar_p'])}), n {c['n']}")
    return "\n".join(lines)


def save_probe(path: str | os.PathLike, result: dict, *, feature: str | None = None,
               readout: str | None = None, extra: dict | None = None) -> dict:
    """Write one latent feature set's folded probe (probe.json, atomically).

    P(perceived) = sigmoid(features @ weights + bias); decide perceived iff P >= threshold.
    feature: which latent feature set ("latent", "latent_<readout>"); default: the only one.
    The evaluation trials' keys and this probe's P(perceived) on them travel along, so later
    stages (student, int8) are compared with it paired, on the same trials.
    """
    probes = result.get("probes", {})
    if feature is None:
        if len(probes) != 1:
            raise ValueError(f"this result has {len(probes)} latent probes "
                             f"({', '.join(probes) or 'none'}): say which to save")
        feature = next(iter(probes))
    if feature not in probes:
        raise ValueError(f"this result has no probe for {feature!r} (have: "
                         f"{', '.join(probes) or 'none'})")
    m = result["features"][feature]
    doc = {"format": PROBE_FORMAT, "version": 2, "task": result["task"],
           "readout": readout or (feature[len("latent_"):] if feature.startswith("latent_")
                                  else "latent"),
           "latent_dim": int(m["dim"]), **probes[feature],
           **({"window_offset_ms": result["window"]["offset_ms"]} if "window" in result else {}),
           "metrics": {"balanced_accuracy": m["balanced_accuracy"], "ci95": m["ci95"],
                       "train_balanced_accuracy": m["train_balanced_accuracy"],
                       "C": m["C"], "cv": m["cv"], "evaluation": result["evaluation"],
                       "n_train": result["n_train"], "n_eval": result["n_eval"],
                       "ideal_observer": result.get("ideal_observer")},
           "evaluation": {**result["eval_trials"], "p_teacher": result["eval_p"][feature]},
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
        raise InputError(f"cannot read probe {path}: {exc}") from None
    return check_probe_doc(doc, str(path))


def check_probe_doc(doc, where: str) -> dict:
    """The one reader of `phosphene probe`'s probe.json (also quantize's): the format, the
    weights as a float64 array that fits `latent_dim`, a threshold on P(perceived)."""
    if not isinstance(doc, dict) or doc.get("format") != PROBE_FORMAT:
        raise InputError(f"{where} is not a phosphene probe file (from `phosphene probe`)")
    try:
        doc["weights"] = np.asarray(doc["weights"], dtype=np.float64).reshape(-1)
        latent_dim = int(doc.get("latent_dim", doc["weights"].shape[0]))
        float(doc["bias"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: a probe needs numeric weights and bias ({exc})") from None
    if doc["weights"].shape != (latent_dim,):
        raise InputError(f"{where}: {doc['weights'].shape[0]} weights for a {latent_dim}-d latent")
    if doc.get("threshold_on", "probability") != "probability":
        raise InputError(f"{where}: threshold_on {doc.get('threshold_on')!r} is not supported")
    return doc


def probe_teacher(ds: Dataset, model, *, spec: WindowSpec, norm_config: NormaliserConfig,
                  tasks: tuple[str, ...], readout: str = "auto", out_dir: str | os.PathLike | None = None,
                  curve: bool = False, seed: int = 0, resting_windows: int = 1024,
                  extra: dict | None = None, train_draws: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Table 1 for a teacher: fit its readouts on resting windows, probe every readout and
    baseline on each task, choose the readout (training-split CV only), save the probes.

    readout: "auto" (choose_readout) or a name from train.readout.READOUTS.
    Writes, with out_dir: readouts.npz, readout.json and <task>/probe.json.
    Returns {"results": [per task], "choice": {...}, "readouts": {name: Readout}}.
    """
    from phosphene.train.distill import sample_resting_windows
    from phosphene.train.readout import (
        READOUTS,
        Readout,
        fit_teacher_readouts,
        readout_encode_fn,
        save_chosen_readout,
        whitening,
    )

    say = progress or (lambda msg: log.info("%s", msg))
    if readout != "auto" and readout not in READOUTS:
        raise ConfigError(f"unknown readout {readout!r}; choose auto or one of {', '.join(READOUTS)}")
    if ds.sessions_of("resting"):
        say(f"readouts: fitting on {resting_windows} resting windows (no labels) ...")
        rest = sample_resting_windows(ds, spec, norm_config, resting_windows, seed=seed + 7)
        readouts = fit_teacher_readouts(model, rest)
        whiten = whitening(rest.mean(axis=1))
    else:  # the per-electrode readouts and the whitened baseline are fitted on resting data
        log.warning("dataset %s has no resting sessions: only the paper's mean readout and the "
                    "unwhitened baselines are probed", ds.path)
        readouts = {"mean": Readout("mean", int(model.config.embed_dim))}
        whiten = None
        if readout not in ("auto", "mean"):
            raise InputError(f"the {readout} readout is fitted on resting sessions, and dataset "
                             f"{ds.path} has none: use --readout mean")
    encode = readout_encode_fn(model, readouts)
    results = []
    for task in tasks:
        say(f"{task}: readouts {', '.join(readouts)} and baselines, blocked CV on training "
            "trials, evaluation ...")
        results.append(probe_task(ds, encode, task, spec=spec, norm_config=norm_config,
                                  curve=curve, seed=seed, whiten=whiten, train_draws=train_draws))
    if readout == "auto":  # chosen on the tasks after onset when there are any (Table 1's)
        choice = choose_readout([r for r in results if r["trials"] == r["task"]] or results)
    else:
        choice = {"readout": readout, "feature": f"latent_{readout}", "rule": "given"}
    for r in results:
        r["chosen"] = choice["feature"]
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_chosen_readout(out_dir, readouts, choice)
        for r in results:
            save_probe(out_dir / r["task"] / "probe.json", r, feature=choice["feature"],
                       extra=extra)
    return {"results": results, "choice": choice, "readouts": readouts}
