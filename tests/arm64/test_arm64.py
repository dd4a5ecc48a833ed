"""The edge path on emulated arm64 (qemu-user) against x86: the CI version of `make arm64-check`.

test_arm64_quick_check builds (or reuses) the arm64 environment in arm64/.cache/ (or
$PHOSPHENE_ARM64_CACHE), makes a tiny bundle, and runs `phosphene verify`, a short
`phosphene bench` and the x86-vs-arm64 parity of int8 latents and decisions on it.
About 2 minutes from nothing (downloads included), well under a minute with the cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _parity_module():
    spec = importlib.util.spec_from_file_location("arm64_parity", REPO / "arm64" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(folder: Path, latents: np.ndarray, decisions: list[bool], machine: str) -> Path:
    folder.mkdir(parents=True)
    np.save(folder / "latents_int8.npy", latents.astype(np.int8))
    np.save(folder / "p_perceived.npy", np.where(decisions, 0.7, 0.3))
    (folder / "decisions.json").write_text(json.dumps(decisions))
    (folder / "info.json").write_text(json.dumps({
        "machine": machine, "runtime": "litert", "runtime_version": "2.3.0", "qemu_cpu": None,
        "model_sha256": "same"}))
    return folder


def test_compare_allows_one_step_and_catches_more(tmp_path):
    parity = _parity_module()
    base = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    decisions = [True, False]
    ref = _fake_run(tmp_path / "x86", base, decisions, "x86_64")
    one_step = base.copy()
    one_step[1, 3] += 1
    report = parity.compare_runs(ref, _fake_run(tmp_path / "a", one_step, decisions, "aarch64"))
    assert (report["ok"], report["int8_max_abs_diff"], report["windows_bit_identical"]) == (True, 1, 1)

    two_steps = base.copy()
    two_steps[0, 0] -= 2
    report = parity.compare_runs(ref, _fake_run(tmp_path / "b", two_steps, decisions, "aarch64"))
    assert (report["ok"], report["int8_max_abs_diff"]) == (False, 2)

    report = parity.compare_runs(ref, _fake_run(tmp_path / "c", base, [True, True], "aarch64"))
    assert (report["ok"], report["decision_agreement"], report["decisions_differ_at"]) == (False, 0.5, [1])


@pytest.mark.slow
def test_arm64_quick_check(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(REPO / "arm64" / "check.sh"), "--quick", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "PHOSPHENE_HOST_PYTHON": sys.executable})
    report_file = out / "report.json"
    assert report_file.is_file(), proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert proc.returncode == 0 and report["ok"], (report.get("failures"), proc.stderr[-3000:])

    assert report["verify"]["ok"] is True
    assert report["verify"]["runtime"] == "litert"
    assert report["bench"]["runs"] == 20 and report["bench"]["runtime"] == "litert"
    bench = json.loads(Path(report["bench"]["json"]).read_text())
    assert "aarch64" in bench["cpu"]

    (parity,) = report["parity"].values()
    assert parity["arm64"]["machine"] == "aarch64" and parity["x86"]["machine"] == "x86_64"
    assert parity["arm64"]["runtime"] == parity["x86"]["runtime"] == "litert"
    assert parity["int8_max_abs_diff"] <= 1
    assert parity["decision_agreement"] == 1.0
    assert parity["n_windows"] == 64
