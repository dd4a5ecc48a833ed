"""`phosphene monitor LOG`: the monitor page and a PNG from a finished run's log."""

from __future__ import annotations

import json
import re

import numpy as np
from click.testing import CliRunner

from phosphene.cli import cli

T0 = 1_800_000_000.0


def _log(path, onsets=()) -> None:
    records = [{"type": "no_decision", "mode": "triggered", "reason": "warming_up", "time_unix": T0}]
    for i, (onset, electrode) in enumerate(onsets or [(1000 * k, 5) for k in range(1, 9)]):
        p = 0.1 + 0.1 * i
        records.append({"type": "decision", "mode": "triggered", "p_perceived": p, "decision": int(p >= 0.5),
                        "onset_sample": onset, "electrode": electrode, "current_ua": 10.0,
                        "latency_us": {"total": 200.0 + 50 * i}, "time_unix": T0 + 1 + i})
    records.append({"type": "health", "mode": "triggered", "ok": False, "warming_up": False, "samples": 2000,
                    "dead": [12], "flat": [], "saturated": [], "dead_at_calibration": [1, 8, 94],
                    "time_unix": T0 + 5})
    records.append({"type": "summary", "mode": "triggered", "duration_s": 10.0, "decisions": len(records) - 2,
                    "no_decisions": {"warming_up": 1}, "budget_ms": 16.0, "budget_misses": 0,
                    "frames_lost": 2, "crc_errors": 0, "bytes_discarded": 0, "input_rate_hz": 999.0,
                    "latency_us": {"p50": 350.0, "p99": 550.0, "max": 550.0}})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _embedded(html: str) -> dict:
    m = re.search(r"const EMBEDDED = (\{.*?\});\n", html, re.S)
    assert m, "no data embedded in the page"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_monitor_writes_the_page_and_a_png(tmp_path):
    log = tmp_path / "decisions.jsonl"
    _log(log)
    result = CliRunner().invoke(cli, ["monitor", str(log), "--json"])
    assert result.exit_code == 0, result.output
    paths = json.loads(result.stdout)
    assert paths == {"html": str(tmp_path / "decisions.html"), "png": str(tmp_path / "decisions.png")}
    data = _embedded((tmp_path / "decisions.html").read_text())
    assert not data["live"] and data["status"]["frames_lost"] == 2 and data["threshold"] == 0.45
    assert data["health"]["dead"] == [12] and data["activity_uv"] is None
    assert data["latency"]["count"] == 8 and sum(data["latency"]["page_counts"]) == 8
    png = (tmp_path / "decisions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not list(tmp_path.glob(".*"))  # written temp-then-rename: nothing left beside


def test_render_png_with_the_dataset_streamed(tmp_path, tiny_dataset):
    from phosphene.monitor_cli import load_log_snapshot, render_png

    ds, data_path = tiny_dataset, tiny_dataset.path
    session = next(s for s in ds.sessions if (ds.trials.session == s.session).any())
    mask = ds.trials.session == session.session
    onsets = list(zip(ds.trials.onset_sample[mask][:6].tolist(), ds.trials.electrode[mask][:6].tolist()))
    log = tmp_path / "run.jsonl"
    _log(log, onsets)
    activity = load_log_snapshot(log, data_path).data["activity_uv"]
    mua = np.asarray(ds.mua(session.session), np.float32)
    assert np.allclose(activity, np.abs(np.diff(mua, axis=0)).mean(axis=0), rtol=1e-3)
    out = render_png(log, tmp_path / "report" / "monitor.png", dataset=data_path)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_monitor_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["monitor", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: decision log not found: {tmp_path / 'missing.jsonl'}"
    log = tmp_path / "decisions.jsonl"
    _log(log)
    result = CliRunner().invoke(cli, ["monitor", str(log), "--dataset", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
