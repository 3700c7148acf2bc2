"""Every verb reads exactly what its Dataset holds: a selection matrix checked against NumPy.

For each selection — split, region, ROIs (reordered), a slot range, a band subset, whole
patches of the grid, and combinations — every verb (``batches``, ``sample_plan``,
``baseline``, ``composite``, ``evaluate``, ``cloudiness``, ``patches``, ``quicklook``) is
compared with NumPy on the same arrays read by plain zarr (``xr.open_zarr``, no s2cube
reader), by label. Plans name slots by ``time`` label, so one plan scores the same on any
Dataset that holds its slots; what a verb cannot honour is refused, saying why.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import s2cube
from s2cube import schema
from s2cube.analysis import baselines as B
from s2cube.errors import PlanError, SelectionError
from s2cube.plans import rules

pytestmark = pytest.mark.usefixtures("local_threads")

SELECTIONS = {
    "all": lambda ds: ds,
    "split test": lambda ds: ds.s2cube.sel_split("test"),
    "region africa": lambda ds: ds.s2cube.sel_region("africa"),
    "rois reordered": lambda ds: ds.s2cube.sel_roi(["ROIs2017_8", "ROIs1868_73"]),
    "slots 10-19": lambda ds: ds.isel(time=slice(10, 20)),
    "bands RGB": lambda ds: ds.sel(band=["B4", "B3", "B2"]),
    "train, some slots, 2 bands": lambda ds: ds.s2cube.sel_split("train").isel(
        time=[2, 5, 7, 9, 11, 13, 17, 21, 25]).sel(band=["B8", "B4", "B3", "B2"]),
    "whole patches": lambda ds: ds.isel(y=slice(32, 96), x=slice(0, 64)),
}


@pytest.fixture(scope="module")
def full(small_cube):
    return s2cube.open_cube(small_cube)


@pytest.fixture(scope="module")
def plain(small_cube):
    return xr.open_zarr(small_cube)


@pytest.fixture(scope="module", params=list(SELECTIONS))
def case(request, full):
    return request.param, SELECTIONS[request.param](full)


def _p(ds) -> int:
    return int(ds.attrs["patch_size"])


def _frame(plain, var, roi, t, row, col, p, bands=None):
    """One frame by labels from plain zarr: ROI name, time label, patch labels, band names."""
    one = plain[var].isel(roi=list(plain.roi.values).index(roi))
    one = one.isel(time=int(t), y=slice(row * p, (row + 1) * p), x=slice(col * p, (col + 1) * p))
    if bands is not None:
        one = one.isel(band=[list(schema.BANDS).index(b) for b in bands])
    return one.values


def _labels(ds):
    return (list(np.atleast_1d(ds.roi.values)), [int(t) for t in ds.time.values],
            list(ds.band.values), [int(r) for r in ds.row.values], [int(c) for c in ds.col.values])


def _held(ds, p):
    """(roi, row, col) labels of the patches the selection holds (whole pixels), with ids."""
    rois, _, _, rows, cols = _labels(ds)
    ys, xs = set(ds.y.values.tolist()), set(ds.x.values.tolist())
    pid = ds.patch_id.transpose("roi", "row", "col").values
    out = []
    for i, r in enumerate(rois):
        for a, row in enumerate(rows):
            for b, col in enumerate(cols):
                whole = all(v in ys for v in range(row * p, row * p + p)) and \
                        all(v in xs for v in range(col * p, col * p + p))
                if whole and pid[i, a, b] >= 0:
                    out.append((r, row, col, int(pid[i, a, b])))
    return out


# --- sample_plan and batches -------------------------------------------------------------------

def test_sample_plan_chooses_among_the_selections_slots_by_label(case, plain):
    name, ds = case
    p = _p(ds)
    _rois, times, *_ = _labels(ds)
    plan = ds.s2cube.sample_plan(split="all", n_input_samples=3)
    held = _held(ds, p)
    assert sorted(zip(plan.roi, plan.row, plan.col)) == sorted((r, y, x) for r, y, x, _ in held)
    for s in plan.itertuples():
        assert set(s.inputs) <= set(times) and s.target in times, name
        # the reference fixed sampler on the coverage of exactly these slots (plain zarr)
        i = list(plain.roi.values).index(s.roi)
        cov = plain.coverage.sel(detector="s2cloudless_mask").isel(roi=i).sel(
            row=s.row, col=s.col).values[times]
        blank = plain.blank.isel(roi=i).sel(row=s.row, col=s.col).values[times]
        ref = rules.fixed(np.where(blank, np.float32(1), cov)[None], 3)
        assert s.inputs == tuple(times[t] for t in ref.inputs[0]), name
        assert s.target == times[ref.target[0]], name


def test_batches_stream_exactly_the_selections_frames(case, plain):
    name, ds = case
    p = _p(ds)
    _rois, times, bands, _, _ = _labels(ds)
    held = {(r, y, x): pid for r, y, x, pid in _held(ds, p)}
    seen = set()
    for batch in ds.s2cube.batches(split="all", sampler="fixed", batch_size=4, shuffle=False,
                                   rescale_method=None):
        assert batch["input"]["S2"].shape[2] == len(bands), name
        for j, roi in enumerate(batch["roi"]):
            r, c = int(batch["row"][j]), int(batch["col"][j])
            assert (roi, r, c) in held and batch["patch_id"][j] == held[(roi, r, c)], name
            seen.add((roi, r, c))
            for part in ("input", "target"):
                for k, t in enumerate(batch[part]["idx"][j]):
                    assert int(t) in times, name
                    want = _frame(plain, "s2", roi, t, r, c, p, bands)
                    np.testing.assert_array_equal(batch[part]["S2"][j, k], want, err_msg=name)
                    if part == "input":
                        want_s1 = _frame(plain, "s1", roi, t, r, c, p)
                        np.testing.assert_array_equal(batch[part]["S1"][j, k], want_s1)
    assert seen == set(held), name


def test_random_sampler_and_seq2seq_stay_inside_the_slot_selection(full):
    sub = full.isel(time=slice(10, 20))
    for _ in range(3):
        for batch in sub.s2cube.batches(split="all", sampler="random", batch_size=8, seed=_):
            for part in ("input", "target"):
                assert set(np.unique(batch[part]["idx"])) <= set(range(10, 20))
    batch = next(iter(sub.s2cube.batches(split="all", mode="seq2seq", batch_size=4)))
    assert batch["S2"].shape[1] == 10 and (batch["idx"] == np.arange(10, 20)).all()


# --- plans by label ---------------------------------------------------------------------------

def test_the_same_plan_gives_the_same_scores_on_any_dataset_holding_its_slots(full):
    plan = full.s2cube.sample_plan(split="all", n_input_samples=3)
    p = _p(full)
    plan.loc[plan.index[::2], "target"] = 25  # some samples need a slot beyond the selection
    sub = full.isel(time=slice(0, 20))
    inside = plan[[max(*s.inputs, s.target) < 20 for s in plan.itertuples()]]
    assert 0 < len(inside) < len(plan)
    pred = full.s2cube.baseline(inside, "mosaic").compute()
    on_full = full.s2cube.evaluate(pred, inside).samples
    on_sub = sub.s2cube.evaluate(pred, inside).samples
    pd.testing.assert_frame_equal(on_full, on_sub)
    # and the baseline itself is the same on the selection
    np.testing.assert_array_equal(sub.s2cube.baseline(inside, "mosaic").values, pred.values)
    # a plan naming slots the selection lacks is refused, naming them
    with pytest.raises(PlanError, match=r"slot\(s\) \[25\]"):
        sub.s2cube.evaluate(pred, plan)
    with pytest.raises(PlanError, match="ROIs2017_8"):
        full.s2cube.sel_split("test").s2cube.baseline(plan, "mosaic")
    # saved and loaded as a plain file, it is the same plan
    from s2cube.plans.table import load_plan, save_plan

    path = "plan.csv"
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plan.csv")
        save_plan(inside, path)
        back = load_plan(path)
    pd.testing.assert_frame_equal(full.s2cube.evaluate(pred, back).samples, on_full,
                                  check_dtype=False)
    assert p > 0


def test_a_plan_made_on_a_selection_names_slots_by_label(full):
    plan = full.isel(time=slice(10, 20)).s2cube.sample_plan(split="all")
    assert all(10 <= t < 20 for s in plan.itertuples() for t in (*s.inputs, s.target))
    assert plan.iloc[0].inputs == (10, 11, 12)  # the reference's first slots, by label


# --- baselines, composite, evaluate ------------------------------------------------------------

def test_baselines_and_evaluate_equal_numpy_on_the_selection(case, plain):
    name, ds = case
    p = _p(ds)
    rois, times, bands, _, _ = _labels(ds)
    if len(times) < 4:
        pytest.skip("needs 4 slots")
    plan = ds.s2cube.sample_plan(split="all").head(3)
    pred = ds.s2cube.baseline(plan, "mosaic")
    assert list(pred.band.values) == bands and list(np.atleast_1d(pred.roi.values)) == rois
    result = ds.s2cube.evaluate(pred, plan).samples
    for s in plan.itertuples():
        dn = np.stack([_frame(plain, "s2", s.roi, t, s.row, s.col, p, bands) for t in s.inputs])
        bits = np.stack([_frame(plain, "cloud_mask", s.roi, t, s.row, s.col, p) for t in s.inputs])
        masks = ((bits & 1) > 0).astype(np.uint8)
        want = B.mosaic(B.to_reflectance(dn), masks)
        got = pred.sel(roi=s.roi).isel(y=[list(ds.y.values).index(v) for v in
                                          range(s.row * p, s.row * p + p)],
                                       x=[list(ds.x.values).index(v) for v in
                                          range(s.col * p, s.col * p + p)]).values
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
        from s2cube.analysis import metrics as M

        target = B.to_reflectance(_frame(plain, "s2", s.roi, s.target, s.row, s.col, p, bands))
        ref = M.image_metrics(want, target, masks)
        row = result.loc[s.Index]
        assert row["rmse"] == pytest.approx(ref["rmse"], rel=1e-6), name
        assert row["ssim"] == pytest.approx(ref["ssim"], rel=1e-6), name


def test_composite_equals_numpy_on_the_selection(case, plain):
    name, ds = case
    p = _p(ds)
    _rois, times, bands, _rows, _cols = _labels(ds)
    comp = ds.s2cube.composite().compute()
    held = _held(ds, p)
    roi, row, col, _ = held[-1]
    i = list(plain.roi.values).index(roi)
    ys, xs = slice(row * p, row * p + p), slice(col * p, col * p + p)
    dn = plain.s2.isel(roi=i, time=times, y=ys, x=xs).sel(band=bands).values.astype(float)
    ok = (plain.valid_s2 & ~plain.blank).isel(roi=i, time=times).sel(row=row, col=col).values
    clear = ok[:, None, None] & ((plain.cloud_mask.isel(roi=i, time=times, y=ys, x=xs).values
                                  & 1) == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = np.nanmedian(np.where(clear[:, None], dn, np.nan), axis=0) / 10000
    got = comp.sel(roi=roi).sel(y=list(range(row * p, row * p + p)),
                                x=list(range(col * p, col * p + p))).values
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True, err_msg=name)
    assert list(comp.band.values) == bands


# --- cloudiness, patches, quicklook -------------------------------------------------------------

def test_cloudiness_patches_and_quicklook_follow_the_selection(case, plain):
    name, ds = case
    p = _p(ds)
    rois, times, bands, rows, cols = _labels(ds)
    got = ds.s2cube.cloudiness(by="roi").compute()
    for roi in rois:
        i = list(plain.roi.values).index(roi)
        cov = plain.coverage.sel(detector="s2cloudless_mask").isel(roi=i, time=times).sel(
            row=rows, col=cols).values
        valid = plain.valid_s2.isel(roi=i, time=times).sel(row=rows, col=cols).values
        assert float(got.mean_coverage.sel(roi=roi)) == pytest.approx(
            float(np.nanmean(cov[valid])), rel=1e-6), name
        assert int(got.frames.sel(roi=roi)) == int(valid.sum())
    flat = ds.s2cube.patches(["s2", "coverage"])
    held = _held(ds, p)
    assert flat.sizes["patch"] == len(held) and list(flat.band.values) == bands
    k = len(held) - 1
    roi, row, col = str(flat.roi.values[k]), int(flat.row.values[k]), int(flat.col.values[k])
    np.testing.assert_array_equal(flat.s2.isel(patch=k, time=0).values,
                                  _frame(plain, "s2", roi, times[0], row, col, p, bands))
    if {"B4", "B3", "B2"} <= set(bands):
        look = ds.s2cube.quicklook(rois[0], times[-1])
        assert look.title.endswith(f"slot {times[-1]}")
    with pytest.raises(SelectionError, match="time labels"):
        ds.s2cube.quicklook(rois[0], 31)
    if times[0] > 0:
        with pytest.raises(SelectionError, match="not in this Dataset"):
            ds.s2cube.quicklook(rois[0], 0)


# --- what cannot be honoured is refused ----------------------------------------------------------

def test_loader_refusals_say_why(full, small_cube):
    p = _p(full)
    with pytest.raises(SelectionError, match="cuts patch"):
        full.isel(y=slice(0, p + 3)).s2cube.batches()
    with pytest.raises(SelectionError, match="computed"):
        full.assign(s2=full.s2 + 1).s2cube.batches()
    with pytest.raises(SelectionError, match=r"computed|cast"):
        full.assign(s2=full.s2.astype("int32")).s2cube.batches()
    with pytest.raises(SelectionError, match=r"no sample of split='val'.*ROIs1868_73"):
        full.s2cube.batches(split="val")
    with pytest.raises(SelectionError, match="holds 2 slot"):
        full.isel(time=[0, 1]).s2cube.batches(n_input_samples=3)
    with pytest.raises(SelectionError, match="no patch of split='train'"):
        full.s2cube.sel_split("test").s2cube.sample_plan(split="train")
    with pytest.raises(SelectionError, match="cuts patch"):
        full.isel(x=slice(5, 40)).s2cube.composite()
