"""SEN12MS-CR archives: recognised by their layout, converted losslessly into a SEN12MS-CR
cube with per-patch georeference, masks and coverage of the cloudy images, bad input
reported like the time-series converter's, resumable and incremental; validate, info and
verify work on the cube."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube.errors import ArchiveError, NotACubeError
from s2cube.io.storage import parse_location
from s2cube_conversion import Selection, convert
from s2cube_conversion.clouds import BLANK_FLAGS, CloudDetector
from s2cube_conversion.cr_archive import detect_layout
from s2cube_conversion.cr_synth import synthesize_cr_archive

P = 16


@pytest.fixture
def tiny_cr(tmp_path) -> Path:
    """A fresh small archive to damage: two scenes of 2x2 patches of 16 px (9 overlapping)."""
    synthesize_cr_archive(tmp_path / "tiny_cr", scenes=("ROIs1868_summer_73", "ROIs1970_fall_65"),
                          grid=(2, 2), patch_size=P, seed=3, gaps=0, unpaired=0, blank=0)
    return tmp_path / "tiny_cr"


@pytest.fixture
def run(tmp_path, dask_client):
    def _run(root, **kw):
        return convert(root, tmp_path / "cube.zarr", client=dask_client, **kw)

    return _run


def _where(ds: xr.Dataset) -> dict[tuple[str, int], int]:
    names = [s.scene for s in cr.scenes_of(ds.attrs)]
    return {(names[s], int(p)): k for k, (s, p) in
            enumerate(zip(ds.scene.values.tolist(), ds.patch_id.values.tolist())) if s >= 0}


def _read(path: Path):
    with rasterio.open(path) as src:
        return src.read(), tuple(src.transform)[:6], src.crs.to_epsg()


# --- layout ----------------------------------------------------------------------------------

def test_the_layout_is_recognised_and_a_mixed_root_refused(cr_archive, tiny_archive, tmp_path):
    assert detect_layout(parse_location(cr_archive.root)) == cr.LAYOUT_CR
    assert detect_layout(parse_location(tiny_archive)) == cr.LAYOUT_TS
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_archive, mixed)
    shutil.copytree(cr_archive.root / "ROIs1868_summer_s1", mixed / "ROIs1868_summer_s1")
    with pytest.raises(ArchiveError, match="mixes the two layouts") as err:
        convert(mixed, tmp_path / "cube.zarr", clouds=False)
    assert "ROIs1868_summer_s1" in str(err.value) and "ROIs1868" in str(err.value)
    assert not (tmp_path / "cube.zarr").exists()


def test_plain_xarray_opens_the_cube_as_the_contract_says(cr_cube):
    code = textwrap.dedent("""
        import json, sys
        import xarray as xr
        ds = xr.open_zarr(sys.argv[1])
        assert "s2cube" not in sys.modules
        print(json.dumps({"dims": dict(ds.sizes), "attrs": sorted(ds.attrs),
                          "vars": {k: [str(v.dtype), list(v.dims)] for k, v in ds.data_vars.items()},
                          "chunks": list(ds.s2.encoding["chunks"]),
                          "shards": list(ds.s2.encoding["shards"]), "kind": ds.attrs["cube_kind"]}))
    """)
    info = json.loads(subprocess.run([sys.executable, "-c", code, str(cr_cube)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["kind"] == "sen12ms-cr"
    for name, spec in cr.VARIABLES.items():
        assert info["vars"][name] == [spec.dtype, list(spec.dims)], name
    assert info["dims"]["patch"] == 4 * cr.PATCHES_PER_SHARD  # 4 scenes, one shard each
    assert info["chunks"] == [1, 13, 32, 32] and info["shards"] == [cr.PATCHES_PER_SHARD, 13, 32, 32]
    assert {"title", "cube_kind", "scenes", "patch_size", "patches_per_shard", "source",
            "cloud_detection", "problems", "s2cube_state"} <= set(info["attrs"])


# --- the contents ------------------------------------------------------------------------------

def test_every_file_is_in_the_cube_bit_for_bit_with_its_own_georeference(cr_archive, cr_cube):
    ds = xr.open_zarr(cr_cube)
    where = _where(ds)
    table = {s.scene: s for s in cr.scenes_of(ds.attrs)}
    assert list(table) == [s.name for s in cr_archive.scenes]  # sample order
    for scene in cr_archive.scenes:
        s = table[scene.name]
        assert s.epsg == scene.epsg and s.n_patches == len(scene.patches)
        pids = [p for (name, p) in where if name == scene.name]
        assert pids == sorted(scene.pids)  # natural order, gaps kept
        for pid in scene.pids:
            k = where[(scene.name, pid)]
            assert s.start <= k < s.start + s.n_patches
            for mod in cr.MODALITIES:
                path = cr_archive.root / cr.relpath(scene.name, mod, pid)
                if not path.exists():
                    assert not bool(ds[f"valid_{mod}"][k])
                    continue
                data, transform, epsg = _read(path)
                assert bool(ds[f"valid_{mod}"][k]) and epsg == scene.epsg
                np.testing.assert_array_equal(ds[mod][k].values, data)
                np.testing.assert_array_equal(ds.transform[k].values, transform)
    pad = ds.scene.values < 0
    assert pad.sum() == sum(s.capacity - s.n_patches for s in table.values())
    assert not ds.valid_s2.values[pad].any() and (ds.patch_id.values[pad] == -1).all()
    assert ds.s1.dtype == np.float32  # SEN12MS-CR's S1 is float32: stored as it is


def test_masks_and_coverage_are_those_of_the_cloudy_image(cr_archive, cr_cube):
    ds = xr.open_zarr(cr_cube)
    where = _where(ds)
    keys = sorted(k for k in where if (cr_archive.root / cr.relpath(k[0], "s2_cloudy", k[1])).exists())
    dn = np.stack([_read(cr_archive.root / cr.relpath(s, "s2_cloudy", p))[0] for s, p in keys])
    want = CloudDetector("fast")(dn)
    k = [where[key] for key in keys]
    np.testing.assert_array_equal(ds.cloud_prob.values[k], want.prob)
    np.testing.assert_array_equal(ds.cloud_mask.values[k], want.flags)
    np.testing.assert_array_equal(ds.coverage.values[k], want.coverage)
    blank = [where[b] for b in cr_archive.blank]
    assert ds.blank.values[blank].all() and ds.blank.values.sum() >= 1
    assert (ds.coverage.values[blank] == 1).all() and (ds.cloud_mask.values[blank] == BLANK_FLAGS).all()
    assert 0.05 < np.nanmean(ds.coverage.values[:, 0]) < 0.95  # clouds and clear ground
    unpaired = cr_archive.unpaired[0]
    scene, pid = "ROIs1868_summer_7", int(unpaired.rsplit("_p", 1)[1][:-4])
    assert np.isnan(ds.coverage.values[where[(scene, pid)]]).all()


def test_an_unpaired_patch_is_a_recorded_gap(cr_archive, cr_cube):
    ds = xr.open_zarr(cr_cube)
    lone = cr_archive.unpaired[0].replace("s2_cloudy", "s1")
    (problem,) = ds.attrs["problems"]
    assert problem["path"] == lone and "unpaired" in problem["message"]
    assert cr_archive.unpaired[0] in problem["message"] and "silently drops" in problem["message"]
    k = _where(ds)[("ROIs1868_summer_7", int(lone.rsplit("_p", 1)[1][:-4]))]
    assert bool(ds.valid_s2[k]) and bool(ds.valid_s1[k]) and not bool(ds.valid_s2_cloudy[k])


@pytest.mark.parametrize("damage", ["truncated", "bands", "size", "dtype", "crs", "shifted"])
def test_bad_file_content_is_a_gap_and_fixing_it_fills_it(tiny_cr, tmp_path, run, damage):
    from test_bad_input import _rewrite

    bad = sorted((tiny_cr / "ROIs1868_summer_s2_cloudy" / "s2_cloudy_73").glob("*.tif"))[3]
    good = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(good[:600])
    elif damage == "bands":
        _rewrite(bad, count=12)
    elif damage == "size":
        _rewrite(bad, size=P + 4)
    elif damage == "dtype":
        _rewrite(bad, dtype="float32")
    elif damage == "crs":
        _rewrite(bad, crs="EPSG:32633")
    else:
        _rewrite(bad, shift=35.0)  # not the ground of the patch's other files
    report = run(tiny_cr)
    rel = bad.relative_to(tiny_cr).as_posix()
    assert list(report.problems) == [rel], report.problems
    assert "replace" in report.problems[rel] or "re-download" in report.problems[rel]
    ds = xr.open_zarr(tmp_path / "cube.zarr")
    assert ds.attrs["s2cube_state"] == "complete"
    k = _where(ds)[("ROIs1868_summer_73", int(bad.stem.rsplit("_p", 1)[1]))]
    assert not bool(ds.valid_s2_cloudy[k]) and bool(ds.valid_s2[k])
    assert int(ds.valid_s2_cloudy.sum()) == 17  # 2 x 9 patches, one gap
    bad.write_bytes(good)
    again = run(tiny_cr)
    assert again.ok and again.converted == 9 and again.resumed == 9  # that block only
    assert bool(xr.open_zarr(tmp_path / "cube.zarr").valid_s2_cloudy[k])


def test_structural_problems_stop_before_writing_and_are_all_listed(tiny_cr, tmp_path, run):
    s2 = sorted((tiny_cr / "ROIs1868_summer_s2" / "s2_73").glob("*.tif"))
    (s2[0].parent / "ROIs1868_summer_s2_73_px.tif").write_bytes(s2[0].read_bytes())  # no parse
    wrong = tiny_cr / "ROIs1868_summer_s2" / "s2_74"
    wrong.mkdir()
    shutil.copy(s2[1], wrong / s2[1].name)  # in the folder of another scene
    season = tiny_cr / "ROIs1868_fall_s2" / "s2_73"
    season.mkdir(parents=True)
    shutil.copy(s2[2], season / s2[2].name.replace("summer", "fall"))  # 1868 is summer
    with pytest.raises(ArchiveError) as err:
        run(tiny_cr)
    text = str(err.value)
    assert "does not parse" in text and "not in the folder its name implies" in text
    assert "the summer collection" in text and len(err.value.problems) == 3
    assert not [p for p in (tmp_path / "cube.zarr").rglob("*") if p.is_file()]  # nothing written


def test_the_two_kinds_never_share_a_cube(tiny_cr, tiny_archive, tmp_path):
    ts_cube, cr_cube_ = tmp_path / "ts.zarr", tmp_path / "cr.zarr"
    convert(tiny_archive, ts_cube, clouds=False, n_workers=1)
    with pytest.raises(NotACubeError, match="is a SEN12MS-CR-TS cube"):
        convert(tiny_cr, ts_cube, clouds=False)
    convert(tiny_cr, cr_cube_, clouds=False, n_workers=1)
    with pytest.raises(NotACubeError, match="another Zarr dataset"):
        convert(tiny_archive, cr_cube_, clouds=False)


def test_selections_grow_the_same_cube(tiny_cr, tmp_path, dask_client):
    cube = tmp_path / "grown.zarr"
    first = convert(tiny_cr, cube, client=dask_client, clouds=False,
                    selection=Selection(rois=("ROIs1970_fall_65",)))
    assert first.patches == 9
    with pytest.raises(ArchiveError, match="no regions"):
        convert(tiny_cr, cube, clouds=False, selection=Selection(region="europa"))
    second = convert(tiny_cr, cube, client=dask_client, clouds=False)
    assert second.converted == 9 and second.resumed == 9
    one = tmp_path / "one.zarr"
    convert(tiny_cr, one, client=dask_client, clouds=False)
    a, b = xr.open_zarr(cube), xr.open_zarr(one)
    assert [s["scene"] for s in a.attrs["scenes"]] == ["ROIs1970_fall_65", "ROIs1868_summer_73"]
    wa, wb = _where(a), _where(b)
    assert set(wa) == set(wb)
    for key in wa:
        for var in ("s2", "s2_cloudy", "s1", "transform", "valid_s1"):
            np.testing.assert_array_equal(a[var][wa[key]].values, b[var][wb[key]].values)


def _records(cube: Path) -> int:
    return len(list((cube / "_s2cube_journal" / "blocks").glob("*/*.json")))


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_cube(cr_archive, cr_cube, tmp_path, dask_client):
    cube = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "s2cube.cli", "convert", str(cr_archive.root), str(cube),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _records(cube) < 1:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((cube / "zarr.json").read_text())["attributes"]["s2cube_state"]
    assert state == "writing" or _records(cube) == 4
    report = convert(cr_archive.root, cube, client=dask_client)
    assert report.resumed >= 1 or state == "complete"
    a, b = xr.open_zarr(cr_cube), xr.open_zarr(cube)
    for name in a.variables:
        assert a[name].equals(b[name]), name
    volatile = {"created", "updated"}
    assert {k: v for k, v in a.attrs.items() if k not in volatile} == \
        {k: v for k, v in b.attrs.items() if k not in volatile}


# --- validate, info, verify --------------------------------------------------------------------

def test_validate_info_and_verify_work_on_the_cube(cr_archive, cr_cube, tmp_path):
    from s2cube.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["validate", str(cr_archive.root), str(cr_cube)])
    assert out.exit_code == 0, out.output
    assert f"{len(cr_archive.files)} files checked, 0 difference(s)" in out.output
    out = runner.invoke(main, ["info", str(cr_cube)])
    assert out.exit_code == 0, out.output
    assert "scenes=4" in out.output and "samples" in out.output and "1 problem(s)" in out.output
    assert out.output.count("ROIs1868") >= 2
    out = runner.invoke(main, ["verify", str(cr_cube), "--no-progress"])
    assert out.exit_code == 0 and ", 0 bad" in out.output, out.output
    # a changed file is a difference; a damaged chunk is found and names its scene and patch
    archive = tmp_path / "archive"
    shutil.copytree(cr_archive.root, archive)
    changed = archive / cr.relpath("ROIs2017_winter_8", "s2", cr_archive.scene("ROIs2017_winter_8").pids[4])
    with rasterio.open(changed, "r+") as dst:
        data = dst.read()
        data[0, 0, 0] += 1
        dst.write(data)
    out = runner.invoke(main, ["validate", str(archive), str(cr_cube)])
    assert out.exit_code == 1 and "1 pixel value(s) differ" in out.output
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(cr_cube, damaged)
    shard = damaged / "s2" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0xFF
    shard.write_bytes(raw)
    out = runner.invoke(main, ["verify", str(damaged), "--no-progress"])
    assert out.exit_code == 1 and "ROIs1868_summer_73 p" in out.output, out.output
    report = convert(cr_archive.root, damaged, n_workers=1, verify=True)
    assert report.converted == len(cr_archive.scene("ROIs1868_summer_73").patches)
    assert runner.invoke(main, ["verify", str(damaged), "--no-progress"]).exit_code == 0


def test_schema_table_and_split_tables_are_the_references():
    assert {k: len(v) for k, v in cr.SPLIT_SCENES.items()} == {"test": 10, "val": 10, "train": 155}
    assert len(schema.ROIS) == 53
