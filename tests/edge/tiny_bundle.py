"""A tiny but real bundle for the edge tests: a full-int8 TFLite encoder made with TensorFlow.

The quantize pipeline (torch -> ONNX -> onnx2tf) takes 20-70 s per model; these tests need
a bundle in a few seconds, so the encoder here is built directly in TensorFlow (patchify
conv -> ReLU -> mean over patches -> dense latent), converted with int8-only builtins,
written and sealed by `write_bundle`, the function quantize uses. Tests may import TensorFlow; the edge may not
(test_no_forbidden_imports runs it in a clean subprocess).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phosphene.edge.bundle import BundleSpec, Probe, QuantParams, write_bundle
from phosphene.geometry import map_for_channels
from phosphene.signal import NormaliserConfig, WindowSpec

# fast warm-up so streamed tests reach their first decision after 0.256 s of stream
TEST_NORMALISER = NormaliserConfig(window_s=2.048, refresh_s=0.256)


def _tflite_int8(spec: WindowSpec, n_channels: int, latent_dim: int, seed: int) -> bytes:
    import tensorflow as tf

    T, C, P = spec.window_samples, n_channels, spec.patch_samples
    rng = np.random.default_rng(seed)
    hidden = 32
    conv_w = tf.constant(rng.normal(0, 1 / np.sqrt(P * C), (P, C, hidden)).astype(np.float32))
    conv_b = tf.constant(rng.normal(0, 0.1, hidden).astype(np.float32))
    dense_w = tf.constant(rng.normal(0, 1 / np.sqrt(hidden), (hidden, latent_dim)).astype(np.float32))

    class Encoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, T, C), tf.float32, name="window")])
        def __call__(self, x):
            h = tf.nn.relu(tf.nn.conv1d(x, conv_w, stride=P, padding="VALID") + conv_b)  # (1, T/P, H)
            return tf.matmul(tf.reduce_mean(h, axis=1), dense_w)  # (1, D)

    module = Encoder()
    calib = np.clip(rng.standard_normal((64, 1, T, C)), -4, 4).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([w] for w in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _quant(detail: dict) -> QuantParams:
    scale, zero_point = detail["quantization"]
    return QuantParams(scale=float(scale), zero_point=int(zero_point),
                       dtype=np.dtype(detail["dtype"]).name, shape=tuple(int(s) for s in detail["shape"]))


def _health_reference(channel_map, spec: WindowSpec, seed: int) -> dict:
    """Input-health statistics of 2 x 10 s of resting virtual cortex (as quantize stores them)."""
    from phosphene.cortex import VirtualCortex
    from phosphene.edge.health import calibration_stats

    cortex = VirtualCortex(channel_map, seed=seed)
    recs = [cortex.stream("resting", day=d, session_index=d).read(10_000)[0] for d in range(2)]
    return calibration_stats(recs, sample_rate_hz=spec.sample_rate_hz)


def make_tiny_bundle(out: str | Path, *, n_channels: int = 96, spec: WindowSpec = WindowSpec(),
                     normaliser: NormaliserConfig = TEST_NORMALISER, latent_dim: int = 16,
                     latency_budget_ms: float = 50.0, seed: int = 0,
                     tasks: tuple[str, ...] = ("psychometric",)) -> Path:
    """Write a bundle directory at `out` (created) and return its path.

    One random probe per task in `tasks`, the first the default (a task named *_pre reads
    the window that ends at onset).

    The budget is generous (50 ms): `bench` exits 3 when its p99 exceeds it, and a test of
    behaviour must not fail on a shared machine's pause; budget checks set --budget-ms.
    """
    from ai_edge_litert.interpreter import Interpreter

    model = _tflite_int8(spec, n_channels, latent_dim, seed)
    interp = Interpreter(model_content=model)
    rng = np.random.default_rng([seed, 1])
    probes = {t: Probe(task=t, weights=rng.normal(0, 1, latent_dim) / np.sqrt(latent_dim),
                       bias=0.0, threshold=0.5, source="test") for t in tasks}
    channel_map = map_for_channels(n_channels)
    write_bundle(out, BundleSpec(
        model=model, probes=probes, task=tasks[0], channel_map=channel_map,
        window=spec, normaliser=normaliser, input_quant=_quant(interp.get_input_details()[0]),
        output_quant=_quant(interp.get_output_details()[0]), latency_budget_ms=latency_budget_ms,
        wire={"sample_format": "float16", "scale_uv": 1.0},
        input_health=_health_reference(channel_map, spec, seed),
        records={"tools": {"made_by": "tests/edge/tiny_bundle.py"}}), overwrite=True)
    return Path(out)
