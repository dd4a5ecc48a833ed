"""`phosphene import blackrock|nwb|array` and `phosphene export nwb`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from phosphene.commands import out_option
from phosphene.dataset import is_session_kind, task_name_problem
from phosphene.errors import PhospheneError
from phosphene.train.importers.common import DEFAULT_BLANK_MS, ImportReport

__all__ = ["export_group", "import_group"]


def _err(message: str) -> None:
    click.echo(message, err=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _run(fn, *args, **kwargs):
    """Call a library function; expected failures become one `Error:` line (exit 1)."""
    try:
        return fn(*args, **kwargs)
    except (PhospheneError, OSError) as exc:  # DatasetError, RecordingError, InputError ...
        raise click.ClickException(_one_line(exc)) from None


def _check_kind(ctx, param, value):
    if value is not None and not is_session_kind(value):
        raise click.BadParameter(task_name_problem(value))
    return value


normaliser_option = click.option(
    "--normaliser", type=click.Choice(["auto", "counts", "mua"]), default="auto", show_default=True,
    help="The normaliser recorded in the dataset (pretraining, probes and bundles use it): counts = "
         "rolling z-score whose scale is at least the Poisson SD of each unit's count (one count "
         "per bin at least); mua = the paper's robust median/MAD. auto: counts for binned "
         "counts, else mua.")


def dataset_options(f):
    """Options every import shares: where to write, the map, trials and session labels."""
    @click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
                  help="Dataset directory to write (or to add to, with --append).")
    @click.option("--map", "map_path", type=click.Path(path_type=Path),
                  help="Channel map (CSV/JSON id,row,col,x_um,y_um or Blackrock .cmp); ids must be "
                       "the recording's channel ids. Default: geometry in the file, else a grid.")
    @click.option("--trials", "trials_csv", type=click.Path(path_type=Path),
                  help="CSV of trials: time_s (on the recording's clock), a 0/1 label, optional "
                       "session, electrode, current_ua (stimulation; leave both out for a "
                       "behavioural event). Replaces trials found in the file.")
    @click.option("--label-column", metavar="NAME",
                  help="The trials table's column holding the 0/1 label (default: perceived or "
                       "detected). Any name: choice, correct, hit, ...")
    @click.option("--window-offset-ms", type=float, default=None,
                  help="Decoded window start after each event, in ms (default 170, the paper's "
                       "artifact-free start; negative: before the event). Stored in the dataset "
                       "for this import's task (--kind), so tasks appended later may each have "
                       "their own; pretraining, probes and bundles use it.")
    @click.option("--window-ms", type=float, default=None,
                  help="Decoded window length in ms, a multiple of 16 (default 128).")
    @click.option("--kind", callback=_check_kind, metavar="KIND",
                  help="resting, or the task the trials belong to: psychometric, threshold, or a "
                       "name of your own (reach, choice, ...: lower-case letters, digits, _). "
                       "Default: resting without trials, psychometric with trials.")
    @click.option("--session", help="Session id (default: the file name without extension).")
    @click.option("--day", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Recording day index (validation uses the last days).")
    @click.option("--blank-ms", type=click.FloatRange(min=0), default=DEFAULT_BLANK_MS,
                  show_default=True,
                  help="Broadband after each stimulation onset interpolated across before the "
                       "band-pass (0: off).")
    @click.option("--split-at-s", "--split-at", "split_at", type=click.FloatRange(min=0, min_open=True),
                  metavar="SECONDS",
                  help="Cut the recording at SECONDS (its clock): the part before becomes the "
                       "resting session <session>-rest, the part after the task session.")
    @click.option("--append", is_flag=True, help="Add the sessions to an existing dataset.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
    @click.option("--json", "as_json", is_flag=True, help="Print only a JSON report on stdout.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        if kwargs["append"] and kwargs["overwrite"]:
            raise click.UsageError("--append and --overwrite exclude each other")
        return f(*args, **kwargs)

    return wrapper


def _print_report(report: ImportReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    click.echo(f"wrote {report.dataset}: {report.n_channels} channels (map {report.channel_map})")
    for s in report.sessions:
        click.echo(f"  {s['session']:<24} {s['kind']:<12} day {s['day']:<3} "
                   f"{s['duration_s']:>9.1f} s  {s['n_trials']:>4} trials  "
                   f"({s['input_kind']} at {s['input_rate_hz']:g} Hz)")


@click.group("import")
def import_group() -> None:
    """Import recordings (Blackrock, NWB, arrays) into a dataset at 1 kHz MUA.

    \b
    Examples:
      phosphene import blackrock rec01.ns5 --out data --map array.cmp
      phosphene import blackrock rec02.ns5 --nev rec02.nev --out data --append --day 1
      phosphene import nwb session.nwb --out data
      phosphene import array counts.npy --input-kind binned --bin-ms 20 --out data
      phosphene import array rec.mat --variable counts --bin-ms 50 --trials events.csv \\
          --label-column choice --window-offset-ms 0 --window-ms 400 --out data
    """


@import_group.command("blackrock")
@click.argument("nsx", type=click.Path(path_type=Path))
@click.option("--nev", type=click.Path(path_type=Path),
              help="Events file (default: NSX's name with .nev, if present).")
@click.option("--nev-events", type=click.Choice(["auto", "comments", "digital", "none"]),
              default="auto", show_default=True,
              help="Where stimulations come from in the .nev: comments "
                   "('electrode=E current_ua=I [perceived=0|1]'), digital words (low byte "
                   "electrode, high byte uA), auto (comments, else digital), or none.")
@dataset_options
def blackrock(nsx, nev, nev_events, out, map_path, trials_csv, label_column, window_offset_ms,
              window_ms, kind, session, day, blank_ms, split_at, append, overwrite, as_json):
    """Import a Blackrock .ns3-.ns6 broadband file (and .nev events) as MUA.

    Broadband runs through the signal definition (CAR, 500-5000 Hz, rectify, 200 Hz,
    pool to 1 kHz) in blocks, so files larger than memory work. Each pause in the file
    starts a new session.

    \b
    Example:
      phosphene import blackrock rec01.ns5 --out data --map array.cmp --kind resting
    """
    from phosphene.train.importers.blackrock import import_blackrock

    report = _run(import_blackrock, nsx, out=out, nev=nev, map_path=map_path, trials_csv=trials_csv,
                  kind=kind, session=session, day=day, nev_events=nev_events, blank_ms=blank_ms,
                  append=append, overwrite=overwrite, label_column=label_column,
                  window_offset_ms=window_offset_ms, window_ms=window_ms, split_at=split_at,
                  log=_err)
    _print_report(report, as_json)


@import_group.command("nwb")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--series", multiple=True,
              help="Series to import (name or path such as acquisition/ElectricalSeries); repeat "
                   "for several sessions. Default: the file's only ElectricalSeries, or every "
                   "series of a phosphene export.")
@click.option("--input-kind", type=click.Choice(["auto", "broadband", "mua", "binned"]),
              default="auto", show_default=True,
              help="auto: an ElectricalSeries at >= 2 kHz is broadband, any other series MUA. "
                   "binned: spike counts per bin.")
@click.option("--bin-ms", type=click.FloatRange(min=0, min_open=True),
              help="Bin width of binned counts in ms (default: 1000 / the series' rate).")
@normaliser_option
@dataset_options
def nwb(file, series, input_kind, bin_ms, normaliser, out, map_path, trials_csv, label_column,
        window_offset_ms, window_ms, kind, session, day, blank_ms, split_at, append, overwrite,
        as_json):
    """Import an NWB file: ElectricalSeries, MUA or binned-count TimeSeries, trials.

    Geometry comes from the electrodes table (rel_x/rel_y, else x/y, in um);
    stimulation from the trials table (start_time, electrode, current_ua, perceived).

    \b
    Example:
      phosphene import nwb session.nwb --out data --kind psychometric
    """
    from phosphene.train.importers.nwb import import_nwb

    report = _run(import_nwb, file, out=out, series=list(series) or None, input_kind=input_kind,
                  bin_ms=bin_ms, map_path=map_path, trials_csv=trials_csv, kind=kind,
                  session=session, day=day, blank_ms=blank_ms, append=append, overwrite=overwrite,
                  label_column=label_column, window_offset_ms=window_offset_ms, window_ms=window_ms,
                  split_at=split_at, normaliser=normaliser, log=_err)
    _print_report(report, as_json)


@import_group.command("array")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--input-kind", type=click.Choice(["binned", "mua", "broadband"]), default="binned",
              show_default=True, help="What the columns hold.")
@click.option("--bin-ms", type=click.FloatRange(min=0, min_open=True),
              help="Bin width in ms (binned counts only).")
@click.option("--rate-hz", type=click.FloatRange(min=0, min_open=True),
              help="Sample rate of MUA or broadband arrays.")
@click.option("--variable", metavar="NAME",
              help="The array inside a .npz or .mat file (default: its only numeric array; a "
                   "struct field as a.b).")
@click.option("--layout", type=click.Choice(["time-by-channel", "channel-by-time"]), default=None,
              help="How the array is stored (as MATLAB/NumPy shows it). Without it an array "
                   "with more channels than samples is refused.")
@click.option("--drop-column", "drop_columns", multiple=True, metavar="NAME",
              help="A CSV header column that is not an electrode (repeatable); a leading "
                   "index or time column is left out on its own.")
@normaliser_option
@dataset_options
def array(file, input_kind, bin_ms, rate_hz, variable, layout, drop_columns, normaliser, out,
          map_path, trials_csv, label_column, window_offset_ms, window_ms, kind, session, day,
          blank_ms, split_at, append, overwrite, as_json):
    """Import a .npy, .npz, .mat or .csv array (rows = bins or samples, columns = electrodes).

    Binned spike counts become a rate (count / bin width, spikes/s) held constant over
    each bin at 1 kHz, normalised by a rolling z-score with a Poisson scale floor (recorded
    in the dataset). A
    CSV may start with a header of electrode ids. MATLAB v4-v7 files are read with scipy,
    v7.3 (HDF5) with h5py.

    \b
    Examples:
      phosphene import array counts.npy --input-kind binned --bin-ms 20 --out data
      phosphene import array rec.mat --variable counts --layout channel-by-time --bin-ms 50 \\
          --trials events.csv --label-column choice --window-offset-ms 0 --window-ms 400 \\
          --split-at-s 600 --out data
    """
    if input_kind == "binned" and bin_ms is None:
        raise click.UsageError("--input-kind binned needs --bin-ms")
    if input_kind != "binned" and bin_ms is not None:
        raise click.UsageError(f"--bin-ms applies to --input-kind binned; a {input_kind} array "
                               "takes --rate-hz")
    if input_kind != "binned" and rate_hz is None:
        raise click.UsageError(f"--input-kind {input_kind} needs --rate-hz")
    from phosphene.train.importers.arrays import import_array

    report = _run(import_array, file, out=out, input_kind=input_kind, bin_ms=bin_ms, rate_hz=rate_hz,
                  map_path=map_path, trials_csv=trials_csv, kind=kind, session=session, day=day,
                  blank_ms=blank_ms, append=append, overwrite=overwrite, variable=variable,
                  layout=layout, drop_columns=tuple(drop_columns), split_at=split_at,
                  label_column=label_column, window_offset_ms=window_offset_ms,
                  window_ms=window_ms, normaliser=normaliser, log=_err)
    _print_report(report, as_json)


@click.group("export")
def export_group() -> None:
    """Export a dataset to a standard format.

    \b
    Example:
      phosphene export nwb data --out data.nwb
    """


@export_group.command("nwb")
@click.argument("dataset", type=click.Path(path_type=Path))
@out_option("The .nwb file to write.", path_type=Path)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary on stdout.")
def export_nwb_cmd(dataset, out, overwrite, as_json):
    """Write DATASET as one NWB file: MUA per session, electrodes, trials.

    `phosphene import nwb OUT` gives the dataset back (samples, map and trials).

    \b
    Example:
      phosphene export nwb data --out data.nwb
    """
    from phosphene.train.importers.nwb import export_nwb

    summary = _run(export_nwb, dataset, out, overwrite=overwrite, log=_err)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {summary['nwb']}: {summary['sessions']} sessions, {summary['trials']} "
                   f"trials, {summary['n_channels']} channels ({summary['bytes'] / 1e6:.1f} MB)")
