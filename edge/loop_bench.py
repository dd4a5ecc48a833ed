"""`phosphene bench-loop`: does gating on the decoder raise the perceived fraction?

Map: run_policy (one plan, one policy: the virtual cortex streamed through a real pty into
the live runtime, whose Gate writes STIM_COMMANDs back over the same pty; the simulator
records each delivered stimulation's ground truth) -> summarise (perceived fraction with
Wilson 95% CIs, trials per minute, command latencies) -> compare (open loop, gated and the
oracle on the same cortex: the gain over open loop with Newcombe's 95% CI, and the share of
the oracle's gain the decoder captures) -> bench_loop (the command).

The closed-loop cortex draws its stimulations' noise from a generator of its own, so for
one seed the three policies see the same spontaneous activity (the same state trajectory)
and differ only in when they stimulate. Everything is timed in device samples, so
--speed above 1 changes no perception result; command latency is measured at --speed 1
only (a faster stream compresses the host's view of the device's clock).
Imports numpy, the core, firmware_bridge and edge only (the plot is bench/bench_loop.py's).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass

import click
import numpy as np

from phosphene.errors import PhospheneError

__all__ = ["LoopConfig", "bench_loop", "compare", "newcombe_diff_ci", "run_policy", "wilson_ci"]

Z95 = 1.959963984540054


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_diff_ci(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """95% CI of p1 - p2 for two independent proportions (Newcombe's hybrid score method)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_ci(k1, n1, z)
    l2, u2 = wilson_ci(k2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


@dataclass(frozen=True)
class LoopConfig:
    """One benchmark: the plan shared by every policy, and how the loop is run."""

    electrodes: tuple[int, ...] = (6, 25, 53, 65)  # the threshold task's, each at its I50
    count: int = 100  # delivered stimulations per policy
    min_interval_s: float = 2.0
    max_wait_s: float = 3.0
    quantile: float = 0.8  # gated and oracle fire above this quantile of their own score
    warmup_s: float = 15.0  # normaliser warm-up and the quantile's first history
    seed: int = 0  # the virtual cortex (the same for every policy)
    speed: float = 1.0
    task: str | None = None  # the bundle's probe (default: the bundle's default task)
    max_stream_s: float | None = None  # give up after this much stream (default: generous)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values, float)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


class _MemorySink:
    """The runtime's sink for a benchmark: decisions as (sample, p), other records kept."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.p: list[float] = []
        self.records: list[dict] = []

    def write(self, record: dict, text: str | None = None) -> None:
        if record.get("type") == "decision":
            self.samples.append(record["sample"])
            self.p.append(record["p_perceived"])
        else:
            self.records.append(record)


def run_policy(bundle, config: LoopConfig, policy: str, *, threads: int = 1,
               runtime: str = "auto") -> dict:
    """Run the plan once under `policy` (gated, open-loop or oracle); returns its result.

    The simulator runs in a thread of this process (the oracle reads its true state), the
    runtime reads the pty's device side like a serial port and writes commands to it.
    """
    from phosphene.cortex import perception_given_state
    from phosphene.edge.gate import CommandLink, Gate, GatePlan
    from phosphene.edge.runtime import BundleDecoder, Runtime, RuntimeConfig
    from phosphene.edge.source import run_live
    from phosphene.firmware_bridge.simulator import CortexSource, Simulator, SimulatorConfig
    from phosphene.firmware_bridge.transport import PtyPair, open_port

    decoder = BundleDecoder(bundle, threads=threads, runtime=runtime, task=config.task)
    spec = bundle.window_for(decoder.task) if hasattr(bundle, "window_for") else bundle.window_spec
    source = CortexSource("closed-loop", seed=config.seed, channel_map=bundle.channel_map)
    cortex = source.cortex
    currents = tuple(round(cortex.i50_ua[e], 3) for e in config.electrodes)
    plan = GatePlan(electrodes=tuple(config.electrodes), currents_ua=currents, count=config.count,
                    min_interval_s=config.min_interval_s, max_wait_s=config.max_wait_s,
                    policy=policy, threshold=None, quantile=config.quantile,
                    warmup_s=config.warmup_s)
    sink = _MemorySink()
    rt = Runtime(decoder, spec=spec, normaliser_config=bundle.normaliser_config,
                 n_channels=bundle.n_channels, config=RuntimeConfig(mode="gated", status_interval_s=0),
                 sinks=sink, health_reference=bundle.manifest.get("input_health"))
    # P(perceived | g) of each target, tabulated: the oracle looks it up in microseconds
    grid = np.linspace(-6.0, 6.0, 1201)
    tables = {(e, c): perception_given_state(cortex, e, c, grid) for e, c in zip(config.electrodes, currents)}
    truth_state: list[tuple[int, float]] = []  # (sample, g) at each decision: the plot's truth

    def p_state(sample: int, g: float) -> float:
        return float(np.interp(g, grid, tables[plan.target(gate.delivered + gate.unconfirmed)]))

    def oracle(sample: int) -> float:
        g = source.state_at(sample)
        return p_state(sample, g) if math.isfinite(g) else math.nan

    link = CommandLink()
    gate = Gate(plan, sample_rate_hz=spec.sample_rate_hz, window_samples=spec.window_samples,
                patch_samples=spec.patch_samples, send=link.send, write=sink.write,
                due_ns=rt.stream_clock.due_ns, clock_ns=rt.clock_ns,
                oracle=oracle if policy == "oracle" else None)
    gate_on_decision = gate.on_decision

    def on_decision(sample, p, t_ns, **kw):
        gate_on_decision(sample, p, t_ns, **kw)
        truth_state.append((sample, source.state_at(sample)))  # after: never on the command's path
    gate.on_decision = on_decision
    rt.gate = gate
    fs = spec.sample_rate_hz
    per_trial_s = config.min_interval_s + config.max_wait_s + 0.5
    limit_s = config.max_stream_s or (config.warmup_s + 1.5 * config.count * per_trial_s + 10)
    sim = Simulator(source, SimulatorConfig(frame_samples=spec.patch_samples, speed=config.speed,
                                            seed=config.seed, status_every_s=1.0))
    stop = threading.Event()
    with PtyPair() as pty:
        handed = [open_port(pty.device_path, timeout_s=0.1)]

        def port_factory():
            opened = handed.pop() if handed else open_port(pty.device_path, timeout_s=0.1)
            link.attach(opened)
            return opened

        done_at = [None]

        def on_tick() -> None:  # a little stream after the last ack: its onset's truth
            if gate.done and done_at[0] is None:
                done_at[0] = time.monotonic()
            if (done_at[0] is not None and time.monotonic() - done_at[0] > 0.3) or sim.wait(0):
                stop.set()

        sim.start(pty, duration_s=limit_s)
        t0 = time.monotonic()
        try:
            result = run_live(rt, port_factory, stop=stop, on_tick=on_tick)
        finally:
            sim.stop()
            sim.wait(5.0)
            rt.close()
        wall_s = time.monotonic() - t0
    if sim.error is not None:
        raise RuntimeError(f"the simulator failed: {sim.error!r}")
    truth = {r["command_id"]: r for r in sim.truth if r["status"] == "delivered"}
    trials = []
    for ack in gate.acks:
        t = truth.get(ack["command_id"])
        if ack["status"] == "delivered" and t is not None:
            cmd = next(c for c in gate.commands if c["command_id"] == ack["command_id"])
            trials.append({**t, "reason": cmd["reason"], "score": cmd["score"],
                           "delivered_ms": ack.get("delivered_ms"), "ack_ms": ack["ack_ms"],
                           "send_us": cmd["send_us"]})
    return {"policy": policy, "plan": plan.to_json(), "trials": trials,
            "commands": gate.commands, "summary": gate.summary(),
            "decisions": {"sample": sink.samples, "p": sink.p},
            "truth_state": {"sample": [t[0] for t in truth_state],
                            "state": [round(t[1], 4) for t in truth_state],
                            "p_state_next": [round(float(np.interp(t[1], grid, tables[(e, c)])), 4)
                                             for t in truth_state
                                             for e, c in [plan.target(0)]]},
            "sample_rate_hz": fs,
            "runtime": {k: result.summary[k] for k in ("decisions", "no_decisions", "latency_us")},
            "simulator": {k: getattr(sim.counts, k) for k in (
                "commands_received", "commands_delivered", "commands_refused", "stream_s")},
            "wall_s": round(wall_s, 1), "speed": config.speed, "task": decoder.task}


def summarise(run: dict) -> dict:
    """Perceived fraction (Wilson 95% CI), mean P(perceived | state), trials/min, latencies."""
    trials = run["trials"]
    n = len(trials)
    k = sum(t["perceived"] for t in trials)
    fs = run["sample_rate_hz"]
    onsets = [t["sample"] for t in trials]
    first_decision = run["decisions"]["sample"][0] if run["decisions"]["sample"] else 0
    armed = first_decision + run["plan"]["warmup_s"] * fs
    minutes = (max(onsets) - armed) / fs / 60 if onsets and max(onsets) > armed else float("nan")
    p_state = np.array([t["p_state"] for t in trials]) if trials else np.zeros(0)
    lo, hi = wilson_ci(k, n)
    out = {"policy": run["policy"], "n": n, "perceived": k,
           "perceived_fraction": round(k / n, 4) if n else None,
           "ci95": [round(lo, 4), round(hi, 4)],
           "mean_p_state": round(float(p_state.mean()), 4) if n else None,
           "mean_p_state_ci95": ([round(float(p_state.mean() - Z95 * p_state.std(ddof=1) / math.sqrt(n)), 4),
                                  round(float(p_state.mean() + Z95 * p_state.std(ddof=1) / math.sqrt(n)), 4)]
                                 if n > 1 else None),
           "trials_per_min": round(n / minutes, 2) if minutes == minutes and minutes > 0 else None,
           "fired_at_max_wait": sum(t["reason"] == "max_wait" for t in trials),
           "refused": run["summary"]["refused"], "unconfirmed": run["summary"]["unconfirmed"],
           "decision_to_delivered_ms": _percentiles([t["delivered_ms"] for t in trials
                                                     if t["delivered_ms"] is not None]),
           "decision_to_ack_ms": _percentiles([t["ack_ms"] for t in trials]),
           "decision_to_sent_us": _percentiles([t["send_us"] for t in trials]),
           "speed": run["speed"], "task": run["task"], "wall_s": run["wall_s"]}
    return out


def compare(rows: dict[str, dict]) -> dict:
    """Gains over open loop (Newcombe 95% CIs) and the share of the oracle's gain captured."""
    base = rows.get("open-loop")
    out = {}
    if base is None or not base["n"]:
        return out
    for policy in ("gated", "oracle"):
        r = rows.get(policy)
        if r is None or not r["n"]:
            continue
        lo, hi = newcombe_diff_ci(r["perceived"], r["n"], base["perceived"], base["n"])
        out[f"{policy}_gain"] = {"diff": round(r["perceived_fraction"] - base["perceived_fraction"], 4),
                                 "ci95": [round(lo, 4), round(hi, 4)],
                                 "p_state_diff": round(r["mean_p_state"] - base["mean_p_state"], 4)}
    if "gated_gain" in out and "oracle_gain" in out:
        o = out["oracle_gain"]
        out["share_of_oracle_gain"] = (round(out["gated_gain"]["diff"] / o["diff"], 3)
                                       if o["diff"] > 0 else None)
        out["share_of_oracle_gain_p_state"] = (round(out["gated_gain"]["p_state_diff"]
                                                     / o["p_state_diff"], 3)
                                               if o["p_state_diff"] > 0 else None)
    return out


def format_table(rows: dict[str, dict], gains: dict) -> str:
    lines = [f"{'policy':<10} {'n':>4} {'perceived':>10} {'95% CI':>15} {'P(perc|g)':>10} "
             f"{'trials/min':>10} {'deliv p50/p99 ms':>17} {'ack p50/p99 ms':>15}"]
    for name, r in rows.items():
        d, a = r["decision_to_delivered_ms"], r["decision_to_ack_ms"]
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        delivered, acked = f"{d['p50']}/{d['p99']}", f"{a['p50']}/{a['p99']}"
        lines.append(f"{name:<10} {r['n']:>4} {r['perceived_fraction'] or 0:>10.3f} {ci:>15} "
                     f"{r['mean_p_state'] or 0:>10.3f} {r['trials_per_min'] or 0:>10.1f} "
                     f"{delivered:>17} {acked:>15}")
    for key, g in gains.items():
        if isinstance(g, dict):
            lines.append(f"{key}: {g['diff']:+.3f} (95% CI [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]); "
                         f"P(perceived | state) {g['p_state_diff']:+.3f}")
        else:
            lines.append(f"{key}: {g}")
    return "\n".join(lines)


def run_benchmark(bundle, config: LoopConfig, policies: tuple[str, ...], *, threads: int = 1,
                  runtime: str = "auto", progress=None) -> dict:
    """Every policy on the same cortex; returns {"rows", "gains", "runs"}."""
    from phosphene.cortex import pre_stimulus_ceiling

    runs, rows = {}, {}
    for policy in policies:
        if progress:
            progress(f"{policy}: {config.count} stimulations at speed {config.speed:g} ...")
        runs[policy] = run_policy(bundle, config, policy, threads=threads, runtime=runtime)
        rows[policy] = summarise(runs[policy])
    cortex = _cortex(bundle, config)
    return {"rows": rows, "gains": compare(rows), "runs": runs,
            "config": {**config.__dict__, "electrodes": list(config.electrodes)},
            "i50_ua": {str(e): round(cortex.i50_ua[e], 3) for e in config.electrodes},
            "pre_stimulus_ceiling": round(pre_stimulus_ceiling(
                cortex, [(e, cortex.i50_ua[e]) for e in config.electrodes]), 4)}


def _cortex(bundle, config: LoopConfig):
    from phosphene.cortex import VirtualCortex

    return VirtualCortex(bundle.channel_map, seed=config.seed)


@click.command("bench-loop")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--policy", "policies", type=click.Choice(["open-loop", "gated", "oracle"]), multiple=True,
              help="Policies to run (repeat; default all three, in that order).")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="Stimulations delivered per policy.")
@click.option("--electrode", "electrodes", type=click.IntRange(1, 65535), multiple=True,
              help="Electrodes stimulated in turn, each at its threshold current I50 "
                   "(default: the threshold task's 6, 25, 53, 65).")
@click.option("--min-interval-s", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--max-wait-s", type=click.FloatRange(min=0), default=3.0, show_default=True)
@click.option("--quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.8,
              show_default=True, help="gated and oracle stimulate above this quantile of their score.")
@click.option("--task", help="The bundle's probe (e.g. threshold_pre; default: the bundle's).")
@click.option("--warmup-s", type=click.FloatRange(min=0), default=15.0, show_default=True,
              help="Stream watched before the first command (normaliser warm-up, first quantile).")
@click.option("--seed", type=int, default=0, show_default=True, help="The virtual cortex.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Stream pace (1 = real time). Perception results are the same at any pace; "
                   "latencies are only meaningful at 1.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=str),
              help="Write the full result (rows, gains, every trial and decision) as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print rows and gains as JSON on stdout.")
def bench_loop(bundle, policies, count, electrodes, min_interval_s, max_wait_s, quantile, task, warmup_s,
               seed, speed, threads, out, as_json):
    """Closed loop on the virtual cortex: open loop vs gated vs an oracle.

    Streams a closed-loop virtual cortex through a pseudo-terminal into the live runtime
    (--mode gated): the same plan (COUNT stimulations at each electrode's threshold current
    I50, MIN-INTERVAL-S apart, at most MAX-WAIT-S more) is run open loop (fixed intervals),
    gated on the bundle's P(perceived), and gated on the cortex's true P(perceived | state)
    (the oracle). Prints the perceived fraction with Wilson 95% CIs, P(perceived | state)
    at the onsets, trials per minute, command latency (decision to the delivered sample on
    the host's clock, and decision to ack) p50/p99, the gains over open loop with 95% CIs
    and the share of the oracle's gain captured.

    \b
    Examples:
      phosphene bench-loop demo-run/bundle --task threshold_pre
      phosphene bench-loop bundle --count 200 --speed 5 --out loop.json
      phosphene bench-loop bundle --policy gated --count 30 --json
    """
    from phosphene.edge.bundle import BundleError, load_bundle

    try:
        b = load_bundle(bundle)
    except (BundleError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    ids = set(b.channel_map.ids)
    electrodes = tuple(electrodes) or tuple(e for e in (6, 25, 53, 65) if e in ids)
    missing = [e for e in electrodes if e not in ids]
    if missing:
        raise click.UsageError(f"--electrode {missing[0]} is not on the bundle's channel map")
    config = LoopConfig(electrodes=electrodes, count=count, min_interval_s=min_interval_s,
                        max_wait_s=max_wait_s, quantile=quantile, seed=seed, speed=speed, task=task,
                        warmup_s=warmup_s)
    try:
        result = run_benchmark(b, config, tuple(policies) or ("open-loop", "gated", "oracle"),
                               threads=threads, progress=lambda m: click.echo(f"[bench-loop] {m}", err=True))
    except (PhospheneError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if out:
        from phosphene.io import write_json

        write_json(out, result)
    brief = {"rows": result["rows"], "gains": result["gains"], "i50_ua": result["i50_ua"],
             "pre_stimulus_ceiling": result["pre_stimulus_ceiling"]}
    if as_json:
        click.echo(json.dumps(brief, indent=2))
    else:
        click.echo(format_table(result["rows"], result["gains"]))
        click.echo(f"pre-stimulus ceiling (balanced accuracy knowing g): {result['pre_stimulus_ceiling']}",
                   err=True)
    sys.stdout.flush()
