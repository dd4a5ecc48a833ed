"""Binned counts through pretrain and probe: the dataset's window and normaliser flow into the
checkpoint, and every pretraining log, pretrain.json and the probe's results.json carry the
predict-each-channel's-mean baseline next to the validation loss (issue 16)."""

from __future__ import annotations

import json
import logging

import numpy as np
from binned_counts import make_counts  # tests/io is on the test path (pyproject)
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.dataset import Dataset
from phosphene.signal import NormaliserConfig, WindowSpec


def test_counts_pretrain_and_probe_carry_window_normaliser_and_baseline(tmp_path, caplog):
    from phosphene.train.checkpoint import load_teacher

    c = make_counts(n_units=8, rest_s=40.0, task_s=60.0, iti_s=1.0, gain=1.5, seed=2)
    np.save(tmp_path / "rec.npy", c.counts)
    c.trials_csv(tmp_path / "events.csv", label_column="choice")
    runner = CliRunner()
    r = runner.invoke(cli, ["import", "array", str(tmp_path / "rec.npy"), "--bin-ms", "50",
                            "--trials", str(tmp_path / "events.csv"), "--label-column", "choice",
                            "--window-offset-ms", "0", "--window-ms", "320", "--split-at", "40",
                            "--out", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    ds = Dataset.open(tmp_path / "data")
    assert ds.window_spec == WindowSpec(window_samples=320, offset_ms=0.0)
    assert ds.normaliser_config == NormaliserConfig.for_counts(50)

    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="phosphene.train.pretrain"):
        r = runner.invoke(cli, ["pretrain", str(tmp_path / "data"), "--preset", "tiny", "--steps",
                                "2", "--batch-size", "4", "--val-every", "1", "--val-windows", "4",
                                "--threads", "1", "--out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["window_spec"]["window_samples"] == 320 and summary["window_spec"]["offset_ms"] == 0
    assert summary["normaliser"]["scale_floor"] == "poisson"
    assert summary["val_mse_channel_mean_baseline"] > 0
    assert "predicting each channel's mean" in r.stderr
    # the log line of every validation names the baseline next to the validation loss
    steps = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("step ")]
    assert steps and all("predicting each channel's mean: " in m for m in steps)
    history = json.loads((run / "pretrain.json").read_text())["history"]
    assert all(h["val_mse_channel_mean"] == summary["val_mse_channel_mean_baseline"]
               for h in history if "val_mse" in h)
    _, meta = load_teacher(run)
    assert meta["window_spec"] == ds.window_spec and meta["normaliser"] == ds.normaliser_config

    r = runner.invoke(cli, ["probe", str(tmp_path / "data"), "--checkpoint", str(run), "--json",
                            "--readout", "mean", "--out", str(tmp_path / "probe")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert saved["pretraining"]["val_mse_channel_mean_baseline"] == summary["val_mse_channel_mean_baseline"]
    assert saved["pretraining"]["best_val_mse"] == summary["best_val_mse"]
    assert json.loads(r.stdout)["pretraining"] == saved["pretraining"]
    res = saved["results"][0]
    assert res["task"] == "psychometric" and res["n_train"] + res["n_eval"] == len(c.labels)
    assert res["features"]["raw"]["dim"] == 320 * 8
