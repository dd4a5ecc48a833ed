"""Window sampling, the schedule, pretraining end to end, checkpoints and resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from phosphene.dataset import DatasetWriter
from phosphene.geometry import grid_map
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.checkpoint import load_teacher, save_checkpoint
from phosphene.train.config import MAEConfig, TrainConfig
from phosphene.train.data import WindowSampler, split_sessions, trial_windows
from phosphene.train.mae import build_model
from phosphene.train.pretrain import lr_at, pretrain

SPEC, NORM = WindowSpec(), NormaliserConfig()


def _dataset(path, days, n_samples=3000, n_channels=4):
    with DatasetWriter(path, grid_map(2, n_channels // 2)) as w:
        rng = np.random.default_rng(0)
        for i, day in enumerate(days):
            arr = w.add_session(f"rest-{i}", kind="resting", day=day, n_samples=n_samples)
            arr[:] = 5 + rng.standard_normal((n_samples, n_channels))
    from phosphene.dataset import Dataset

    return Dataset.open(path)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, lr_min=1e-5)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lr_at(99, cfg) == pytest.approx(1e-5, rel=0.01)


def test_validation_is_the_last_days(tmp_path):
    ds = _dataset(tmp_path / "d", days=[0, 0, 1, 2, 3, 4, 5, 6, 7])
    train, val = split_sessions(ds, val_days=4, warmup_samples=1000)
    # 8 days: a quarter (2) held out, never more than val_days
    assert {s.session for s in val} == {"rest-7", "rest-8"}
    assert all(s.start == 1000 for s in train + val)  # warm-up rows skipped
    one_day = _dataset(tmp_path / "e", days=[3, 3])
    train, val = split_sessions(one_day, warmup_samples=1000)
    assert [s.session for s in val] == ["rest-1"] and [s.session for s in train] == ["rest-0"]
    one = _dataset(tmp_path / "f", days=[0])
    train, val = split_sessions(one, warmup_samples=1000)
    assert train[0].session == val[0].session and train[0].stop == val[0].start == 2800


def test_sampler_draws_finite_windows_from_memory_maps(tiny_dataset):
    train, _ = split_sessions(tiny_dataset, warmup_samples=NORM.warmup_samples)
    sampler = WindowSampler(tiny_dataset, train, spec=SPEC, norm_config=NORM,
                            session_index_map={train[0].session: 0}, unknown_index=9, seed=1)
    assert all(isinstance(a, np.memmap) or isinstance(a.base, np.memmap)
               for a in sampler.arrays.values())
    x, s = sampler.sample(16)
    assert x.shape == (16, SPEC.window_samples, tiny_dataset.n_channels) and x.dtype == np.float32
    assert np.isfinite(x).all() and set(s.tolist()) <= {0, 9}
    x1, _ = sampler.fixed(4, seed=3)
    x2, _ = sampler.fixed(4, seed=3)
    assert np.array_equal(x1, x2)


def test_trial_windows_follow_the_window_spec(tiny_dataset):
    X, y, trials = trial_windows(tiny_dataset, "psychometric", SPEC, NORM)
    assert X.shape == (len(trials), SPEC.window_samples, tiny_dataset.n_channels)
    assert set(np.unique(y)) <= {0, 1} and len(y) == len(trials)
    i = 3
    start, stop = SPEC.triggered_window(int(trials.onset_sample[i]))
    ref = tiny_dataset.normalised(str(trials.session[i]), NORM)[start:stop]
    assert np.array_equal(X[i], ref)


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = MAEConfig.preset("tiny", n_channels=8, spec=SPEC, n_sessions=2)
    model = build_model(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", {
        "config": cfg.to_dict(), "step": 7, "model": model.state_dict(),
        "session_index": {"a": 0, "b": 1}, "window_spec": SPEC.to_dict(),
        "normaliser": NORM.to_dict()})
    loaded, meta = load_teacher(tmp_path / "m.pt")
    x = torch.randn(2, SPEC.window_samples, 8)
    noise = torch.rand(2, cfg.n_patches)
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.equal(model(x, torch.tensor([0, 1]), noise=noise)[0],
                       loaded(x, torch.tensor([0, 1]), noise=noise)[0])
    assert meta["step"] == 7 and meta["config"] == cfg and meta["window_spec"] == SPEC
    assert meta["session_index"] == {"a": 0, "b": 1}


def test_load_teacher_rejects_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a phosphene teacher checkpoint"):
        load_teacher(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_teacher(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        load_teacher(tmp_path)
    cfg = MAEConfig.preset("tiny", n_channels=8, spec=SPEC, n_sessions=2)
    wrong = MAEConfig.preset("tiny", n_channels=16, spec=SPEC, n_sessions=2)
    save_checkpoint(tmp_path / "bad.pt", {
        "config": cfg.to_dict(), "step": 1, "model": build_model(wrong).state_dict(),
        "session_index": {}, "window_spec": SPEC.to_dict(), "normaliser": NORM.to_dict()})
    with pytest.raises(ValueError, match="incompatible preset or channel count"):
        load_teacher(tmp_path / "bad.pt")


def test_pretrain_writes_checkpoints_summary_and_resumes(tiny_run, tiny_dataset):
    out, _ = tiny_run
    for name in ("best.pt", "last.pt", "pretrain.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "pretrain.json").read_text())
    assert on_disk["steps"] == 4 and on_disk["best_step"] in (2, 4)
    assert [h["step"] for h in on_disk["history"] if "val_mse" in h] == [2, 4]
    assert [h["step"] for h in on_disk["history"]] == [1, 2, 3, 4]  # train loss between
    assert np.isfinite(on_disk["best_val_mse"]) and on_disk["windows_per_s"] > 0
    assert set(on_disk["val_sessions"]).isdisjoint(on_disk["train_sessions"])
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    _, meta = load_teacher(out)  # a run directory means its best.pt
    assert meta["path"].name == "best.pt" and meta["preset"] == "tiny"
    assert set(meta["session_index"]) == set(on_disk["train_sessions"])
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == 4 and "optimizer" in last

    with pytest.raises(ValueError, match="already holds a pretraining run"):
        pretrain(tiny_dataset, "tiny", out_dir=out, steps=6)
    resumed = pretrain(tiny_dataset, "tiny", out_dir=out, steps=6, resume=True)
    assert resumed["resumed_from"] == 4 and resumed["history"][-1]["step"] == 6
    with pytest.raises(ValueError, match="already at step 6"):
        pretrain(tiny_dataset, "tiny", out_dir=out, steps=6, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        pretrain(tiny_dataset, "tiny", out_dir=out / "other", steps=2, resume=True)


def test_channel_mean_baseline_is_the_masked_mse_of_the_channel_means():
    import torch

    from phosphene.signal import WindowSpec
    from phosphene.train.config import MAEConfig
    from phosphene.train.mae import build_model
    from phosphene.train.pretrain import channel_mean_baseline

    cfg = MAEConfig.preset("tiny", n_channels=4, spec=WindowSpec(), n_sessions=1)
    model = build_model(cfg)
    means = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    x = torch.from_numpy(np.broadcast_to(means, (3, 128, 4)).copy())
    noise = torch.rand(3, cfg.n_patches)
    assert channel_mean_baseline(model, x, noise, means) == 0.0
    # unit-variance deviations around the means: the baseline is their mean square
    dev = torch.from_numpy(np.random.default_rng(0).choice([-1.0, 1.0], (3, 128, 4)).astype(np.float32))
    assert channel_mean_baseline(model, x + dev, noise, means) == pytest.approx(1.0)
