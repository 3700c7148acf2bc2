"""The georeferenced join of SEN12MS-CR-TS and SEN12MS-CR patches, on scenes both synthetic
archives share (the time series' ROIs1868_73 and ROIs2017_8 are scenes 73 and 8 of SEN12MS-CR)."""

from __future__ import annotations

import numpy as np
import pytest

import s2cube
from s2cube import sen12mscr as cr
from s2cube.analysis.pairing import pair_patches
from s2cube.errors import SelectionError


@pytest.fixture(scope="module")
def cubes(small_cube, cr_cube):
    return s2cube.open_cube(small_cube), s2cube.open_cube(cr_cube)


@pytest.fixture(scope="module")
def pairs(cubes):
    ts, mono = cubes
    return ts.s2cube.pair(mono)


def test_every_time_series_patch_finds_the_patches_on_its_ground(pairs, cubes, cr_archive):
    ts, _ = cubes
    table = ts.s2cube.patch_table()
    assert set(pairs["pdx"]) == set(table.index)  # every patch of both shared ROIs
    assert pairs["same_scene"].all() and set(pairs["scene"]) == {"ROIs1868_summer_73",
                                                                 "ROIs2017_winter_8"}
    assert sorted(pairs["overlap"].unique().tolist()) == [0.25, 0.5, 1.0]  # half-patch stride
    assert (pairs["overlap"] == pairs["cr_overlap"]).all()  # same patch size
    full = pairs[pairs["overlap"] == 1.0]
    assert (full[["x_offset", "y_offset"]] == 0).all().all() and (full["iou"] == 1).all()
    gaps = set(cr_archive.gaps)
    for pdx, r in table.iterrows():  # a full partner unless the SEN12MS-CR gap took it
        got = full[full["pdx"] == pdx]
        assert len(got) <= 1
        if len(got) == 0:
            scene = cr.scene_of_roi(r["roi"])
            assert any(s == scene for s, _ in gaps)
    assert (pairs["epsg"] == [int(ts.epsg.sel(roi=r)) for r in pairs["roi"]]).all()


def test_pairs_cover_the_same_ground_in_the_pixels(pairs, cubes, cr_archive):
    """The shared scenes' land comes from the same generator: the full-overlap partner's
    cloud-free image is the time-series patch's clear slot, except where clouds, haze,
    glare or blank cells fall."""
    ts, mono = cubes
    full = pairs[(pairs["overlap"] == 1.0) & (pairs["roi"] == "ROIs2017_8")]
    scene = cr_archive.scene("ROIs2017_winter_8")
    agree = []
    for r in full.itertuples():
        a = ts.s2.sel(roi=r.roi, time=scene.clear_slot).isel(
            y=slice(r.row * 32, (r.row + 1) * 32), x=slice(r.col * 32, (r.col + 1) * 32)).values
        b = mono.s2.sel(patch=r.cr_patch).values
        agree.append(np.mean(a == b))
    assert np.median(agree) > 0.9


def test_the_join_is_symmetric_and_works_on_selections(pairs, cubes):
    ts, mono = cubes
    assert mono.s2cube.pair(ts).equals(pairs)
    assert pair_patches(ts.encoding["source"], mono.encoding["source"]).equals(pairs)
    test = ts.s2cube.sel_split("test")
    sub = test.s2cube.pair(mono)
    assert set(sub["roi"]) == {"ROIs1868_73"} and len(sub) == (pairs["roi"] == "ROIs1868_73").sum()
    strict = ts.s2cube.pair(mono, min_overlap=0.5)
    assert (strict["overlap"] > 0.5).all() and len(strict) == (pairs["overlap"] > 0.5).sum()
    only_8 = ts.s2cube.pair(mono.s2cube.sel_split("train"))  # scene 73 is a test scene
    assert set(only_8["scene"]) == {"ROIs2017_winter_8"}


def test_other_crs_or_ground_pairs_with_nothing(cubes):
    ts, mono = cubes
    far = mono.s2cube.sel_split("train").isel(patch=slice(0, 24))  # scene 7: ground of its own
    assert len(ts.s2cube.pair(far)) == 0
    moved = mono.copy()
    moved["transform"] = moved["transform"] + np.array([0, 0, 1e5, 0, 0, 0])  # 100 km east
    assert len(ts.s2cube.pair(moved)) == 0
    with pytest.raises(SelectionError, match="SEN12MS-CR-TS Dataset and a SEN12MS-CR one"):
        pair_patches(ts, ts)
