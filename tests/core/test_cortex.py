"""The virtual cortex: deterministic, bounded in memory, with the structure it claims."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from phosphene.cortex import PRESETS, CortexConfig, VirtualCortex, generate_dataset, ideal_balanced_accuracy
from phosphene.geometry import grid_map


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and "cache" not in f.parts:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path, tiny_dataset):
    again = generate_dataset(tmp_path / "again", preset="tiny", seed=0)
    assert _digest(again.path) == _digest(tiny_dataset.path)
    other = generate_dataset(tmp_path / "other", preset="tiny", seed=1)
    assert _digest(other.path) != _digest(tiny_dataset.path)


def test_tiny_dataset_has_the_paper_shape(tiny_dataset):
    ds = tiny_dataset
    assert ds.n_channels == 96 and ds.sample_rate_hz == 1000
    assert {s.kind for s in ds.sessions} == {"resting", "psychometric", "threshold"}
    psy = ds.task_trials("psychometric")
    assert len(psy) == PRESETS["tiny"].psychometric_trials
    assert set(np.round(psy.current_ua, 1)) <= {1.0, 2.4, 5.8, 14.0, 33.6, 81.0}
    thr = ds.task_trials("threshold")
    assert set(thr.electrode) <= {6, 25, 53, 65}
    assert len(np.unique(thr.current_ua)) == len(np.unique(thr.electrode))  # one current each
    # every decoded window lies inside its session
    for sid, onset in zip(psy.session, psy.onset_sample):
        assert onset + 170 + 128 <= ds.session(sid).n_samples
    assert 0.5 <= ds.ideal_observer["psychometric"] <= 1.0


def test_perception_follows_current_and_state():
    vc = VirtualCortex(seed=3)
    e = 25
    low = [vc.perception_probability(e, 1.0, 0.0, 0.0)[1], vc.perception_probability(e, 81.0, 0.0, 0.0)[1]]
    assert low[0] < 0.05 and low[1] > 0.95
    i50 = vc.i50_ua[e]
    assert vc.perception_probability(e, i50, 1.0, 0.0)[1] > vc.perception_probability(e, i50, -1.0, 0.0)[1]


def test_evoked_response_spreads_with_distance():
    # spontaneous fluctuations off, so what changes after onset is the response alone
    cfg = CortexConfig(noise_uv=0.0, state_weight=0.0, mode_weight=0.0, wave_weight=0.0)
    vc = VirtualCortex(seed=0, config=cfg)
    s = vc.stream("psychometric", electrodes=(45,), currents_ua=(81.0,))
    x, events = s.read(4000)
    ev = events[0]
    col = vc.channel_map.index_of(45)
    post = (x[ev.sample + 175: ev.sample + 300].mean(0) - x[ev.sample - 300: ev.sample - 50].mean(0))
    post = post / s.gain  # per-channel gain is not distance
    d = vc.distances_um[col]
    near, far = post[(d > 0) & (d <= 600)].mean(), post[d > 2000].mean()
    assert post[col] > near > far


def test_spontaneous_activity_is_spatially_correlated():
    vc = VirtualCortex(seed=0)
    x, _ = vc.stream("resting").read(20000)
    x = np.log(np.maximum(x, 1e-3))
    live = np.setdiff1d(np.arange(96), vc.dead)
    c = np.corrcoef(x[:, live].T)
    d = vc.distances_um[np.ix_(live, live)]
    assert c[(d > 0) & (d <= 400)].mean() > c[d > 2500].mean() + 0.05


def test_generator_runs_on_any_map(tmp_path):
    ds = generate_dataset(tmp_path / "g", preset="tiny", channel_map=grid_map(4, 5))
    assert ds.n_channels == 20 and ds.mua(ds.sessions[0].session).shape[1] == 20


def test_ideal_observer_accuracy():
    assert ideal_balanced_accuracy(np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 0, 0, 0])) == pytest.approx(
        (1.0 + 2 / 3) / 2)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        generate_dataset("/nonexistent/x", preset="huge")


def test_the_evaluation_set_is_new_sessions_of_the_same_array(tiny_dataset):
    ev = tiny_dataset.evaluation()
    assert ev is not None and ev.path == tiny_dataset.path / "eval"
    assert ev.channel_map.ids == tiny_dataset.channel_map.ids
    assert not ev.sessions_of("resting")
    preset = PRESETS["tiny"]
    for task in ("psychometric", "threshold"):
        trials = ev.task_trials(task)
        assert len(trials) == preset.eval_trials
        train_days = {s.day for s in tiny_dataset.sessions_of(task)}
        assert {s.day for s in ev.sessions_of(task)} <= train_days
        assert np.isfinite(trials.p_true).all()
    # new sessions: no sample array is shared with a training session
    first_train = tiny_dataset.mua(tiny_dataset.sessions_of("psychometric")[0].session)
    first_eval = ev.mua(ev.sessions_of("psychometric")[0].session)
    n = min(len(first_train), len(first_eval))
    assert not np.allclose(first_train[:n], first_eval[:n])
