"""The converter end to end: the cube it writes is the cube of cube.md, lossless and complete."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

from s2cube import schema
from s2cube_conversion import Selection, convert
from s2cube_conversion.validate import validate

PLAIN_OPEN = textwrap.dedent("""
    import json, sys
    import xarray as xr
    ds = xr.open_zarr(sys.argv[1])
    assert "s2cube" not in sys.modules, "plain xarray must not need s2cube"
    print(json.dumps({
        "dims": dict(ds.sizes),
        "vars": {k: [str(v.dtype), list(v.dims)] for k, v in ds.data_vars.items()},
        "coords": sorted(ds.coords),
        "attrs": sorted(ds.attrs),
        "state": ds.attrs["s2cube_state"],
        "s2_chunks": list(ds.s2.encoding["chunks"]),
        "s2_shards": list(ds.s2.encoding["shards"]),
    }))
""")


def test_plain_xarray_opens_the_cube_as_cube_md_says(small_cube):
    out = subprocess.run([sys.executable, "-c", PLAIN_OPEN, str(small_cube)], check=True,
                         capture_output=True, text=True)
    info = json.loads(out.stdout)
    assert info["state"] == "complete"
    for name, spec in schema.VARIABLES.items():
        dtype = "datetime64[ns]" if spec.dtype.startswith("datetime") else spec.dtype
        assert info["vars"][name] == [dtype, list(spec.dims)], name
    assert info["dims"]["time"] == 30 and info["dims"]["band"] == 13
    assert info["dims"]["roi"] == 2 and info["dims"]["y"] == 3 * 32
    assert {"collection", "roi_id", "split", "region", "epsg", "transform", "n_rows", "n_cols",
            "wavelength"} <= set(info["coords"])
    assert {"title", "references", "s2cube_version", "schema_version", "created", "source",
            "cloud_detection", "conversion"} <= set(info["attrs"])
    assert info["s2_chunks"] == [1, 1, 13, 32, 32]
    assert info["s2_shards"] == [1, 30, 13, 32, 32]


def test_validate_finds_zero_differences(synthetic_archive, small_cube):
    report = validate(synthetic_archive, small_cube)
    assert report.files == 2 * 9 * 30 * 2
    assert report.ok, report.differences[:5]


def test_validate_reports_a_changed_pixel(synthetic_archive, small_cube, tmp_path):
    import shutil

    cube = tmp_path / "changed.zarr"
    shutil.copytree(small_cube, cube)
    import zarr

    arr = zarr.open_array(str(cube / "s2"), mode="r+")
    block = arr[0, 5, :, :32, :32]
    block[3, 7, 7] ^= 1
    arr[0, 5, :, :32, :32] = block
    report = validate(synthetic_archive, cube)
    assert len(report.differences) == 1
    assert "ImgNo_5_" in report.differences[0].path and "1 pixel" in report.differences[0].message


def test_attrs_hold_no_local_path(small_cube):
    meta = (small_cube / "zarr.json").read_text()
    assert str(small_cube.parent) not in meta and "/tmp" not in meta


def test_roi_coordinates_and_grid(small_cube):
    ds = xr.open_zarr(small_cube)
    assert list(ds.roi.values) == ["ROIs1868_73", "ROIs2017_8"]
    assert list(ds.split.values) == ["test", "train"] and list(ds.region.values) == [
        "asiaEast", "africa"]
    epsg = ds.epsg.values
    assert 32601 <= epsg[0] <= 32660 and 32701 <= epsg[1] <= 32760  # north, south
    assert (ds.n_rows.values == 3).all() and (ds.n_cols.values == 3).all()
    assert (ds.patch_id.values >= 0).all()
    assert ds.transform.values[0, 0] == 10.0 and ds.transform.values[0, 4] == -10.0


def test_coverage_agrees_with_the_stored_masks(small_cube):
    ds = xr.open_zarr(small_cube).isel(roi=0)
    mask = (ds.cloud_mask.values & schema.FLAG_S2CLOUDLESS) > 0  # (time, y, x)
    blocks = mask.reshape(30, 3, 32, 3, 32).mean(axis=(2, 4))  # (time, row, col)
    cov = ds.coverage.sel(detector="s2cloudless_mask").values
    blank = ds.blank.values
    assert np.allclose(cov[~blank], blocks[~blank], atol=1e-6)
    assert (cov[blank] == 1).all()
    assert 0.2 < np.mean(cov > 0.05) < 0.95, "the synthetic archive should be partly cloudy"
    assert (cov < 1e-3).any(), "some frames are clear"


def test_dates_come_from_file_names(synthetic_archive, small_cube):
    ds = xr.open_zarr(small_cube)
    one = next((synthetic_archive / "ROIs1868" / "73" / "S2" / "4").glob("*.tif"))
    pid = int(one.stem.split("_")[-1])
    r, c = np.argwhere(ds.patch_id.values[0] == pid)[0]
    assert str(ds.s2_date.values[0, 4, r, c])[:10] == one.name.split("_")[5]
    assert (ds.s1_date.values != ds.s2_date.values).any()


@pytest.mark.slow
def test_incremental_conversion_equals_one_run(synthetic_archive, small_cube, tmp_path, dask_client):
    cube = tmp_path / "inc.zarr"
    first = convert(synthetic_archive, cube, selection=Selection(region="africa"), client=dask_client)
    assert first.patches == 9
    mid = xr.open_zarr(cube)
    assert list(mid.roi.values) == ["ROIs2017_8"]
    second = convert(synthetic_archive, cube, client=dask_client)
    assert (second.converted, second.resumed) == (9, 9)
    attrs = xr.open_zarr(cube).attrs
    assert attrs["created"] == mid.attrs["created"] and attrs["updated"] >= attrs["created"]
    a = xr.open_zarr(small_cube)
    b = xr.open_zarr(cube).sel(roi=a.roi.values)
    for name in a.variables:
        assert a[name].equals(b[name]), name


def test_no_s1_then_s1(synthetic_archive, tmp_path, dask_client):
    cube = tmp_path / "nos1.zarr"
    convert(synthetic_archive, cube, selection=Selection(rois=("ROIs2017_8",)), s1=False,
            client=dask_client)
    ds = xr.open_zarr(cube)
    assert not ds.valid_s1.values.any() and ds.valid_s2.values.all()
    report = convert(synthetic_archive, cube, selection=Selection(rois=("ROIs2017_8",)),
                     client=dask_client)
    assert report.converted == 9  # S1 added to the patches that lacked it
    assert xr.open_zarr(cube).valid_s1.values.all()


def test_s1_that_float32_cannot_hold_is_kept_as_float64(tiny_archive, tmp_path, dask_client):
    import rasterio

    for f in sorted(tiny_archive.glob("ROIs*/*/S1/*/*.tif")):
        with rasterio.open(f, "r+") as dst:
            dst.write(dst.read() + 1e-9)  # not representable in float32
    cube = tmp_path / "f64.zarr"
    assert convert(tiny_archive, cube, clouds=False, client=dask_client).ok
    assert xr.open_zarr(cube).s1.dtype == np.float64
    assert validate(tiny_archive, cube).ok
