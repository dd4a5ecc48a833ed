"""A bundle made once gives the same decisions under ai-edge-litert and tflite-runtime 2.14.

tflite-runtime needs numpy < 2, so it runs in its own environment, made (once, then
reused) by scripts/make_tflite_env.sh under $PHOSPHENE_TFLITE_VENV or .venv-tflite in the
repository; pip installs from PyPI are allowed in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("runtime_decisions.py")

pytestmark = [pytest.mark.slow, pytest.mark.tflite_runtime]


@pytest.fixture(scope="session")
def tflite_python() -> Path:
    venv = Path(os.environ.get("PHOSPHENE_TFLITE_VENV", ROOT / ".venv-tflite"))
    python = venv / "bin" / "python"
    ready = python.is_file() and subprocess.run(
        [str(python), "-c", "import tflite_runtime.interpreter, phosphene.edge.interpreter"],
        capture_output=True, check=False).returncode == 0
    if not ready:
        subprocess.run(["bash", str(ROOT / "scripts" / "make_tflite_env.sh"), str(venv)],
                       check=True, env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    return python


def test_same_decisions_under_both_interpreters(tiny_bundle, tiny_dataset, tflite_python, tmp_path):
    from phosphene.edge.bundle import load_bundle
    from phosphene.train.data import trial_windows
    from phosphene.train.distill import heldout_resting_windows

    bundle = load_bundle(tiny_bundle[0])
    spec, norm = bundle.window_spec, bundle.normaliser_config
    windows = np.concatenate(
        [trial_windows(tiny_dataset, t, spec, norm)[0] for t in ("psychometric", "threshold")]
        + [heldout_resting_windows(tiny_dataset, spec, norm, 40)])
    np.save(tmp_path / "windows.npy", windows)
    runs = {}
    for name, python, runtime, xnnpack in (
            ("litert", sys.executable, "litert", "1"),  # the default: XNNPACK int8 kernels
            ("litert-builtin", sys.executable, "litert", "0"),
            ("tflite-runtime", str(tflite_python), "tflite-runtime", "1")):
        out = tmp_path / f"{name}.npz"
        subprocess.run([python, str(HELPER), str(tiny_bundle[0]), str(tmp_path / "windows.npy"),
                        str(out), runtime, xnnpack], check=True, timeout=300)
        runs[name] = np.load(out)
    lite, builtin, tfl = runs["litert"], runs["litert-builtin"], runs["tflite-runtime"]
    assert str(lite["runtime"]).startswith("litert 2.3")
    assert str(tfl["runtime"]) == "tflite-runtime 2.14.0"
    assert str(tfl["numpy_version"]).startswith("1.") and str(lite["numpy_version"]).startswith("2.")
    out_step = bundle.output_quant.scale
    for task, probe in bundle.probes.items():
        # The same builtin int8 kernels: bit-identical latents, identical decisions.
        np.testing.assert_array_equal(builtin[f"{task}_latent"], tfl[f"{task}_latent"])
        np.testing.assert_array_equal(builtin[f"{task}_decision"], tfl[f"{task}_decision"])
        # LiteRT's default XNNPACK kernels requantise intermediate layers differently, so a
        # latent value may differ by an output step or two; a decision may then only differ
        # where that difference can cross the threshold: |logit| <= sum|w| * delta.
        # Everywhere else the decisions must match.
        delta = np.abs(lite[f"{task}_latent"] - tfl[f"{task}_latent"]).max()
        assert delta <= 3 * out_step * (1 + 1e-5)
        logit = probe.logit(lite[f"{task}_latent"]) - np.log(probe.threshold / (1 - probe.threshold))
        can_flip = np.abs(logit) <= np.abs(probe.weights).sum() * delta
        assert can_flip.mean() < 0.25, (task, can_flip.mean())  # most are really compared
        np.testing.assert_array_equal(lite[f"{task}_decision"][~can_flip],
                                      tfl[f"{task}_decision"][~can_flip])
        # and the probability itself: the logits differ by no more than int8 steps allow
        tfl_logit = probe.logit(tfl[f"{task}_latent"]) - np.log(probe.threshold / (1 - probe.threshold))
        np.testing.assert_allclose(logit, tfl_logit, rtol=0,
                                   atol=np.abs(probe.weights).sum() * delta + 1e-9)
        assert np.ptp(tfl_logit) > 0  # the windows give different logits: nothing vacuous
