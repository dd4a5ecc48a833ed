"""`phosphene monitor`: the bedside monitor's page, and a PNG of it, from a finished run's log.

Map: the decision log (`phosphene run --out`: decision, no-decision and health lines and a
summary) -> phosphene.edge.monitor.snapshot_from_records (the data the live page polls) ->
render_page (the same HTML, data embedded) and render_png (the same four panels, drawn with
matplotlib for reports). --dataset adds what the log lacks: the array's channel map and
each channel's activity over the streamed session.

A workstation-layer command (matplotlib); the live monitor itself is edge/monitor.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np

from phosphene.errors import PhospheneError

__all__ = ["load_log_snapshot", "monitor", "render_html", "render_png"]

_STATE_COLOURS = {"dead": "#111111", "flat": "#98a2b3"}


class MonitorLogError(PhospheneError, ValueError):
    """The log or the dataset cannot be rendered; the message says why."""


def _streamed_session(dataset, records: list[dict], session: str | None):
    """The session the run streamed: given, or the one whose trials the most onsets match
    (the simulator streams a session from sample 0 and loops: onset c is trial c mod T)."""
    if session is not None:
        return dataset.session(session)
    onsets = [(int(r["onset_sample"]), int(r.get("electrode", -1))) for r in records
              if r.get("type") in ("decision", "no_decision") and "onset_sample" in r]
    best, best_hits = None, 0
    for info in dataset.sessions:
        mask = dataset.trials.session == info.session
        if not mask.any() or info.n_samples <= 0:
            continue
        trials = {(int(o), int(e)) for o, e in zip(dataset.trials.onset_sample[mask],
                                                    dataset.trials.electrode[mask])}
        hits = sum((o % info.n_samples, e) in trials for o, e in onsets)
        if hits > best_hits:
            best, best_hits = info, hits
    return best


def _mean_step_uv(mua: np.ndarray, chunk_samples: int = 1 << 18) -> np.ndarray:
    """mua: (T, C) uV -> (C,) mean |x[t] - x[t-1]|, the statistic the live page shows."""
    T, C = mua.shape  # samples, channels
    total = np.zeros(C, np.float64)
    for start in range(0, max(T - 1, 0), chunk_samples):
        block = np.asarray(mua[start:min(start + chunk_samples + 1, T)], np.float32)
        total += np.abs(np.diff(block, axis=0)).sum(axis=0, dtype=np.float64)
    return total / max(T - 1, 1)


def load_log_snapshot(log_path: str | Path, dataset: str | Path | None = None, *, session: str | None = None):
    """The monitor's Snapshot of a finished run (phosphene.edge.monitor.Snapshot)."""
    from phosphene.edge.monitor import MonitorError, snapshot_from_records
    from phosphene.edge.score import read_decision_log

    records = read_decision_log(log_path)
    channel_map = activity = None
    if dataset is not None:
        from phosphene.dataset import Dataset

        ds = Dataset.open(dataset)
        channel_map = ds.channel_map
        info = _streamed_session(ds, records, session)
        if info is not None:
            activity = _mean_step_uv(ds.mua(info.session))
    try:
        return snapshot_from_records(records, channel_map=channel_map, activity=activity)
    except MonitorError as exc:
        raise MonitorLogError(str(exc)) from None


def render_html(log_path: str | Path, html_path: str | Path, dataset: str | Path | None = None) -> Path:
    """The monitor page of a finished run, self-contained, written atomically to html_path."""
    from phosphene.edge.monitor import render_page
    from phosphene.io import write_text

    write_text(html_path, render_page(load_log_snapshot(log_path, dataset)))
    return Path(html_path)


def render_png(log_path: str | Path, png_path: str | Path, dataset: str | Path | None = None) -> Path:
    """A PNG of the monitor's four panels for a finished run (for report.md), written
    atomically to png_path: the array's activity and health, P(perceived) over time with the
    threshold and the no-decision gaps, the latency histogram against the budget, and the
    link counters."""
    from phosphene.io import write_bytes

    figure = _figure(load_log_snapshot(log_path, dataset).data)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes(png_path, buffer.getvalue())
    return Path(png_path)


def _figure(d: dict):
    from matplotlib.figure import Figure

    from phosphene.edge.monitor import channel_states

    fig = Figure(figsize=(12, 7.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.9])
    status = d["status"]
    fig.suptitle(f"phosphene monitor: {d['mode']} mode, {d['elapsed_s']:.0f} s, "
                 f"{status.get('decisions', 0)} decisions", fontsize=12)
    _array_panel(fig.add_subplot(grid[0, 0]), d, channel_states(d.get("health"), len(d["channels"]["ids"])))
    _p_panel(fig.add_subplot(grid[0, 1]), d)
    _counters_panel(fig.add_subplot(grid[1, 0]), status)
    _latency_panel(fig.add_subplot(grid[1, 1]), d)
    return fig


def _array_panel(ax, d: dict, states: list[str]) -> None:
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    ch = d["channels"]
    rows, cols, ids = ch["rows"], ch["cols"], ch["ids"]
    if min(rows) < 0 or min(cols) < 0:  # not a grid: lay the channels out in order
        side = int(np.ceil(np.sqrt(len(ids))))
        rows, cols = [i // side for i in range(len(ids))], [i % side for i in range(len(ids))]
    act = d.get("activity_uv")
    live = [np.log10(v) for v, s in zip(act or [], states) if v and v > 0 and s not in ("dead", "dead_at_calibration")]
    lo, hi = (np.percentile(live, 5), np.percentile(live, 95)) if live else (0.0, 1.0)
    cmap = colormaps["viridis"]
    for i, (r, c) in enumerate(zip(rows, cols)):
        s, v = states[i], (act[i] if act else None)
        colour = cmap(np.clip((np.log10(v) - lo) / max(hi - lo, 1e-6), 0, 1)) if v and v > 0 else "#e4e7ec"
        colour = _STATE_COLOURS.get(s, colour)
        hatch = "////" if s == "dead_at_calibration" else None
        ax.add_patch(Rectangle((c, r), 0.94, 0.94, facecolor="white" if hatch else colour, hatch=hatch,
                               edgecolor="#e67e22" if s == "saturated" else "#bbbbbb" if hatch else "white",
                               linewidth=2.5 if s == "saturated" else 0.5))
        if s == "dead":
            ax.plot([c + 0.15, c + 0.8], [r + 0.15, r + 0.8], color="#c0392b", lw=2)
            ax.plot([c + 0.8, c + 0.15], [r + 0.15, r + 0.8], color="#c0392b", lw=2)
        label = "S" if s == "saturated" else "=" if s == "flat" else str(ids[i])
        ax.text(c + 0.47, r + 0.5, label, ha="center", va="center", fontsize=6,
                color="#1d2330" if s in ("flat", "unknown", "dead_at_calibration") or not act else "white")
    ax.set_xlim(-0.1, max(cols) + 1)
    ax.set_ylim(max(rows) + 1, -0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    h = d.get("health")
    faults = [f"{len(h[k])} {k}" for k in ("dead", "flat", "saturated") if h and h.get(k)]
    ax.set_title("array: activity (mean |step|) and health"
                 + (f"\n{', '.join(faults)}" if faults else "\nhealth ok" if h and not h.get("warming_up") else ""),
                 fontsize=10)


def _p_panel(ax, d: dict) -> None:
    ev = d["events"]
    t = np.array(ev["t"], float)
    for a, b, _reasons in d["gaps"]:
        ax.axvspan(a, max(b, a + 0.05), color="#c0392b", alpha=0.14, lw=0)
    decided = np.array([p is not None for p in ev["p"]], bool)
    if decided.any():
        p = np.array([x for x in ev["p"] if x is not None], float)
        dec = np.array([x for x, k in zip(ev["decision"], decided) if k], float)
        ax.plot(t[decided], p, color="#93a4d8", lw=0.8)
        ax.scatter(t[decided][dec == 1], p[dec == 1], s=14, color="#1d4ed8", zorder=3, label="decision 1")
        ax.scatter(t[decided][dec == 0], p[dec == 0], s=14, facecolor="white", edgecolor="#1d4ed8", zorder=3,
                   label="decision 0")
    if d.get("threshold") is not None:
        ax.axhline(d["threshold"], color="#c0392b", ls="--", lw=1.2, label=f"threshold {d['threshold']:.3f}")
    if d["gaps"]:
        ax.axvspan(0, 0, color="#c0392b", alpha=0.14, label="no decision")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(d["elapsed_s"], float(t.max()) if t.size else 1.0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("P(perceived)")
    ax.set_title("P(perceived) over time", fontsize=10)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)


def _latency_panel(ax, d: dict) -> None:
    lat = d["latency"]
    bounds = np.array([10.0, *lat["page_bounds_us"]])
    counts = np.array(lat["page_counts"], float)
    budget_us = d["budget_ms"] * 1e3 if d.get("budget_ms") else None
    colours = ["#c0392b" if budget_us and b > budget_us else "#3b6fd8" for b in bounds[1:]]
    ax.bar(bounds[:-1], counts, width=np.diff(bounds), align="edge", color=colours, edgecolor="white")
    ax.set_xscale("log")
    if counts.any():
        ax.set_yscale("symlog", linthresh=1)
    if budget_us:
        ax.axvline(budget_us, color="#c0392b", lw=2, label=f"budget {d['budget_ms']:g} ms")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(10, bounds[-1])
    ax.set_xlabel("latency, last byte read to line written (us)")
    ax.set_ylabel("decisions")

    def ms(v):
        return "n/a" if v is None else f"{v / 1e3:.3f} ms"
    ax.set_title(f"latency: {lat['count']} decisions, p50 {ms(lat.get('p50'))}, p99 {ms(lat.get('p99'))}, "
                 f"max {ms(lat.get('max'))}", fontsize=10)


def _counters_panel(ax, s: dict) -> None:
    nd = s.get("no_decisions") or {}
    rows = [("decisions", s.get("decisions", 0)), ("no-decisions", sum(nd.values())),
            *((f"  {k}", v) for k, v in sorted(nd.items())),
            ("budget misses", s.get("budget_misses", 0)), ("frames lost", s.get("frames_lost", 0)),
            ("CRC errors", s.get("crc_errors", 0)), ("bytes discarded", s.get("bytes_discarded", 0)),
            ("samples lost", s.get("samples_lost", 0)), ("input rate (Hz)", s.get("input_rate_hz", "-"))]
    ax.axis("off")
    ax.set_title("link and decisions", fontsize=10)
    for i, (name, value) in enumerate(rows[:14]):
        y = 1 - (i + 0.5) / max(len(rows[:14]), 8)
        bad = name.strip() in ("budget misses", "frames lost", "CRC errors", "bytes discarded",
                               "samples lost") and value
        ax.text(0.02, y, name, fontsize=9, transform=ax.transAxes, va="center")
        ax.text(0.98, y, f"{value:,}" if isinstance(value, int) else str(value), fontsize=9, ha="right",
                va="center", transform=ax.transAxes, color="#c0392b" if bad else "#1d2330", weight="bold")


@click.command("monitor")
@click.argument("log", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dataset", type=click.Path(file_okay=False, path_type=str),
              help="The dataset the run streamed: its channel map, and each channel's activity.")
@click.option("--session", help="With --dataset: the session streamed (default: the one the log's onsets match).")
@click.option("--out", "html_out", type=click.Path(dir_okay=False, path_type=str),
              help="The page (default: LOG with .html).")
@click.option("--png", "png_out", type=click.Path(dir_okay=False, path_type=str),
              help="The PNG snapshot (default: LOG with .png).")
@click.option("--json", "as_json", is_flag=True, help="Print the paths written as JSON.")
def monitor(log, dataset, session, html_out, png_out, as_json):
    """Render the bedside monitor's page (and a PNG) from a finished run's decision log.

    The page is the one `phosphene run --monitor` serves, with the run's data embedded:
    open it in any browser, share it as one file. The PNG shows the same panels.

    \b
    Examples:
      phosphene monitor decisions.jsonl
      phosphene monitor decisions.jsonl --dataset data --png report/monitor.png
    """
    from phosphene.edge.monitor import render_page

    base = Path(log)
    html_path = Path(html_out) if html_out else base.with_suffix(".html")
    png_path = Path(png_out) if png_out else base.with_suffix(".png")
    if base.resolve() in (html_path.resolve(), png_path.resolve()):
        raise click.UsageError("--out and --png must not name the log itself")
    snapshot = load_log_snapshot(log, dataset, session=session)
    from phosphene.io import write_bytes, write_text

    buffer = io.BytesIO()
    _figure(snapshot.data).savefig(buffer, format="png", dpi=110)
    try:
        write_text(html_path, render_page(snapshot))
        write_bytes(png_path, buffer.getvalue())
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or html_path}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({"html": str(html_path), "png": str(png_path)}))
    else:
        click.echo(f"page: {html_path}\npng: {png_path}", err=True)
