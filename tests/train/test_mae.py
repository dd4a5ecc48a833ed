"""The teacher: masking, loss on masked patches only, encoder isolation, parameter counts."""

from __future__ import annotations

import pytest
import torch

from phosphene.geometry import utah_96
from phosphene.signal import WindowSpec
from phosphene.train.config import MAEConfig
from phosphene.train.mae import build_model, count_parameters

SPEC = WindowSpec()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(MAEConfig.preset("tiny", n_channels=12, spec=SPEC, n_sessions=3)).eval()


def _window(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.config.window_samples, model.config.n_channels, generator=g)


def test_patchify_is_electrode_major_and_inverts(model):
    x = _window(model)
    patches = model.patchify(x)
    cfg = model.config
    assert patches.shape == (3, cfg.n_patches, cfg.patch_samples)
    # token k = (electrode k // n_t, time patch k % n_t)
    k = 5 * cfg.n_time_patches + 2
    P = cfg.patch_samples
    assert torch.equal(patches[1, k], x[1, 2 * P:3 * P, 5])
    assert torch.equal(model.unpatchify(patches), x)


def test_masking_polarity_and_ratio(model):
    N, L, D = 4, model.config.n_patches, 8
    tokens = torch.arange(N * L * D, dtype=torch.float32).reshape(N, L, D)
    visible, mask, ids_restore = model.random_masking(tokens, 0.75)
    n_keep = int(L * 0.25)
    assert visible.shape == (N, n_keep, D)
    assert torch.all(mask.sum(1) == L - n_keep)  # 75% masked
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for i in range(N):
        # the visible tokens are exactly those with mask 0 (1 = masked)
        kept = sorted(int(t[0]) // D % L for t in visible[i])
        assert kept == torch.nonzero(mask[i] == 0).flatten().tolist()
        assert torch.equal(ids_restore[i].sort().values, torch.arange(L))


def test_loss_counts_masked_patches_only(model):
    x = _window(model)
    session = torch.tensor([0, 1, 3])
    latent, mask, ids_restore = model.forward_encoder(x, 0.75)
    pred = model.forward_decoder(latent, ids_restore, session)
    loss, terms = model.forward_loss(x, pred, mask, latent, session)
    visible = (mask == 0).unsqueeze(-1)
    changed_visible = torch.where(visible, pred + 100.0 * torch.randn_like(pred), pred)
    loss2, terms2 = model.forward_loss(x, changed_visible, mask, latent, session)
    assert torch.equal(loss, loss2)
    assert torch.equal(terms["corr"], terms2["corr"])
    changed_masked = torch.where(~visible, pred + 1.0, pred)
    loss3, _ = model.forward_loss(x, changed_masked, mask, latent, session)
    assert not torch.allclose(loss, loss3)


def test_encoder_never_sees_masked_patches(model):
    x = _window(model)
    noise = torch.rand(x.shape[0], model.config.n_patches, generator=torch.Generator().manual_seed(1))
    latent, mask, _ = model.forward_encoder(x, 0.75, noise)
    patch_mask = mask.unsqueeze(-1).expand(-1, -1, model.config.patch_samples)
    perturbation = model.unpatchify(patch_mask * 50.0 * torch.randn_like(patch_mask))
    latent2, mask2, _ = model.forward_encoder(x + perturbation, 0.75, noise)
    assert torch.equal(mask, mask2)
    assert torch.allclose(latent, latent2, atol=1e-6)
    # ...while a change to a visible patch does reach it
    visible_perturbation = model.unpatchify((1 - patch_mask) * torch.randn_like(patch_mask))
    latent3, _, _ = model.forward_encoder(x + visible_perturbation, 0.75, noise)
    assert not torch.allclose(latent, latent3, atol=1e-3)


def test_encode_is_unmasked_mean_of_all_encoder_outputs(model):
    x = _window(model)
    z = model.encode(x)
    assert z.shape == (3, model.config.embed_dim)
    latent, mask, _ = model.forward_encoder(x, 0.0)
    assert mask.sum() == 0
    assert latent.shape[1] == model.config.n_registers + model.config.n_patches
    assert torch.allclose(z, latent.mean(1))
    assert torch.equal(z, model.encode(x))  # deterministic


def test_session_token_and_unknown_index(model):
    cfg = model.config
    assert model.session_embed.num_embeddings == cfg.n_sessions + 1
    assert cfg.unknown_session == cfg.n_sessions
    x = _window(model)
    loss, pred, _, _ = model(x, torch.full((3,), cfg.unknown_session), noise=None)
    assert pred.shape == (3, cfg.n_patches, cfg.patch_samples) and torch.isfinite(loss)


def test_cross_session_loss_rewards_mixing_sessions(model):
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    session = torch.tensor([0, 0, 1, 1])
    mixed = torch.stack([a, b, a, b])  # each session spans both directions
    separated = torch.stack([a, a, b, b])  # the latent encodes the session
    assert model.cross_session_loss(mixed, session) < model.cross_session_loss(separated, session)


def test_bad_window_shape_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"expected windows of shape \(N, 128, 12\)"):
        model.encode(torch.zeros(2, 12, 128))


def test_paper_preset_parameter_counts():
    cfg = MAEConfig.preset("paper", n_channels=utah_96().n_channels, spec=SPEC, n_sessions=252)
    with torch.device("meta"):  # no memory, no init cost
        counts = count_parameters(build_model(cfg))
    assert abs(counts["encoder"] / 246e6 - 1) < 0.05, counts
    assert abs(counts["decoder"] / 83e6 - 1) < 0.05, counts
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.head_dim) == (768, 24, 16, 64)
    assert (cfg.decoder_embed_dim, cfg.decoder_depth) == (768, 8)
    assert cfg.n_patches == 768 and cfg.mask_ratio == 0.75


def test_presets_follow_the_data_geometry():
    spec = WindowSpec(window_samples=64, patch_samples=8)
    for name in ("paper", "small", "tiny"):
        cfg = MAEConfig.preset(name, n_channels=32, spec=spec, n_sessions=1)
        assert (cfg.n_channels, cfg.n_time_patches, cfg.n_patches) == (32, 8, 256)
    with torch.device("meta"):
        small = count_parameters(build_model(MAEConfig.preset("small", n_channels=96, spec=SPEC,
                                                                n_sessions=8)))
    assert 1e5 < small["total"] < 2e6
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        MAEConfig.preset("huge", n_channels=96, spec=SPEC, n_sessions=1)
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEConfig.preset("tiny", n_channels=96, spec=SPEC, n_sessions=1, mask_ratio=1.0)
