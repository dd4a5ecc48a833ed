"""phosphene.edge: what the bedside board runs (numpy, pyserial, one TFLite interpreter).

bundle       load and verify a bundle (manifest, int8 model, probe)
interpreter  the LiteRT / tflite-runtime adapter and the bundle's encoder
runtime      ring buffer, the one normaliser, decision loop, fail-safe, latency budget
normaliser   the core Normaliser with its statistics refresh prepared off the decision path
source       serial frames in (firmware_bridge), the live loop, the in-process simulator
benchmark    `phosphene bench`: invoke / decision / end-to-end latency, RSS
deploy/      systemd unit and sd_notify watchdog

Never imports torch, tensorflow, onnx, scikit-learn or scipy (tests/edge proves it).
"""

from importlib import import_module

__all__ = [
    "BenchConfig",
    "Bundle",
    "BundleDecoder",
    "BundleError",
    "DecisionSinks",
    "EdgeNormaliser",
    "Encoder",
    "FrameAdapter",
    "Runtime",
    "RuntimeConfig",
    "SampleBlock",
    "SimulatedArray",
    "StimOnset",
    "StreamRestart",
    "bench_bundle",
    "bench_stream",
    "load_bundle",
    "run_live",
]

_WHERE = {
    "load_bundle": "bundle", "Bundle": "bundle", "BundleError": "bundle", "Encoder": "interpreter",
    "Runtime": "runtime", "RuntimeConfig": "runtime", "DecisionSinks": "runtime",
    "BundleDecoder": "runtime", "SampleBlock": "runtime", "StimOnset": "runtime",
    "StreamRestart": "runtime", "EdgeNormaliser": "normaliser", "FrameAdapter": "source",
    "run_live": "source", "SimulatedArray": "source", "BenchConfig": "benchmark",
    "bench_bundle": "benchmark", "bench_stream": "benchmark",
}


def __getattr__(name: str):
    # lazy: `import phosphene.edge.deploy.watchdog` (systemd helper) should not load numpy
    if name in _WHERE:
        return getattr(import_module(f"phosphene.edge.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'phosphene.edge' has no attribute {name!r}")
