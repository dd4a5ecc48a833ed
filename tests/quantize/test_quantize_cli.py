"""`phosphene distill` and `phosphene quantize`: exit codes and the one Error: line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phosphene.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_distill_and_quantize_help_have_examples(runner):
    for cmd in ("distill", "quantize", "verify"):
        r = runner.invoke(cli, [cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output, cmd


@pytest.mark.parametrize("args,message", [
    (["distill", "DATA", "--teacher", "T", "--out", "S", "--results-md", "R.md"],
     "--results-md only applies with --compare"),
    (["distill", "DATA", "--teacher", "T", "--out", "S", "--steps", "0"], "--steps must be >= 1"),
    (["quantize", "DATA", "--student", "S", "--out", "B"], "--probe is required unless"),
    (["quantize", "DATA", "--student", "S", "--probe", "P", "--out", "B", "--min-cosine", "1.5"],
     "min_cosine and min_agreement must be in (0, 1]"),
])
def test_bad_option_combinations_are_usage_errors(runner, args, message):
    r = runner.invoke(cli, args)
    assert r.exit_code == 2 and message in r.output


def test_missing_inputs_are_one_error_line(runner, tiny_dataset, tmp_path):
    r = runner.invoke(cli, ["distill", str(tmp_path / "none"), "--teacher", "T", "--out", "S"])
    assert r.exit_code == 1 and r.output.startswith("Error: dataset not found")
    r = runner.invoke(cli, ["distill", str(tiny_dataset.path), "--teacher", str(tmp_path / "run"),
                            "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and r.output.startswith("Error: checkpoint not found")
    r = runner.invoke(cli, ["quantize", str(tiny_dataset.path), "--student", str(tmp_path),
                            "--probe", str(tmp_path), "--out", str(tmp_path / "b")])
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: no student checkpoint at {tmp_path / 'student.pt'}: "
                                "run `phosphene distill` first")


@pytest.mark.slow
def test_distill_cli_writes_a_student(runner, tiny_dataset, tiny_teacher, tmp_path):
    out = tmp_path / "student"
    r = runner.invoke(cli, ["distill", str(tiny_dataset.path), "--teacher", str(tiny_teacher),
                            "--out", str(out), "--preset", "tiny", "--steps", "5",
                            "--arch", "transformer", "--probe", str(tiny_teacher / "probe"),
                            "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["arch"] == "transformer" and result["steps"] == 5
    assert result["readout"] == "mean"  # the readout the probes in --probe chose
    assert (out / "student.pt").is_file()


@pytest.mark.slow
def test_quantize_refuses_to_overwrite_a_bundle(runner, tiny_dataset, tiny_bundle, tiny_student,
                                                tiny_teacher):
    student, _ = tiny_student
    r = runner.invoke(cli, ["quantize", str(tiny_dataset.path), "--student", str(student),
                            "--probe", str(tiny_teacher / "probe"), "--out", str(tiny_bundle[0])])
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: {tiny_bundle[0]} already exists (pass --overwrite to "
                                "replace it)")
