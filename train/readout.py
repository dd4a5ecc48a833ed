"""Readouts: how a window's encoder tokens become the features a linear probe reads.

The teacher's encoder returns one token per (electrode, time patch) plus registers. What
the probe sees depends on how those tokens are pooled:

- "mean": the paper's latent, the mean of all encoder outputs (D values). It keeps what
  is shared across the array (the slow spontaneous state dominates it) and averages away
  *where* activity is: an evoked response at one electrode is ~2% of a window's variance.
- "electrode_k1", "electrode_k4": each electrode's tokens pooled over time (C x D),
  projected onto the first k principal directions of that pooled token on resting data
  (one projection shared by all electrodes), then whitened with the resting covariance of
  the C x k features. It keeps *where*; the whitening removes the spontaneous activity the
  electrodes share, so an evoked deviation stands out. Everything is fitted on resting
  windows, never on labels.

A readout is linear in the pooled tokens, so it runs on the edge as part of the student
(the student is distilled to output the readout's features) and the probe stays one dot
product. Parameters are numpy arrays, saved as readout.npz beside the probes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phosphene.errors import ConfigError, InputError
from phosphene.io import atomic_path

__all__ = ["CHOSEN_FILE", "READOUTS", "READOUT_FILE", "Readout", "fit_readouts",
           "fit_teacher_readouts", "load_chosen_readout", "load_readouts", "pool_tokens",
           "readout_encode_fn", "save_chosen_readout", "save_readouts", "teacher_tokens",
           "whitening"]

READOUTS = ("mean", "electrode_k1", "electrode_k4")
READOUT_FILE = "readouts.npz"


def whitening(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), W (F, F)) with cov((x - mean) @ W) = I under a Ledoit-Wolf shrunk covariance.

    Shrinkage keeps W finite when F approaches the number of windows. W is symmetric
    (ZCA): each output stays tied to its own input feature, so an electrode's feature
    remains that electrode's after whitening.
    """
    x = np.asarray(features, np.float64)
    n, f = x.shape
    if n < 2:
        raise ValueError("whitening needs at least 2 windows")
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / n
    # Ledoit-Wolf shrinkage towards mu * I (Ledoit & Wolf 2004, the closed form)
    mu = np.trace(cov) / f
    delta = ((cov - mu * np.eye(f)) ** 2).sum() / f
    x2 = xc ** 2
    beta = min(delta, ((x2.T @ x2) / n - cov ** 2).sum() / (f * n))
    shrink = beta / delta if delta > 0 else 1.0
    cov = (1 - shrink) * cov + shrink * mu * np.eye(f)
    evals, evecs = np.linalg.eigh(cov)
    W = (evecs / np.sqrt(np.maximum(evals, 1e-12 * max(evals.max(), 1e-30)))) @ evecs.T
    return mean, W


def pool_tokens(tokens: np.ndarray, *, n_registers: int, n_channels: int,
                n_time_patches: int) -> dict[str, np.ndarray]:
    """tokens: (N, R + C * n_t, D) encoder outputs -> {"mean": (N, D), "electrode": (N, C, D)}.

    Tokens are electrode-major after the registers (token l: electrode l // n_t).
    """
    N, L, D = tokens.shape  # windows, tokens, width
    if n_registers + n_channels * n_time_patches != L:
        raise ValueError(f"expected {n_registers} + {n_channels} x {n_time_patches} tokens, got {L}")
    per_electrode = tokens[:, n_registers:].reshape(N, n_channels, n_time_patches, D).mean(2)
    return {"mean": tokens.mean(1), "electrode": per_electrode}


@dataclass
class Readout:
    """One fitted readout: pooled tokens -> (N, dim) features."""

    name: str
    dim: int
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def apply(self, pooled: dict[str, np.ndarray]) -> np.ndarray:
        if self.name == "mean":
            return np.asarray(pooled["mean"], np.float64)
        if self.name.startswith("electrode_k"):
            el = np.asarray(pooled["electrode"], np.float64)  # (N, C, D)
            z = ((el - self.params["center"]) @ self.params["projection"]).reshape(len(el), -1)
            return (z - self.params["white_mean"]) @ self.params["white"]
        raise ConfigError(f"unknown readout {self.name!r}; choose one of {', '.join(READOUTS)}")

    def describe(self) -> str:
        if self.name == "mean":
            return f"mean of all encoder outputs ({self.dim}-d, the paper's)"
        k = self.params["projection"].shape[1]
        return (f"per-electrode tokens pooled over time, resting PCA k={k}, resting-whitened "
                f"({self.dim}-d)")


def fit_readouts(resting_tokens: np.ndarray, *, n_registers: int, n_channels: int,
                 n_time_patches: int) -> dict[str, Readout]:
    """Fit every readout on the encoder tokens of resting windows (no labels)."""
    pooled = pool_tokens(resting_tokens, n_registers=n_registers, n_channels=n_channels,
                         n_time_patches=n_time_patches)
    D = resting_tokens.shape[2]
    el = np.asarray(pooled["electrode"], np.float64)  # (N, C, D)
    center = el.mean(0)  # (C, D): each electrode's own resting mean
    _, _, vt = np.linalg.svd((el - center).reshape(-1, D), full_matrices=False)
    readouts = {"mean": Readout("mean", D)}
    for name in READOUTS[1:]:
        k = int(min(int(name[len("electrode_k"):]), D))
        projection = vt[:k].T  # (D, k): shared by all electrodes
        z = ((el - center) @ projection).reshape(len(el), -1)
        white_mean, white = whitening(z)
        readouts[name] = Readout(name, n_channels * k,
                                 {"center": center, "projection": projection,
                                  "white_mean": white_mean, "white": white})
    return readouts


def save_readouts(path: str | os.PathLike, readouts: dict[str, Readout]) -> None:
    """Write readouts.npz atomically (name/param arrays, plus each readout's dim)."""
    arrays = {}
    for name, r in readouts.items():
        arrays[f"{name}/dim"] = np.asarray(r.dim)
        for key, value in r.params.items():
            arrays[f"{name}/{key}"] = np.asarray(value)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_readouts(path: str | os.PathLike) -> dict[str, Readout]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            items = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read readouts {path}: {exc}") from None
    out: dict[str, Readout] = {}
    for key, value in items.items():
        name, _, param = key.partition("/")
        r = out.setdefault(name, Readout(name, 0))
        if param == "dim":
            r.dim = int(value)
        else:
            r.params[param] = value
    unknown = set(out) - set(READOUTS)
    if unknown:
        raise InputError(f"{path}: unknown readouts {sorted(unknown)}")
    return out


def teacher_tokens(model, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """All encoder outputs of a teacher, no masking: x (N, T, C) -> (N, R + L, D) float32."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], np.float32))
            latent, _, _ = model.forward_encoder(xb, mask_ratio=0.0)
            out.append(latent.float().cpu().numpy())
    if not out:
        raise ValueError("no windows to encode")
    return np.concatenate(out)


def _geometry(model) -> dict:
    cfg = model.config
    return {"n_registers": cfg.n_registers, "n_channels": cfg.n_channels,
            "n_time_patches": cfg.n_time_patches}


def fit_teacher_readouts(model, resting_windows: np.ndarray) -> dict[str, Readout]:
    """Fit every readout of a teacher on its tokens of resting windows (N, T, C)."""
    return fit_readouts(teacher_tokens(model, resting_windows), **_geometry(model))


def readout_encode_fn(model, readouts: dict[str, Readout], *, names: tuple[str, ...] | None = None,
                      batch_size: int = 64):
    """An encode_fn for train.probe: x (N, T, C) -> {readout: (N, dim)}, one encoder pass.

    With a single name asked for, returns the bare (N, dim) array (for diagnostics).
    """
    bare = names is not None and len(names) == 1
    names = tuple(names or readouts)
    geometry = _geometry(model)

    def encode(x: np.ndarray):
        out: dict[str, np.ndarray] = {}
        for start in range(0, x.shape[0], 512):  # bounded memory: tokens are R + C x n_t x D
            pooled = pool_tokens(teacher_tokens(model, x[start:start + 512], batch_size=batch_size),
                                 **geometry)
            for n in names:
                out.setdefault(n, []).append(readouts[n].apply(pooled))
        joined = {n: np.concatenate(v) for n, v in out.items()}
        return joined[names[0]] if bare else joined

    return encode


CHOSEN_FILE = "readout.json"


def save_chosen_readout(probe_dir: str | os.PathLike, readouts: dict[str, Readout],
                        choice: dict) -> None:
    """Write probe_dir/readouts.npz and probe_dir/readout.json (the chosen one and why)."""
    from phosphene.io import write_json

    probe_dir = Path(probe_dir)
    probe_dir.mkdir(parents=True, exist_ok=True)
    save_readouts(probe_dir / READOUT_FILE, readouts)
    chosen = readouts[choice["readout"]]
    write_json(probe_dir / CHOSEN_FILE, {**choice, "dim": chosen.dim,
                                         "description": chosen.describe()})


def load_chosen_readout(probe_dir: str | os.PathLike) -> Readout:
    """The readout chosen by `phosphene probe` (probe_dir/readout.json + readouts.npz).

    A probe directory written before readouts existed means the paper's mean readout.
    """
    import json

    probe_dir = Path(probe_dir)
    if not (probe_dir / CHOSEN_FILE).is_file():
        if not probe_dir.exists():
            raise InputError(f"no probe directory at {probe_dir}: run `phosphene probe ... --out "
                             f"{probe_dir}` first")
        return Readout("mean", 0)
    try:
        choice = json.loads((probe_dir / CHOSEN_FILE).read_text(encoding="utf-8"))
        name = str(choice["readout"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{probe_dir / CHOSEN_FILE} is not a readout choice: {exc}") from None
    readouts = load_readouts(probe_dir / READOUT_FILE)
    if name not in readouts:
        raise InputError(f"{probe_dir / READOUT_FILE} has no readout {name!r}")
    return readouts[name]
