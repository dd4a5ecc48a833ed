"""`phosphene pretrain` and `phosphene probe`: thin wrappers over the library functions."""

from __future__ import annotations

import os
from pathlib import Path

import click

from phosphene.commands import ProgressLine, dataset_argument, echo_json, open_dataset
from phosphene.errors import PhospheneError
from phosphene.signal import PRE_STIMULUS

__all__ = ["pretrain", "probe"]

_ERRORS = (PhospheneError, OSError, FloatingPointError)  # expected: one Error line
BARELY_LEARNT = 0.95  # validation MSE / channel-mean baseline above this earns a warning

# OpenMP worker threads that spin while waiting collapse torch's CPU throughput when the
# cores are shared with another process (measured 6x on 2 cores). Passive waiting costs
# little when the machine is idle. Effective only if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _bar_callback(bar: ProgressLine):
    def update(info: dict) -> None:
        text = (f"step {info['step']}/{info['steps']} loss {info['loss']:.4f} "
                f"mse {info['mse']:.4f} {info['windows_per_s']:.0f} win/s")
        if "val_mse" in info:
            text += f" val {info['val_mse']:.4f} (channel-mean baseline {info['val_mse_channel_mean']:.4f})"
        bar.update(info["step"] / info["steps"], text)
    return update


@click.command("pretrain")
@dataset_argument
@click.option("--preset", type=click.Choice(["small", "tiny", "paper"]), default="small",
              show_default=True, help="Model size: small (CPU demo), tiny (tests), paper (Table 4).")
@click.option("--steps", type=int, default=None, help="Optimizer steps [preset: paper 1M, small 500].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: best.pt, last.pt, pretrain.json, loss_curve.png.")
@click.option("--batch-size", type=int, default=None, help="Windows per step [preset].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [preset].")
@click.option("--lr-min", type=float, default=None, help="Cosine floor [preset].")
@click.option("--warmup-steps", type=int, default=None, help="Linear warm-up steps [preset].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, windows, masks.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto = CUDA when present (bf16 autocast), else CPU.")
@click.option("--resume", is_flag=True, help="Continue OUT/last.pt up to --steps.")
@click.option("--val-every", type=int, default=None, help="Steps between validation passes [preset].")
@click.option("--val-windows", type=int, default=None, help="Fixed validation windows [preset].")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def pretrain(dataset, preset, steps, out_dir, batch_size, lr, lr_min, warmup_steps, seed, device,
             resume, val_every, val_windows, threads, as_json):
    """Pretrain the masked-autoencoder teacher on the dataset's resting sessions.

    Validation is the reconstruction loss on the sessions of the last recording days;
    OUT/best.pt is the checkpoint with the lowest one, OUT/last.pt resumes.

    \b
    Example:
      phosphene pretrain data --preset small --out run
      phosphene probe data --checkpoint run
    """
    from phosphene.train.pretrain import pretrain as run_pretrain

    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--threads", threads),
                        ("--val-every", val_every), ("--val-windows", val_windows)):
        if value is not None and value < 1:
            raise click.UsageError(f"{name} must be >= 1, got {value}")
    ds = open_dataset(dataset)
    bar = ProgressLine("pretrain")
    try:
        summary = run_pretrain(ds, preset, out_dir=out_dir, steps=steps, batch_size=batch_size,
                               lr=lr, lr_min=lr_min, warmup_steps=warmup_steps, seed=seed,
                               device=device, resume=resume, val_every=val_every,
                               val_windows=val_windows, threads=threads,
                               progress=_bar_callback(bar))
    except _ERRORS as exc:
        bar.close()
        raise click.ClickException(str(exc)) from None
    bar.close(f"best validation MSE {summary['best_val_mse']:.4f} (predicting each channel's "
              f"mean: {summary['val_mse_channel_mean_baseline']:.4f}) at step "
              f"{summary['best_step']}, {summary['windows_per_s']:.0f} windows/s, wrote {out_dir}")
    ratio = summary.get("val_mse_vs_baseline")
    if ratio is not None and ratio > BARELY_LEARNT:
        click.echo(f"warning: the teacher's validation MSE is {100 * ratio:.0f}% of predicting each "
                   "channel's mean: it has learnt little beyond each channel's level (more steps, "
                   "more resting data, or a window that spans more of the signal's time scale)",
                   err=True)
    if as_json:
        summary = {k: v for k, v in summary.items() if k != "history"}
        echo_json(summary)


@click.command("probe")
@dataset_argument
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Teacher run directory (uses best.pt) or a .pt checkpoint.")
@click.option("--task", default="all", show_default=True, metavar="TASK",
              help="Which task to decode: psychometric, threshold, a task named on import "
                   "(`phosphene info DATA` lists them), or all.")
@click.option("--window", "window", type=click.Choice(["post", "pre", "both"]), default="post",
              show_default=True,
              help="post: the dataset's window after onset (did the participant see it?). pre: "
                   "the window that ends at onset, task named <task>_pre (would a stimulation "
                   "now be seen? what a closed loop gates on). both: each task twice.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write OUT/<task>/probe.json (folded probe), OUT/results.json, plots.")
@click.option("--curve", is_flag=True,
              help="Label efficiency: accuracy at 10/25/50/100% of training trials (+ PNG with --out).")
@click.option("--plots", is_flag=True, help="Also write t-SNE plots and the electrode-distance "
              "Mantel test to OUT/diagnostics (needs --out).")
@click.option("--readout", type=click.Choice(["auto", "mean", "electrode_k1", "electrode_k4"]),
              default="auto", show_default=True,
              help="Which pooling of the teacher's tokens the saved probes read: auto = chosen "
                   "by blocked CV on the training trials; mean = the paper's latent.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for CV folds and curve draws.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: all).")
def probe(dataset, checkpoint, task, window, as_json, out_dir, curve, plots, readout, seed, threads):
    """Fit linear probes on the teacher's readouts against the baselines (Table 1).

    Readouts of the teacher's tokens (the paper's mean, per-electrode readouts fitted on
    resting data) and baselines (raw MUA, PCA, per-electrode window mean, resting-whitened)
    are each probed with an L2 logistic regression whose strength is chosen by blocked
    cross-validation on the training trials (one-SE rule). Accuracy is balanced accuracy
    with a bootstrap 95% CI on the evaluation set (the dataset's eval/ directory; without
    one, the last 20% of each session's trials), and methods are compared paired on the
    same trials. Prints Table 1 and the paired differences.

    \b
    Example:
      phosphene probe data --checkpoint run --out run/probe
      phosphene probe data --checkpoint run --task psychometric --readout mean --curve
      phosphene probe data --checkpoint run --task threshold --window pre --out run/probe
    """
    import torch

    from phosphene.train.checkpoint import check_dataset_compatible, load_teacher
    from phosphene.train.probe import (
        format_paired,
        format_table,
        plot_label_efficiency,
        probe_teacher,
    )

    if plots and out_dir is None:
        raise click.UsageError("--plots writes files: give --out DIR as well")
    if threads is not None:
        if threads < 1:
            raise click.UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    ds = open_dataset(dataset)
    try:
        model, meta = load_teacher(checkpoint)
        check_dataset_compatible(ds, meta)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if task != "all" and task not in ds.tasks:
        raise click.UsageError(f"dataset {ds.path} has no task {task!r}; its tasks: "
                               f"{', '.join(ds.tasks) or 'none'} (or all)")
    tasks = list(ds.tasks) if task == "all" else [task]
    if not tasks:
        raise click.ClickException(f"dataset {ds.path} has no labelled task sessions to probe")
    tasks = {"post": tasks, "pre": [t + PRE_STIMULUS for t in tasks],
             "both": [*tasks, *(t + PRE_STIMULUS for t in tasks)]}[window]
    extra = {"checkpoint": str(meta["path"]), "checkpoint_step": meta["step"],
             "window_spec": meta["window_spec"].to_dict(), "normaliser": meta["normaliser"].to_dict()}
    pretraining = _pretraining_record(meta)
    if pretraining:
        extra["pretraining"] = pretraining
        click.echo(f"probe: teacher validation MSE {pretraining['best_val_mse']:.4f}, predicting "
                   f"each channel's mean {pretraining['val_mse_channel_mean_baseline']:.4f}", err=True)
    for what, ours, theirs in (("window", meta["window_spec"], ds.window_spec),
                               ("normaliser", meta["normaliser"], ds.normaliser_config)):
        if ours != theirs:
            click.echo(f"probe: note: the checkpoint's {what} ({_describe(ours)}) differs from the "
                       f"one the dataset records ({_describe(theirs)}); the checkpoint's is used",
                       err=True)
    try:
        run = probe_teacher(ds, model, spec=meta["window_spec"], norm_config=meta["normaliser"],
                            tasks=tuple(tasks), readout=readout, out_dir=out_dir, curve=curve,
                            seed=seed, extra=extra,
                            progress=lambda msg: click.echo(f"probe: {msg}", err=True))
        results, choice = run["results"], run["choice"]
        for r in results:
            r["checkpoint"] = str(meta["path"])
            if out_dir is not None and curve:
                plot_label_efficiency(r, out_dir / r["task"] / "label_efficiency.png")
        if plots:
            from phosphene.train.diagnostics import run_diagnostics
            from phosphene.train.readout import readout_encode_fn

            click.echo("probe: diagnostics (t-SNE, Mantel test) ...", err=True)
            encode = readout_encode_fn(model, run["readouts"], names=(choice["readout"],))
            diag = run_diagnostics(ds, encode, out_dir / "diagnostics", tasks=tuple(tasks),
                                   spec=meta["window_spec"], norm_config=meta["normaliser"],
                                   seed=seed)
            for r in results:
                r["diagnostics"] = {k: diag[k] for k in ("mantel_latent", "mantel_raw")}
        if out_dir is not None:
            from phosphene.io import write_json

            write_json(out_dir / "results.json", {"results": _public(results), "readout": choice,
                                                  **({"pretraining": pretraining} if pretraining else {})})
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json({"results": _public(results), "readout": choice,
                   **({"pretraining": pretraining} if pretraining else {})})
        return
    click.echo(f"Table 1: balanced accuracy (%) [95% CI] on the {results[0]['evaluation']}; "
               f"* = the readout the probes carry ({choice['readout']})")
    click.echo(format_table(results, n_channels=ds.n_channels,
                            window_samples=meta["window_spec"].window_samples,
                            chosen=choice["feature"]))
    click.echo("\nPaired differences (points) on the same evaluation trials:")
    click.echo(format_paired(results))
    if curve:
        click.echo("\nLabel efficiency (balanced accuracy, mean over draws):")
        for r in results:
            for name, points in r["curve"].items():
                cells = "  ".join(f"{p['n_train']:>4} trials {100 * p['mean']:5.1f}%"
                                  if p["mean"] is not None else f"{p['n_train']:>4} trials   n/a"
                                  for p in points)
                click.echo(f"  {r['task']:<13}{name:<24}{cells}")
    for r in results:
        d = r.get("diagnostics")
        if d and d.get("mantel_latent"):
            m, raw = d["mantel_latent"], d["mantel_raw"]
            click.echo(f"\nlatent vs array distance (Mantel, {m['n_items']} electrodes): "
                       f"r = {m['r']:.3f}, p = {m['p_value']:.3g}; raw MUA: r = {raw['r']:.3f}, "
                       f"p = {raw['p_value']:.3g}")
            break


def _describe(x) -> str:
    if hasattr(x, "describe"):
        return x.describe()
    return f"{x.window_ms:g} ms from {x.offset_ms:g} ms after onset"


def _pretraining_record(meta: dict) -> dict | None:
    """The teacher's validation MSE next to the channel-mean baseline, from pretrain.json
    beside the checkpoint (None when the run directory does not have it)."""
    import json

    file = Path(meta["path"]).parent / "pretrain.json"
    try:
        p = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = ("best_val_mse", "val_mse_channel_mean_baseline", "val_mse_vs_baseline", "best_step")
    if not all(k in p for k in keys[:2]):
        return None
    return {k: p.get(k) for k in keys} | {"pretrain_json": str(file)}


def _public(results: list[dict]) -> list[dict]:
    """Results without the probe weight vectors and per-trial probabilities (those live in
    probe.json)."""
    return [{k: v for k, v in r.items() if k not in ("probes", "eval_p", "eval_trials")}
            for r in results]
