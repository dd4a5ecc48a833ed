"""Model and training configuration: one frozen dataclass each, with named presets.

The data geometry (channel count, window and patch length, number of training sessions)
is not part of a preset: it comes from the dataset and the WindowSpec when the model is
built, so nothing here assumes a 96-channel array or a 128-sample window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from phosphene.errors import ConfigError
from phosphene.signal import WindowSpec

__all__ = ["MODEL_PRESETS", "PRESET_NAMES", "TRAIN_PRESETS", "MAEConfig", "TrainConfig"]


@dataclass(frozen=True)
class MAEConfig:
    """The masked autoencoder's shape (paper Table 4). Build one with `MAEConfig.preset`."""

    # --- data geometry: from the dataset and WindowSpec, never from a preset --------------
    n_channels: int  # electrodes in the window; one spatial embedding each
    window_samples: int  # samples per window (paper: 128 at 1 kHz)
    patch_samples: int  # samples per patch; a token is patch_samples x 1 electrode
    n_sessions: int  # training sessions with their own decoder session token (+1 'unknown')
    # --- encoder ----------------------------------------------------------------------
    preset_name: str = "custom"  # which named preset this came from (checkpoints record it)
    embed_dim: int = 768  # encoder width = latent size the probe sees
    depth: int = 24  # encoder blocks
    num_heads: int = 16  # attention heads
    head_dim: int = 64  # per head; heads x head_dim may differ from the width (paper: 16 x 64)
    mlp_hidden: int = 3072  # SwiGLU hidden width (4 x width reproduces the paper's 246M)
    n_registers: int = 4  # register tokens (Darcet et al. 2024); the paper does not give a count
    qk_norm: bool = True  # RMSNorm on queries and keys per head (stabilises attention logits)
    # --- decoder ----------------------------------------------------------------------
    decoder_embed_dim: int = 768
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_head_dim: int = 64
    decoder_mlp_hidden: int = 3072
    # --- objective --------------------------------------------------------------------
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder
    corr_loss_weight: float = 0.1  # paper: 0.1 x correlation loss
    cross_session_weight: float = 0.01  # paper: 0.01 x "inverted SigLIP" cross-session loss
    session_dropout: float = 0.1  # P(training window gets the 'unknown' session token), so
    # that token is learnt and unseen sessions (validation, new days) decode sensibly
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("n_channels", "window_samples", "patch_samples", "embed_dim", "depth",
                     "num_heads", "head_dim", "mlp_hidden", "decoder_embed_dim",
                     "decoder_depth", "decoder_num_heads", "decoder_head_dim",
                     "decoder_mlp_hidden"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"MAEConfig.{name} must be positive, got {getattr(self, name)}")
        if self.window_samples % self.patch_samples:
            raise ConfigError(f"window ({self.window_samples} samples) must be a whole number of "
                              f"patches ({self.patch_samples} samples): change the WindowSpec")
        if self.n_sessions < 0 or self.n_registers < 0:
            raise ConfigError("n_sessions and n_registers must be >= 0")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        n_keep = int(self.n_patches * (1 - self.mask_ratio))
        if n_keep < 1:
            raise ConfigError(f"mask_ratio {self.mask_ratio} leaves no visible patch out of "
                              f"{self.n_patches}")

    @property
    def n_time_patches(self) -> int:
        return self.window_samples // self.patch_samples

    @property
    def n_patches(self) -> int:
        """Tokens per window: one per (electrode, time patch)."""
        return self.n_channels * self.n_time_patches

    @property
    def unknown_session(self) -> int:
        """Session-token index shared by every session the model was not trained on."""
        return self.n_sessions

    @classmethod
    def preset(cls, name: str, *, n_channels: int, spec: WindowSpec, n_sessions: int,
               **overrides) -> MAEConfig:
        """A named model size fitted to a dataset's geometry.

        >>> MAEConfig.preset("small", n_channels=96, spec=WindowSpec(), n_sessions=12)
        """
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
        return cls(n_channels=int(n_channels), window_samples=spec.window_samples,
                   patch_samples=spec.patch_samples, n_sessions=int(n_sessions), preset_name=name,
                   **{**MODEL_PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        known = {f.name for f in fields(cls)}
        d = dict(d)
        if isinstance(d.get("preset"), str):  # checkpoints written before the rename
            d["preset_name"] = d.pop("preset")
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config has fields this phosphene does not know: {unknown} "
                              "(checkpoint written by a newer version?)")
        return cls(**d)

    def replace(self, **changes) -> MAEConfig:
        return replace(self, **changes)


# Model sizes. `paper` is Table 4; `small` pretrains in minutes on 2 CPU cores; `tiny`
# exists for tests.
MODEL_PRESETS: dict[str, dict] = {
    "paper": dict(embed_dim=768, depth=24, num_heads=16, head_dim=64, mlp_hidden=3072,
                  n_registers=4, decoder_embed_dim=768, decoder_depth=8, decoder_num_heads=16,
                  decoder_head_dim=64, decoder_mlp_hidden=3072),
    # 768 tokens a window make attention and per-token work dominate on a CPU: narrow and
    # shallow is what pretrains in minutes on 2 cores (bench/bench_pretrain.py).
    "small": dict(embed_dim=64, depth=4, num_heads=4, head_dim=16, mlp_hidden=128,
                  n_registers=4, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                  decoder_head_dim=16, decoder_mlp_hidden=64),
    "tiny": dict(embed_dim=32, depth=1, num_heads=2, head_dim=16, mlp_hidden=64,
                 n_registers=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                 decoder_head_dim=16, decoder_mlp_hidden=64),
}
PRESET_NAMES = tuple(MODEL_PRESETS)


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining schedule. Presets pair with the model presets of the same name."""

    steps: int = 1_000_000  # optimizer steps (paper: 1M)
    batch_size: int = 32  # windows per step (paper: 32)
    lr: float = 1e-4  # peak learning rate after warm-up (paper: 1e-4)
    lr_min: float = 1e-5  # cosine floor (paper: 1e-5)
    warmup_steps: int = 5000  # linear warm-up (paper: 5k)
    weight_decay: float = 0.05  # AdamW, on matrices only (MAE's recipe)
    betas: tuple[float, float] = (0.9, 0.95)  # MAE's AdamW betas
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    val_every: int = 5000  # steps between validation passes (and best-checkpoint checks)
    val_windows: int = 2048  # fixed validation windows, sampled once from the held-out days
    val_days: int = 4  # paper: best checkpoint by reconstruction loss on the last 4 days
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch size must be >= 1")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ConfigError(f"need lr > 0 and 0 <= lr_min <= lr (got lr={self.lr}, "
                              f"lr_min={self.lr_min})")
        if self.warmup_steps < 0 or self.val_every < 1 or self.val_windows < 1 or self.val_days < 1:
            raise ConfigError("warm-up must be >= 0; val_every, val_windows, val_days >= 1")

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        if name not in TRAIN_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
        clean = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**TRAIN_PRESETS[name], **clean})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


TRAIN_PRESETS: dict[str, dict] = {
    "paper": dict(steps=1_000_000, batch_size=32, lr=1e-4, lr_min=1e-5, warmup_steps=5000,
                  val_every=5000, val_windows=2048),
    # A short CPU run needs a higher peak rate, a short warm-up and more, smaller steps:
    # on the demo data 500 x 16 windows reached validation MSE 0.56 in 3.4 min where
    # 300 x 32 reached 0.78 in 4.4 min (docs/results.md).
    "small": dict(steps=500, batch_size=16, lr=2e-3, lr_min=1e-4, warmup_steps=30,
                  val_every=100, val_windows=128),
    "tiny": dict(steps=20, batch_size=8, lr=1e-3, lr_min=1e-4, warmup_steps=2,
                 val_every=10, val_windows=16),
}
