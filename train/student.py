"""Small student encoders distilled from the MAE teacher, designed for int8 edge inference.

Both designs read a normalised window x: (N, T, C) (time first, electrodes second, as the
dataset and the edge ring buffer hold it) and return a latent z: (N, D) with the teacher's
latent width D, so the teacher's linear probe applies to the student unchanged.

- "mixer" (design A): patch embedding + attention-free MLP-Mixer (token mixing over time
  patches, channel mixing over features), ReLU, no LayerNorm, BatchNorm folded into the
  next Linear at export. Everything is FULLY_CONNECTED / ADD / RELU / MEAN in TFLite, which
  XNNPACK runs as one int8 partition (docs/toolchain.md: 2-3x faster in int8 than float32).
- "transformer" (design B): the same patch embedding + a small pre-LayerNorm transformer.
  LayerNorm and attention are what int8 handles worst on CPU (docs/results.md); it is
  here to be measured against, not assumed worse.
- "electrode" (design C): the same MLP-Mixer with electrodes as tokens: each electrode's
  whole window is embedded by one temporal Linear shared by all electrodes (plus a learned
  embedding per electrode), token mixing runs across electrodes, and a small per-electrode
  head feeds one Linear to the latent. It keeps *where* activity is, which the teacher's
  per-electrode readout needs and a time-patch token (all electrodes mixed) blurs.

The patch embedding is a Conv1d with kernel = stride = patch_samples over time with the
electrodes as input channels, written as a Linear on flattened patches: the same maths,
but it exports to one MatMul with no layout transposes for onnx2tf to guess about.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from phosphene.errors import ConfigError
from phosphene.signal import WindowSpec

__all__ = [
    "ARCHS",
    "PRESETS",
    "ElectrodeStudent",
    "MixerStudent",
    "StudentConfig",
    "TransformerStudent",
    "build_student",
    "count_parameters",
    "export_ready",
    "student_config",
]

ARCHS = ("mixer", "transformer", "electrode")


@dataclass(frozen=True)
class StudentConfig:
    """Shape and size of a student; shapes come from the WindowSpec and the dataset."""

    arch: str = "mixer"  # "mixer" / "electrode" (attention-free, int8-friendly) or "transformer"
    n_channels: int = 96  # electrodes per window (from the dataset / teacher)
    window_samples: int = 128  # samples per window (from the WindowSpec)
    patch_samples: int = 16  # samples per token (from the WindowSpec)
    latent_dim: int = 256  # the teacher's latent width, so its probe applies unchanged
    d_model: int = 128  # token width
    depth: int = 2  # mixer blocks or transformer layers
    token_hidden: int = 64  # mixer: hidden width of the token (time) MLP
    mlp_ratio: float = 2.0  # hidden width of the feature MLP = mlp_ratio * d_model
    n_heads: int = 4  # transformer only
    electrode_head: int = 8  # electrode only: features per electrode before the last Linear

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"student arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if min(self.n_channels, self.window_samples, self.patch_samples, self.latent_dim,
               self.d_model, self.depth, self.token_hidden, self.n_heads) <= 0:
            raise ConfigError("student sizes must be positive")
        if self.window_samples % self.patch_samples:
            raise ConfigError(f"window ({self.window_samples} samples) must be a whole number of "
                              f"patches ({self.patch_samples} samples)")
        if self.arch == "transformer" and self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")

    @property
    def n_patches(self) -> int:
        return self.window_samples // self.patch_samples

    @property
    def hidden_dim(self) -> int:
        return max(1, round(self.mlp_ratio * self.d_model))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# Sizes only; shapes (channels, window, patch, latent) are filled in by student_config().
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=32, depth=1, token_hidden=16, mlp_ratio=2.0, n_heads=2),  # tests
    "small": dict(d_model=96, depth=2, token_hidden=32, mlp_ratio=2.0, n_heads=4),
    "base": dict(d_model=128, depth=3, token_hidden=64, mlp_ratio=2.0, n_heads=4),
}


def student_config(arch: str, *, spec: WindowSpec, n_channels: int, latent_dim: int,
                   preset: str = "small", **overrides) -> StudentConfig:
    """A StudentConfig whose shapes come from the window spec, the dataset and the teacher."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown student preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sizes = {**PRESETS[preset], **overrides}
    if arch == "electrode" and sizes["d_model"] == int(n_channels) and "d_model" not in overrides:
        # onnx2tf infers layouts from shapes: a square (electrodes x width) token matrix is
        # ambiguous, and the float32 TFLite it made computed a different function (measured)
        sizes["d_model"] = int(n_channels) - 32 if n_channels > 64 else int(n_channels) + 16
    return StudentConfig(arch=arch, n_channels=int(n_channels),
                         window_samples=spec.window_samples, patch_samples=spec.patch_samples,
                         latent_dim=int(latent_dim), **sizes)


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """x: (N, T, C) -> tokens (N, P, d): one token per time patch, all electrodes mixed."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.n_patches = cfg.n_patches
        self.proj = nn.Linear(cfg.patch_samples * cfg.n_channels, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, C = x.shape  # batch, samples, electrodes
        patches = x.reshape(N, self.n_patches, (T // self.n_patches) * C)  # rows are contiguous
        return self.proj(patches)


class BatchNormLinear(nn.Module):
    """BatchNorm1d over features followed by a Linear; `fold()` merges them for export.

    x: (N, L, d_in) -> (N, L, d_out). In eval mode BN is an affine map per feature, so
    W (a * x + c) + b = (W a) x + (W c + b): a plain Linear with nothing left to quantise.
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(d_in)
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape
        return self.linear(self.norm(x.reshape(N * L, D)).reshape(N, L, D))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
        shift = self.norm.bias - self.norm.running_mean * scale
        folded = nn.Linear(self.linear.in_features, self.linear.out_features)
        folded.weight.copy_(self.linear.weight * scale[None, :])
        folded.bias.copy_(self.linear.bias + self.linear.weight @ shift)
        return folded


# --------------------------------------------------------------------------------------
# Design A: attention-free MLP-Mixer
# --------------------------------------------------------------------------------------
class MixerBlock(nn.Module):
    """Token mixing across the P time patches, then feature mixing; both residual.

    x: (N, P, d) -> (N, P, d). ReLU only, no LayerNorm: every op stays an int8 builtin
    that XNNPACK fuses.
    """

    def __init__(self, cfg: StudentConfig, n_tokens: int | None = None):
        super().__init__()
        n_tokens = cfg.n_patches if n_tokens is None else n_tokens
        self.token_fc1 = nn.Linear(n_tokens, cfg.token_hidden)
        self.token_fc2 = nn.Linear(cfg.token_hidden, n_tokens)
        self.channel_fc1: nn.Module = BatchNormLinear(cfg.d_model, cfg.hidden_dim)
        self.channel_fc2 = nn.Linear(cfg.hidden_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.transpose(1, 2)  # (N, d, P): mix along the tokens (time patches or electrodes)
        x = x + self.token_fc2(F.relu(self.token_fc1(t))).transpose(1, 2)
        return x + self.channel_fc2(F.relu(self.channel_fc1(x)))


class MixerStudent(nn.Module):
    """Design A. x: (N, T, C) normalised window -> z: (N, D) latent."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(MixerBlock(cfg) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.d_model, cfg.latent_dim)

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.relu(self.patch_embed(x))  # (N, P, d)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_encoder(x).mean(dim=1))  # mean-pool like the teacher


# --------------------------------------------------------------------------------------
# Design C: MLP-Mixer with one token per electrode
# --------------------------------------------------------------------------------------
class ElectrodeStudent(nn.Module):
    """Design C. x: (N, T, C) normalised window -> z: (N, D) latent; tokens are electrodes."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.n_channels
        # Shared by electrodes: (d, T) @ (N, T, C) -> (N, d, C). Written as a MatMul with a
        # constant left operand, not as x.transpose(1, 2) -> Linear: onnx2tf mis-converts a
        # transpose of the (N, T, C) input (float32 TFLite off by 100% of the output range).
        self.temporal_weight = nn.Parameter(torch.empty(cfg.d_model, cfg.window_samples))
        nn.init.kaiming_uniform_(self.temporal_weight, a=math.sqrt(5))
        self.electrode_embed = nn.Parameter(torch.zeros(C, cfg.d_model))  # also the bias
        nn.init.trunc_normal_(self.electrode_embed, std=0.02)
        self.blocks = nn.ModuleList(MixerBlock(cfg, n_tokens=C) for _ in range(cfg.depth))
        self.electrode_head = nn.Linear(cfg.d_model, cfg.electrode_head)
        self.head = nn.Linear(C * cfg.electrode_head, cfg.latent_dim)

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        embedded = torch.matmul(self.temporal_weight, x).transpose(1, 2)  # (N, C, d)
        tokens = F.relu(embedded + self.electrode_embed)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]  # batch
        per_electrode = F.relu(self.electrode_head(self.forward_encoder(x)))  # (N, C, h)
        return self.head(per_electrode.reshape(N, -1))


# --------------------------------------------------------------------------------------
# Design B: small pre-LayerNorm transformer over time patches
# --------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention written out (exports to plain MatMul/Softmax)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        # A Python float, not a traced sqrt of a shape: onnx2tf cannot convert the latter.
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape  # batch, tokens, width
        H, Dh = self.n_heads, self.head_dim
        qkv = self.qkv(x).reshape(N, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, N, H, L, Dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(N, L, D))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.hidden_dim)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerStudent(nn.Module):
    """Design B. x: (N, T, C) normalised window -> z: (N, D) latent."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.d_model))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.latent_dim)

    def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x) + self.pos_embed  # (N, P, d)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_encoder(x).mean(dim=1))


def build_student(cfg: StudentConfig) -> nn.Module:
    return {"mixer": MixerStudent, "transformer": TransformerStudent,
            "electrode": ElectrodeStudent}[cfg.arch](cfg)


def export_ready(model: nn.Module) -> nn.Module:
    """A copy in eval mode with every BatchNormLinear folded into a plain Linear.

    The result computes the same function as `model.eval()` (up to float rounding) and has
    no BatchNormalization node for the converter to keep in float.
    """
    out = copy.deepcopy(model).eval()
    for module in list(out.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, BatchNormLinear):
                setattr(module, name, child.fold())
    return out.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def with_shapes(cfg: StudentConfig, **shapes) -> StudentConfig:
    """The same design at other shapes (channels, window, patch): for scaling benchmarks."""
    return replace(cfg, **shapes)


__all__ += ["with_shapes"]
