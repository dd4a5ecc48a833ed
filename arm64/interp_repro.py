"""Minimal reproduction: one int8 TFLite model, one fixed input, one invoke (numpy + interpreter only).

    python arm64/interp_repro.py MODEL [--runtime litert|tflite-runtime]
                                       [--resolver auto|BUILTIN|BUILTIN_REF|BUILTIN_WITHOUT_DEFAULT_DELEGATES]
                                       [--threads N]

Prints each stage to stderr as it completes (import, created, allocated, invoked), so a crash
shows where it happened, then one JSON line on stdout: the raw output tensor and the machine.
Used by arm64/findings.py to pin down the interpreter crashes under qemu (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys

import numpy as np


def stage(name: str) -> None:
    print(f"stage {name}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--runtime", default="litert", choices=["litert", "tflite-runtime"])
    parser.add_argument("--resolver", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    else:
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    stage("import")
    kwargs = {"num_threads": args.threads}
    if args.resolver != "auto":
        kwargs["experimental_op_resolver_type"] = getattr(OpResolverType, args.resolver)
    interp = Interpreter(model_path=args.model, **kwargs)
    stage("created")
    interp.allocate_tensors()
    stage("allocated")
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    # stdlib bytes, not numpy's generator: the same input under numpy 1.26 and 2.x
    n_bytes = int(np.prod(inp["shape"])) * np.dtype(inp["dtype"]).itemsize
    x = np.frombuffer(random.Random(args.seed).randbytes(n_bytes), dtype=inp["dtype"])
    interp.set_tensor(inp["index"], x.reshape(inp["shape"]))
    interp.invoke()
    stage("invoked")
    y = interp.get_tensor(out["index"])
    print(json.dumps({"machine": platform.machine(), "output": y.reshape(-1).tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
