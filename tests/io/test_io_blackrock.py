"""Blackrock NSx/NEV import: files written by tests/io/nsx_writer.py, read through Neo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from io_signals import UV_PER_BIT, expected_mua, make_broadband
from nsx_writer import write_nev, write_nsx

from phosphene.cli import cli
from phosphene.dataset import Dataset
from phosphene.geometry import ChannelMap
from phosphene.train.importers import RecordingError, import_blackrock, parse_stim_comment

RATE = 30_000.0


@pytest.fixture
def runner():
    return CliRunner()


def quiet(_msg: str) -> None:
    pass


@pytest.mark.parametrize("spec", ["2.3", "3.0"])
def test_writer_follows_the_spec_neo_reads_it_back(tmp_path, spec):
    from neo.rawio import BlackrockRawIO

    x = make_broadband(3000, 5, seed=1)
    write_nsx(tmp_path / "r.ns5", x, spec=spec, electrode_ids=[7, 3, 9, 1, 12])
    write_nev(tmp_path / "r.nev", electrode_ids=[7, 3, 9, 1, 12], spec=spec,
              comments=[(0.05, "electrode=9 current_ua=12.5 perceived=1")], digital=[(0.07, 0x1409)])
    rawio = BlackrockRawIO(filename=str(tmp_path / "r"), nsx_to_load=5)
    rawio.parse_header()
    ch = rawio.header["signal_channels"]
    assert [int(i) for i in ch["id"]] == [7, 3, 9, 1, 12]
    assert np.allclose(ch["gain"], UV_PER_BIT) and set(ch["units"]) == {"uV"}
    raw = rawio.get_analogsignal_chunk(0, 0, 0, 3000, 0, None)
    assert np.array_equal(raw, x)
    names = list(rawio.header["event_channels"]["name"])
    ts, _, labels = rawio.get_event_timestamps(0, 0, names.index("comments"))
    assert list(labels) == ["electrode=9 current_ua=12.5 perceived=1"]
    assert rawio.rescale_event_timestamp(ts, "float64", names.index("comments"))[0] == pytest.approx(0.05)
    ts, _, words = rawio.get_event_timestamps(0, 0, names.index("digital_input_port"))
    assert [int(w) for w in words] == [0x1409]


def test_mua_is_the_signal_definition_over_the_whole_file_with_blanking(tmp_path):
    """Chunked import (blocks far shorter than a blanked period) = one whole-file pass."""
    onsets = (0.3, 0.62, 1.1)
    x = make_broadband(int(1.6 * RATE), 6, seed=2, onsets_s=onsets)
    write_nsx(tmp_path / "stim.ns5", x)
    write_nev(tmp_path / "stim.nev", electrode_ids=list(range(1, 7)), comments=[
        (t, f"stim electrode={e} current_ua={c} perceived={p}")
        for t, e, c, p in zip(onsets, (2, 5, 2), (10, 40.5, 81), (0, 1, 1))])
    report = import_blackrock(tmp_path / "stim.ns5", out=tmp_path / "ds", kind="psychometric",
                              chunk_s=0.07, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    want = expected_mua(x, RATE, onsets)
    assert ds.mua("stim").shape == want.shape == (1600, 6)
    np.testing.assert_allclose(ds.mua("stim"), want, rtol=1e-5, atol=1e-4)
    # without blanking, the artifact rings through the filters: the import did blank
    assert np.abs(expected_mua(x, RATE)[300:470] - want[300:470]).max() > 50
    t = ds.trials
    assert list(t.onset_sample) == [300, 620, 1100]
    assert list(t.electrode) == [2, 5, 2] and list(t.current_ua) == [10, 40.5, 81]
    assert list(t.perceived) == [0, 1, 1]
    assert report.sessions[0]["n_trials"] == 3 and ds.sessions[0].kind == "psychometric"


def test_channel_map_differs_from_default(tmp_path):
    """Non-contiguous channel ids in a shuffled order, a 4 x 6 map given as CSV and .cmp."""
    rng = np.random.default_rng(3)
    ids = [int(i) for i in rng.permutation(np.arange(101, 125))]
    x = make_broadband(int(0.5 * RATE), 24, seed=3)
    write_nsx(tmp_path / "arr.ns5", x, electrode_ids=ids, spec="2.3")
    rows, cols = np.divmod(np.arange(24), 6)
    cmap = ChannelMap(tuple(range(101, 125)), tuple(int(r) for r in rows), tuple(int(c) for c in cols),
                      tuple(float(c * 250) for c in cols), tuple(float(r * 250) for r in rows), name="a4x6")
    cmap.save(tmp_path / "a4x6.csv")
    import_blackrock(tmp_path / "arr.ns5", out=tmp_path / "ds", map_path=tmp_path / "a4x6.csv", log=quiet)
    got = Dataset.open(tmp_path / "ds").channel_map
    assert list(got.ids) == ids  # column order = the file's channel order
    for eid in ids:
        assert got.positions_um()[got.index_of(eid)].tolist() == \
            cmap.positions_um()[cmap.index_of(eid)].tolist()
    # the same map as a Blackrock .cmp file (label digits give the id; 400 um pitch)
    lines = ["Cerebus mapping", "// col row bank pin label"]
    lines += [f"{c} {r} {'AB'[k // 16]} {k % 16 + 1} elec{101 + k}" for k, (r, c) in enumerate(zip(rows, cols))]
    (tmp_path / "a.cmp").write_text("\n".join(lines) + "\n")
    import_blackrock(tmp_path / "arr.ns5", out=tmp_path / "ds2", map_path=tmp_path / "a.cmp", log=quiet)
    got = Dataset.open(tmp_path / "ds2").channel_map
    k = got.index_of(124)
    assert (got.rows[k], got.cols[k], got.x_um[k]) == (3, 5, 2000.0)


def test_resting_only_file_without_nev_via_cli(runner, tmp_path, err_lines):
    x = make_broadband(int(1.2 * RATE), 10, seed=4)
    write_nsx(tmp_path / "rest.ns6", x)
    r = runner.invoke(cli, ["import", "blackrock", str(tmp_path / "rest.ns6"), "--out",
                            str(tmp_path / "ds"), "--session", "rest day 3", "--day", "3", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["sessions"][0] | {"file": None} == {
        "session": "rest-day-3", "kind": "resting", "day": 3, "n_samples": 1200, "duration_s": 1.2,
        "n_trials": 0, "input_kind": "broadband", "input_rate_hz": 30000.0, "file": None,
        "segment": 0, "t_start_s": 0.0}
    assert any("no channel map given; placing the 10 electrodes on the grid10 layout" in ln
               for ln in err_lines(r))
    assert any(n.startswith("no channel map given") for n in report["notes"])
    ds = Dataset.open(tmp_path / "ds")
    assert len(ds.trials) == 0 and ds.sessions_of("resting")[0].day == 3
    assert ds.channel_map.name == "grid10-assumed" and ds.channel_map.rows[-1] == 2


def test_trials_csv_digital_words_and_pauses(tmp_path):
    # a pause splits the file into two segments; the CSV names sessions, the NEV is ignored
    x = make_broadband(int(1.0 * RATE), 4, seed=5)
    write_nsx(tmp_path / "p.ns5", x, blocks=[(0, 15000), (15000, 30000)])
    write_nev(tmp_path / "p.nev", electrode_ids=[1, 2, 3, 4], digital=[(0.2, 0x0A03)])
    seg1_start = (15000 + 1000) / 30000  # the writer leaves a 1000-tick pause
    (tmp_path / "trials.csv").write_text(
        "session,time_s,electrode,current_ua,perceived\n"
        f"p-seg0,0.1,1,20,1\np-seg1,{seg1_start + 0.2:.6f},4,30,0\nother-file,3.0,2,5,1\n")
    import_blackrock(tmp_path / "p.ns5", out=tmp_path / "ds", trials_csv=tmp_path / "trials.csv",
                     kind="threshold", log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert [(s.session, s.kind, s.n_samples) for s in ds.sessions] == [
        ("p-seg0", "threshold", 500), ("p-seg1", "threshold", 500)]
    assert list(zip(ds.trials.session, ds.trials.onset_sample, ds.trials.electrode)) == [
        ("p-seg0", 100, 1), ("p-seg1", 200, 4)]
    # digital words when there are no comments: low byte electrode, high byte uA, label unknown
    import_blackrock(tmp_path / "p.ns5", out=tmp_path / "ds2", log=quiet)
    t = Dataset.open(tmp_path / "ds2").trials
    assert list(zip(t.session, t.onset_sample, t.electrode, t.current_ua, t.perceived)) == [
        ("p-seg0", 200, 3, 10.0, -1)]


def test_append_sessions_and_refuse_other_arrays(tmp_path):
    write_nsx(tmp_path / "a.ns5", make_broadband(int(0.4 * RATE), 4, seed=6))
    write_nsx(tmp_path / "b.ns5", make_broadband(int(0.6 * RATE), 4, seed=7))
    write_nsx(tmp_path / "c.ns5", make_broadband(int(0.4 * RATE), 5, seed=8))
    import_blackrock(tmp_path / "a.ns5", out=tmp_path / "ds", log=quiet)
    import_blackrock(tmp_path / "b.ns5", out=tmp_path / "ds", append=True, day=2, log=quiet)
    ds = Dataset.open(tmp_path / "ds")
    assert [(s.session, s.day, s.n_samples) for s in ds.sessions] == [("a", 0, 400), ("b", 2, 600)]
    assert len(ds.meta["source"]["imports"]) == 2
    with pytest.raises(RecordingError, match=r"cannot append: .* has 4 electrodes .* has 5"):
        import_blackrock(tmp_path / "c.ns5", out=tmp_path / "ds", append=True, log=quiet)
    with pytest.raises(RecordingError, match="already has session"):
        import_blackrock(tmp_path / "a.ns5", out=tmp_path / "ds", append=True, log=quiet)
    assert [s.session for s in Dataset.open(tmp_path / "ds").sessions] == ["a", "b"]


def test_stimulation_comment_parser():
    assert parse_stim_comment("stim electrode=37 current_ua=20 perceived=1") == {
        "electrode": 37, "current_ua": 20.0, "perceived": 1}
    assert parse_stim_comment("electrode: 6, current: 4.5") == {
        "electrode": 6, "current_ua": 4.5, "perceived": -1}
    assert parse_stim_comment("start of block 2") is None


def _truncated(tmp_path):
    write_nsx(tmp_path / "t.ns5", make_broadband(3000, 4))
    data = (tmp_path / "t.ns5").read_bytes()
    (tmp_path / "t.ns5").write_bytes(data[:-100])
    return tmp_path / "t.ns5"


def _bad_header(tmp_path):
    write_nsx(tmp_path / "h.ns5", make_broadband(300, 4))
    data = bytearray((tmp_path / "h.ns5").read_bytes())
    data[310:314] = (7).to_bytes(4, "little")  # channel count no longer matches header size
    (tmp_path / "h.ns5").write_bytes(bytes(data))
    return tmp_path / "h.ns5"


def _not_blackrock(tmp_path):
    (tmp_path / "n.ns5").write_bytes(b"this is not a recording at all" * 20)
    return tmp_path / "n.ns5"


def _slow(tmp_path):
    write_nsx(tmp_path / "lfp.ns2", make_broadband(3000, 4), period=30)
    return tmp_path / "lfp.ns2"


@pytest.mark.parametrize("make, extra, error", [
    (lambda p: p / "missing.ns5", [], "Error: Blackrock file not found: {f}"),
    (_truncated, [], ("Error: {f} is truncated: data block 1 at byte 578 declares 3000 samples x 4 "
                     "channels (24000 bytes) but only 23900 bytes remain")),
    (_bad_header, [], ("Error: {f}: malformed NSx header: it declares 578 header bytes but 7 "
                      "channels need 776")),
    (_not_blackrock, [], ("Error: {f} is not a Blackrock NSx file (file id b'this is ', expected "
                         "NEURALCD, BRSMPGRP or NEURALSG)")),
    (_slow, [], ("Error: session lfp: broadband at 1000 Hz is too slow for the 500-5000 Hz spiking "
                "band; MUA needs >= 2 kHz broadband (Blackrock ns3-ns6); a 1 kHz signal that is "
                "already MUA imports with --input-kind mua")),
])
def test_bad_files_give_one_error_line(runner, tmp_path, make, extra, error):
    f = make(tmp_path)
    r = runner.invoke(cli, ["import", "blackrock", str(f), "--out", str(tmp_path / "ds"), *extra])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines()[-1] == error.format(f=f)
    assert "Traceback" not in r.output and not (tmp_path / "ds").exists()


def test_bad_side_files_and_options(runner, tmp_path):
    f = write_nsx(tmp_path / "r.ns5", make_broadband(3000, 4))
    ChannelMap.from_rows([{"id": i, "row": 0, "col": i, "x_um": 400.0 * i, "y_um": 0.0}
                          for i in range(1, 4)]).save(tmp_path / "three.csv")
    (tmp_path / "t.csv").write_text("time_s,electrode,current_ua\n0.05,9,10\n")
    (tmp_path / "late.csv").write_text("time_s,electrode,current_ua\n5.0,1,10\n")
    (tmp_path / "cols.csv").write_text("when,where\n1,2\n")
    write_nev(tmp_path / "old.nev", electrode_ids=[1, 2, 3, 4], flags=0)
    write_nev(tmp_path / "v23.nev", electrode_ids=[1, 2, 3, 4], spec="2.3")
    out = str(tmp_path / "ds")
    cases = [
        (["--map", str(tmp_path / "three.csv")], 1,
         (f"Error: --map {tmp_path / 'three.csv'} has 3 electrodes but the recording has 4 channels "
         "(ids 1..4); give a map with one row per recorded channel")),
        (["--trials", str(tmp_path / "t.csv")], 1,
         "Error: session r: stimulated electrode 9 (at 0.050 s) is not on the channel map (ids 1..4)"),
        (["--trials", str(tmp_path / "late.csv")], 1,
         (f"Error: {tmp_path / 'late.csv'}: a stimulation at 5.000 s lies outside every recorded "
         "segment (0.000..0.100 s); check that trial times use the recording's clock")),
        (["--trials", str(tmp_path / "cols.csv")], 1,
         (f"Error: {tmp_path / 'cols.csv'}: trials table needs a time column (time_s, or one of "
         "onset_s, start_time, time: seconds on the recording's clock); found when, where")),
        (["--nev", str(tmp_path / "none.nev")], 1, f"Error: NEV file not found: {tmp_path / 'none.nev'}"),
        (["--nev", str(tmp_path / "old.nev")], 1,
         (f"Error: {tmp_path / 'old.nev'}: its header does not set 'all spike waveforms are 16-bit' "
         "(flag bit 0), which Neo cannot read; import without it (--nev-events none) and give the "
         "trials with --trials CSV")),
        (["--nev", str(tmp_path / "v23.nev")], 1,
         (f"Error: {tmp_path / 'v23.nev'} is NEV spec 2.3 but {f} is NSx spec 3.0; they must come "
         "from the same recording")),
        (["--append", "--overwrite"], 2, "Error: --append and --overwrite exclude each other"),
    ]
    for extra, code, error in cases:
        r = runner.invoke(cli, ["import", "blackrock", str(f), "--out", out, *extra])
        assert r.exit_code == code, (extra, r.output)
        assert r.stderr.strip().splitlines()[-1] == error
        assert not (tmp_path / "ds").exists()
    r = runner.invoke(cli, ["import", "blackrock", str(f), "--out", out, "--nev",
                            str(tmp_path / "old.nev"), "--nev-events", "none"])
    assert r.exit_code == 0, r.output  # the unreadable .nev is skipped when asked
    r = runner.invoke(cli, ["import", "blackrock", str(f), "--out", out])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: {out} already exists: pass --append to add sessions to it or --overwrite to replace it")


def test_single_channel_broadband_is_refused(tmp_path):
    write_nsx(tmp_path / "one.ns5", make_broadband(3000, 1))
    with pytest.raises(RecordingError, match="common average of the channels, which leaves nothing"):
        import_blackrock(tmp_path / "one.ns5", out=tmp_path / "ds", log=quiet)
    assert not (tmp_path / "ds").exists()
