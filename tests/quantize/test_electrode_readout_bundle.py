"""The decoder the demo ships: a per-electrode readout of the teacher, distilled into the
mixer student with the whitened loss, converted to int8 and decided on by the edge."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_electrode_readout_travels_from_probe_to_int8_bundle(tiny_dataset, tiny_teacher,
                                                             tmp_path):
    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.interpreter import Encoder
    from phosphene.quantize.build import QuantizeConfig, build_bundle
    from phosphene.train.checkpoint import load_teacher
    from phosphene.train.distill import distill, load_student, predict
    from phosphene.train.probe import probe_teacher, task_split

    model, meta = load_teacher(tiny_teacher)
    probe_dir = tmp_path / "probe"
    run = probe_teacher(tiny_dataset, model, spec=meta["window_spec"],
                        norm_config=meta["normaliser"], tasks=("psychometric", "threshold"),
                        readout="electrode_k1", out_dir=probe_dir, resting_windows=64)
    assert run["choice"]["readout"] == "electrode_k1"
    doc = json.loads((probe_dir / "psychometric" / "probe.json").read_text())
    assert doc["readout"] == "electrode_k1" and doc["latent_dim"] == tiny_dataset.n_channels

    metrics = distill(tiny_dataset, tiny_teacher, tmp_path / "student", arch="mixer",
                      preset="tiny", probe_dir=probe_dir)
    assert metrics["readout"] == "electrode_k1"
    assert metrics["pool"]["stimulation_unlabelled"] > 0  # stimulation windows, labels unread
    student, smeta = load_student(tmp_path / "student")
    assert smeta["readout"] == "electrode_k1" and smeta["latent_dim"] == tiny_dataset.n_channels

    report = build_bundle(tiny_dataset, tmp_path / "student", probe_dir, tmp_path / "bundle",
                          config=QuantizeConfig(calib_windows=96, parity_windows=96,
                                                latency_runs=20, min_agreement=0.8,
                                                min_wire_agreement=0.9))
    bundle = load_bundle(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["readout"] == "electrode_k1" and manifest["model"]["arch"] == "mixer"
    assert report["latent"]["cosine_mean"] >= 0.99  # int8 computes what the float student does
    # the edge decision on evaluation windows is the float student's up to int8 rounding
    sp = task_split(tiny_dataset, "psychometric", bundle.window_spec, bundle.normaliser_config)
    X = sp["X_eval"][:16]
    enc = Encoder(bundle)
    z_edge = np.stack([enc.latent(w) for w in X])
    z_float = predict(student, X)
    cos = (z_edge * z_float).sum(1) / np.linalg.norm(z_edge, axis=1) / np.linalg.norm(z_float, axis=1)
    assert cos.min() > 0.98
    e = report["tasks"]["psychometric"]
    assert 0.0 <= e["ba_int8"] <= 1.0 and "int8-teacher" in e["paired"]
