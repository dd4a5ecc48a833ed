"""Cross-architecture parity of a bundle: the same windows through the int8 encoder here and there.

Runs on both sides with only numpy and phosphene's edge path (no TensorFlow), so the arm64
Python under qemu runs this very file:

    python arm64/parity.py windows BUNDLE windows.npy            # the fixed set (host)
    python arm64/parity.py run BUNDLE windows.npy out/x86        # x86 side
    arm64/.cache/bin/py-litert arm64/parity.py run BUNDLE windows.npy out/arm64
    python arm64/parity.py compare out/x86 out/arm64 --json      # exit 1 if they disagree

`run` writes latents_int8.npy (N, D) int8 (the model's raw output tensor), p_perceived.npy
(N,) float64, decisions.json and info.json (interpreter, version, platform.machine(), numpy,
Python, glibc, qemu CPU). `compare` passes when every int8 output is equal or within one
quantisation step (kernels may round differently between architectures) and every decision
is equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

# Within one step of the output quantisation: what a different (correct) kernel may round to.
MAX_INT8_STEPS = 1


def make_windows(bundle_path: str, n_windows: int = 64, seed: int = 0) -> np.ndarray:
    """A fixed set of normalised windows -> (N, T, C) float32.

    Mostly z-scored-like Gaussian windows, plus the cases where kernels could part ways:
    all zeros, saturating values beyond the input range (clipping), a constant, and
    single-channel spikes.
    """
    from phosphene.edge.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    T, C = bundle.window_spec.window_samples, bundle.n_channels  # samples, channels
    lo, hi = bundle.input_quant.real_range
    rng = np.random.default_rng(seed)
    n_special = 4
    windows = rng.standard_normal((max(n_windows, n_special + 1), T, C)).astype(np.float32)
    windows[1::7] *= 3.0  # some windows louder than calibration
    windows[0] = 0.0
    windows[1] = np.where(rng.random((T, C)) < 0.5, 2 * lo, 2 * hi)  # beyond the int8 range
    windows[2] = 0.5 * hi
    windows[3] = 0.0
    rows = np.arange(0, T, 16)
    windows[3, rows, rng.integers(0, C, size=len(rows))] = hi
    return windows[:max(n_windows, n_special + 1)]


def _qemu_cpu() -> str | None:
    return os.environ.get("QEMU_CPU") or None


def _kernel_name() -> str:
    try:
        from phosphene.edge.kernel import kernel_name
    except ImportError:  # a phosphene from before the kernel
        return "numpy"
    return kernel_name()


def run_windows(bundle_path: str, windows: np.ndarray, runtime: str = "auto") -> dict:
    """Decode every window with the bundle; -> arrays and the side's description."""
    from phosphene.edge.bundle import load_bundle
    from phosphene.edge.interpreter import Encoder

    bundle = load_bundle(bundle_path)
    encoder = Encoder(bundle, threads=1, runtime=runtime)
    buffer = np.zeros(encoder.model.input_shape, dtype=encoder.input_quant.dtype)
    latents, p_perceived, decisions = [], [], []
    for window in windows:
        # The raw int8 output tensor (what the kernels computed), then the runtime's own
        # decision path on the same window.
        encoder.input_quant.quantize(window.reshape(buffer.shape), out=buffer)
        latents.append(encoder.model.run_raw(buffer).reshape(-1).copy())
        decision = encoder.decide(window)
        p_perceived.append(decision.p_perceived)
        decisions.append(bool(decision.perceived))
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libc": " ".join(platform.libc_ver()),
        "numpy": np.__version__,
        "runtime": encoder.model.runtime_name,
        "runtime_version": encoder.model.runtime_version,
        "kernel": _kernel_name(),  # the wheel the arm64 check builds is pure Python: "numpy"
        "qemu_cpu": _qemu_cpu() if platform.machine() != "x86_64" else None,
        "bundle": str(bundle.path),
        "model_sha256": bundle.manifest["files"][bundle.manifest["model"]["file"]]["sha256"],
        "n_windows": len(windows),
        "output_quant": encoder.output_quant.to_dict(),
    }
    return {"latents_int8": np.stack(latents), "p_perceived": np.asarray(p_perceived, dtype=np.float64),
            "decisions": decisions, "info": info}


def save_run(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "latents_int8.npy", result["latents_int8"])
    np.save(out / "p_perceived.npy", result["p_perceived"])
    (out / "decisions.json").write_text(json.dumps(result["decisions"]))
    (out / "info.json").write_text(json.dumps(result["info"], indent=2))


def compare_runs(reference: Path, other: Path) -> dict:
    """Compare two `run` folders -> the agreement report (ok: within one step, decisions equal)."""
    ref_info = json.loads((reference / "info.json").read_text())
    oth_info = json.loads((other / "info.json").read_text())
    a = np.load(reference / "latents_int8.npy").astype(np.int32)
    b = np.load(other / "latents_int8.npy").astype(np.int32)
    if a.shape != b.shape:
        raise ValueError(f"{reference} has latents {a.shape} but {other} has {b.shape}: "
                         "were they run on the same windows and bundle?")
    if ref_info["model_sha256"] != oth_info["model_sha256"]:
        raise ValueError(f"{reference} and {other} ran different models")
    diff = np.abs(a - b)
    dec_a = json.loads((reference / "decisions.json").read_text())
    dec_b = json.loads((other / "decisions.json").read_text())
    p_a, p_b = np.load(reference / "p_perceived.npy"), np.load(other / "p_perceived.npy")
    agree = [x == y for x, y in zip(dec_a, dec_b)]
    report = {
        "reference": ref_info, "other": oth_info,
        "n_windows": int(a.shape[0]), "latent_dim": int(a.shape[1]),
        "int8_max_abs_diff": int(diff.max()) if diff.size else 0,
        "int8_values_equal_fraction": float((diff == 0).mean()) if diff.size else 1.0,
        "windows_bit_identical": int((diff == 0).all(axis=1).sum()),
        "p_perceived_max_abs_diff": float(np.abs(p_a - p_b).max()) if len(p_a) else 0.0,
        "decision_agreement": float(np.mean(agree)) if agree else 1.0,
        "decisions_differ_at": [i for i, ok in enumerate(agree) if not ok],
        "max_int8_steps_allowed": MAX_INT8_STEPS,
    }
    report["ok"] = bool(report["int8_max_abs_diff"] <= MAX_INT8_STEPS and all(agree))
    return report


def _side(info: dict) -> str:
    cpu = f", QEMU_CPU={info['qemu_cpu'] or 'max'}" if info["machine"] != "x86_64" else ""
    return f"{info['machine']} {info['runtime']} {info['runtime_version']}{cpu}"


def format_report(report: dict) -> str:
    return (f"{_side(report['reference'])} vs {_side(report['other'])}: "
            f"{report['n_windows']} windows x {report['latent_dim']} int8 values, "
            f"max |diff| {report['int8_max_abs_diff']} step(s), "
            f"{100 * report['int8_values_equal_fraction']:.2f}% values equal, "
            f"{report['windows_bit_identical']}/{report['n_windows']} windows bit-identical, "
            f"decision agreement {100 * report['decision_agreement']:.1f}% -> "
            + ("OK" if report["ok"] else "MISMATCH"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("windows", help="write the fixed window set for BUNDLE")
    w.add_argument("bundle")
    w.add_argument("out")
    w.add_argument("--n", type=int, default=64)
    w.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="decode the windows with BUNDLE here, save outputs")
    r.add_argument("bundle")
    r.add_argument("windows")
    r.add_argument("out")
    r.add_argument("--runtime", default="auto", choices=["auto", "litert", "tflite-runtime"])
    c = sub.add_parser("compare", help="compare two run folders (exit 1 on disagreement)")
    c.add_argument("reference")
    c.add_argument("other")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "windows":
            np.save(args.out, make_windows(args.bundle, args.n, args.seed))
            return 0
        if args.command == "run":
            result = run_windows(args.bundle, np.load(args.windows), args.runtime)
            save_run(result, Path(args.out))
            print(f"{_side(result['info'])}: {len(result['decisions'])} windows -> {args.out}",
                  file=sys.stderr)
            return 0
        report = compare_runs(Path(args.reference), Path(args.other))
    except (ValueError, OSError, ImportError) as exc:  # BundleError is a ValueError
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
