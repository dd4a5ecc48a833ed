from __future__ import annotations

import json

import numpy as np
import pytest

from phosphene.geometry import ChannelMap, grid_map, map_for_channels, utah_96


def test_utah_map_has_96_electrodes_and_no_corners():
    m = utah_96()
    assert m.n_channels == 96 and m.ids == tuple(range(1, 97))
    cells = set(zip(m.rows, m.cols))
    assert not cells & {(0, 0), (0, 9), (9, 0), (9, 9)}
    assert len(cells) == 96
    d = m.distances_um()
    assert d.shape == (96, 96)
    assert np.isclose(np.sort(d[0])[1], 400.0)  # nearest neighbour at the 400 um pitch


def test_map_round_trips_through_csv_and_json(tmp_path):
    m = grid_map(3, 4)
    m.save(tmp_path / "m.csv")
    m.save(tmp_path / "m.json")
    for f in ("m.csv", "m.json"):
        back = ChannelMap.load(tmp_path / f)
        assert back.ids == m.ids and back.x_um == m.x_um and back.rows == m.rows


def test_blackrock_cmp_is_parsed(tmp_path):
    cmp = tmp_path / "array.cmp"
    cmp.write_text("Cerebus mapping\n// col row bank elec label\n"
                   "0 1 A 1 elec7\n1 1 A 2 elec3\n2 0 B 5 chan40\n")
    m = ChannelMap.load(cmp)
    assert m.ids == (7, 3, 40)
    assert m.x_um == (0.0, 400.0, 800.0)


@pytest.mark.parametrize("content, message", [
    ("id,row,col,x_um\n1,0,0,0\n", "missing column"),
    ("id,row,col,x_um,y_um\n1,0,0,0,0\n1,0,1,400,0\n", "duplicate"),
    ("id,row,col,x_um,y_um\n1,0,0,abc,0\n", "not a number"),
    ("id,row,col,x_um,y_um\n", "no electrodes"),
])
def test_bad_maps_are_rejected_with_the_reason(tmp_path, content, message):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        ChannelMap.load(f)


def test_json_map_must_have_electrodes(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="electrodes"):
        ChannelMap.load(f)


def test_other_channel_counts_get_a_grid():
    assert map_for_channels(96).name == "utah96"
    m = map_for_channels(256)
    assert m.n_channels == 256 and len(set(zip(m.rows, m.cols))) == 256
    with pytest.raises(ValueError):
        map_for_channels(0)
    with pytest.raises(ValueError, match="not on the channel map"):
        utah_96().index_of(97)
