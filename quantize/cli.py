"""`phosphene quantize`: a thin wrapper over quantize.build.build_bundle."""

from __future__ import annotations

from pathlib import Path

import click

from phosphene.commands import dataset_argument, echo_json, open_dataset
from phosphene.errors import ConfigError, PhospheneError

__all__ = ["quantize"]


@click.command("quantize")
@dataset_argument
@click.option("--student", "student_path", required=True, type=click.Path(path_type=Path),
              help="Student directory (student.pt) from `phosphene distill`.")
@click.option("--probe", "probe_path", type=click.Path(path_type=Path), default=None,
              help="The teacher's probes: the --out DIR of `phosphene probe` (DIR/<task>/probe.json) "
                   "or one probe.json.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory to write (model.tflite, probe.json, manifest.json).")
@click.option("--calib-windows", type=int, default=300, show_default=True,
              help="Resting windows for int8 calibration.")
@click.option("--parity-windows", type=int, default=500, show_default=True,
              help="Held-out resting windows for the parity report (plus every trial window).")
@click.option("--min-cosine", type=float, default=0.99, show_default=True,
              help="Fail when the mean latent cosine int8 vs float student is below this.")
@click.option("--min-agreement", type=float, default=0.98, show_default=True,
              help="Fail when probe decisions int8 vs float student agree less often than this.")
@click.option("--wire-format", type=click.Choice(["float16", "int16"]), default="float16", show_default=True,
              help="Sample format of the array's wire (docs/protocol.md): the evaluation trials "
                   "are also decided on through it, as the edge receives them.")
@click.option("--wire-scale-uv", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Microvolts per wire unit [1.0 for float16, 0.02 for int16].")
@click.option("--min-wire-agreement", type=click.FloatRange(0, 1, min_open=True), default=0.99,
              show_default=True,
              help="Fail when decisions through the wire agree with the offline int8 decisions "
                   "less often than this, on either task.")
@click.option("--latency-budget-ms", type=float, default=None,
              help="Per-decision budget stated in the bundle [one patch period, 16 ms at 1 kHz].")
@click.option("--quantizer", type=click.Choice(["tf"]), default="tf", show_default=True,
              help="Full-int8 quantizer: onnx2tf's TensorFlow quantizer.")
@click.option("--activations", type=click.Choice(["int8", "int16"]), default="int8", show_default=True,
              help="int8: full int8 (fast). int16: int8 weights, int16 activations and I/O, for "
                   "probes too sensitive for int8 (reference kernels, ~1 ms per decision).")
@click.option("--task", default=None, metavar="TASK",
              help="Probe the runtime applies by default [psychometric when present]: a task the "
                   "probes hold (psychometric, threshold, or one with _pre: the window before "
                   "onset; `phosphene run --task` picks another at run time).")
@click.option("--probe-source", type=click.Choice(["teacher", "refit"]), default="teacher",
              show_default=True, help="teacher: the teacher's probe applied to student latents; "
              "refit: refitted on the int8 student's latents (training split).")
@click.option("--runtime", type=click.Choice(["auto", "litert", "tflite-runtime"]), default="auto",
              show_default=True, help="Interpreter for parity and latency.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for window sampling.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--keep-work", is_flag=True,
              help="Keep OUT.work/ (ONNX, onnx2tf output and log, calibration set).")
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
def quantize(dataset, student_path, probe_path, out_dir, calib_windows, parity_windows, min_cosine,
             min_agreement, wire_format, wire_scale_uv, min_wire_agreement, latency_budget_ms, quantizer,
             activations, task, probe_source, runtime, seed, overwrite, keep_work, as_json):
    """Export the student to full-int8 TFLite and write a verified bundle.

    ONNX (opset 20, static shape) checked against torch; onnx2tf full int8 calibrated on
    real resting windows normalised exactly as at runtime; builtin ops only; parity
    (latent cosine, max error, probe agreement) on held-out windows; balanced accuracy
    with 95% CI of the float and int8 student on the evaluation trials, paired with the
    teacher's decisions saved in --probe; the same trials decided on through the wire's
    sample format, as the edge receives them; all written into the manifest. Fails when
    parity is below --min-cosine / --min-agreement / --min-wire-agreement. onnx2tf's log
    goes to OUT.work/onnx2tf.log.

    \b
    Example:
      phosphene quantize data --student student --probe run/probe --out bundle
    """
    from phosphene.metrics import p_text
    from phosphene.quantize.build import QuantizeConfig, build_bundle

    if probe_source == "teacher" and probe_path is None:
        raise click.UsageError("--probe is required unless --probe-source refit")
    try:
        config = QuantizeConfig(calib_windows=calib_windows, parity_windows=parity_windows,
                                min_cosine=min_cosine, min_agreement=min_agreement,
                                wire_format=wire_format, wire_scale_uv=wire_scale_uv,
                                min_wire_agreement=min_wire_agreement,
                                latency_budget_ms=latency_budget_ms, quantizer=quantizer,
                                activations=activations,
                                task=task, probe_source=probe_source, runtime=runtime, seed=seed,
                                keep_work=keep_work)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    ds = open_dataset(dataset)
    try:
        report = build_bundle(ds, student_path, probe_path, out_dir, config=config,
                              overwrite=overwrite,
                              progress=lambda msg: click.echo(f"quantize: {msg}", err=True))
    except (PhospheneError, OSError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(report)
        return
    lat = report["latent"]
    click.echo(f"bundle: {out_dir}")
    click.echo(f"latent cosine int8 vs float: mean {lat['cosine_mean']:.4f}, min "
               f"{lat['cosine_min']:.4f}, max abs error {lat['max_abs_error']:.4f}")
    click.echo(f"probe decision agreement: {report['decision_agreement']:.4f}")
    w = report["wire"]
    if w.get("agreement") is not None:
        click.echo(f"through the wire ({w['sample_format']}, {w['scale_uv']:g} uV per unit): decisions "
                   f"agree with offline int8 on {100 * w['agreement']:.2f}% of {w['n_eval']} trials")
    for t, e in report["tasks"].items():
        cells = [f"{k.removeprefix('ba_')} {100 * v:.1f}%" for k, v in e.items()
                 if k.startswith("ba_") and v is not None]
        click.echo(f"{t} ({e['n_eval']} {e['evaluation']} trials): balanced accuracy "
                   + ", ".join(cells))
        if "int8-teacher" in e.get("paired", {}):
            c = e["paired"]["int8-teacher"]
            click.echo(f"{t}: int8 - teacher {100 * c['diff']:+.1f} points [{100 * c['ci95'][0]:+.1f}, "
                       f"{100 * c['ci95'][1]:+.1f}], {p_text(c['p_value'])}; decisions agree "
                       f"{100 * e['teacher_int8_agreement']:.1f}%")
    click.echo(f"decision latency ({report['latency']['runtime']}, 1 thread): median "
               f"{report['latency']['decision_median_us']:.0f} us, p99 "
               f"{report['latency']['decision_p99_us']:.0f} us")
