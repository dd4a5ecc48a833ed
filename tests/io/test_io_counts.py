"""Binned counts as a first-class input (issue 16): .mat/.npz/.csv arrays, any labelled event,
the decoded window, --split-at, appending, and the errors a lab's files provoke.

Every recording here is generated from known rates (binned_counts.make_counts), never
downloaded.
"""

from __future__ import annotations

import datetime as dt
import json

import h5py
import numpy as np
import pytest
import scipy.io
from binned_counts import make_counts
from click.testing import CliRunner

from phosphene.cli import cli
from phosphene.dataset import NO_ELECTRODE, Dataset
from phosphene.signal import NormaliserConfig, WindowSpec
from phosphene.train.importers import RecordingError, export_nwb, import_array, import_nwb
from phosphene.train.importers.common import read_trials_csv


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def rec():
    """12 units, 50 ms bins: 20 s resting then 40 s of events every ~1.5 s."""
    return make_counts(n_units=12, rest_s=20.0, task_s=40.0, seed=4)


def quiet(_msg: str) -> None:
    pass


def collect():
    lines: list[str] = []
    return lines, lines.append


def run(runner, *args):
    r = runner.invoke(cli, ["import", "array", *map(str, args)])
    return r, [ln for ln in r.stderr.splitlines() if ln.strip()]


def held(counts: np.ndarray, bin_ms: int = 50) -> np.ndarray:
    return np.repeat(counts * (1000.0 / bin_ms), bin_ms, axis=0).astype(np.float32)


# --------------------------------------------------------------------------------------
# formats: .mat v5 and v7.3, .npz, layout
# --------------------------------------------------------------------------------------
def _write_mat73(path, **arrays):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5, each array stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, a in arrays.items():
            f.create_dataset(name, data=np.asarray(a).T)
            f[name].attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
                 b"HDF5 schema 1.00 .".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_mat_import_gives_the_counts_as_rates(tmp_path, rec, version):
    f = tmp_path / "rec.mat"
    if version == "v5":
        scipy.io.savemat(f, {"counts": rec.counts, "meta": {"bin_ms": 50.0, "units": rec.counts.T}})
    else:
        _write_mat73(f, counts=rec.counts, other=rec.counts.T)
    report = import_array(f, out=tmp_path / "ds", bin_ms=50, variable="counts", log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert np.array_equal(np.asarray(ds.mua("rec")), held(rec.counts))
    assert report.sessions[0]["n_samples"] == rec.counts.shape[0] * 50
    # recorded: the bin width and the normaliser with the Poisson floor for it
    assert ds.meta["bin_ms"] == 50.0 and ds.bin_ms == 50.0
    assert ds.normaliser_config == NormaliserConfig.for_counts(50)
    assert ds.meta["source"]["imports"][0]["variable"] == "counts"


def test_mat_variable_listing_and_struct_fields(tmp_path, rec):
    f = tmp_path / "two.mat"
    scipy.io.savemat(f, {"counts": rec.counts, "data": {"spikes": rec.counts}})
    with pytest.raises(RecordingError, match=r"several arrays; pass --variable NAME, one of: "
                                             r"counts \(1200, 12\) float64, data.spikes"):
        import_array(f, out=tmp_path / "ds", bin_ms=50, log=quiet)
    with pytest.raises(RecordingError, match=r"no variable 'nope'; it holds: counts"):
        import_array(f, out=tmp_path / "ds", bin_ms=50, variable="nope", log=quiet)
    import_array(f, out=tmp_path / "ds", bin_ms=50, variable="data.spikes", log=quiet)
    assert np.array_equal(np.asarray(Dataset.open(tmp_path / "ds").mua("two")), held(rec.counts))


def test_channel_by_time_is_refused_without_layout_and_transposed_with_it(runner, tmp_path, rec):
    np.savez(tmp_path / "rec.npz", spikes=rec.counts.T, t=np.arange(3.0))
    r, err = run(runner, tmp_path / "rec.npz", "--bin-ms", 50, "--out", tmp_path / "a")
    assert r.exit_code == 1 and err[-1].endswith("several arrays; pass --variable NAME, one of: "
                                                 "spikes (12, 1200) float64, t (3,) float64")
    r, err = run(runner, tmp_path / "rec.npz", "--bin-ms", 50, "--variable", "spikes",
                 "--out", tmp_path / "a")
    assert r.exit_code == 1 and not (tmp_path / "a").exists()
    assert err[-1] == (f"Error: {tmp_path / 'rec.npz'} variable 'spikes' has shape (12, 1200): more "
                       "columns than rows, i.e. 1200 channels of only 12 samples. If it is stored "
                       "channels x time (units x bins) pass --layout channel-by-time; if it really "
                       "is time x channels pass --layout time-by-channel")
    r, _ = run(runner, tmp_path / "rec.npz", "--bin-ms", 50, "--variable", "spikes",
               "--layout", "channel-by-time", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert Dataset.open(tmp_path / "a").n_channels == 12
    assert np.array_equal(np.asarray(Dataset.open(tmp_path / "a").mua("rec")), held(rec.counts))
    # --variable only means something inside .npz / .mat
    np.save(tmp_path / "c.npy", rec.counts)
    r, err = run(runner, tmp_path / "c.npy", "--bin-ms", 50, "--variable", "x", "--out", tmp_path / "b")
    assert r.exit_code == 1 and "--variable picks an array inside a .npz or .mat" in err[-1]


# --------------------------------------------------------------------------------------
# CSV: errors with line and column, index/time columns
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("1,2,3\n4,,6\n", "{f} line 2, column 2: empty cell (fill the gap, or cut the recording there)"),
    ("e1,e2\n1,2\n3,x\n", "{f} line 3, column 2 (e2): 'x' is not a number"),
    ("1,2\n3,4,5\n", "{f} line 2 has 3 values but line 1 has 2; every row must hold one value per column"),
    ("e1,spikes\n1,2\n", "{f} line 1, column 2: header cell 'spikes' names no electrode id"),
])
def test_csv_errors_name_line_and_column(tmp_path, text, message):
    f = tmp_path / "c.csv"
    f.write_text(text)
    with pytest.raises(RecordingError) as exc:
        import_array(f, out=tmp_path / "ds", bin_ms=50, log=quiet)
    assert str(exc.value).startswith(message.format(f=f))


@pytest.mark.parametrize("header", ["time_s,e1,e2,e3", ",1,2,3", "index,1,2,3"])
def test_csv_index_or_time_column_is_left_out(tmp_path, header):
    f = tmp_path / "c.csv"
    f.write_text(header + "\n" + "".join(f"{0.05 * i:.2f},{i % 2},0,{i % 3}\n" for i in range(30)))
    lines, log = collect()
    import_array(f, out=tmp_path / "ds", bin_ms=50, log=log)
    ds = Dataset.open(tmp_path / "ds")
    assert ds.channel_map.ids == (1, 2, 3)
    assert any("is an index or time column" in ln for ln in lines)
    # a named non-electrode column anywhere: --drop-column
    g = tmp_path / "d.csv"
    g.write_text("e1,quality,e2\n" + "1,9,0\n" * 30)
    import_array(g, out=tmp_path / "ds2", bin_ms=50, drop_columns=("quality",), log=quiet)
    assert Dataset.open(tmp_path / "ds2").channel_map.ids == (1, 2)


def test_bin_ms_with_mua_is_refused(runner, tmp_path, rec):
    np.save(tmp_path / "m.npy", rec.counts)
    r, err = run(runner, tmp_path / "m.npy", "--input-kind", "mua", "--rate-hz", 1000,
                 "--bin-ms", 20, "--out", tmp_path / "ds")
    assert r.exit_code == 2 and "--bin-ms applies to --input-kind binned" in err[-1]
    with pytest.raises(RecordingError, match="--bin-ms applies to binned counts only"):
        import_array(tmp_path / "m.npy", out=tmp_path / "ds", input_kind="mua", rate_hz=1000,
                     bin_ms=20, log=quiet)
    with pytest.raises(RecordingError, match="--rate-hz 1000 contradicts --bin-ms 50"):
        import_array(tmp_path / "m.npy", out=tmp_path / "ds", bin_ms=50, rate_hz=1000, log=quiet)


# --------------------------------------------------------------------------------------
# labels: any column, optional electrode/current, loud when missing
# --------------------------------------------------------------------------------------
def test_label_column_names_any_column_and_events_need_no_electrode(tmp_path, rec):
    np.save(tmp_path / "rec.npy", rec.counts)
    rec.trials_csv(tmp_path / "events.csv", label_column="choice")
    import_array(tmp_path / "rec.npy", out=tmp_path / "ds", bin_ms=50, trials_csv=tmp_path / "events.csv",
                 label_column="Choice", log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    tr = ds.task_trials("psychometric")
    assert len(tr) == len(rec.labels)
    assert np.array_equal(tr.perceived, rec.labels)
    assert (tr.electrode == NO_ELECTRODE).all() and (tr.current_ua == 0).all()
    assert np.array_equal(tr.onset_sample, rec.event_bins * 50)
    summary = ds.summary()["kinds"]["psychometric"]
    assert summary["events_without_electrode"] == len(rec.labels) and summary["electrodes"] == []


def test_unknown_label_column_is_refused_with_the_columns(runner, tmp_path, rec):
    np.save(tmp_path / "rec.npy", rec.counts)
    rec.trials_csv(tmp_path / "events.csv", label_column="choice")
    r, err = run(runner, tmp_path / "rec.npy", "--bin-ms", 50, "--trials", tmp_path / "events.csv",
                 "--label-column", "correct", "--out", tmp_path / "ds")
    assert r.exit_code == 1
    assert err[-1] == (f"Error: {tmp_path / 'events.csv'}: --label-column 'correct' is not a column "
                       "of the trials table; its columns are time_s, choice")


def test_a_table_without_label_column_warns_loudly(runner, tmp_path, rec):
    np.save(tmp_path / "rec.npy", rec.counts)
    rec.trials_csv(tmp_path / "events.csv", label_column="choice")
    r, err = run(runner, tmp_path / "rec.npy", "--bin-ms", 50, "--trials", tmp_path / "events.csv",
                 "--out", tmp_path / "ds", "--json")
    assert r.exit_code == 0, r.output
    warning = next(ln for ln in err if ln.startswith("warning:"))
    assert "has no label column (perceived or detected; columns: time_s, choice): every trial " \
           "imports UNLABELLED" in warning and "--label-column NAME" in warning
    assert any("UNLABELLED" in n for n in json.loads(r.stdout)["notes"])


def test_trials_csv_electrode_and_current_go_together(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("time_s,electrode,perceived\n1.0,3,1\n")
    with pytest.raises(RecordingError, match="has a electrode column but no current_ua column"):
        read_trials_csv(f, log=quiet)
    f.write_text("time_s,hit\n1.0,yes\n2.0,no\n3.0,\n")
    events = read_trials_csv(f, label_column="hit", log=quiet)
    assert [e.perceived for e in events] == [1, 0, -1]
    f.write_text("time_s,hit\n1.0,2\n")
    with pytest.raises(RecordingError, match=r"line 2: label column 'hit' must be 0, 1"):
        read_trials_csv(f, label_column="hit", log=quiet)


# --------------------------------------------------------------------------------------
# the decoded window, warm-up trials, --split-at, appending
# --------------------------------------------------------------------------------------
def test_window_is_stored_and_checked(tmp_path, rec):
    np.save(tmp_path / "rec.npy", rec.counts)
    import_array(tmp_path / "rec.npy", out=tmp_path / "ds", bin_ms=50, window_offset_ms=0,
                 window_ms=400, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert ds.window_spec == WindowSpec(window_samples=400, offset_ms=0.0)
    assert ds.meta["window"] == {"window_samples": 400, "patch_samples": 16, "offset_ms": 0.0}
    with pytest.raises(RecordingError, match=r"--window-ms 300 is not a whole number of 16 ms "
                                             r"patches \(the model's token\); use e.g. 288 or 304"):
        import_array(tmp_path / "rec.npy", out=tmp_path / "x", bin_ms=50, window_ms=300, log=quiet)
    # an MUA dataset keeps the paper's window and normaliser, and records neither
    import_array(tmp_path / "rec.npy", out=tmp_path / "mua", input_kind="mua", rate_hz=1000, log=quiet)
    m = Dataset.open(tmp_path / "mua")
    assert "window" not in m.meta and "normaliser" not in m.meta
    assert m.window_spec == WindowSpec() and m.normaliser_config == NormaliserConfig()


def test_split_at_cuts_resting_and_task_and_reports_warmup_trials(tmp_path, rec):
    np.save(tmp_path / "rec.npy", rec.counts)
    # the first event at 21 s; cutting at 20.5 s puts its window inside the warm-up
    rec.trials_csv(tmp_path / "events.csv", label_column="choice")
    lines, log = collect()
    report = import_array(tmp_path / "rec.npy", out=tmp_path / "ds", bin_ms=50,
                          trials_csv=tmp_path / "events.csv", label_column="choice",
                          split_at=20.5, window_offset_ms=0, window_ms=400, log=log)
    ds = Dataset.open(tmp_path / "ds")
    assert [(s.session, s.kind, s.n_samples) for s in ds.sessions] == [
        ("rec-rest", "resting", 20_500), ("rec", "psychometric", 60_000 - 20_500)]
    whole = held(rec.counts)
    assert np.array_equal(np.asarray(ds.mua("rec-rest")), whole[:20_500])
    assert np.array_equal(np.asarray(ds.mua("rec")), whole[20_500:])
    tr = ds.task_trials("psychometric")
    assert np.array_equal(tr.onset_sample, rec.event_bins * 50 - 20_500)
    warn = [ln for ln in lines if ln.startswith("warning: session rec:")]
    assert warn and "1 fall in the normaliser's warm-up" in warn[0]
    assert any("warm-up" in n for n in report.notes)
    # trials before the cut are left out, loudly
    lines, log = collect()
    import_array(tmp_path / "rec.npy", out=tmp_path / "ds2", bin_ms=50,
                 trials_csv=tmp_path / "events.csv", label_column="choice", split_at=30.0, log=log)
    assert any(ln.startswith("warning: ") and "lie before --split-at-s 30 s" in ln for ln in lines)
    with pytest.raises(RecordingError, match=r"--split-at-s 99 s is outside the recording"):
        import_array(tmp_path / "rec.npy", out=tmp_path / "ds3", bin_ms=50, split_at=99, log=quiet)


def test_probe_time_drop_message_says_which_reason(tmp_path, rec, caplog):
    from phosphene.train.data import trial_windows

    np.save(tmp_path / "rec.npy", rec.counts)
    rec.trials_csv(tmp_path / "events.csv", label_column="choice")
    import_array(tmp_path / "rec.npy", out=tmp_path / "ds", bin_ms=50, trials_csv=tmp_path / "events.csv",
                 label_column="choice", split_at=20.5, window_offset_ms=0, window_ms=400, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    with caplog.at_level("WARNING"):
        X, y, _ = trial_windows(ds, "psychometric", ds.window_spec)
    assert len(y) == len(rec.labels) - 1 and np.isfinite(X).all()
    assert "1 in the normaliser warm-up" in caplog.text
    # all unlabelled: the error says so and names the fix
    import_array(tmp_path / "rec.npy", out=tmp_path / "nl", bin_ms=50, trials_csv=tmp_path / "events.csv",
                 log=quiet)
    nl = Dataset.open(tmp_path / "nl")
    n = len(rec.labels)
    with pytest.raises(ValueError, match=rf"all {n} trials dropped \({n} unlabelled\).*--label-column"):
        trial_windows(nl, "psychometric", nl.window_spec)


def test_append_refuses_another_bin_width_or_window(tmp_path, rec):
    np.save(tmp_path / "a.npy", rec.counts)
    np.save(tmp_path / "b.npy", rec.counts)
    import_array(tmp_path / "a.npy", out=tmp_path / "ds", bin_ms=50, window_offset_ms=0,
                 window_ms=400, log=quiet)
    with pytest.raises(RecordingError, match=r"cannot append 20 ms bins to .* which holds 50 ms bins"):
        import_array(tmp_path / "b.npy", out=tmp_path / "ds", bin_ms=20, append=True, log=quiet)
    with pytest.raises(RecordingError, match=r"cannot append with --window-ms 128: .* decodes "
                                             r"400 ms windows"):
        import_array(tmp_path / "b.npy", out=tmp_path / "ds", bin_ms=50, append=True,
                     window_offset_ms=170, window_ms=128, log=quiet)
    import_array(tmp_path / "b.npy", out=tmp_path / "ds", bin_ms=50, append=True, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert [s.session for s in ds.sessions] == ["a", "b"]
    assert ds.window_spec.window_samples == 400 and ds.normaliser_config == NormaliserConfig.for_counts(50)


# --------------------------------------------------------------------------------------
# NWB: binned counts with a behavioural trials table; export keeps the recorded choices
# --------------------------------------------------------------------------------------
def test_nwb_behavioural_table_and_export_round_trip(tmp_path, rec):
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwbfile = NWBFile(session_description="counts", identifier="counts",
                      session_start_time=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    nwbfile.add_acquisition(TimeSeries(name="counts", data=rec.counts, unit="counts", rate=20.0))
    nwbfile.add_trial_column(name="correct", description="0/1 behavioural outcome")
    for t, y in zip(rec.event_times_s, rec.labels):
        nwbfile.add_trial(start_time=float(t), stop_time=float(t) + 0.5, correct=bool(y))
    f = tmp_path / "counts.nwb"
    with NWBHDF5IO(str(f), "w") as io:
        io.write(nwbfile)
    lines, log = collect()
    import_nwb(f, out=tmp_path / "plain", input_kind="binned", log=log)  # no label named: loud
    assert any(ln.startswith("warning:") and "--label-column NAME" in ln for ln in lines)
    with pytest.raises(RecordingError, match="no trials/intervals table has a column 'choice'"):
        import_nwb(f, out=tmp_path / "x", input_kind="binned", label_column="choice", log=quiet)
    import_nwb(f, out=tmp_path / "ds", input_kind="binned", label_column="correct",
               window_offset_ms=0, window_ms=400, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    tr = ds.task_trials("psychometric")
    assert np.array_equal(tr.perceived, rec.labels) and (tr.electrode == NO_ELECTRODE).all()
    assert ds.normaliser_config == NormaliserConfig.for_counts(50.0)
    export_nwb(tmp_path / "ds", tmp_path / "out.nwb", log=quiet)
    import_nwb(tmp_path / "out.nwb", out=tmp_path / "back", log=quiet)
    back = Dataset.open(tmp_path / "back")
    assert back.normaliser_config == ds.normaliser_config
    assert back.window_spec == ds.window_spec and back.bin_ms == 50.0
    assert np.array_equal(back.trials.perceived, ds.trials.perceived)
