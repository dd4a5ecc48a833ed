"""Quantisation arithmetic and probe files (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phosphene.edge.bundle import BundleError, Probe, QuantParams, probe_from_json, probes_to_json


@settings(deadline=None, max_examples=60)
@given(scale=st.floats(1e-4, 10.0), zero_point=st.integers(-128, 127),
       seed=st.integers(0, 2**31 - 1))
def test_quantise_round_trip_is_within_half_a_step(scale, zero_point, seed):
    q = QuantParams(scale=scale, zero_point=zero_point, dtype="int8", shape=(1, 64))
    lo, hi = q.real_range
    x = np.random.default_rng(seed).uniform(lo, hi, size=(1, 64)).astype(np.float32)
    ints = q.quantize(x)
    assert ints.dtype == np.int8
    back = q.dequantize(ints)
    # s/2 from rounding, plus float32 rounding of x / s at the range ends
    assert np.abs(back - x).max() <= scale / 2 * (1 + 1e-4) + 1e-6 * max(abs(lo), abs(hi))


def test_quantise_clips_and_writes_in_place():
    q = QuantParams(scale=0.5, zero_point=-3, dtype="int8", shape=(4,))
    out = np.zeros(4, dtype=np.int8)
    got = q.quantize(np.array([1e6, -1e6, 0.0, 0.26], np.float32), out=out)
    assert got is out and out.tolist() == [127, -128, -3, -2]
    assert q.dequantize(out).tolist() == [65.0, -62.5, 0.0, 0.5]


@pytest.mark.parametrize("bad", [dict(scale=0.0), dict(scale=float("nan")), dict(zero_point=200),
                                 dict(dtype="float32")])
def test_bad_quant_params_are_refused(bad):
    kw = dict(scale=0.1, zero_point=0, dtype="int8", shape=(1,)) | bad
    with pytest.raises(ValueError):
        QuantParams(**kw)


def test_probe_file_round_trip_and_checks():
    w = np.array([0.5, -1.0, 2.0])
    probes = {"psychometric": Probe("psychometric", w, 0.25, 0.4, "teacher"),
              "threshold": Probe("threshold", -w, -0.1, 0.5, "refit")}
    doc = json.loads(json.dumps(probes_to_json(probes, task="threshold", latent_dim=3)))
    task, back = probe_from_json(doc, latent_dim=3)
    assert task == "threshold" and set(back) == set(probes)
    z = np.array([1.0, 0.5, 0.25])
    assert back["psychometric"].logit(z) == pytest.approx(0.5 - 0.5 + 0.5 + 0.25)
    p, decision = back["psychometric"].decide(z)
    assert p == pytest.approx(1 / (1 + np.exp(-0.75))) and decision is True
    with pytest.raises(BundleError, match="has 3 weights but the model's latent has 4"):
        probe_from_json(doc, latent_dim=4)
    newer = dict(doc, version=99)
    with pytest.raises(BundleError, match="upgrade phosphene"):
        probe_from_json(newer)
    bad = json.loads(json.dumps(doc))
    bad["probes"]["threshold"]["weights"][0] = None
    with pytest.raises(BundleError, match="threshold"):
        probe_from_json(bad)


def test_teacher_probe_files_are_read(tmp_path):
    """quantize reads the layout `phosphene probe --out DIR` writes: DIR/<task>/probe.json."""
    from phosphene.quantize.build import load_probes

    for task, bias in (("psychometric", 0.1), ("threshold", -0.2)):
        (tmp_path / task).mkdir()
        (tmp_path / task / "probe.json").write_text(json.dumps({
            "format": "phosphene-probe", "version": 1, "task": task, "latent_dim": 2,
            "weights": [1.0, 2.0], "bias": bias, "threshold": 0.5, "threshold_on": "probability"}))
    probes = load_probes(tmp_path, latent_dim=2)
    assert set(probes) == {"psychometric", "threshold"}
    assert probes["threshold"].bias == -0.2 and probes["threshold"].source == "teacher"
    one = load_probes(tmp_path / "threshold" / "probe.json", latent_dim=2)
    assert set(one) == {"threshold"}
    with pytest.raises(ValueError, match="has 2 weights but the student's latent has 3"):
        load_probes(tmp_path, latent_dim=3)
    with pytest.raises(ValueError, match="no probe at"):
        load_probes(tmp_path / "missing", latent_dim=2)


def test_results_section_is_replaced_in_place(tmp_path):
    from phosphene.quantize.compare import STUDENTS_BEGIN, STUDENTS_END, replace_section

    md = tmp_path / "results.md"
    md.write_text("# Results\n\n## Pretraining\nother engineer's text\n")
    replace_section(md, STUDENTS_BEGIN, STUDENTS_END, "## Student designs\n\n| a |\n")
    first = md.read_text()
    assert first.startswith("# Results\n\n## Pretraining\nother engineer's text\n")
    assert f"{STUDENTS_BEGIN}\n## Student designs\n\n| a |\n{STUDENTS_END}\n" in first
    md.write_text(first + "\n## Later section\nkept\n")
    replace_section(md, STUDENTS_BEGIN, STUDENTS_END, "## Student designs\n\n| b |")
    second = md.read_text()
    assert "| a |" not in second and f"\n| b |\n{STUDENTS_END}" in second
    assert second.count("## Student designs") == 1 and second.endswith("## Later section\nkept\n")
