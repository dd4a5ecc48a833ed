"""The bundle end to end: build once (real onnx2tf), then verify, tamper, refuse."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.edge.bundle import (
    BUNDLE_VERSION,
    DIGEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PROBE_FILE,
    BundleError,
    load_bundle,
)
from phosphene.edge.interpreter import Encoder
from phosphene.edge.signing import read_seal, seal_bundle

pytestmark = pytest.mark.slow


def _manifest(path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text())


def _write_manifest(path, m: dict) -> None:
    """Rewrite the manifest and reseal, as a (mis)built bundle would be: checks past bundle.sig."""
    (path / MANIFEST_FILE).write_text(json.dumps(m))
    seal_bundle(path)


def test_bundle_holds_what_the_design_names(tiny_bundle, tiny_dataset):
    path, report = tiny_bundle
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST_FILE, MODEL_FILE, PROBE_FILE,
                                                             DIGEST_FILE])
    assert not path.with_name(path.name + ".work").exists()  # work files cleaned up
    m = _manifest(path)
    assert m["format"] == "phosphene-bundle" and m["version"] == BUNDLE_VERSION
    assert set(m["files"]) == {MODEL_FILE, PROBE_FILE}
    seal = read_seal(path)  # bundle.sig covers every file, the manifest included, unsigned
    assert set(seal.files) == {MANIFEST_FILE, MODEL_FILE, PROBE_FILE} and seal.signature is None
    assert all(seal.files[n] == meta["sha256"] for n, meta in m["files"].items())
    assert m["n_channels"] == tiny_dataset.n_channels == len(m["channel_map"]["electrodes"])
    assert m["sample_rate_hz"] == 1000.0
    assert m["window"] == {"sample_rate_hz": 1000.0, "window_samples": 128, "patch_samples": 16,
                           "offset_ms": 170.0}
    assert m["normaliser"]["method"] == "robust"
    for role, shape in (("input", [1, 128, tiny_dataset.n_channels]), ("output", [1, 32])):
        q = m["model"][role]
        assert q["dtype"] == "int8" and q["shape"] == shape and q["scale"] > 0
    assert "Flex" not in " ".join(m["model"]["operators"])
    assert m["calibration"]["n_stimulation_windows"] == 48  # half as many as resting, labels unread
    assert m["calibration"]["n_windows"] == 96 + 48 and len(m["calibration"]["sha256"]) == 64
    assert m["training"]["teacher"]["sha256"] and m["training"]["student_step"] == 40
    assert m["latency_budget_ms"] == 16.0  # one patch period at 1 kHz
    assert {"torch", "onnx", "onnx2tf", "ai-edge-litert", "numpy"} <= set(m["tools"])
    # parity: measured, above the default thresholds, and what build_bundle returned
    p = m["parity"]
    assert p == json.loads(json.dumps(report))
    assert p["latent"]["cosine_mean"] >= 0.99 and p["decision_agreement"] >= 0.98
    assert 0 < p["latent"]["cosine_min"] <= p["latent"]["cosine_mean"] <= 1
    assert p["latent"]["max_abs_error"] > 0  # int8 is not bit-identical to float
    assert m["model"]["readout"] == p["readout"] == "mean"
    for task in ("psychometric", "threshold"):
        e = p["tasks"][task]
        # accuracy on the evaluation set, with CIs, paired with the teacher's saved decisions
        assert e["evaluation"] == "evaluation set"
        assert e["n_eval"] == len(tiny_dataset.evaluation().task_trials(task))
        for name in ("teacher", "float_student", "int8", "refit_float_student",
                     "refit_int8_student"):
            lo, hi = e[f"ci95_{name}"]
            assert 0.0 <= lo <= e[f"ba_{name}"] <= hi <= 1.0, (task, name)
        assert 0.0 <= e["decision_agreement"] <= 1.0
        c = e["paired"]["int8-teacher"]
        assert c["diff"] == pytest.approx(e["ba_int8"] - e["ba_teacher"]) and c["n"] == e["n_eval"]


def test_loaded_bundle_decodes_like_the_parity_run(tiny_bundle, tiny_dataset):
    from phosphene.train.data import trial_windows

    path, _ = tiny_bundle
    bundle = load_bundle(path)
    assert bundle.n_channels == tiny_dataset.n_channels
    assert bundle.channel_map.ids == tiny_dataset.channel_map.ids
    assert bundle.probe.task == "psychometric" and bundle.probe.weights.shape == (32,)
    assert set(bundle.probes) == {"psychometric", "threshold"}
    enc = Encoder(bundle)
    X, _, _ = trial_windows(tiny_dataset, "psychometric", bundle.window_spec,
                            bundle.normaliser_config)
    decisions = [enc.decide(w) for w in X[:10]]
    for w, d in zip(X[:10], decisions):
        p, perceived = bundle.probe.decide(enc.latent(w))
        assert d.p_perceived == pytest.approx(p) and d.perceived == perceived
        assert set(d.timings_us) == {"quantize", "invoke", "probe", "total"}
    with pytest.raises(ValueError, match="shape"):
        enc.latent(X[0][:, :-1])
    nan_window = X[0].copy()
    nan_window[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        enc.decide(nan_window)


@pytest.mark.parametrize("name", [MANIFEST_FILE, MODEL_FILE, PROBE_FILE, DIGEST_FILE])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_tampering_any_byte_fails_naming_the_file(bundle_copy, name, where):
    file = bundle_copy / name
    data = bytearray(file.read_bytes())
    i = int(where * len(data)) if where >= 0 else len(data) - 1
    data[i] ^= 0x01
    file.write_bytes(bytes(data))
    expected = (f"bundle file {DIGEST_FILE} is corrupted" if name == DIGEST_FILE
                else f"bundle file {name} does not match its SHA-256 in {DIGEST_FILE}")
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", [MODEL_FILE, PROBE_FILE])
def test_missing_file_is_named(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=f"bundle file {name} is missing"):
        load_bundle(bundle_copy)


def test_newer_format_version_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    m["version"] = BUNDLE_VERSION + 1
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="newer than this phosphene reads"):
        load_bundle(bundle_copy)


def test_channel_count_must_match_the_map(bundle_copy):
    # (a stream that does not fit is the runtime's `stream_mismatch`: tests/reliability)
    m = _manifest(bundle_copy)
    m["n_channels"] = 95
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="n_channels is 95 but the channel map lists 96"):
        load_bundle(bundle_copy)


def test_model_that_differs_from_manifest_quantisation_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    m["model"]["input"]["scale"] *= 1.5
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match=r"input tensor .* differs from the manifest"):
        Encoder(load_bundle(bundle_copy))


def test_flex_ops_fail_loudly(tiny_bundle, tmp_path):
    """A model using a non-builtin op (as onnx2tf emits for Erf) is rejected by name."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from phosphene.quantize.convert import ConversionError, check_builtin_only, tflite_operators

    src = tiny_bundle[0] / MODEL_FILE
    assert all(op["builtin"] for op in tflite_operators(src))
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(src.read_bytes(), 0))
    model.operatorCodes[0].builtinCode = schema.BuiltinOperator.CUSTOM
    model.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    model.operatorCodes[0].customCode = "FlexErf"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "flex.tflite"
    bad.write_bytes(bytes(builder.Output()))
    with pytest.raises(ConversionError, match="not TFLite builtins: FlexErf"):
        check_builtin_only(bad)


def test_verify_cli(tiny_bundle, bundle_copy):
    runner = CliRunner()
    r = runner.invoke(cli, ["verify", str(tiny_bundle[0]), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["bundle"]["n_channels"] == 96
    assert report["interpreter"]["runtime"] == "litert"
    r = runner.invoke(cli, ["verify", str(tiny_bundle[0])])
    assert r.exit_code == 0 and r.output.rstrip().endswith("OK")
    assert "model.tflite sha256" in r.output and "96 channels" in r.output
    (bundle_copy / PROBE_FILE).write_text("{}")
    r = runner.invoke(cli, ["verify", str(bundle_copy)])
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: bundle file probe.json does not match its SHA-256 in "
                                "bundle.sig (corrupted or modified): copy the bundle again")
    r = runner.invoke(cli, ["verify", str(bundle_copy / "nope")])
    assert r.exit_code == 1 and r.output.startswith("Error: bundle not found")


def test_loading_a_bundle_never_imports_the_workstation_stack(tiny_bundle):
    code = (
        "import sys, numpy as np\n"
        "from phosphene.edge.bundle import load_bundle\n"
        "from phosphene.edge.interpreter import Encoder\n"
        f"b = load_bundle({str(tiny_bundle[0])!r})\n"
        "Encoder(b).decide(np.zeros((b.window_spec.window_samples, b.n_channels), np.float32))\n"
        "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'onnx2tf', 'sklearn', 'scipy') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
