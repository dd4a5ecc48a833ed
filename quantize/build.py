"""Build a bundle: student -> ONNX -> int8 TFLite -> parity -> probe + manifest (atomic).

    build_bundle(ds, student_path, probe_path, out_dir) -> parity report (dict)

Flow: load the student checkpoint -> calibration windows (resting, train part, exactly
the runtime's preprocessing: Dataset.normalised) -> export_onnx + check_onnx -> onnx2tf
full int8 -> builtin-op check -> parity on held-out windows (resting tail + stimulation
trials) through the edge's own Encoder -> thresholds -> probe.json + manifest.json with
hashes, written atomically -> load_bundle(out) as the last check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from phosphene.dataset import TASKS, Dataset, task_name_problem
from phosphene.edge.bundle import (
    PROBE_FILE,
    PROBE_FORMAT,
    BundleSpec,
    Probe,
    probe_from_json,
    write_bundle,
)
from phosphene.errors import ConfigError, InputError, PhospheneError
from phosphene.io import write_json
from phosphene.metrics import balanced_accuracy, bootstrap_ci, paired_comparison
from phosphene.quantize.convert import (
    INPUT_NAME,
    OPSET,
    ConversionError,
    check_builtin_only,
    check_onnx,
    convert_int8,
    export_onnx,
)
from phosphene.signal import NormaliserConfig, WindowSpec, task_window
from phosphene.train.probe import PROBE_FORMAT as TEACHER_PROBE_FORMAT

__all__ = [
    "ParityError",
    "QuantizeConfig",
    "build_bundle",
    "default_latency_budget_ms",
    "fit_probe",
    "input_health_reference",
    "load_probes",
    "measure_decision_latency",
    "teacher_evaluation",
    "tool_versions",
    "wire_trial_windows",
]

log = logging.getLogger(__name__)



class ParityError(PhospheneError, ValueError):
    """The int8 model does not reproduce the float student well enough (message says how)."""


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of `phosphene quantize` (defaults are the issue's thresholds)."""

    calib_windows: int = 300  # resting windows to calibrate int8 (a few hundred: docs/toolchain.md)
    parity_windows: int = 500  # held-out resting windows for the parity report
    min_cosine: float = 0.99  # fail below this mean cosine, int8 vs torch float student
    min_agreement: float = 0.98  # fail below this probe decision agreement, int8 vs float
    latency_budget_ms: float | None = None  # None: one patch period of the WindowSpec
    quantizer: str = "tf"  # "tf": onnx2tf's TensorFlow quantizer ("ai-edge": see docs)
    # "int8": full int8 (fast: one XNNPACK partition). "int16": int8 weights with int16
    # activations and I/O, for probes too sensitive for int8 activations; runs on the
    # reference kernels (about 1 ms per decision on x86 instead of tens of us).
    activations: str = "int8"
    task: str | None = None  # the probe the runtime applies; None: psychometric if present
    probe_source: str = "teacher"  # "teacher": teacher's probe as is; "refit": on int8 latents
    runtime: str = "auto"  # interpreter used for parity and latency
    latency_runs: int = 300  # decisions timed for the manifest's latency figure
    seed: int = 0
    keep_work: bool = False  # keep the ONNX, onnx2tf output and log beside the bundle
    # The evaluation trials are also decided on as the edge will see them: each session
    # through the wire's sample format, then the one normaliser. Below this agreement
    # with the offline int8 decisions the bundle is refused.
    wire_format: str = "float16"
    wire_scale_uv: float | None = None  # None: 1.0 for float16, 0.02 uV per LSB for int16
    min_wire_agreement: float = 0.99

    def __post_init__(self) -> None:
        if self.calib_windows < 8 or self.parity_windows < 8:
            raise ConfigError("need at least 8 calibration and 8 parity windows")
        if not (0 < self.min_cosine <= 1 and 0 < self.min_agreement <= 1):
            raise ConfigError("min_cosine and min_agreement must be in (0, 1]")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ConfigError("latency budget must be a positive number of ms")
        if self.quantizer not in ("tf",):
            raise ConfigError(f"quantizer {self.quantizer!r} is not available; use 'tf' "
                              "(onnx2tf's TensorFlow full-int8 quantizer)")
        if self.activations not in ("int8", "int16"):
            raise ConfigError("activations must be 'int8' or 'int16'")
        if self.probe_source not in ("teacher", "refit"):
            raise ConfigError("probe_source must be 'teacher' or 'refit'")
        if self.wire_format not in ("int16", "float16"):
            raise ConfigError("wire_format must be 'int16' or 'float16'")
        if self.wire_scale_uv is not None and not self.wire_scale_uv > 0:
            raise ConfigError("wire_scale_uv must be a positive number of uV")
        if not 0 < self.min_wire_agreement <= 1:
            raise ConfigError("min_wire_agreement must be in (0, 1]")

    @property
    def wire(self) -> dict:
        """The wire format parity is measured through (stored in the manifest)."""
        scale = self.wire_scale_uv or (1.0 if self.wire_format == "float16" else 0.02)
        return {"sample_format": self.wire_format, "scale_uv": float(scale)}


def default_latency_budget_ms(spec: WindowSpec) -> float:
    """One patch period: in continuous mode a new decision is due every patch, so a decision
    that takes longer than a patch falls behind the stream (16 ms at paper settings)."""
    return spec.patch_samples * 1000.0 / spec.sample_rate_hz


def tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("phosphene", "numpy", "torch", "onnx", "onnxruntime", "onnx2tf",
                 "tensorflow-cpu", "tensorflow", "ai-edge-litert", "tflite-runtime"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


# --------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------
def _teacher_probe(doc: dict, file: Path, latent_dim: int) -> Probe:
    """One train/probe.py probe.json (single task, standardisation folded) -> Probe."""
    from phosphene.train.probe import check_probe_doc

    doc = check_probe_doc(doc, str(file))
    task, weights = str(doc.get("task", "")), doc["weights"]
    problem = task_name_problem(task_window(task, WindowSpec())[0])
    if problem:
        raise InputError(f"{file}: {problem}")
    if weights.shape[0] != latent_dim:
        raise InputError(f"{file}: the {task} probe has {weights.shape[0]} weights but the "
                         f"student's latent has {latent_dim} values (probe of another teacher?)")
    offset = doc.get("window_offset_ms")
    return Probe(task=task, weights=weights, bias=float(doc["bias"]),
                 threshold=float(doc.get("threshold", 0.5)), source="teacher",
                 offset_ms=None if offset is None else float(offset))


def load_probes(path: str | os.PathLike, latent_dim: int) -> dict[str, Probe]:
    """{task: Probe} from the teacher's probes, as `phosphene probe --out DIR` writes them.

    path: DIR (reads DIR/<task>/probe.json for each task, or DIR/probe.json), a single
    probe.json, or a bundle's probe.json. Weights act on the raw latent (the teacher's
    standardisation is folded in); the threshold is on P(perceived).
    """
    docs = _probe_docs(path)
    if not docs:
        raise InputError(f"no probe at {path}: run `phosphene probe DATASET --checkpoint RUN "
                         "--out DIR` on the teacher first and pass --probe DIR, or pass "
                         "--probe-source refit")
    probes: dict[str, Probe] = {}
    for file, doc in docs:
        if isinstance(doc, dict) and doc.get("format") == PROBE_FORMAT:  # a bundle's probe.json
            probes.update(probe_from_json(doc, latent_dim=latent_dim, where=str(file))[1])
        else:
            p = _teacher_probe(doc, file, latent_dim)
            probes[p.task] = p
    return probes


def fit_probe(z: np.ndarray, y: np.ndarray, task: str, *, folds: np.ndarray | None = None,
              seed: int = 0) -> Probe:
    """Refit the teacher's probe recipe (train/probe.py: blocked CV, one-SE rule) on
    latents z: (N, D) -> folded Probe."""
    from phosphene.train.probe import fit_probe as fit_pipeline
    from phosphene.train.probe import fold_probe

    w, b = fold_probe(fit_pipeline(np.asarray(z, np.float64), np.asarray(y), folds=folds,
                                   seed=seed, label=f"{task} refit"))
    return Probe(task=task, weights=np.asarray(w, np.float64), bias=float(b), threshold=0.5,
                 source="refit")


# --------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------
def latent_parity(z_int8: np.ndarray, z_float: np.ndarray, center: np.ndarray) -> dict:
    """The int8 latents against the float student's: train.distill's fidelity measures
    (cosines raw and centred, R2) plus the largest error and the latent's range."""
    from phosphene.train.distill import latent_fidelity

    return {**latent_fidelity(z_int8, z_float, center),
            "max_abs_error": float(np.abs(z_int8 - z_float).max()),
            "latent_abs_max": float(np.abs(z_float).max()), "n_windows": len(z_int8)}


def measure_decision_latency(encoder, windows: np.ndarray, runs: int) -> dict:
    """Median/p99 of Encoder.decide over `runs` decisions (after a short warm-up), in us."""
    for w in windows[:20]:
        encoder.decide(w)
    totals, invokes = [], []
    for i in range(runs):
        d = encoder.decide(windows[i % len(windows)])
        totals.append(d.timings_us["total"])
        invokes.append(d.timings_us["invoke"])
    return {"runtime": encoder.runtime_name, "threads": 1, "runs": runs,
            "decision_median_us": float(np.median(totals)),
            "decision_p99_us": float(np.percentile(totals, 99)),
            "invoke_median_us": float(np.median(invokes)), "machine": _cpu_name()}


def _cpu_name() -> str:
    from phosphene.edge.stats import cpu_name

    return cpu_name()


def _hash_array(x: np.ndarray) -> str:
    import hashlib

    x = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.sha256(str(x.shape).encode())
    h.update(x.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------
def build_bundle(ds: Dataset, student_path: str | os.PathLike,
                 probe_path: str | os.PathLike | None, out_dir: str | os.PathLike, *,
                 config: QuantizeConfig = QuantizeConfig(), overwrite: bool = False,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Quantise a distilled student into a verified bundle at out_dir; returns the parity report.

    The teacher's accuracy and decisions come from its probes (probe.json keeps the teacher's
    P(perceived) on the evaluation trials), so the teacher is not run again here.
    Raises ParityError when parity is below the config's thresholds (no bundle is written;
    the report is kept in the work directory), ConversionError when export or onnx2tf fails.
    """

    from phosphene.edge.interpreter import Encoder
    from phosphene.train.distill import (
        heldout_resting_windows,
        load_student,
        predict,
    )
    from phosphene.train.student import export_ready

    say = progress or (lambda msg: log.info("%s", msg))
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    t_start = time.perf_counter()

    # --- the student and its data contract ---------------------------------------------
    model, meta = load_student(student_path)
    spec = WindowSpec.from_dict(meta["window_spec"])
    norm = NormaliserConfig.from_dict(meta["normaliser"])
    latent_dim, n_channels = int(meta["latent_dim"]), int(meta["n_channels"])
    _check_student_fits(ds, meta, spec)
    heldout_fraction = float(meta.get("distill_config", {}).get("heldout_fraction", 0.1))
    center = np.asarray(meta.get("latent_center", np.zeros(latent_dim)), dtype=np.float64)
    export_model = export_ready(model)

    work = out_dir.with_name(out_dir.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # --- calibration and held-out windows (the runtime's preprocessing) ----------------
    say(f"sampling {config.calib_windows} calibration + {config.parity_windows} held-out "
        "resting windows ...")
    calib, n_stim = _calibration_windows(ds, spec, norm, config, heldout_fraction)
    heldout = heldout_resting_windows(ds, spec, norm, config.parity_windows,
                                      seed=config.seed + 2000, heldout_fraction=heldout_fraction)
    teacher_probes = load_probes(probe_path, latent_dim) if probe_path is not None else None
    splits = _task_splits(ds, spec, norm, tuple(teacher_probes) if teacher_probes else ds.tasks)

    # --- ONNX checked against torch, then int8 and its op check -----------------------
    model_path, operators, int8, onnx_err = _convert(model, export_model, spec, n_channels, calib,
                                                     heldout[:32], work, config, say)

    # --- parity: float student vs int8 through the edge's code path --------------------
    say("parity: float student vs int8 on held-out windows ...")

    def int8_latents(x: np.ndarray) -> np.ndarray:
        return np.stack([int8.run(w[None]).reshape(-1) for w in x])

    z_float_rest, z_int8_rest = predict(model, heldout), int8_latents(heldout)
    task_latents = {task: {part: {"float": predict(model, sp[part][0]),
                                  "int8": int8_latents(sp[part][0])} for part in ("train", "eval")}
                    for task, sp in splits.items()}
    say(f"the evaluation trials through the wire ({config.wire['sample_format']}, "
        f"{config.wire['scale_uv']:g} uV per unit) ...")
    for task, sp in splits.items():
        task_latents[task]["wire"] = int8_latents(wire_trial_windows(ds, task, sp, spec, norm, config.wire))
    all_float = np.concatenate([z_float_rest] + [v["eval"]["float"] for v in task_latents.values()])
    all_int8 = np.concatenate([z_int8_rest] + [v["eval"]["int8"] for v in task_latents.values()])
    report: dict = {
        "latent": latent_parity(all_int8, all_float, center),
        "latent_resting_heldout": latent_parity(z_int8_rest, z_float_rest, center),
        "onnx_max_abs_error": onnx_err,
        "readout": meta.get("readout", "mean"),
    }

    # --- probes ------------------------------------------------------------------------
    if probe_path is not None:
        _check_readout(probe_path, meta.get("readout", "mean"))
    probes = _bundle_probes(config, teacher_probes, splits, task_latents)
    default_task = config.task or ("psychometric" if "psychometric" in probes else next(iter(probes)))
    if default_task not in probes:
        raise InputError(f"no probe for task {default_task!r}; have {', '.join(probes)}")
    teacher_eval = teacher_evaluation(probe_path) if probe_path is not None else {}

    report.update(_decision_report(splits, task_latents, probes, probes[default_task],
                                   (z_float_rest, z_int8_rest), teacher_eval, config))
    default_probe = probes[default_task]

    say("input health reference: per-channel statistics of the resting input ...")
    input_health = input_health_reference(ds, config.wire)
    budget_ms = config.latency_budget_ms or default_latency_budget_ms(spec)
    calib_info = {"n_windows": len(calib), "n_stimulation_windows": int(n_stim),
                  "sha256": _hash_array(calib),
                  "source": ("resting sessions (train part) and unlabelled stimulation windows of "
                              "the training sessions, Dataset.normalised (runtime preprocessing)"),
                  "seed": config.seed + 1000, "normaliser": norm.to_dict()}

    say(f"timing {config.latency_runs} int8 decisions (1 thread) ...")
    latency = measure_decision_latency(_LatencyProbe(int8, default_probe), heldout,
                                       config.latency_runs)
    report["latency"] = latency
    report["latency_budget_ms"] = float(budget_ms)

    _parity_gate(report, config, budget_ms, meta.get("arch"), work)

    # --- write the bundle atomically, then load it back as the edge would --------------
    say(f"writing bundle {out_dir} ...")
    bundle = write_bundle(out_dir, BundleSpec(
        model=model_path.read_bytes(), probes=probes, task=default_task,
        channel_map=ds.channel_map, window=spec, normaliser=norm,
        input_quant=int8.input_quant, output_quant=int8.output_quant,
        latency_budget_ms=float(budget_ms), wire=config.wire, input_health=input_health,
        model_info={"arch": meta["arch"], "student_config": meta["config"],
                    "readout": meta.get("readout", "mean"), "input_name": INPUT_NAME,
                    "operators": operators, "quantizer": config.quantizer, "onnx_opset": OPSET,
                    "weights": "int8 (per-channel)", "activations": config.activations},
        records={"parity": report, "calibration": calib_info,
                 "training": {"student_step": meta["step"], "student_metrics": meta.get("metrics", {}),
                              "distill_config": meta.get("distill_config", {}),
                              "teacher": meta.get("teacher", {}), "dataset": str(ds.path)},
                 "tools": {**tool_versions(),
                           "interpreter": f"{int8.runtime_name} {int8.runtime_version}"}}),
        overwrite=overwrite)
    check = Encoder(bundle, runtime=config.runtime)
    z_check = np.stack([check.latent(w) for w in heldout[:8]])
    if not np.array_equal(z_check, z_int8_rest[:8]):
        raise ConversionError(f"{out_dir}: the written bundle does not reproduce the parity run")
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    say(f"bundle ready in {time.perf_counter() - t_start:.0f} s: cosine "
        f"{report['latent']['cosine_mean']:.4f} (min {report['latent']['cosine_min']:.4f}), "
        f"agreement {report['decision_agreement']:.3f}, decision "
        f"{latency['decision_median_us']:.0f} us median")
    return report


def _decision_report(splits: dict, task_latents: dict, probes: dict[str, Probe],
                     default_probe: Probe, resting: tuple[np.ndarray, np.ndarray],
                     teacher_eval: dict, config: QuantizeConfig) -> dict:
    """Per task: accuracy and agreement of float, int8 and through-the-wire decisions
    (`_task_report`); pooled: the decision agreement the gate reads, and the wire's."""
    report: dict = {"tasks": {}}
    agree_hits, agree_n = 0, 0
    for task, sp in splits.items():
        entry = _task_report(task, sp, task_latents[task], probes.get(task),
                              teacher_eval.get(task), seed=config.seed)
        if "decision_agreement" in entry:
            agree_hits += entry["decision_agreement"] * entry["n_eval"]
            agree_n += entry["n_eval"]
        report["tasks"][task] = entry
    rest_float, rest_int8 = resting
    rest_df = default_probe.p_perceived(rest_float) >= default_probe.threshold
    rest_di = default_probe.p_perceived(rest_int8) >= default_probe.threshold
    report["decision_agreement_resting"] = float((rest_df == rest_di).mean())
    report["decision_agreement"] = (agree_hits / agree_n if agree_n
                                    else report["decision_agreement_resting"])
    report["thresholds"] = {"min_cosine": config.min_cosine, "min_agreement": config.min_agreement,
                            "min_wire_agreement": config.min_wire_agreement}
    wire_n = sum(e.get("n_eval", 0) for e in report["tasks"].values() if "wire_agreement" in e)
    report["wire"] = {**config.wire, "n_eval": wire_n, "agreement": (
        sum(e["wire_agreement"] * e["n_eval"] for e in report["tasks"].values() if "wire_agreement" in e)
        / wire_n if wire_n else None)}
    return report


def _check_student_fits(ds: Dataset, meta: dict, spec: WindowSpec) -> None:
    """The dataset is the array, channel order and rate the student was distilled for."""
    if ds.n_channels != int(meta["n_channels"]):
        raise InputError(f"the dataset has {ds.n_channels} channels but the student in "
                         f"{meta['path']} was distilled for {meta['n_channels']}")
    stored_ids = [int(e["id"]) for e in meta["channel_map"]["electrodes"]]
    if stored_ids != list(ds.channel_map.ids):
        raise InputError(f"dataset {ds.path} orders its electrodes differently from the student's "
                         "channel map: calibrate on the array the student was distilled for")
    if abs(ds.sample_rate_hz - spec.sample_rate_hz) > 1e-6:
        raise InputError(f"dataset {ds.path} runs at {ds.sample_rate_hz:g} Hz, the student at "
                         f"{spec.sample_rate_hz:g} Hz")


def _calibration_windows(ds: Dataset, spec: WindowSpec, norm: NormaliserConfig,
                         config: QuantizeConfig, heldout_fraction: float) -> tuple[np.ndarray, int]:
    """(windows int8 is calibrated on, how many of them are stimulation windows)."""
    from phosphene.train.distill import sample_resting_windows, stimulation_windows

    calib = sample_resting_windows(ds, spec, norm, config.calib_windows, seed=config.seed + 1000,
                                   heldout_fraction=heldout_fraction)
    # Evoked windows drive activations past anything at rest: calibrated on resting windows
    # alone, int8 saturated on them (max error 11.6 on features up to 16). Stimulation
    # windows of the training sessions join the calibration set; their labels are not read.
    stim = stimulation_windows(ds, spec, norm, (0,))
    n_stim = min(len(stim), config.calib_windows // 2)
    if n_stim:
        pick = np.random.default_rng(config.seed + 1001).choice(len(stim), n_stim, replace=False)
        calib = np.concatenate([calib, stim[np.sort(pick)]])
    return calib, int(n_stim)


def _convert(model, export_model, spec: WindowSpec, n_channels: int, calib: np.ndarray,
             check_windows: np.ndarray, work: Path, config: QuantizeConfig, say):
    """torch -> ONNX (checked against torch on `check_windows`) -> int8 TFLite (builtin ops,
    the requested activation type). Returns (model path, operators, the open model, ONNX error)."""
    import torch

    from phosphene.edge.interpreter import TFLiteModel
    from phosphene.train.distill import predict

    say(f"exporting ONNX (opset {OPSET}, input {INPUT_NAME} 1x{spec.window_samples}x{n_channels}) ...")
    onnx_path = export_onnx(export_model, (1, spec.window_samples, n_channels), work / "student.onnx")
    onnx_err = check_onnx(export_model, onnx_path, check_windows)
    with torch.no_grad():
        ref_scale = float(np.abs(predict(model, check_windows)).max())
    if not onnx_err <= 1e-4 * max(1.0, ref_scale):
        raise ConversionError(f"ONNX Runtime differs from torch by {onnx_err:.2e} "
                              f"(latents up to {ref_scale:.2f}): the export is wrong")
    say(f"ONNX matches torch (max abs error {onnx_err:.1e})")

    # --- int8 conversion and op check --------------------------------------------------
    conv = convert_int8(onnx_path, calib, work, progress=say)
    model_path = conv.int8_path
    if config.activations == "int16":
        if conv.int16_act_path is None:
            raise ConversionError(f"onnx2tf made no int16-activation model (see {conv.log_path})")
        model_path = conv.int16_act_path
    operators = check_builtin_only(model_path)
    int8 = TFLiteModel(model_path, threads=1, runtime=config.runtime)
    if (int8.input_quant is None or int8.output_quant is None
            or int8.input_dtype != config.activations or int8.output_quant.dtype != config.activations):
        raise ConversionError(f"{model_path} does not have {config.activations} input and output")
    say(f"{config.activations} model: {model_path.stat().st_size / 1024:.0f} KiB, operators "
        f"{', '.join(operators)}")

    return model_path, operators, int8, onnx_err


def _parity_gate(report: dict, config: QuantizeConfig, budget_ms: float, arch: str | None,
                 work: Path) -> None:
    """Refuse the bundle (ParityError, report kept in `work`) below any of the thresholds."""
    latency = report["latency"]
    problems = []
    if latency["decision_median_us"] / 1000.0 > budget_ms:
        problems.append(f"median decision {latency['decision_median_us'] / 1000:.2f} ms exceeds "
                        f"the {budget_ms:g} ms latency budget on this machine")
    if report["latent"]["cosine_mean"] < config.min_cosine:
        problems.append(f"mean latent cosine int8 vs float {report['latent']['cosine_mean']:.4f} "
                        f"< {config.min_cosine}")
    if report["decision_agreement"] < config.min_agreement:
        per_task = ", ".join(
            f"{t} {e['decision_agreement']:.4f} of {e['n_eval']} trials"
            + (" (below)" if e["decision_agreement"] < config.min_agreement else " (passes)")
            for t, e in report["tasks"].items() if "decision_agreement" in e)
        problems.append(f"int8 and float student decisions agree on {report['decision_agreement']:.4f} "
                        f"of the evaluation trials < --min-agreement {config.min_agreement}"
                        + (f" (per task: {per_task})" if per_task else " (resting windows)"))
    for task, e in report["tasks"].items():
        if e.get("wire_agreement", 1.0) < config.min_wire_agreement:
            problems.append(f"{task}: decisions on input through the wire ({config.wire_format}) agree "
                            f"with the offline int8 decisions on {e['wire_agreement']:.4f} of "
                            f"{e['n_eval']} trials < {config.min_wire_agreement}")
    if problems:
        write_json(work / "parity.json", report)
        hint = ("a student without LayerNorm/attention (distill --arch mixer)" if arch != "mixer"
                else "a longer distillation of this mixer student (it has no LayerNorm/attention)")
        raise ParityError("int8 bundle rejected: " + "; ".join(problems) +
                          f" ({arch} student; report: {work / 'parity.json'}). Try more "
                          f"--calib-windows, {hint}, or relax the threshold knowingly")



class _LatencyProbe:
    """Encoder.decide on an already-open TFLiteModel (the bundle is not written yet)."""

    def __init__(self, model, probe: Probe):
        from phosphene.edge.interpreter import Decision

        self._decision = Decision
        self.model, self.probe = model, probe
        self.runtime_name = model.runtime_name
        self._buf = np.zeros(model.input_shape, dtype=model.input_dtype)

    def decide(self, window: np.ndarray):
        t0 = time.perf_counter()
        self.model.input_quant.quantize(window.reshape(self._buf.shape), out=self._buf)
        t1 = time.perf_counter()
        q = self.model.run_raw(self._buf)
        t2 = time.perf_counter()
        p, perceived = self.probe.decide(self.model.output_quant.dequantize(q).reshape(-1))
        t3 = time.perf_counter()
        return self._decision(p, perceived, {"quantize": (t1 - t0) * 1e6, "invoke": (t2 - t1) * 1e6,
                                             "probe": (t3 - t2) * 1e6, "total": (t3 - t0) * 1e6})


def _task_splits(ds: Dataset, spec: WindowSpec, norm: NormaliserConfig,
                 tasks: tuple[str, ...] = TASKS) -> dict:
    """{task: {"train": (X, y, trials), "eval": (X, y, trials), "evaluation": str}} for the
    tasks with labelled trials, each in its own window (signal.task_window): the probes'
    own split (train.probe.task_split)."""
    from phosphene.train.probe import task_split

    out = {}
    for task in tasks:
        if not len(ds.task_trials(ds.task_window(task, spec)[0])):
            continue
        try:
            sp = task_split(ds, task, spec, norm)
        except ValueError as exc:
            log.warning("no %s parity: %s", task, exc)
            continue
        out[task] = {"train": (sp["X"], sp["y"], sp["trials"]),
                     "eval": (sp["X_eval"], sp["y_eval"], sp["trials_eval"]),
                     "evaluation": sp["evaluation"],
                     "offset_ms": ds.task_window(task, spec)[1].offset_ms}
    return out


def input_health_reference(ds: Dataset, wire: dict, *, max_sessions: int = 24,
                           seconds_per_session: float = 120.0) -> dict | None:
    """What the edge's input health compares the live stream with (edge/health.py).

    Raw microvolts of resting sessions as they arrive through the wire: up to
    `max_sessions` spread over the recording days, the first `seconds_per_session` of
    each (the statistics are per-channel medians; more data moves them little). None when
    the dataset has no resting session.
    """
    from phosphene.edge.health import calibration_stats
    from phosphene.firmware_bridge.protocol import wire_roundtrip_uv

    sessions = ds.sessions_of("resting")
    if not sessions:
        log.warning("no resting sessions: the bundle carries no input-health reference")
        return None
    pick = np.unique(np.linspace(0, len(sessions) - 1, min(max_sessions, len(sessions))).round().astype(int))
    n = int(seconds_per_session * ds.sample_rate_hz)

    def recordings():
        for i in pick:
            raw = np.asarray(ds.mua(sessions[i].session)[:n], dtype=np.float32)
            yield wire_roundtrip_uv(raw, wire["sample_format"], wire["scale_uv"])[0]

    return calibration_stats(recordings(), sample_rate_hz=ds.sample_rate_hz)


def wire_trial_windows(ds: Dataset, task: str, split: dict, spec: WindowSpec,
                       norm: NormaliserConfig, wire: dict) -> np.ndarray:
    """The evaluation windows of `split` as the edge computes them from the wire.

    Each session's microvolts go through the wire's sample format and back
    (`wire_roundtrip_uv`), then the one normaliser from the session's start, exactly as the
    runtime normalises what it receives; the windows are cut for the same trials, in the
    same order, as split["eval"].
    """
    from phosphene.firmware_bridge.protocol import wire_roundtrip_uv
    from phosphene.signal import Normaliser
    from phosphene.train.data import trial_windows

    source = ds.evaluation() if split["evaluation"] == "evaluation set" else ds

    def through_wire(session_id: str) -> np.ndarray:
        raw = np.asarray(source.mua(session_id), dtype=np.float32)
        received, _ = wire_roundtrip_uv(raw, wire["sample_format"], wire["scale_uv"])
        normaliser, step = Normaliser(source.n_channels, norm), 1 << 16
        return np.concatenate([normaliser.process(received[i:i + step])
                               for i in range(0, len(received), step)])

    X, _, trials = trial_windows(source, task, spec, norm, normalised=through_wire)
    index = {k: i for i, k in enumerate(zip(trials.session.tolist(), trials.onset_sample.tolist()))}
    want = split["eval"][2]
    try:
        rows = [index[k] for k in zip(want.session.tolist(), want.onset_sample.tolist())]
    except KeyError:
        raise InputError(f"{task}: a trial usable offline is not usable through the wire "
                         "(a non-finite normalised value)") from None
    return X[rows]


def _ci(y: np.ndarray, decided: np.ndarray, seed: int) -> list[float]:
    return [float(v) for v in bootstrap_ci(y, decided, seed=seed)]


def _task_report(task: str, split: dict, latents: dict, probe: Probe | None,
                 teacher: dict | None, *, seed: int) -> dict:
    """Accuracy (95% CI) of the float and int8 student on the evaluation trials, paired with
    the teacher's decisions on the same trials, and a probe refitted on the student."""
    from phosphene.train.probe import blocked_folds

    _, y, te = split["eval"]
    _, y_train, tr = split["train"]
    zf, zi = latents["eval"]["float"], latents["eval"]["int8"]
    entry: dict = {"evaluation": split["evaluation"], "n_eval": len(y),
                   "n_train": len(y_train)}
    decisions: dict[str, np.ndarray] = {}
    if probe is not None:
        df, di = probe.p_perceived(zf) >= probe.threshold, probe.p_perceived(zi) >= probe.threshold
        decisions.update(float_student=df, int8=di)
        entry["decision_agreement"] = float((df == di).mean())
        if "wire" in latents:
            dw = probe.p_perceived(latents["wire"]) >= probe.threshold
            decisions["int8_wire"] = dw
            entry["wire_agreement"] = float((dw == di).mean())
        entry["probe_source"] = probe.source
        # how sensitive the probe is: spread of its logit vs the logit error int8 adds
        lf, li = probe.logit(zf), probe.logit(zi)
        entry["logit_sd"] = float(lf.std())
        entry["logit_error_rms"] = float(np.sqrt(np.mean((li - lf) ** 2)))
    if teacher is not None:
        keys = list(zip(te.session.tolist(), te.onset_sample.tolist()))
        lookup = dict(zip(zip(teacher["session"], teacher["onset_sample"]), teacher["p_teacher"]))
        if all(k in lookup for k in keys):
            decisions["teacher"] = np.array([lookup[k] for k in keys]) >= 0.5
        else:
            log.warning("%s: the probe's evaluation trials are not this dataset's: no teacher "
                        "comparison", task)
    for name, d in decisions.items():
        entry[f"ba_{name}"] = balanced_accuracy(y, d)
        entry[f"ci95_{name}"] = _ci(y, d, seed)
    if "teacher" in decisions and probe is not None:
        entry["teacher_int8_agreement"] = float((decisions["teacher"] == decisions["int8"]).mean())
        entry["teacher_float_student_agreement"] = float(
            (decisions["teacher"] == decisions["float_student"]).mean())
        entry["paired"] = {
            "int8-teacher": paired_comparison(y, decisions["int8"], decisions["teacher"], seed=seed),
            "float_student-teacher": paired_comparison(y, decisions["float_student"],
                                                       decisions["teacher"], seed=seed),
            "int8-float_student": paired_comparison(y, decisions["int8"],
                                                    decisions["float_student"], seed=seed)}
        if "int8_wire" in decisions:
            entry["paired"]["int8_wire-int8"] = paired_comparison(y, decisions["int8_wire"],
                                                                  decisions["int8"], seed=seed)
    # a probe refitted on the student's own latents (float and int8), training trials only
    if len(np.unique(y_train)) == 2:
        folds = blocked_folds(tr.session, tr.onset_sample)
        for kind in ("float", "int8"):
            refit = fit_probe(latents["train"][kind], y_train, task, folds=folds, seed=seed)
            d = refit.p_perceived(latents["eval"][kind]) >= refit.threshold
            entry[f"ba_refit_{kind}_student"] = balanced_accuracy(y, d)
            entry[f"ci95_refit_{kind}_student"] = _ci(y, d, seed)
    return entry


def _bundle_probes(config: QuantizeConfig, teacher_probes: dict | None, splits: dict,
                   task_latents: dict) -> dict[str, Probe]:
    from phosphene.train.probe import blocked_folds

    if config.probe_source == "teacher":
        if teacher_probes is None:
            raise InputError("pass --probe (the teacher's probe.json) or --probe-source refit")
        probes = {}
        for task, p in teacher_probes.items():
            offset = splits[task]["offset_ms"] if task in splits else p.offset_ms
            if p.offset_ms is not None and offset is not None and abs(p.offset_ms - offset) > 1e-9:
                raise InputError(f"the {task} probe was fitted on a window from {p.offset_ms:+g} ms "
                                 f"but the dataset decodes {task} from {offset:+g} ms: probe the "
                                 "teacher on this dataset again")
            probes[task] = replace(p, offset_ms=offset)
        return probes
    probes = {}
    for task, sp in splits.items():
        _, y, tr = sp["train"]
        if len(np.unique(y)) == 2:
            probes[task] = replace(fit_probe(task_latents[task]["train"]["int8"], y, task,
                                             folds=blocked_folds(tr.session, tr.onset_sample),
                                             seed=config.seed), offset_ms=sp["offset_ms"])
    if not probes:
        raise InputError("--probe-source refit needs labelled trials of both classes in the dataset")
    return probes


def _probe_files(path: str | os.PathLike) -> list[Path]:
    path = Path(path)
    if path.is_dir():  # DIR/<task>/probe.json: the tasks after onset first, then the rest
        files = sorted(path.glob(f"*/{PROBE_FILE}"),
                       key=lambda f: (f.parent.name not in TASKS, f.parent.name))
        if not files and (path / PROBE_FILE).is_file():
            files = [path / PROBE_FILE]
        return files
    return [path] if path.is_file() else []


def _probe_docs(path: str | os.PathLike) -> list[tuple[Path, dict]]:
    import json

    docs = []
    for file in _probe_files(path):
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{file} is not valid JSON: {exc}") from None
        docs.append((file, doc))
    return docs


def teacher_evaluation(probe_path: str | os.PathLike) -> dict:
    """{task: {"session", "onset_sample", "perceived", "p_teacher"}}: the teacher probe's
    P(perceived) on its evaluation trials, as `phosphene probe` saved them."""
    out = {}
    for _, doc in _probe_docs(probe_path):
        ev = doc.get("evaluation") if isinstance(doc, dict) else None
        if doc.get("format") == TEACHER_PROBE_FORMAT and isinstance(ev, dict) and "p_teacher" in ev:
            out[str(doc["task"])] = ev
    return out


def _check_readout(probe_path: str | os.PathLike, student_readout: str) -> None:
    for file, doc in _probe_docs(probe_path):
        if doc.get("format") == TEACHER_PROBE_FORMAT:
            readout = str(doc.get("readout", "mean" if int(doc.get("version", 1)) < 2 else "latent"))
            if readout not in (student_readout, "latent"):
                raise InputError(f"{file} reads the teacher's {readout!r} readout but the student "
                                 f"was distilled on {student_readout!r}: distil with --probe "
                                 f"{Path(file).parent.parent}")
