"""Seq2seq: series plans by label, the series baselines, and scoring on the gapped pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from laziness import raise_if_dask_computes

import s2cube
from s2cube import schema
from s2cube.analysis import metrics as M
from s2cube.analysis import series as S
from s2cube.errors import PlanError, SelectionError
from s2cube.io import reader
from s2cube.plans import series as SP

pytestmark = pytest.mark.usefixtures("local_threads")

TEST_ROI, TRAIN_ROI = "ROIs1868_73", "ROIs2017_8"


@pytest.fixture(scope="module")
def plan(ds):
    return ds.s2cube.series_plan(split="all", seed=5)


def _patch(ds, s):
    p = ds.attrs["patch_size"]
    return dict(y=slice(s.row * p, (s.row + 1) * p), x=slice(s.col * p, (s.col + 1) * p))


# --- the plan ---------------------------------------------------------------------------------

def test_the_plan_follows_the_protocol(ds, plan):
    assert len(plan) > 0 and plan.index.name == "sdx"
    cov = ds.coverage.sel(detector="s2cloudless_mask")
    usable = ds.valid_s2 & ~ds.blank
    for s in plan.itertuples():
        c = cov.sel(roi=s.roi, row=s.row, col=s.col).values
        ok = usable.sel(roi=s.roi, row=s.row, col=s.col).values
        clear = set(np.flatnonzero(ok & (c < 0.4)).tolist())
        assert len(clear) >= SP.MIN_CLEAR and s.n_clear == len(clear)
        assert s.slots == tuple(range(30)) and len(s.gaps) == 3
        assert set(s.gaps) <= clear  # only clear frames get a gap
        for r, cc, t, g in zip(s.donor_row, s.donor_col, s.donor_slot, s.gaps):
            donor = float(cov.sel(roi=s.roi, row=r, col=cc, time=t))  # the same ROI
            assert SP.DONOR_COVERAGE[0] <= donor <= SP.DONOR_COVERAGE[1]
            assert bool(usable.sel(roi=s.roi, row=r, col=cc, time=t))
            assert (r, cc, t) != (s.row, s.col, g)  # never the frame's own mask
    assert set(plan["detector"]) == {"s2cloudless_mask"}


def test_series_with_too_few_clear_frames_are_dropped(ds):
    cov = ds.coverage.sel(detector="s2cloudless_mask")
    clear = ((cov < 0.4) & ds.valid_s2 & ~ds.blank).sum("time")
    need = int(np.median(clear.values))
    plan = ds.s2cube.series_plan(split="all", min_clear=need)
    assert len(plan) == int((clear >= need).sum()) < clear.size
    assert (plan["n_clear"] >= need).all()
    with pytest.raises(SelectionError, match="clear frames"):
        ds.s2cube.series_plan(split="all", min_clear=30)
    with pytest.raises(ValueError, match="n_gaps"):
        ds.s2cube.series_plan(n_gaps=5, min_clear=5)


def test_the_cloudy_rule_and_detector_are_options(ds):
    strict = ds.s2cube.series_plan(split="all", cloudy_fraction=0.05, min_clear=3, n_gaps=1)
    cov = ds.coverage.sel(detector="s2cloudless_mask")
    for s in strict.itertuples():
        assert float(cov.sel(roi=s.roi, row=s.row, col=s.col, time=s.gaps[0])) < 0.05
    other = ds.s2cube.series_plan(split="all", detector="cloud_cloudshadow_mask")
    assert set(other["detector"]) == {"cloud_cloudshadow_mask"}


def test_the_plan_is_reproducible_from_its_seed(ds, plan):
    again = ds.s2cube.series_plan(split="all", seed=5)
    pd.testing.assert_frame_equal(plan, again)
    other = ds.s2cube.series_plan(split="all", seed=6)
    assert list(other["gaps"]) != list(plan["gaps"])
    few = ds.s2cube.series_plan(split="all", seed=5, n_series=4)
    assert len(few) == 4
    merged = few.merge(plan, on=["roi", "row", "col"], suffixes=("", "_all"))
    assert list(merged["gaps"]) == list(merged["gaps_all"])  # a series' draws are its own


def test_the_plan_is_the_same_on_any_selection_holding_the_series(ds, plan):
    # per series, the draws depend on the seed and its labels only: not on the other ROIs,
    # nor on the order of the Dataset
    one = ds.sel(roi=[TRAIN_ROI]).s2cube.series_plan(split="all", seed=5)
    expected = plan[plan["roi"] == TRAIN_ROI].reset_index(drop=True)
    expected.index.name = "sdx"
    pd.testing.assert_frame_equal(one, expected)
    flipped = ds.isel(roi=[1, 0]).s2cube.series_plan(split="all", seed=5)
    pd.testing.assert_frame_equal(flipped, plan)
    short = ds.isel(time=slice(0, 20)).s2cube.series_plan(split="all", seed=5)
    assert all(s == tuple(range(20)) for s in short["slots"])
    assert all(max(g) < 20 and max(d) < 20 for g, d in zip(short["gaps"], short["donor_slot"]))


def test_resolving_names_what_a_dataset_lacks(ds, plan):
    with pytest.raises(PlanError, match=TEST_ROI):
        SP.resolve_series(ds.sel(roi=[TRAIN_ROI]), plan)
    with pytest.raises(PlanError, match=r"slot\(s\) \[2"):
        SP.resolve_series(ds.isel(time=slice(0, 2)), plan)
    p = ds.attrs["patch_size"]
    one = plan[plan["roi"] == TRAIN_ROI].head(1)
    s = one.iloc[0]
    crop = ds.sel(roi=[TRAIN_ROI]).isel(y=slice(s.row * p, (s.row + 1) * p),
                                        x=slice(s.col * p, (s.col + 1) * p))
    if (s.donor_row, s.donor_col) != ((s.row,) * 3, (s.col,) * 3):
        with pytest.raises(PlanError, match="donor patch"):  # the donors' patches are needed too
            SP.resolve_series(crop, one)
    with pytest.raises(PlanError, match="lacks column"):
        SP.resolve_series(ds, pd.DataFrame({"roi": [TRAIN_ROI]}))
    bad = one.copy()
    bad["gaps"] = [(99, *s.gaps[1:])]
    with pytest.raises(PlanError, match="outside its slots"):
        SP.resolve_series(ds, bad)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_plans_save_and_load_as_plain_files(plan, tmp_path, suffix):
    path = tmp_path / f"plan{suffix}"
    SP.save_series_plan(plan, path)
    text = path.read_text()
    assert "ROIs1868_73" in text and "pickle" not in text
    back = SP.load_series_plan(path)
    pd.testing.assert_frame_equal(back, SP.as_series_table(plan), check_dtype=False)


# --- the baselines: series built so the right answer is known --------------------------------

def _ramp(t=7, bands=2, h=3, w=4):
    days = np.array([0, 3, 10, 12, 20, 33, 40], float)[:t]
    slope = np.arange(1, bands * h * w + 1, dtype=float).reshape(bands, h, w) * 1e-3
    x = 0.1 + days[:, None, None, None] * slope[None]
    return x.astype(np.float32), days


def test_linear_interpolation_recovers_a_linear_ramp_between_observations():
    x, days = _ramp()
    observed = np.ones((7, 3, 4), bool)
    observed[[1, 2, 4], :, :] = False  # frames to fill, between observations
    observed[5, 0, 0] = False
    garbage = np.where(observed[:, None], x, np.float32(7.0))  # what lies under gaps never counts
    out = S.linear_fill(garbage, observed, days)
    np.testing.assert_allclose(out, x, rtol=1e-6)
    # at the ends, the nearest observation (constant extrapolation)
    observed[0] = False
    out = S.linear_fill(garbage, observed, days)
    np.testing.assert_allclose(out[0], x[3], rtol=1e-6)


def test_nearest_takes_the_closest_observation_in_time():
    x, days = _ramp()  # days 0 3 10 12 20 33 40
    observed = np.zeros((7, 3, 4), bool)
    observed[[0, 3, 6]] = True
    out = S.nearest_fill(np.where(observed[:, None], x, np.float32(9)), observed, days)
    for t, src in ((1, 0), (2, 3), (4, 3), (5, 6)):  # day 3 -> 0, 10 -> 12, 20 -> 12, 33 -> 40
        np.testing.assert_array_equal(out[t], x[src])
    # a tie goes to the earlier frame; without days, frame indices are the time axis
    observed = np.zeros((3, 1, 1), bool)
    observed[[0, 2]] = True
    v = np.array([1, 5, 3], np.float32).reshape(3, 1, 1, 1)
    assert S.nearest_fill(v, observed)[1].item() == 1


def test_constant_pixels_are_reconstructed_exactly_by_every_baseline():
    rng = np.random.default_rng(0)
    value = rng.random((3, 5, 6)).astype(np.float32)  # a constant series per pixel and band
    x = np.broadcast_to(value, (9, 3, 5, 6)).copy()
    observed = rng.random((9, 5, 6)) > 0.5
    observed[4] = True  # every pixel is observed somewhere
    x[~np.broadcast_to(observed[:, None], x.shape)] = 1.5  # clouds
    for fill in (S.nearest_fill, S.linear_fill, S.median_fill):
        np.testing.assert_allclose(fill(x, observed, np.arange(9) * 5.0),
                                   np.broadcast_to(value, x.shape), rtol=1e-6)


def test_median_is_the_median_of_observed_values_and_fill_where_never_observed():
    x = np.array([0.1, 0.9, 0.3, 0.5, 0.2], np.float32).reshape(5, 1, 1, 1) * np.ones((1, 2, 1, 2),
                                                                                     np.float32)
    observed = np.ones((5, 1, 2), bool)
    observed[1, 0, 0] = False  # pixel 0: 0.1 0.3 0.5 0.2 -> 0.25; pixel 1: all -> 0.3
    observed[:, 0, 1] = [True, True, True, True, True]
    out = S.median_fill(x, observed)
    np.testing.assert_allclose(out[:, :, 0, 0], 0.25, rtol=1e-6)
    np.testing.assert_allclose(out[:, :, 0, 1], 0.3, rtol=1e-6)
    never = np.zeros((5, 1, 2), bool)
    for fill in (S.nearest_fill, S.linear_fill, S.median_fill):
        np.testing.assert_allclose(fill(x, never, fill=0.75), 0.75)


def test_time_is_the_acquisition_days_with_missing_dates_interpolated():
    dates = np.array(["2018-01-01", "NaT", "2018-01-25", "NaT"], "datetime64[D]")
    start = np.datetime64("2018-01-01", "D").astype(np.int64)
    np.testing.assert_allclose(S.frame_days(dates, np.arange(4)) - start, [0, 12, 24, 36])
    none = np.array(["NaT"] * 3, "datetime64[D]")
    np.testing.assert_array_equal(S.frame_days(none, np.array([3, 5, 9])), [3, 5, 9])
    with pytest.raises(ValueError, match="increasing"):
        S.linear_fill(np.zeros((2, 1, 1, 1)), np.ones((2, 1, 1), bool), [5.0, 1.0])


# --- on the cube ---------------------------------------------------------------------------------

def test_series_baselines_are_lazy_and_equal_the_numpy_definitions(ds, plan):
    with raise_if_dask_computes(max_computes=3):  # each resolves the plan: reads patch_id once
        preds = {m: ds.s2cube.series_baseline(plan, m) for m in S.SERIES_METHODS}
    p = ds.attrs["patch_size"]
    lin = preds["linear"]
    assert lin.dims == ("roi", "time", "band", "y", "x") and lin.dtype == np.float32
    assert lin.data.chunksize == (1, 30, 13, p, p)
    assert list(lin.time.values) == list(range(30))
    for k in (0, len(plan) - 1):
        s = plan.iloc[k]
        frames = S.series_frames(ds, plan, k)
        for method, pred in preds.items():
            got = pred.sel(roi=s.roi).isel(_patch(ds, s)).values
            np.testing.assert_array_equal(got, S.fill_series(frames, method))
        # the frames read are the Dataset's, the gaps the donors' masks
        dn = ds.s2.sel(roi=s.roi).isel(_patch(ds, s)).values
        np.testing.assert_allclose(frames.s2, np.clip(dn, 0, 10000) / 10000, rtol=1e-6)
        donor = ds.cloud_mask.sel(roi=s.roi, time=s.donor_slot[0]).isel(
            _patch(ds, pd.Series({"row": s.donor_row[0], "col": s.donor_col[0]}))).values
        np.testing.assert_array_equal(frames.gap[s.slots.index(s.gaps[0])], (donor & 1) > 0)
        assert not frames.observed[frames.gap].any()


def test_a_baseline_never_sees_the_truth_under_its_gaps(ds, plan):
    s = plan.iloc[0]
    frames = S.series_frames(ds, plan, 0)
    hidden = frames.gap & ~frames.cloudy
    assert hidden.any()
    poisoned = S.SeriesFrames(np.where(hidden[:, None], np.float32(5), frames.s2), frames.cloudy,
                              frames.gap, frames.valid, frames.days, frames.gapped)
    for method in S.SERIES_METHODS:
        np.testing.assert_array_equal(S.fill_series(poisoned, method),
                                      S.fill_series(frames, method))
    assert s.roi in (TEST_ROI, TRAIN_ROI)


def test_the_same_plan_gives_the_same_series_on_a_subset(ds, plan):
    part = plan[plan["roi"] == TRAIN_ROI].head(2)
    sub = ds.sel(roi=[TRAIN_ROI], band=["B4", "B3", "B2", "B8"])
    full = ds.s2cube.series_baseline(part, "linear").sel(roi=[TRAIN_ROI], band=sub.band.values)
    got = sub.s2cube.series_baseline(part, "linear")
    np.testing.assert_array_equal(got.values, full.values)
    i = list(ds.roi.values).index(TEST_ROI)
    assert np.isnan(ds.s2cube.series_baseline(part, "linear").isel(roi=i).values).all()


# --- scoring ---------------------------------------------------------------------------------------

def test_masked_metrics_equal_the_numpy_formulas_and_hand_values():
    rng = np.random.default_rng(4)
    t = rng.random((13, 37, 29))
    p = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    mask = rng.random((37, 29)) > 0.6
    slow = M.masked_metrics(p, t, mask, fast=False)
    for a, b, rel in ((p, t, 1e-12), (p.astype(np.float32), t.astype(np.float32), 1e-6)):
        fast = M.masked_metrics(a, b, mask)
        for k in M.MASKED_METRICS:
            assert fast[k] == pytest.approx(slow[k], rel=rel), k
    # the NumPy formulas, written out here once more
    d = (t - p)[:, mask]
    assert slow["rmse"] == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-12)
    assert slow["ssim"] == pytest.approx(np.mean(M.ssim_map(np.where(mask, p, t), t)[:, mask]))
    # a constant error of 0.1 on the mask: RMSE 0.1, PSNR 20
    off = np.where(mask, t + 0.1, t - 0.4)
    got = M.masked_metrics(off, t, mask)
    assert got["rmse"] == pytest.approx(0.1) and got["psnr"] == pytest.approx(20.0)
    assert all(np.isnan(v) for v in M.masked_metrics(p, t, np.zeros_like(mask)).values())


def test_the_masked_ssim_kernel_equals_the_numpy_map_for_any_window():
    from s2cube.kernels import metrics as fastmetrics

    rng = np.random.default_rng(2)
    t = rng.random((3, 21, 17))
    p = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    mask = rng.random((21, 17)) > 0.5
    mask[0, :] = mask[:, -1] = True  # the edges
    for taps in (M.gaussian_window(), M.gaussian_window(5), np.array([0.25, 0.5, 0.25])):
        mu1, mu2, s1, s2, s12 = M._filter(np.stack([t, p, t * t, p * p, t * p]), taps)
        c1, c2 = M.SSIM_C1, M.SSIM_C2
        ssim = ((2 * mu1 * mu2 + c1) * (2 * (s12 - mu1 * mu2) + c2)) / (
            (mu1**2 + mu2**2 + c1) * ((s1 - mu1**2) + (s2 - mu2**2) + c2))
        got = fastmetrics.ssim_masked_sum(p, t, taps, c1, c2, mask)
        assert got == pytest.approx(ssim[:, mask].sum(), rel=1e-12)


def _truth(ds, plan):
    """(n, T, band, P, P) reflectance of every series, and its scored pixels."""
    frames = [S.series_frames(ds, plan, k) for k in range(len(plan))]
    return np.stack([f.s2 for f in frames]), np.stack([f.scored for f in frames])


def test_only_the_gapped_clear_pixels_are_scored(ds, plan):
    truth, scored = _truth(ds, plan)
    assert scored.any()
    rng = np.random.default_rng(0)
    garbage = rng.random(truth.shape).astype(np.float32) * 3
    garbage[..., 0, 0] = np.nan
    pred = np.where(scored[:, :, None], truth, garbage)  # the truth there, garbage elsewhere
    result = ds.s2cube.evaluate_series(pred, plan)
    frames = result.frames
    assert len(frames) == sum(len(g) for g in plan["gaps"])
    assert (frames["rmse"].dropna() == 0).all() and (frames["mae"].dropna() == 0).all()
    assert np.isinf(frames["psnr"].dropna()).all()
    np.testing.assert_allclose(frames["ssim"].dropna(), 1.0, atol=1e-12)
    np.testing.assert_allclose(frames["sam_deg"].dropna(), 0.0, atol=1e-4)
    assert frames["rmse"].notna().sum() == int((frames["pixels"] > 0).sum())
    # the same garbage on the scored pixels is scored as garbage
    bad = ds.s2cube.evaluate_series(np.where(scored[:, :, None], garbage, truth), plan)
    assert (bad.frames["rmse"].dropna() > 0.1).all()


def test_evaluate_series_scores_each_frame_and_aggregates(ds, plan):
    pred = ds.s2cube.series_baseline(plan, "linear")
    result = ds.s2cube.evaluate_series(pred, plan)
    truth, scored = _truth(ds, plan)
    f = result.frames
    for k in (0, len(plan) - 1):
        s = plan.iloc[k]
        arr = pred.sel(roi=s.roi).isel(_patch(ds, s)).values
        for slot in s.gaps:
            t = s.slots.index(slot)
            want = M.masked_metrics(arr[t], truth[k, t], scored[k, t])
            row = f[(f["sdx"] == plan.index[k]) & (f["slot"] == slot)].iloc[0]
            assert row["pixels"] == scored[k, t].sum()
            for m in M.MASKED_METRICS:
                assert row[m] == pytest.approx(want[m], rel=1e-12, nan_ok=True), m
    # the same numbers from an array in plan order
    arr = np.stack([pred.sel(roi=s.roi).isel(_patch(ds, s)).values for s in plan.itertuples()])
    pd.testing.assert_frame_equal(ds.s2cube.evaluate_series(arr, plan).frames, f)
    per_series = result.per_series
    assert len(per_series) == len(plan)
    np.testing.assert_allclose(per_series["rmse"].to_numpy(),
                               f.groupby("sdx")["rmse"].mean().to_numpy())
    assert set(result.per_region.index) == {"africa", "asiaEast"}
    assert set(result.per_split.index) == {"test", "train"}
    assert list(result.per_roi.index.names) == ["split", "region", "roi"]
    assert result.overall["rmse"] == pytest.approx(f["rmse"].mean())
    # a series left unpredicted (all NaN) is left out
    part = ds.s2cube.series_baseline(plan.head(2), "median")
    assert set(ds.s2cube.evaluate_series(part, plan).frames["sdx"]) == set(plan.index[:2])
    with pytest.raises(ValueError, match="one series per plan row"):
        ds.s2cube.evaluate_series(arr[:2], plan)


def test_scoring_reads_only_the_gapped_frames(small_cube, plan):
    ds = s2cube.open_cube(small_cube)
    two = plan.head(2)
    pred = ds.s2cube.series_baseline(two, "nearest").compute()
    _ = ds.s2.isel(roi=0, time=0, y=0, x=0).values  # the small arrays, read once per process
    with reader.counting() as stats:
        ds.s2cube.evaluate_series(pred, two)
    frames = sum(len(g) for g in two["gaps"])
    p = ds.attrs["patch_size"]
    assert stats.by_array["s2"] < frames * 13 * p * p * 2
    assert stats.chunks <= 3 * frames  # per gapped frame: its s2, its mask, the donor's mask


def test_series_scores_on_a_distributed_cluster_equal_the_local_ones(ds, plan, dask_client):
    import dask

    pred = ds.s2cube.series_baseline(plan, "median")
    with dask.config.set(scheduler="dask.distributed"):  # the session's client
        remote = ds.s2cube.evaluate_series(pred, plan)
    with dask.config.set(scheduler="threads"):
        local = ds.s2cube.evaluate_series(pred, plan)
    pd.testing.assert_frame_equal(remote.frames, local.frames)


def test_the_plans_detector_decides_clouds_and_gaps(ds):
    plan = ds.s2cube.series_plan(split="test", detector="cloud_cloudshadow_mask", n_series=2)
    frames = S.series_frames(ds, plan, 0)
    s = plan.iloc[0]
    bits = ds.cloud_mask.sel(roi=s.roi).isel(_patch(ds, s)).values
    np.testing.assert_array_equal(frames.cloudy, schema.cloudy(bits, "cloud_cloudshadow_mask"))
