"""Run a bundle's Encoder over saved windows in THIS interpreter's environment.

    python runtime_decisions.py BUNDLE WINDOWS.npy OUT.npz RUNTIME XNNPACK(0|1)

Used by test_tflite_runtime_parity.py, also inside the numpy<2 tflite-runtime env; it
imports only numpy and phosphene.edge, like a board.
"""

import sys

import numpy as np

from phosphene.edge.bundle import load_bundle
from phosphene.edge.interpreter import Encoder

bundle_path, windows_path, out_path, runtime, xnnpack = sys.argv[1:6]
bundle = load_bundle(bundle_path)
windows = np.load(windows_path)
results = {"numpy_version": np.array(np.__version__)}
for task in sorted(bundle.probes):
    enc = Encoder(bundle, runtime=runtime, task=task, xnnpack=xnnpack == "1")
    results[f"{task}_latent"] = np.stack([enc.latent(w) for w in windows])
    decisions = [enc.decide(w) for w in windows]
    results[f"{task}_p"] = np.array([d.p_perceived for d in decisions])
    results[f"{task}_decision"] = np.array([d.perceived for d in decisions])
    results["runtime"] = np.array(f"{enc.model.runtime_name} {enc.model.runtime_version}")
np.savez(out_path, **results)
