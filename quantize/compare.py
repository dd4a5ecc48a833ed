"""Compare student designs on what the edge needs: fidelity, probe accuracy, int8 speed.

    compare_students(ds, teacher_path, out_dir) -> {"designs": [...], "winner": arch, "table": md}

Every design is distilled from the same cached teacher latents, then measured on:
latent fidelity (held-out resting windows and the stimulation-trial windows), balanced
accuracy with the teacher's probe applied to the student's latents and with a probe
refitted on them (both tasks), and the int8 bundle's parity and single-thread latency
against its own float32 TFLite model. The winner is the fastest int8 design whose mean
int8 balanced accuracy is within 1 point of the best design's; it is copied to
out_dir/student.pt. The table goes to docs/results.md between the students markers.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from phosphene.dataset import Dataset
from phosphene.io import write_json, write_text

__all__ = [
    "STUDENTS_BEGIN",
    "STUDENTS_END",
    "compare_students",
    "replace_section",
]

log = logging.getLogger(__name__)

STUDENTS_BEGIN = "<!-- students:begin -->"
STUDENTS_END = "<!-- students:end -->"
FLOAT_MODEL = "student_float32.tflite"  # kept per candidate for the float32 timing
FIDELITY_TOLERANCE = 0.005  # centred cosine to the teacher on trial windows
BA_TOLERANCE = 0.02  # 2 points: one or two test trials at demo scale
RULE = ("among designs whose int8 model passes quantize's default parity (mean cosine >= 0.99, "
        "decision agreement >= 0.98), whose float latents are within 0.005 centred cosine of the "
        "most faithful design on the trial windows and whose mean int8 balanced accuracy is "
        "within 2 points of the best, the one with the fastest int8 decision (timed round-robin)")


def replace_section(path: str | os.PathLike, begin: str, end: str, body: str,
                    heading: str = "") -> None:
    """Replace the text between `begin` and `end` markers in a markdown file (append if absent).

    Only this section changes; whatever else the file holds (other engineers' sections) is
    kept byte for byte.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + (f"{heading}\n\n" if heading else "") \
            + block + "\n"
    write_text(path, text)


def _reusable(cand: Path, teacher, cfg) -> bool:
    """A candidate from an earlier --compare with the same teacher and schedule (resume)."""
    import json

    from phosphene.train.distill import load_student

    needed = [cand / "student.pt", cand / "metrics.json", cand / "bundle" / "manifest.json",
              cand / FLOAT_MODEL]
    if not all(f.is_file() for f in needed):
        return False
    try:
        _, meta = load_student(cand)
        manifest = json.loads((cand / "bundle" / "manifest.json").read_text())
    except (ValueError, OSError):
        return False
    return (meta.get("teacher", {}).get("sha256") == teacher.sha256
            and meta.get("distill_config") == cfg.to_dict()
            and manifest.get("training", {}).get("student_step") == meta.get("step"))


def interleaved_latency(candidates: dict[str, Path], windows: np.ndarray, runs: int) -> dict:
    """Median single-thread latencies of every design, timed round-robin in one loop.

    Timing the designs one after another lets a burst of load on a shared machine favour
    whichever ran in a quiet moment; interleaving exposes them to the same load. Per design:
    the int8 bundle's whole decision and its invoke alone (LiteRT, XNNPACK), and the float32
    TFLite model's invoke.
    """
    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.interpreter import Encoder, TFLiteModel

    enc = {a: Encoder(load_bundle(c / "bundle"), threads=1, runtime="litert")
           for a, c in candidates.items()}
    f32 = {a: TFLiteModel(c / FLOAT_MODEL, threads=1, runtime="litert") for a, c in candidates.items()}
    times: dict = {a: {"decision": [], "invoke": [], "float32": []} for a in candidates}
    for i in range(runs + 20):
        w = windows[i % len(windows)]
        for a in candidates:
            d = enc[a].decide(w)
            t0 = time.perf_counter()
            f32[a].run(w[None])
            t1 = time.perf_counter()
            if i >= 20:  # warm-up
                times[a]["decision"].append(d.timings_us["total"])
                times[a]["invoke"].append(d.timings_us["invoke"])
                times[a]["float32"].append((t1 - t0) * 1e6)
    return {a: {"decision_median_us": float(np.median(t["decision"])),
                "decision_p99_us": float(np.percentile(t["decision"], 99)),
                "invoke_median_us": float(np.median(t["invoke"])),
                "float32_tflite_median_us": float(np.median(t["float32"])), "runs": runs}
            for a, t in times.items()}


def compare_students(ds: Dataset, teacher_path, out_dir: str | os.PathLike, *, config=None,
                     archs: tuple[str, ...] | None = None, probe_path=None,
                     results_md: str | os.PathLike | None = None, latency_runs: int = 1000,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Distil, quantise and measure every student design; keep the winner (see module doc).

    Candidates already in out_dir/candidates/<arch> from an earlier run with the same
    teacher and schedule are measured again but not retrained.
    """
    import json

    from phosphene.metrics import balanced_accuracy
    from phosphene.quantize.build import (
        QuantizeConfig,
        _task_splits,
        build_bundle,
        fit_probe,
        load_probes,
    )
    from phosphene.train.distill import (
        DistillConfig,
        Teacher,
        distill,
        heldout_resting_windows,
        latent_fidelity,
        load_student,
        load_teacher_for_distill,
        predict,
        teacher_pool,
    )
    from phosphene.train.probe import blocked_folds
    from phosphene.train.student import ARCHS

    say = progress or (lambda msg: log.info("%s", msg))
    cfg = config or DistillConfig.preset("small")
    archs = tuple(archs or ARCHS)
    out_dir = Path(out_dir)
    if isinstance(teacher_path, Teacher):
        teacher = teacher_path
    else:
        if probe_path is None:
            guess = Path(teacher_path) / "probe"
            probe_path = guess if guess.is_dir() else None
        teacher = load_teacher_for_distill(teacher_path, probe_dir=probe_path)
    teacher_probes = load_probes(probe_path, teacher.latent_dim) if probe_path else {}
    splits = _task_splits(ds, teacher.spec, teacher.norm_config)
    trials = {t: sp["eval"] for t, sp in splits.items()}
    say("teacher features of the evaluation trials ...")
    teacher_z = {t: teacher.encode_numpy(X) for t, (X, _, _) in trials.items()}
    pool: dict | None = None

    designs, candidates = [], {}
    for arch in archs:
        cand = out_dir / "candidates" / arch
        candidates[arch] = cand
        if _reusable(cand, teacher, cfg):
            say(f"--- {arch}: reusing the candidate in {cand} ---")
            metrics = json.loads((cand / "metrics.json").read_text())
        else:
            say(f"--- {arch}: distilling ---")
            pool = pool or teacher_pool(ds, teacher, cfg, progress=say)
            metrics = distill(ds, teacher, cand, arch=arch, config=cfg, pool=pool, progress=say)
            say(f"--- {arch}: int8 bundle ---")
            qcfg = QuantizeConfig(min_cosine=1e-6, min_agreement=1e-6, latency_budget_ms=1e6,
                                  probe_source="teacher" if teacher_probes else "refit",
                                  latency_runs=50, keep_work=True)
            build_bundle(ds, cand, probe_path, cand / "bundle", config=qcfg, overwrite=True,
                         progress=say)
            work = cand / "bundle.work"
            shutil.copyfile(work / "tflite" / "student_float32.tflite", cand / FLOAT_MODEL)
            shutil.rmtree(work, ignore_errors=True)
        model, meta = load_student(cand)
        center = np.asarray(meta["latent_center"])
        row: dict = {"arch": arch, "parameters": metrics["parameters"],
                     "train_seconds": metrics["train_seconds"], "heldout": metrics["val"],
                     "tasks": {}}
        trial_float = {t: predict(model, X) for t, (X, _, _) in trials.items()}
        if trials:
            row["trials_fidelity"] = latent_fidelity(
                np.concatenate(list(trial_float.values())), np.concatenate(list(teacher_z.values())),
                center)
        for task, (_, y, _) in trials.items():
            X_train, y_train, tr = splits[task]["train"]
            e: dict = {}
            if task in teacher_probes:
                p = teacher_probes[task]
                e["ba_teacher"] = balanced_accuracy(y, p.p_perceived(teacher_z[task]) >= p.threshold)
                e["ba_student_teacher_probe"] = balanced_accuracy(
                    y, p.p_perceived(trial_float[task]) >= p.threshold)
            if len(np.unique(y_train)) == 2:
                refit = fit_probe(predict(model, X_train), y_train, task,
                                  folds=blocked_folds(tr.session, tr.onset_sample))
                e["ba_student_refit"] = balanced_accuracy(
                    y, refit.p_perceived(trial_float[task]) >= 0.5)
            row["tasks"][task] = e
        manifest = json.loads((cand / "bundle" / "manifest.json").read_text())
        report = manifest["parity"]
        row["int8"] = {"cosine_mean": report["latent"]["cosine_mean"],
                       "cosine_min": report["latent"]["cosine_min"],
                       "decision_agreement": report["decision_agreement"],
                       "operators": manifest["model"]["operators"]}
        for task, e in report["tasks"].items():
            row["tasks"].setdefault(task, {})["ba_int8"] = e.get("ba_int8")
        designs.append(row)

    say(f"timing every design round-robin ({latency_runs} decisions each, 1 thread) ...")
    windows = heldout_resting_windows(ds, teacher.spec, teacher.norm_config, 128,
                                      heldout_fraction=cfg.heldout_fraction)
    latency = interleaved_latency(candidates, windows, latency_runs)
    for row in designs:
        row["int8"].update(latency[row["arch"]])

    winner = choose_winner(designs)
    src = out_dir / "candidates" / winner
    shutil.copyfile(src / "student.pt", out_dir / "student.pt")
    shutil.copyfile(src / "metrics.json", out_dir / "metrics.json")
    table = format_comparison(designs, winner, cfg=cfg, ds=ds)
    result = {"designs": designs, "winner": winner, "table": table, "rule": RULE}
    write_json(out_dir / "compare.json", result)
    write_text(out_dir / "compare.md", table + "\n")
    if results_md:  # a docs file changes only when asked
        replace_section(results_md, STUDENTS_BEGIN, STUDENTS_END, table)
    say(f"winner: {winner}; table in {out_dir / 'compare.md'}"
        + (f" and {results_md}" if results_md else ""))
    return result


def choose_winner(designs: list[dict]) -> str:
    """RULE, applied: parity gate, then fidelity and accuracy gates, then the fastest."""
    from phosphene.quantize.build import QuantizeConfig

    defaults = QuantizeConfig()
    for r in designs:
        r["int8"]["passes_parity"] = bool(r["int8"]["cosine_mean"] >= defaults.min_cosine and
                                          r["int8"]["decision_agreement"] >= defaults.min_agreement)
    pool = [r for r in designs if r["int8"]["passes_parity"]] or designs

    def fidelity(r) -> float:
        return r.get("trials_fidelity", r["heldout"])["cosine_centred_mean"]

    def int8_ba(r) -> float:
        vals = [e["ba_int8"] for e in r["tasks"].values() if e.get("ba_int8") is not None]
        return float(np.mean(vals)) if vals else 0.0

    best_fid = max(fidelity(r) for r in pool)
    pool = [r for r in pool if fidelity(r) >= best_fid - FIDELITY_TOLERANCE]
    best_ba = max(int8_ba(r) for r in pool)
    pool = [r for r in pool if int8_ba(r) >= best_ba - BA_TOLERANCE]
    return min(pool, key=lambda r: r["int8"]["decision_median_us"])["arch"]


def _operators(bundle_dir: Path) -> list[str]:
    import json

    return json.loads((bundle_dir / "manifest.json").read_text())["model"]["operators"]


def _pct(v) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def format_comparison(designs: list[dict], winner: str, *, cfg, ds: Dataset) -> str:
    """The markdown table of docs/results.md's "Student designs" section."""
    tasks = sorted({t for r in designs for t in r["tasks"]})
    lines = [
        "## Student designs",
        "",
        (f"Distilled on {cfg.pool_windows} resting windows and the unlabelled stimulation "
         f"windows of `{ds.path.name}` ({cfg.steps} steps, student preset "
         f"`{cfg.student_preset}`); fidelity on held-out resting windows (tail of every "
         "session) and on the evaluation-trial windows; balanced accuracy (BA, %) on the "
         "evaluation set (the paper's test split for a dataset without one). "
         "Latency: one thread, LiteRT, median per decision (quantise + invoke + probe) for int8, "
         "per invoke for float32. Reproduce: `phosphene distill DATA --teacher RUN --out "
         "STUDENT --compare --probe RUN/probe`."),
        "",
        "| design | params | cos held-out (centred) | R2 | cos trials (centred) | "
        + " | ".join(f"BA {t}: teacher / student (teacher probe) / refit / int8" for t in tasks)
        + " | int8 cos vs float (min) | decision agreement | float32 TFLite invoke us | "
        "int8 invoke us | int8 decision us | float32 / int8 invoke |",
        "|---" * (11 + len(tasks)) + "|",
    ]
    for r in designs:
        h, tf = r["heldout"], r.get("trials_fidelity", {})
        cells = []
        for t in tasks:
            e = r["tasks"].get(t, {})
            cells.append(" / ".join(_pct(e.get(k)) for k in (
                "ba_teacher", "ba_student_teacher_probe", "ba_student_refit", "ba_int8")))
        q = r["int8"]
        name = f"**{r['arch']}** (kept)" if r["arch"] == winner else r["arch"]
        lines.append(
            f"| {name} | {r['parameters']:,} | {h['cosine_mean']:.4f} ({h['cosine_centred_mean']:.3f}) "
            f"| {h['r2']:.3f} | "
            + (f"{tf['cosine_mean']:.4f} ({tf['cosine_centred_mean']:.3f})" if tf else "-")
            + " | " + " | ".join(cells)
            + f" | {q['cosine_mean']:.4f} ({q['cosine_min']:.4f}) | {q['decision_agreement']:.3f} "
            f"| {q['float32_tflite_median_us']:.0f} | {q['invoke_median_us']:.0f} "
            f"| {q['decision_median_us']:.0f} | {q['float32_tflite_median_us'] / q['invoke_median_us']:.2f}x |")
    lines.append("")
    lines.append(f"Kept: {winner}. Rule: {RULE}.")
    lines.append("")
    lines.append("int8 operators: " + "; ".join(f"{r['arch']}: {', '.join(r['int8']['operators'])}"
                                                 for r in designs))
    return "\n".join(lines)
