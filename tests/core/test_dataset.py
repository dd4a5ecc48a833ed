"""The dataset format: memory-mapped sessions, validation that names the broken file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from phosphene.dataset import Dataset, DatasetError, DatasetWriter
from phosphene.geometry import grid_map
from phosphene.signal import NormaliserConfig


@pytest.fixture
def copy_of(tiny_dataset, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_dataset.path, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def test_sessions_are_memory_mapped(tiny_dataset):
    s = tiny_dataset.sessions[0]
    arr = tiny_dataset.mua(s.session)
    assert isinstance(arr, np.memmap) and arr.shape == (s.n_samples, 96)


def test_normalised_cache_is_the_streaming_normaliser(tiny_dataset):
    from phosphene.signal import normalise_recording

    sid = tiny_dataset.sessions[0].session
    cfg = NormaliserConfig()
    cached = tiny_dataset.normalised(sid, cfg)
    np.testing.assert_array_equal(cached, normalise_recording(np.asarray(tiny_dataset.mua(sid)), cfg))
    again = tiny_dataset.normalised(sid, cfg)  # second call reads the cache
    assert isinstance(again, np.memmap)


def test_split_is_per_session_first_80_percent(tiny_dataset):
    tr = tiny_dataset.task_trials("psychometric")
    train, test = tr.split_80_20()
    for sid in np.unique(tr.session):
        idx = tr.session == sid
        assert tr.onset_sample[idx & train].max() < tr.onset_sample[idx & test].min()
        assert (idx & test).sum() == idx.sum() - int(np.floor(0.8 * idx.sum()))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: (p / "dataset.json").unlink(), "no dataset.json"),
    (lambda p: (p / "dataset.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "sessions" / "rest-000.npy").unlink(), "is missing"),
    (lambda p: _truncate(p / "sessions" / "rest-000.npy"), "truncated or corrupt"),
    (lambda p: _edit_json(p, n_channels=95), "channel_map.csv has 96 electrodes"),
    (lambda p: _edit_json(p, version=99), "format version 99"),
    (lambda p: (p / "trials.csv").write_text("session,onset_sample\nx,1\n"), "trials.csv line 2"),
    (lambda p: (p / "sessions.csv").write_text("session,kind,day,n_samples,file\n"
                                               "a,sleep,0,10,sessions/a.npy\n"), "kind 'sleep'"),
    (lambda p: np.save(p / "sessions" / "rest-000.npy", np.zeros((20000, 95), np.float32)),
     "expected \\(n_samples, 96\\)"),
])
def test_broken_datasets_are_refused_with_the_reason(copy_of, mutate, message):
    mutate(copy_of)
    with pytest.raises(DatasetError, match=message):
        Dataset.open(copy_of)


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _edit_json(p, **changes):
    meta = json.loads((p / "dataset.json").read_text())
    meta.update(changes)
    (p / "dataset.json").write_text(json.dumps(meta))


def test_nan_samples_are_found(copy_of):
    f = copy_of / "sessions" / "rest-001.npy"
    arr = np.load(f, mmap_mode="r+")
    arr[1234, 5] = np.nan
    arr.flush()
    del arr
    ds = Dataset.open(copy_of)
    with pytest.raises(DatasetError, match="sample 1234 on electrode 6 is nan"):
        ds.check_finite("rest-001")
    with pytest.raises(DatasetError, match="NaN"):
        ds.normalised("rest-001")


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, grid_map(2, 2)) as w:
            w.add_session("a", kind="resting", day=0, n_samples=100)[:] = 1.0
            raise RuntimeError("crash mid-write")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written left
    with DatasetWriter(out, grid_map(2, 2)) as w:
        w.add_session("a", kind="resting", day=0, n_samples=100)[:] = 1.0
    assert Dataset.open(out).mua("a").shape == (100, 4)
    with pytest.raises(FileExistsError):
        DatasetWriter(out, grid_map(2, 2))
