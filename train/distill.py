"""Distil the teacher's readout into a small student encoder, on unlabelled windows.

No labels: the student regresses the frozen teacher's features z_t = readout(teacher(x))
(the readout the probes chose: train/readout.py) on windows of resting activity plus
stimulation windows of the training sessions with their labels never read. The loss is
the squared error in the resting-whitened feature space: every direction counts by how
much it varies at rest, not by its raw size. A probe that leans on low-variance directions
(the evoked, per-electrode ones) is then served by the student as well as the teacher;
plain MSE let the student neglect them (decision agreement with the teacher 0.63). Teacher
features are computed once for a fixed pool of windows, since the teacher costs far more
per window than a student step.

Flow: sample windows -> Teacher.encode_numpy (cached pool) -> train_student (plain loop,
small helpers) -> save_student (student.pt with config, step, WindowSpec, normaliser,
readout, latent width, teacher hash).

Resting windows come from the first `1 - heldout_fraction` of every resting session; the
held-out tail of each session is never trained on, calibrated on or used by quantize's
calibration, so fidelity and parity are measured on unseen activity. The evaluation set
(Dataset.evaluation) is never read here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from phosphene.dataset import Dataset, DatasetError
from phosphene.errors import ConfigError, InputError
from phosphene.io import atomic_path, sha256_file, write_json
from phosphene.metrics import row_cosines
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.data import Source, WindowSampler
from phosphene.train.student import (
    ARCHS,
    StudentConfig,
    build_student,
    count_parameters,
    student_config,
)

__all__ = [
    "DISTILL_PRESETS",
    "STUDENT_FILE",
    "STUDENT_FORMAT",
    "STUDENT_VERSION",
    "DistillConfig",
    "Teacher",
    "distill",
    "heldout_resting_windows",
    "latent_fidelity",
    "load_student",
    "load_teacher_for_distill",
    "resting_sources",
    "sample_resting_windows",
    "save_student",
    "stimulation_windows",
    "train_student",
]

log = logging.getLogger(__name__)

STUDENT_FORMAT = "phosphene-student"
STUDENT_VERSION = 1
STUDENT_FILE = "student.pt"


@dataclass(frozen=True)
class DistillConfig:
    """Distillation schedule and data; named presets below."""

    steps: int = 2000  # optimizer steps
    batch_size: int = 64  # windows per step
    lr: float = 2e-3  # peak learning rate (AdamW)
    lr_min: float = 5e-5  # cosine floor
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 1e-4  # small: the student is small and the targets are smooth
    pool_windows: int = 4096  # resting windows with cached teacher latents (training pool)
    val_windows: int = 256  # held-out resting windows for latent fidelity
    heldout_fraction: float = 0.1  # tail of every resting session kept out of training
    stim_jitter: tuple[int, ...] = (0, -8, 8)  # samples: stimulation windows around each
    # trial's decoded window (labels never read), so the student sees evoked activity
    teacher_batch: int = 64  # windows per teacher forward pass (memory vs. speed)
    student_preset: str = "small"  # size preset of the student (train/student.py PRESETS)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.pool_windows < 1 or self.val_windows < 1:
            raise ConfigError("steps, batch_size, pool_windows and val_windows must be >= 1")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ConfigError("need lr > 0 and 0 <= lr_min <= lr")
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ConfigError("heldout_fraction must be in (0, 0.5)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> DistillConfig:
        if name not in DISTILL_PRESETS:
            raise ConfigError(f"unknown distill preset {name!r}; choose one of "
                              f"{', '.join(DISTILL_PRESETS)}")
        clean = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**DISTILL_PRESETS[name], **clean})


DISTILL_PRESETS: dict[str, dict] = {
    "tiny": dict(steps=40, batch_size=32, pool_windows=256, val_windows=64, warmup_steps=5,
                 student_preset="tiny"),
    # Sized for 2 CPU cores: ~25 ms per teacher window (small teacher) for the pool, then
    # 2000 student steps; held-out R2 ~0.99 on the demo dataset.
    "small": dict(steps=2000, batch_size=64, pool_windows=3072, val_windows=256),
    "paper": dict(steps=20000, batch_size=256, pool_windows=65536, val_windows=2048,
                  student_preset="base"),
}


# --------------------------------------------------------------------------------------
# The teacher, as distillation sees it
# --------------------------------------------------------------------------------------
@dataclass
class Teacher:
    """A frozen encoder: encode(x: (N, T, C) float32 tensor) -> (N, D) tensor, plus its data contract."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    latent_dim: int  # width of the features the student learns (the readout's)
    spec: WindowSpec
    norm_config: NormaliserConfig
    n_channels: int
    sha256: str = ""  # of the checkpoint file, recorded in the student and the bundle
    path: str = ""
    model: torch.nn.Module | None = None  # for benchmarks (torch eager)
    meta: dict = field(default_factory=dict)
    readout: str = "mean"  # train/readout.py: which pooling of the tokens the student learns
    readout_fn: Callable[[np.ndarray], np.ndarray] | None = None  # numpy (N,T,C) -> (N, D)

    @torch.no_grad()
    def encode_numpy(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        """x: (N, T, C) float32 -> (N, D) float32 readout features, in batches."""
        if self.readout_fn is not None:
            return np.asarray(self.readout_fn(x), np.float32).reshape(len(x), -1)
        out = [self.encode(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)))
               .float().numpy() for i in range(0, len(x), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.latent_dim), np.float32)


def load_teacher_for_distill(path: str | os.PathLike, *,
                             probe_dir: str | os.PathLike | None = None) -> Teacher:
    """Open a pretraining run directory (its best.pt) or a teacher checkpoint file.

    probe_dir: the probes' directory (`phosphene probe --out DIR`); the teacher then serves
    the readout chosen there (DIR/readout.json, DIR/readouts.npz). Without it, the paper's
    mean of all encoder outputs.
    """
    from phosphene.train.checkpoint import load_teacher  # the teacher's own loader
    from phosphene.train.readout import load_chosen_readout, readout_encode_fn

    model, meta = load_teacher(path)
    cfg = meta["config"]
    file = Path(meta["path"])
    teacher = Teacher(encode=model.encode, latent_dim=int(cfg.embed_dim),
                      spec=meta["window_spec"], norm_config=meta["normaliser"],
                      n_channels=int(cfg.n_channels), sha256=sha256_file(file), path=str(file),
                      model=model, meta=meta)
    if probe_dir is not None:
        readout = load_chosen_readout(probe_dir)
        if readout.name == "mean":  # model.encode is that readout already
            return teacher
        teacher.readout = readout.name
        teacher.latent_dim = readout.dim
        teacher.readout_fn = readout_encode_fn(model, {readout.name: readout},
                                               names=(readout.name,))
    return teacher


# --------------------------------------------------------------------------------------
# Windows of resting activity
# --------------------------------------------------------------------------------------
def resting_sources(ds: Dataset, norm: NormaliserConfig, heldout_fraction: float,
                    part: str) -> list[Source]:
    """The train part (first 1 - heldout_fraction) or held-out tail of every resting session."""
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
    sources = []
    for s in ds.sessions_of("resting"):
        usable0 = norm.warmup_samples  # the normaliser's warm-up rows are NaN
        split = usable0 + int((1.0 - heldout_fraction) * (s.n_samples - usable0))
        lo, hi = (usable0, split) if part == "train" else (split, s.n_samples)
        if hi > lo:
            sources.append(Source(s.session, lo, hi))
    if not sources:
        raise DatasetError(f"{ds.path} has no resting sessions to distil on")
    return sources


def sample_resting_windows(ds: Dataset, spec: WindowSpec, norm: NormaliserConfig, n: int, *,
                           seed: int = 0, part: str = "train",
                           heldout_fraction: float = 0.1) -> np.ndarray:
    """n random normalised resting windows -> (n, T, C) float32.

    part="train" draws from the first (1 - heldout_fraction) of every resting session,
    part="heldout" from the rest. Windows are exactly what the runtime decodes: rows of
    `ds.normalised(session, norm)`, the one signal definition (via train.data.WindowSampler).
    """
    sources = resting_sources(ds, norm, heldout_fraction, part)
    sampler = WindowSampler(ds, sources, spec=spec, norm_config=norm, session_index_map={},
                            unknown_index=0, seed=seed)
    return sampler.sample(n)[0]


def heldout_resting_windows(ds: Dataset, spec: WindowSpec, norm: NormaliserConfig, n: int, *,
                            seed: int = 1, heldout_fraction: float = 0.1) -> np.ndarray:
    """(n, T, C) windows from the held-out tail of the resting sessions."""
    return sample_resting_windows(ds, spec, norm, n, seed=seed, part="heldout",
                                  heldout_fraction=heldout_fraction)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warm-up then cosine decay to lr_min."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def distill_loss(student_z: torch.Tensor, teacher_z: torch.Tensor,
                 whiten: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Squared error in the resting-whitened space, averaged over windows and features.

    student_z, teacher_z: (N, D); whiten: (D, D) with cov(z_rest @ whiten) = I.
    """
    loss = ((student_z - teacher_z) @ whiten).pow(2).mean()
    return loss, {"whitened_mse": float(loss.detach())}


def latent_fidelity(pred: np.ndarray, target: np.ndarray, center: np.ndarray | None = None) -> dict:
    """How well latents `pred` (N, D) reproduce `target` (N, D).

    cosine: raw, per window (mean/min); cosine_centred: after subtracting `center` (the
    teacher's mean latent); r2: 1 - SSE / total variance of the target.
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    center = target.mean(0) if center is None else np.asarray(center, np.float64)

    c = row_cosines(pred, target)
    cc = row_cosines(pred - center, target - center)
    sse = ((pred - target) ** 2).sum()
    sst = ((target - target.mean(0)) ** 2).sum()
    return {"cosine_mean": float(c.mean()), "cosine_min": float(c.min()),
            "cosine_centred_mean": float(cc.mean()), "cosine_centred_min": float(cc.min()),
            "r2": float(1 - sse / max(sst, 1e-12)),
            "max_abs_error": float(np.abs(pred - target).max()), "n_windows": len(pred)}


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """x: (N, T, C) -> (N, D) float32 with the model in eval mode."""
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def train_student(student_cfg: StudentConfig, x_pool: np.ndarray, z_pool: np.ndarray,
                  x_val: np.ndarray, z_val: np.ndarray, cfg: DistillConfig, *,
                  z_white: np.ndarray | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Fit a student to the teacher features; returns (model in eval mode, metrics).

    x_pool: (N, T, C) windows, z_pool: (N, D) their teacher features; x_val/z_val held out;
    z_white: the resting features that define the loss's whitening (default: z_pool).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_student(student_cfg)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    from phosphene.train.readout import whitening

    center_np = z_pool.mean(0)
    whiten = torch.from_numpy(whitening(z_white if z_white is not None else z_pool)[1]
                              .astype(np.float32))
    x_t, z_t = torch.from_numpy(x_pool), torch.from_numpy(z_pool.astype(np.float32))
    n = len(x_pool)
    t0 = time.perf_counter()
    last: dict = {}
    report_every = max(1, cfg.steps // 10)
    whiten_np = whiten.numpy().astype(np.float64)

    def whitened_mse(x: np.ndarray, z: np.ndarray) -> float:
        return float((((predict(model, x) - z) @ whiten_np) ** 2).mean())

    pool_mse_start = whitened_mse(x_pool, z_pool)
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        idx = torch.from_numpy(rng.integers(0, n, size=min(cfg.batch_size, n)))
        loss, last = distill_loss(model(x_t[idx]), z_t[idx], whiten)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and ((step + 1) % report_every == 0 or step + 1 == cfg.steps):
            progress(f"{student_cfg.arch} step {step + 1}/{cfg.steps} whitened MSE "
                     f"{last['whitened_mse']:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    metrics = {"steps": cfg.steps, "train_seconds": round(time.perf_counter() - t0, 1),
               "final_loss": float(loss.detach()), "parameters": count_parameters(model),
               # the whole training pool, in eval mode: before the first step and after the last
               "pool_whitened_mse": {"start": pool_mse_start, "end": whitened_mse(x_pool, z_pool)},
               "val": latent_fidelity(predict(model, x_val), z_val, center_np)}
    metrics["val"]["whitened_mse"] = whitened_mse(x_val, z_val)
    return model, metrics


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------
def save_student(out_dir: str | os.PathLike, model: torch.nn.Module, *, step: int,
                 spec: WindowSpec, norm: NormaliserConfig, teacher: Teacher, ds: Dataset,
                 distill_config: DistillConfig, metrics: dict,
                 latent_center: np.ndarray) -> Path:
    """Write out_dir/student.pt (atomically) and out_dir/metrics.json; returns the .pt path."""
    cfg: StudentConfig = model.cfg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": STUDENT_FORMAT, "version": STUDENT_VERSION,
        "arch": cfg.arch, "config": cfg.to_dict(), "step": int(step),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "window_spec": spec.to_dict(), "normaliser": norm.to_dict(),
        "latent_dim": cfg.latent_dim, "n_channels": cfg.n_channels,
        "sample_rate_hz": ds.sample_rate_hz, "channel_map": ds.channel_map.to_json(),
        "teacher": {"path": teacher.path, "sha256": teacher.sha256,
                    "latent_dim": teacher.latent_dim},
        "readout": teacher.readout,
        "dataset": str(ds.path), "distill_config": distill_config.to_dict(),
        "latent_center": [float(v) for v in latent_center], "metrics": metrics,
    }
    file = out_dir / STUDENT_FILE
    with atomic_path(file, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)
    write_json(out_dir / "metrics.json", {"arch": cfg.arch, "step": int(step), **metrics})
    return file


def load_student(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """student.pt (or its directory) -> (model in eval mode, checkpoint metadata without weights)."""
    path = Path(path)
    file = path / STUDENT_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"no student checkpoint at {file}: run `phosphene distill` first")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{file} is not a readable student checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != STUDENT_FORMAT:
        raise InputError(f"{file} is not a {STUDENT_FORMAT} checkpoint")
    if int(ckpt.get("version", 0)) > STUDENT_VERSION:
        raise InputError(f"{file} was written by a newer phosphene (student format "
                         f"{ckpt.get('version')}); upgrade phosphene")
    model = build_student(StudentConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["path"] = str(file)
    return model, meta


# --------------------------------------------------------------------------------------
# The library entry point
# --------------------------------------------------------------------------------------
def stimulation_windows(ds: Dataset, spec: WindowSpec, norm: NormaliserConfig,
                        jitter: tuple[int, ...]) -> np.ndarray:
    """(N, T, C) windows of every trial of the dataset (every task), each at its task's
    decoded position shifted by every `jitter` (samples). Labels are never read."""
    out = []
    for task in ds.tasks:
        trials = ds.task_trials(task)
        window = ds.task_window(task, spec)[1]
        for sid in np.unique(trials.session):
            arr = ds.normalised(str(sid), norm)
            for onset in trials.onset_sample[trials.session == sid]:
                for shift in jitter:
                    start, stop = window.triggered_window(int(onset) + int(shift))
                    if start >= 0 and stop <= arr.shape[0]:
                        w = np.asarray(arr[start:stop], np.float32)
                        if np.isfinite(w).all():
                            out.append(w)
    if not out:
        return np.zeros((0, spec.window_samples, ds.n_channels), np.float32)
    return np.stack(out)


def teacher_pool(ds: Dataset, teacher: Teacher, cfg: DistillConfig, *,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Training windows (resting + unlabelled stimulation), held-out resting windows, and
    their teacher features (computed once)."""
    spec, norm = teacher.spec, teacher.norm_config
    if "config" in teacher.meta:  # a real teacher checkpoint: electrodes in the same order
        from phosphene.train.checkpoint import check_dataset_compatible
        check_dataset_compatible(ds, teacher.meta)
    if ds.n_channels != teacher.n_channels:
        raise InputError(f"the dataset has {ds.n_channels} channels but the teacher was trained "
                         f"on {teacher.n_channels}")
    t0 = time.perf_counter()
    x_rest = sample_resting_windows(ds, spec, norm, cfg.pool_windows, seed=cfg.seed,
                                    heldout_fraction=cfg.heldout_fraction)
    x_stim = stimulation_windows(ds, spec, norm, cfg.stim_jitter)
    x_val = heldout_resting_windows(ds, spec, norm, cfg.val_windows, seed=cfg.seed + 1,
                                    heldout_fraction=cfg.heldout_fraction)
    if progress:
        progress(f"teacher {teacher.readout} features for {len(x_rest)} resting + {len(x_stim)} "
                 f"unlabelled stimulation + {len(x_val)} held-out windows ...")
    z_rest = teacher.encode_numpy(x_rest, cfg.teacher_batch)
    z_stim = (teacher.encode_numpy(x_stim, cfg.teacher_batch) if len(x_stim)
              else np.zeros((0, z_rest.shape[1]), np.float32))
    z_val = teacher.encode_numpy(x_val, cfg.teacher_batch)
    if progress:
        progress(f"teacher features done ({time.perf_counter() - t0:.0f} s)")
    if z_rest.shape[1] != teacher.latent_dim:
        raise InputError(f"teacher returned {z_rest.shape[1]}-d features, expected {teacher.latent_dim}")
    return {"x_pool": np.concatenate([x_rest, x_stim]), "z_pool": np.concatenate([z_rest, z_stim]),
            "z_rest": z_rest, "x_val": x_val, "z_val": z_val, "n_stimulation": len(x_stim)}


def distill(ds: Dataset, teacher_path: str | os.PathLike | Teacher, out_dir: str | os.PathLike,
            *, arch: str = "mixer", steps: int | None = None, preset: str = "small",
            config: DistillConfig | None = None, student_preset: str | None = None,
            pool: dict | None = None, probe_dir: str | os.PathLike | None = None,
            progress: Callable[[str], None] | None = None) -> dict:
    """Train one student and save it to out_dir/student.pt; returns its metrics.

    teacher_path: a pretraining run / checkpoint (train.pretrain.load_teacher) or a Teacher.
    probe_dir: the probes' directory; the student then learns the readout chosen there.
    pool: the output of `teacher_pool` to reuse cached teacher features (used by --compare).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown student arch {arch!r}; choose one of {', '.join(ARCHS)}")
    cfg = config or DistillConfig.preset(preset, steps=steps)
    if steps is not None:
        cfg = replace(cfg, steps=int(steps))
    if student_preset is not None:
        cfg = replace(cfg, student_preset=student_preset)
    teacher = (teacher_path if isinstance(teacher_path, Teacher)
               else load_teacher_for_distill(teacher_path, probe_dir=probe_dir))
    pool = pool or teacher_pool(ds, teacher, cfg, progress=progress)
    scfg = student_config(arch, spec=teacher.spec, n_channels=ds.n_channels,
                          latent_dim=teacher.latent_dim, preset=cfg.student_preset)
    model, metrics = train_student(scfg, pool["x_pool"], pool["z_pool"], pool["x_val"],
                                   pool["z_val"], cfg, z_white=pool.get("z_rest"),
                                   progress=progress)
    metrics["pool"] = {"resting": len(pool["x_pool"]) - pool.get("n_stimulation", 0),
                       "stimulation_unlabelled": pool.get("n_stimulation", 0)}
    file = save_student(out_dir, model, step=cfg.steps, spec=teacher.spec, norm=teacher.norm_config,
                        teacher=teacher, ds=ds, distill_config=cfg, metrics=metrics,
                        latent_center=pool["z_pool"].mean(0))
    return {"arch": arch, "readout": teacher.readout, "student": str(file), **metrics}
