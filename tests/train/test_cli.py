"""`phosphene pretrain` and `phosphene probe`: exit codes, the one Error: line, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.dataset import DatasetWriter
from phosphene.geometry import grid_map


@pytest.fixture
def runner():
    return CliRunner()


def _error_line(result) -> str:
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def test_pretrain_then_probe_json_and_files(runner, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(cli, ["pretrain", str(tiny_dataset.path), "--preset", "tiny", "--steps", "2",
                            "--batch-size", "4", "--val-every", "2", "--val-windows", "4",
                            "--threads", "1", "--out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2 and summary["preset"] == "tiny" and "history" not in summary
    assert (run / "best.pt").is_file()

    r = runner.invoke(cli, ["probe", str(tiny_dataset.path), "--checkpoint", str(run),
                            "--task", "threshold", "--json", "--out", str(tmp_path / "probe"),
                            "--plots", "--readout", "mean"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    res = out["results"]
    assert [x["task"] for x in res] == ["threshold"]
    assert set(res[0]["features"]) == {"raw", "pca", "electrode_mean", "electrode_mean_whitened",
                                       "latent_mean", "latent_electrode_k1", "latent_electrode_k4"}
    assert out["readout"]["readout"] == "mean" and res[0]["chosen"] == "latent_mean"
    assert "eval_p" not in res[0] and "probes" not in res[0]  # those live in probe.json
    probe = json.loads((tmp_path / "probe" / "threshold" / "probe.json").read_text())
    assert len(probe["weights"]) == probe["latent_dim"] == 32 and probe["threshold"] == 0.5
    assert probe["readout"] == "mean" and len(probe["evaluation"]["p_teacher"]) == res[0]["n_eval"]
    assert json.loads((tmp_path / "probe" / "readout.json").read_text())["readout"] == "mean"
    assert probe["window_spec"]["offset_ms"] == 170.0
    saved = json.loads((tmp_path / "probe" / "results.json").read_text())["results"]
    assert saved[0]["features"] == res[0]["features"]
    mantel = saved[0]["diagnostics"]["mantel_latent"]
    assert mantel == res[0]["diagnostics"]["mantel_latent"] and 0 < mantel["p_value"] <= 1
    png = tmp_path / "probe" / "diagnostics" / "latents_threshold.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_probe_prints_table_1(runner, tiny_dataset, tiny_run):
    run, _ = tiny_run
    r = runner.invoke(cli, ["probe", str(tiny_dataset.path), "--checkpoint", str(run / "best.pt")])
    assert r.exit_code == 0, r.output
    assert "Table 1" in r.stdout and "evaluation set" in r.stdout
    header = next(line for line in r.stdout.splitlines() if line.startswith("features"))
    assert header.split()[1:] == ["psychometric", "threshold"]
    for label in ("raw MUA, flattened (96 x 128 = 12288-d)", "PCA of raw MUA",
                  "per-electrode window mean (96-d)", "per-electrode mean, resting-whitened",
                  "MAE, mean of all tokens (paper) (32-d)", "ideal observer", "Paired differences"):
        assert label in r.stdout
    # exactly one row is marked as the readout the probes carry
    assert sum("-d) *" in line for line in r.stdout.splitlines()) == 1


def test_missing_checkpoint_is_one_error_line(runner, tiny_dataset, tmp_path):
    missing = tmp_path / "nope.pt"
    r = runner.invoke(cli, ["probe", str(tiny_dataset.path), "--checkpoint", str(missing)])
    assert r.exit_code == 1
    assert _error_line(r) == f"Error: checkpoint not found: {missing}"


def test_channel_mismatch_is_one_error_line(runner, tiny_run, tmp_path):
    run, _ = tiny_run
    data = tmp_path / "sixteen"
    with DatasetWriter(data, grid_map(4, 4)) as w:
        w.add_session("psyc-000", kind="psychometric", day=0, n_samples=3000)[:] = \
            np.ones((3000, 16), np.float32)
    r = runner.invoke(cli, ["probe", str(data), "--checkpoint", str(run)])
    assert r.exit_code == 1
    assert _error_line(r) == (f"Error: dataset {data} has 16 channels but the model in "
                              f"{run / 'best.pt'} was trained on 96: use a checkpoint pretrained "
                              "on this array")


def test_pretrain_errors(runner, tiny_dataset, tiny_run, tmp_path):
    r = runner.invoke(cli, ["pretrain", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and _error_line(r) == f"Error: dataset not found: {tmp_path / 'none'}"
    run, _ = tiny_run
    r = runner.invoke(cli, ["pretrain", str(tiny_dataset.path), "--preset", "tiny",
                            "--out", str(run)])
    assert r.exit_code == 1
    assert _error_line(r) == (f"Error: {run} already holds a pretraining run: pass --resume to "
                              "continue it or choose another --out")
    r = runner.invoke(cli, ["pretrain", str(tiny_dataset.path), "--steps", "0",
                            "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--steps must be >= 1, got 0" in r.output
    r = runner.invoke(cli, ["probe", str(tiny_dataset.path), "--checkpoint", str(run), "--plots"])
    assert r.exit_code == 2 and "--plots writes files: give --out DIR as well" in r.output


def test_not_a_checkpoint_is_one_error_line(runner, tiny_dataset, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    r = runner.invoke(cli, ["probe", str(tiny_dataset.path), "--checkpoint", str(junk)])
    assert r.exit_code == 1
    assert _error_line(r).startswith(f"Error: {junk} is not a phosphene teacher checkpoint")


def test_probe_without_resting_sessions_keeps_the_papers_readout(runner, tiny_dataset, tiny_run,
                                                                 tmp_path):
    import csv
    import shutil

    run, _ = tiny_run
    data = tmp_path / "stim-only"
    shutil.copytree(tiny_dataset.path, data, ignore=shutil.ignore_patterns("cache"))
    rows = list(csv.DictReader((data / "sessions.csv").open()))
    with (data / "sessions.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(r for r in rows if r["kind"] != "resting")
    r = runner.invoke(cli, ["probe", str(data), "--checkpoint", str(run), "--task", "threshold",
                            "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert set(res["results"][0]["features"]) == {"raw", "pca", "electrode_mean", "latent_mean"}
    assert res["readout"]["readout"] == "mean"
    r = runner.invoke(cli, ["probe", str(data), "--checkpoint", str(run), "--readout",
                            "electrode_k1"])
    assert r.exit_code == 1 and _error_line(r).startswith("Error: the electrode_k1 readout is "
                                                          "fitted on resting sessions")
