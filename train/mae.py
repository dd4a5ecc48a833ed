"""The masked-autoencoder teacher (paper Table 4), read top to bottom in data-flow order.

patchify -> random_masking -> forward_encoder -> forward_decoder -> forward_loss -> forward,
with the method names of facebookresearch/mae so a reader who knows MAE is at home.

Input windows are normalised MUA, `x: (N, T, C)`, time-major like every array in the
dataset. A token is one patch: `patch_samples` consecutive samples of one electrode, so a
window has C x (T / patch_samples) tokens (paper: 96 x 8 = 768). Token l belongs to
electrode l // n_time_patches and time patch l % n_time_patches.

Mask polarity, stated once for the whole package: in every `mask`, 1 = masked (hidden
from the encoder, reconstructed by the decoder, counted in the loss), 0 = visible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from phosphene.train.config import MAEConfig

__all__ = ["MaskedAutoencoder", "build_model", "count_parameters"]


class Attention(nn.Module):
    """Multi-head self-attention with QK-norm. x: (N, L, D) -> (N, L, D)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        # QK-norm bounds the attention logits, which keeps deep stacks stable (paper Table 4).
        self.q_norm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, _ = x.shape  # batch, tokens, width
        qkv = self.qkv(x).view(N, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, L, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(N, L, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Gated MLP: w3(silu(w1 x) * w2 x). x: (N, L, D) -> (N, L, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-norm transformer block (RMSNorm -> attention, RMSNorm -> SwiGLU)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, *,
                 qk_norm: bool, eps: float):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, head_dim, qk_norm=qk_norm, eps=eps)
        self.norm2 = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoder(nn.Module):
    """MAE with registers, separate spatial/temporal embeddings and a session token."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = cfg = config
        C, n_t, P = cfg.n_channels, cfg.n_time_patches, cfg.patch_samples
        D, Dd = cfg.embed_dim, cfg.decoder_embed_dim

        # --- encoder ---------------------------------------------------------------------
        self.patch_embed = nn.Linear(P, D)
        # Separate learnable embeddings, summed per token: which electrode, which time patch.
        self.spatial_embed = nn.Parameter(torch.zeros(C, D))
        self.temporal_embed = nn.Parameter(torch.zeros(n_t, D))
        self.registers = nn.Parameter(torch.zeros(cfg.n_registers, D))
        self.blocks = nn.ModuleList(
            Block(D, cfg.num_heads, cfg.head_dim, cfg.mlp_hidden, qk_norm=cfg.qk_norm,
                  eps=cfg.norm_eps) for _ in range(cfg.depth))
        self.norm = nn.RMSNorm(D, eps=cfg.norm_eps)

        # --- decoder ---------------------------------------------------------------------
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(Dd))
        # One token per training session plus a shared 'unknown' (index n_sessions).
        self.session_embed = nn.Embedding(cfg.n_sessions + 1, Dd)
        self.decoder_spatial_embed = nn.Parameter(torch.zeros(C, Dd))
        self.decoder_temporal_embed = nn.Parameter(torch.zeros(n_t, Dd))
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, cfg.decoder_num_heads, cfg.decoder_head_dim, cfg.decoder_mlp_hidden,
                  qk_norm=cfg.qk_norm, eps=cfg.norm_eps) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.RMSNorm(Dd, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(Dd, P)

        # --- cross-session loss: SigLIP's learnable temperature and bias ------------------
        self.xsession_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # SigLIP starts the bias at -10 because its positives are rare; here positives
        # (pairs from different sessions) are the majority, so it starts neutral.
        self.xsession_bias = nn.Parameter(torch.tensor(0.0))

        self.initialize_weights()

    def initialize_weights(self) -> None:
        for p in (self.spatial_embed, self.temporal_embed, self.registers, self.mask_token,
                  self.decoder_spatial_embed, self.decoder_temporal_embed):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.normal_(self.session_embed.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, C) normalised window -> (N, L, P) patches, L = C * T / P, electrode-major."""
        N, T, C = x.shape  # batch, samples, electrodes
        cfg = self.config
        if cfg.window_samples != T or cfg.n_channels != C:
            raise ValueError(f"expected windows of shape (N, {cfg.window_samples}, "
                             f"{cfg.n_channels}) (time, electrodes), got {tuple(x.shape)}")
        P, n_t = cfg.patch_samples, cfg.n_time_patches
        return x.reshape(N, n_t, P, C).permute(0, 3, 1, 2).reshape(N, C * n_t, P)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: (N, L, P) -> (N, T, C), the inverse of patchify."""
        N, _, P = patches.shape  # batch, tokens, samples per patch
        C, n_t = self.config.n_channels, self.config.n_time_patches
        return patches.reshape(N, C, n_t, P).permute(0, 2, 3, 1).reshape(N, n_t * P, C)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       noise: torch.Tensor | None = None):
        """Keep a random (1 - mask_ratio) of tokens per sample, by sorting uniform noise.

        x: (N, L, D); noise: (N, L) in [0, 1) or None (drawn here).
        Returns x_visible (N, L_keep, D), mask (N, L) with 1 = masked, ids_restore (N, L).
        """
        N, L, D = x.shape  # batch, tokens, width
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back to token order
        return x_visible, mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float,
                        noise: torch.Tensor | None = None):
        """x: (N, T, C) -> latent (N, R + L_keep, D) (registers first), mask (N, L), ids_restore.

        The encoder only ever receives the visible tokens; with mask_ratio 0 it sees all.
        """
        tokens = self.patch_embed(self.patchify(x))  # (N, L, D)
        pos = (self.spatial_embed[:, None, :] + self.temporal_embed[None, :, :]).flatten(0, 1)
        tokens = tokens + pos
        N, L, _ = tokens.shape  # batch, tokens, width
        if mask_ratio > 0:
            tokens, mask, ids_restore = self.random_masking(tokens, mask_ratio, noise)
        else:
            mask = torch.zeros(N, L, device=x.device)
            ids_restore = torch.arange(L, device=x.device).expand(N, L)
        tokens = torch.cat([self.registers.expand(N, -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        session: torch.Tensor) -> torch.Tensor:
        """latent: (N, R + L_keep, D), ids_restore: (N, L), session: (N,) -> pred (N, L, P)."""
        R = self.config.n_registers
        x = self.decoder_embed(latent)
        N, _, Dd = x.shape  # batch, tokens, decoder width
        registers, visible = x[:, :R], x[:, R:]
        L = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(N, L - visible.shape[1], Dd)
        x_ = torch.cat([visible, mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, Dd))  # unshuffle
        pos = (self.decoder_spatial_embed[:, None, :]
               + self.decoder_temporal_embed[None, :, :]).flatten(0, 1)
        x_ = x_ + pos
        session_token = self.session_embed(session)[:, None, :]  # (N, 1, Dd)
        x = torch.cat([session_token, registers, x_], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1 + R:]  # drop session and register tokens

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     latent: torch.Tensor, session: torch.Tensor):
        """Paper loss: MSE(masked) + 0.1 x correlation loss + 0.01 x cross-session loss.

        x: (N, T, C); pred: (N, L, P); mask: (N, L), 1 = masked; latent: (N, R + L_keep, D);
        session: (N,) true session indices (ties for the cross-session term).
        Returns (loss, {"mse", "corr", "xsession"} as detached scalars).
        """
        cfg = self.config
        target = self.patchify(x)
        pred = pred.float()
        n_masked = mask.sum().clamp_min(1.0)
        mse = (((pred - target) ** 2).mean(dim=-1) * mask).sum() / n_masked
        # Correlation loss (our reading of the paper): 1 - Pearson r between each masked
        # patch and its reconstruction, so the shape is rewarded, not just the amplitude.
        r = F.cosine_similarity(pred - pred.mean(-1, keepdim=True),
                                target - target.mean(-1, keepdim=True), dim=-1, eps=1e-6)
        corr = ((1.0 - r) * mask).sum() / n_masked
        xsession = self.cross_session_loss(latent.float().mean(dim=1), session)
        loss = mse + cfg.corr_loss_weight * corr + cfg.cross_session_weight * xsession
        return loss, {"mse": mse.detach(), "corr": corr.detach(), "xsession": xsession.detach()}

    def cross_session_loss(self, pooled: torch.Tensor, session: torch.Tensor) -> torch.Tensor:
        """'Inverted SigLIP' on pooled latents: pull different sessions together, push the
        same session apart, so the latent forgets which session a window came from.

        pooled: (N, D); session: (N,). Sigmoid loss over all off-diagonal pairs with label
        +1 for pairs from different sessions and -1 for pairs from the same session.
        """
        N = pooled.shape[0]  # batch
        if N < 2:
            return pooled.new_zeros(())
        z = F.normalize(pooled, dim=-1)
        logits = z @ z.T * self.xsession_log_scale.exp() + self.xsession_bias
        labels = torch.where(session[:, None] == session[None, :], -1.0, 1.0)
        off_diagonal = ~torch.eye(N, dtype=torch.bool, device=pooled.device)
        return -F.logsigmoid(labels * logits)[off_diagonal].mean()

    def forward(self, x: torch.Tensor, session: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None):
        """x: (N, T, C), session: (N,) -> (loss, pred (N, L, P), mask (N, L), loss terms)."""
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, self.decoder_session(session))
        loss, terms = self.forward_loss(x, pred, mask, latent, session)
        return loss, pred, mask, terms

    # ----------------------------------------------------------------------------------
    def decoder_session(self, session: torch.Tensor) -> torch.Tensor:
        """During training, swap a random `session_dropout` of session tokens for 'unknown'."""
        p = self.config.session_dropout
        if not self.training or p <= 0:
            return session
        drop = torch.rand(session.shape, device=session.device) < p
        return torch.where(drop, torch.full_like(session, self.config.unknown_session), session)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Probe latent: x (N, T, C) normalised windows -> (N, D).

        Mean over ALL encoder outputs with no masking, register tokens included: the paper
        takes "the mean of all encoder outputs", and registers are encoder outputs.
        """
        latent, _, _ = self.forward_encoder(x, mask_ratio=0.0)
        return latent.mean(dim=1)


def build_model(config: MAEConfig) -> MaskedAutoencoder:
    """Construct the model (separate from any training loop, so DDP can wrap it later)."""
    return MaskedAutoencoder(config)


def count_parameters(model: nn.Module) -> dict:
    """{'encoder', 'decoder', 'total'} parameter counts.

    Decoder = every parameter whose name starts with 'decoder_', the mask token and the
    session embedding; encoder = the rest (the cross-session temperature/bias are 2 scalars).
    """
    enc = dec = 0
    for name, p in model.named_parameters():
        if name.startswith(("decoder_", "mask_token", "session_embed")):
            dec += p.numel()
        else:
            enc += p.numel()
    return {"encoder": enc, "decoder": dec, "total": enc + dec}
