"""The closed loop end to end: `phosphene run --mode gated` through a pty into the simulated
array and back, `phosphene bench-loop`, and the virtual cortex's pre-stimulus oracle."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.cortex import VirtualCortex, perception_given_state, pre_stimulus_ceiling


def test_gated_run_sends_commands_and_receives_acks(edge_bundle_path, tmp_path):
    log = tmp_path / "loop.jsonl"
    r = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--mode", "gated",
                                 "--stim-electrode", "25", "--stim-electrode", "53", "--stim-current-ua", "20",
                                 "--stim-count", "3", "--min-interval-s", "1", "--max-wait-s", "0.5",
                                 "--warmup-s", "0.5", "--sim-speed", "2", "--duration-s", "6",
                                 "--status-s", "0", "--out", str(log)])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    sent = [x for x in records if x["type"] == "command"]
    acks = {x["command_id"]: x for x in records if x["type"] == "ack"}
    # a command the device would deliver after its deadline (a loaded machine) is refused as
    # expired, never delivered late, and the gate tries again: only delivered ones count
    assert all(acks[c["command_id"]]["status"] in ("delivered", "expired") for c in sent)
    commands = [c for c in sent if acks[c["command_id"]]["status"] == "delivered"]
    assert len(commands) == 3 and [c["electrode"] for c in commands] == [25, 53, 25]
    onsets = [acks[c["command_id"]]["sample"] for c in commands]
    assert all(b - a >= 1000 for a, b in pairwise(onsets))  # the plan's rate
    for c in commands:  # delivered within the deadline, after the decision's window
        assert 0 < acks[c["command_id"]]["delay_samples"] <= c["deadline_samples"]
    decisions = {x["sample"]: x for x in records if x["type"] == "decision"}
    assert all(c["sample"] in decisions for c in commands)  # each fired on a decision made
    # every stimulation came back as an event too, and the summary says what the gate did
    summary = records[-1]
    assert summary["type"] == "summary" and summary["events"] == 3
    assert summary["gate"]["delivered"] == 3 and summary["gate"]["done"]
    assert summary["simulator"]["commands_delivered"] == 3
    assert [x["type"] for x in records].count("plan_done") == 1


@pytest.mark.parametrize("args, message", [
    (["--mode", "gated"], "Error: --mode gated needs a plan: --stim-electrode E and --stim-current-ua UA"),
    (["--mode", "continuous", "--stim-count", "3"], "Error: --stim-count need --mode gated"),
    (["--mode", "gated", "--stim-electrode", "1", "--stim-current-ua", "5", "--open-loop",
      "--gate-quantile", "0.8"], "Error: --open-loop stimulates at fixed intervals: it takes no threshold"),
    (["--mode", "gated", "--stim-electrode", "1", "--stim-electrode", "2", "--stim-electrode", "3",
      "--stim-current-ua", "5", "--stim-current-ua", "6"],
     "Error: give one current for all electrodes or one per electrode (3), got 2"),
])
def test_gated_run_usage_errors(edge_bundle_path, args, message):
    r = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", *args])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == message


def test_bench_loop_compares_policies_on_the_same_cortex(edge_bundle_path, tmp_path):
    out = tmp_path / "loop.json"
    r = CliRunner().invoke(cli, ["bench-loop", str(edge_bundle_path), "--count", "3", "--speed", "8",
                                 "--min-interval-s", "1", "--max-wait-s", "1", "--warmup-s", "3",
                                 "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    brief = json.loads(r.stdout)
    rows = brief["rows"]
    assert list(rows) == ["open-loop", "gated", "oracle"]
    for row in rows.values():
        assert row["n"] == 3 and 0 <= row["perceived"] <= 3
        lo, hi = row["ci95"]
        assert 0 <= lo <= row["perceived_fraction"] <= hi <= 1
    full = json.loads(out.read_text())
    oracle = full["runs"]["oracle"]
    # the oracle fired on the true state: its score is P(perceived | g) at the onset
    for t in oracle["trials"]:
        assert t["score"] == pytest.approx(t["p_state"], abs=0.08)
    assert brief["gains"]["oracle_gain"]["ci95"][0] <= brief["gains"]["oracle_gain"]["diff"]
    assert brief["pre_stimulus_ceiling"] == pytest.approx(0.706, abs=0.01)


def test_the_pre_stimulus_oracle_matches_the_generator():
    cortex = VirtualCortex(seed=0)
    cfg = cortex.config
    rng = np.random.default_rng(1)
    for g, current in ((-1.0, 10.0), (0.0, cortex.i50_ua[25]), (1.5, 40.0)):
        eta = rng.normal(0, cfg.response_noise, 200_000)
        r_norm = 1 / (1 + np.exp(-(cfg.psychometric_slope * np.log(current / cortex.i50_ua[25])
                                   + cfg.state_on_perception * g + eta)))
        perceived = r_norm + rng.normal(0, cfg.decision_noise, eta.size) > 0.5
        assert perception_given_state(cortex, 25, current, g) == pytest.approx(perceived.mean(), abs=0.005)
    # at I50 a pre-stimulus predictor that knows g says "perceived" iff g > 0
    g = rng.standard_normal(400_000)
    eta = rng.normal(0, cfg.response_noise, g.size)
    perceived = 1 / (1 + np.exp(-(cfg.state_on_perception * g + eta))) + rng.normal(0, cfg.decision_noise, g.size) > 0.5
    ba = 0.5 * ((g > 0)[perceived].mean() + (g <= 0)[~perceived].mean())
    assert pre_stimulus_ceiling(cortex) == pytest.approx(ba, abs=0.005)
    assert pre_stimulus_ceiling(cortex, [(25, cortex.i50_ua[25])]) == pytest.approx(ba, abs=0.005)
    mixed = [(e, c) for e in (6, 25) for c in (3.0, 9.0, 27.0, 81.0)]
    assert pre_stimulus_ceiling(cortex, mixed) < pre_stimulus_ceiling(cortex, mixed, knows_condition=True)
    with pytest.raises(ValueError, match="at least one"):
        pre_stimulus_ceiling(cortex, [])
