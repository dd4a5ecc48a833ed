"""torch -> ONNX -> onnx2tf -> full-int8 TFLite, with the checks docs/toolchain.md explains.

- ONNX export with a static input shape (1, T, C) at opset 20 (at 17/18 GELU becomes Erf,
  which onnx2tf turns into the non-builtin FlexErf), checked against torch with
  onnxruntime before anything else runs.
- onnx2tf runs as a subprocess with `-oiqt -qt per-channel -kat window -cind window
  calib.npy [0.0] [1.0]`: `-kat` keeps the (N, T, C) layout, without it onnx2tf transposes
  the input and silently calibrates on data in the wrong layout. Its (very long) output
  goes to a log file, shown only when it fails.
- The produced model's operator list must hold only TFLite builtins (onnx2tf enables
  select-TF ops, so a missing builtin shows up as a Flex op rather than an error) and
  int8 input and output.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phosphene.errors import PhospheneError

__all__ = [
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "ConversionError",
    "Converted",
    "check_builtin_only",
    "check_onnx",
    "convert_int8",
    "export_onnx",
    "tflite_operators",
]

log = logging.getLogger(__name__)

INPUT_NAME = "window"  # (1, T, C) normalised MUA
OUTPUT_NAME = "latent"  # (1, D)
OPSET = 20


class ConversionError(PhospheneError, RuntimeError):
    """Export or conversion failed; the message says which step and where the log is."""


def export_onnx(model, shape: tuple[int, int, int], path: str | os.PathLike) -> Path:
    """Export an export-ready torch model (BatchNorm folded, eval) with a static input shape.

    shape: (1, T, C). Uses the TorchScript exporter (no onnxscript dependency).
    """
    import torch

    path = Path(path)
    x = torch.zeros(shape, dtype=torch.float32)
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript
        # (not installed); the legacy path is the one docs/toolchain.md measured.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    return path


def check_onnx(model, onnx_path: str | os.PathLike, windows: np.ndarray) -> float:
    """Max abs difference of ONNX Runtime vs torch on windows (N, T, C); one window per run."""
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for w in windows:
            x = np.ascontiguousarray(w[None], dtype=np.float32)
            ref = model(torch.from_numpy(x)).numpy()
            got = session.run(None, {INPUT_NAME: x})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


@dataclass(frozen=True)
class Converted:
    int8_path: Path  # full-integer model, int8 input and output
    int16_act_path: Path | None  # int8 weights, int16 activations and I/O (when onnx2tf made it)
    float_path: Path  # onnx2tf's float32 model (benchmarks, ai-edge-quantizer)
    seconds: float
    log_path: Path


def _onnx2tf_command() -> list[str]:
    exe = Path(sys.executable).with_name("onnx2tf")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("onnx2tf")
    return [found] if found else [sys.executable, "-m", "onnx2tf"]


def convert_int8(onnx_path: str | os.PathLike, calib: np.ndarray, work_dir: str | os.PathLike, *,
                 timeout_s: float = 1800,
                 progress: Callable[[str], None] | None = None) -> Converted:
    """Convert an ONNX encoder to full-int8 TFLite with onnx2tf, calibrated on `calib`.

    calib: (N, T, C) float32 windows preprocessed exactly as at runtime.
    The output stays in work_dir/tflite; onnx2tf's log is work_dir/onnx2tf.log.
    """
    onnx_path = Path(onnx_path).resolve()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    calib_file = work_dir / "calib.npy"
    np.save(calib_file, np.ascontiguousarray(calib, dtype=np.float32))
    out_dir = work_dir / "tflite"
    shutil.rmtree(out_dir, ignore_errors=True)
    log_path = work_dir / "onnx2tf.log"
    # Normalised windows are already zero-centred and unit-scaled: mean 0, std 1 leaves
    # them as they are (onnx2tf's default would apply ImageNet RGB statistics).
    cmd = [*_onnx2tf_command(), "-i", str(onnx_path), "-o", str(out_dir), "-oiqt", "-qt", "per-channel",
           "-kat", INPUT_NAME, "-cind", INPUT_NAME, str(calib_file), "[0.0]", "[1.0]"]
    # onnx2tf runs the `onnxsim` executable by name: without it on PATH (a venv that was not
    # activated) it silently skips simplification and emits a FlexMean the int8 step rejects.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONUNBUFFERED": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if progress:
        progress(f"onnx2tf: converting to full int8 on {len(calib)} calibration windows "
                 f"(log: {log_path}) ...")
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write("$ " + " ".join(cmd) + "\n")
        log_file.flush()
        try:
            proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=work_dir,
                                  env=env, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"onnx2tf did not finish in {timeout_s:.0f} s "
                                  f"(log: {log_path})") from None
        except OSError as exc:
            raise ConversionError(f"could not run onnx2tf ({exc}): install it with "
                                  "`pip install --no-deps onnx2tf==1.29.24`") from None
    seconds = time.perf_counter() - t0
    stem = onnx_path.stem
    int8_path = out_dir / f"{stem}_full_integer_quant.tflite"
    float_path = out_dir / f"{stem}_float32.tflite"
    if proc.returncode != 0 or not int8_path.is_file():
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        causes = sorted({ln.strip() for ln in lines
                         if ln.startswith(("RuntimeError", "FileNotFoundError", "ValueError"))})
        raise ConversionError(
            f"onnx2tf produced no full-int8 model (exit {proc.returncode}); see {log_path}"
            + ("".join(f"\n  {c[:300]}" for c in causes) if causes else
               "\n" + "\n".join(lines[-15:])))
    if progress:
        progress(f"onnx2tf: done in {seconds:.0f} s")
    int16 = out_dir / f"{stem}_full_integer_quant_with_int16_act.tflite"
    return Converted(int8_path=int8_path, int16_act_path=int16 if int16.is_file() else None,
                     float_path=float_path, seconds=seconds,
                     log_path=log_path)


def tflite_operators(path: str | os.PathLike) -> list[dict]:
    """The operator codes a .tflite model uses: [{"name", "builtin": bool, "version"}]."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        if code == schema.BuiltinOperator.CUSTOM or custom:
            ops.append({"name": (custom or b"?").decode(errors="replace"), "builtin": False,
                        "version": oc.Version()})
        else:
            ops.append({"name": names.get(code, f"BUILTIN_{code}"), "builtin": True,
                        "version": oc.Version()})
    return ops


def check_builtin_only(path: str | os.PathLike) -> list[str]:
    """Raise ConversionError if the model uses any non-builtin (Flex/custom) op; else op names."""
    ops = tflite_operators(path)
    bad = sorted(op["name"] for op in ops if not op["builtin"])
    if bad:
        raise ConversionError(
            f"{path} uses operators that are not TFLite builtins: {', '.join(bad)}. A Flex op "
            "means a layer had no int8 builtin (e.g. Erf from GELU below opset 20); change the "
            "student design or export so every op is a builtin")
    return sorted(op["name"] for op in ops)
