"""Wire protocol benchmark: decoder throughput, and a real-time stream over a pty.

    python bench/bench_wire.py                    # throughput (valid, 1 % corrupted), ~30 s
    python bench/bench_wire.py --quick            # same, smaller (< 60 s)
    python bench/bench_wire.py --stream-minutes 10            # real-time pty stream, zero loss?
    python bench/bench_wire.py --stream-minutes 2 --stream-faults   # exact fault accounting

Writes bench/results/wire.json (throughput) and bench/results/wire_stream.json (stream).
The issue's target: >= 100 MB/s of valid 96-channel frames (500x the 192 kB/s a
96-channel 1 kHz stream needs).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from phosphene.firmware_bridge.protocol import (
    StatusFrame,
    StatusState,
    StreamDecoder,
    encode_samples,
    quantize_uv,
)
from phosphene.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MB_S = 100.0


def cpu_model() -> str:
    from phosphene.edge.stats import cpu_name

    return cpu_name()


def make_frames(n_frames: int, n_channels: int = 96, n_samples: int = 16, seed: int = 0,
                sample_format: str = "int16") -> list[bytes]:
    rng = np.random.default_rng(seed)
    # MUA-like values (0..~100 uV): int16 at 0.02 uV/LSB, or float16 microvolts (whose
    # decoder also checks every sample is finite)
    uv = rng.uniform(0, 100, (64, n_samples, n_channels))
    scale = 0.02 if sample_format == "int16" else 1.0
    block = quantize_uv(uv, scale, sample_format=sample_format)[0]
    return [encode_samples(i, i * n_samples, block[i % 64], scale_uv=scale, sample_rate_hz=1000)
            for i in range(n_frames)]


def corrupt(frames: list[bytes], fraction: float, seed: int = 1) -> tuple[list[bytes], int]:
    """Flip one random bit in `fraction` of the frames; returns (frames, n_corrupted)."""
    rng = np.random.default_rng(seed)
    out, n = [], 0
    for f in frames:
        if rng.random() < fraction:
            b = bytearray(f)
            pos = int(rng.integers(len(b)))
            b[pos] ^= 1 << int(rng.integers(8))
            out.append(bytes(b))
            n += 1
        else:
            out.append(f)
    return out, n


def time_decode(stream: bytes, chunk: int, repeats: int) -> tuple[float, StreamDecoder]:
    best = float("inf")
    decoder = None
    for _ in range(repeats):
        d = StreamDecoder()
        pieces = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
        t = time.perf_counter()
        for p in pieces:
            d.feed(p)
        best = min(best, time.perf_counter() - t)
        decoder = d
    return len(stream) / best / 1e6, decoder


def throughput(quick: bool) -> dict:
    n_frames = 4000 if quick else 16000  # 12 MB / 50 MB of 3112-byte frames
    repeats = 3 if quick else 5
    frames = make_frames(n_frames)
    stream = b"".join(frames)
    rows = []
    for chunk in (1 << 20, 1 << 16, 1 << 12):
        mb_s, d = time_decode(stream, chunk, repeats)
        assert d.stats.frames_ok == n_frames and d.stats.frames_lost == 0
        rows.append({"case": "valid", "chunk_bytes": chunk, "mb_per_s": mb_s,
                     "frames_per_s": mb_s * 1e6 / len(frames[0])})
    f16 = b"".join(make_frames(n_frames, sample_format="float16"))
    mb_s, d = time_decode(f16, 1 << 16, repeats)
    assert d.stats.frames_ok == n_frames and d.stats.payload_errors == 0
    rows.append({"case": "valid float16", "chunk_bytes": 1 << 16, "mb_per_s": mb_s,
                 "frames_per_s": mb_s * 1e6 / len(frames[0])})
    bad, n_bad = corrupt(frames, 0.01)
    bad_stream = b"".join(bad)
    mb_s, d = time_decode(bad_stream, 1 << 16, repeats)
    s = d.stats
    # a one-bit error always fails a CRC (header or frame); each costs exactly its frame,
    # except a corrupted last frame, which no later frame can reveal as a gap
    assert s.frames_ok == n_frames - n_bad and s.crc_errors + s.header_errors == n_bad, s
    assert s.frames_lost == n_bad - (bad[-1] != frames[-1])
    rows.append({"case": "1% frames corrupted", "chunk_bytes": 1 << 16, "mb_per_s": mb_s,
                 "frames_per_s": mb_s * 1e6 / len(frames[0]), "corrupted_frames": n_bad,
                 "reported_lost": s.frames_lost})
    # one byte at a time: the worst case for per-call overhead (a serial read of 1 byte)
    small = stream[: 200 * len(frames[0])]
    d = StreamDecoder()
    t = time.perf_counter()
    for i in range(len(small)):
        d.feed(small[i:i + 1])
    rows.append({"case": "byte at a time", "chunk_bytes": 1,
                 "mb_per_s": len(small) / (time.perf_counter() - t) / 1e6})
    # the encoder and the raw CRC, for scale
    data = np.zeros((16, 96), np.int16)
    t = time.perf_counter()
    for i in range(2000):
        encode_samples(i, i * 16, data, scale_uv=0.02, sample_rate_hz=1000)
    enc_mb_s = 2000 * len(frames[0]) / (time.perf_counter() - t) / 1e6
    t = time.perf_counter()
    zlib.crc32(stream)
    crc_mb_s = len(stream) / (time.perf_counter() - t) / 1e6
    rows.append({"case": "encode (Python)", "chunk_bytes": len(frames[0]), "mb_per_s": enc_mb_s})
    rows.append({"case": "zlib.crc32 alone", "chunk_bytes": len(stream), "mb_per_s": crc_mb_s})
    valid = max(r["mb_per_s"] for r in rows if r["case"] == "valid")
    return {"frame_bytes": len(frames[0]), "frames": n_frames, "stream_mb": len(stream) / 1e6,
            "rows": rows, "valid_mb_per_s_best": valid,
            "needed_mb_per_s_96ch_1khz": 194_500 / 1e6, "target_mb_per_s": TARGET_MB_S,
            "meets_target": valid >= TARGET_MB_S}


def stream_over_pty(minutes: float, faults: bool) -> dict:
    from phosphene.firmware_bridge.simulator import (
        CortexSource,
        FaultConfig,
        Simulator,
        SimulatorConfig,
    )
    from phosphene.firmware_bridge.transport import FrameReader, PtyPair

    fault_config = FaultConfig(drop_bytes_p=1e-6, flip_bits_p=1e-7, drop_frames_p=0.002,
                               duplicate_frames_p=0.002, reorder_frames_p=0.002,
                               stall_ms=50, stall_every_s=30, garbage_burst_bytes=1000,
                               garbage_every_s=20) if faults else FaultConfig()

    def progress(c) -> None:
        print(f"  {c.summary_line()}", file=sys.stderr, flush=True)

    sim = Simulator(CortexSource("psychometric", seed=0),
                    SimulatorConfig(speed=1.0, faults=fault_config, progress_every_s=30.0),
                    on_progress=progress)
    duration_s = minutes * 60.0
    with PtyPair() as pty, FrameReader(pty.device_path) as reader:
        if not reader.reader.wait_connected(10.0):
            raise RuntimeError(f"could not open {pty.device_path}")
        t0 = time.monotonic()
        sim.start(pty, duration_s)
        if not sim.wait(duration_s + 120.0) or sim.error is not None:
            raise RuntimeError(f"simulator did not finish: {sim.error}")
        reader.wait_for(lambda f: isinstance(f, StatusFrame) and f.state == StatusState.STOPPED,
                        timeout_s=30.0)
        wall_s = time.monotonic() - t0
        c, s, r = sim.counts, reader.stats, reader.reader.stats
    exact = {"frames_lost": (s.frames_lost, c.expected_frames_lost),
             "duplicates": (s.duplicates, c.expected_duplicates),
             "reordered": (s.reordered, c.expected_reordered),
             "bytes_discarded": (s.bytes_discarded, c.expected_bytes_discarded)}
    return {"minutes": minutes, "faults": faults, "wall_s": wall_s,
            "frames_sent": c.frames_sent, "bytes_sent": c.bytes_sent,
            "frames_received": s.frames_ok, "frames_lost": s.frames_lost,
            "tx_overflow_frames": c.tx_overflow_frames, "max_late_ms": c.max_late_ms,
            "tx_blocked_s": c.tx_blocked_s, "reader_reads": r.reads,
            "mean_read_bytes": r.bytes_read / max(r.reads, 1),
            "injected": {k: getattr(c, k) for k in c.FAULTS},
            "reported_vs_expected": {k: list(v) for k, v in exact.items()},
            "exact": all(a == b for a, b in exact.values()),
            "zero_loss": s.frames_lost == 0 and c.expected_frames_lost == 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller throughput run (< 60 s)")
    ap.add_argument("--stream-minutes", type=float, default=None,
                    help="instead: stream this many minutes in real time over a pty")
    ap.add_argument("--stream-faults", action="store_true",
                    help="with --stream-minutes: inject faults and check exact accounting")
    args = ap.parse_args()
    machine = {"cpu": cpu_model(), "python": platform.python_version(), "numpy": np.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.stream_minutes is not None:
        res = stream_over_pty(args.stream_minutes, args.stream_faults)
        res["machine"] = machine
        name = "wire_stream_faults.json" if args.stream_faults else "wire_stream.json"
        write_json(RESULTS / name, res)
        print(f"real-time pty stream, {res['minutes']:g} min ({res['wall_s']:.0f} s wall) on {machine['cpu']}")
        print(f"  frames sent {res['frames_sent']}, received {res['frames_received']}, "
              f"lost {res['frames_lost']}, tx overflow {res['tx_overflow_frames']}")
        print(f"  max lateness {res['max_late_ms']:.1f} ms, writer blocked {res['tx_blocked_s']:.2f} s, "
              f"mean read {res['mean_read_bytes']:.0f} B")
        for k, (got, want) in res["reported_vs_expected"].items():
            print(f"  {k:<16} reported {got:>9}  expected {want:>9}")
        ok = res["exact"] and (args.stream_faults or res["zero_loss"])
        print("PASS" if ok else "FAIL", f"-> {RESULTS / name}")
        return 0 if ok else 1
    res = throughput(args.quick)
    res["machine"] = machine
    res["quick"] = args.quick
    write_json(RESULTS / "wire.json", res)
    print(f"wire decoder throughput on {machine['cpu']} (Python {machine['python']}), "
          f"{res['frame_bytes']}-byte frames (96 ch x 16 samples)")
    print(f"{'case':<22} {'chunk':>9} {'MB/s':>9} {'frames/s':>10}")
    for r in res["rows"]:
        fps = f"{r['frames_per_s']:10.0f}" if "frames_per_s" in r else " " * 10
        print(f"{r['case']:<22} {r['chunk_bytes']:>9} {r['mb_per_s']:9.1f} {fps}")
    verdict = "meets" if res["meets_target"] else "MISSES"
    print(f"best valid: {res['valid_mb_per_s_best']:.0f} MB/s ({verdict} the {TARGET_MB_S:.0f} MB/s target; "
          f"a 96-ch 1 kHz stream needs {res['needed_mb_per_s_96ch_1khz']:.3f} MB/s) -> {RESULTS / 'wire.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
