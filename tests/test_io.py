"""open_cube and engine="s2cube": one request to open, lazy variables, the same values as
plain zarr, clear refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
from laziness import raise_if_dask_computes

import s2cube
from s2cube import schema
from s2cube.io import reader

pytestmark = pytest.mark.usefixtures("local_threads")


def test_opening_reads_only_the_root_metadata(small_cube):
    with reader.counting() as stats, raise_if_dask_computes():
        ds = s2cube.open_cube(small_cube)
    assert stats.requests == 1 and list(stats.by_array) == ["zarr.json"]
    assert all(v.chunks is not None for v in ds.data_vars.values())  # every variable lazy
    assert all(ds[c].chunks is None for c in ds.coords)  # coordinates are in memory
    assert ds.attrs[schema.ATTR_STATE] == "complete"


def test_xarray_opens_the_cube_with_the_registered_engine(small_cube):
    assert "s2cube" in xr.backends.list_engines()
    ds = xr.open_dataset(small_cube, engine="s2cube")
    ref = s2cube.open_cube(small_cube)
    assert ds.s2.chunks is None  # no dask unless asked: lazily indexed
    np.testing.assert_array_equal(ds.s2.isel(roi=0, time=2).values,
                                  ref.s2.isel(roi=0, time=2).values)
    chunked = xr.open_dataset(small_cube, engine="s2cube", chunks={})
    assert chunked.s2.data.chunksize == ref.s2.data.chunksize


def test_chunks_are_one_series_per_patch_or_one_frame(small_cube):
    ds = s2cube.open_cube(small_cube)
    p = ds.attrs["patch_size"]
    assert ds.s2.data.chunksize == (1, 30, 13, p, p)
    assert ds.cloud_mask.data.chunksize == (1, 30, p, p)
    assert ds.coverage.data.numblocks == (1,) * ds.coverage.ndim  # small variables: one chunk
    frame = s2cube.open_cube(small_cube, chunks="frame")
    assert frame.s2.data.chunksize == (1, 1, 13, p, p)
    lazy = s2cube.open_cube(small_cube, chunks=None)
    assert lazy.s2.chunks is None


@pytest.mark.parametrize("chunks", ["series", "frame", None])
def test_values_and_coordinates_equal_plain_xarray(small_cube, chunks):
    ds = s2cube.open_cube(f"file://{small_cube}", chunks=chunks)
    plain = xr.open_zarr(small_cube)
    assert list(ds.roi.values) == [str(r) for r in plain.roi.values]
    for name in ("split", "region", "collection", "roi_id", "epsg", "n_rows", "n_cols"):
        assert [str(v) for v in ds[name].values] == [str(v) for v in plain[name].values], name
    np.testing.assert_array_equal(ds.transform.values, plain.transform.values)
    np.testing.assert_array_equal(ds.wavelength.values, plain.wavelength.values)
    for name in ("coverage", "valid_s2", "valid_s1", "blank", "patch_id", "s2_date", "s1_date"):
        np.testing.assert_array_equal(ds[name].values, plain[name].values, err_msg=name)
    assert ds.s2_date.dtype == np.dtype("datetime64[ns]")
    for sel in (dict(roi=1, time=4, y=slice(0, 40), x=slice(20, 70)),
                dict(roi=[1, 0], time=[7, 2, 29], band=[3, 2, 1], y=slice(5, 60, 3)),
                dict(time=slice(28, 30), x=[70, 3, 33])):
        for name in ("s2", "s1", "cloud_mask", "cloud_prob"):
            sub = {k: v for k, v in sel.items() if k in ds[name].dims}
            np.testing.assert_array_equal(ds[name].isel(sub).values, plain[name].isel(sub).values,
                                          err_msg=f"{name} {sel}")
    assert ds.s2.dtype == np.uint16 and ds.cloud_mask.dtype == np.uint8


def test_plain_xarray_still_opens_the_cube(small_cube):
    ds = xr.open_zarr(small_cube)
    assert ds.s2.dtype == np.uint16 and ds.sizes["band"] == 13


def _edit_root(cube, edit) -> None:
    meta_path = cube / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_not_a_cube_is_refused_with_the_reason(tmp_path, small_cube):
    with pytest.raises(s2cube.NotACubeError, match="holds no Zarr v3 group"):
        s2cube.open_cube(tmp_path / "nothing-here")
    other = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}, attrs={"title": "my data"}).to_zarr(
        other, zarr_format=3, consolidated=True)
    with pytest.raises(s2cube.NotACubeError, match=r"not an s2cube cube.*my data"):
        s2cube.open_cube(other)
    nogrids = tmp_path / "nogrids.zarr"
    shutil.copytree(small_cube, nogrids)
    _edit_root(nogrids, lambda m: m["attributes"].pop("grids"))
    with pytest.raises(s2cube.NotACubeError, match="ROI grids"):
        s2cube.open_cube(nogrids)


@pytest.mark.parametrize("drop_consolidated", [True, False])
def test_incomplete_cube_is_refused_unless_asked(small_cube, tmp_path, drop_consolidated):
    cube = tmp_path / "half.zarr"
    shutil.copytree(small_cube, cube)

    def writing(meta):
        meta["attributes"][schema.ATTR_STATE] = "writing"
        if drop_consolidated:
            meta.pop("consolidated_metadata", None)

    _edit_root(cube, writing)
    with pytest.raises(s2cube.IncompleteCubeError, match="allow_incomplete=True"):
        s2cube.open_cube(cube)
    ds = s2cube.open_cube(cube, allow_incomplete=True)
    assert ds.attrs[schema.ATTR_STATE] == "writing" and ds.s2.chunks is not None
    np.testing.assert_array_equal(ds.coverage.values, s2cube.open_cube(small_cube).coverage.values)


@pytest.mark.parametrize("version, match", [
    (1, r"schema version 1.*per-chunk checksums.*s2cube convert"),
    (schema.SCHEMA_VERSION + 1, "schema version"),
])
def test_other_schema_versions_are_refused_saying_what_to_do(small_cube, tmp_path, version, match):
    cube = tmp_path / "other-version.zarr"
    shutil.copytree(small_cube, cube)
    _edit_root(cube, lambda m: m["attributes"].update(schema_version=version))
    with pytest.raises(s2cube.NotACubeError, match=match):
        s2cube.open_cube(cube)


def test_bad_chunks_argument_names_the_choices(small_cube):
    with pytest.raises(ValueError, match="'series', 'frame'"):
        s2cube.open_cube(small_cube, chunks="big")


@pytest.mark.s3
def test_open_from_s3_reads_one_object_and_the_same_values(small_cube, tmp_path):
    from servers import SeaweedServer, find_weed

    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with SeaweedServer(tmp_path / "weed") as server:
        server.create_bucket("cubes")
        server.upload_folder(small_cube, "cubes", "small.zarr")
        options = server.storage_options()
        url = "s3://cubes/small.zarr"
        with reader.counting() as stats:
            ds = s2cube.open_cube(url, storage_options=options)
        assert stats.requests == 1
        local = s2cube.open_cube(small_cube)
        np.testing.assert_array_equal(ds.s2.isel(roi=0, time=3).values,
                                      local.s2.isel(roi=0, time=3).values)
        np.testing.assert_array_equal(ds.coverage.values, local.coverage.values)
        one = ["ROIs2017_8"]
        np.testing.assert_array_equal(ds.s2cube.sel_roi(one).s2cube.composite().values,
                                      local.s2cube.sel_roi(one).s2cube.composite().values)
        with pytest.raises(s2cube.NotACubeError):
            s2cube.open_cube("s3://cubes/absent.zarr", storage_options=options)
        bad = {**options, "secret": "wrong-secret"}
        with pytest.raises(s2cube.StorageError) as info:
            s2cube.open_cube(url, storage_options=bad)
        assert "wrong-secret" not in str(info.value)
