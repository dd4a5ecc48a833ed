"""Quantize fixtures: a tiny real teacher, its probes, a tiny student and ONE real bundle.

The bundle goes through the whole pipeline (torch -> ONNX -> onnx2tf -> full int8 ->
parity -> manifest), which costs one onnx2tf run (20-70 s); every test that needs a
bundle shares this session-scoped one and copies it before changing anything.
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_teacher(tiny_dataset, tmp_path_factory):
    """A real MAE teacher (tiny preset, a few steps) and its probes for both tasks."""
    from phosphene.train.checkpoint import load_teacher
    from phosphene.train.pretrain import pretrain
    from phosphene.train.probe import probe_teacher

    run = tmp_path_factory.mktemp("teacher") / "run"
    pretrain(tiny_dataset, "tiny", out_dir=run, steps=8, val_every=8)
    model, meta = load_teacher(run)
    probe_teacher(tiny_dataset, model, spec=meta["window_spec"], norm_config=meta["normaliser"],
                  tasks=("psychometric", "threshold"), readout="mean", out_dir=run / "probe",
                  resting_windows=64)
    return run


@pytest.fixture(scope="session")
def tiny_student(tiny_dataset, tiny_teacher, tmp_path_factory):
    from phosphene.train.distill import distill

    out = tmp_path_factory.mktemp("student") / "student"
    metrics = distill(tiny_dataset, tiny_teacher, out, arch="mixer", preset="tiny")
    return out, metrics


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tiny_teacher, tiny_student, tmp_path_factory):
    """(bundle path, parity report): the one real conversion of this test session."""
    from phosphene.quantize.build import QuantizeConfig, build_bundle

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    report = build_bundle(tiny_dataset, tiny_student[0], tiny_teacher / "probe", out,
                          config=QuantizeConfig(calib_windows=96, parity_windows=96,
                                                latency_runs=50))
    return out, report


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], dst)
    return dst
