"""`phosphene score`: a finished run's decision log against a dataset's labels.

A run that streamed a dataset session (`phosphene simulate stream --dataset DATA --session
ID`, read by `phosphene run --out decisions.jsonl`) decided on the session's trials; this
module finds which trial each logged decision belongs to and scores the decisions.

Matching rule. The simulator streams the session from its first sample with the device
sample counter starting at 0, and loops: device counter c carries dataset sample c mod T
(T = the session's n_samples) of lap c // T, and a trial with onset o is sent as an
EVENT_STIM at counter lap x T + o. A log record (decision or no_decision) with
`onset_sample` c therefore belongs to the trial of that session with onset c mod T, and it
matches when that trial exists with the record's electrode and current (to 0.0015 uA: the
wire carries nanoamps, trials.csv 4 significant digits). Each lap's decision counts as
its own scored decision. A device restart begins the counter at 0 again mid-session, so
records after one no longer match and are counted as unmatched. Without --session the
session (of the dataset or of its evaluation set) with the most matching records is used.

Scores per task (the session kind): trials in the session, matched records, no-decisions
by reason, balanced accuracy of the decisions against `perceived` with a 95% bootstrap CI
and n; agreement with the ideal observer (P_true > 0.5) where trials.csv has p_true; and,
given the bundle, agreement with the offline pipeline (the dataset session through the core
Normaliser from its first sample, windows decoded by the bundle's Encoder), i.e. through the
wire against offline. Offline windows differ from the streamed ones only by the wire's
rounding (0.02 uV) and, on later laps, by normaliser statistics carried over from the
previous lap within its first window_s.

Imports numpy, click, the core and edge only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import click
import numpy as np

from phosphene.errors import PhospheneError

__all__ = ["ScoreError", "format_score", "read_decision_log", "score", "score_decisions"]

CURRENT_TOL_UA = 0.0015


class ScoreError(PhospheneError, ValueError):
    """The log, the dataset or the bundle cannot be scored; the message says why."""


def read_decision_log(path: str | Path) -> list[dict]:
    """The records of a JSON-lines decision log (blank lines skipped)."""
    path = Path(path)
    if not path.exists():
        raise ScoreError(f"decision log not found: {path}")
    if not path.is_file():
        raise ScoreError(f"{path} is not a file (expected a JSON-lines decision log)")
    records = []
    try:
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ScoreError(f"{path} line {i} is not JSON ({exc.msg}): not a decision "
                                     "log written by `phosphene run --out`") from None
                if not isinstance(rec, dict) or "type" not in rec:
                    raise ScoreError(f"{path} line {i} is not a decision-log record (no \"type\")")
                records.append(rec)
    except UnicodeDecodeError:
        raise ScoreError(f"{path} is not text: not a decision log") from None
    if not records:
        raise ScoreError(f"{path} is empty: no records to score")
    return records


def _candidates(dataset, session: str | None, task: str | None):
    """(Dataset, SessionInfo) pairs a run may have streamed: the dataset's and its eval set's."""
    from phosphene.dataset import DatasetError

    sets = [dataset]
    try:
        ev = dataset.evaluation()
    except DatasetError:
        ev = None
    if ev is not None:
        sets.append(ev)
    pairs = [(ds, s) for ds in sets for s in ds.sessions if s.kind != "resting"]
    if session is not None:
        pairs = [(ds, s) for ds, s in pairs if s.session == session]
        if not pairs:
            known = any(s.session == session for ds in sets for s in ds.sessions)
            raise ScoreError(f"session {session!r} of {dataset.path} has no trials (a resting session?)"
                             if known else f"no session {session!r} in {dataset.path}")
    if task is not None:
        if session is not None and pairs[0][1].kind != task:
            raise ScoreError(f"session {session!r} is a {pairs[0][1].kind} session, not {task}")
        pairs = [(ds, s) for ds, s in pairs if s.kind == task]
    if not pairs:
        raise ScoreError(f"{dataset.path} has no {task or 'task'} session")
    return pairs


class _SessionTrials:
    """One session's trials indexed by onset."""

    def __init__(self, ds, info):
        self.ds, self.info, self.T = ds, info, int(info.n_samples)
        tr = ds.trials.select(ds.trials.session == info.session)
        self.trials = tr
        self.by_onset = {int(o): i for i, o in enumerate(tr.onset_sample)}

    def match(self, rec: dict) -> tuple[int, int] | None:
        """(trial index, lap) of an onset record, or None."""
        try:
            c, e, cur = int(rec["onset_sample"]), int(rec["electrode"]), float(rec["current_ua"])
        except (KeyError, TypeError, ValueError):
            return None
        if c < 0 or self.T <= 0:
            return None
        lap, o = divmod(c, self.T)
        i = self.by_onset.get(o)
        if i is None or int(self.trials.electrode[i]) != e \
                or abs(float(self.trials.current_ua[i]) - cur) > CURRENT_TOL_UA:
            return None
        return i, lap


def score_decisions(decisions_jsonl: str | Path, dataset_path: str | Path, *,
                    session: str | None = None, task: str | None = None,
                    bundle: str | Path | None = None, probe: str | None = None,
                    n_boot: int | None = None) -> dict:
    """Score a decision log against a dataset session's trials (matching: see the module).

    bundle: also decode the matched trials offline with this bundle (probe: its task, default
    the bundle's default probe, as `phosphene run` without --task). Returns a JSON-ready dict
    (format in format_score and docs). Raises ScoreError with a one-line reason.
    """
    from phosphene.dataset import Dataset, DatasetError
    from phosphene.metrics import N_BOOTSTRAP, balanced_accuracy, bootstrap_ci

    records = read_decision_log(decisions_jsonl)
    try:
        dataset = Dataset.open(dataset_path)
    except DatasetError as exc:
        raise ScoreError(str(exc)) from None
    kinds = Counter(str(r.get("type")) for r in records)
    onset_recs = [r for r in records if r.get("type") in ("decision", "no_decision") and "onset_sample" in r]
    cands = [_SessionTrials(ds, s) for ds, s in _candidates(dataset, session, task)]
    hits = [sum(c.match(r) is not None for r in onset_recs) for c in cands]
    best = int(np.argmax(hits))
    if hits[best] == 0:
        tried = ", ".join(c.info.session for c in cands[:6]) + (", ..." if len(cands) > 6 else "")
        raise ScoreError(
            f"no record of {decisions_jsonl} matches a trial of {dataset.path} (sessions tried: {tried}; "
            f"{len(onset_recs)} records with an onset): was the run streamed from this dataset "
            "(`phosphene simulate stream --dataset`) without a device restart?")
    st = cands[best]
    tr = st.trials
    matched: list[tuple[dict, int, int]] = []
    unmatched = 0
    for r in onset_recs:
        m = st.match(r)
        if m is None:
            unmatched += 1
        else:
            matched.append((r, *m))
    decisions = [(r, i, lap) for r, i, lap in matched if r["type"] == "decision"]
    nd_reasons = Counter(str(r.get("reason")) for r, _, _ in matched if r["type"] == "no_decision")
    labelled = [(r, i, lap) for r, i, lap in decisions if tr.perceived[i] >= 0]
    y = np.array([int(tr.perceived[i]) for _, i, _ in labelled], dtype=np.int64)
    pred = np.array([int(r["decision"]) for r, _, _ in labelled], dtype=np.int64)
    boot = {"n_boot": n_boot or N_BOOTSTRAP}
    ba = balanced_accuracy(y, pred) if y.size else float("nan")
    lo, hi = bootstrap_ci(y, pred, **boot) if y.size else (float("nan"), float("nan"))
    result_task = {
        "trials": len(tr),
        "trials_decided": len({i for _, i, _ in decisions}),
        "laps": (max(lap for _, _, lap in matched) + 1) if matched else 0,
        "records": len(matched),
        "decisions": len(decisions),
        "no_decisions": dict(sorted(nd_reasons.items())),
        "unlabelled": len(decisions) - len(labelled),
        "balanced_accuracy": _num(ba),
        "ci95": [_num(lo), _num(hi)],
        "n": int(y.size),
        "ideal": None,
        "offline": None,
    }
    p_true = np.array([float(tr.p_true[i]) for _, i, _ in labelled])
    known = np.isfinite(p_true)
    if known.any():
        ideal = (p_true[known] > 0.5).astype(np.int64)
        result_task["ideal"] = {
            "agreement": _num(float(np.mean(ideal == pred[known]))),
            "n": int(known.sum()),
            "balanced_accuracy": _num(balanced_accuracy(y[known], ideal)),
        }
    if bundle is not None and decisions:
        result_task["offline"] = _offline_agreement(bundle, probe, st, decisions)
    streamed = next((r.get("samples_received") for r in reversed(records) if r.get("type") == "summary"),
                    None)
    return {
        "log": str(decisions_jsonl),
        "dataset": str(st.ds.path),
        "session": st.info.session,
        "task": st.info.kind,
        "session_samples": st.T,
        "streamed_samples": streamed,
        "records": dict(sorted(kinds.items())),
        "unmatched": unmatched,
        "decisions_without_onset": sum(1 for r in records if r.get("type") == "decision"
                                       and "onset_sample" not in r),
        "no_decisions_without_onset": dict(sorted(Counter(
            str(r.get("reason")) for r in records
            if r.get("type") == "no_decision" and "onset_sample" not in r).items())),
        "tasks": {st.info.kind: result_task},
    }


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _offline_agreement(bundle_path, probe: str | None, st: _SessionTrials,
                       decisions: list[tuple[dict, int, int]]) -> dict:
    """Decode each decided trial's window offline and compare with the logged decision."""
    from phosphene.edge.bundle import BundleError, load_bundle
    from phosphene.edge.interpreter import Encoder, RuntimeUnavailable
    from phosphene.signal import Normaliser

    try:
        b = load_bundle(bundle_path)
        enc = Encoder(b, task=probe)
    except (BundleError, RuntimeUnavailable, OSError) as exc:
        raise ScoreError(str(exc)) from None
    if b.n_channels != st.ds.n_channels:
        raise ScoreError(f"bundle {b.path} expects {b.n_channels} channels, the dataset has "
                         f"{st.ds.n_channels}")
    spec = b.window_spec
    W = spec.window_samples
    starts = sorted({spec.triggered_window(int(st.trials.onset_sample[i]))[0] for _, i, _ in decisions})
    starts = [s for s in starts if s + W <= st.T]
    windows = {s: np.empty((W, b.n_channels), np.float32) for s in starts}
    mua = st.ds.mua(st.info.session)
    norm = Normaliser(b.n_channels, b.normaliser_config)
    last = max(starts) + W if starts else 0
    chunk = 1 << 16
    for a in range(0, last, chunk):
        z = norm.process(np.asarray(mua[a:a + chunk], dtype=np.float32))
        e = a + z.shape[0]
        for s in starts:  # windows overlapping [a, e)
            lo, hi = max(s, a), min(s + W, e)
            if lo < hi:
                windows[s][lo - s:hi - s] = z[lo - a:hi - a]
    p_offline: dict[int, float] = {}
    for s, w in windows.items():
        if np.isnan(w).any():  # inside the normaliser's warm-up: no offline decision
            continue
        p_offline[s] = enc.decide(w).p_perceived
    agree, dps, n = 0, [], 0
    for r, i, _ in decisions:
        s = spec.triggered_window(int(st.trials.onset_sample[i]))[0]
        if s not in p_offline:
            continue
        p = p_offline[s]
        n += 1
        agree += int(int(p >= enc.probe.threshold) == int(r["decision"]))
        dps.append(abs(float(r["p_perceived"]) - p))
    return {"agreement": _num(agree / n) if n else None, "n": n,
            "max_abs_dp": _num(max(dps)) if dps else None,
            "mean_abs_dp": _num(float(np.mean(dps))) if dps else None,
            "probe": enc.probe.task}


def format_score(result: dict) -> str:
    """A few readable lines."""
    def fmt(v, d=3):
        return ("n/a" if v is None else f"{v:.{d}f}")
    rec = result["records"]
    lines = [f"decision log {result['log']}: " + ", ".join(f"{v} {k}" for k, v in rec.items()),
             (f"dataset {result['dataset']}, session {result['session']} ({result['task']}, "
              f"{result['session_samples']} samples)")]
    for task, t in result["tasks"].items():
        nd = ", ".join(f"{k} {v}" for k, v in t["no_decisions"].items()) or "none"
        lines.append(f"{task}: {t['trials']} trials in the session, {t['trials_decided']} decided "
                     f"over {t['laps']} lap(s); {t['decisions']} decisions, no-decisions: {nd}")
        lines.append(f"  balanced accuracy {fmt(t['balanced_accuracy'])} "
                     f"[{fmt(t['ci95'][0])}, {fmt(t['ci95'][1])}] (n {t['n']}"
                     + (f", {t['unlabelled']} unlabelled" if t["unlabelled"] else "") + ")")
        if t["ideal"] is not None:
            i = t["ideal"]
            lines.append(f"  agrees with the ideal observer on {fmt(i['agreement'])} (n {i['n']}; "
                         f"ideal observer's balanced accuracy {fmt(i['balanced_accuracy'])})")
        if t["offline"] is not None:
            o = t["offline"]
            lines.append(f"  agrees with offline ({o['probe']} probe) on {fmt(o['agreement'])} "
                         f"(n {o['n']}; |p difference| max {fmt(o['max_abs_dp'], 4)}, "
                         f"mean {fmt(o['mean_abs_dp'], 4)})")
    extra = []
    if result["unmatched"]:
        extra.append(f"{result['unmatched']} records with an onset matched no trial")
    if result["decisions_without_onset"]:
        extra.append(f"{result['decisions_without_onset']} decisions without an onset (continuous mode) "
                     "not scored")
    if extra:
        lines.append("; ".join(extra))
    return "\n".join(lines)


@click.command("score")
@click.argument("decisions", type=click.Path(path_type=str))
@click.option("--dataset", "dataset_path", required=True, type=click.Path(path_type=str),
              help="The dataset the run streamed (its evaluation set is searched too).")
@click.option("--session", help="The session streamed (default: the one the log's trials match).")
@click.option("--task", metavar="TASK", help="Only consider sessions of this task.")
@click.option("--bundle", "bundle_path", type=click.Path(path_type=str),
              help="Also decode the trials offline with this bundle: wire vs offline agreement.")
@click.option("--probe", help="With --bundle: the probe the run applied (default: the bundle's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def score(decisions, dataset_path, session, task, bundle_path, probe, as_json):
    """Score a run's decision log against the labels of the dataset it streamed.

    Matches each decision to its trial by onset sample (device counter modulo the session
    length), then reports per task: trials, decisions, no-decisions by reason, balanced
    accuracy with a 95% bootstrap CI, agreement with the ideal observer, and with --bundle
    agreement with the offline pipeline on the same windows.

    \b
    Example:
      phosphene simulate stream --pty --dataset data/eval --session psyc-e000
      phosphene run bundle --port /dev/pts/5 --out decisions.jsonl --duration-s 60
      phosphene score decisions.jsonl --dataset data --bundle bundle
    """
    try:
        result = score_decisions(decisions, dataset_path, session=session, task=task,
                                 bundle=bundle_path, probe=probe)
    except ScoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_score(result))
