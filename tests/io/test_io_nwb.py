"""NWB import/export with files written by pynwb; binned counts from NWB, .npy and .csv."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_signals import UV_PER_BIT, expected_mua, make_broadband
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.ecephys import ElectricalSeries

from phosphene.cli import cli
from phosphene.dataset import Dataset, DatasetWriter
from phosphene.geometry import ChannelMap
from phosphene.train.importers import RecordingError, export_nwb, import_array, import_nwb


@pytest.fixture
def runner():
    return CliRunner()


def quiet(_msg: str) -> None:
    pass


def new_file(**kw) -> NWBFile:
    return NWBFile(session_description="test", identifier="test",
                   session_start_time=dt.datetime(2024, 1, 2, tzinfo=dt.UTC), **kw)


def add_electrodes(nwbfile, ids, x_um, y_um, *, columns=("rel_x", "rel_y")):
    device = nwbfile.create_device(name="utah")
    group = nwbfile.create_electrode_group(name="g", description="array", location="V1", device=device)
    for eid, x, y in zip(ids, x_um, y_um):
        nwbfile.add_electrode(id=int(eid), group=group, location="V1",
                              **{columns[0]: float(x), columns[1]: float(y)})


def write(nwbfile, path):
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def test_broadband_electrical_series_geometry_and_trials(tmp_path):
    rate = 10_000.0
    ids = list(range(201, 213))
    rows, cols = np.divmod(np.arange(12), 4)
    nwbfile = new_file()
    add_electrodes(nwbfile, ids, cols * 250.0, rows * 250.0)
    order = [5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10]  # the series' columns in another order
    region = nwbfile.create_electrode_table_region(region=order, description="recorded")
    onsets = (1.25, 1.9)  # on the file clock; the series starts at 1.0 s
    x = make_broadband(int(1.5 * rate), 12, rate_hz=rate, seed=11,
                       onsets_s=tuple(o - 1.0 for o in onsets))
    nwbfile.add_acquisition(ElectricalSeries(name="raw", data=x, electrodes=region, rate=rate,
                                             starting_time=1.0, conversion=UV_PER_BIT * 1e-6))
    nwbfile.add_trial_column("electrode", "stimulated electrode id")
    nwbfile.add_trial_column("current_ua", "uA")
    nwbfile.add_trial_column("perceived", "1 seen")
    for onset, e, c, p in zip(onsets, (206, 212), (20.0, 60.0), (True, False)):
        nwbfile.add_trial(start_time=onset, stop_time=onset + 0.2, electrode=e, current_ua=c, perceived=p)
    write(nwbfile, tmp_path / "rec.nwb")
    report = import_nwb(tmp_path / "rec.nwb", out=tmp_path / "ds", chunk_s=0.05, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert report.sessions[0]["input_kind"] == "broadband" and ds.sessions[0].kind == "psychometric"
    np.testing.assert_allclose(ds.mua("rec"), expected_mua(x, rate, (0.25, 0.9)), rtol=1e-5, atol=1e-4)
    cmap = ds.channel_map
    assert list(cmap.ids) == [ids[k] for k in order]
    k = cmap.index_of(212)
    assert (cmap.rows[k], cmap.cols[k], cmap.x_um[k], cmap.y_um[k]) == (2, 3, 750.0, 500.0)
    t = ds.trials
    assert list(t.onset_sample) == [250, 900] and list(t.electrode) == [206, 212]
    assert list(t.perceived) == [1, 0] and list(t.current_ua) == [20.0, 60.0]


@pytest.mark.parametrize("rate, expect", [(1000.0, "copy"), (2000.0, "pool"), (500.0, "hold"),
                                          (1500.0, "error")])
def test_mua_timeseries_at_other_rates(tmp_path, rate, expect):
    rng = np.random.default_rng(12)
    data = rng.gamma(3.0, 5.0, size=(400, 5)).astype(np.float32)
    nwbfile = new_file()
    add_electrodes(nwbfile, [1, 2, 3, 4, 5], np.arange(5) * 400.0, np.zeros(5))
    nwbfile.add_acquisition(TimeSeries(name="mua", data=data, unit="uV", rate=rate))
    write(nwbfile, tmp_path / "m.nwb")
    if expect == "error":
        with pytest.raises(RecordingError, match="a 1500 Hz signal cannot be brought to 1000 Hz"):
            import_nwb(tmp_path / "m.nwb", out=tmp_path / "ds", log=quiet)
        return
    import_nwb(tmp_path / "m.nwb", out=tmp_path / "ds", log=quiet)
    got = Dataset.open(tmp_path / "ds").mua("m")
    want = {"copy": data, "pool": data.reshape(200, 2, 5).mean(axis=1),
            "hold": np.repeat(data, 2, axis=0)}[expect]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_binned_counts_from_nwb_npy_and_csv(runner, tmp_path):
    rng = np.random.default_rng(13)
    counts = rng.poisson(2.0, size=(60, 6)).astype(np.int32)  # 60 bins of 20 ms = 1.2 s
    rate_hz_per_bin = counts * 50.0  # spikes/s over each 20 ms bin
    want = np.repeat(rate_hz_per_bin, 20, axis=0)
    nwbfile = new_file()
    add_electrodes(nwbfile, range(1, 7), np.arange(6) * 400.0, np.zeros(6))
    nwbfile.add_acquisition(TimeSeries(name="counts", data=counts, unit="spikes", rate=50.0))
    write(nwbfile, tmp_path / "b.nwb")
    r = runner.invoke(cli, ["import", "nwb", str(tmp_path / "b.nwb"), "--input-kind", "binned",
                            "--bin-ms", "20", "--out", str(tmp_path / "ds"), "--json"])
    assert r.exit_code == 0, r.output
    ds = Dataset.open(tmp_path / "ds")
    assert ds.meta["units"] == "spikes/s" and ds.meta["signal"] == "binned-rate"
    np.testing.assert_array_equal(ds.mua("b"), want)
    np.save(tmp_path / "c.npy", counts)
    import_array(tmp_path / "c.npy", out=tmp_path / "ds", bin_ms=20, append=True, log=quiet)
    np.testing.assert_array_equal(Dataset.open(tmp_path / "ds").mua("c"), want)
    np.savetxt(tmp_path / "d.csv", counts, fmt="%d", delimiter=",",
               header=",".join(f"elec{i}" for i in range(1, 7)), comments="")
    (tmp_path / "trials.csv").write_text("time_s,electrode,current_ua,perceived\n0.5,3,20,1\n")
    r = runner.invoke(cli, ["import", "array", str(tmp_path / "d.csv"), "--bin-ms", "20", "--append",
                            "--out", str(tmp_path / "ds"), "--trials", str(tmp_path / "trials.csv")])
    assert r.exit_code == 0, r.output
    ds = Dataset.open(tmp_path / "ds")
    np.testing.assert_array_equal(ds.mua("d"), want)
    assert [s.kind for s in ds.sessions] == ["resting", "resting", "psychometric"]
    assert list(ds.trials.onset_sample) == [500]
    # a binned dataset exports as TimeSeries in spikes/s and comes back unchanged
    export_nwb(tmp_path / "ds", tmp_path / "rt.nwb", log=quiet)
    import_nwb(tmp_path / "rt.nwb", out=tmp_path / "rt", log=quiet)
    back = Dataset.open(tmp_path / "rt")
    assert back.meta["units"] == "spikes/s"
    for s in ds.sessions:
        np.testing.assert_array_equal(back.mua(s.session), ds.mua(s.session))


def test_export_import_round_trip_of_the_virtual_cortex(runner, tmp_path, tiny_dataset):
    r = runner.invoke(cli, ["export", "nwb", str(tiny_dataset.path), str(tmp_path / "v.nwb"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["trials"] == len(tiny_dataset.trials)
    r = runner.invoke(cli, ["import", "nwb", str(tmp_path / "v.nwb"), "--out", str(tmp_path / "back")])
    assert r.exit_code == 0, r.output
    back = Dataset.open(tmp_path / "back")
    assert back.channel_map == tiny_dataset.channel_map
    assert [(s.session, s.kind, s.day, s.n_samples) for s in back.sessions] == \
        [(s.session, s.kind, s.day, s.n_samples) for s in tiny_dataset.sessions]
    for s in tiny_dataset.sessions:
        np.testing.assert_array_equal(back.mua(s.session), tiny_dataset.mua(s.session))
    a, b = tiny_dataset.trials, back.trials
    for f in ("session", "onset_sample", "electrode", "current_ua", "perceived"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_allclose(a.p_true, b.p_true, rtol=1e-5)
    assert back.ideal_observer == tiny_dataset.ideal_observer
    # exporting onto an existing file needs --overwrite
    r = runner.invoke(cli, ["export", "nwb", str(tiny_dataset.path), str(tmp_path / "v.nwb")])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == \
        f"Error: {tmp_path / 'v.nwb'} already exists (pass --overwrite to replace it)"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_channels=st.integers(1, 9), seed=st.integers(0, 2**16), n_trials=st.integers(0, 4))
def test_round_trip_any_geometry(tmp_path_factory, n_channels, seed, n_trials):
    rng = np.random.default_rng(seed)
    tmp = tmp_path_factory.mktemp("rt")
    ids = sorted(int(i) for i in rng.choice(np.arange(1, 500), n_channels, replace=False))
    cmap = ChannelMap(tuple(ids), (-1,) * n_channels, (-1,) * n_channels,
                      tuple(float(v) for v in rng.uniform(-2000, 2000, n_channels)),
                      tuple(float(v) for v in rng.uniform(-2000, 2000, n_channels)), name="odd")
    with DatasetWriter(tmp / "ds", cmap) as w:
        for k, n in enumerate((300, 170)):
            w.add_session(f"s{k}", kind=("resting", "threshold")[k], day=k, n_samples=n)[:] = \
                rng.normal(20, 5, (n, n_channels))
        w.add_trials([{"session": "s1", "onset_sample": int(rng.integers(0, 170)),
                       "electrode": int(rng.choice(ids)), "current_ua": float(rng.uniform(1, 80)),
                       "perceived": int(rng.integers(-1, 2))} for _ in range(n_trials)])
    ds = Dataset.open(tmp / "ds")
    export_nwb(tmp / "ds", tmp / "x.nwb", log=quiet)
    import_nwb(tmp / "x.nwb", out=tmp / "back", log=quiet)
    back = Dataset.open(tmp / "back")
    assert back.channel_map.ids == cmap.ids and back.channel_map.name == "odd"
    np.testing.assert_allclose(back.channel_map.positions_um(), cmap.positions_um(), rtol=1e-6)
    for s in ds.sessions:
        np.testing.assert_array_equal(back.mua(s.session), ds.mua(s.session))
    for f in ("session", "onset_sample", "electrode", "current_ua", "perceived"):
        np.testing.assert_array_equal(getattr(back.trials, f), getattr(ds.trials, f))


def test_trials_in_an_intervals_table_with_electrode_links(tmp_path):
    from pynwb.epoch import TimeIntervals

    nwbfile = new_file()
    add_electrodes(nwbfile, [10, 20, 30], [0.0, 400.0, 800.0], [0.0, 0.0, 0.0], columns=("x", "y"))
    nwbfile.add_acquisition(TimeSeries(name="mua", data=np.ones((800, 3)), unit="uV", rate=1000.0))
    stim = TimeIntervals(name="stimulation", description="ICMS")
    stim.add_column("electrodes", "stimulated electrode", table=nwbfile.electrodes)
    stim.add_column("amplitude_ua", "uA")
    stim.add_interval(start_time=0.3, stop_time=0.5, electrodes=2, amplitude_ua=15.0)
    nwbfile.add_time_intervals(stim)
    write(nwbfile, tmp_path / "s.nwb")
    import_nwb(tmp_path / "s.nwb", out=tmp_path / "ds", kind="threshold", log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert list(ds.channel_map.ids) == [10, 20, 30] and ds.channel_map.x_um == (0.0, 400.0, 800.0)
    t = ds.trials
    assert list(zip(t.onset_sample, t.electrode, t.current_ua, t.perceived)) == [(300, 30, 15.0, -1)]


def _nan_file(tmp_path):
    data = np.ones((50, 3))
    data[7, 1] = np.nan
    nwbfile = new_file()
    add_electrodes(nwbfile, [1, 2, 3], [0, 1, 2], [0, 0, 0])
    nwbfile.add_acquisition(TimeSeries(name="mua", data=data, unit="uV", rate=1000.0))
    return write(nwbfile, tmp_path / "nan.nwb")


def _two_series(tmp_path):
    nwbfile = new_file()
    add_electrodes(nwbfile, [1, 2], [0, 1], [0, 0])
    region = nwbfile.create_electrode_table_region(region=[0, 1], description="all")
    for name in ("probe_a", "probe_b"):
        nwbfile.add_acquisition(ElectricalSeries(name=name, data=np.zeros((40, 2), np.int16),
                                                 electrodes=region, rate=30000.0))
    return write(nwbfile, tmp_path / "two.nwb")


def _not_hdf5(tmp_path):
    (tmp_path / "junk.nwb").write_bytes(b"\x00not hdf5" * 50)
    return tmp_path / "junk.nwb"


@pytest.mark.parametrize("make, extra, error", [
    (lambda p: p / "none.nwb", [], "Error: NWB file not found: {f}"),
    (_nan_file, [], ("Error: session nan: input sample 7 on electrode 2 is nan; NaN/inf samples "
                    "cannot be imported (fill or cut the gap first)")),
    (_two_series, [], ("Error: {f} has several candidate series: acquisition/probe_a "
                      "(ElectricalSeries, shape (40, 2)); acquisition/probe_b (ElectricalSeries, "
                      "shape (40, 2)); choose with --series NAME (repeat it to import several as "
                      "sessions)")),
    (_two_series, ["--series", "probe_c"], ("Error: {f} has no series 'probe_c'; series in the file: "
                                           "acquisition/probe_a (ElectricalSeries, shape (40, 2)); "
                                           "acquisition/probe_b (ElectricalSeries, shape (40, 2))")),
])
def test_bad_nwb_gives_one_error_line(runner, tmp_path, make, extra, error):
    f = make(tmp_path)
    r = runner.invoke(cli, ["import", "nwb", str(f), "--out", str(tmp_path / "ds"), *extra])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines()[-1] == error.format(f=f)
    assert "Traceback" not in r.output and not (tmp_path / "ds").exists()


def test_not_hdf5_and_bad_arrays(runner, tmp_path):
    f = _not_hdf5(tmp_path)
    r = runner.invoke(cli, ["import", "nwb", str(f), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"Error: {f} is not a readable NWB (HDF5) file: ")
    (tmp_path / "neg.csv").write_text("1,2\n0,-1\n")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [1.0, 2.0], [1.0, 2.0]]))
    for args, code, error in [
        ([str(tmp_path / "neg.csv"), "--bin-ms", "20"], 1,
         "Error: session neg: bin 1 on electrode 2 has a negative count (-1.0)"),
        ([str(tmp_path / "nan.npy"), "--input-kind", "mua", "--rate-hz", "1000"], 1,
         ("Error: session nan: input sample 0 on electrode 2 is nan; NaN/inf samples cannot be "
         "imported (fill or cut the gap first)")),
        ([str(tmp_path / "neg.csv")], 2, "Error: --input-kind binned needs --bin-ms"),
        ([str(tmp_path / "neg.csv"), "--bin-ms", "2.5"], 1,
         "Error: binned counts need a whole number of milliseconds per bin (--bin-ms), got 2.5"),
    ]:
        r = runner.invoke(cli, ["import", "array", *args, "--out", str(tmp_path / "ds")])
        assert r.exit_code == code, r.output
        assert r.stderr.strip().splitlines()[-1] == error
        assert not (tmp_path / "ds").exists()
