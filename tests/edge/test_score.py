"""`phosphene score`: decision logs matched to a dataset's trials and scored, checked against
an independent computation from the CSV files and the log lines."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from phosphene.edge.runtime import DecisionSinks, Runtime, RuntimeConfig
from phosphene.edge.score import ScoreError, format_score, score, score_decisions
from phosphene.edge.source import FrameAdapter
from phosphene.firmware_bridge.simulator import DatasetSource, Simulator, SimulatorConfig


# --------------------------------------------------------------------------------------
# independent reading of the dataset and the log (csv and json only)
# --------------------------------------------------------------------------------------
def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def session_trials(dataset_path, session):
    """{onset: row} of a session's trials, and the session length, from the CSV files."""
    n = next(int(r["n_samples"]) for r in csv_rows(dataset_path / "sessions.csv") if r["session"] == session)
    trials = {int(r["onset_sample"]): r for r in csv_rows(dataset_path / "trials.csv")
              if r["session"] == session}
    return trials, n


def by_hand_balanced_accuracy(y, pred):
    y, pred = np.asarray(y), np.asarray(pred)
    return (np.mean(pred[y == 0] == 0) + np.mean(pred[y == 1] == 1)) / 2


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def decision(onset, electrode, current, value, **extra):
    return {"type": "decision", "mode": "triggered", "onset_sample": int(onset), "electrode": int(electrode),
            "current_ua": float(current), "decision": int(value), "p_perceived": 0.9 if value else 0.1,
            "window": [int(onset) + 170, int(onset) + 298], **extra}


# --------------------------------------------------------------------------------------
# a real run: a dataset session through the simulator's wire bytes into the runtime
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def streamed(tiny_dataset, edge_bundle, edge_decoder, tmp_path_factory):
    """Log of a run on the first psychometric session, streamed 14 s past its end (lap 2)."""
    session = tiny_dataset.sessions_of("psychometric")[0]
    buf = io.BytesIO()
    Simulator(DatasetSource(tiny_dataset, session.session),
              SimulatorConfig(speed=0, frame_samples=edge_bundle.window_spec.patch_samples)
              ).run(buf, duration_s=session.n_samples / 1000 + 14)
    out = tmp_path_factory.mktemp("score") / "decisions.jsonl"
    sinks = DecisionSinks(out_path=out)
    runtime = Runtime(edge_decoder, spec=edge_bundle.window_spec,
                      normaliser_config=edge_bundle.normaliser_config, n_channels=edge_bundle.n_channels,
                      config=RuntimeConfig(status_interval_s=0), sinks=sinks)
    adapter = FrameAdapter(runtime)
    data = buf.getvalue()
    for i in range(0, len(data), 1024):  # reads of 1 kB, as a serial port returns them
        adapter.on_data(data[i:i + 1024])
    sinks.write(runtime.summary())
    sinks.close()
    runtime.close()
    return out, session


def test_a_real_run_is_matched_and_scored_like_an_independent_computation(streamed, tiny_dataset,
                                                                         edge_bundle_path):
    log, session = streamed
    result = score_decisions(log, tiny_dataset.path, bundle=edge_bundle_path)
    assert result["session"] == session.session and result["task"] == "psychometric"
    assert result["unmatched"] == 0 and result["session_samples"] == session.n_samples

    trials, T = session_trials(tiny_dataset.path, session.session)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    decided = [r for r in lines if r["type"] == "decision"]
    y, pred, ideal, laps = [], [], [], set()
    for r in decided:
        lap, onset = divmod(r["onset_sample"], T)
        row = trials[onset]
        assert int(row["electrode"]) == r["electrode"]
        y.append(int(row["perceived"]))
        pred.append(r["decision"])
        ideal.append(int(float(row["p_true"]) > 0.5))
        laps.add(lap)
    assert laps == {0, 1}  # the second lap's trials are found too
    t = result["tasks"]["psychometric"]
    assert t["trials"] == len(trials) == 30
    assert t["decisions"] == len(decided) > t["trials"] and t["laps"] == 2
    assert t["trials_decided"] == len(trials)
    assert t["n"] == len(y)
    assert t["balanced_accuracy"] == pytest.approx(by_hand_balanced_accuracy(y, pred), abs=1e-4)
    lo, hi = t["ci95"]
    assert lo <= t["balanced_accuracy"] <= hi and 0.1 < hi - lo < 0.6
    assert t["ideal"]["agreement"] == pytest.approx(np.mean(np.array(ideal) == np.array(pred)), abs=1e-4)
    assert t["ideal"]["balanced_accuracy"] == pytest.approx(by_hand_balanced_accuracy(y, ideal), abs=1e-4)
    # through the wire vs offline: the same windows, apart from the wire's 0.02 uV rounding
    off = t["offline"]
    assert off["n"] == len(decided) and off["probe"] == "psychometric"
    assert off["agreement"] >= 0.9 and off["max_abs_dp"] < 0.02
    assert result["streamed_samples"] > T


def test_the_matching_rule_on_a_hand_written_log(tiny_dataset, tmp_path):
    session = tiny_dataset.sessions_of("psychometric")[1]
    trials, T = session_trials(tiny_dataset.path, session.session)
    onsets = sorted(trials)
    def row(o):
        return (trials[o])
    recs, y, pred = [], [], []
    for k, o in enumerate(onsets[:6]):  # lap 0: four right, two wrong
        truth = int(row(o)["perceived"])
        value = truth if k < 4 else 1 - truth
        recs.append(decision(o, row(o)["electrode"], row(o)["current_ua"], value))
        y.append(truth)
        pred.append(value)
    for o in onsets[:2]:  # lap 1 of the same trials: always "perceived"
        recs.append(decision(T + o, row(o)["electrode"], row(o)["current_ua"], 1))
        y.append(int(row(o)["perceived"]))
        pred.append(1)
    o7, o8 = onsets[6], onsets[7]
    recs += [
        {"type": "no_decision", "reason": "warming_up", "onset_sample": o7,
         "electrode": int(row(o7)["electrode"]), "current_ua": float(row(o7)["current_ua"])},
        {"type": "no_decision", "reason": "lost_samples", "onset_sample": o8, "lost": 3,
         "electrode": int(row(o8)["electrode"]), "current_ua": float(row(o8)["current_ua"])},
        {"type": "no_decision", "reason": "stall", "stalled_ms": 120.0},  # no trial: a stall line
        {"type": "decision", "mode": "continuous", "window": [0, 128], "decision": 1, "p_perceived": 0.7},
        decision(onsets[9], int(row(onsets[9])["electrode"]) + 1, row(onsets[9])["current_ua"], 1),
        decision(onsets[9] + 1, row(onsets[9])["electrode"], row(onsets[9])["current_ua"], 1),
        decision(onsets[10], row(onsets[10])["electrode"], float(row(onsets[10])["current_ua"]) + 0.5, 1),
        {"type": "summary", "samples_received": T + 20_000},
    ]
    log = write_log(tmp_path / "hand.jsonl", recs)
    result = score_decisions(log, tiny_dataset.path, n_boot=500)
    assert result["session"] == session.session  # found among all sessions without --session
    t = result["tasks"]["psychometric"]
    assert t["decisions"] == 8 and t["trials_decided"] == 6 and t["laps"] == 2
    assert t["no_decisions"] == {"lost_samples": 1, "warming_up": 1} and t["records"] == 10
    assert result["unmatched"] == 3  # wrong electrode, an onset that is no trial, wrong current
    assert result["decisions_without_onset"] == 1
    assert result["no_decisions_without_onset"] == {"stall": 1}
    assert result["records"] == {"decision": 12, "no_decision": 3, "summary": 1}
    assert t["balanced_accuracy"] == pytest.approx(by_hand_balanced_accuracy(y, pred), abs=1e-4)
    assert t["n"] == 8 and t["offline"] is None
    assert session_trials(tiny_dataset.path, session.session)[0] == trials  # nothing written
    same = score_decisions(log, tiny_dataset.path, session=session.session, task="psychometric", n_boot=500)
    assert same["tasks"] == result["tasks"]
    text = format_score(result)
    assert "balanced accuracy" in text and "3 records with an onset matched no trial" in text
    assert "1 decisions without an onset (continuous mode) not scored" in text


def test_sessions_of_the_evaluation_set_are_found(tiny_dataset, tmp_path):
    ev = tiny_dataset.evaluation()
    session = ev.sessions_of("threshold")[0]
    trials, _ = session_trials(ev.path, session.session)
    recs = [decision(o, r["electrode"], r["current_ua"], int(r["perceived"])) for o, r in trials.items()]
    result = score_decisions(write_log(tmp_path / "eval.jsonl", recs), tiny_dataset.path, n_boot=200)
    assert result["session"] == session.session and result["task"] == "threshold"
    t = result["tasks"]["threshold"]
    assert t["decisions"] == len(trials) and result["unmatched"] == 0
    assert t["balanced_accuracy"] == 1.0 and t["ideal"] is not None


def test_errors_are_one_line_without_a_traceback(tiny_dataset, tmp_path, streamed):
    runner = CliRunner()
    log, _ = streamed

    def fails(args, message):
        res = runner.invoke(score, args)
        assert res.exit_code == 1, res.output
        assert res.output.startswith("Error: ") and message in res.output, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
        return res.output

    fails([str(tmp_path / "nope.jsonl"), "--dataset", str(tiny_dataset.path)], "decision log not found")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"type": "decision"}\nthis is not json\n')
    fails([str(garbage), "--dataset", str(tiny_dataset.path)], "line 2 is not JSON")
    fails([str(log), "--dataset", str(tmp_path / "no-data")], "dataset not found")
    fails([str(log), "--dataset", str(tiny_dataset.path), "--task", "threshold"], "matches a trial")
    fails([str(log), "--dataset", str(tiny_dataset.path), "--session", "psyc-999"], "no session 'psyc-999'")
    fails([str(log), "--dataset", str(tiny_dataset.path), "--session", "rest-000"], "has no trials")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    fails([str(empty), "--dataset", str(tiny_dataset.path)], "is empty")
    with pytest.raises(ScoreError, match="not a decision-log record"):
        score_decisions(write_log(tmp_path / "list.jsonl", [[1, 2]]), tiny_dataset.path)


def test_cli_prints_text_and_json(tiny_dataset, streamed):
    log, session = streamed
    runner = CliRunner()
    res = runner.invoke(score, [str(log), "--dataset", str(tiny_dataset.path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["session"] == session.session and data["tasks"]["psychometric"]["offline"] is None
    res = runner.invoke(score, [str(log), "--dataset", str(tiny_dataset.path), "--session", session.session])
    assert res.exit_code == 0, res.output
    assert f"session {session.session} (psychometric" in res.output
    assert "balanced accuracy" in res.output and "ideal observer" in res.output
