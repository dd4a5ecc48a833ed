"""Fuzzing the dataset reader: any bytes in any file give a DatasetError naming it, or a dataset.

Never another exception type, never a hang, never an allocation driven by a bogus header
(arrays are memory-mapped, so a header claiming terabytes fails the size check instead).
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phosphene.dataset import Dataset, DatasetError

FILES = ["dataset.json", "channel_map.csv", "sessions.csv", "trials.csv", "sessions/rest-000.npy"]


@pytest.fixture(scope="module")
def small_copy(tiny_dataset, tmp_path_factory):
    return tiny_dataset.path


def _fresh(src, dst):
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "*.npy"))
    (dst / "sessions").mkdir(exist_ok=True)
    for f in (src / "sessions").glob("*.npy"):
        (dst / "sessions" / f.name).symlink_to(f)  # large files are shared read-only
    return dst


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(FILES), data=st.binary(max_size=400), mode=st.sampled_from(["replace", "splice"]))
def test_any_corruption_is_a_named_dataset_error(small_copy, tmp_path, target, data, mode):
    ds_dir = _fresh(small_copy, tmp_path / "ds")
    f = ds_dir / target
    original = f.read_bytes()
    if f.is_symlink():
        f.unlink()
    if mode == "replace":
        f.write_bytes(data)
    else:  # keep the start (e.g. a valid header) and splice garbage in the middle
        cut = len(original) // 3 if target.endswith(".npy") else len(original) // 2
        f.write_bytes(original[:cut] + data + original[cut + len(data):][:2000])
    try:
        Dataset.open(ds_dir)
    except DatasetError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert target.split("/")[-1] in message or str(ds_dir) in message


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 2**40), cols=st.integers(0, 2**16))
def test_npy_header_claiming_huge_shapes_is_refused_cheaply(small_copy, tmp_path, rows, cols):
    import numpy as np

    ds_dir = _fresh(small_copy, tmp_path / "ds")
    f = ds_dir / "sessions" / "rest-000.npy"
    f.unlink()
    with open(f, "wb") as out:  # a valid .npy header whose shape the data cannot back
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (rows, cols)})
        out.write(b"\0" * 64)
    with pytest.raises(DatasetError, match="rest-000"):
        Dataset.open(ds_dir)
