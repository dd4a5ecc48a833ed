"""`phosphene distill`: a thin wrapper over train.distill, and over quantize.compare for
--compare (which quantises every candidate). It spans two stages, so it lives in the top
layer beside phosphene.cli and phosphene.demo."""

from __future__ import annotations

from pathlib import Path

import click

from phosphene.commands import dataset_argument, echo_json, open_dataset
from phosphene.errors import PhospheneError

__all__ = ["distill"]


@click.command("distill")
@dataset_argument
@click.option("--teacher", "teacher_path", required=True, type=click.Path(path_type=Path),
              help="Teacher run directory (its best.pt) or a .pt checkpoint from `phosphene pretrain`.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Student directory: student.pt and metrics.json (with --compare also "
                   "candidates/<arch>/ and compare.json).")
@click.option("--arch", type=click.Choice(["mixer", "electrode", "transformer"]),
              default="mixer", show_default=True,
              help="Student design: MLP-mixer over time patches (int8-friendly, the default), "
                   "MLP-mixer over electrodes, or a small transformer.")
@click.option("--preset", type=click.Choice(["small", "tiny", "paper"]), default="small",
              show_default=True, help="Distillation schedule and student size (tiny: tests).")
@click.option("--steps", type=int, default=None, help="Optimizer steps [preset: small 2000].")
@click.option("--pool-windows", type=int, default=None,
              help="Resting windows with cached teacher latents [preset: small 4096].")
@click.option("--compare", is_flag=True,
              help="Train every design, measure fidelity, probe accuracy and int8 latency, keep "
                   "the winner as OUT/student.pt and write the table to OUT/compare.md "
                   "(and to --results-md when given).")
@click.option("--probe", "probe_path", type=click.Path(path_type=Path), default=None,
              help="The teacher's probes (`phosphene probe --out DIR`): the student learns the "
                   "readout chosen there (default: the paper's mean latent); --compare also "
                   "scores the candidates with them.")
@click.option("--results-md", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --compare: also replace the student-designs section of this markdown "
                   "file (e.g. docs/results.md); nothing outside OUT changes without it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for windows and init.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def distill(dataset, teacher_path, out_dir, arch, preset, steps, pool_windows, compare, probe_path,
            results_md, seed, threads, as_json):
    """Distil the teacher into a small student encoder for the edge.

    The student regresses the teacher's readout features (the one the probes in --probe
    chose) with a resting-whitened squared error, on resting windows and stimulation
    windows whose labels are never read. Writes OUT/student.pt with its config, step,
    window spec, normaliser, readout, latent width and the teacher's hash.

    \b
    Example:
      phosphene distill data --teacher run --probe run/probe --out student
      phosphene distill data --teacher run --out student --compare --probe run/probe
    """
    import torch

    from phosphene.train.distill import DistillConfig
    from phosphene.train.distill import distill as run_distill

    if results_md and not compare:
        raise click.UsageError("--results-md only applies with --compare")
    for name, value in (("--steps", steps), ("--pool-windows", pool_windows), ("--threads", threads)):
        if value is not None and value < 1:
            raise click.UsageError(f"{name} must be >= 1, got {value}")
    if threads:
        torch.set_num_threads(threads)
    ds = open_dataset(dataset)
    cfg = DistillConfig.preset(preset, steps=steps, pool_windows=pool_windows, seed=seed)

    def say(msg: str) -> None:
        click.echo(f"distill: {msg}", err=True)

    try:
        if compare:
            from phosphene.quantize.compare import compare_students

            result = compare_students(ds, teacher_path, out_dir, config=cfg, probe_path=probe_path,
                                      results_md=results_md, progress=say)
        else:
            result = run_distill(ds, teacher_path, out_dir, arch=arch, config=cfg,
                                 probe_dir=probe_path, progress=say)
    except (PhospheneError, OSError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(result)
        return
    if compare:
        click.echo(result["table"])
        click.echo(f"winner: {result['winner']} -> {out_dir / 'student.pt'}")
        return
    v = result["val"]
    click.echo(f"student ({arch}, {result['parameters']:,} parameters): {result['student']}")
    click.echo(f"readout {result['readout']}; held-out resting fidelity: R2 {v['r2']:.3f}, "
               f"whitened MSE {v['whitened_mse']:.4f}, cosine {v['cosine_mean']:.4f}")
