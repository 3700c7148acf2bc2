"""Direct reads: tasks that read their own frames give exactly the generic graph's numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from laziness import raise_if_dask_computes

import s2cube
from s2cube import direct

pytestmark = pytest.mark.usefixtures("local_threads")


@pytest.fixture(scope="module")
def shards(small_cube):
    return s2cube.open_cube(small_cube, chunks="shard")


@pytest.fixture(scope="module")
def plan(ds):
    return ds.s2cube.sample_plan(split="all", n_input_samples=3)


def _reads_cube_through_xarray(arr: xr.DataArray) -> bool:
    return any(n.startswith(("open_dataset-s2", "open_dataset-cloud")) for n in arr.data.dask.layers)


SELECTIONS = {
    "whole cube": lambda d: d,
    "one ROI by name": lambda d: d.s2cube.sel_roi(["ROIs2017_8"]),
    "scalar ROI": lambda d: d.s2cube.sel_roi("ROIs1868_73"),
    "a season of slots": lambda d: d.isel(time=slice(5, 25)),
    "slots in another order": lambda d: d.isel(time=[7, 2, 29, 11, 3, 18, 0]),
    "three bands": lambda d: d.sel(band=["B4", "B3", "B2"]),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_composite_reads_directly_and_equals_the_generic_graph(shards, name):
    sub = SELECTIONS[name](shards)
    assert direct.selection(sub, "s2") is not None
    with raise_if_dask_computes():
        fast = sub.s2cube.composite()
        generic = sub.drop_encoding().s2cube.composite()  # no cube URL: the xarray graph
    assert not _reads_cube_through_xarray(fast) and _reads_cube_through_xarray(generic)
    assert fast.dims == generic.dims and fast.data.chunks == generic.data.chunks
    np.testing.assert_array_equal(fast.values, generic.values)
    assert np.isfinite(fast.values).any()


def test_what_cannot_be_mapped_to_stored_frames_takes_the_generic_graph(ds, small_cube):
    other = s2cube.open_cube(small_cube, chunks="shard")  # another graph of the same cube
    refused = {
        "arithmetic": ds.assign(s2=ds.s2 + 0),
        "a crop inside the grid": ds.isel(y=slice(0, 32), x=slice(0, 32)),
        "a ROI on its CRS coordinates": ds.s2cube.roi("ROIs2017_8"),
        "no encoding": ds.drop_encoding(),
        "plain xarray": xr.open_zarr(small_cube, zarr_format=3),
        "a variable from another open": ds.assign(s2=other.s2),
    }
    for what, sub in refused.items():
        assert direct.selection(sub, "s2") is None, what
    crop = ds.isel(y=slice(32, 64), x=slice(0, 64)).s2cube.composite("s2cloudless_mask")
    assert _reads_cube_through_xarray(crop) and crop.shape[-2:] == (32, 64)
    whole = ds.s2cube.composite("s2cloudless_mask").isel(y=slice(32, 64), x=slice(0, 64))
    np.testing.assert_array_equal(crop.values, whole.values)
    with pytest.raises(ValueError, match="cuts patches"):
        ds.isel(y=slice(0, 20)).s2cube.composite()


def test_baselines_read_directly_and_equal_the_generic_graph(ds, plan):
    for method in ("least_cloudy", "mosaic"):
        with raise_if_dask_computes():
            fast = ds.s2cube.baseline(plan, method)
            generic = ds.drop_encoding().s2cube.baseline(plan, method)
        assert not _reads_cube_through_xarray(fast)
        np.testing.assert_array_equal(fast.values, generic.values)


def test_evaluate_reads_directly_with_every_kind_of_prediction(ds, plan, tmp_path):
    """Predictions from zarr (read in the scoring task), from dask and from NumPy."""
    pred = ds.s2cube.baseline(plan, "mosaic")
    expected = ds.drop_encoding().s2cube.evaluate(pred, plan).samples
    assert len(expected) == len(plan)
    path = tmp_path / "pred.zarr"
    pred.to_dataset(name="prediction").drop_vars(
        [c for c in pred.coords if c not in ("roi", "band", "y", "x")]).to_zarr(
        path, mode="w", zarr_format=3, consolidated=False)
    stored = xr.open_zarr(path, chunks={}, consolidated=False)["prediction"]
    source = direct.block_source(stored.data)
    assert source is not None and isinstance(source[0].__self__, direct.LocalChunks)
    assert direct.block_source((stored + 0).data) is None
    for got in (ds.s2cube.evaluate(stored, plan), ds.s2cube.evaluate(pred, plan),
                ds.s2cube.evaluate(pred.compute(), plan)):
        pd.testing.assert_frame_equal(got.samples, expected, check_exact=False, rtol=1e-12)


def test_a_chunk_never_written_reads_as_the_fill_value(tmp_path):
    arr = xr.DataArray(np.arange(32, dtype=np.float32).reshape(2, 16), dims=("a", "b"))
    arr.to_dataset(name="v").to_zarr(tmp_path / "v.zarr", zarr_format=3, consolidated=False,
                                     encoding={"v": {"chunks": (1, 8)}})
    (tmp_path / "v.zarr" / "v" / "c" / "1" / "1").unlink()
    opened = xr.open_zarr(tmp_path / "v.zarr", consolidated=False)["v"].data
    read = direct.block_source(opened)[0]
    np.testing.assert_array_equal(read((slice(0, 1), slice(8, 16))), [np.arange(8, 16)])
    assert np.isnan(read((slice(1, 2), slice(8, 16)))).all()  # zarr's default fill for floats


def test_a_dataset_sent_to_another_process_keeps_direct_reads_only_without_credentials(ds):
    import pickle

    copy = pickle.loads(pickle.dumps(ds))
    assert direct.selection(copy, "s2") is not None  # a local cube needs no options
    info = dict(copy.encoding[direct.ENCODING_KEY])
    remote = copy.copy()
    remote.encoding[direct.ENCODING_KEY] = {**info, "url": "s3://bucket/cube.zarr",
                                            "options": "s3://bucket/cube.zarr#unknown"}
    assert direct.selection(remote, "s2") is None  # its credentials stayed in the other process
