"""Teacher checkpoints: everything needed to rebuild the model and feed it the same input.

A checkpoint is a `torch.save` dict (loaded with `weights_only=True`, so opening one never
runs code) holding the model config, the step, the weights, the session index map, the
WindowSpec and NormaliserConfig the model was trained with, the channel map and, in
`last.pt` only, the optimizer and sampler state for `--resume`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from phosphene.dataset import Dataset
from phosphene.errors import InputError
from phosphene.io import atomic_path
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.config import MAEConfig
from phosphene.train.mae import MaskedAutoencoder, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "check_dataset_compatible",
    "load_teacher",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "phosphene-mae-teacher"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous file)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory means its best.pt (else last.pt); a file means itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path} holds no checkpoint (best.pt or last.pt): run "
                         f"`phosphene pretrain DATASET --out {path}` first")
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint dict (ValueError naming the file when it is not one)."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a phosphene teacher checkpoint "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a phosphene teacher checkpoint "
                         "(written by `phosphene pretrain`?)")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > CHECKPOINT_VERSION:
        raise InputError(f"{path} has checkpoint version {ckpt.get('version')!r}; this phosphene "
                         f"reads version {CHECKPOINT_VERSION} (upgrade phosphene)")
    for key in ("config", "model", "step", "window_spec", "normaliser", "session_index"):
        if key not in ckpt:
            raise InputError(f"{path} is missing {key!r}: truncated or not a teacher checkpoint")
    ckpt["path"] = path
    return ckpt


def load_teacher(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                 ) -> tuple[MaskedAutoencoder, dict]:
    """Rebuild the teacher from a checkpoint (file or run directory) in eval mode.

    Returns (model, meta) with meta keys: config (MAEConfig), window_spec (WindowSpec),
    normaliser (NormaliserConfig), session_index (dict str -> int), step, preset,
    channel_map (JSON dict or None), best_val_loss, path (Path).
    """
    ckpt = read_checkpoint(path, map_location)
    try:
        config = MAEConfig.from_dict(dict(ckpt["config"]))
        spec = WindowSpec.from_dict(dict(ckpt["window_spec"]))
        norm = NormaliserConfig.from_dict(dict(ckpt["normaliser"]))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{ckpt['path']}: its stored config is not valid: {exc}") from None
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"{ckpt['path']}: the weights do not fit a {config.preset_name!r} model with "
                         f"{config.n_channels} channels (incompatible preset or channel count): "
                         f"{' '.join(first[1:3])[:300]}") from None
    model.to(map_location).eval()
    meta = {
        "config": config, "window_spec": spec, "normaliser": norm,
        "session_index": dict(ckpt["session_index"]), "step": int(ckpt["step"]),
        "preset": config.preset_name, "channel_map": ckpt.get("channel_map"),
        "best_val_loss": ckpt.get("best_val_loss"), "path": ckpt["path"],
    }
    return model, meta


def check_dataset_compatible(ds: Dataset, meta: dict) -> None:
    """Raise ValueError when a dataset cannot be fed to a model (channels, rate, electrodes)."""
    config: MAEConfig = meta["config"]
    spec: WindowSpec = meta["window_spec"]
    if ds.n_channels != config.n_channels:
        raise InputError(f"dataset {ds.path} has {ds.n_channels} channels but the model in "
                         f"{meta['path']} was trained on {config.n_channels}: use a checkpoint "
                         "pretrained on this array")
    if abs(ds.sample_rate_hz - spec.sample_rate_hz) > 1e-6:
        raise InputError(f"dataset {ds.path} is sampled at {ds.sample_rate_hz:g} Hz but the model "
                         f"expects {spec.sample_rate_hz:g} Hz")
    cmap = meta.get("channel_map")
    if cmap and [int(e["id"]) for e in cmap.get("electrodes", [])] != list(ds.channel_map.ids):
        raise InputError(f"dataset {ds.path} orders its electrodes differently from the model's "
                         "channel map: the spatial embeddings would be applied to the wrong "
                         "electrodes")
