"""Core CLI: exact exit codes, one Error: line, JSON on stdout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from phosphene import __version__
from phosphene.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_version_and_help(runner):
    r = runner.invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    r = runner.invoke(cli, ["--help"])
    assert r.exit_code == 0 and "simulate" in r.output and "pretrain" in r.output


def test_help_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from phosphene.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); "
            "assert r.exit_code == 0; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_json(runner, tiny_dataset):
    r = runner.invoke(cli, ["info", str(tiny_dataset.path), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["n_channels"] == 96 and s["kinds"]["psychometric"]["trials"] == 60
    assert s["evaluation_set"]["kinds"]["threshold"]["trials"] == 60
    r = runner.invoke(cli, ["info", str(tiny_dataset.path)])
    assert "evaluation set" in r.stdout and "psychometric 60 trials" in r.stdout


@pytest.mark.parametrize("args, error", [
    (["info", "/nonexistent/data"], "Error: dataset not found: /nonexistent/data"),
    (["simulate", "dataset", "OUT", "--preset", "huge"],
     "Error: unknown preset 'huge'; choose one of: tiny, demo, paper, reproduce"),
    (["simulate", "dataset", "OUT", "--eval-trials", "-1"], "Error: --eval-trials must be >= 0, got -1"),
    (["simulate", "dataset", "OUT", "--channels", "0"], "Error: --channels must be a positive count, got 0"),
    (["simulate", "dataset", "OUT", "--resting-hours", "-2"],
     "Error: --resting-hours must be positive, got -2.0"),
    (["simulate", "dataset", "OUT", "--map", "/nonexistent.csv"],
     "Error: channel map not found: /nonexistent.csv"),
])
def test_bad_input_is_one_error_line(runner, tmp_path, args, error):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    r = runner.invoke(cli, args)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == error
    assert "Traceback" not in r.output
    assert not (tmp_path / "OUT").exists()


def test_wrong_channel_count_dataset(runner, tiny_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset.path, bad, ignore=shutil.ignore_patterns("cache"))
    meta = json.loads((bad / "dataset.json").read_text())
    meta["n_channels"] = 64
    (bad / "dataset.json").write_text(json.dumps(meta))
    r = runner.invoke(cli, ["info", str(bad)])
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: {bad}: channel_map.csv has 96 electrodes but "
                                "dataset.json says 64 channels")


def test_simulate_dataset_with_custom_channels(runner, tmp_path):
    out = tmp_path / "d"
    r = runner.invoke(cli, ["simulate", "dataset", str(out), "--preset", "tiny", "--channels", "12",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_channels"] == 12
    assert json.loads(r.stdout)["evaluation_set"]["n_channels"] == 12
    r = runner.invoke(cli, ["simulate", "dataset", "--out", str(tmp_path / "noeval"), "--preset",
                            "tiny", "--eval-trials", "0"])  # --out: the convention; OUT still works
    assert r.exit_code == 0 and not (tmp_path / "noeval" / "eval").exists()
    for args, why in (([str(tmp_path / "a"), "--out", str(tmp_path / "b")], "give the output once"),
                      ([], "give the output with --out OUT")):
        r = runner.invoke(cli, ["simulate", "dataset", "--preset", "tiny", *args])
        assert r.exit_code == 2 and why in r.output and not (tmp_path / "a").exists()
    r = runner.invoke(cli, ["simulate", "dataset", str(out), "--preset", "tiny"])
    assert r.exit_code == 1 and "already exists" in r.output


def test_usage_error_for_conflicting_options(runner, tmp_path):
    r = runner.invoke(cli, ["simulate", "dataset", str(tmp_path / "x"), "--channels", "4",
                            "--map", "m.csv"])
    assert r.exit_code == 2 and "either --channels or --map" in r.output


def _group_with(command: click.Command, lazy: dict[str, str] | None = None) -> click.Group:
    from phosphene.cli import LazyGroup

    group = LazyGroup(name="g", lazy_commands=lazy or {})
    group.add_command(command)
    return group


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch):
    from phosphene.errors import PhospheneError

    @click.command("expected")
    def expected():
        raise PhospheneError("the bundle at b is for 64 channels")

    @click.command("bug")
    def bug():
        raise ValueError("a bug")

    group = _group_with(expected)
    group.add_command(bug)
    r = CliRunner().invoke(group, ["expected"])
    assert r.exit_code == 1 and r.output.strip() == "Error: the bundle at b is for 64 channels"
    r = CliRunner().invoke(group, ["bug"])
    assert isinstance(r.exception, ValueError) and "Error:" not in r.output
    monkeypatch.setenv("PHOSPHENE_DEBUG", "1")
    r = CliRunner().invoke(group, ["expected"])
    assert isinstance(r.exception, PhospheneError)


def test_a_missing_package_is_named_but_a_broken_phosphene_module_is_not_hidden():
    lazy = {"needs": "no_such_package_for_phosphene:cmd", "broken": "phosphene.no_such_module:cmd"}
    group = _group_with(click.Command("noop"), lazy)
    r = CliRunner().invoke(group, ["needs"])
    assert r.exit_code == 1 and "needs a package that is not installed (no_such_package_for_phosphene)" in r.output
    r = CliRunner().invoke(group, ["broken"])
    assert isinstance(r.exception, ModuleNotFoundError) and "not installed" not in r.output


def test_every_quantity_option_names_its_unit():
    """CLI convention: a number with a unit says it in the option's name (--duration-s,
    --stall-ms, --current-ua); older spellings stay as aliases. Only unitless numbers
    (ratios, probabilities, learning rates) are exempt, and they are listed here."""
    unitless = {"--speed", "--sim-speed", "--flip-bits", "--drop-bytes", "--drop-frames", "--duplicate-frames",
                "--reorder-frames", "--sim-drop-frames", "--lr", "--lr-min", "--min-cosine",
                "--min-agreement", "--min-wire-agreement", "--gate-threshold", "--gate-quantile",
                "--quantile"}
    ctx = click.Context(cli)
    missing, seen = [], 0

    def walk(cmd, path):
        nonlocal seen
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}")
            return
        for p in cmd.params:
            if isinstance(p, click.Option) and (p.type is click.FLOAT or isinstance(p.type, click.FloatRange)):
                seen += 1
                name = next(o for o in p.opts if o.startswith("--"))
                if name not in unitless and not name.endswith(("-s", "-ms", "-ua", "-hz", "-uv", "-hours")):
                    missing.append(f"{path} {name}")

    walk(cli, "phosphene")
    assert seen > 30 and missing == []
