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
                                               "a,Sleep,0,10,sessions/a.npy\n"), "kind 'Sleep'"),
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
    with pytest.raises(RuntimeError), DatasetWriter(out, grid_map(2, 2)) as w:
        w.add_session("a", kind="resting", day=0, n_samples=100)[:] = 1.0
        raise RuntimeError("crash mid-write")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written left
    with DatasetWriter(out, grid_map(2, 2)) as w:
        w.add_session("a", kind="resting", day=0, n_samples=100)[:] = 1.0
    assert Dataset.open(out).mua("a").shape == (100, 4)
    with pytest.raises(FileExistsError):
        DatasetWriter(out, grid_map(2, 2))


def test_recorded_normaliser_and_window_are_the_defaults(copy_of):
    """dataset.json's normaliser and window (binned imports, --window-*) become the dataset's
    defaults; a dataset without them keeps the paper's; a bad one is named."""
    from phosphene.signal import WindowSpec

    ds = Dataset.open(copy_of)
    assert ds.normaliser_config == NormaliserConfig() and ds.window_spec == WindowSpec()
    counts = NormaliserConfig.for_counts(50)
    _edit_json(copy_of, normaliser=counts.to_dict(),
               window={"offset_ms": 0.0, "window_samples": 400, "patch_samples": 16})
    ds = Dataset.open(copy_of)
    assert ds.normaliser_config == counts
    assert ds.window_spec == WindowSpec(window_samples=400, offset_ms=0.0)
    sid = ds.sessions[0].session
    assert np.array_equal(ds.normalised(sid), ds.normalised(sid, counts), equal_nan=True)
    summary = ds.summary()
    assert summary["normaliser"]["scale_floor"] == "poisson"
    assert summary["window"] == {"offset_ms": 0.0, "window_ms": 400.0}
    _edit_json(copy_of, window={"offset_ms": 0.0, "window_samples": 100, "patch_samples": 16})
    with pytest.raises(DatasetError, match=r"window .* is not valid: window \(100 samples\)"):
        _ = Dataset.open(copy_of).window_spec


def test_trials_without_electrode_are_events(copy_of):
    text = (copy_of / "trials.csv").read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[2], first[3] = "-1", "0"  # electrode -1: an event that stimulated nothing
    (copy_of / "trials.csv").write_text("\n".join([head, ",".join(first), *text[2:]]) + "\n")
    ds = Dataset.open(copy_of)
    assert (ds.trials.electrode == -1).sum() == 1
    kinds = ds.summary()["kinds"]
    assert sum(k.get("events_without_electrode", 0) for k in kinds.values()) == 1
    assert all(-1 not in k.get("electrodes", []) for k in kinds.values())
    first[2] = "-2"
    (copy_of / "trials.csv").write_text("\n".join([head, ",".join(first), *text[2:]]) + "\n")
    with pytest.raises(DatasetError, match="electrode -2 is not on the channel map \\(or -1"):
        Dataset.open(copy_of)
