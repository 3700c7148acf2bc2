"""Bad input: every case gets a clear message naming the file, and nothing converted is lost.

Two kinds of outcome:
- a *gap* (the file's content is bad: truncated, not a TIFF, wrong bands/dtype/size/grid,
  unpaired S1/S2): the conversion records ``valid_*`` false, goes on, lists the problem,
  and ``info`` shows it;
- a *stop* (the archive's structure is wrong: names that do not parse, duplicate ids,
  patches on one cell, a patch off the grid, an empty root, a cube that is another
  dataset): nothing is written, and every such problem is listed in one error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from s2cube.errors import ArchiveError, NotACubeError
from s2cube_conversion import convert

P = 16


def _files(root: Path, mod: str = "S2", slot: int | None = None) -> list[Path]:
    pattern = f"ROIs*/*/{mod}/{'*' if slot is None else slot}/*.tif"
    return sorted(root.glob(pattern), key=lambda p: (int(p.parent.name), p.name))


def _rewrite(path: Path, **changes) -> None:
    """Rewrite a GeoTIFF with other bands / dtype / size / georeference."""
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    count = changes.pop("count", profile["count"])
    dtype = changes.pop("dtype", profile["dtype"])
    size = changes.pop("size", profile["width"])
    shift = changes.pop("shift", 0.0)
    crs = changes.pop("crs", profile["crs"])
    t = profile["transform"]
    profile.update(count=count, dtype=dtype, width=size, height=size, crs=crs,
                   transform=Affine(t.a, t.b, t.c + shift, t.d, t.e, t.f))
    out = np.resize(data, (count, size, size)).astype(dtype)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out)


@pytest.fixture
def run(tmp_path, dask_client):
    """Convert (without cloud detection, which these tests are not about) into tmp/cube.zarr."""

    def _run(root):
        return convert(root, tmp_path / "cube.zarr", clouds=False, client=dask_client)

    return _run


def _cell_valid(cube: Path, path: Path, mod: str) -> bool:
    ds = xr.open_zarr(cube)
    pid, slot = int(path.stem.split("_")[-1]), int(path.parent.name)
    r, c = np.argwhere(ds.patch_id.values[0] == pid)[0]
    return bool(ds[f"valid_{mod}"].values[0, slot, r, c])


@pytest.mark.parametrize("damage", ["truncated", "not_a_tiff", "bands", "dtype", "size",
                                    "crs", "shifted"])
def test_bad_file_content_is_a_recorded_gap(tiny_archive, tmp_path, damage, run):
    bad = _files(tiny_archive, slot=2)[1]  # not the file whose header places the patch
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:600])
    elif damage == "not_a_tiff":
        bad.write_text("this is not a GeoTIFF\n")
    elif damage == "bands":
        _rewrite(bad, count=12)
    elif damage == "dtype":
        _rewrite(bad, dtype="float32")
    elif damage == "size":
        _rewrite(bad, size=P + 4)
    elif damage == "crs":
        _rewrite(bad, crs="EPSG:32633")
    elif damage == "shifted":
        _rewrite(bad, shift=35.0)
    report = run(tiny_archive)
    rel = bad.relative_to(tiny_archive).as_posix()
    assert list(report.problems) == [rel], report.problems
    assert "replace" in report.problems[rel] or "re-download" in report.problems[rel]
    cube = tmp_path / "cube.zarr"
    assert xr.open_zarr(cube).attrs["s2cube_state"] == "complete"
    assert not _cell_valid(cube, bad, "s2")
    assert _cell_valid(cube, _files(tiny_archive, slot=2)[0], "s2")  # the rest is there
    assert [p["path"] for p in xr.open_zarr(cube).attrs["problems"]] == [rel]


def test_fixing_the_file_and_running_again_fills_the_gap(tiny_archive, tmp_path, run):
    bad = _files(tiny_archive, slot=1)[3]
    good = bad.read_bytes()
    bad.write_bytes(good[:500])
    assert run(tiny_archive).problems
    bad.write_bytes(good)
    again = run(tiny_archive)
    assert again.ok and again.converted == 1 and again.resumed == 3
    assert _cell_valid(tmp_path / "cube.zarr", bad, "s2")


def test_unpaired_s1_and_s2_are_gaps_with_a_message(tiny_archive, tmp_path, run):
    lone_s2 = _files(tiny_archive, "S2", 0)[0]
    s1_partner = next((lone_s2.parents[2] / "S1" / "0").glob(f"*_patch_{lone_s2.stem.split('_')[-1]}.tif"))
    s1_partner.unlink()
    lone_s1 = _files(tiny_archive, "S1", 1)[2]
    s2_partner = next((lone_s1.parents[2] / "S2" / "1").glob(f"*_patch_{lone_s1.stem.split('_')[-1]}.tif"))
    s2_partner.unlink()
    report = run(tiny_archive)
    assert "no S1 partner" in report.problems[lone_s2.relative_to(tiny_archive).as_posix()]
    assert "no S2 partner" in report.problems[lone_s1.relative_to(tiny_archive).as_posix()]
    assert _cell_valid(tmp_path / "cube.zarr", lone_s2, "s2")
    assert not _cell_valid(tmp_path / "cube.zarr", lone_s2, "s1")


def test_structural_problems_stop_before_writing_and_are_all_listed(tiny_archive, tmp_path, run):
    s2 = _files(tiny_archive, slot=0)
    # a name that does not parse
    (s2[0].parent / "s2_ROIs1868_73_ImgNo_0_patch_x.tif").write_bytes(s2[0].read_bytes())
    # a duplicate patch id (same slot and id, another date)
    dup = s2[1].with_name(s2[1].name.replace("_2018-", "_2019-"))
    shutil.copy(s2[1], dup)
    # a patch that covers the same ground as another one (another id, same georeference)
    pid = int(s2[2].stem.split("_")[-1])
    over = s2[2].with_name(s2[2].name.replace(f"_patch_{pid}", "_patch_999"))
    shutil.copy(s2[2], over)
    with pytest.raises(ArchiveError) as err:
        run(tiny_archive)
    text = str(err.value)
    assert "does not parse" in text and "s2_ROIs1868_73_ImgNo_0_patch_x.tif" in text
    assert "duplicate patch id" in text and dup.name in text
    assert "covers the same ground" in text and "patch_999" in text
    assert len(err.value.problems) == 3  # every problem of the archive, in one run
    assert not (tmp_path / "cube.zarr").exists()


def test_a_patch_off_the_grid_stops_with_its_name(tiny_archive, tmp_path, run):
    header_file = _files(tiny_archive, slot=0)[3]
    pid = header_file.stem.split("_")[-1]
    for f in tiny_archive.glob(f"ROIs*/*/S*/*/*_patch_{pid}.tif"):
        _rewrite(f, shift=5 * 10.0)  # half a patch: overlaps its neighbour
    with pytest.raises(ArchiveError, match="not on the ROI's") as err:
        run(tiny_archive)
    assert f"patch_{pid}.tif" in str(err.value)


def test_non_tif_files_are_skipped_with_a_notice(tiny_archive, tmp_path, run):
    (tiny_archive / ".DS_Store").write_bytes(b"\0\0")
    (tiny_archive / "ROIs1868" / "checksums.md5").write_text("abc  x.tif\n")
    report = run(tiny_archive)
    assert report.ok
    assert sorted(report.skipped_files) == [".DS_Store", "ROIs1868/checksums.md5"]


def test_unreadable_file_is_a_gap(tiny_archive, tmp_path, run):
    bad = _files(tiny_archive, slot=1)[0]
    bad.unlink()
    bad.symlink_to(tiny_archive / "does-not-exist.tif")  # a dangling link: listed, unreadable
    report = run(tiny_archive)
    rel = bad.relative_to(tiny_archive).as_posix()
    assert rel in report.problems and "read" in report.problems[rel]


@pytest.mark.parametrize("root_kind", ["empty", "wrong", "missing"])
def test_empty_or_wrong_root(tmp_path, tiny_archive, root_kind):
    root = {"empty": tmp_path / "empty", "wrong": tiny_archive / "ROIs1868" / "73" / "S2" / "0",
            "missing": tmp_path / "nope"}[root_kind]
    if root_kind == "empty":
        root.mkdir()
    with pytest.raises(ArchiveError, match="ROIs1158/") as err:
        convert(root, tmp_path / "cube.zarr", clouds=False)
    assert str(root) in str(err.value)
    assert not (tmp_path / "cube.zarr").exists()


def test_target_that_is_another_dataset_is_refused(tiny_archive, tmp_path):
    other = tmp_path / "other.zarr"
    xr.Dataset({"t": ("x", np.arange(3))}, attrs={"title": "ERA5"}).to_zarr(other, zarr_format=3)
    with pytest.raises(NotACubeError, match="another Zarr dataset"):
        convert(tiny_archive, other, clouds=False)
    assert xr.open_zarr(other).t.values.tolist() == [0, 1, 2]  # untouched
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("mine")
    with pytest.raises(NotACubeError, match="not an s2cube cube"):
        convert(tiny_archive, folder, clouds=False)
    assert (folder / "a.txt").read_text() == "mine"
