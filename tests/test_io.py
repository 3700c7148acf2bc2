"""open_cube: one request to open, lazy variables on the stored chunks, clear refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from laziness import raise_if_dask_computes

import s2cube
from s2cube import direct, schema
from s2cube.io.open import counting_store

pytestmark = pytest.mark.usefixtures("local_threads")


def _local_store(path):
    from zarr.storage import LocalStore

    return LocalStore(str(path), read_only=True)


def test_opening_reads_only_the_root_metadata(small_cube):
    store, counter = counting_store(_local_store(small_cube))
    with raise_if_dask_computes():
        ds = s2cube.open_cube(store)
    assert counter.requests == 1 and list(counter.by_array) == ["zarr.json"]
    assert all(v.chunks is not None for v in ds.data_vars.values())  # every variable lazy
    assert ds.attrs[schema.ATTR_STATE] == "complete"


def test_chunks_are_the_stored_inner_chunks_or_the_shards(small_cube):
    ds = s2cube.open_cube(small_cube)
    p = ds.attrs["patch_size"]
    assert ds.s2.data.chunksize == (1, 1, 13, p, p) == ds.s2.encoding["chunks"]
    assert ds.cloud_mask.data.chunksize == (1, 1, p, p)
    assert ds.coverage.data.numblocks == (1,) * ds.coverage.ndim  # small variables: one chunk
    shard = s2cube.open_cube(small_cube, chunks="shard")
    assert shard.s2.data.chunksize == (1, 30, 13, p, p) == tuple(shard.s2.encoding["shards"])
    assert shard.coverage.data.numblocks == (1,) * shard.coverage.ndim


def test_values_and_coordinates_equal_plain_xarray(small_cube):
    ds = s2cube.open_cube(f"file://{small_cube}")
    plain = xr.open_zarr(small_cube)
    assert list(ds.roi.values) == [str(r) for r in plain.roi.values]
    for name in ("split", "region", "collection", "roi_id", "epsg", "n_rows", "n_cols"):
        assert [str(v) for v in ds[name].values] == [str(v) for v in plain[name].values], name
    np.testing.assert_array_equal(ds.transform.values, plain.transform.values)
    np.testing.assert_array_equal(ds.wavelength.values, plain.wavelength.values)
    for name in ("coverage", "valid_s2", "blank", "patch_id", "s2_date", "s1_date"):
        np.testing.assert_array_equal(ds[name].values, plain[name].values, err_msg=name)
    assert ds.s2_date.dtype == np.dtype("datetime64[ns]")
    one = dict(roi=1, time=4, y=slice(0, 40), x=slice(20, 70))
    np.testing.assert_array_equal(ds.s2.isel(one).values, plain.s2.isel(one).values)
    assert ds.s2.dtype == np.uint16 and ds.cloud_mask.dtype == np.uint8


def test_without_the_layout_attrs_coordinates_are_read_from_the_store(small_cube, tmp_path):
    cube = tmp_path / "nogrids.zarr"
    shutil.copytree(small_cube, cube)
    meta = json.loads((cube / "zarr.json").read_text())
    del meta["attributes"]["grids"]
    (cube / "zarr.json").write_text(json.dumps(meta))
    ds, ref = s2cube.open_cube(cube), s2cube.open_cube(small_cube)
    for name in ("roi", "split", "region", "epsg", "n_rows", "transform", "band", "time"):
        np.testing.assert_array_equal(ds[name].values.astype(ref[name].dtype), ref[name].values)
    assert ds.indexes["roi"].equals(ref.indexes["roi"])


def test_plain_xarray_still_opens_the_cube(small_cube):
    ds = xr.open_zarr(small_cube)
    assert ds.s2.dtype == np.uint16 and ds.sizes["band"] == 13


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_not_a_cube_is_refused_with_the_reason(tmp_path):
    with pytest.raises(s2cube.NotACubeError, match="holds no Zarr v3 group"):
        s2cube.open_cube(tmp_path / "nothing-here")
    other = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}, attrs={"title": "my data"}).to_zarr(
        other, zarr_format=3, consolidated=True)
    with pytest.raises(s2cube.NotACubeError, match=r"not an s2cube cube.*my data"):
        s2cube.open_cube(other)


def _set_state(cube, state: str, drop_consolidated: bool) -> None:
    meta_path = cube / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][schema.ATTR_STATE] = state
    if drop_consolidated:
        meta.pop("consolidated_metadata", None)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("drop_consolidated", [True, False])
def test_incomplete_cube_is_refused_unless_asked(small_cube, tmp_path, drop_consolidated):
    cube = tmp_path / "half.zarr"
    shutil.copytree(small_cube, cube)
    _set_state(cube, "writing", drop_consolidated)
    with pytest.raises(s2cube.IncompleteCubeError, match="allow_incomplete=True"):
        s2cube.open_cube(cube)
    ds = s2cube.open_cube(cube, allow_incomplete=True)
    assert ds.attrs[schema.ATTR_STATE] == "writing" and ds.s2.chunks is not None


def test_newer_schema_is_refused(small_cube, tmp_path):
    cube = tmp_path / "future.zarr"
    shutil.copytree(small_cube, cube)
    meta = json.loads((cube / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = schema.SCHEMA_VERSION + 1
    (cube / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(s2cube.NotACubeError, match="schema version"):
        s2cube.open_cube(cube)


def test_bad_chunks_argument_names_the_choices(small_cube):
    with pytest.raises(ValueError, match="'inner', 'shard'"):
        s2cube.open_cube(small_cube, chunks="big")


@pytest.mark.s3
def test_open_from_s3_reads_one_object_and_the_same_values(small_cube, tmp_path):
    from s2cube.testing import SeaweedServer, find_weed

    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with SeaweedServer(tmp_path / "weed") as server:
        server.create_bucket("cubes")
        server.upload_folder(small_cube, "cubes", "small.zarr")
        options = server.storage_options()
        url = "s3://cubes/small.zarr"
        ds = s2cube.open_cube(url, storage_options=options)
        local = s2cube.open_cube(small_cube)
        np.testing.assert_array_equal(ds.s2.isel(roi=0, time=3).values,
                                      local.s2.isel(roi=0, time=3).values)
        np.testing.assert_array_equal(ds.coverage.values, local.coverage.values)
        # analyses whose tasks read their frames themselves, with this open's credentials
        one = ["ROIs2017_8"]
        remote = s2cube.open_cube(url, storage_options=options, chunks="shard").s2cube.sel_roi(one)
        assert direct.selection(remote, "s2") is not None
        np.testing.assert_array_equal(
            remote.s2cube.composite().values,
            s2cube.open_cube(small_cube, chunks="shard").s2cube.sel_roi(one).s2cube.composite().values)
        plan = local.s2cube.sample_plan(split="all").head(4)
        pred = local.s2cube.baseline(plan, "mosaic").compute()
        pd.testing.assert_frame_equal(ds.s2cube.evaluate(pred, plan).samples,
                                      local.s2cube.evaluate(pred, plan).samples)
        with pytest.raises(s2cube.NotACubeError):
            s2cube.open_cube("s3://cubes/absent.zarr", storage_options=options)
        bad = {**options, "secret": "wrong-secret"}
        with pytest.raises(s2cube.StorageError) as info:
            s2cube.open_cube(url, storage_options=bad)
        assert "wrong-secret" not in str(info.value)
