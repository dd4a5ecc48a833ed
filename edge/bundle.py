"""The bundle the edge runs: load it, verify it, and expose what it holds (numpy + stdlib).

A bundle is a directory written by `phosphene quantize` (docs/bundle.md is the written
specification):

    manifest.json   format + version, SHA-256 of model and probe, channel count and map,
                    sample rate, window spec, normaliser config, input/output quantisation,
                    parity report, calibration set, training metrics, latency budget, tools
    model.tflite    the full-int8 student encoder: int8 window (1, T, C) -> int8 latent (1, D)
    probe.json      linear probe(s) on the dequantised latent: P(perceived) = sigmoid(w.z + b)
    bundle.sig      the detached digest: SHA-256 of every other file (manifest included), the
                    digest over them, an optional HMAC or Ed25519 signature (edge/signing.py)

`load_bundle(path, key=None, pin=None)` refuses a bundle without bundle.sig, with a file
missing, added or differing from its recorded hash, whose digest is not the pinned one or
whose signature does not verify with the required key, whose format version is newer than
this code, or whose channel count disagrees with its own channel map; the message names
the file. (A stream that does not fit the bundle is the runtime's `stream_mismatch`.)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from phosphene.errors import PhospheneError
from phosphene.geometry import ChannelMap
from phosphene.io import sha256_file as file_sha256  # re-exported: the one file hash
from phosphene.signal import NormaliserConfig, WindowSpec, task_window

if TYPE_CHECKING:
    from phosphene.edge.signing import BundleKey, Seal

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "DIGEST_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "PROBE_FILE",
    "PROBE_FORMAT",
    "PROBE_VERSION",
    "Bundle",
    "BundleError",
    "BundleSpec",
    "Probe",
    "QuantParams",
    "file_sha256",
    "load_bundle",
    "probe_from_json",
    "probes_to_json",
    "write_bundle",
]

BUNDLE_FORMAT = "phosphene-bundle"
BUNDLE_VERSION = 2  # 2: bundle.sig, the digest of every file including the manifest
PROBE_FORMAT = "phosphene-bundle-probe"  # not train/probe.py's single-task "phosphene-probe"
PROBE_VERSION = 2  # 2: a probe may carry its window's offset_ms (an older edge would ignore it)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.tflite"
PROBE_FILE = "probe.json"
DIGEST_FILE = "bundle.sig"

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


class BundleError(PhospheneError, ValueError):
    """A bundle is missing, corrupt, too new or does not fit the stream; says which file/field."""


# --------------------------------------------------------------------------------------
# Quantisation parameters of one tensor
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantParams:
    """Affine quantisation of a tensor: real = (q - zero_point) * scale (per-tensor).

    `quantize` is clip(round(x / scale + zero_point), qmin, qmax); the
    round trip dequantize(quantize(x)) is within scale / 2 of x inside the representable
    range.
    """

    scale: float
    zero_point: int
    dtype: str  # "int8" (the bundle's model), "uint8" or "int16"
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _INT_RANGES:
            raise ValueError(f"quantised dtype must be one of {', '.join(_INT_RANGES)}, "
                             f"got {self.dtype!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"quantisation scale must be a positive number, got {self.scale}")
        qmin, qmax = _INT_RANGES[self.dtype]
        if not qmin <= self.zero_point <= qmax:
            raise ValueError(f"zero point {self.zero_point} is outside the {self.dtype} range")

    @property
    def qmin(self) -> int:
        return _INT_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return _INT_RANGES[self.dtype][1]

    @property
    def real_range(self) -> tuple[float, float]:
        """The smallest and largest real values the integer range represents."""
        return ((self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale)

    def quantize(self, x: np.ndarray, out: np.ndarray | None = None,
                 scratch: np.ndarray | None = None) -> np.ndarray:
        """x: float array -> integer array of `dtype`.

        With `out` (the integer result) and `scratch` (float32, x's shape) preallocated, the
        decision path allocates nothing.
        """
        x = np.asarray(x, dtype=np.float32)
        y = np.divide(x, np.float32(self.scale), out=scratch)
        np.add(y, np.float32(self.zero_point), out=y)
        np.rint(y, out=y)  # half to even; differs from TFLite's half-away only on exact ties
        np.clip(y, self.qmin, self.qmax, out=y)
        if out is None:
            return y.astype(self.dtype)
        np.copyto(out, y, casting="unsafe")  # values are whole numbers already in range
        return out

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """q: integer array -> float32 array."""
        return (np.asarray(q, dtype=np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)

    def to_dict(self) -> dict:
        return {"scale": float(self.scale), "zero_point": int(self.zero_point),
                "dtype": self.dtype, "shape": [int(s) for s in self.shape]}

    @classmethod
    def from_dict(cls, d: dict) -> QuantParams:
        return cls(scale=float(d["scale"]), zero_point=int(d["zero_point"]), dtype=str(d["dtype"]),
                   shape=tuple(int(s) for s in d["shape"]))


# --------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """A linear probe on the student latent with any standardisation folded in.

    P(perceived) = sigmoid(weights . latent + bias); the decision is P >= threshold.
    """

    task: str  # "psychometric" or "threshold": the trials it was fitted on
    weights: np.ndarray  # (D,) float64
    bias: float
    threshold: float = 0.5  # on P(perceived)
    source: str = ""  # "teacher" (the teacher's probe applied as is) or "refit" (on student latents)
    offset_ms: float | None = None  # its window's start after onset (None: the bundle's window)

    def logit(self, latent: np.ndarray) -> np.ndarray:
        """latent: (D,) or (N, D) -> logit () or (N,)."""
        return np.asarray(latent, dtype=np.float64) @ self.weights + self.bias

    def p_perceived(self, latent: np.ndarray) -> np.ndarray:
        z = self.logit(latent)
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function without overflow

    def decide(self, latent: np.ndarray) -> tuple[float, bool]:
        """latent: (D,) -> (P(perceived), decision)."""
        p = float(self.p_perceived(latent))
        return p, p >= self.threshold

    def to_dict(self) -> dict:
        return {"weights": [float(w) for w in self.weights], "bias": float(self.bias),
                "threshold": float(self.threshold), "source": self.source,
                **({"offset_ms": float(self.offset_ms)} if self.offset_ms is not None else {})}


def probe_from_json(obj: dict, *, latent_dim: int | None = None,
                    where: str = PROBE_FILE) -> tuple[str, dict[str, Probe]]:
    """Parse a bundle probe.json -> (default task, {task: Probe}); raises BundleError."""
    if not isinstance(obj, dict) or obj.get("format") != PROBE_FORMAT:
        raise BundleError(f"{where} is not a {PROBE_FORMAT} file")
    version = obj.get("version")
    if not isinstance(version, int) or version > PROBE_VERSION:
        raise BundleError(f"{where} has probe format version {version!r}; this phosphene reads "
                          f"version {PROBE_VERSION} (upgrade phosphene on this device)")
    probes: dict[str, Probe] = {}
    raw = obj.get("probes")
    if not isinstance(raw, dict) or not raw:
        raise BundleError(f"{where} holds no probes")
    for task, p in raw.items():
        try:
            weights = np.asarray(p["weights"], dtype=np.float64)
            offset = p.get("offset_ms")
            probe = Probe(task=str(task), weights=weights, bias=float(p["bias"]),
                          threshold=float(p.get("threshold", 0.5)), source=str(p.get("source", "")),
                          offset_ms=None if offset is None else float(offset))
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{where}: probe {task!r} needs weights (list), bias and "
                              "threshold numbers (and offset_ms a number, if given)") from None
        if probe.offset_ms is not None and not math.isfinite(probe.offset_ms):
            raise BundleError(f"{where}: probe {task!r} offset_ms must be a finite number of ms")
        if weights.ndim != 1 or not np.all(np.isfinite(weights)) or not math.isfinite(probe.bias):
            raise BundleError(f"{where}: probe {task!r} weights must be a finite 1-D list")
        if not 0.0 <= probe.threshold <= 1.0:
            raise BundleError(f"{where}: probe {task!r} threshold {probe.threshold} is not a "
                              "probability in [0, 1]")
        if latent_dim is not None and weights.shape[0] != latent_dim:
            raise BundleError(f"{where}: probe {task!r} has {weights.shape[0]} weights but the "
                              f"model's latent has {latent_dim} values")
        probes[str(task)] = probe
    default = str(obj.get("task", next(iter(probes))))
    if default not in probes:
        raise BundleError(f"{where}: default task {default!r} has no probe")
    return default, probes


def probes_to_json(probes: dict[str, Probe], *, task: str, latent_dim: int) -> dict:
    """The probe.json object for `probes`, with `task` as the runtime's default."""
    if task not in probes:
        raise ValueError(f"no probe for task {task!r}; have {', '.join(probes)}")
    return {"format": PROBE_FORMAT, "version": PROBE_VERSION, "latent_dim": int(latent_dim),
            "task": task, "probes": {t: p.to_dict() for t, p in probes.items()}}


# --------------------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Construct with `load_bundle(path)`."""

    path: Path
    manifest: dict
    window_spec: WindowSpec
    normaliser_config: NormaliserConfig
    channel_map: ChannelMap
    input_quant: QuantParams  # the model's int8 input (1, T, C)
    output_quant: QuantParams  # the model's int8 latent (1, D)
    probes: dict[str, Probe] = field(default_factory=dict)
    task: str = ""  # the default probe's task
    seal: Seal | None = None  # bundle.sig as verified: digest, signature, the key that verified it

    @property
    def probe(self) -> Probe:
        """The probe the runtime applies by default."""
        return self.probes[self.task]

    def window_for(self, task: str | None = None) -> WindowSpec:
        """The window a probe reads: the offset it was fitted on (probe.json), else by its
        name (a task named *_pre ends at onset: signal.task_window), else the bundle's."""
        task = task or self.task
        probe = self.probes.get(task)
        if probe is not None and probe.offset_ms is not None:
            return replace(self.window_spec, offset_ms=probe.offset_ms)
        return task_window(task, self.window_spec)[1]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    @property
    def n_channels(self) -> int:
        return int(self.manifest["n_channels"])

    @property
    def sample_rate_hz(self) -> float:
        return float(self.manifest["sample_rate_hz"])

    @property
    def latent_dim(self) -> int:
        return int(self.output_quant.shape[-1])

    @property
    def latency_budget_ms(self) -> float:
        return float(self.manifest["latency_budget_ms"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def digest(self) -> str:
        """The bundle digest over every file (what `--pin` compares and a signature signs)."""
        return self.seal.digest if self.seal is not None else ""

    def summary(self) -> dict:
        """What `phosphene verify` prints: JSON-ready, without the long arrays."""
        m = self.manifest
        return {
            "path": str(self.path),
            "format": m["format"], "version": m["version"],
            "created_utc": m.get("created_utc"),
            "files": {name: meta["sha256"] for name, meta in m["files"].items()},
            "seal": self.seal.summary() if self.seal is not None else None,
            "n_channels": self.n_channels,
            "channel_map": self.channel_map.name,
            "sample_rate_hz": self.sample_rate_hz,
            "window": self.window_spec.to_dict(),
            "normaliser": self.normaliser_config.to_dict(),
            "model": {k: v for k, v in m["model"].items() if k not in ("student_config",)},
            "probe": {"task": self.task, "tasks": {t: {"source": p.source, "threshold": p.threshold,
                                                       "offset_ms": self.window_for(t).offset_ms}
                                                   for t, p in self.probes.items()}},
            "parity": m.get("parity", {}),
            "calibration": m.get("calibration", {}),
            "training": m.get("training", {}),
            "latency_budget_ms": self.latency_budget_ms,
            "tools": m.get("tools", {}),
        }


def _parse_json(data: bytes, where: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where} is not valid JSON: {exc}") from None


def _require(m: dict, key: str, kind: type | tuple, where: str):
    if key not in m or not isinstance(m[key], kind):
        raise BundleError(f"{where} is missing {key!r} (or it has the wrong type): "
                          "rebuild the bundle with `phosphene quantize`")
    return m[key]


def _check_version(m, where: str) -> None:
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where} is not a {BUNDLE_FORMAT} manifest")
    version = m.get("version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{where} has no valid format version")
    if version > BUNDLE_VERSION:
        raise BundleError(f"{where} has bundle format version {version}, newer than this "
                          f"phosphene reads ({BUNDLE_VERSION}): upgrade phosphene on this device")
    if version < BUNDLE_VERSION:
        raise BundleError(f"{where} has bundle format version {version}, which has no "
                          f"{DIGEST_FILE} protecting the manifest: rebuild the bundle with "
                          "`phosphene quantize`")


def _refuse_unsealed(path: Path) -> None:
    """No bundle.sig: say whether to upgrade, rebuild (an old bundle) or copy again."""
    where = str(path / MANIFEST_FILE)
    try:
        m = json.loads((path / MANIFEST_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        m = None
    if isinstance(m, dict) and isinstance(m.get("version"), int):
        _check_version(m, where)  # newer: upgrade; older: rebuild
    raise BundleError(f"bundle file {DIGEST_FILE} is missing from {path}: copy the whole bundle "
                      "again, or rebuild it with `phosphene quantize`")


def load_bundle(path: str | os.PathLike, *, key: str | os.PathLike | BundleKey | None = None,
                pin: str | None = None) -> Bundle:
    """Open and verify a bundle directory; raise BundleError naming what is wrong.

    Checks, in order: bundle.sig exists, parses and is consistent with itself; its digest
    equals `pin` (a hex digest), if given; its signature verifies with `key` (a key file
    path or a signing.BundleKey), if given; the directory holds exactly the files it lists,
    each with its recorded SHA-256 (manifest.json included; each file hashed once, the
    JSON files parsed from the very bytes hashed); the manifest's format and version; the
    manifest's own hashes agree with bundle.sig; the channel count agrees with the channel
    map; the window, normaliser and quantisation fields parse; the probe's width matches
    the latent.
    """
    from phosphene.edge.signing import check_seal

    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory (expected {MANIFEST_FILE} inside)")
    manifest_file = path / MANIFEST_FILE
    if not (path / DIGEST_FILE).is_file():
        if not manifest_file.is_file():
            raise BundleError(f"{path} has no {MANIFEST_FILE}: not a phosphene bundle")
        _refuse_unsealed(path)
    contents: dict[str, bytes] = {}
    try:
        seal = check_seal(path, key=key, pin=pin, contents=contents)
    except OSError as exc:
        raise BundleError(f"cannot read the bundle {path}: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from None
    if MANIFEST_FILE not in contents:
        raise BundleError(f"{path}: {DIGEST_FILE} does not cover {MANIFEST_FILE}: not a "
                          "phosphene bundle")
    where = str(manifest_file)
    m = _parse_json(contents[MANIFEST_FILE], where)
    _check_version(m, where)

    files = _require(m, "files", dict, where)
    model_meta = _require(m, "model", dict, where)
    probe_meta = _require(m, "probe", dict, where)
    for role, meta in (("model", model_meta), ("probe", probe_meta)):
        name = meta.get("file")
        if not isinstance(name, str) or name not in files:
            raise BundleError(f"{where}: the {role} file is not listed under 'files' with a hash")
    for name, meta in files.items():
        expected = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(expected, str):
            raise BundleError(f"{where}: no sha256 recorded for {name}")
        if name not in seal.files:  # the directory holds exactly the files bundle.sig lists
            raise BundleError(f"bundle file {name} is missing from {path}")
        if seal.files[name] != expected:  # bundle.sig verified the file: compare, do not rehash
            raise BundleError(f"{where}: the SHA-256 it records for {name} disagrees with "
                              f"{DIGEST_FILE}: rebuild the bundle with `phosphene quantize`")

    n_channels = _require(m, "n_channels", int, where)
    try:
        channel_map = ChannelMap.from_json(_require(m, "channel_map", dict, where))
    except ValueError as exc:
        raise BundleError(f"{where}: channel_map: {exc}") from None
    if channel_map.n_channels != n_channels:
        raise BundleError(f"{where}: n_channels is {n_channels} but the channel map lists "
                          f"{channel_map.n_channels} electrodes")
    try:
        spec = WindowSpec.from_dict(_require(m, "window", dict, where))
        norm = NormaliserConfig.from_dict(_require(m, "normaliser", dict, where))
        in_q = QuantParams.from_dict(_require(model_meta, "input", dict, where + " model"))
        out_q = QuantParams.from_dict(_require(model_meta, "output", dict, where + " model"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{where}: bad window/normaliser/quantisation field: {exc}") from None
    rate = _require(m, "sample_rate_hz", (int, float), where)
    if float(rate) != spec.sample_rate_hz:
        raise BundleError(f"{where}: sample_rate_hz {rate} disagrees with the window's "
                          f"{spec.sample_rate_hz}")
    if tuple(in_q.shape) != (1, spec.window_samples, n_channels):
        raise BundleError(f"{where}: model input shape {list(in_q.shape)} is not "
                          f"[1, {spec.window_samples}, {n_channels}] (1 x window x channels)")
    _require(m, "latency_budget_ms", (int, float), where)

    latent_dim = int(out_q.shape[-1])
    probe_where = f"bundle file {probe_meta['file']}"
    probe_bytes = contents.get(probe_meta["file"])
    if probe_bytes is None:  # a probe file not named *.json: read it (bundle.sig checked it)
        probe_bytes = (path / probe_meta["file"]).read_bytes()
    task, probes = probe_from_json(_parse_json(probe_bytes, probe_where), latent_dim=latent_dim,
                                   where=probe_where)
    return Bundle(path=path, manifest=m, window_spec=spec, normaliser_config=norm,
                  channel_map=channel_map, input_quant=in_q, output_quant=out_q,
                  probes=probes, task=task, seal=seal)


# --------------------------------------------------------------------------------------
# Writing a bundle: the one place a manifest is made
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleSpec:
    """Everything a bundle holds, as `write_bundle` turns it into files (the manifest type).

    The fields `load_bundle` checks are typed; `model_info` adds to the manifest's "model"
    entry (architecture, operators, quantizer) and `records` adds top-level entries that
    are reports for people and tools, never read by the runtime (parity, calibration,
    training, tools).
    """

    model: bytes  # the int8 .tflite flatbuffer
    probes: dict[str, Probe]
    task: str  # the probe the runtime applies by default
    channel_map: ChannelMap
    window: WindowSpec
    normaliser: NormaliserConfig
    input_quant: QuantParams
    output_quant: QuantParams
    latency_budget_ms: float
    wire: dict | None = None  # the sample format parity was measured through
    input_health: dict | None = None  # edge/health.py's calibration statistics
    model_info: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)

    def manifest(self, files: dict[str, dict]) -> dict:
        """manifest.json for this bundle, given the written files' hashes and sizes."""
        import datetime as _dt

        probe = self.probes[self.task]
        return {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "files": files,
            "n_channels": self.channel_map.n_channels,
            "channel_map": self.channel_map.to_json(),
            "sample_rate_hz": self.window.sample_rate_hz,
            "window": self.window.to_dict(),
            "normaliser": self.normaliser.to_dict(),
            "model": {"file": MODEL_FILE, **self.model_info,
                      "latent_dim": int(self.output_quant.shape[-1]),
                      "input": self.input_quant.to_dict(), "output": self.output_quant.to_dict()},
            "probe": {"file": PROBE_FILE, "task": self.task, "source": probe.source,
                      "decision": "P(perceived) = sigmoid(weights . latent + bias) >= threshold"},
            "latency_budget_ms": float(self.latency_budget_ms),
            **({"wire": self.wire} if self.wire is not None else {}),
            **({"input_health": self.input_health} if self.input_health is not None else {}),
            **self.records,
        }


def write_bundle(out: str | os.PathLike, spec: BundleSpec, *, overwrite: bool = False) -> Bundle:
    """Write `spec` as a sealed bundle directory, atomically, and load it back as the edge does.

    model.tflite, probe.json and manifest.json go into a temporary directory beside `out`,
    bundle.sig seals all three, and only then does the directory take the name `out`
    (replacing an old one only with `overwrite`). Returns `load_bundle(out)`: a bundle
    this code writes is one this code reads.
    """
    from phosphene.edge.signing import seal_bundle
    from phosphene.io import atomic_dir, write_json

    if spec.task not in spec.probes:
        raise BundleError(f"no probe for the default task {spec.task!r}; have {', '.join(spec.probes)}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / MODEL_FILE).write_bytes(spec.model)
        write_json(tmp / PROBE_FILE, probes_to_json(spec.probes, task=spec.task,
                                                    latent_dim=int(spec.output_quant.shape[-1])))
        files = {name: {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                 for name in (MODEL_FILE, PROBE_FILE)}
        write_json(tmp / MANIFEST_FILE, spec.manifest(files))
        seal_bundle(tmp)  # bundle.sig: the digest of every file, the manifest included
    return load_bundle(out)


# --------------------------------------------------------------------------------------
# What `phosphene verify` does (kept here so the CLI stays a thin wrapper)
# --------------------------------------------------------------------------------------
def verify_bundle(path: str | os.PathLike, *, runtime: str = "auto",
                  key: str | os.PathLike | BundleKey | None = None, pin: str | None = None) -> dict:
    """Load and verify a bundle (with `key` / `pin` as load_bundle), then run one window.

    Returns {"ok": True, "bundle": Bundle.summary(), "interpreter": {...}}; raises
    BundleError (or RuntimeUnavailable, an ImportError) naming what failed.
    """
    import time

    from phosphene.edge.interpreter import Encoder

    bundle = load_bundle(path, key=key, pin=pin)
    t0 = time.perf_counter()
    encoder = Encoder(bundle, threads=1, runtime=runtime)  # checks tensors against the manifest
    t1 = time.perf_counter()
    window = np.zeros((bundle.window_spec.window_samples, bundle.n_channels), dtype=np.float32)
    decision = encoder.decide(window)
    latent = encoder.latent(window)
    if not np.all(np.isfinite(latent)):
        raise BundleError(f"{bundle.model_path} produced a non-finite latent")
    return {
        "ok": True,
        "bundle": bundle.summary(),
        "interpreter": {"runtime": encoder.model.runtime_name,
                        "version": encoder.model.runtime_version,
                        "load_ms": round((t1 - t0) * 1e3, 2),
                        "first_decision_us": round(decision.timings_us["total"], 1),
                        "zero_window_p_perceived": round(decision.p_perceived, 6)},
    }


def _format_seal(seal: dict | None) -> list[str]:
    if not seal:
        return []
    sig = seal.get("signature")
    if sig is None:
        signed = "none (unsigned; `phosphene sign` adds one)"
    elif sig["verified"]:
        signed = f"{sig['algorithm']} by key {sig['key_id']}: verified"
    else:
        signed = f"{sig['algorithm']} by key {sig['key_id']}: not checked (pass --key to require it)"
    return [f"digest      {seal['algorithm']}:{seal['digest']}  (every file; pin it with --pin)",
            f"signature   {signed}"]


def format_verify(report: dict) -> str:
    """The human-readable `phosphene verify` output."""
    b, it = report["bundle"], report["interpreter"]
    w, n = b["window"], b["normaliser"]
    m = b["model"]
    p = b.get("parity", {})
    lines = [
        f"bundle      {b['path']}  ({b['format']} v{b['version']}, created {b.get('created_utc')})",
        "files       " + ", ".join(f"{name} sha256 {h[:12]}... ok" for name, h in b["files"].items()),
        *_format_seal(b.get("seal")),
        f"array       {b['n_channels']} channels ({b['channel_map']}), {b['sample_rate_hz']:g} Hz",
        f"window      {w['window_samples']} samples, patch {w['patch_samples']}, "
        f"offset {w['offset_ms']:g} ms after onset",
        f"normaliser  {n['method']}, {n['window_s']:g} s window, refresh {n['refresh_s']:g} s, "
        f"clip {n['clip']:g}" + (f", Poisson scale floor ({n.get('bin_ms', 0):g} ms bins)"
                                 if n.get("scale_floor") == "poisson" else ""),
        f"model       {m.get('arch')} student, input {m['input']['dtype']} {m['input']['shape']} "
        f"(scale {m['input']['scale']:.4g}, zero {m['input']['zero_point']}), output "
        f"{m['output']['dtype']} {m['output']['shape']} (scale {m['output']['scale']:.4g}, "
        f"zero {m['output']['zero_point']})",
        f"operators   {', '.join(m.get('operators', []))}",
        f"probe       {b['probe']['task']} (default); tasks: "
        + ", ".join(f"{t} [{v['source']}, threshold {v['threshold']:g}"
                    + (f", window from {v['offset_ms']:+g} ms" if "offset_ms" in v else "") + "]"
                    for t, v in b["probe"]["tasks"].items()),
    ]
    lat = p.get("latent", {})
    if lat:
        lines.append(f"parity      cosine mean {lat['cosine_mean']:.4f} min {lat['cosine_min']:.4f}, "
                     f"max abs error {lat['max_abs_error']:.4g}, decision agreement "
                     f"{p.get('decision_agreement', float('nan')):.4f}")
    width = max((len(t) for t in p.get("tasks", {})), default=12)
    for task, e in p.get("tasks", {}).items():
        cells = [f"{k.removeprefix('ba_')} {100 * v:.1f}%" for k, v in e.items()
                 if k.startswith("ba_") and isinstance(v, (int, float))]
        lines.append(f"  {task:<{width}} balanced accuracy: " + ", ".join(cells))
    cal = b.get("calibration", {})
    if cal:
        lines.append(f"calibration {cal.get('n_windows')} windows, sha256 {str(cal.get('sha256'))[:12]}...")
    lines.append(f"budget      {b['latency_budget_ms']:g} ms per decision")
    lines.append("tools       " + ", ".join(f"{k} {v}" for k, v in b.get("tools", {}).items()))
    lines.append(f"interpreter {it['runtime']} {it['version']}: loaded in {it['load_ms']:.1f} ms, "
                 f"first decision {it['first_decision_us']:.0f} us")
    lines.append("OK")
    return "\n".join(lines)


__all__ += ["format_verify", "verify_bundle"]
