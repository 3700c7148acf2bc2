"""Selections and the flat patch view: right ROIs, right order, lazy, and no copy."""

from __future__ import annotations

import numpy as np
import pytest
from laziness import raise_if_dask_computes

import s2cube
from s2cube import schema
from s2cube.errors import SelectionError
from s2cube.io import reader
from s2cube.plans import rules as sampling

pytestmark = pytest.mark.usefixtures("local_threads")




def test_split_region_and_name_select_the_rois_of_the_tables(ds):
    with raise_if_dask_computes():
        test = ds.s2cube.sel_split("test")
        africa = ds.s2cube.sel_region("africa")
        one = ds.s2cube.sel_roi("ROIs2017_8")
    expected_test = [r for r in ds.roi.values if schema.roi_info(str(r)).split == "test"]
    assert list(test.roi.values) == expected_test == ["ROIs1868_73"]
    assert list(africa.roi.values) == ["ROIs2017_8"]
    assert "roi" not in one.dims and str(one.roi.values) == "ROIs2017_8"
    assert ds.s2cube.sel_split("all").sizes["roi"] == ds.sizes["roi"]
    with pytest.raises(SelectionError, match=r"no ROI of split 'val'.*ROIs1868_73"):
        ds.s2cube.sel_split("val")


def test_bad_names_say_what_is_allowed(ds):
    with pytest.raises(ValueError, match="train, val, test"):
        ds.s2cube.sel_split("testing")
    with pytest.raises(ValueError, match="europa"):
        ds.s2cube.sel_region("europe")
    with pytest.raises(KeyError, match="not in this Dataset"):
        ds.s2cube.sel_roi("ROIs1970_20")


def test_clear_frames_follow_the_stored_coverage(ds):
    with raise_if_dask_computes():
        clear = ds.s2cube.clear_frames("cloud_cloudshadow_mask", threshold=0.05)
    cov = ds.coverage.sel(detector="cloud_cloudshadow_mask").values
    expected = (cov <= 0.05) & ds.valid_s2.values & ~ds.blank.values
    np.testing.assert_array_equal(clear.values, expected)
    assert 0 < expected.sum() < expected.size


def test_patch_table_is_the_reference_sample_order(ds):
    table = ds.s2cube.patch_table()
    index = sampling.patch_index(ds.patch_id.values, list(ds.roi.values))
    assert list(table["patch_id"]) == list(index.patch_id)
    # ROIs in the order of the archive's tables, patches by ascending id within an ROI
    orders = [schema.roi_info(r).order for r in table["roi"]]
    assert orders == sorted(orders)
    for _, part in table.groupby("roi"):
        assert list(part["patch_id"]) == sorted(part["patch_id"])
    assert len(ds.s2cube.patch_table(split="test")) == int((ds.patch_id.values[
        list(ds.roi.values).index("ROIs1868_73")] >= 0).sum())


def test_patches_is_a_lazy_view_with_the_right_pixels(ds):
    p = ds.attrs["patch_size"]
    table = ds.s2cube.patch_table()
    with raise_if_dask_computes(max_computes=1):  # the one small read of patch_id
        flat = ds.s2cube.patches()
    assert flat.s2.dims == ("patch", "time", "band", "py", "px")
    assert flat.s2.shape == (len(table), 30, 13, p, p)
    assert flat.s2.data.chunksize == (1, 30, 13, p, p)  # the stored series, one per patch
    assert flat.cloud_mask.dims == ("patch", "time", "py", "px")
    assert flat.coverage.dims == ("patch", "time", "detector")
    assert list(flat.patch_id.values) == list(table["patch_id"])
    for k in (0, len(table) - 1):
        row = table.iloc[k]
        y, x = slice(row.row * p, (row.row + 1) * p), slice(row.col * p, (row.col + 1) * p)
        np.testing.assert_array_equal(
            flat.s2.isel(patch=k, time=7).values,
            ds.s2.isel(roi=row.roi_pos, time=7, y=y, x=x).values)
        np.testing.assert_array_equal(
            flat.coverage.isel(patch=k).values,
            ds.coverage.isel(roi=row.roi_pos, row=row.row, col=row.col).values)


def test_one_patch_slot_of_the_flat_view_reads_one_chunk_in_frame_chunks(small_cube):
    ds = s2cube.open_cube(small_cube, chunks="frame")
    with reader.counting() as stats:
        flat = ds.s2cube.patches(["s2"])  # on local threads: counted in this process
    assert set(stats.by_array) == {"patch_id"}  # the view read no pixel
    _ = flat.s2.isel(patch=0, time=0).values  # the small valid_s2 array is read once per process
    with reader.counting() as stats:
        one = flat.s2.isel(patch=5, time=11).values
    assert stats.chunks == 1  # one inner chunk decoded
    series = s2cube.open_cube(small_cube).s2cube.patches(["s2"]).s2
    with reader.counting() as stats:  # in series chunks: the patch's series, the same pixels
        again = series.isel(patch=5, time=11).values
    assert stats.chunks <= 30 + 1  # and valid_s2, read once by this new open
    np.testing.assert_array_equal(one, again)
