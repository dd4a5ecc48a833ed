"""The whole mission, test-sized: `phosphene demo --quick` end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

REQUIRED = {
    "accuracy": None,
    "parity": ("cosine_mean", "cosine_min", "decision_agreement"),
    "latency_us": ("decision_p50", "decision_p99", "e2e_p50", "e2e_p99"),
    "stream": ("frames_sent", "frames_received", "frames_lost", "crc_errors", "decisions",
               "budget_misses"),
}


@pytest.mark.slow
def test_quick_demo_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "phosphene", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "balanced accuracy" in proc.stdout and "end-to-end" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    for task in ("psychometric", "threshold"):
        acc = report["accuracy"][task]
        # the report.json contract: every accuracy with its 95% CI on the evaluation set
        for key in ("raw", "pca", "electrode_mean", "electrode_mean_whitened", "teacher",
                    "student", "int8", "ideal"):
            lo, hi = acc["ci95"][key]
            # a percentile interval holds its estimate except under strong skew (60 trials)
            assert 0.0 <= lo <= hi <= 1.0 and lo - 0.05 <= acc[key] <= hi + 0.05, (task, key)
        assert acc["n_eval"] == 60 and acc["evaluation"] == "evaluation set"
        assert acc["readout"] == report["readout"]["readout"]
        for pair in ("int8-teacher", "teacher-pca"):
            c = acc["paired"][pair]
            assert c["ci95"][0] - 0.05 <= c["diff"] <= c["ci95"][1] + 0.05 and 0 <= c["p_value"] <= 1
        assert acc["paired"]["int8-teacher"]["diff"] == pytest.approx(acc["int8"] - acc["teacher"],
                                                                     abs=1e-3)
    for section, keys in REQUIRED.items():
        for key in keys or ():
            assert report[section][key] is not None, (section, key)
    stream = report["stream"]
    assert stream["frames_lost"] == 0 and stream["crc_errors"] == 0
    assert stream["frames_received"] == stream["frames_sent"]
    assert stream["decisions"] >= 1 and stream["budget_misses"] == 0
    assert report["parity"]["cosine_mean"] >= 0.9
    assert report["latency_us"]["decision_p50"] > 0
    md = (out / "report.md").read_text()
    assert "![" in md and (out / "plots" / "virtual-cortex.png").is_file()
    assert "Paired differences" in md and "95% CI" in md
    assert (out / "bundle" / "manifest.json").is_file()


def test_demo_refuses_a_non_empty_out_dir(tmp_path):
    (tmp_path / "x").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "phosphene", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"Error: {tmp_path} already exists and is not empty (pass --overwrite)")
    assert (tmp_path / "x").read_text() == "keep me"
