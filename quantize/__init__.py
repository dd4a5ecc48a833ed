"""phosphene.quantize: student -> ONNX -> full-int8 TFLite -> parity -> the bundle.

    from phosphene.quantize import build_bundle, QuantizeConfig
    report = build_bundle(ds, "student", "run/probe", "bundle")   # parity report (dict)

Heavy tools (torch, onnx, onnxruntime, onnx2tf, TensorFlow) are imported inside the
functions that use them, so importing this package is cheap.
"""

from phosphene.quantize.build import (
    ParityError,
    QuantizeConfig,
    build_bundle,
    default_latency_budget_ms,
    load_probes,
)
from phosphene.quantize.convert import (
    ConversionError,
    check_builtin_only,
    convert_int8,
    export_onnx,
    tflite_operators,
)

__all__ = [
    "ConversionError",
    "ParityError",
    "QuantizeConfig",
    "build_bundle",
    "check_builtin_only",
    "compare_students",
    "convert_int8",
    "default_latency_budget_ms",
    "export_onnx",
    "load_probes",
    "tflite_operators",
]


def __getattr__(name: str):
    if name == "compare_students":  # pulls in train (torch) only when asked for
        from phosphene.quantize.compare import compare_students

        return compare_students
    raise AttributeError(name)
