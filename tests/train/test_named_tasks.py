"""Named tasks with a window each (issue 16): two behavioural tasks imported from counts, one
decoded after its event and one before it, each probed on its own window; the window
travels from the dataset through probe.json into the bundle, where the edge reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from binned_counts import make_counts  # tests/io is on the test path (pyproject)
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.dataset import Dataset, task_name_problem
from phosphene.signal import WindowSpec


def _import(tmp_path, name, *, kind, offset_ms, seed, append):
    c = make_counts(n_units=8, rest_s=40.0, task_s=60.0, iti_s=1.0, gain=1.5, seed=seed)
    np.save(tmp_path / f"{name}.npy", c.counts)
    c.trials_csv(tmp_path / f"{name}.csv", label_column="hit")
    args = ["import", "array", str(tmp_path / f"{name}.npy"), "--bin-ms", "50", "--trials",
            str(tmp_path / f"{name}.csv"), "--label-column", "hit", "--kind", kind,
            "--session", name, "--window-offset-ms", str(offset_ms), "--window-ms", "320",
            "--out", str(tmp_path / "data")]
    args += ["--append"] if append else ["--split-at", "40"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    return c


def test_two_named_tasks_each_decode_their_own_window(tmp_path):
    from phosphene.train.data import trial_windows

    _import(tmp_path, "reach", kind="reach", offset_ms=0, seed=3, append=False)
    _import(tmp_path, "choice", kind="choice", offset_ms=-320, seed=4, append=True)
    ds = Dataset.open(tmp_path / "data")
    assert ds.tasks == ("reach", "choice")
    assert ds.task_offsets_ms == {"reach": 0.0, "choice": -320.0}
    assert ds.window_spec == WindowSpec(window_samples=320, offset_ms=0.0)  # the first import's
    summary = ds.summary()["kinds"]
    assert summary["choice"]["window_offset_ms"] == -320.0 and summary["reach"]["trials"] > 0

    # each task's windows are cut where its import said: choice ends at the event
    X, _, trials = trial_windows(ds, "choice", ds.window_spec)
    arr = ds.normalised("choice")
    for i in (0, len(trials) - 1):
        onset = int(trials.onset_sample[i])
        np.testing.assert_array_equal(X[i], arr[onset - 320:onset])
    X, _, trials = trial_windows(ds, "reach", ds.window_spec)
    onset = int(trials.onset_sample[0])
    np.testing.assert_array_equal(X[0], ds.normalised(str(trials.session[0]))[onset:onset + 320])

    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(cli, ["pretrain", str(tmp_path / "data"), "--preset", "tiny", "--steps", "2",
                            "--batch-size", "4", "--val-every", "1", "--val-windows", "4",
                            "--threads", "1", "--out", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["probe", str(tmp_path / "data"), "--checkpoint", str(run), "--json",
                            "--readout", "mean", "--out", str(tmp_path / "probe")])
    assert r.exit_code == 0, r.output
    results = {x["task"]: x for x in json.loads(r.stdout)["results"]}
    assert set(results) == {"reach", "choice"}
    assert results["choice"]["window"] == {"offset_ms": -320.0, "window_ms": 320.0}
    saved = json.loads((tmp_path / "probe" / "choice" / "probe.json").read_text())
    assert saved["task"] == "choice" and saved["window_offset_ms"] == -320.0

    r = runner.invoke(cli, ["probe", str(tmp_path / "data"), "--checkpoint", str(run),
                            "--task", "grasp"])
    assert r.exit_code == 2 and "no task 'grasp'" in r.output and "reach, choice" in r.output


def test_a_probe_carries_its_window_into_the_bundle(tmp_path):
    from tiny_bundle import make_tiny_bundle

    from phosphene.edge.bundle import PROBE_FILE, load_bundle, probe_from_json

    path = make_tiny_bundle(tmp_path / "b", tasks=("psychometric", "choice", "threshold_pre"))
    doc = json.loads((path / PROBE_FILE).read_text())
    doc["probes"]["choice"]["offset_ms"] = -320.0
    _, probes = probe_from_json(doc)
    assert probes["choice"].offset_ms == -320.0 and probes["psychometric"].offset_ms is None
    b = load_bundle(path)
    assert b.window_for("threshold_pre").offset_ms == -b.window_spec.window_ms  # by its name
    assert b.window_for("psychometric") == b.window_spec
    doc["probes"]["choice"]["offset_ms"] = "soon"
    with pytest.raises(ValueError, match="offset_ms a number"):
        probe_from_json(doc)


@pytest.mark.parametrize("name", ["Reach", "2afc", "reach_pre", "a" * 41, "re ach"])
def test_task_names_that_cannot_be_tasks(name, tmp_path):
    assert task_name_problem(name) is not None and task_name_problem("resting") is not None
    assert task_name_problem("reach_2") is None
    np.save(tmp_path / "x.npy", np.ones((200, 4)))
    r = CliRunner().invoke(cli, ["import", "array", str(tmp_path / "x.npy"), "--bin-ms", "50",
                                 "--kind", name, "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "--kind" in r.output
