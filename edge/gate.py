"""The closed loop's gate: when to send a stimulation command (`phosphene run --mode gated`).

Map: GatePlan (what to stimulate, how often, the policy and its threshold) -> Gate (fed
one valid decision per patch by the runtime: fires a STIM_COMMAND when P(perceived)
crosses the threshold or the longest wait runs out; matches acknowledgements, times them
out, logs commands and acks with their latencies) -> CommandLink (the open port the
runtime reads, written to without blocking).

Fail-safe by construction: the gate acts only inside a decision, and the runtime makes a
decision only on a window that is warm, fresh (not stale), complete (lost samples within
bound) and, with --refuse-unhealthy, healthy; the gate itself also holds while input
health reports a fault. At most one command is outstanding; two commands are never
closer than `min_interval_s` on the device's sample counter, measured from the delivered
onset (or, for a command never acknowledged, from the latest onset the device could have
given it); the command carries a deadline, so a device refuses it rather than stimulate
late; after `count` stimulations (or unconfirmed commands) the gate stops for good.
Imports numpy, the core and firmware_bridge only.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from phosphene.errors import ConfigError
from phosphene.firmware_bridge.protocol import StimAck, encode_stim_command

__all__ = ["POLICIES", "CommandLink", "Gate", "GatePlan"]

# gated: the decoder's P(perceived); open-loop: fixed intervals, whatever the cortex does;
# oracle: the virtual cortex's true P(perceived | state) (benchmarks only: a device has none)
POLICIES = ("gated", "open-loop", "oracle")


@dataclass(frozen=True)
class GatePlan:
    """A stimulation plan: what to stimulate, how often and by which policy.

    Times are in seconds of the device's sample counter, not of the host's clock.
    Exactly one of threshold (an absolute P(perceived)) and quantile (the score's
    quantile over the last `history_s` of decisions: robust to a probe whose output is not
    calibrated on ongoing activity) sets when the gated and oracle policies fire.
    """

    electrodes: tuple[int, ...]  # stimulated in turn
    currents_ua: tuple[float, ...]  # one per electrode (or one for all)
    count: int  # stimulations delivered (or unconfirmed), then the gate stops
    min_interval_s: float = 2.0  # between two onsets: the plan's rate limit
    max_wait_s: float = 3.0  # after min_interval_s, stimulate anyway (gated, oracle)
    policy: str = "gated"
    threshold: float | None = 0.5
    quantile: float | None = None
    history_s: float = 60.0  # decisions the quantile is taken over
    warmup_s: float = 10.0  # decisions only watched (all policies start at the same sample)
    refractory_s: float = 1.0  # after an onset: windows holding its artifact/response are ignored
    deadline_ms: float = 20.0  # the device refuses a command it would deliver later than this
    ack_timeout_s: float = 0.5  # no acknowledgement by then: assumed delivered (counted)

    def __post_init__(self) -> None:
        if not self.electrodes:
            raise ConfigError("a plan needs at least one electrode")
        if len(self.currents_ua) not in (1, len(self.electrodes)):
            raise ConfigError(f"give one current for all electrodes or one per electrode "
                              f"({len(self.electrodes)}), got {len(self.currents_ua)}")
        if not all(c > 0 for c in self.currents_ua):
            raise ConfigError(f"stimulation currents must be > 0 uA, got {self.currents_ua}")
        if self.count < 1:
            raise ConfigError(f"count must be >= 1, got {self.count}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if (self.threshold is None) == (self.quantile is None):
            raise ConfigError("give exactly one of threshold (P in (0, 1)) and quantile (in (0, 1))")
        for name in ("threshold", "quantile"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")
        for name in ("min_interval_s", "max_wait_s", "warmup_s", "refractory_s", "history_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 s, got {getattr(self, name)}")
        if not self.deadline_ms > 0 or not self.ack_timeout_s > 0:
            raise ConfigError("deadline_ms and ack_timeout_s must be > 0")

    def target(self, index: int) -> tuple[int, float]:
        """(electrode, current_ua) of the index-th command (0-based): electrodes in turn."""
        e = index % len(self.electrodes)
        return self.electrodes[e], self.currents_ua[e if len(self.currents_ua) > 1 else 0]

    def to_json(self) -> dict:
        d = asdict(self)
        d["electrodes"], d["currents_ua"] = list(self.electrodes), list(self.currents_ua)
        return d


class CommandLink:
    """Writes command frames to the port the runtime reads (a full-duplex serial link).

    attach(port) with each (re)opened pyserial port; send(data) writes without ever
    blocking the deciding thread: it returns the bytes written (fewer, or 0, when the
    port's buffer is full or no port is open; the device then resynchronises on the
    next intact frame, and the gate never gets an acknowledgement).
    """

    def __init__(self) -> None:
        self._port = None

    def attach(self, port) -> None:
        self._port = port

    def send(self, data: bytes) -> int:
        port = self._port
        if port is None:
            return 0
        fd = getattr(port, "fd", None)
        try:
            if isinstance(fd, int):
                return os.write(fd, data)  # pyserial's posix fd is non-blocking
            port.write_timeout = 0
            return port.write(data) or 0
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # the device vanished: the reader reconnects; nothing was sent
            return 0


@dataclass
class _Outstanding:
    command_id: int
    decision_index: int
    sample: int  # the decision's last sample (the command's reference)
    t_decided_ns: int
    t_sent_ns: int
    electrode: int
    current_ua: float
    score: float
    reason: str  # "threshold", "max_wait" or "open_loop"


class Gate:
    """Decides, on each valid decision, whether to send the plan's next command.

    Fed by the runtime: on_decision(sample, p, t_decided_ns) for every decision made,
    on_ack(StimAck, t_read_ns) for every acknowledgement, poll(now_ns) in idle time.
    `write(record, text)` receives the command / ack / ack_timeout / plan_done records
    (the runtime's DecisionSinks.write); `due_ns(sample_end)` maps the device's counter
    onto the host clock (the runtime's StreamClock), to time a delivered onset.
    `oracle(sample) -> P(perceived | true state)` is the oracle policy's score.
    """

    def __init__(self, plan: GatePlan, *, sample_rate_hz: float, window_samples: int,
                 patch_samples: int = 16, send: Callable[[bytes], int], write: Callable[[dict, str | None], None],
                 due_ns: Callable[[int], int] | None = None,
                 clock_ns: Callable[[], int] = time.perf_counter_ns,
                 oracle: Callable[[int], float] | None = None):
        if plan.policy == "oracle" and oracle is None:
            raise ValueError("the oracle policy needs the true state (a benchmark's simulator)")
        self.plan = plan
        self.send, self.write, self.due_ns, self.clock_ns = send, write, due_ns, clock_ns
        self.oracle = oracle
        fs = float(sample_rate_hz)
        self._min_interval = round(plan.min_interval_s * fs)
        self._max_wait = round(plan.max_wait_s * fs)
        self._warmup = round(plan.warmup_s * fs)
        self._refractory = round(plan.refractory_s * fs) + int(window_samples)
        self.deadline_samples = max(1, round(plan.deadline_ms * fs / 1000.0))
        self._history: deque[float] = deque(maxlen=max(1, round(plan.history_s * fs / patch_samples)))
        self._threshold = plan.threshold
        self._since_threshold = 0
        self.ready_at: int | None = None  # first sample a command may be decided on
        self._last_onset: int | None = None
        self.outstanding: _Outstanding | None = None
        self._timed_out: dict[int, _Outstanding] = {}
        self._next_id = 1
        self._seq = 0  # the host's own frame counter
        self.delivered = 0
        self.unconfirmed = 0  # timed out: assumed delivered
        self.refused: dict[str, int] = {}
        self.holds: dict[str, int] = {}
        self.send_failures = 0
        self.done = False
        self.commands: list[dict] = []  # every command record (a benchmark reads them)
        self.acks: list[dict] = []

    # ---- what the runtime calls ------------------------------------------------------------
    def on_decision(self, sample: int, p: float, t_decided_ns: int, *, decision_index: int = 0,
                    refuse: str | None = None) -> None:
        """A decision on the window that ends (inclusive) at `sample` gave P = p.

        refuse: why input health forbids stimulating now (None: healthy).
        """
        if self.done:
            return
        if self.ready_at is None:
            self.ready_at = sample + self._warmup
        in_refractory = self._last_onset is not None and sample < self._last_onset + self._refractory
        score = p if self.plan.policy == "gated" else (
            self.oracle(sample) if self.plan.policy == "oracle" else math.nan)
        if not in_refractory and math.isfinite(score):
            self._remember(score)
        if self.outstanding is not None or sample < self.ready_at or in_refractory:
            return
        if refuse:
            self.holds[refuse.split(":")[0]] = self.holds.get(refuse.split(":")[0], 0) + 1
            return
        if self.plan.policy == "open-loop":
            reason = "open_loop"
        elif self._threshold is not None and math.isfinite(score) and score >= self._threshold:
            reason = "threshold"
        elif sample >= self.ready_at + self._max_wait:
            reason = "max_wait"
        else:
            return
        self._fire(sample, score, t_decided_ns, decision_index, reason)

    def on_ack(self, ack: StimAck, t_read_ns: int) -> None:
        """An acknowledgement arrived (read at t_read_ns)."""
        cmd = self.outstanding if (self.outstanding is not None
                                   and self.outstanding.command_id == ack.command_id) else None
        late = cmd is None and ack.command_id in self._timed_out
        if late:
            cmd = self._timed_out.pop(ack.command_id)
            self.unconfirmed -= 1
        if cmd is None:
            self.write({"type": "ack", "command_id": ack.command_id, "status": ack.status_name,
                        "sample": ack.sample_counter, "unexpected": True,
                        "time_unix": round(time.time(), 6)}, f"unexpected ack {ack.command_id}")
            return
        if not late:
            self.outstanding = None
        record = {"type": "ack", "command_id": ack.command_id, "status": ack.status_name,
                  "sample": ack.sample_counter, "electrode": ack.electrode,
                  "current_ua": ack.current_ua,
                  "delay_samples": ack.sample_counter - cmd.sample,
                  "ack_ms": round((t_read_ns - cmd.t_decided_ns) / 1e6, 3)}
        if ack.delivered:
            self.delivered += 1
            self._last_onset = ack.sample_counter
            self.ready_at = max(self.ready_at or 0, ack.sample_counter + self._min_interval)
            if self.due_ns is not None:  # the end of the onset sample, on the host's clock
                record["delivered_ms"] = round((self.due_ns(ack.sample_counter + 1)
                                                - cmd.t_decided_ns) / 1e6, 3)
        else:
            self.refused[ack.status_name] = self.refused.get(ack.status_name, 0) + 1
        if late:
            record["late"] = True
        record["time_unix"] = round(time.time(), 6)
        self.acks.append(record)
        self.write(record, f"ack {ack.command_id}: {ack.status_name} at sample {ack.sample_counter}"
                   + (f", {record['delivered_ms']:.2f} ms after the decision"
                      if "delivered_ms" in record else ""))
        self._check_done()

    def poll(self, now_ns: int) -> None:
        """Idle time: an acknowledgement overdue by ack_timeout_s is given up on."""
        cmd = self.outstanding
        if cmd is None or now_ns - cmd.t_sent_ns < self.plan.ack_timeout_s * 1e9:
            return
        self.outstanding = None
        self._timed_out[cmd.command_id] = cmd
        self.unconfirmed += 1
        # it may have been delivered as late as its deadline allows: the interval runs from there
        self.ready_at = max(self.ready_at or 0, cmd.sample + self.deadline_samples + self._min_interval)
        self._last_onset = cmd.sample + self.deadline_samples
        self.write({"type": "ack_timeout", "command_id": cmd.command_id,
                    "waited_ms": round((now_ns - cmd.t_sent_ns) / 1e6, 1),
                    "time_unix": round(time.time(), 6)},
                   f"no ack for command {cmd.command_id}: assumed delivered")
        self._check_done()

    # ---- internals --------------------------------------------------------------------------
    def _remember(self, score: float) -> None:
        self._history.append(score)
        if self.plan.quantile is None:
            return
        self._since_threshold += 1
        if self._threshold is None or self._since_threshold >= 64:  # every 64 decisions
            self._since_threshold = 0
            if len(self._history) >= 2:
                self._threshold = float(np.quantile(np.fromiter(self._history, float),
                                                    self.plan.quantile))

    def _fire(self, sample: int, score: float, t_decided_ns: int, decision_index: int,
              reason: str) -> None:
        command_id = self._next_id
        self._next_id += 1
        electrode, current_ua = self.plan.target(self.delivered + self.unconfirmed)
        frame = encode_stim_command(self._seq, sample, command_id, electrode, current_ua,
                                    deadline_samples=self.deadline_samples)
        self._seq += 1
        written = self.send(frame)
        t_sent = self.clock_ns()
        # whatever happened, the interval counts from here: a failed send is never retried sooner
        self.ready_at = max(self.ready_at or 0, sample + self._min_interval)
        record = {"type": "command", "command_id": command_id, "policy": self.plan.policy,
                  "reason": reason, "decision_index": decision_index, "sample": sample,
                  "electrode": electrode, "current_ua": current_ua,
                  "score": None if not math.isfinite(score) else round(score, 6),
                  "threshold": None if self._threshold is None else round(self._threshold, 6),
                  "deadline_samples": self.deadline_samples,
                  "send_us": round((t_sent - t_decided_ns) / 1e3, 1),
                  "time_unix": round(time.time(), 6)}
        if written != len(frame):
            self.send_failures += 1
            record["sent"] = False
            self.write(record, f"command {command_id} NOT sent ({written}/{len(frame)} bytes)")
            self.commands.append(record)
            return
        self.outstanding = _Outstanding(command_id, decision_index, sample, t_decided_ns, t_sent,
                                        electrode, current_ua, score, reason)
        self.commands.append(record)
        self.write(record, f"command {command_id}: electrode {electrode} {current_ua:g} uA "
                           f"({reason}, score {score:.3f})")

    def _check_done(self) -> None:
        if not self.done and self.delivered + self.unconfirmed >= self.plan.count:
            self.done = True
            self.write({"type": "plan_done", "delivered": self.delivered,
                        "unconfirmed": self.unconfirmed, "time_unix": round(time.time(), 6)},
                       f"plan done: {self.delivered} delivered, {self.unconfirmed} unconfirmed")

    def summary(self) -> dict:
        """For the run's summary line."""
        return {"policy": self.plan.policy, "commands": len(self.commands),
                "delivered": self.delivered, "unconfirmed": self.unconfirmed,
                "refused": dict(self.refused), "holds": dict(self.holds),
                "send_failures": self.send_failures, "done": self.done,
                "plan": self.plan.to_json()}
