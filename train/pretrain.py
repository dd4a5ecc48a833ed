"""Pretraining the teacher on resting-state windows: a plain loop with small pure helpers.

AdamW with linear warm-up and cosine decay (paper: 1e-4, 5k warm-up, down to 1e-5),
bf16 autocast on CUDA, validation reconstruction loss on the last recording days, best
checkpoint by that loss, and resumable `last.pt`. The model is built separately from the
loop and the loop only calls `model(x, session)`, so wrapping it in DistributedDataParallel
(one sampler seed per rank) needs no change to the model.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from phosphene.dataset import Dataset
from phosphene.errors import ConfigError, InputError
from phosphene.io import atomic_path, write_json
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.checkpoint import read_checkpoint, save_checkpoint
from phosphene.train.config import MAEConfig, TrainConfig
from phosphene.train.data import WindowSampler, split_sessions
from phosphene.train.mae import MaskedAutoencoder, build_model, count_parameters

__all__ = [
    "evaluate",
    "lr_at",
    "make_optimizer",
    "plot_loss_curve",
    "pretrain",
    "resolve_device",
]

log = logging.getLogger(__name__)

# Parameters that are positions/tokens rather than weights: no weight decay (MAE recipe).
NO_DECAY = ("spatial_embed", "temporal_embed", "registers", "mask_token", "session_embed",
            "xsession_")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based `step`: linear warm-up, then cosine from lr to lr_min."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps - 1)  # the last step runs at lr_min
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.startswith(NO_DECAY) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=cfg.betas)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cuda' without a GPU is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but torch sees no CUDA device "
                          "(use --device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _autocast(device: torch.device):
    # bf16 on GPU halves memory traffic; on CPU it measured slower than fp32 here.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(model: MaskedAutoencoder, x: torch.Tensor, session: torch.Tensor,
             noise: torch.Tensor, *, batch_size: int, device: torch.device) -> float:
    """Mean masked-patch MSE over fixed windows with fixed masks (the checkpoint criterion).

    x: (N, T, C) cpu float32; session: (N,); noise: (N, L) the masking noise, fixed so the
    number is comparable from one evaluation to the next.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device)
        with _autocast(device):
            _, _, _, terms = model(xb, session[start:start + batch_size].to(device),
                                   noise=noise[start:start + batch_size].to(device))
        total += float(terms["mse"]) * xb.shape[0]
        count += xb.shape[0]
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def channel_mean_baseline(model: MaskedAutoencoder, x: torch.Tensor, noise: torch.Tensor,
                          channel_means: np.ndarray) -> float:
    """Masked-patch MSE of predicting every masked sample by its electrode's mean over the
    training windows, on the same windows and masks as `evaluate`. A teacher whose
    validation MSE is not clearly below this has learnt nothing beyond each channel's level.
    """
    N, T, C = x.shape  # windows, samples, electrodes
    target = model.patchify(x)
    means = torch.as_tensor(np.asarray(channel_means, np.float32)).expand(N, T, C)
    pred = model.patchify(means.contiguous())
    _, mask, _ = model.random_masking(target, model.config.mask_ratio, noise)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return float((per_patch * mask).sum() / mask.sum().clamp_min(1.0))


def plot_loss_curve(history: list[dict], path: str | os.PathLike, title: str = "",
                    baseline: float | None = None) -> None:
    """Training loss (smoothed) and validation reconstruction loss against step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(h["step"], h["train_mse"]) for h in history if "train_mse" in h]
    val = [(h["step"], h["val_mse"]) for h in history if "val_mse" in h]
    if train:
        ax.plot(*zip(*train), label="train masked MSE (running mean)", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "o-", label="validation masked MSE (last days)", color="tab:orange")
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1,
                   label=f"predict each channel's mean ({baseline:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (normalised units)")
    ax.set_title(title or "MAE pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def pretrain(ds: Dataset, preset: str = "small", *, out_dir: str | os.PathLike,
             steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
             lr_min: float | None = None, warmup_steps: int | None = None, seed: int = 0,
             device: str = "auto", resume: bool = False, val_every: int | None = None,
             val_windows: int | None = None, threads: int | None = None,
             spec: WindowSpec | None = None, norm_config: NormaliserConfig | None = None,
             model_overrides: dict | None = None,
             progress: Callable[[dict], None] | None = None) -> dict:
    """Pretrain the MAE on the dataset's resting sessions; returns the pretrain.json summary.

    Writes out_dir/best.pt (lowest validation loss), out_dir/last.pt (resumable),
    out_dir/pretrain.json and out_dir/loss_curve.png. `progress`, if given, is called after
    every step with {step, steps, loss, mse, lr, windows_per_s, val_mse?,
    val_mse_channel_mean?}. Unset schedule arguments take the preset's TrainConfig values;
    spec and norm_config None take the dataset's (`Dataset.window_spec`,
    `Dataset.normaliser_config`: the paper's for MUA, the import's choice for binned counts).
    The validation loss is always reported next to the masked-patch MSE of predicting each
    channel's mean (`val_mse_channel_mean_baseline`): a teacher that does not beat it clearly
    has learnt nothing beyond each channel's level.
    """
    if spec is None:
        spec = ds.window_spec
    if norm_config is None:
        norm_config = ds.normaliser_config
    out_dir = Path(out_dir)
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    ckpt = None
    if resume:
        if not last_path.is_file():
            raise InputError(f"nothing to resume: {last_path} does not exist")
        ckpt = read_checkpoint(last_path)
        if "optimizer" not in ckpt:
            raise InputError(f"{last_path} has no optimizer state; it cannot be resumed")
        tcfg = TrainConfig.from_dict(dict(ckpt["train_config"]))
        overrides = dict(steps=steps, batch_size=batch_size, lr=lr, lr_min=lr_min,
                         warmup_steps=warmup_steps, val_every=val_every)
        tcfg = TrainConfig(**{**tcfg.__dict__, **{k: v for k, v in overrides.items()
                                                 if v is not None}})
        config = MAEConfig.from_dict(dict(ckpt["config"]))
        if config.preset_name != preset:
            raise InputError(f"{last_path} was trained with preset {config.preset_name!r}, not "
                             f"{preset!r}: pass --preset {config.preset_name} to resume it")
        spec = WindowSpec.from_dict(dict(ckpt["window_spec"]))
        norm_config = NormaliserConfig.from_dict(dict(ckpt["normaliser"]))
        session_index = {str(k): int(v) for k, v in ckpt["session_index"].items()}
        seed = tcfg.seed
    else:
        if last_path.exists() or best_path.exists():
            raise InputError(f"{out_dir} already holds a pretraining run: pass --resume to "
                             "continue it or choose another --out")
        tcfg = TrainConfig.preset(preset, steps=steps, batch_size=batch_size, lr=lr,
                                  lr_min=lr_min, warmup_steps=warmup_steps, val_every=val_every,
                                  val_windows=val_windows, seed=seed)
        session_index = None

    train_src, val_src = split_sessions(ds, val_days=tcfg.val_days,
                                        warmup_samples=norm_config.warmup_samples)
    if session_index is None:
        session_index = {sid: i for i, sid in enumerate(sorted({s.session for s in train_src}))}
        config = MAEConfig.preset(preset, n_channels=ds.n_channels, spec=spec,
                                  n_sessions=len(session_index), **(model_overrides or {}))
    if ds.n_channels != config.n_channels:
        raise InputError(f"dataset has {ds.n_channels} channels but {last_path} was trained on "
                         f"{config.n_channels}")

    torch.manual_seed(seed)
    model = build_model(config).to(dev)
    optimizer = make_optimizer(model, tcfg)
    log.info("normalising %d resting sessions (cached after the first run)",
             len(train_src) + len(val_src))
    sampler = WindowSampler(ds, train_src, spec=spec, norm_config=norm_config,
                            session_index_map=session_index, unknown_index=config.unknown_session,
                            seed=seed)
    val_sampler = WindowSampler(ds, val_src, spec=spec, norm_config=norm_config,
                                session_index_map=session_index,
                                unknown_index=config.unknown_session, seed=seed + 1)
    xv, sv = val_sampler.fixed(tcfg.val_windows, seed=seed + 12345)
    gen = torch.Generator().manual_seed(seed + 54321)
    val_x, val_s = torch.from_numpy(xv), torch.from_numpy(sv)
    val_noise = torch.rand(val_x.shape[0], config.n_patches, generator=gen)
    channel_means = sampler.fixed(min(1024, tcfg.val_windows * 8), seed=seed + 777)[0].mean(axis=(0, 1))
    baseline_mse = channel_mean_baseline(model, val_x, val_noise, channel_means)
    log.info("validation baseline (predict each channel's mean): MSE %.4f", baseline_mse)
    log.info("window %g ms from %g ms after onset; normaliser %s", spec.window_ms, spec.offset_ms,
             norm_config.describe())

    start_step, best_val, best_step, history = 0, math.inf, -1, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_step = int(ckpt["step"])
        best_val = float(ckpt.get("best_val_loss", math.inf))
        best_step = int(ckpt.get("best_step", -1))
        history = list(ckpt.get("history", []))
        sampler.set_state(ckpt["sampler_state"])
        torch.set_rng_state(ckpt["torch_rng_state"])
        log.info("resuming %s at step %d of %d", last_path, start_step, tcfg.steps)
        if start_step >= tcfg.steps:
            raise InputError(f"{last_path} is already at step {start_step}; pass a larger "
                             f"--steps than {tcfg.steps} to train further")

    def payload(step: int, with_optimizer: bool) -> dict:
        d = {"config": config.to_dict(), "train_config": tcfg.to_dict(), "step": step,
             "model": model.state_dict(), "session_index": session_index,
             "window_spec": spec.to_dict(), "normaliser": norm_config.to_dict(),
             "channel_map": ds.channel_map.to_json(), "best_val_loss": best_val,
             "val_mse_channel_mean_baseline": baseline_mse,
             "best_step": best_step, "history": history, "dataset": str(ds.path)}
        if with_optimizer:
            d.update(optimizer=optimizer.state_dict(), sampler_state=sampler.state(),
                     torch_rng_state=torch.get_rng_state())
        return d

    model.train()
    log_every = max(1, tcfg.val_every // 10)
    t_start = time.perf_counter()
    train_time, windows_done = 0.0, 0
    running: list[float] = []
    step = start_step
    for step in range(start_step, tcfg.steps):
        t0 = time.perf_counter()
        lr_now = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        xb, sb = sampler.sample(tcfg.batch_size)
        x = torch.from_numpy(xb).to(dev, non_blocking=True)
        session = torch.from_numpy(sb).to(dev, non_blocking=True)
        with _autocast(dev):
            loss, _, _, terms = model(x, session)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step + 1}: lower --lr "
                                     "or check the dataset for constant channels")
        train_time += time.perf_counter() - t0
        windows_done += tcfg.batch_size
        running.append(float(terms["mse"]))
        info = {"step": step + 1, "steps": tcfg.steps, "loss": loss_value,
                "mse": float(np.mean(running[-50:])), "lr": lr_now,
                "windows_per_s": windows_done / max(train_time, 1e-9)}
        is_val_step = (step + 1) % tcfg.val_every == 0 or step + 1 == tcfg.steps
        if (step + 1) % log_every == 0 and not is_val_step:  # loss curve between validations
            history.append({"step": step + 1, "train_mse": info["mse"], "loss": loss_value,
                            "lr": lr_now})
        if is_val_step:
            val_mse = evaluate(model, val_x, val_s, val_noise, batch_size=tcfg.batch_size,
                               device=dev)
            info["val_mse"] = val_mse
            info["val_mse_channel_mean"] = baseline_mse
            history.append({"step": step + 1, "train_mse": info["mse"], "val_mse": val_mse,
                            "val_mse_channel_mean": baseline_mse,
                            "loss": loss_value, "lr": lr_now,
                            "windows_per_s": info["windows_per_s"]})
            if val_mse < best_val:
                best_val, best_step = val_mse, step + 1
                save_checkpoint(best_path, payload(step + 1, with_optimizer=False))
            save_checkpoint(last_path, payload(step + 1, with_optimizer=True))
            log.info("step %d: train mse %.4f, val mse %.4f (predicting each channel's mean: "
                     "%.4f; best %.4f at %d)", step + 1, info["mse"], val_mse, baseline_mse,
                     best_val, best_step)
        if progress is not None:
            progress(info)
    wall_s = time.perf_counter() - t_start

    counts = count_parameters(model)
    summary = {
        "preset": config.preset_name, "dataset": str(ds.path), "out_dir": str(out_dir),
        "steps": tcfg.steps, "resumed_from": start_step if ckpt is not None else None,
        "wall_s": round(wall_s, 2), "train_s": round(train_time, 2),
        "windows_per_s": round(windows_done / max(train_time, 1e-9), 2),
        "final_train_mse": history[-1]["train_mse"] if history else None,
        "best_val_mse": best_val, "best_step": best_step,
        "val_mse_channel_mean_baseline": baseline_mse,
        "val_mse_vs_baseline": round(best_val / baseline_mse, 4) if baseline_mse > 0 else None,
        "parameters": counts, "device": str(dev), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "train_sessions": sorted({s.session for s in train_src}),
        "val_sessions": sorted({s.session for s in val_src}),
        "model_config": config.to_dict(), "train_config": tcfg.to_dict(),
        "window_spec": spec.to_dict(), "normaliser": norm_config.to_dict(),
        "checkpoints": {"best": str(best_path), "last": str(last_path)},
        "history": history,
    }
    write_json(out_dir / "pretrain.json", summary)
    plot_loss_curve(history, out_dir / "loss_curve.png",
                    title=f"MAE pretraining ({config.preset_name}, {ds.path.name})",
                    baseline=baseline_mse)
    return summary
