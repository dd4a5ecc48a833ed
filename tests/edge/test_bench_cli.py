"""`phosphene bench --load / --cpu` and `run --cpu` as a user runs them."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from phosphene.cli import cli


def _not_allowed_cpu() -> int:
    return max(os.sched_getaffinity(0)) + 1


@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_cpu_this_process_may_not_use_is_refused_with_one_error_line(edge_bundle_path, command):
    args = [command, str(edge_bundle_path), "--cpu", str(_not_allowed_cpu())]
    if command == "run":
        args += ["--pty-from-simulator", "--duration", "1"]
    r = CliRunner().invoke(cli, args)
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(lines) == 1 and lines[0].startswith(f"Error: --cpu {_not_allowed_cpu()}: CPU ")


def test_bench_json_has_stages_ratios_load_and_pinning(edge_bundle_path):
    cpu, before = min(os.sched_getaffinity(0)), os.sched_getaffinity(0)
    r = CliRunner().invoke(cli, ["bench", str(edge_bundle_path), "--runs", "120", "--warmup", "10",
                                 "--load", "1", "--cpu", str(cpu), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(result["stages_us"]) == {"ring", "gather", "invoke", "probe"}
    assert {"p50", "p90", "p99", "max"} <= set(result["stages_us"]["ring"])
    assert set(result["float_path"]["stages_us"]) == {"normalise", "gather", "quantise", "invoke",
                                                      "dequantise_probe"}
    assert result["ratios"]["decision_p50_over_invoke_p50"] > 0
    assert result["pinned_cpu"] == cpu and result["load"]["processes"] == 1
    for pid in result["load"]["pids"]:  # the busy process is gone when the command returns
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert os.sched_getaffinity(0) == before  # pinned while measuring only


def test_run_pinned_to_a_cpu_decides(edge_bundle_path):
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    r = CliRunner().invoke(cli, ["run", str(edge_bundle_path), "--pty-from-simulator", "--cpu", str(cpu),
                                 "--mode", "continuous", "--json", "--duration", "1.5"])
    try:
        assert r.exit_code == 0, r.output
        lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
        assert any(rec["type"] == "decision" for rec in lines)
        assert lines[-1]["type"] == "summary"
        assert os.sched_getaffinity(0) == {cpu}  # in process (CliRunner): the pin is this process's
    finally:
        os.sched_setaffinity(0, before)
