"""`phosphene simulate` (dataset; stream is firmware_bridge's) and `phosphene info`.

Top layer, beside phosphene.cli: it may import the core and the shared helpers in
phosphene.commands, never a stage.
"""

from __future__ import annotations

import click

from phosphene.cli import SIMULATE_COMMANDS, LazyGroup
from phosphene.commands import ProgressLine, dataset_argument, echo_json, open_dataset, out_option
from phosphene.errors import PhospheneError

__all__ = ["info", "simulate", "simulate_dataset"]


@click.group(cls=LazyGroup, lazy_commands=SIMULATE_COMMANDS)
def simulate() -> None:
    """Generate virtual-cortex data: datasets on disk, or live frames over serial.

    \b
    Examples:
      phosphene simulate dataset --out data --preset demo --seed 0
      phosphene simulate stream --pty --duration-s 60 --kind psychometric
    """


@simulate.command("dataset")
@out_option("Dataset directory to write.")
@click.option("--preset", default="demo", show_default=True,
              help="Dataset scale: tiny (tests), demo (minutes, fast on 2 cores), reproduce "
                   "(2 h resting) or paper (Table 2 of the paper: 14.6 h resting, 1,205 + "
                   "1,760 trials).")
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed: same seed, same bytes.")
@click.option("--channels", type=int, default=None,
              help="Channel count (default: the 96-channel Utah map); other counts use a grid.")
@click.option("--map", "map_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Channel map CSV/JSON/.cmp (id,row,col,x_um,y_um) instead of the Utah default.")
@click.option("--resting-hours", type=float, default=None,
              help="Override the preset's total resting hours (e.g. 0.5).")
@click.option("--eval-trials", type=int, default=None,
              help="Trials per task in the evaluation set OUT/eval [preset: demo 2,000, "
                   "reproduce and paper 6,000]; 0 writes none.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new one is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the dataset summary as JSON.")
def simulate_dataset(out, preset, seed, channels, map_file, resting_hours, eval_trials, overwrite,
                     as_json):
    """Generate a virtual-cortex dataset shaped like the paper's three.

    Writes resting-state, psychometric (12 electrodes x 6 currents, 1-81 uA) and
    threshold (4 electrodes at their 50% current) sessions, with the ground-truth
    perception probability of every trial and the ideal observer's accuracy, and an
    evaluation set (OUT/eval: new sessions of the same array and days) that every stage
    scores on and nothing is fitted on.

    \b
    Example:
      phosphene simulate dataset --out data --preset demo --seed 0
      phosphene info data
    """
    from dataclasses import replace

    from phosphene.cortex import PRESETS, generate_dataset
    from phosphene.geometry import ChannelMap, map_for_channels

    if preset not in PRESETS:
        raise click.ClickException(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if channels is not None and map_file is not None:
        raise click.UsageError("give either --channels or --map, not both")
    if channels is not None and channels <= 0:
        raise click.ClickException(f"--channels must be a positive count, got {channels}")
    spec = PRESETS[preset]
    if resting_hours is not None:
        if not resting_hours > 0:
            raise click.ClickException(f"--resting-hours must be positive, got {resting_hours}")
        spec = replace(spec, resting_session_s=resting_hours * 3600 / spec.resting_sessions)
    if eval_trials is not None:
        if eval_trials < 0:
            raise click.ClickException(f"--eval-trials must be >= 0, got {eval_trials}")
        spec = replace(spec, eval_trials=eval_trials)
    try:
        channel_map = ChannelMap.load(map_file) if map_file else (
            map_for_channels(channels) if channels else None)
    except (OSError, PhospheneError) as exc:
        raise click.ClickException(str(exc)) from None
    bar = ProgressLine("simulate")
    try:
        ds = generate_dataset(out, preset=spec, seed=seed, channel_map=channel_map,
                              overwrite=overwrite, progress=lambda label, f: bar.update(f, label))
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"could not write {out}: {exc}") from None
    bar.close(f"wrote {out}")
    summary = _with_evaluation(ds)
    if as_json:
        echo_json(summary)
    else:
        _print_summary(summary)


def _with_evaluation(ds) -> dict:
    summary = ds.summary()
    ev = ds.evaluation()
    summary["evaluation_set"] = None if ev is None else ev.summary()
    return summary


@click.command("info")
@dataset_argument
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--check", is_flag=True, help="Also read every sample and fail on NaN/inf.")
def info(dataset, as_json, check):
    """Summarise a dataset: sessions, hours, trials, electrodes, currents, ideal observer.

    \b
    Example:
      phosphene info data --json
    """
    from phosphene.dataset import DatasetError

    ds = open_dataset(dataset)
    if check:
        try:
            for s in ds.sessions:
                ds.check_finite(s.session)
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None
    summary = _with_evaluation(ds)
    if as_json:
        echo_json(summary)
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    click.echo(f"dataset   {s['path']}")
    click.echo(f"channels  {s['n_channels']} ({s['channel_map']}), {s['sample_rate_hz']:g} Hz, "
               f"{s['units']}")
    click.echo(f"{'kind':<13} {'sessions':>8} {'days':>5} {'hours':>8} {'trials':>7} {'perceived':>9}")
    for kind, k in s["kinds"].items():
        pf = k.get("perceived_fraction")
        click.echo(f"{kind:<13} {k['sessions']:>8} {k['days']:>5} {k['hours']:>8.3f} "
                   f"{k.get('trials', ''):>7} {'' if pf is None else f'{pf:.0%}':>9}")
    if s.get("ideal_observer"):
        parts = ", ".join(f"{t} {v:.1%}" for t, v in s["ideal_observer"].items())
        click.echo(f"ideal observer (balanced accuracy, test split): {parts}")
    ev = s.get("evaluation_set")
    if ev:
        parts = ", ".join(f"{kind} {k['trials']} trials in {k['sessions']} sessions"
                          for kind, k in ev["kinds"].items() if "trials" in k)
        click.echo(f"evaluation set ({ev['path']}): {parts}")
