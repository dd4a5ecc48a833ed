"""The arm64 check: phosphene's edge path in an emulated arm64 Python, against x86.

Run by arm64/check.sh (after arm64/build_env.sh) with the x86 .venv Python:

    python arm64/check.py [--bundle DIR] [--quick] [--out DIR]

Steps, each timed, all written to OUT/report.json (default arm64/.cache/check/):
  1. the bundle: --bundle, else demo-run/bundle (from `make demo`), else a tiny bundle made
     here with tests/edge/tiny_bundle.py (stated in the report)
  2. arm64: `phosphene verify BUNDLE --json`, `phosphene bench BUNDLE --runs 50 --json`
  3. parity: a fixed set of windows through the bundle on x86 and on arm64 (under several
     emulated cores), int8 latents equal or within one quantisation step, decisions equal
  4. (full) arm64: triggered-mode `phosphene run --port PTY`, the pty fed by the simulator
     running on the host (`phosphene simulate stream --pty`)
  5. (full) tflite-runtime 2.14 on arm64 through the same parity, reported, never fatal
--quick (the CI version) does 1-3 with one emulated core and a short bench.
Exit 1 when a required step fails; timings under emulation mean nothing, outputs do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PHOSPHENE_ARM64_CACHE", REPO / "arm64" / ".cache"))
HOST_PY = Path(os.environ.get("PHOSPHENE_HOST_PYTHON", REPO / ".venv" / "bin" / "python"))
PARITY = REPO / "arm64" / "parity.py"
# Pi 4 (Cortex-A72: no int8 dot product), Pi 5 (Cortex-A76) and Orin (A78AE, closest model
# here: Neoverse-N1, an A76 derivative) take different kernel paths; "max" has every feature.
FULL_CPUS = ("max", "cortex-a72", "cortex-a76", "neoverse-n1")
QUICK_CPUS = ("max",)
STEP_TIMEOUT_S = 600


def log(msg: str) -> None:
    print(f"[arm64 check] {msg}", file=sys.stderr, flush=True)


class StepFailed(RuntimeError):
    pass


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_cmd(cmd: list[str], *, env_extra: dict | None = None, timeout_s: float = STEP_TIMEOUT_S,
            what: str, allow_fail: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what}: no result after {timeout_s:.0f} s") from None
    proc.wall_s = round(time.perf_counter() - t0, 1)  # type: ignore[attr-defined]
    if proc.returncode != 0 and not allow_fail:
        raise StepFailed(f"{what} exited with {_describe_rc(proc.returncode)}:\n{_tail(proc.stderr)}")
    return proc


def _describe_rc(rc: int) -> str:
    # qemu-user re-raises the guest's fatal signal on itself, so a guest SIGSEGV is -11 here.
    if rc < 0:
        return f"signal {signal.Signals(-rc).name}"
    if rc == 128 + signal.SIGSEGV:
        return "SIGSEGV (exit 139)"
    return f"exit code {rc}"


def launcher(name: str) -> str:
    path = CACHE / "bin" / f"py-{name}"
    if not path.exists():
        raise StepFailed(f"{path} is missing: run `bash arm64/build_env.sh` first")
    return str(path)


def resolve_bundle(requested: str | None, out: Path) -> tuple[Path, str]:
    """-> (bundle dir, how it was chosen)."""
    if requested:
        path = Path(requested)
        if not (path / "manifest.json").is_file():
            raise StepFailed(f"--bundle {path} is not a bundle directory (no manifest.json)")
        return path.resolve(), "given"
    demo = REPO / "demo-run" / "bundle"
    if (demo / "manifest.json").is_file():
        return demo, "demo (make demo)"
    tiny = out / "tiny-bundle"
    log(f"no demo bundle at {demo} (run `make demo` for it): making a tiny bundle at {tiny}")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from tiny_bundle import make_tiny_bundle; make_tiny_bundle(sys.argv[2])")
    run_cmd([str(HOST_PY), "-c", code, str(REPO / "tests" / "edge"), str(tiny)],
            env_extra={"TF_CPP_MIN_LOG_LEVEL": "3"}, what="making the tiny bundle")
    return tiny, "tiny (tests/edge/tiny_bundle.py)"


def arm64_json(cmd: list[str], what: str, env_extra: dict | None = None) -> tuple[dict, float]:
    proc = run_cmd(cmd, what=what, env_extra=env_extra)
    try:
        return json.loads(proc.stdout), proc.wall_s  # type: ignore[attr-defined]
    except json.JSONDecodeError:
        raise StepFailed(f"{what} did not print JSON on stdout:\n{_tail(proc.stdout)}") from None


def parity_side(python: str, bundle: Path, windows: Path, out: Path, *, runtime: str = "litert",
                qemu_cpu: str | None = None, allow_fail: bool = False) -> dict:
    env = {"QEMU_CPU": qemu_cpu} if qemu_cpu else {}
    proc = run_cmd([python, str(PARITY), "run", str(bundle), str(windows), str(out),
                    "--runtime", runtime], env_extra=env, what=f"parity run ({out.name})",
                   allow_fail=allow_fail)
    return {"returncode": proc.returncode, "status": _describe_rc(proc.returncode),
            "wall_s": proc.wall_s, "stderr_tail": _tail(proc.stderr, 3)}  # type: ignore[attr-defined]


def compare(reference: Path, other: Path) -> dict:
    proc = run_cmd([str(HOST_PY), str(PARITY), "compare", str(reference), str(other), "--json"],
                   what="parity compare", allow_fail=True)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise StepFailed(f"parity compare failed:\n{_tail(proc.stderr)}")
    return json.loads(proc.stdout)


def summarise_parity(report: dict) -> dict:
    keys = ("ok", "int8_max_abs_diff", "int8_values_equal_fraction", "windows_bit_identical",
            "n_windows", "latent_dim", "decision_agreement", "decisions_differ_at",
            "p_perceived_max_abs_diff")
    def side(info):
        return {k: info[k] for k in ("machine", "runtime", "runtime_version", "numpy",
                                                  "python", "libc", "qemu_cpu")}
    return {**{k: report[k] for k in keys}, "x86": side(report["reference"]),
            "arm64": side(report["other"])}


def pty_run(bundle: Path, out: Path, seconds: float) -> dict:
    """Host simulator -> pty -> arm64 `phosphene run --mode triggered`."""
    host_phosphene = HOST_PY.parent / "phosphene"
    sim = subprocess.Popen([str(host_phosphene), "simulate", "stream", "--pty", "--kind", "psychometric",
                            "--seed", "0", "--duration-s", str(seconds + STEP_TIMEOUT_S), "--quiet", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = sim.stderr.readline()  # {"pty": "/dev/pts/N"}, printed before streaming starts
        try:
            pty = json.loads(first)["pty"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise StepFailed(f"the simulator did not report its pty: {first!r}") from None
        log(f"simulator on the host streams to {pty}; arm64 runtime reads it for {seconds:g} s")
        log_file = out / "run.jsonl"
        # Emulation runs the runtime several times slower than a board: a generous stall bound
        # keeps 'stall' no-decisions from hiding the decisions this step is about.
        proc = run_cmd([launcher("litert"), "-m", "phosphene", "run", str(bundle), "--port", pty,
                        "--mode", "triggered", "--duration-s", str(seconds), "--json",
                        "--stall-ms", "2000", "--status-s", "0", "--out", str(log_file)],
                       what="arm64 phosphene run", timeout_s=seconds + 300)
    finally:
        sim.send_signal(signal.SIGINT)  # ends the stream cleanly (it counts what it sent)
        try:
            sim.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.communicate()
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines and lines[-1].get("type") == "summary" else None
    if summary is None:
        raise StepFailed(f"arm64 phosphene run printed no summary line:\n{_tail(proc.stderr)}")
    decisions = [x for x in lines if x.get("type") == "decision"]
    if not decisions:
        raise StepFailed(f"arm64 phosphene run made no decision in {seconds:g} s: {summary}")
    keep = ("decisions", "no_decisions", "events", "samples_received", "samples_lost",
            "frames_lost", "crc_errors", "input_rate_hz", "budget_misses", "stopped_by")
    return {**{k: summary.get(k) for k in keep}, "mode": "triggered",
            "latency_p50_ms_emulated": round(summary["latency_us"]["p50"] / 1e3, 2),
            "first_decision": {k: decisions[0][k] for k in ("onset_sample", "electrode", "current_ua",
                                                           "p_perceived", "decision")},
            "wall_s": proc.wall_s}  # type: ignore[attr-defined]


def x86_tflite_python() -> Path:
    """A small x86 venv with tflite-runtime 2.14 and numpy 1.26 (cached beside the arm64 env)."""
    venv = CACHE / "x86-tflite"
    py = venv / "bin" / "python"
    if not (venv / ".stamp").exists():
        log("making an x86 venv with tflite-runtime 2.14 for the x86 side of its parity")
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        subprocess.run([str(HOST_PY), "-m", "venv", str(venv)], check=True)
        run_cmd([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "tflite-runtime==2.14.0", "numpy==1.26.4"], what="pip install tflite-runtime (x86)")
        (venv / ".stamp").write_text("tflite-runtime==2.14.0 numpy==1.26.4")
    return py


def tflite_runtime_parity(bundle: Path, windows: Path, out: Path) -> dict:
    """arm64 tflite-runtime vs x86 tflite-runtime and vs x86 LiteRT (the reference)."""
    arm = out / "arm64-tflite-runtime-max"
    status = parity_side(launcher("tflite"), bundle, windows, arm, runtime="tflite-runtime",
                         allow_fail=True)
    entry: dict = {"arm64_status": status["status"]}
    if status["returncode"] != 0:
        log(f"tflite-runtime 2.14 on arm64: {status['status']} (not fatal: LiteRT is the default)")
        return entry
    # phosphene is pure Python: the arm64 site's copy runs on x86 too
    x86 = out / "x86-tflite-runtime"
    run_cmd([str(x86_tflite_python()), str(PARITY), "run", str(bundle), str(windows), str(x86),
             "--runtime", "tflite-runtime"], what="x86 tflite-runtime parity run",
            env_extra={"PYTHONPATH": str(CACHE / "site-phosphene"), "PYTHONSAFEPATH": "1"})
    for name, reference in (("vs_x86_tflite_runtime", x86), ("vs_x86_litert", out / "x86-litert")):
        entry[name] = summarise_parity(compare(reference, arm))
        r = entry[name]
        log(f"tflite-runtime 2.14 on arm64 {name.replace('_', ' ')}: max |int8 diff| "
            f"{r['int8_max_abs_diff']}, {100 * r['int8_values_equal_fraction']:.1f}% values equal, "
            f"decisions agree {100 * r['decision_agreement']:.1f}%")
    x86_pair = summarise_parity(compare(out / "x86-litert", x86))
    entry["x86_litert_vs_x86_tflite_runtime"] = {k: x86_pair[k] for k in (
        "int8_max_abs_diff", "int8_values_equal_fraction", "decision_agreement", "decisions_differ_at")}
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="phosphene's edge path on emulated arm64 vs x86")
    parser.add_argument("--bundle", help="bundle directory (default demo-run/bundle, else a tiny one)")
    parser.add_argument("--quick", action="store_true", help="the CI version: parity, verify, short bench")
    parser.add_argument("--out", default=str(CACHE / "check"), help="where the report and outputs go")
    parser.add_argument("--bench-runs", type=int, default=None, help="default 50 (20 with --quick)")
    parser.add_argument("--run-seconds", type=float, default=20.0, help="stream length of the pty run")
    parser.add_argument("--windows", type=int, default=64, help="windows in the parity set")
    args = parser.parse_args(argv)
    bench_runs = args.bench_runs or (20 if args.quick else 50)
    cpus = QUICK_CPUS if args.quick else FULL_CPUS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict = {"quick": args.quick, "host": {"machine": platform.machine(),
                                                    "python": platform.python_version()},
                    "steps_s": {}, "ok": False}
    failures: list[str] = []

    def step(name: str):
        report["steps_s"][name] = round(time.perf_counter() - step.t0, 1)
        step.t0 = time.perf_counter()
    step.t0 = time.perf_counter()

    try:
        qemu = CACHE / "qemu" / "usr" / "bin" / "qemu-aarch64"
        report["qemu"] = subprocess.run([str(qemu), "--version"], check=False, capture_output=True,
                                        text=True).stdout.splitlines()[0] if qemu.exists() else None
        bundle, how = resolve_bundle(args.bundle, out)
        report["bundle"] = {"path": str(bundle), "kind": how}
        step("bundle")

        verify, wall = arm64_json([launcher("litert"), "-m", "phosphene", "verify", str(bundle), "--json"],
                                  "arm64 phosphene verify")
        report["verify"] = {"ok": verify.get("ok"), **verify["interpreter"], "wall_s": wall}
        log(f"verify on arm64: ok={verify.get('ok')}, {verify['interpreter']['runtime']} "
            f"{verify['interpreter']['version']}")
        step("verify")

        bench, wall = arm64_json([launcher("litert"), "-m", "phosphene", "bench", str(bundle), "--runs",
                                  str(bench_runs), "--warmup", "5", "--json"], "arm64 phosphene bench")
        (out / "bench-arm64.json").write_text(json.dumps(bench, indent=2))
        report["bench"] = {"runs": bench["runs"], "runtime": bench["runtime"], "cpu": bench["cpu"],
                           "invoke_p50_us_emulated": bench["invoke_us"]["p50"],
                           "decision_p50_us_emulated": bench["decision_us"]["p50"],
                           "rss_mb": bench["rss_mb"], "json": str(out / "bench-arm64.json"),
                           "wall_s": wall}
        step("bench")

        windows = out / "windows.npy"
        run_cmd([str(HOST_PY), str(PARITY), "windows", str(bundle), str(windows), "--n", str(args.windows)],
                what="parity windows")
        parity_side(str(HOST_PY), bundle, windows, out / "x86-litert")
        report["parity"] = {}
        for cpu in cpus:
            side = out / f"arm64-litert-{cpu}"
            parity_side(launcher("litert"), bundle, windows, side, qemu_cpu=cpu)
            result = summarise_parity(compare(out / "x86-litert", side))
            report["parity"][f"litert/{cpu}"] = result
            log(f"parity x86 litert vs arm64 litert ({cpu}): max |int8 diff| "
                f"{result['int8_max_abs_diff']}, decisions agree {100 * result['decision_agreement']:.1f}%"
                + ("" if result["ok"] else "  <- MISMATCH"))
            if not result["ok"]:
                failures.append(f"parity litert/{cpu}")
        step("parity")

        if not args.quick:
            report["run"] = pty_run(bundle, out, args.run_seconds)
            log(f"run on arm64 over a pty: {report['run']['decisions']} decisions for "
                f"{report['run']['events']} events, {report['run']['samples_lost']} samples lost")
            step("run")

            # tflite-runtime 2.14 (the fallback interpreter): reported, never fatal. Its kernels
            # round differently from LiteRT's, so it is compared with itself on x86 as well.
            report["tflite_runtime"] = tflite_runtime_parity(bundle, windows, out)
            step("tflite-runtime")
    except StepFailed as exc:
        failures.append(str(exc))
        log(f"FAILED: {exc}")

    report["failures"] = failures
    report["ok"] = not failures
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(f"{'PASSED' if report['ok'] else 'FAILED'} in {report['total_s']:.0f} s; report: {out / 'report.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
