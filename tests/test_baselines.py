"""Baselines and evaluation: the reference definitions, hand-checked, lazy, and on a cluster."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from laziness import raise_if_dask_computes

import s2cube
from s2cube.analysis import baselines as B
from s2cube.analysis import evaluate as E
from s2cube.analysis import metrics as M
from s2cube.errors import PlanError
from s2cube.io import reader
from s2cube.plans.table import resolve

pytestmark = pytest.mark.usefixtures("local_threads")




@pytest.fixture(scope="module")
def plan(ds):
    return ds.s2cube.sample_plan(split="all", n_input_samples=3)


# --- pure NumPy, hand-computed ---------------------------------------------------------

def test_least_cloudy_takes_the_input_with_fewest_cloudy_pixels():
    inputs = np.stack([np.full((2, 2, 2), v, np.float32) for v in (0.1, 0.2, 0.3)])
    masks = np.array([np.ones((2, 2)), [[1, 0], [0, 0]], [[1, 1], [0, 0]]])
    np.testing.assert_array_equal(B.least_cloudy(inputs, masks), inputs[1])
    assert B.least_cloudy_index(np.zeros((3, 2, 2))) == 0  # ties: the first, as argsort gives


def test_mosaic_averages_clear_inputs_and_fills_where_none_is_clear():
    inputs = np.stack([np.full((1, 1, 3), v) for v in (0.2, 0.4, 0.9)])
    masks = np.array([[[0, 1, 1]], [[0, 0, 1]], [[1, 0, 1]]])
    out = B.mosaic(inputs, masks)
    # pixel 0: inputs 0,1 clear -> 0.3; pixel 1: inputs 1,2 -> 0.65; pixel 2: none -> 0.75
    np.testing.assert_allclose(out[0, 0], [0.3, 0.65, B.MOSAIC_FILL], rtol=1e-6)
    assert B.MOSAIC_FILL == pytest.approx((0.5 + 1) / 2)  # the toolbox's 0.5 in [-1, 1]


def test_reflectance_is_the_reference_default_preprocessing():
    np.testing.assert_allclose(B.to_reflectance([0, 5000, 12000]), [0, 0.5, 1.0])


# --- on the cube -----------------------------------------------------------------------------

def _sample_arrays(ds, row, detector="s2cloudless_mask"):
    p = ds.attrs["patch_size"]
    sel = dict(roi=list(ds.roi.values).index(row.roi), y=slice(row.row * p, (row.row + 1) * p),
               x=slice(row.col * p, (row.col + 1) * p))
    inputs = B.to_reflectance(ds.s2.isel(sel).isel(time=list(row.inputs)).values)
    bits = ds.cloud_mask.isel(sel).isel(time=list(row.inputs)).values
    masks = ((bits & 1) > 0).astype(np.uint8)
    target = B.to_reflectance(ds.s2.isel(sel).isel(time=row.target).values)
    return inputs, masks, target, sel


def test_sample_plan_is_the_fixed_sampler_on_the_stored_coverage(ds, plan):
    from s2cube.plans import rules as sampling

    table = ds.s2cube.patch_table()
    assert list(plan["patch_id"]) == list(table["patch_id"])
    cov = ds.coverage.sel(detector="s2cloudless_mask").values
    rois = [list(ds.roi.values).index(r) for r in plan["roi"]]
    series = cov[rois, :, plan["row"], plan["col"]]
    ref = sampling.fixed(series, 3)
    assert [list(x) for x in plan["inputs"]] == ref.inputs.tolist()
    assert list(plan["target"]) == ref.target.tolist()


def test_baselines_are_lazy_and_equal_the_numpy_definitions(ds, plan):
    with raise_if_dask_computes(max_computes=2):  # each reads the small patch_id to check the plan
        lc = ds.s2cube.baseline(plan, "least_cloudy")
        mo = ds.s2cube.baseline(plan, "mosaic")
    assert lc.dims == ("roi", "band", "y", "x") and lc.dtype == np.float32
    for k in (0, 5, len(plan) - 1):
        row = plan.iloc[k]
        inputs, masks, _, sel = _sample_arrays(ds, row)
        i = sel.pop("roi")
        np.testing.assert_array_equal(lc.isel(roi=i, **sel).values,
                                      B.least_cloudy(inputs, masks))
        np.testing.assert_allclose(mo.isel(roi=i, **sel).values,
                                   B.mosaic(inputs, masks), rtol=1e-6)


def test_baseline_of_part_of_the_cube_is_nan_elsewhere(ds, plan):
    part = plan[plan["roi"] == "ROIs2017_8"].head(2)
    pred = ds.s2cube.baseline(part, "mosaic")
    i = list(ds.roi.values).index("ROIs1868_73")
    assert np.isnan(pred.isel(roi=i).values).all()
    assert np.isfinite(pred.sel(roi="ROIs2017_8").values).mean() == pytest.approx(2 / 9)


def test_evaluate_scores_each_sample_as_the_reference(ds, plan):
    pred = ds.s2cube.baseline(plan, "mosaic")
    result = ds.s2cube.evaluate(pred, plan)
    assert len(result.samples) == len(plan)
    for k in (1, len(plan) - 2):
        row = plan.iloc[k]
        inputs, masks, target, _ = _sample_arrays(ds, row)
        expected = M.image_metrics(B.mosaic(inputs, masks), target, masks)
        got = result.samples.loc[row.name]
        for metric in M.METRICS:
            assert got[metric] == pytest.approx(expected[metric], rel=1e-9, nan_ok=True), metric
    per_region = result.per_region
    assert set(per_region.index) == {"africa", "asiaEast"} and per_region["n"].sum() == len(plan)
    means = result.samples.groupby("region")["rmse"].mean()
    np.testing.assert_allclose(per_region["rmse"], means)
    assert set(result.per_split.index) == {"test", "train"}
    assert list(result.per_roi.index.names) == ["split", "region", "roi"]


def test_evaluate_takes_any_subset_and_integer_predictions(ds, plan):
    target_dn = ds.s2.isel(time=0)  # "predict" slot 0 for every patch, as DN
    sub = ds.s2.isel(time=0).sel(roi=["ROIs1868_73"]).transpose("roi", "band", "y", "x")
    result = ds.s2cube.evaluate(sub, plan)
    assert set(result.samples["roi"]) == {"ROIs1868_73"}
    assert len(result.samples) == int((plan["roi"] == "ROIs1868_73").sum())
    # a patch whose prediction is NaN everywhere was not predicted: left out
    pred = ds.s2cube.baseline(plan.iloc[[0, 3]], "least_cloudy")
    assert list(ds.s2cube.evaluate(pred, plan).samples.index) == list(plan.index[[0, 3]])
    assert target_dn.dtype == np.uint16


def test_evaluate_takes_flat_patches_and_arrays_in_plan_order(ds, plan):
    grid = ds.s2cube.baseline(plan, "mosaic")
    expected = ds.s2cube.evaluate(grid, plan).samples
    # the flat view of patches(): a subset of patches, any order
    p = ds.attrs["patch_size"]
    flat = ds.s2cube.patches(["s2"]).s2.isel(time=0)
    flat = flat.copy(data=np.stack([  # the mosaic of each flat patch, where planned
        grid.sel(roi=r).isel(y=slice(y * p, (y + 1) * p), x=slice(x * p, (x + 1) * p)).values
        for r, y, x in zip(flat.roi.values, flat.row.values, flat.col.values)]))
    some = flat.isel(patch=[4, 0, 2])
    got = ds.s2cube.evaluate(some, plan).samples
    keys = set(zip(some.roi.values, some.row.values, some.col.values))
    assert len(got) == sum((r, y, x) in keys for r, y, x in zip(plan.roi, plan.row, plan.col)) > 0
    pd.testing.assert_frame_equal(got, expected.loc[got.index])
    # a NumPy array holding plan row k's prediction at k
    arr = np.stack([grid.sel(roi=s.roi).isel(y=slice(s.row * p, (s.row + 1) * p),
                                             x=slice(s.col * p, (s.col + 1) * p)).values
                    for s in plan.itertuples()])
    pd.testing.assert_frame_equal(ds.s2cube.evaluate(arr, plan).samples, expected)
    with pytest.raises(ValueError, match="one image per plan row"):
        ds.s2cube.evaluate(arr[:2], plan)


def test_evaluate_reads_only_the_chunks_of_its_samples(small_cube, plan):
    ds = s2cube.open_cube(small_cube)
    two = plan.head(2)
    pred = ds.s2cube.baseline(two, "least_cloudy").compute()
    _ = ds.s2.isel(roi=0, time=0, y=0, x=0).values  # the small arrays, read once per process
    with reader.counting() as stats:
        ds.s2cube.evaluate(pred, two)  # on local threads: counted in this process
    p = ds.attrs["patch_size"]
    # per sample one s2 target frame (each well under a raw chunk) and the inputs' masks
    assert stats.by_array["s2"] < 2 * 13 * p * p * 2
    assert stats.chunks <= 2 * (1 + 30)


def test_plan_must_name_cells_with_patches(ds):
    bad = pd.DataFrame({"roi": ["ROIs2017_8"], "row": [0], "col": [0], "inputs": [(0, 1)],
                        "target": [2]})
    pid = ds.patch_id.sel(roi="ROIs2017_8").values
    r, c = np.argwhere(pid < 0)[0] if (pid < 0).any() else (99, 99)
    bad["row"], bad["col"] = int(r), int(c)
    with pytest.raises(PlanError, match=r"no patch|does not hold"):
        resolve(ds, bad)
    with pytest.raises(PlanError, match="lacks column"):
        resolve(ds, pd.DataFrame({"roi": ["ROIs2017_8"]}))


def test_composite_is_the_median_of_clear_pixels(small_cube, ds):
    with raise_if_dask_computes():
        comp = ds.s2cube.composite("s2cloudless_mask")
    assert comp.data.chunksize == (1, 13, ds.attrs["patch_size"], ds.attrs["patch_size"])
    assert comp.dims == ("roi", "band", "y", "x")
    i = 1
    dn = ds.s2.isel(roi=i).values.astype(float)
    p = ds.attrs["patch_size"]
    ok = (ds.valid_s2 & ~ds.blank).isel(roi=i).values.repeat(p, 1).repeat(p, 2)
    clear = ok & ((ds.cloud_mask.isel(roi=i).values & 1) == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.nanmedian(np.where(clear[:, None], dn, np.nan), axis=0) / 10000
    np.testing.assert_allclose(comp.isel(roi=i).values, expected, rtol=1e-6, equal_nan=True)


def test_analyses_run_unchanged_on_a_distributed_cluster(small_cube, ds, plan, dask_client):
    """The session's LocalCluster (2 worker processes) gives the local scheduler's numbers."""
    pred = ds.s2cube.baseline(plan, "mosaic")
    comp = ds.s2cube.sel_roi(["ROIs2017_8"]).s2cube.composite()
    cloudy = ds.s2cube.cloudiness(by=("region", "month"))
    local = (E.evaluate(ds, pred, plan).samples, comp.compute(), cloudy.compute())
    with dask.config.set(scheduler="dask.distributed"):  # the session's client
        on_cluster = (E.evaluate(ds, pred, plan).samples, comp.compute(), cloudy.compute())
    pd.testing.assert_frame_equal(on_cluster[0], local[0])
    np.testing.assert_array_equal(on_cluster[1].values, local[1].values)
    assert on_cluster[2].identical(local[2])
    assert len(dask_client.scheduler_info()["workers"]) == 2


def test_composite_block_takes_arrays_or_blocks_along_time():
    rng = np.random.default_rng(0)
    s2 = rng.integers(0, 10000, (1, 30, 13, 8, 8), dtype=np.uint16)
    raw = np.zeros((1, 30, 8, 8), np.uint8)
    frames = np.ones((1, 30, 1, 1), bool)
    whole = B._composite_block(s2, raw, frames, detector="s2cloudless_mask")
    split = B._composite_block([s2[:, :10], s2[:, 10:]], [raw[:, :10], raw[:, 10:]],
                               [frames[:, :10], frames[:, 10:]], detector="s2cloudless_mask")
    np.testing.assert_array_equal(whole, split)
    np.testing.assert_allclose(whole[0], np.median(s2[0], axis=0) / 10000, rtol=1e-6)
