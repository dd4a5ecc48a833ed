"""Why the TFLite interpreters crash or differ under qemu-user: the matrix behind docs/deploy.md.

    bash arm64/findings.sh        # builds both qemu set-ups, then runs this with the x86 .venv

Each row runs arm64/interp_repro.py (one fixed int8 input, one invoke) in one configuration:
qemu 7.2 (Debian bookworm's qemu-user-static) or qemu 10.0 (Debian trixie's qemu-user), the
guest's /proc/cpuinfo (qemu 7.2 passes the host's x86 file through; a file at
SYSROOT/proc/cpuinfo replaces it, because qemu resolves guest paths under -L first), the
emulated core (QEMU_CPU), the interpreter and its op resolver. The output is compared with
the same interpreter on x86. Models: the tiny bundle's encoder (conv -> mean -> dense) and a
single int8 FULLY_CONNECTED over a 3-D input (what an MLP-Mixer student's dense layers
become). Writes arm64/.cache/findings/findings.json and prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PHOSPHENE_ARM64_CACHE", REPO / "arm64" / ".cache"))
HOST_PY = Path(os.environ.get("PHOSPHENE_HOST_PYTHON", REPO / ".venv" / "bin" / "python"))
OUT = CACHE / "findings"
REPRO = REPO / "arm64" / "interp_repro.py"
QEMU10 = CACHE / "qemu" / "usr" / "bin" / "qemu-aarch64"
ROOT = CACHE / "root"  # no proc/cpuinfo: qemu 7.2 shows the guest the host's
ROOT_ARMINFO = CACHE / "root-qemu7"  # with an arm64 proc/cpuinfo (arm64/cpuinfo-cortex-a76.txt)


def log(msg: str) -> None:
    print(f"[arm64 findings] {msg}", file=sys.stderr, flush=True)


def fc3d_model(path: Path) -> Path:
    """One int8 FULLY_CONNECTED on a (1, 8, 32) input (keep_num_dims), made with TensorFlow."""
    if path.exists():
        return path
    code = r"""
import sys, numpy as np, tensorflow as tf
rng = np.random.default_rng(0)
i = tf.keras.Input((8, 32), batch_size=1)
m = tf.keras.Model(i, tf.keras.layers.Dense(64)(i))
c = tf.lite.TFLiteConverter.from_keras_model(m)
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = lambda: ([rng.standard_normal((1, 8, 32)).astype(np.float32)] for _ in range(32))
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
c.inference_input_type = c.inference_output_type = tf.int8
open(sys.argv[1], "wb").write(c.convert())
"""
    subprocess.run([str(HOST_PY), "-c", code, str(path)], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return path


def run_repro(prefix: list[str], env: dict | None, model: Path, runtime: str, resolver: str) -> dict:
    cmd = [*prefix, str(REPRO), str(model), "--runtime", runtime, "--resolver", resolver]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    stages = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("stage ")]
    last = stages[-1] if stages else "start"
    if proc.returncode != 0:
        # qemu-user re-raises the guest's fatal signal on itself: -11 is a guest SIGSEGV
        rc = proc.returncode
        sig = signal.Signals(-rc).name if rc < 0 else f"exit {rc}"
        where = {"start": "import", "import": "Interpreter()", "created": "allocate_tensors()",
                 "allocated": "invoke()"}.get(last, last)
        return {"ok": False, "result": f"{sig} in {where}"}
    return {"ok": True, "output": json.loads(proc.stdout.splitlines()[-1])["output"]}


def guest(qemu: str, sysroot: Path, site: str, qemu_cpu: str | None) -> tuple[list[str], dict]:
    """-> (command prefix, full environment) for the arm64 Python; no QEMU_CPU: qemu's "max"."""
    env = {k: v for k, v in os.environ.items() if k not in ("QEMU_CPU", "PYTHONHOME")}
    env.update(PYTHONPATH=str(CACHE / f"site-{site}"), PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1")
    if qemu_cpu:
        env["QEMU_CPU"] = qemu_cpu
    return [qemu, "-L", str(sysroot), str(sysroot / "usr" / "bin" / "python3.11")], env


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    qemu7 = shutil.which("qemu-aarch64-static")
    if not qemu7 or not ROOT_ARMINFO.exists() or not QEMU10.exists():
        log("run `bash arm64/findings.sh` (it builds both qemu set-ups first)")
        return 1
    tiny = CACHE / "check" / "tiny-bundle" / "model.tflite"
    if not tiny.exists():
        log(f"{tiny} is missing: run `bash arm64/check.sh --quick` first")
        return 1
    models = {"tiny bundle encoder": tiny, "FULLY_CONNECTED on 3-D input": fc3d_model(OUT / "fc3d.tflite")}
    from check import x86_tflite_python  # arm64/check.py, beside this file

    x86 = {"litert": ([str(HOST_PY)], None), "tflite-runtime": ([str(x86_tflite_python())], None)}
    v7 = subprocess.run([qemu7, "--version"], check=True, capture_output=True, text=True).stdout.split()[2]
    v10 = subprocess.run([str(QEMU10), "--version"], check=True, capture_output=True, text=True).stdout.split()[2]

    rows = []  # (qemu or "none (x86)", cpuinfo, QEMU_CPU, runtime, resolver, model)
    for model in models:
        for runtime in ("litert", "tflite-runtime"):
            for resolver in ("auto", "BUILTIN_REF"):
                rows.append(("none (x86)", "-", None, runtime, resolver, model))
        for resolver in ("auto", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF"):
            rows.append(("7.2", "host x86", None, "litert", resolver, model))
        rows.append(("7.2", "host x86", "cortex-a76", "litert", "auto", model))
        for cpu in (None, "max,sme=off", "cortex-a76", "cortex-a72"):
            rows.append(("7.2", "arm64 file (A76)", cpu, "litert", "auto", model))
        rows.append(("7.2", "arm64 file (A76)", None, "litert", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", model))
        for cpu in (None, "cortex-a72", "cortex-a76"):
            rows.append(("10.0", "emulated", cpu, "litert", "auto", model))
        rows.append(("7.2", "arm64 file (A76)", "cortex-a76", "tflite-runtime", "auto", model))
        for cpu in (None, "cortex-a72"):
            rows.append(("10.0", "emulated", cpu, "tflite-runtime", "auto", model))
        rows.append(("10.0", "emulated", None, "tflite-runtime", "BUILTIN_REF", model))

    results, outputs = [], {}
    for qemu_version, cpuinfo, cpu, runtime, resolver, model in rows:
        if qemu_version == "none (x86)":
            prefix, env = x86[runtime]
        else:
            qemu = qemu7 if qemu_version == "7.2" else str(QEMU10)
            # qemu 10 answers /proc/cpuinfo itself, so it runs on the plain sysroot
            sysroot = ROOT_ARMINFO if cpuinfo.startswith("arm64 file") else ROOT
            prefix, env = guest(qemu, sysroot, "litert" if runtime == "litert" else "tflite", cpu)
        r = run_repro(prefix, env, models[model], runtime, resolver)
        if qemu_version == "none (x86)" and r["ok"]:
            outputs[(model, runtime, resolver)] = r["output"]
        if r["ok"]:
            # the truth: x86 LiteRT with its default kernels
            truth = outputs[(model, "litert", "auto")]
            diff = max(abs(a - b) for a, b in zip(r["output"], truth))
            r["max_abs_diff_vs_x86_litert"] = diff
            r["result"] = ("equal to x86 LiteRT" if diff == 0
                           else f"differs from x86 LiteRT by up to {diff} steps")
            same = outputs.get((model, runtime, resolver))
            if qemu_version != "none (x86)" and same is not None and same != truth:
                same_diff = max(abs(a - b) for a, b in zip(r["output"], same))
                r["result"] += (f" ({'equal to' if same_diff == 0 else f'{same_diff} steps from'} "
                                f"x86 {runtime} {resolver})")
        row = {"qemu": qemu_version, "proc_cpuinfo": cpuinfo, "qemu_cpu": cpu or ("max (default)" if
               qemu_version != "none (x86)" else "-"), "runtime": runtime, "op_resolver": resolver,
               "model": model, **{k: v for k, v in r.items() if k != "output"}}
        results.append(row)
        log(f"{qemu_version} | {cpuinfo} | {row['qemu_cpu']} | {runtime} | {resolver} | {model}: "
            f"{r['result']}")

    (OUT / "findings.json").write_text(json.dumps({"qemu": {"7.2": v7, "10.0": v10}, "rows": results}, indent=2))
    print(f"qemu 7.2 = Debian bookworm qemu-user-static {v7}; qemu 10.0 = Debian trixie qemu-user {v10}\n")
    print("| qemu | guest /proc/cpuinfo | QEMU_CPU | interpreter | op resolver | model | result |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print(f"| {row['qemu']} | {row['proc_cpuinfo']} | {row['qemu_cpu']} | {row['runtime']} | "
              f"{row['op_resolver']} | {row['model']} | {row['result']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
