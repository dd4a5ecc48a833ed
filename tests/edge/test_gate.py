"""The gate of the closed loop: when a stimulation command is sent, and when it never is."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from phosphene.edge.gate import Gate, GatePlan
from phosphene.edge.runtime import DecisionSinks, Runtime, RuntimeConfig, SampleBlock
from phosphene.firmware_bridge.protocol import AckStatus, StimAck, StimCommand, StreamDecoder

FS = 1000.0
W = 128  # window samples
PATCH = 16


class Wire:
    """What the gate sent, decoded as a device would decode it."""

    def __init__(self, accept: bool = True):
        self.decoder = StreamDecoder()
        self.commands: list[StimCommand] = []
        self.accept = accept

    def send(self, data: bytes) -> int:
        if not self.accept:
            return 0
        self.commands += self.decoder.feed(data)
        return len(data)


class Log:
    def __init__(self):
        self.records: list[dict] = []

    def write(self, record: dict, text: str | None = None) -> None:
        self.records.append(record)

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["type"] == kind]


def make_gate(*, wire=None, oracle=None, **plan):
    plan = GatePlan(**{"electrodes": (25,), "currents_ua": (20.0,), "count": 3, "min_interval_s": 1.0,
                       "max_wait_s": 0.5, "warmup_s": 0.0, "refractory_s": 0.2, **plan})
    wire, log = wire or Wire(), Log()
    clock = [0]
    gate = Gate(plan, sample_rate_hz=FS, window_samples=W, patch_samples=PATCH, send=wire.send,
                write=log.write, due_ns=lambda sample_end: sample_end * 1_000_000,
                clock_ns=lambda: clock[0], oracle=oracle)
    return gate, wire, log, clock


def decide(gate, clock, samples, p, **kw):
    """One decision per patch at each sample, with probability p (a number or a function)."""
    for s in samples:
        clock[0] = s * 1_000_000 + 200_000  # decided 0.2 ms after the window's last sample
        gate.on_decision(s, p(s) if callable(p) else p, clock[0], **kw)


def ack(gate, clock, command: StimCommand, onset: int, status=AckStatus.DELIVERED):
    clock[0] = onset * 1_000_000 + 500_000
    gate.on_ack(StimAck(0, onset, command.command_id, command.electrode, command.current_ua, status), clock[0])


def test_fires_when_p_crosses_the_threshold_and_logs_the_latencies():
    gate, wire, log, clock = make_gate(threshold=0.7, max_wait_s=100.0)
    decide(gate, clock, range(15, 1000, PATCH), 0.5)
    assert wire.commands == []
    decide(gate, clock, [1007], 0.71)
    (cmd,) = wire.commands
    assert (cmd.command_id, cmd.electrode, cmd.current_ua, cmd.at_sample) == (1, 25, 20.0, False)
    assert cmd.sample_counter == 1007 and cmd.deadline_samples == 20
    assert log.of("command")[0]["reason"] == "threshold" and log.of("command")[0]["score"] == 0.71
    ack(gate, clock, cmd, 1009)
    (a,) = log.of("ack")
    assert a["status"] == "delivered" and a["delay_samples"] == 2
    assert a["delivered_ms"] == pytest.approx(1010 - 1007.2)  # the onset sample's end, host clock
    assert gate.delivered == 1


def test_min_interval_max_wait_and_count():
    gate, wire, log, clock = make_gate(threshold=0.9, count=2)
    decide(gate, clock, range(15, 5000, PATCH), 0.1)  # never crosses: only the longest wait fires
    (first,) = wire.commands  # the second waits for the first's ack: one outstanding at most
    assert log.of("command")[0]["reason"] == "max_wait"
    assert 15 + 500 <= first.sample_counter < 15 + 500 + PATCH  # ready at once, then max_wait_s
    gate2, wire2, log2, clock2 = make_gate(threshold=0.9, count=2)
    for s in range(15, 8000, PATCH):
        decide(gate2, clock2, [s], 0.1)
        if wire2.commands and len(log2.of("ack")) < len(wire2.commands):
            ack(gate2, clock2, wire2.commands[-1], s + 1)
    onsets = [a["sample"] for a in log2.of("ack")]
    assert len(wire2.commands) == len(onsets) == 2  # count reached: no more commands, ever
    assert onsets[1] - onsets[0] >= 1000 + 500  # min interval after the onset, then the wait
    assert gate2.done and log2.of("plan_done")[0]["delivered"] == 2


def test_one_command_outstanding_and_a_lost_ack_is_assumed_delivered():
    gate, wire, log, clock = make_gate(threshold=0.5, count=5, ack_timeout_s=0.5)
    decide(gate, clock, range(15, 400, PATCH), 0.9)
    assert len(wire.commands) == 1  # no ack yet: nothing more, however high p stays
    clock[0] += 600_000_000
    gate.poll(clock[0])
    assert gate.unconfirmed == 1 and log.of("ack_timeout")[0]["command_id"] == 1
    # the interval runs from the latest onset the device could have given it (its deadline)
    sent_at = wire.commands[0].sample_counter
    decide(gate, clock, range(sent_at + PATCH, sent_at + 1000 + 20, PATCH), 0.9)
    assert len(wire.commands) == 1
    decide(gate, clock, [sent_at + 1000 + 20 + W + 200 + 16 * 20], 0.9)
    assert len(wire.commands) == 2
    ack(gate, clock, wire.commands[0], sent_at + 3)  # the lost ack turns up late after all
    assert (gate.delivered, gate.unconfirmed) == (1, 0) and log.of("ack")[0]["late"] is True


def test_never_on_unhealthy_input_nor_inside_a_stimulation_response():
    gate, wire, _, clock = make_gate(threshold=0.5, min_interval_s=0.0, count=10)
    decide(gate, clock, range(15, 2000, PATCH), 0.9, refuse="input unhealthy: 3 dead channels")
    assert wire.commands == [] and gate.holds == {"input unhealthy": len(range(15, 2000, PATCH))}
    decide(gate, clock, [2015], 0.9)
    ack(gate, clock, wire.commands[0], 2016)
    # refractory 0.2 s + a window: decisions on windows holding the response are ignored
    decide(gate, clock, range(2031, 2016 + 200 + W, PATCH), 0.99)
    assert len(wire.commands) == 1
    decide(gate, clock, [2016 + 200 + W + 15], 0.99)
    assert len(wire.commands) == 2


def test_a_refused_command_is_logged_and_not_counted():
    gate, wire, log, clock = make_gate(threshold=0.5, count=1)
    decide(gate, clock, [15], 0.9)
    ack(gate, clock, wire.commands[0], 20, AckStatus.EXPIRED)
    assert gate.refused == {"expired": 1} and gate.delivered == 0 and not gate.done
    assert log.of("ack")[0]["status"] == "expired" and "delivered_ms" not in log.of("ack")[0]
    decide(gate, clock, range(31, 1016, PATCH), 0.9)
    assert len(wire.commands) == 1  # not retried within the plan's interval
    decide(gate, clock, [1023], 0.9)
    assert len(wire.commands) == 2


def test_a_send_that_fails_is_logged_and_never_retried_early():
    gate, _, log, clock = make_gate(wire=Wire(accept=False), threshold=0.5)
    decide(gate, clock, range(15, 900, PATCH), 0.9)
    (rec,) = log.of("command")
    assert rec["sent"] is False and gate.send_failures == 1 and gate.outstanding is None


def test_open_loop_ignores_p_and_quantile_follows_the_score_history():
    gate, wire, log, clock = make_gate(policy="open-loop", threshold=0.5, max_wait_s=100.0)
    decide(gate, clock, range(15, 100, PATCH), 0.0)
    assert len(wire.commands) == 1 and log.of("command")[0]["reason"] == "open_loop"
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 4000)
    gate, wire, log, clock = make_gate(threshold=None, quantile=0.9, warmup_s=30.0, max_wait_s=100.0)
    decide(gate, clock, [15 + PATCH * i for i in range(4000)], lambda s: scores[(s - 15) // PATCH])
    fired = log.of("command")[0]
    assert fired["reason"] == "threshold" and fired["score"] >= fired["threshold"] > 0.85
    assert fired["sample"] >= 30_000  # after the warm-up, never before


def test_plan_validation_and_the_oracle_is_for_benchmarks_only():
    with pytest.raises(ValueError, match="exactly one of threshold"):
        GatePlan(electrodes=(1,), currents_ua=(1.0,), count=1, threshold=0.5, quantile=0.5)
    with pytest.raises(ValueError, match="one per electrode"):
        GatePlan(electrodes=(1, 2, 3), currents_ua=(1.0, 2.0), count=1)
    with pytest.raises(ValueError, match="policy"):
        GatePlan(electrodes=(1,), currents_ua=(1.0,), count=1, policy="psychic")
    with pytest.raises(ValueError, match="true state"):
        make_gate(policy="oracle")
    gate, wire, _, clock = make_gate(policy="oracle", oracle=lambda s: 0.95 if s > 300 else 0.1,
                                     threshold=0.9, max_wait_s=100.0)
    decide(gate, clock, range(15, 400, PATCH), 0.0)  # the decoder's p is ignored
    assert wire.commands[0].sample_counter == 303
    plan = GatePlan(electrodes=(6, 25), currents_ua=(10.0, 20.0), count=4)
    assert [plan.target(i) for i in range(3)] == [(6, 10.0), (25, 20.0), (6, 10.0)]


# --- in the runtime: stale input never stimulates -------------------------------------------------
def test_the_runtime_never_sends_on_stale_windows(edge_bundle, edge_decoder):
    from phosphene.cortex import VirtualCortex

    clock = [10**9]
    out = io.StringIO()
    runtime = Runtime(edge_decoder, spec=edge_bundle.window_spec, normaliser_config=edge_bundle.normaliser_config,
                      n_channels=edge_bundle.n_channels, config=RuntimeConfig(mode="gated", stale_ms=50),
                      sinks=DecisionSinks(stdout=out, json_stdout=True), clock_ns=lambda: clock[0])
    wire, log = Wire(), Log()
    plan = GatePlan(electrodes=(25,), currents_ua=(20.0,), count=100, min_interval_s=0.0, max_wait_s=0.0,
                    warmup_s=0.0, refractory_s=0.0)
    runtime.gate = Gate(plan, sample_rate_hz=FS, window_samples=W, patch_samples=PATCH, send=wire.send,
                        write=log.write, due_ns=runtime.stream_clock.due_ns, clock_ns=lambda: clock[0])
    stream = VirtualCortex(edge_bundle.channel_map, seed=1).stream("resting")
    sample = 0
    for _ in range(250):  # 4 s at real pace: warm-up, then decisions and commands
        clock[0] += 16_000_000
        runtime.process_batch(clock[0], [SampleBlock(sample, sample, stream.read(PATCH)[0], FS)])
        sample += PATCH
    fresh = len(wire.commands)
    assert fresh > 0 and runtime.counters.decisions > 0
    decisions = runtime.counters.decisions
    # the device's samples now arrive later and later (a backlog, for less than the second
    # after which the stream clock re-anchors): every window is stale
    for _ in range(8):
        clock[0] += 100_000_000
        runtime.process_batch(clock[0], [SampleBlock(sample, sample, stream.read(PATCH)[0], FS)])
        sample += PATCH
    summary = runtime.summary()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert runtime.counters.decisions == decisions and summary["stale_windows"] == 8
    assert any(r.get("reason") == "stale" for r in lines)
    assert len(wire.commands) == fresh  # not one command on stale input
    assert summary["gate"]["commands"] == fresh
