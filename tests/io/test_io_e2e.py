"""Done-when of the import issue: a Blackrock file and an NWB file in, pretrain `tiny`, probe.

The recordings carry virtual-cortex MUA (a 24-electrode 4 x 6 array, not the Utah map)
as the envelope of broadband noise, with a stimulation artifact after each onset, so
the imported MUA can be checked against the ground truth before training on it.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from click.testing import CliRunner
from io_signals import UV_PER_BIT
from nsx_writer import write_nev, write_nsx

from phosphene.cli import cli
from phosphene.cortex import VirtualCortex
from phosphene.dataset import Dataset
from phosphene.geometry import grid_map

RATE = 10_000.0  # an .ns4 file: 3 ticks of the 30 kHz clock per sample
UPSAMPLE = int(RATE / 1000)


def virtual_recording(cortex: VirtualCortex, kind: str, seconds: float, seed: int,
                      **stream_kw) -> tuple[np.ndarray, np.ndarray, list]:
    """(broadband int16 at 10 kHz, ground-truth MUA at 1 kHz, stimulation events)."""
    stream = cortex.stream(kind, session_index=seed, **stream_kw)
    mua, events = stream.read(int(seconds * 1000))
    rng = np.random.default_rng(seed)
    # white noise with the MUA as its envelope: band-pass + rectify + low-pass gives it back
    broadband = rng.standard_normal((mua.shape[0] * UPSAMPLE, mua.shape[1])) \
        * np.repeat(mua, UPSAMPLE, axis=0) * 4.0
    return np.round(broadband / UV_PER_BIT).astype(np.int16), mua, events


def corr_per_channel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-12)


@pytest.mark.slow
def test_blackrock_and_nwb_import_then_pretrain_and_probe(tmp_path):
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    from phosphene.train.checkpoint import load_teacher
    from phosphene.train.pretrain import pretrain
    from phosphene.train.probe import probe_task, teacher_encode_fn

    cmap = grid_map(4, 6, name="grid4x6")
    cmap.save(tmp_path / "array.csv")
    cortex = VirtualCortex(cmap, seed=3)
    runner = CliRunner()
    out = str(tmp_path / "data")

    # 1. Blackrock: a resting file, and a stimulation file whose .nev comments carry the trials
    rest_bb, rest_mua, _ = virtual_recording(cortex, "resting", 12.0, seed=0)
    write_nsx(tmp_path / "rest.ns4", rest_bb, period=3, electrode_ids=list(cmap.ids))
    stim_bb, _, events = virtual_recording(cortex, "psychometric", 40.0, seed=1,
                                           electrodes=(3, 10, 15, 22))
    events = [e for e in events if 1500 <= e.sample < 40_000 - 400]
    write_nsx(tmp_path / "stim.ns4", stim_bb, period=3, electrode_ids=list(cmap.ids))
    write_nev(tmp_path / "stim.nev", electrode_ids=list(cmap.ids), comments=[
        (e.sample / 1000, (f"stim electrode={e.electrode} current_ua={e.current_ua:g} "
                          f"perceived={e.perceived}")) for e in events])
    for args in (["rest.ns4", "--kind", "resting"], ["stim.ns4", "--append"]):
        r = runner.invoke(cli, ["import", "blackrock", str(tmp_path / args[0]), *args[1:], "--out",
                                out, "--map", str(tmp_path / "array.csv")])
        assert r.exit_code == 0, r.output

    # 2. NWB: a second resting day as an ElectricalSeries, geometry in the electrodes table
    nwb_bb, nwb_mua, _ = virtual_recording(cortex, "resting", 12.0, seed=2)
    nwbfile = NWBFile(session_description="resting", identifier="e2e",
                      session_start_time=dt.datetime(2024, 1, 3, tzinfo=dt.UTC))
    device = nwbfile.create_device(name="array")
    group = nwbfile.create_electrode_group(name="array", description="4x6", location="V1",
                                           device=device)
    for eid, x, y in zip(cmap.ids, cmap.x_um, cmap.y_um):
        nwbfile.add_electrode(id=eid, group=group, location="V1", rel_x=x, rel_y=y)
    region = nwbfile.create_electrode_table_region(region=list(range(24)), description="all")
    nwbfile.add_acquisition(ElectricalSeries(name="broadband", data=nwb_bb, electrodes=region,
                                             rate=RATE, conversion=UV_PER_BIT * 1e-6))
    with NWBHDF5IO(str(tmp_path / "rest2.nwb"), "w") as io:
        io.write(nwbfile)
    r = runner.invoke(cli, ["import", "nwb", str(tmp_path / "rest2.nwb"), "--out", out, "--append",
                            "--day", "1"])
    assert r.exit_code == 0, r.output

    ds = Dataset.open(out)
    assert [(s.session, s.kind, s.day) for s in ds.sessions] == [
        ("rest", "resting", 0), ("stim", "psychometric", 0), ("rest2", "resting", 1)]
    assert ds.n_channels == 24 and ds.channel_map.positions_um().tolist() == cmap.positions_um().tolist()
    assert len(ds.trials) == len(events) >= 20
    assert list(ds.trials.onset_sample) == [e.sample for e in events]
    # the imported MUA follows the ground truth (dead channels are flat in both: skip them)
    live = np.setdiff1d(np.arange(24), cortex.dead)
    for sid, truth in (("rest", rest_mua), ("rest2", nwb_mua)):
        got = np.asarray(ds.mua(sid))
        r_ch = corr_per_channel(got[200:, live], truth[200:, live])
        assert np.median(r_ch) > 0.8, (sid, r_ch)

    # 3. pretrain the tiny preset for a few steps on the imported resting data, then probe
    summary = pretrain(ds, "tiny", out_dir=tmp_path / "teacher", steps=4, device="cpu", threads=1)
    assert summary is not None
    model, meta = load_teacher(tmp_path / "teacher")
    assert meta["config"].n_channels == 24
    result = probe_task(ds, teacher_encode_fn(model), "psychometric", spec=meta["window_spec"],
                        norm_config=meta["normaliser"], feature_sets=("raw", "latent"))
    assert result["n_train"] > 0 and result["n_eval"] > 0
    assert set(result["features"]) == {"raw", "latent"}
    for name, scores in result["features"].items():
        assert 0.0 <= scores["balanced_accuracy"] <= 1.0, (name, scores)
