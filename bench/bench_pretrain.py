"""Pretraining throughput of the MAE teacher: windows/s per preset, threads and device.

Times full optimizer steps (forward, masked loss, backward, AdamW) at each preset's batch
size (paper: 32) on synthetic windows of the paper's shape (96 electrodes x 128 samples;
the window sampler's memory-map copy, measured at ~40 us a window or 0.2% of a `small`
step, is left out), and the unmasked `encode` the probes run. On CUDA it also times the `paper`
preset (bf16 autocast) and projects the paper's 1M steps. The load average is recorded: on
a shared machine it explains a lot.

    python bench/bench_pretrain.py            # tiny + small, 1 and 2 threads (+ paper on CUDA)
    python bench/bench_pretrain.py --quick    # < 60 s
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting collapse throughput when the cores are shared
# (measured 6x); must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import machine, save, table

from phosphene.geometry import utah_96
from phosphene.signal import WindowSpec
from phosphene.train.config import MAEConfig, TrainConfig
from phosphene.train.mae import build_model, count_parameters
from phosphene.train.pretrain import make_optimizer

PAPER_STEPS = 1_000_000


def time_steps(preset: str, *, device: str, batch: int, steps: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    spec = WindowSpec()
    cfg = MAEConfig.preset(preset, n_channels=utah_96().n_channels, spec=spec, n_sessions=64)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev).train()
    opt = make_optimizer(model, TrainConfig.preset(preset))
    x = torch.randn(batch, spec.window_samples, cfg.n_channels, device=dev)
    session = torch.randint(0, cfg.n_sessions, (batch,), device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step():
        with amp:
            loss, *_ = model(x, session)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocation, kernel selection
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_s = (time.perf_counter() - t0) / steps

    model.eval()
    n_enc = max(1, steps // 2)
    with torch.no_grad(), amp:
        model.encode(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(n_enc):
            model.encode(x)
        sync()
    encode_s = (time.perf_counter() - t0) / n_enc
    row = {"preset": preset, "device": device,
           "threads": torch.get_num_threads() if device == "cpu" else "-", "batch": batch,
           "params_M": count_parameters(model)["total"] / 1e6, "step_ms": 1e3 * train_s,
           "steps_per_s": 1.0 / train_s, "train_windows_per_s": batch / train_s,
           "encode_windows_per_s": batch / encode_s, "load_avg_1min": os.getloadavg()[0]}
    if preset == "paper":
        row["projected_1M_steps_h"] = PAPER_STEPS * train_s / 3600
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps, current thread count only")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    args = ap.parse_args()
    steps = args.steps or (3 if args.quick else 20)
    cores = os.cpu_count() or 1
    thread_counts = [None] if args.quick else sorted({1, cores})
    rows = []
    for preset in ("tiny", "small"):
        for threads in thread_counts:
            batch = TrainConfig.preset(preset).batch_size  # what `phosphene pretrain` runs
            rows.append(time_steps(preset, device="cpu", batch=batch, steps=steps,
                                   threads=threads))
            print(f"  {preset} cpu threads={rows[-1]['threads']}: "
                  f"{rows[-1]['train_windows_per_s']:.1f} windows/s", flush=True)
    if torch.cuda.is_available():
        for preset in ("small", "paper"):
            rows.append(time_steps(preset, device="cuda", batch=32, steps=max(steps, 20),
                                   threads=None))
        rows[-1]["gpu"] = torch.cuda.get_device_name(0)
    cols = ["preset", "device", "threads", "batch", "params_M", "step_ms", "train_windows_per_s",
            "encode_windows_per_s", "load_avg_1min"]
    if any("projected_1M_steps_h" in r for r in rows):
        cols.append("projected_1M_steps_h")
    m = machine()
    title = f"MAE pretraining throughput on {m['cpu']} ({m['cores']} cores)"
    if torch.cuda.is_available():
        title += f" + {torch.cuda.get_device_name(0)}"
    print(table(rows, cols, title))
    path = save("pretrain", {"torch": torch.__version__, "quick": args.quick,
                             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                             "timed_steps": steps, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
