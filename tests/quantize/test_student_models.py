"""Student designs, BatchNorm folding, ONNX export and the student checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.student import (
    ARCHS,
    StudentConfig,
    build_student,
    export_ready,
    student_config,
)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_channels,window,patch", [(96, 128, 16), (10, 64, 8)])
def test_student_shapes_come_from_the_spec(arch, n_channels, window, patch):
    spec = WindowSpec(window_samples=window, patch_samples=patch)
    cfg = student_config(arch, spec=spec, n_channels=n_channels, latent_dim=24, preset="tiny")
    assert cfg.n_patches == window // patch
    model = build_student(cfg).eval()
    z = model(torch.randn(3, window, n_channels))
    assert z.shape == (3, 24) and torch.isfinite(z).all()
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_student_config_says_how_to_fix():
    with pytest.raises(ValueError, match="whole number of patches"):
        StudentConfig(window_samples=100, patch_samples=16)
    with pytest.raises(ValueError, match="arch must be one of"):
        StudentConfig(arch="resnet")


@pytest.mark.parametrize("arch", ARCHS)
def test_export_ready_folds_batchnorm_and_matches_onnx(arch, tmp_path):
    from phosphene.quantize.convert import check_onnx, export_onnx

    torch.manual_seed(0)
    cfg = student_config(arch, spec=WindowSpec(), n_channels=12, latent_dim=16, preset="tiny")
    model = build_student(cfg)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(torch.randn(16, 128, 12) * 2 + 0.5)
    model.eval()
    folded = export_ready(model)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    x = torch.randn(4, 128, 12)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    onnx_path = export_onnx(folded, (1, 128, 12), tmp_path / "s.onnx")
    import onnx

    m = onnx.load(str(onnx_path))
    assert m.opset_import[0].version == 20
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 128, 12]
    assert "BatchNormalization" not in {n.op_type for n in m.graph.node}
    assert check_onnx(folded, onnx_path, x.numpy()) < 1e-4


def test_student_checkpoint_round_trip(tiny_student):
    from phosphene.train.distill import load_student

    out, metrics = tiny_student
    model, meta = load_student(out)
    assert meta["arch"] == "mixer" and meta["step"] == metrics["steps"] == 40
    assert WindowSpec.from_dict(meta["window_spec"]) == WindowSpec()
    assert NormaliserConfig.from_dict(meta["normaliser"]) == NormaliserConfig()
    assert meta["latent_dim"] == 32 and len(meta["teacher"]["sha256"]) == 64
    assert len(meta["latent_center"]) == 32
    assert (out / "metrics.json").is_file()
    v = metrics["val"]
    # 40 steps on a tiny pool: the student learns (the whole pool's whitened error falls by
    # a third at least) but is far from the teacher on held-out windows
    pool = metrics["pool_whitened_mse"]
    assert pool["end"] < 0.67 * pool["start"]
    assert v["n_windows"] == 64 and v["whitened_mse"] > 0 and -1.0 <= v["cosine_centred_mean"] <= 1.0
    x = np.random.default_rng(0).standard_normal((2, 128, 96)).astype(np.float32)
    with torch.no_grad():
        again, _ = load_student(out / "student.pt")
        assert torch.equal(model(torch.from_numpy(x)), again(torch.from_numpy(x)))


def test_load_student_refuses_what_is_not_one(tmp_path):
    from phosphene.train.distill import load_student

    with pytest.raises(ValueError, match="run `phosphene distill` first"):
        load_student(tmp_path)
    (tmp_path / "student.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable student checkpoint"):
        load_student(tmp_path)


def test_resting_windows_train_and_heldout_are_disjoint(tiny_dataset):
    from phosphene.train.distill import resting_sources, sample_resting_windows

    norm = NormaliserConfig()
    train = resting_sources(tiny_dataset, norm, 0.1, "train")
    held = resting_sources(tiny_dataset, norm, 0.1, "heldout")
    for a, b in zip(train, held):
        assert a.session == b.session and a.start >= norm.warmup_samples and a.stop == b.start
    x = sample_resting_windows(tiny_dataset, WindowSpec(), norm, 16, seed=3)
    assert x.shape == (16, 128, 96) and x.dtype == np.float32 and np.isfinite(x).all()
