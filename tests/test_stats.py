"""Masks, reflectance and cloudiness: lazy expressions with hand-checked values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from laziness import raise_if_dask_computes

import s2cube
from s2cube import schema
from s2cube.analysis import stats
from s2cube.io import reader

pytestmark = pytest.mark.usefixtures("local_threads")




def test_detector_masks_read_the_right_bits(ds):
    with raise_if_dask_computes():
        masks = {d: ds.s2cube.cloud_mask(d) for d in schema.DETECTORS}
    bits = ds.cloud_mask.isel(roi=0, time=slice(0, 6)).values
    prob = ds.cloud_prob.isel(roi=0, time=slice(0, 6)).values
    sel = dict(roi=0, time=slice(0, 6))
    np.testing.assert_array_equal(masks["s2cloudless_mask"].isel(sel).values, (bits & 1) > 0)
    np.testing.assert_array_equal(masks["cloud_cloudshadow_mask"].isel(sel).values, (bits & 6) > 0)
    np.testing.assert_array_equal(masks["s2cloudless_map"].isel(sel).values, prob >= 50)
    with pytest.raises(ValueError, match="s2cloudless_mask"):
        ds.s2cube.cloud_mask("fmask")


def test_per_patch_values_spread_to_pixels_chunk_for_chunk(ds):
    p = ds.attrs["patch_size"]
    with raise_if_dask_computes():
        valid = stats.valid_pixels(ds)
    assert valid.dims == ("roi", "time", "y", "x")
    assert valid.data.chunksize[-2:] == (p, p)
    frames = (ds.valid_s2 & ~ds.blank).values
    np.testing.assert_array_equal(valid.values, frames.repeat(p, axis=2).repeat(p, axis=3))


def test_masked_reflectance_is_nan_where_cloudy_or_missing(ds):
    with raise_if_dask_computes():
        masked = ds.s2cube.masked_reflectance("s2cloudless_mask")
    sel = dict(roi=1, time=slice(0, 8))
    got = masked.isel(sel).values
    dn = ds.s2.isel(sel).values
    p = ds.attrs["patch_size"]
    ok = (ds.valid_s2 & ~ds.blank).isel(sel).values.repeat(p, 1).repeat(p, 2)
    clear = ok & ((ds.cloud_mask.isel(sel).values & 1) == 0)
    expected = np.where(clear[:, None], dn / 10000.0, np.nan)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert masked.dtype == np.float32


def test_clear_fraction_counts_clear_valid_frames_per_pixel(ds):
    with raise_if_dask_computes():
        frac = ds.s2cube.clear_fraction("cloud_cloudshadow_mask")
    p = ds.attrs["patch_size"]
    ok = (ds.valid_s2 & ~ds.blank).values.repeat(p, 2).repeat(p, 3)
    clear = ok & ((ds.cloud_mask.values & 6) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = clear.sum(1) / np.where(ok.sum(1) > 0, ok.sum(1), np.nan)
    np.testing.assert_allclose(frac.values, expected)


def _frames(ds) -> pd.DataFrame:
    """Every valid frame with its coverage, labels and month, as a plain table."""
    cov = ds.coverage.sel(detector="s2cloudless_mask").values
    valid = ds.valid_s2.values
    months = ds.s2_date.dt.month.values
    r, t, y, x = np.nonzero(valid)
    names = ds.roi.values.astype(str)[r]
    return pd.DataFrame({
        "roi": names, "region": [schema.roi_info(n).region for n in names],
        "split": [schema.roi_info(n).split for n in names],
        "month": months[r, t, y, x], "cov": cov[r, t, y, x]})


@pytest.mark.parametrize("by", ["roi", "region", "split", ("region", "month")])
def test_cloudiness_equals_a_plain_group_by(ds, by):
    with raise_if_dask_computes():
        lazy = ds.s2cube.cloudiness(by=by, cloudy=0.1, clear=1e-3)
    got = lazy.compute()
    keys = [by] if isinstance(by, str) else list(by)
    frames = _frames(ds)
    g = frames.groupby(keys)["cov"]
    expected = pd.DataFrame({"mean_coverage": g.mean(), "frames": g.size(),
                             "cloudy_share": g.apply(lambda c: (c > 0.1).mean()),
                             "clear_share": g.apply(lambda c: (c <= 1e-3).mean())})
    table = got.to_dataframe().dropna(subset=["mean_coverage"])
    table = table[table["frames"] > 0].reset_index().set_index(keys).sort_index()
    for col in expected:
        np.testing.assert_allclose(table[col].to_numpy(float), expected[col].to_numpy(float),
                                   rtol=1e-6, err_msg=col)


def test_cloudiness_reads_no_pixel_array(small_cube):
    ds = s2cube.open_cube(small_cube)
    with reader.counting() as stats:
        ds.s2cube.cloudiness(by=("region", "month")).compute()  # local threads: counted here
    assert set(stats.by_array) == {"coverage", "valid_s2", "s2_date"}


def test_cloudiness_refuses_unknown_groups(ds):
    with pytest.raises(ValueError, match="cannot group by"):
        ds.s2cube.cloudiness(by="country")


def test_ndvi_is_the_normalised_difference_of_b8_and_b4(ds):
    with raise_if_dask_computes():
        ndvi = ds.s2cube.ndvi()
    sel = dict(roi=0, time=2)
    b8 = ds.s2.sel(band="B8").isel(sel).values.astype(float)
    b4 = ds.s2.sel(band="B4").isel(sel).values.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (b8 - b4) / np.where(b8 + b4 == 0, np.nan, b8 + b4)
    np.testing.assert_allclose(ndvi.isel(sel).values, expected, rtol=1e-5)
    assert "band" not in ndvi.dims
    with pytest.raises(ValueError, match="ndvi"):
        ds.s2cube.index("evi")
