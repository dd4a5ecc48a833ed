"""Inference latency of every encoder form, side by side in one process, one thread.

    python bench/bench_inference.py --quick                     # random-weight models, < 1 min warm
    python bench/bench_inference.py --teacher RUN --student STUDENT --bundle BUNDLE
    python bench/bench_inference.py --scaling                   # channels 96/256/1024, window 64/128/256
    python bench/bench_inference.py ... --docs docs/benchmarks.md  # also update the inference section

Forms, all on the same windows with batch 1 and one thread: the teacher in torch eager,
the student in torch eager, the student in ONNX Runtime float32, the student in LiteRT
float32, the int8 bundle in LiteRT (a whole decision: quantise + invoke + dequantise +
probe, and invoke alone), and the int8 bundle in tflite-runtime 2.14 (a subprocess in the
numpy<2 env of scripts/make_tflite_env.sh, when it exists). Ratios are against the int8
bundle's decision. Without --teacher/--student/--bundle the models are random-weight
ones of the same designs (latency does not depend on the weights); conversions are cached
under bench/results/cache. Results: a table and bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, save, table

ROOT = Path(__file__).resolve().parents[1]
CACHE = RESULTS / "cache"
INFERENCE_BEGIN = "<!-- inference:begin -->"
INFERENCE_END = "<!-- inference:end -->"

TFLITE_HELPER = r"""
import json, sys, time
import numpy as np
from phosphene.edge.bundle import load_bundle
from phosphene.edge.interpreter import Encoder
bundle, windows, runs = load_bundle(sys.argv[1]), np.load(sys.argv[2]), int(sys.argv[3])
enc = Encoder(bundle, threads=1, runtime="tflite-runtime")
for w in windows[:10]:
    enc.decide(w)
t = []
for i in range(runs):
    t0 = time.perf_counter(); enc.decide(windows[i % len(windows)]); t.append(time.perf_counter() - t0)
print(json.dumps({"times_s": t, "version": enc.model.runtime_version}))
"""


def timed(fn, windows: np.ndarray, runs: int, warmup: int = 10, budget_s: float = 20.0) -> dict:
    """Median/p99 of fn(window) over `runs` calls (fewer if they exceed budget_s), in us."""
    for i in range(warmup):
        fn(windows[i % len(windows)])
    times = []
    start = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        fn(windows[i % len(windows)])
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 5:
            break
    a = np.asarray(times) * 1e6
    return {"median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99)), "n": len(a)}


# --------------------------------------------------------------------------------------
# Models: the real ones, or random-weight ones of the same designs
# --------------------------------------------------------------------------------------
def random_teacher(n_channels: int, spec, preset: str):
    import torch

    from phosphene.train.config import MAEConfig
    from phosphene.train.mae import build_model

    torch.manual_seed(0)
    return build_model(MAEConfig.preset(preset, n_channels=n_channels, spec=spec, n_sessions=4)).eval()


def random_student(n_channels: int, spec, arch: str, preset: str, latent_dim: int):
    import torch

    from phosphene.train.student import build_student, student_config

    torch.manual_seed(0)
    model = build_student(student_config(arch, spec=spec, n_channels=n_channels,
                                         latent_dim=latent_dim, preset=preset))
    model.train()
    with torch.no_grad():  # settle BatchNorm statistics on window-like data
        model(torch.randn(256, spec.window_samples, n_channels).clamp(-8, 8))
    return model.eval()


def converted(model, spec, n_channels: int, calib: np.ndarray) -> dict:
    """ONNX + onnx2tf float32 and full-int8 TFLite of a student, cached by weights and shape."""
    import torch

    from phosphene.quantize.convert import check_builtin_only, convert_int8, export_onnx
    from phosphene.train.student import export_ready

    ready = export_ready(model)
    h = hashlib.sha256(str((spec.to_dict(), n_channels)).encode())
    for v in ready.state_dict().values():
        h.update(v.detach().numpy().tobytes())
    h.update(np.ascontiguousarray(calib[:8]).tobytes())
    work = CACHE / h.hexdigest()[:16]
    onnx_path, int8, f32 = work / "student.onnx", work / "tflite" / "student_full_integer_quant.tflite", \
        work / "tflite" / "student_float32.tflite"
    if not (int8.is_file() and f32.is_file()):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with torch.no_grad():
            export_onnx(ready, (1, spec.window_samples, n_channels), onnx_path)
        print(f"  converting {n_channels} ch x {spec.window_samples} samples with onnx2tf ...",
              file=sys.stderr, flush=True)
        convert_int8(onnx_path, calib, work)
    check_builtin_only(int8)
    return {"onnx": onnx_path, "float32": f32, "int8": int8, "export_model": ready}


def bundle_from_int8(int8_path: Path, spec, n_channels: int, latent_dim: int, out: Path) -> Path:
    """A minimal bundle around an int8 model (random-weight mode), for the edge Encoder."""
    from phosphene.edge.bundle import BundleSpec, Probe, write_bundle
    from phosphene.edge.interpreter import TFLiteModel
    from phosphene.geometry import map_for_channels
    from phosphene.signal import NormaliserConfig

    m = TFLiteModel(int8_path, runtime="litert")
    w = np.random.default_rng(0).normal(0, 1 / np.sqrt(latent_dim), latent_dim)
    write_bundle(out, BundleSpec(
        model=int8_path.read_bytes(), probes={"psychometric": Probe("psychometric", w, 0.0)},
        task="psychometric", channel_map=map_for_channels(n_channels), window=spec,
        normaliser=NormaliserConfig(), input_quant=m.input_quant, output_quant=m.output_quant,
        latency_budget_ms=16.0), overwrite=True)
    return out


# --------------------------------------------------------------------------------------
# One side-by-side measurement
# --------------------------------------------------------------------------------------
def measure(teacher, student, bundle_dir: Path | None, spec, n_channels: int, *, runs: int,
            teacher_runs: int, tflite_python: Path | None, windows: np.ndarray | None = None,
            label: str = "") -> dict:
    import onnxruntime as ort
    import torch

    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.interpreter import Encoder, TFLiteModel

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    T = spec.window_samples
    if windows is None:
        windows = np.clip(rng.standard_normal((64, T, n_channels)), -8, 8).astype(np.float32)
    latent_dim = student.cfg.latent_dim
    calib = windows if len(windows) >= 32 else np.concatenate([windows] * 4)
    conv = converted(student, spec, n_channels, calib)
    tmp = None
    if bundle_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
        bundle_dir = bundle_from_int8(conv["int8"], spec, n_channels, latent_dim, tmp / "bundle")
    bundle = load_bundle(bundle_dir)
    enc = Encoder(bundle, threads=1, runtime="litert")
    rows = {}

    def torch_fn(m, encode: bool):
        def f(w):
            with torch.no_grad():
                x = torch.from_numpy(w[None])
                return (m.encode(x) if encode else m(x)).numpy()
        return f

    if teacher is not None:
        rows["teacher torch eager"] = timed(torch_fn(teacher, True), windows, teacher_runs)
    rows["student torch eager"] = timed(torch_fn(student, False), windows, runs)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(conv["onnx"]), so, providers=["CPUExecutionProvider"])
    rows["student ONNX Runtime float32"] = timed(lambda w: sess.run(None, {"window": w[None]}),
                                                 windows, runs)
    f32 = TFLiteModel(conv["float32"], threads=1, runtime="litert")
    rows["student LiteRT float32"] = timed(lambda w: f32.run(w[None]), windows, runs)
    rows["bundle LiteRT int8 (decision)"] = timed(enc.decide, windows, runs)
    qbuf = np.zeros(enc.model.input_shape, np.int8)
    enc.input_quant.quantize(windows[0].reshape(qbuf.shape), out=qbuf)
    rows["bundle LiteRT int8 (invoke only)"] = timed(lambda w: enc.model.run_raw(qbuf), windows, runs)
    if tflite_python is not None and tflite_python.is_file():
        np.save(tmp_w := Path(tempfile.mkdtemp()) / "w.npy", windows)
        proc = subprocess.run([str(tflite_python), "-c", TFLITE_HELPER, str(bundle_dir), str(tmp_w),
                               str(runs)], capture_output=True, text=True, timeout=600,
                              check=False)
        if proc.returncode == 0:
            t = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1])["times_s"]) * 1e6
            rows["bundle tflite-runtime 2.14 int8 (decision, subprocess)"] = {
                "median_us": float(np.median(t)), "p99_us": float(np.percentile(t, 99)), "n": len(t)}
        else:
            print(f"  tflite-runtime run failed: {proc.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
    ref = rows["bundle LiteRT int8 (decision)"]["median_us"]
    out = []
    for name, r in rows.items():
        out.append({"form": name, "median_us": r["median_us"], "p99_us": r["p99_us"], "n": r["n"],
                    "x_int8_decision": r["median_us"] / ref})
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"label": label, "n_channels": n_channels, "window_samples": T,
            "student": {"arch": student.cfg.arch, "config": student.cfg.to_dict()},
            "rows": out}


def print_rows(result: dict) -> None:
    title = (f"{result['label']}: {result['n_channels']} channels x {result['window_samples']} "
             f"samples, 1 thread, batch 1")
    print(table([{"form": r["form"], "median us": r["median_us"], "p99 us": r["p99_us"],
                  "runs": r["n"], "x int8 decision": r["x_int8_decision"]} for r in result["rows"]],
                ["form", "median us", "p99 us", "runs", "x int8 decision"], title=title))
    print()


def accuracy_md(bundle_dir: Path) -> str:
    """The bundle's parity report as a markdown table: student vs teacher, int8 vs float."""
    man = json.loads((bundle_dir / "manifest.json").read_text())
    p = man["parity"]
    lines = [f"Accuracy of the same bundle (`{bundle_dir.name}`, {man['model']['arch']} student, "
             f"probe source: {man['probe']['source']}); balanced accuracy on the test split, "
             "points:", "",
             "| task | teacher | float student | int8 student | student - teacher | int8 - float "
             "| refit on student (float / int8) | decision agreement int8 vs float |",
             "|---|---|---|---|---|---|---|---|"]
    for task, e in p["tasks"].items():
        t, f, i = (100 * e.get(k, float("nan")) for k in ("ba_teacher", "ba_float_student",
                                                           "ba_int8_student"))
        lines.append(f"| {task} | {t:.1f} | {f:.1f} | {i:.1f} | {f - t:+.1f} | {i - f:+.1f} | "
                     f"{100 * e.get('ba_refit_float_student', float('nan')):.1f} / "
                     f"{100 * e.get('ba_refit_int8_student', float('nan')):.1f} | "
                     f"{e.get('decision_agreement', float('nan')):.3f} |")
    lat = p["latent"]
    lines += ["", f"int8 vs float student latents: cosine mean {lat['cosine_mean']:.4f} (min "
              f"{lat['cosine_min']:.4f}), max abs error {lat['max_abs_error']:.3f} over "
              f"{lat['n_windows']} held-out windows; overall decision agreement "
              f"{p['decision_agreement']:.3f}."]
    return "\n".join(lines)


def docs_section(main: dict, scaling: list[dict] | None, extra_md: str) -> str:
    m = machine()
    lines = ["## Inference: teacher, student, int8 bundle", "",
             "`python bench/bench_inference.py` runs every form in one process on the same "
             "windows, one thread, batch 1; ratios are against the int8 bundle's whole decision "
             "(quantise + invoke + dequantise + probe).", "",
             f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}; "
             f"median of {main['rows'][0]['n']}+ runs. Reproduce: `python bench/bench_inference.py "
             f"{' '.join(main.get('argv', []))}`.", "",
             "| form | median us | p99 us | x int8 decision |", "|---|---|---|---|"]
    for r in main["rows"]:
        lines.append(f"| {r['form']} | {r['median_us']:,.0f} | {r['p99_us']:,.0f} | "
                     f"{r['x_int8_decision']:.2f} |")
    if scaling:
        lines += ["", "Scaling (random-weight models of the same designs; student `mixer`):", "",
                  "| channels x samples | teacher torch us | student LiteRT float32 us | "
                  "int8 decision us | teacher / int8 | float32 / int8 invoke |", "|---|---|---|---|---|---|"]
        for s in scaling:
            r = {x["form"]: x for x in s["rows"]}
            t = r.get("teacher torch eager", {}).get("median_us")
            f = r["student LiteRT float32"]["median_us"]
            d = r["bundle LiteRT int8 (decision)"]["median_us"]
            inv = r["bundle LiteRT int8 (invoke only)"]["median_us"]
            t_cell = f"{t:,.0f}" if t else "-"
            ratio = f"{t / d:,.0f}x" if t else "-"
            lines.append(f"| {s['n_channels']} x {s['window_samples']} | {t_cell} | {f:,.0f} | "
                         f"{d:,.0f} | {ratio} | {f / inv:.2f}x |")
    if extra_md:
        lines += ["", extra_md]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, no scaling (< 1 min warm)")
    ap.add_argument("--teacher", type=Path, help="teacher run (pretrain --out)")
    ap.add_argument("--student", type=Path, help="student directory (distill --out)")
    ap.add_argument("--bundle", type=Path, help="bundle directory (quantize --out)")
    ap.add_argument("--dataset", type=Path, help="dataset for real windows (with --student)")
    ap.add_argument("--scaling", action="store_true", help="also channels 96/256/1024, window 64/128/256")
    ap.add_argument("--teacher-preset", default="small", help="random teacher size [small]")
    ap.add_argument("--tflite-python", type=Path, default=ROOT / ".venv-tflite" / "bin" / "python",
                    help="python of the tflite-runtime env (scripts/make_tflite_env.sh)")
    ap.add_argument("--runs", type=int, default=None, help="runs per form [2000; quick 300]")
    ap.add_argument("--docs", type=Path, help="update the inference section of this markdown file")
    ap.add_argument("--docs-extra", type=Path, help="markdown file appended to that section")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from phosphene.signal import WindowSpec

    runs = args.runs or (300 if args.quick else 2000)
    teacher_runs = 30 if args.quick else 200
    if args.student:
        from phosphene.train.distill import load_student

        student, meta = load_student(args.student)
        spec, n_channels = WindowSpec.from_dict(meta["window_spec"]), int(meta["n_channels"])
    else:
        spec, n_channels = WindowSpec(), 96
        student = random_student(n_channels, spec, "mixer", "small", 128)
    if args.teacher:
        from phosphene.train.checkpoint import load_teacher

        teacher, _ = load_teacher(args.teacher)
    else:
        teacher = random_teacher(n_channels, spec, args.teacher_preset)
    windows = None
    if args.dataset:
        from phosphene.dataset import Dataset
        from phosphene.signal import NormaliserConfig
        from phosphene.train.distill import heldout_resting_windows

        norm = NormaliserConfig.from_dict(meta["normaliser"]) if args.student else NormaliserConfig()
        windows = heldout_resting_windows(Dataset.open(args.dataset), spec, norm, 256)
    label = "real models" if args.student and args.teacher and args.bundle else "random-weight models"
    result = measure(teacher, student, args.bundle, spec, n_channels, runs=runs,
                     teacher_runs=teacher_runs, tflite_python=args.tflite_python, windows=windows,
                     label=label)
    result["argv"] = sys.argv[1:] if argv is None else argv
    print_rows(result)
    scaling = []
    if args.scaling and not args.quick:
        for C, T in ((96, 128), (256, 128), (1024, 128), (96, 64), (96, 256)):
            s_spec = WindowSpec(window_samples=T, patch_samples=spec.patch_samples)
            s_student = random_student(C, s_spec, "mixer", "small", 128)
            s_teacher = random_teacher(C, s_spec, args.teacher_preset)
            r = measure(s_teacher, s_student, None, s_spec, C, runs=min(runs, 1000),
                        teacher_runs=20, tflite_python=None, label="scaling")
            print_rows(r)
            scaling.append(r)
    path = save("inference", {"main": result, "scaling": scaling})
    print(f"results: {path}")
    if args.docs:
        sys.path.insert(0, str(ROOT))
        from phosphene.quantize.compare import replace_section

        extra = args.docs_extra.read_text() if args.docs_extra else ""
        if args.bundle and (args.bundle / "manifest.json").is_file():
            extra = accuracy_md(args.bundle) + ("\n\n" + extra if extra else "")
        replace_section(args.docs, INFERENCE_BEGIN, INFERENCE_END,
                        docs_section(result, scaling, extra))
        print(f"updated {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
