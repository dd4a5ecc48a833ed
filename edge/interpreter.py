"""The TFLite interpreter adapter and the bundle's encoder (numpy + one TFLite runtime).

Two runtimes expose the same Interpreter API: ai-edge-litert (LiteRT, the default: it
works with numpy 2 and has the fast int8 path on x86 and arm64) and tflite-runtime 2.14
(the design card's package; numpy < 2 only). `runtime="auto"` takes LiteRT and falls back
to tflite-runtime.

Per decision the encoder does only set_tensor (int8 rows: the runtime's ring holds the
window already quantised, see run_int8) -> invoke -> probe on the int8 output: tensors are
allocated once, quantisation uses the model's own tensor parameters, and the output
`tensor()` view is taken after `invoke()` and dropped before the next one. The probe is
folded onto the int8 output (scale and zero point folded into its float64 weights), so
reading P(perceived) is one cast and one dot product, without allocating.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phosphene.edge.bundle import Bundle, BundleError, Probe, QuantParams
from phosphene.edge.kernel import KERNEL
from phosphene.errors import ConfigError

__all__ = [
    "RUNTIMES",
    "Decision",
    "Encoder",
    "RuntimeUnavailable",
    "TFLiteModel",
    "available_runtimes",
    "load_interpreter_class",
]

log = logging.getLogger(__name__)

# runtime name -> module that holds `Interpreter`, and the distribution it comes from
RUNTIMES: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}


class RuntimeUnavailable(ImportError):
    """No usable TFLite interpreter package is installed (the message says which to install)."""


def _import_runtime(name: str):
    module_name, dist = RUNTIMES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeUnavailable(f"TFLite runtime {name!r} is not importable ({exc}); install it "
                                 f"with `pip install {dist}`") from None
    try:
        from importlib.metadata import version
        ver = version(dist)
    except Exception:
        ver = "unknown"
    return module.Interpreter, ver


def load_interpreter_class(runtime: str = "auto") -> tuple[type, str, str]:
    """-> (Interpreter class, runtime name, package version).

    runtime: "litert" | "tflite-runtime" | "auto" (LiteRT first, then tflite-runtime).
    """
    if runtime == "auto":
        errors = []
        for name in RUNTIMES:
            try:
                cls, ver = _import_runtime(name)
                return cls, name, ver
            except RuntimeUnavailable as exc:
                errors.append(str(exc))
        raise RuntimeUnavailable("no TFLite interpreter is installed: pip install "
                                 "'phosphene[edge]' (ai-edge-litert) or tflite-runtime; "
                                 + "; ".join(errors))
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be 'auto' or one of {', '.join(RUNTIMES)}, got {runtime!r}")
    cls, ver = _import_runtime(runtime)
    return cls, runtime, ver


def available_runtimes() -> dict[str, str]:
    """{runtime name: version} of the interpreters importable here."""
    found = {}
    for name in RUNTIMES:
        with contextlib.suppress(RuntimeUnavailable):
            found[name] = _import_runtime(name)[1]
    return found


def _quant_params(detail: dict) -> QuantParams | None:
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"]).name
    if dtype == "float32" or scale == 0.0:
        return None
    return QuantParams(scale=float(scale), zero_point=int(zero_point), dtype=dtype,
                       shape=tuple(int(s) for s in detail["shape"]))


@dataclass
class TFLiteModel:
    """One allocated interpreter for a single-input, single-output model.

    `run(x)` takes and returns float32 arrays of the model's shapes: a quantised input is
    quantised with its own tensor parameters and a quantised output dequantised, so int8
    and float32 models are used the same way.
    """

    model_path: Path
    threads: int = 1
    runtime: str = "auto"
    # XNNPACK (LiteRT's default delegate) is the fast int8 path on x86 and arm64; without
    # it LiteRT runs the builtin kernels, which give bit-identical results to tflite-runtime
    # 2.14 on x86 (XNNPACK's requantisation may differ from them by one output step).
    xnnpack: bool = True
    # filled in by __post_init__
    runtime_name: str = field(init=False)
    runtime_version: str = field(init=False)
    input_shape: tuple[int, ...] = field(init=False)
    output_shape: tuple[int, ...] = field(init=False)
    input_quant: QuantParams | None = field(init=False)
    output_quant: QuantParams | None = field(init=False)

    def __post_init__(self) -> None:
        self.model_path = Path(self.model_path)
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        cls, self.runtime_name, self.runtime_version = load_interpreter_class(self.runtime)
        kwargs = {}
        if not self.xnnpack:
            resolver = importlib.import_module(RUNTIMES[self.runtime_name][0]).OpResolverType
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self._interp = cls(model_path=str(self.model_path), num_threads=int(self.threads),
                               **kwargs)
            self._interp.allocate_tensors()  # once: per call only set/invoke/get
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.model_path} does not load in {self.runtime_name}: {exc}") from None
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{self.model_path} has {len(inputs)} inputs and {len(outputs)} "
                              "outputs; an encoder has one of each")
        self._in_index, self._out_index = inputs[0]["index"], outputs[0]["index"]
        self.input_shape = tuple(int(s) for s in inputs[0]["shape"])
        self.output_shape = tuple(int(s) for s in outputs[0]["shape"])
        self.input_quant = _quant_params(inputs[0])
        self.output_quant = _quant_params(outputs[0])
        self._in_buffer = np.zeros(self.input_shape, dtype=inputs[0]["dtype"])

    @property
    def input_dtype(self) -> str:
        return self._in_buffer.dtype.name

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """x: the input tensor's dtype and shape -> the output tensor (a copy)."""
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: float32 of the input shape -> float32 output (quantised with the tensors' params)."""
        x = np.asarray(x, dtype=np.float32).reshape(self.input_shape)
        if self.input_quant is not None:
            x = self.input_quant.quantize(x, out=self._in_buffer)
        y = self.run_raw(x)
        return self.output_quant.dequantize(y) if self.output_quant is not None else y

    def op_names(self) -> list[str]:
        """Operator names after delegation (diagnostics; DELEGATE marks an XNNPACK partition)."""
        return sorted({op["op_name"] for op in self._interp._get_ops_details()})


@dataclass(frozen=True)
class Decision:
    """One decoded window. Timings are microseconds per stage."""

    p_perceived: float
    perceived: bool
    timings_us: dict[str, float]


class Encoder:
    """The bundle's int8 encoder and probe on one interpreter.

    >>> enc = Encoder(load_bundle("bundle"))
    >>> z = enc.latent(window)            # window: (T, C) float32 normalised MUA -> (D,)
    >>> d = enc.decide(window)            # Decision(p_perceived, perceived, timings_us)
    """

    def __init__(self, bundle: Bundle, *, threads: int = 1, runtime: str = "auto",
                 task: str | None = None, xnnpack: bool = True):
        self.bundle = bundle
        self.model = TFLiteModel(bundle.model_path, threads=threads, runtime=runtime,
                                 xnnpack=xnnpack)
        if task and task not in bundle.probes:
            raise BundleError(f"bundle has no probe for task {task!r}; it has "
                              f"{', '.join(bundle.probes)}")
        self.probe: Probe = bundle.probes[task] if task else bundle.probe
        # The model must be the one the manifest describes, quantisation included: the
        # manifest is what was measured for parity.
        if self.model.input_quant is None or self.model.output_quant is None:
            raise BundleError(f"{bundle.model_path} is not a full-integer model (float input "
                              "or output): rebuild the bundle with `phosphene quantize`")
        for role, got, want in (("input", self.model.input_quant, bundle.input_quant),
                                ("output", self.model.output_quant, bundle.output_quant)):
            if (got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape)
                    or got.zero_point != want.zero_point
                    or not np.isclose(got.scale, want.scale, rtol=1e-6, atol=0.0)):
                raise BundleError(f"{bundle.model_path} {role} tensor {got.to_dict()} differs "
                                  f"from the manifest's {want.to_dict()}")
        self.window_shape = (bundle.window_spec.window_samples, bundle.n_channels)
        self._in_q = self.model.input_quant
        self._out_q = self.model.output_quant
        self._in_buffer = np.zeros(self.model.input_shape, dtype=self._in_q.dtype)
        self._scratch = np.zeros(self.model.input_shape, dtype=np.float32)
        # the int8 path: everything the decision touches, allocated once
        interp = self.model._interp
        self._set_tensor, self._invoke = interp.set_tensor, interp.invoke
        self._in_index = self.model._in_index
        self._output = interp.tensor(self.model._out_index)  # a view after each invoke, never held
        # the probe folded onto the int8 output: w . ((q - zp) * s) + b = (w * s) . q + b',
        # with b' = b - zp * s * sum(w), all in float64
        s, zp = float(self._out_q.scale), float(self._out_q.zero_point)
        w = np.asarray(self.probe.weights, dtype=np.float64)
        self._folded_w = w * s
        self._folded_b = float(self.probe.bias - zp * s * w.sum())
        self._codes = np.zeros(self.model.output_shape, dtype=np.float64)
        self._codes_flat = self._codes.reshape(-1)
        self._dot_int8 = (KERNEL.dot_int8 if KERNEL is not None and np.dtype(self._out_q.dtype) == np.int8
                          else None)  # int16 activations: the numpy way

    @property
    def runtime_name(self) -> str:
        return self.model.runtime_name

    @property
    def input_quant(self) -> QuantParams:
        """The model's input quantisation (window -> int8), from the interpreter itself."""
        return self._in_q

    @property
    def output_quant(self) -> QuantParams:
        """The model's output quantisation (int8 -> latent)."""
        return self._out_q

    def _check(self, window: np.ndarray) -> np.ndarray:
        window = np.asarray(window, dtype=np.float32)
        if window.shape != self.window_shape:
            raise ValueError(f"window has shape {window.shape}; the bundle expects "
                             f"{self.window_shape} (samples x channels)")
        if np.isnan(window).any():
            raise ValueError("window contains NaN (normaliser still warming up?): no decision")
        return window

    def latent(self, window: np.ndarray) -> np.ndarray:
        """window: (T, C) float32 normalised MUA -> (D,) float32 dequantised latent."""
        window = self._check(window)
        self._in_q.quantize(window.reshape(self._in_buffer.shape), out=self._in_buffer,
                            scratch=self._scratch)
        q = self.model.run_raw(self._in_buffer)
        return self._out_q.dequantize(q).reshape(-1)

    def latents(self, windows: np.ndarray) -> np.ndarray:
        """windows: (N, T, C) -> (N, D), one invoke per window (the model has batch 1)."""
        return np.stack([self.latent(w) for w in windows]) if len(windows) else \
            np.zeros((0, self.bundle.latent_dim), dtype=np.float32)

    def decide(self, window: np.ndarray) -> Decision:
        """window: (T, C) -> Decision with per-stage timings (quantize, invoke, probe) in us."""
        t0 = time.perf_counter_ns()
        window = self._check(window)
        self._in_q.quantize(window.reshape(self._in_buffer.shape), out=self._in_buffer,
                            scratch=self._scratch)
        t1 = time.perf_counter_ns()
        p, invoke_ns, probe_ns = self.run_int8(self._in_buffer)
        t3 = time.perf_counter_ns()
        return Decision(p, p >= self.probe.threshold,
                        {"quantize": (t1 - t0) / 1e3, "invoke": invoke_ns / 1e3,
                         "probe": probe_ns / 1e3, "total": (t3 - t0) / 1e3})

    def run_int8(self, rows: np.ndarray, clock=time.perf_counter_ns) -> tuple[float, int, int]:
        """rows: the int8 input tensor ((1, T, C), e.g. a view of the runtime's ring) ->
        (P(perceived), invoke ns (set_tensor + invoke), probe ns (output -> P)).

        The probe runs on the int8 output codes with scale and zero point folded into its
        weights (float64): P equals Probe.p_perceived of the dequantised latent up to the
        float32 rounding that dequantising would add (|dP| ~ 1e-7; decisions differ only
        that close to the threshold). Nothing is allocated but Python scalars.
        """
        t0 = clock()
        self._set_tensor(self._in_index, rows)
        self._invoke()
        t1 = clock()
        z = None
        if self._dot_int8 is not None:  # the compiled kernel: one pass over the output view
            try:
                z = self._dot_int8(self._output(), self._folded_w) + self._folded_b
            except (BufferError, ValueError, TypeError):  # an output view it cannot read
                z = None
        if z is None:
            np.copyto(self._codes, self._output())  # the int8 output codes (a view, let go at once)
            z = self._codes_flat.dot(self._folded_w) + self._folded_b
        p = 0.5 * (1.0 + math.tanh(0.5 * z))  # the logistic function without overflow
        return p, t1 - t0, clock() - t1

    def latent_int8(self, rows: np.ndarray) -> np.ndarray:
        """rows: the int8 input tensor -> (D,) float32 dequantised latent (a copy)."""
        q = self.model.run_raw(np.asarray(rows, dtype=self._in_q.dtype).reshape(self.model.input_shape))
        return self._out_q.dequantize(q).reshape(-1)
