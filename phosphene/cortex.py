"""The virtual cortex: realistic 96-channel V1 MUA with known ground truth.

No participant data is public, so phosphene ships this generator as its default data. It
models the *output* of the MUA extraction (1 kHz, uV), not broadband. docs/virtual-cortex.md
describes the model and its parameters; the parameters were fixed once for realism and are
not tuned to make any decoder win.

Map of the model (all processes seeded, generated in chunks with carried state):
  cortical state g(t)         slow OU (tau 3 s): excitability, shared by all electrodes
  spatial modes a_k(t) m_k    K smooth random fields over the array, OU amplitudes (tau 0.3 s)
  travelling wave             plane wave over the array, drifting direction, OU amplitude
  MUA_c(t) = base_c,d * exp(gain_c,d * field_c(t)) + coloured noise_c     (dead/noisy channels)
  stimulation (onset, e, I):  artifact in [0, 170) ms; evoked response R spreading with
                              distance from e (space constant grows with current)
  perception:                 R_norm = sigmoid(k log(I/I50_e) + beta g(onset) + eta)
                              perceived = [R_norm + nu > 0.5]; P_true = Phi((R_norm - .5)/sd_nu)
The ideal observer knows R_norm, so P_true is the best any decoder can do. Before the
onset only g is knowable: perception_given_state() marginalises eta and nu, and
pre_stimulus_ceiling() is the balanced accuracy of a predictor that knows g exactly.
A stream also takes stimulations commanded from outside (SessionStream.stimulate: the
closed loop), decided by the same model with draws of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phosphene.errors import ConfigError
from phosphene.geometry import ChannelMap, utah_96

__all__ = [
    "PRESETS",
    "PSYCHOMETRIC_ELECTRODES",
    "THRESHOLD_ELECTRODES",
    "CortexConfig",
    "DatasetPreset",
    "DeliveredStimulation",
    "SessionStream",
    "SimulatedTrial",
    "VirtualCortex",
    "generate_dataset",
    "ideal_balanced_accuracy",
    "perception_given_state",
    "pre_stimulus_ceiling",
]

# The paper's stimulated electrodes (Table 2).
PSYCHOMETRIC_ELECTRODES = (6, 14, 20, 23, 25, 34, 42, 44, 53, 65, 70, 96)
THRESHOLD_ELECTRODES = (6, 25, 53, 65)
# Six current levels between 1 and 81 uA, geometric.
PSYCHOMETRIC_CURRENTS_UA = tuple(round(float(c), 1) for c in np.geomspace(1.0, 81.0, 6))

_SLOW_RATE_HZ = 100.0  # latent processes are generated at 100 Hz and interpolated to 1 kHz


@dataclass(frozen=True)
class CortexConfig:
    """Parameters of the generator. Units in names; defaults fixed before any decoding."""

    sample_rate_hz: float = 1000.0
    # spontaneous activity
    baseline_uv: tuple[float, float] = (4.0, 12.0)  # per-channel MUA level range
    state_tau_s: float = 3.0  # slow cortical state time constant
    state_weight: float = 0.25  # contribution of the state to each channel's log-MUA
    n_modes: int = 4  # smooth spatial modes
    mode_tau_s: float = 0.3
    mode_length_um: float = 1200.0  # spatial correlation length of the modes
    mode_weight: float = 0.12
    wave_speed_um_per_s: float = 60000.0  # 0.06 m/s travelling activity
    wave_frequency_hz: float = 8.0
    wave_weight: float = 0.10
    noise_uv: float = 0.6  # coloured per-sample noise
    n_dead_channels: int = 3  # flat, near-zero channels
    n_noisy_channels: int = 2  # channels with 4x noise
    # drift across recording days
    gain_drift_per_day: float = 0.04  # log-gain random walk per day
    baseline_drift_per_day: float = 0.05
    # stimulation
    artifact_ms: float = 170.0  # saturated period after onset (window starts after it)
    artifact_uv: float = 80.0
    response_uv: float = 6.0  # peak evoked MUA at the stimulated electrode, R_norm = 1
    response_tau_ms: float = 150.0  # decay of the evoked response after the artifact
    spread_um: float = 350.0  # space constant at 1 uA
    spread_um_per_ua: float = 6.0  # spread grows with current
    # perception
    i50_ua: tuple[float, float] = (8.0, 35.0)  # per-electrode 50% current range (log-uniform)
    psychometric_slope: float = 2.2  # k in sigmoid(k log(I/I50) + ...)
    state_on_perception: float = 0.8  # beta: excitable states favour perception
    response_noise: float = 0.6  # eta: trial-to-trial variability of the response drive
    decision_noise: float = 0.2  # sd of nu: downstream noise no decoder can see
    trial_interval_s: tuple[float, float] = (1.1, 1.6)  # stimulation onset spacing


@dataclass(frozen=True)
class SimulatedTrial:
    """A stimulation: onset sample (in its stream), electrode id, current, ground truth."""

    sample: int
    electrode: int
    current_ua: float
    perceived: int
    p_true: float


@dataclass(frozen=True)
class DeliveredStimulation:
    """A commanded stimulation as delivered, with its ground truth (SessionStream.stimulate)."""

    command_id: int
    sample: int  # onset, in the stream's own sample index
    electrode: int
    current_ua: float
    perceived: int
    p_true: float  # P(perceived | R_norm): what the ideal observer knows after the onset
    p_state: float  # P(perceived | g at onset): what a predictor that knows the state knows
    state: float  # g at the onset sample
    r_norm: float


class _OU:
    """Ornstein-Uhlenbeck process(es) at the slow rate, unit stationary SD, chunked."""

    def __init__(self, rng: np.random.Generator, tau_s: float, n: int):
        self.rng = rng
        self.a = math.exp(-1.0 / (tau_s * _SLOW_RATE_HZ))
        self.sd = math.sqrt(1.0 - self.a**2)
        self.x = rng.standard_normal(n)
        # block matrix for the AR(1) recurrence: x_t = a^(t+1) x_-1 + sum_j a^(t-j) e_j
        L = 64
        t = np.arange(L)
        self._powers = self.a ** (t + 1)
        self._M = np.tril(self.a ** (t[:, None] - t[None, :]).clip(0)) * (t[:, None] >= t[None, :])

    def step(self, n_steps: int) -> np.ndarray:
        """(n_steps, n) values, continuing from the carried state."""
        out = np.empty((n_steps, self.x.shape[0]))
        L = self._M.shape[0]
        for start in range(0, n_steps, L):
            k = min(L, n_steps - start)
            e = self.rng.standard_normal((k, self.x.shape[0])) * self.sd
            block = self._powers[:k, None] * self.x[None, :] + self._M[:k, :k] @ e
            out[start:start + k] = block
            self.x = block[-1]
        return out


class VirtualCortex:
    """A seeded virtual V1 on a channel map. One instance = one implanted array."""

    def __init__(self, channel_map: ChannelMap | None = None, *, seed: int = 0,
                 config: CortexConfig = CortexConfig()):
        self.channel_map = channel_map or utah_96()
        self.config = config
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 0])
        C = self.channel_map.n_channels
        pos = self.channel_map.positions_um()
        self.distances_um = self.channel_map.distances_um()
        self.baseline_uv = rng.uniform(*config.baseline_uv, size=C)
        self.gain = rng.lognormal(0.0, 0.2, size=C)
        self.noise_uv = np.full(C, config.noise_uv) * rng.lognormal(0.0, 0.2, size=C)
        order = rng.permutation(C)
        self.dead = np.sort(order[: min(config.n_dead_channels, C - 1)])
        self.noisy = np.sort(order[len(self.dead): len(self.dead) + config.n_noisy_channels])
        self.noise_uv[self.noisy] *= 4.0
        # smooth spatial modes: random fields smoothed with a Gaussian kernel over the array
        kernel = np.exp(-self.distances_um**2 / (2 * config.mode_length_um**2))
        modes = kernel @ rng.standard_normal((C, config.n_modes))
        self.modes = modes / (modes.std(axis=0, keepdims=True) + 1e-9)
        self.positions_um = pos - pos.mean(axis=0)
        self.i50_ua = {int(e): float(np.exp(rng.uniform(*np.log(config.i50_ua))))
                       for e in self.channel_map.ids}

    # --- per-day drift ---------------------------------------------------------------
    def day_params(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """(gain, baseline_uv) on a recording day: a seeded random walk over days."""
        C = self.channel_map.n_channels
        rng = np.random.default_rng([self.seed, 1])
        steps = rng.standard_normal((max(day, 0) + 1, 2, C))
        walk = steps[1:].sum(axis=0) if day > 0 else np.zeros((2, C))
        gain = self.gain * np.exp(self.config.gain_drift_per_day * walk[0])
        base = self.baseline_uv * np.exp(self.config.baseline_drift_per_day * walk[1])
        return gain, base

    def stream(self, kind: str = "resting", *, day: int = 0, session_index: int = 0,
               electrodes: tuple[int, ...] | None = None,
               currents_ua: tuple[float, ...] | None = None) -> SessionStream:
        """An endless session of one kind: resting, psychometric or threshold."""
        return SessionStream(self, kind, day=day, session_index=session_index,
                             electrodes=electrodes, currents_ua=currents_ua)

    def perception_probability(self, electrode: int, current_ua: float, state: float,
                               drive_noise: float) -> tuple[float, float]:
        """(R_norm, P_true) for a stimulation; the ideal observer's knowledge."""
        cfg = self.config
        drive = (cfg.psychometric_slope * math.log(current_ua / self.i50_ua[int(electrode)])
                 + cfg.state_on_perception * state + drive_noise)
        r_norm = 1.0 / (1.0 + math.exp(-drive))
        p_true = 0.5 * (1.0 + math.erf((r_norm - 0.5) / (cfg.decision_noise * math.sqrt(2.0))))
        return r_norm, p_true


class SessionStream:
    """Chunked generator of one session: read(n) -> ((n, C) float32 uV, [SimulatedTrial])."""

    def __init__(self, cortex: VirtualCortex, kind: str, *, day: int, session_index: int,
                 electrodes: tuple[int, ...] | None, currents_ua: tuple[float, ...] | None):
        if kind not in ("resting", "psychometric", "threshold"):
            raise ConfigError(f"session kind must be resting, psychometric or threshold, got {kind!r}")
        self.cortex = cortex
        self.kind = kind
        cfg = cortex.config
        kind_id = {"resting": 0, "psychometric": 1, "threshold": 2}[kind]
        self.rng = np.random.default_rng([cortex.seed, 2, kind_id, day, session_index])
        C = cortex.channel_map.n_channels
        self.gain, self.base = cortex.day_params(day)
        self.state = _OU(self.rng, cfg.state_tau_s, 1)
        self.modes = _OU(self.rng, cfg.mode_tau_s, cfg.n_modes)
        self.wave_amp = _OU(self.rng, 1.0, 1)
        self.wave_dir = self.rng.uniform(0, 2 * np.pi)
        self.wave_phase = 0.0
        self.t = 0  # samples generated so far
        self._slow_prev: np.ndarray | None = None  # last slow sample, for interpolation
        self._slow_t = 0  # slow steps generated
        self._noise_tail = np.zeros((2, C))
        self._active: list[tuple[SimulatedTrial, float]] = []  # events whose response may still run
        # stimulation schedule
        ids = cortex.channel_map.ids
        if kind == "psychometric":
            self.electrodes = tuple(e for e in (electrodes or PSYCHOMETRIC_ELECTRODES) if e in ids) or ids[:1]
            self.currents = tuple(currents_ua or PSYCHOMETRIC_CURRENTS_UA)
        elif kind == "threshold":
            self.electrodes = tuple(e for e in (electrodes or THRESHOLD_ELECTRODES) if e in ids) or ids[:1]
            self.currents = ()
        else:
            self.electrodes, self.currents = (), ()
        self._block: list[tuple[int, float]] = []
        self._next_onset = int(self.rng.uniform(*cfg.trial_interval_s) * cfg.sample_rate_hz) \
            if kind != "resting" else None
        # commanded stimulations (the closed loop): drawn from a generator of their own, so
        # the spontaneous activity of a seed is the same whenever and however often it is
        # stimulated, and the offline datasets never see these draws
        self._command_seed = [cortex.seed, 3, kind_id, day, session_index]
        self._command_rng: np.random.Generator | None = None
        self._commands: list[tuple[int, int, int, float]] = []  # (sample, id, electrode, uA)
        self.delivered: list[DeliveredStimulation] = []  # taken by take_delivered()
        self._state_log: np.ndarray | None = None  # g per sample, a ring (record_state)

    # --- the closed loop: stimulations commanded from outside ----------------------------
    def stimulate(self, sample: int, electrode: int, current_ua: float, command_id: int = 0) -> None:
        """Stimulate `electrode` at `current_ua` with onset `sample` (not generated yet).

        Perception is decided at the onset exactly as for a scheduled trial: the state g at
        that sample, a response-noise draw eta and a decision-noise draw nu, through
        VirtualCortex.perception_probability. The onset's artifact and evoked response are
        added to the samples read() returns; its ground truth goes to `delivered`.
        """
        if sample < self.t:
            raise ValueError(f"onset sample {sample} was already generated (next is {self.t})")
        if int(electrode) not in self.cortex.i50_ua:
            raise ValueError(f"electrode {electrode} is not on this array's channel map")
        if not current_ua > 0:
            raise ValueError(f"current must be > 0 uA, got {current_ua}")
        self._commands.append((int(sample), int(command_id), int(electrode), float(current_ua)))
        self._commands.sort()

    def take_delivered(self) -> list[DeliveredStimulation]:
        """The commanded stimulations generated since the last call (onsets in past reads)."""
        out, self.delivered = self.delivered, []
        return out

    def record_state(self, seconds: float) -> None:
        """Keep g of the last `seconds` of samples, for state_at() (an oracle's view)."""
        n = max(1, int(seconds * self.cortex.config.sample_rate_hz))
        self._state_log = np.full(n, np.nan)

    def state_at(self, sample: int) -> float:
        """g at an already generated sample (NaN if older than record_state keeps)."""
        log_ = self._state_log
        if log_ is None:
            raise RuntimeError("call record_state(seconds) before state_at()")
        if not (self.t - len(log_) <= sample < self.t):
            return float("nan")
        return float(log_[sample % len(log_)])

    def _commanded(self, g: np.ndarray) -> list[SimulatedTrial]:
        """Trials for the commanded onsets inside the chunk now being generated."""
        cx, cfg = self.cortex, self.cortex.config
        end = self.t + len(g)
        events = []
        while self._commands and self._commands[0][0] < end:
            onset, command_id, electrode, current = self._commands.pop(0)
            if self._command_rng is None:
                self._command_rng = np.random.default_rng(self._command_seed)
            state = float(g[onset - self.t])
            eta = float(self._command_rng.normal(0.0, cfg.response_noise))
            r_norm, p_true = cx.perception_probability(electrode, current, state, eta)
            perceived = int(r_norm + self._command_rng.normal(0.0, cfg.decision_noise) > 0.5)
            ev = SimulatedTrial(onset, electrode, current, perceived, float(p_true))
            events.append(ev)
            self._active.append((ev, r_norm))
            self.delivered.append(DeliveredStimulation(
                command_id, onset, electrode, current, perceived, float(p_true),
                float(perception_given_state(cx, electrode, current, state)), state, float(r_norm)))
        return events

    # --- slow latent processes ---------------------------------------------------------
    def _slow(self, n_samples: int) -> np.ndarray:
        """(n_samples, C) log-domain field at 1 kHz, interpolated from the slow rate."""
        cx = self.cortex
        cfg = cx.config
        per = int(cfg.sample_rate_hz / _SLOW_RATE_HZ)
        first_needed = self.t // per
        last_needed = (self.t + n_samples - 1) // per + 1
        # generate slow steps up to last_needed inclusive
        n_new = last_needed + 1 - self._slow_t
        if n_new > 0:
            g = self.state.step(n_new)[:, 0]
            a = self.modes.step(n_new)
            amp = self.wave_amp.step(n_new)[:, 0]
            steps = np.arange(self._slow_t, self._slow_t + n_new) / _SLOW_RATE_HZ
            self.wave_dir += 0.02 * self.rng.standard_normal()
            k = 2 * np.pi * cfg.wave_frequency_hz / cfg.wave_speed_um_per_s
            proj = cx.positions_um @ np.array([np.cos(self.wave_dir), np.sin(self.wave_dir)])
            phase = 2 * np.pi * cfg.wave_frequency_hz * steps
            wave = np.abs(amp)[:, None] * np.cos(k * proj[None, :] - phase[:, None])
            field_ = (cfg.state_weight * g[:, None] + cfg.mode_weight * (a @ cx.modes.T)
                      + cfg.wave_weight * wave)
            new = np.concatenate([g[:, None], field_], axis=1)
            self._slow_buf = new if self._slow_prev is None else np.concatenate([self._slow_prev, new])
            self._slow_base = self._slow_t - (0 if self._slow_prev is None else len(self._slow_prev))
            self._slow_t += n_new
        buf, base = self._slow_buf, self._slow_base
        t = np.arange(self.t, self.t + n_samples) / per - base
        i0 = np.floor(t).astype(int)
        w = (t - i0)[:, None]
        vals = buf[i0] * (1 - w) + buf[np.minimum(i0 + 1, len(buf) - 1)] * w
        keep_from = max(0, first_needed + (n_samples // per) - base - 1)
        self._slow_prev = buf[keep_from:]
        self._slow_base_prev = base + keep_from
        self._slow_buf, self._slow_base = self._slow_prev, self._slow_base_prev
        return vals  # column 0: state g; columns 1..C: field

    def _schedule(self) -> SimulatedTrial | None:
        """Draw the next trial (balanced blocks over electrodes x currents)."""
        cx = self.cortex
        if not self._block:
            if self.kind == "psychometric":
                self._block = [(e, c) for e in self.electrodes for c in self.currents]
            else:
                self._block = [(e, cx.i50_ua[e]) for e in self.electrodes]
            self.rng.shuffle(self._block)
        electrode, current = self._block.pop()
        return electrode, float(current)

    def read(self, n_samples: int) -> tuple[np.ndarray, list[SimulatedTrial]]:
        """Generate the next n samples: ((n, C) float32 MUA in uV, events with onsets inside)."""
        if n_samples <= 0:
            return np.zeros((0, self.cortex.channel_map.n_channels), np.float32), []
        cx, cfg = self.cortex, self.cortex.config
        C = cx.channel_map.n_channels
        slow = self._slow(n_samples)
        g, field_ = slow[:, 0], slow[:, 1:]
        mua = self.base[None, :] * np.exp(self.gain[None, :] * field_)
        # coloured noise: 3-tap moving average of white noise (MUA is low-passed at 200 Hz)
        white = self.rng.standard_normal((n_samples, C)) * cx.noise_uv[None, :]
        padded = np.concatenate([self._noise_tail, white])
        mua += (padded[2:] + padded[1:-1] + padded[:-2]) / np.sqrt(3.0)
        self._noise_tail = padded[-2:]
        # stimulation events starting in this chunk
        events: list[SimulatedTrial] = self._commanded(g) if self._commands else []
        if self._state_log is not None:
            n_log = len(self._state_log)
            self._state_log[np.arange(self.t, self.t + n_samples)[-n_log:] % n_log] = g[-n_log:]
        while self._next_onset is not None and self._next_onset < self.t + n_samples:
            onset = self._next_onset
            electrode, current = self._schedule()
            state = float(g[onset - self.t]) if onset >= self.t else 0.0
            eta = float(self.rng.normal(0.0, cfg.response_noise))
            r_norm, p_true = cx.perception_probability(electrode, current, state, eta)
            perceived = int(r_norm + self.rng.normal(0.0, cfg.decision_noise) > 0.5)
            ev = SimulatedTrial(int(onset), int(electrode), current, perceived, float(p_true))
            events.append(ev)
            self._active.append((ev, r_norm))
            self._next_onset = onset + int(self.rng.uniform(*cfg.trial_interval_s) * cfg.sample_rate_hz)
        # artifact and evoked responses of active events overlapping this chunk
        t_idx = np.arange(self.t, self.t + n_samples)
        art = int(cfg.artifact_ms * cfg.sample_rate_hz / 1000)
        still = []
        for ev, r_norm in self._active:
            rel = t_idx - ev.sample
            e_col = cx.channel_map.index_of(ev.electrode)
            dist = cx.distances_um[e_col]
            spread = cfg.spread_um + cfg.spread_um_per_ua * ev.current_ua
            spatial = np.exp(-dist**2 / (2 * spread**2))
            in_art = (rel >= 0) & (rel < art)
            if in_art.any():
                decay = np.exp(-rel[in_art] / 60.0)[:, None]
                mua[in_art] += cfg.artifact_uv * (0.3 + 0.7 * spatial[None, :]) * (0.5 + decay)
            post = rel >= art
            if post.any():
                tau = cfg.response_tau_ms * cfg.sample_rate_hz / 1000
                time_course = np.exp(-(rel[post] - art) / tau)[:, None]
                amp = cfg.response_uv * r_norm * (ev.current_ua / (ev.current_ua + 10.0))
                mua[post] += amp * self.gain[None, :] * spatial[None, :] * time_course
            if rel[-1] < art + 8 * cfg.response_tau_ms:
                still.append((ev, r_norm))
        self._active = still
        mua[:, cx.dead] = 0.2 + 0.05 * self.rng.standard_normal((n_samples, len(cx.dead)))
        self.t += n_samples
        return np.maximum(mua, 0.0).astype(np.float32), events


def perception_given_state(cortex: VirtualCortex, electrode: int, current_ua: float,
                           state: float | np.ndarray, *, n_nodes: int = 48) -> float | np.ndarray:
    """P(perceived | g): the perception model marginalised over the response noise eta and
    the decision noise nu, for a stimulation of `electrode` at `current_ua` (uA) in state g.

    What an oracle that knows the cortical state at the onset (and nothing after it) can
    know. Gauss-Hermite quadrature over eta (n_nodes points: exact to ~1e-9 here); nu is
    integrated in closed form. `state`: a float or an array of g values (same shape out).
    """
    cfg = cortex.config
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)  # weight exp(-x^2 / 2)
    weights = weights / math.sqrt(2.0 * math.pi)
    g = np.asarray(state, dtype=np.float64)
    drive = (cfg.psychometric_slope * math.log(current_ua / cortex.i50_ua[int(electrode)])
             + cfg.state_on_perception * g[..., None] + cfg.response_noise * nodes)
    r_norm = 1.0 / (1.0 + np.exp(-drive))
    z = (r_norm - 0.5) / (cfg.decision_noise * math.sqrt(2.0))
    erf = np.vectorize(math.erf, otypes=[float])  # numpy has no erf; scipy is off the edge
    p = (0.5 * (1.0 + erf(z))) @ weights
    return float(p) if np.ndim(state) == 0 else p


def pre_stimulus_ceiling(cortex: VirtualCortex,
                         conditions: list[tuple[int, float]] | None = None, *,
                         knows_condition: bool = False, n_grid: int = 2001) -> float:
    """Balanced accuracy ceiling of a pre-stimulus predictor: one that knows the cortical
    state g at the onset exactly, and nothing that happens after it.

    conditions: the (electrode, current_ua) pairs the trials are drawn from, equally often;
    default: each of THRESHOLD_ELECTRODES on the array at its own I50 (the threshold task).
    knows_condition: whether the predictor also knows which pair comes next (a window that
    ends at the onset does not say; the psychometric task mixes currents, so it matters
    there, not at I50 where every pair has the same P(perceived | g)).

    Expected over the state's stationary distribution (g ~ N(0, 1)) and the trials'
    noise: the predictor says "perceived" when P(perceived | what it knows) exceeds the
    overall P(perceived), which is the rule that maximises balanced accuracy. A decoder of
    the pre-stimulus window can at best reach this; the ideal observer after the onset
    (ideal_balanced_accuracy) knows eta too and goes higher.
    """
    if conditions is None:
        ids = set(cortex.channel_map.ids)
        conditions = [(e, cortex.i50_ua[e]) for e in THRESHOLD_ELECTRODES if e in ids]
    if not conditions:
        raise ConfigError("conditions must name at least one (electrode, current_ua) pair")
    g = np.linspace(-8.0, 8.0, n_grid)
    w = np.exp(-0.5 * g**2)
    w /= w.sum()
    p = np.stack([perception_given_state(cortex, e, c, g) for e, c in conditions])  # (K, G)
    w_kg = np.broadcast_to(w / len(conditions), p.shape)
    prior = float((w_kg * p).sum())
    score = p if knows_condition else np.broadcast_to(p.mean(axis=0), p.shape)
    say_yes = score > prior
    hit = float((w_kg * p * say_yes).sum()) / prior
    correct_reject = float((w_kg * (1.0 - p) * ~say_yes).sum()) / (1.0 - prior)
    return 0.5 * (hit + correct_reject)


def ideal_balanced_accuracy(p_true: np.ndarray, perceived: np.ndarray) -> float:
    """Balanced accuracy of the ideal observer (predict perceived iff P_true > 0.5)."""
    p_true, perceived = np.asarray(p_true), np.asarray(perceived)
    pred = p_true > 0.5
    recalls = [np.mean(pred[perceived == k] == bool(k)) for k in (0, 1) if np.any(perceived == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


# --------------------------------------------------------------------------------------
# Dataset presets
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetPreset:
    """Shape of a generated dataset (the paper's Table 2 at some scale)."""

    name: str
    resting_sessions: int
    resting_days: int
    resting_session_s: float
    psychometric_sessions: int
    psychometric_days: int
    psychometric_trials: int  # in total across sessions
    threshold_sessions: int
    threshold_days: int
    threshold_trials: int
    lead_in_s: float = 12.0  # spontaneous activity before the first trial (normaliser warm-up)
    dtype: str = "float32"
    # Evaluation set: labelled trials per task in new sessions of the same array and days,
    # written to <dataset>/eval and never used for fitting or selection. A test split of
    # 60-80 trials has a 95% CI of +-12 points; 2,000 trials bring it to about +-2.
    eval_trials: int = 0
    eval_trials_per_session: int = 500  # ~11 min of stimulation per session


PRESETS: dict[str, DatasetPreset] = {
    "tiny": DatasetPreset("tiny", 3, 3, 20.0, 2, 2, 60, 2, 2, 60, eval_trials=60,
                          eval_trials_per_session=30),
    # Stored as the array's wire carries samples (float16, docs/protocol.md), like a session
    # recorded through the bedside acquisition path: what the bundle is trained and validated
    # on is bit for bit what the edge receives. (`tiny` stays float32, so the tests see the
    # wire's rounding.)
    "demo": DatasetPreset("demo", 10, 5, 48.0, 4, 2, 288, 4, 2, 400, eval_trials=2000,
                          dtype="float16"),
    # Paper Table 2: 14.6 h resting over 252 sessions / 96 days; 1,205 and 1,760 trials.
    "paper": DatasetPreset("paper", 252, 96, 14.6 * 3600 / 252, 22, 13, 1205, 19, 11, 1760,
                           dtype="float16", eval_trials=6000),
    # `make reproduce`: 2 h of resting data over 40 days (what 2 CPU cores can pretrain on
    # in about an hour), the demo's labelled trials, and 6,000 evaluation trials per task.
    "reproduce": DatasetPreset("reproduce", 80, 40, 90.0, 4, 2, 288, 4, 2, 400,
                               eval_trials=6000, dtype="float16"),
}

EVAL_DIR = "eval"  # the evaluation set's dataset directory inside a generated dataset
_EVAL_SESSION_OFFSET = 1000  # eval sessions draw from their own seeds, never a training one


def _session_plan(preset: DatasetPreset):
    """(session_id, kind, day, session_index, n_trials) for every session, resting first."""
    plan = []
    for kind, n_sessions, n_days, n_trials in (
        ("resting", preset.resting_sessions, preset.resting_days, 0),
        ("psychometric", preset.psychometric_sessions, preset.psychometric_days, preset.psychometric_trials),
        ("threshold", preset.threshold_sessions, preset.threshold_days, preset.threshold_trials),
    ):
        for i in range(n_sessions):
            day = i * n_days // max(n_sessions, 1)
            trials = n_trials // n_sessions + (1 if i < n_trials % n_sessions else 0)
            plan.append((f"{kind[:4]}-{i:03d}", kind, day, i, trials))
    return plan


def _eval_plan(preset: DatasetPreset):
    """The evaluation set's sessions: per task, new sessions spread over the task's days."""
    plan = []
    for kind, n_days in (("psychometric", preset.psychometric_days),
                         ("threshold", preset.threshold_days)):
        n_sessions = max(1, math.ceil(preset.eval_trials / preset.eval_trials_per_session))
        for i in range(n_sessions):
            day = i * n_days // n_sessions
            trials = preset.eval_trials // n_sessions + (1 if i < preset.eval_trials % n_sessions else 0)
            plan.append((f"{kind[:4]}-e{i:03d}", kind, day, _EVAL_SESSION_OFFSET + i, trials))
    return plan


def generate_dataset(out: str | Path, *, preset: str | DatasetPreset = "demo", seed: int = 0,
                     channel_map: ChannelMap | None = None, config: CortexConfig = CortexConfig(),
                     overwrite: bool = False, chunk_samples: int = 60_000,
                     progress: Callable[[str, float], None] | None = None):
    """Write a virtual-cortex dataset (resting, psychometric, threshold) in chunks.

    With `preset.eval_trials` > 0 the evaluation set (new labelled sessions of the same
    array and days) is written as a dataset of its own in <out>/eval (`Dataset.evaluation`).
    Memory stays bounded by `chunk_samples` x channels whatever the preset; the `paper`
    preset (14.6 h of resting data) is written as float16 to halve its 10 GB.
    Returns the opened Dataset.
    """
    from phosphene.dataset import Dataset, DatasetWriter

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    cortex = VirtualCortex(channel_map, seed=seed, config=config)
    plan = _session_plan(preset)
    eval_plan = _eval_plan(preset) if preset.eval_trials > 0 else []
    lengths = [_session_samples(preset, config, kind, n) for _, kind, _, _, n in plan]
    eval_lengths = [_session_samples(preset, config, kind, n) for _, kind, _, _, n in eval_plan]
    done, total = [0.0], float(sum(lengths) + sum(eval_lengths))

    def advance(label: str, n: int) -> None:
        done[0] += n
        if progress:
            progress(label, done[0] / total)

    source = {"generator": "phosphene.cortex", "preset": preset.name, "seed": seed,
              "config": {k: v for k, v in vars(config).items()}}
    with DatasetWriter(out, cortex.channel_map, sample_rate_hz=config.sample_rate_hz,
                       source=source, dtype=preset.dtype, overwrite=overwrite) as writer:
        _write_sessions(writer, cortex, preset, plan, lengths, chunk_samples, advance)
        if eval_plan:
            eval_source = {**source, "evaluation_set": True}
            with DatasetWriter(writer._tmp / EVAL_DIR, cortex.channel_map,
                               sample_rate_hz=config.sample_rate_hz, source=eval_source,
                               dtype=preset.dtype) as eval_writer:
                _write_sessions(eval_writer, cortex, preset, eval_plan, eval_lengths,
                                chunk_samples, advance)
            writer.meta["evaluation_set"] = {"path": EVAL_DIR, "trials_per_task": preset.eval_trials}
    return Dataset.open(out)


def _session_samples(preset: DatasetPreset, config: CortexConfig, kind: str, n_trials: int) -> int:
    fs = config.sample_rate_hz
    if kind == "resting":
        return int(preset.resting_session_s * fs)
    # generous: trials are drawn until the session ends, then cut to n_trials
    return int((preset.lead_in_s + (n_trials + 1) * config.trial_interval_s[1] + 1.0) * fs)


def _write_sessions(writer, cortex: VirtualCortex, preset: DatasetPreset, plan: list,
                    lengths: list[int], chunk_samples: int,
                    advance: Callable[[str, int], None]) -> None:
    """Generate the planned sessions into a DatasetWriter; records the ideal observer."""
    fs = cortex.config.sample_rate_hz
    ideal: dict[str, list] = {}
    for (sid, kind, day, idx, n_trials), n_samples in zip(plan, lengths):
        stream = cortex.stream(kind, day=day, session_index=idx)
        if kind != "resting":  # the lead-in lets the normaliser warm up before trial 1
            stream._next_onset = int(preset.lead_in_s * fs)
        arr = writer.add_session(sid, kind=kind, day=day, n_samples=n_samples)
        events: list[SimulatedTrial] = []
        for start in range(0, n_samples, chunk_samples):
            n = min(chunk_samples, n_samples - start)
            block, evs = stream.read(n)
            arr[start:start + n] = block
            events.extend(evs)
            advance(f"{sid} ({kind})", n)
        writer.finish_session(arr)
        del arr
        # keep trials whose decoded window (and some margin) lies inside the session
        last_ok = n_samples - int(0.5 * fs)
        events = [e for e in events if e.sample < last_ok][:n_trials] if kind != "resting" else []
        writer.add_trials([{"session": sid, "onset_sample": e.sample, "electrode": e.electrode,
                            "current_ua": e.current_ua, "perceived": e.perceived,
                            "p_true": e.p_true} for e in events])
        if events:
            ideal.setdefault(kind, []).extend((sid, e.sample, e.p_true, e.perceived) for e in events)
    # the ideal observer on the paper's test split (last 20% of each session's trials)
    io_meta = {}
    for kind, rows in ideal.items():
        rows = np.array(rows, dtype=object)
        test = np.zeros(len(rows), dtype=bool)
        for sid in set(rows[:, 0]):
            idx = np.flatnonzero(rows[:, 0] == sid)
            test[idx[int(np.floor(0.8 * len(idx))):]] = True
        p, y = rows[:, 2].astype(float), rows[:, 3].astype(int)
        io_meta[kind] = round(ideal_balanced_accuracy(p[test], y[test]), 4)
        io_meta[f"{kind}_all_trials"] = round(ideal_balanced_accuracy(p, y), 4)
    writer.meta["ideal_observer"] = {k: v for k, v in io_meta.items() if "_all" not in k}
    writer.meta["ideal_observer_all_trials"] = {k.replace("_all_trials", ""): v
                                                for k, v in io_meta.items() if "_all" in k}
