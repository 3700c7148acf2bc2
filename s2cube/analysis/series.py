"""Seq2seq: the series baselines and the scoring of a series plan (archive.md sec. 7).

A series plan (:mod:`s2cube.plans.series`) names, by label, the series (one patch over a
run of slots), the clear frames that get a synthetic gap and the real cloud masks (the
*donors*, from the same ROI) laid over them. Everything here reads the stored frames the
plan names, by the read path of :mod:`s2cube.io.view` (checksums verified), one dask task
per series:

- :func:`read_series`: one series as arrays: reflectance, the real clouds, the synthetic
  gaps, the frames' validity and dates, and (on request) the SAR series;
- the baselines (:data:`SERIES_METHODS`): **nearest** (per pixel, the value of the nearest
  frame in time where the pixel is observed), **linear** (per pixel, linear interpolation in
  time between the observations before and after; the nearest one at the ends) and
  **median** (per pixel, the median of the observed values of the series, for every
  frame). A pixel is *observed* when its frame is valid and not blank, it is clear for the
  plan's detector, and no synthetic gap covers it; where a pixel is never observed the
  baselines give ``fill`` (0.75, mosaicing's constant). :func:`series_baseline` makes any of
  them a lazy prediction cube ``(roi, time, band, y, x)``;
- :func:`evaluate_series`: scores predictions on the gapped frames only, on their *scored
  pixels*: under the donor mask and clear in the target frame itself (the protocol scores
  only cloud-free target pixels), with :func:`s2cube.analysis.metrics.masked_metrics`
  (RMSE, MAE, PSNR, SSIM, SAM); one row per gapped frame, means per series, ROI, region,
  split (:class:`SeriesEvaluation`).

Time is the frames' acquisition dates (``s2_date``, days; a missing frame's date is
interpolated from its neighbours' slots), so "nearest" and "linear" weigh real intervals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema
from s2cube.analysis import metrics as M
from s2cube.analysis.baselines import MOSAIC_FILL, _with_roi, graph_array, to_reflectance
from s2cube.kernels.median import clear_median
from s2cube.select import align_cells, patch_size

logger = logging.getLogger(__name__)

SERIES_METHODS = ("nearest", "linear", "median")
#: the columns of a scored frame before the metrics: predicted (1, or NaN), scored pixels,
#: the share of the frame under the gap
_HEAD = ("predicted", "pixels", "gap_fraction")


# --- one series as arrays ------------------------------------------------------------------

@dataclass(frozen=True)
class SeriesFrames:
    """One series read from the cube (``T`` frames of ``P × P`` pixels).

    ``s2`` ``(T, B, P, P)`` float32 reflectance (``clip(DN, 0, 10000) / 10000``; the Dataset's
    bands); ``cloudy`` ``(T, P, P)`` the real clouds of the plan's detector; ``gap`` ``(T, P,
    P)`` the synthetic gaps (the donor masks, on the gapped frames only); ``valid`` ``(T,)``
    frames that exist and are not blank; ``days`` ``(T,)`` float64 acquisition days;
    ``gapped`` the gapped frames (indices into the series); ``s1`` ``(T, 2, P, P)`` float32 dB
    (NaN kept) and ``valid_s1`` ``(T,)`` when read.
    """

    s2: np.ndarray
    cloudy: np.ndarray
    gap: np.ndarray
    valid: np.ndarray
    days: np.ndarray
    gapped: np.ndarray
    s1: np.ndarray | None = None
    valid_s1: np.ndarray | None = None

    @property
    def observed(self) -> np.ndarray:
        """``(T, P, P)``: the pixels a method may use (valid frame, clear, not under a gap)."""
        return self.valid[:, None, None] & ~self.cloudy & ~self.gap

    @property
    def scored(self) -> np.ndarray:
        """``(T, P, P)``: the pixels scored: under a synthetic gap and clear in the frame."""
        return self.gap & ~self.cloudy & self.valid[:, None, None]

    def cloudy_input(self) -> np.ndarray:
        """The series a method is given: the reflectance with NaN where not observed."""
        return np.where(self.observed[:, None], self.s2, np.float32(np.nan))


def frame_days(dates: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Days (float64) of each frame from its dates; NaT interpolated over the slot labels.

    Without any date the slot labels themselves are the time axis.
    """
    d = np.asarray(dates).astype("datetime64[D]")
    s = np.asarray(slots, np.float64)
    ok = ~np.isnat(d)
    if not ok.any():
        return s.copy()
    days = d[ok].astype(np.int64).astype(np.float64)
    if ok.all():
        return days
    if ok.sum() == 1:
        return np.full(s.shape, days[0]) + (s - s[ok][0])
    return _extrap(s, s[ok], days)


def _extrap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Linear interpolation, extended linearly beyond the ends (dates keep increasing)."""
    out = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


def read_series(source, detector: str, roi: int, row: int, col: int, slots: tuple[int, ...],
                gapped: tuple[int, ...], donors: tuple[tuple[int, int, int], ...], bands=None,
                *, s1: bool = False, polarizations=None) -> SeriesFrames:
    """One series by stored positions (``slots``, donors as ``(row, col, slot)`` of the ROI).

    ``gapped`` are indices into ``slots``; ``bands`` selects the Dataset's bands of a stored
    S2 frame (None: all); ``polarizations`` the same for S1.
    """
    mask_var = schema.mask_source(detector)
    at = [int(t) for t in slots]
    dn = source.frames("s2", roi, row, col, at, None if bands is None else (bands,))
    x = to_reflectance(dn)
    del dn
    cloudy = schema.cloudy(source.frames(mask_var, roi, row, col, at), detector)
    gap = np.zeros_like(cloudy)
    for k, (r, c, t) in zip(gapped, donors):
        gap[int(k)] = schema.cloudy(source.frames(mask_var, roi, int(r), int(c), [int(t)])[0],
                                    detector)
    valid = source.small("valid_s2")[roi, at, row, col].astype(bool)
    if "blank" in source.layouts:
        valid &= ~source.small("blank")[roi, at, row, col].astype(bool)
    days = frame_days(source.small("s2_date")[roi, at, row, col], np.asarray(at))
    s1_frames = valid_s1 = None
    if s1:
        s1_frames = source.frames("s1", roi, row, col, at,
                                  None if polarizations is None else (polarizations,))
        s1_frames = s1_frames.astype(np.float32, copy=False)
        valid_s1 = source.small("valid_s1")[roi, at, row, col].astype(bool)
    return SeriesFrames(x, cloudy, gap, valid, days, np.asarray(gapped, np.int64), s1_frames,
                        valid_s1)


#: the stored positions of one series, as :func:`read_series` takes them after ``source`` and
#: ``detector``: ``(roi, row, col, slots, gapped, donors)``
_SeriesArgs = tuple[int, int, int, tuple[int, ...], tuple[int, ...],
                   tuple[tuple[int, int, int], ...]]


def _series_args(view, plan, k: int) -> _SeriesArgs:
    """The stored positions :func:`read_series` takes for series ``k`` of a resolved plan."""
    roi = int(view.roi[plan.roi[k]])
    donors = tuple((int(view.row[r]), int(view.col[c]), int(view.time[t])) for r, c, t in
                   zip(plan.donor_row[k], plan.donor_col[k], plan.donor_time[k]))
    return (roi, int(view.row[plan.row[k]]), int(view.col[plan.col[k]]),
            tuple(int(view.time[t]) for t in plan.slots[k]),
            tuple(int(g) for g in plan.gaps[k]), donors)


def series_frames(ds: xr.Dataset, plan: Any, k: int = 0, *, s1: bool = False) -> SeriesFrames:
    """Series ``k`` (a row position) of ``plan`` read from ``ds``'s cube (computes: reads it).

    Raises
    ------
    PlanError
        The plan names what ``ds`` does not hold.
    """
    from s2cube.io.view import view_of
    from s2cube.plans.series import resolve_series

    one = align_cells(_with_roi(ds))
    plan = resolve_series(one, plan)
    variables = ("s2", schema.mask_source(plan.detector), *(("s1",) if s1 else ()))
    view = view_of(one, variables=variables, small=())
    return read_series(view.source, plan.detector, *_series_args(view, plan, int(k)),
                       view.band_select(), s1=s1,
                       polarizations=None if view.polarization is None else view.polarization)


# --- the baselines, pure NumPy -------------------------------------------------------------------

def _neighbours(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and pixel, the last observed frame at or before it (-1: none) and the first
    at or after it (T: none); ``observed`` ``(T, M)``."""
    t = observed.shape[0]
    idx = np.arange(t)[:, None]
    prev = np.maximum.accumulate(np.where(observed, idx, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(observed, idx, t)[::-1], axis=0)[::-1]
    return prev, nxt


def _prepare(x: Any, observed: Any, days: Any | None):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"a series is (T, band, H, W); got shape {x.shape}")
    t, b, h, w = x.shape
    obs = np.asarray(observed, bool)
    if obs.shape != (t, h, w):
        raise ValueError(f"observed has shape {obs.shape}; expected {(t, h, w)}")
    d = np.arange(t, dtype=np.float64) if days is None else np.asarray(days, np.float64)
    if d.shape != (t,) or (np.diff(d) < 0).any() or np.isnan(d).any():
        raise ValueError(f"days must be {t} increasing numbers, got {d.tolist()}")
    return x.reshape(t, b, h * w), obs.reshape(t, h * w), d, (t, b, h, w)


def _gather(xf: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """``xf`` ``(T, M)`` at frame ``frame[t, m]`` of each pixel (clipped into range)."""
    return np.take_along_axis(xf, np.clip(frame, 0, xf.shape[0] - 1), axis=0)


def nearest_fill(x: Any, observed: Any, days: Any | None = None,
                 fill: float = MOSAIC_FILL) -> np.ndarray:
    """Per pixel, the value of the nearest frame in time where it is observed.

    ``x`` ``(T, band, H, W)``, ``observed`` ``(T, H, W)``, ``days`` ``(T,)`` increasing (the
    frame index by default). Ties go to the earlier frame; ``fill`` where a pixel is never
    observed. Observed pixels keep their value. float32 ``(T, band, H, W)``.
    """
    xf, obs, d, shape = _prepare(x, observed, days)
    t = shape[0]
    prev, nxt = _neighbours(obs)
    now = d[:, None]
    before = np.where(prev >= 0, now - d[np.clip(prev, 0, t - 1)], np.inf)
    after = np.where(nxt < t, d[np.clip(nxt, 0, t - 1)] - now, np.inf)
    pick = np.where(before <= after, prev, nxt)
    none = ~np.isfinite(np.minimum(before, after))
    out = np.empty((*shape[:2], xf.shape[2]), np.float32)
    for band in range(shape[1]):
        out[:, band] = np.where(none, np.float32(fill), _gather(xf[:, band], pick))
    return out.reshape(shape)


def linear_fill(x: Any, observed: Any, days: Any | None = None,
                fill: float = MOSAIC_FILL) -> np.ndarray:
    """Per pixel, linear interpolation in time between the observations before and after.

    Where only one side has an observation, its value (constant extrapolation); ``fill``
    where a pixel is never observed; observed pixels keep their value. Arguments as
    :func:`nearest_fill`. float32 ``(T, band, H, W)``.
    """
    xf, obs, d, shape = _prepare(x, observed, days)
    t = shape[0]
    prev, nxt = _neighbours(obs)
    has_prev, has_next = prev >= 0, nxt < t
    d0 = d[np.clip(prev, 0, t - 1)]
    d1 = d[np.clip(nxt, 0, t - 1)]
    span = d1 - d0
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(span > 0, (d[:, None] - d0) / span, 0.0)
    weight = np.where(has_prev & has_next, weight, np.where(has_next, 1.0, 0.0))
    none = ~(has_prev | has_next)
    out = np.empty((*shape[:2], xf.shape[2]), np.float32)
    for band in range(shape[1]):
        a = _gather(xf[:, band], prev).astype(np.float64)
        b = _gather(xf[:, band], nxt).astype(np.float64)
        out[:, band] = np.where(none, fill, a + weight * (b - a))
    return out.reshape(shape)


def median_fill(x: Any, observed: Any, days: Any | None = None,
                fill: float = MOSAIC_FILL) -> np.ndarray:
    """Per pixel, the median of its observed values over the series, for every frame.

    The temporal median composite of :func:`s2cube.analysis.baselines.composite` on one
    series (the mean of the two middle values for an even count; the compiled kernel of
    :mod:`s2cube.kernels.median`), repeated over the frames; ``fill`` where a pixel is never
    observed. ``days`` is not used. float32 ``(T, band, H, W)``.
    """
    xf, obs, _, shape = _prepare(x, observed, days)
    med = clear_median(xf, obs)
    med = np.where(np.isnan(med), np.float32(fill), med).astype(np.float32)
    return np.broadcast_to(med.reshape(1, *shape[1:]), shape).copy()


_FILLS = {"nearest": nearest_fill, "linear": linear_fill, "median": median_fill}


def fill_series(frames: SeriesFrames, method: str, fill: float = MOSAIC_FILL) -> np.ndarray:
    """A baseline's reconstruction ``(T, band, P, P)`` of one series read by :func:`read_series`."""
    if method not in _FILLS:
        raise ValueError(f"method {method!r} is not one of {', '.join(SERIES_METHODS)}")
    return _FILLS[method](frames.s2, frames.observed, frames.days, fill)


# --- lazy baselines over a plan --------------------------------------------------------------------

def _baseline_task(method: str, fill: float, detector: str, source, args: _SeriesArgs,
                   bands) -> np.ndarray:
    frames = read_series(source, detector, *args, bands)
    return fill_series(frames, method, fill)[None]


def series_baseline(ds: xr.Dataset, plan: Any, method: str = "linear", *,
                    fill: float = MOSAIC_FILL) -> xr.DataArray:
    """A series baseline's reconstruction of every series of ``plan``, as a lazy cube.

    Returns ``(roi, time, band, y, x)`` float32 reflectance on the Dataset's grid (its ROIs,
    bands and patches) over the plan's slots (``time`` labels), NaN where the plan has no
    series. One dask task per series reads its stored frames, their masks and its donor
    masks (:mod:`s2cube.io.view`: a computed ``s2`` is refused) and fills it.

    Raises
    ------
    PlanError
        The plan names ROIs, patches or slots this Dataset does not hold.
    """
    import dask.base

    from s2cube.io.view import view_of
    from s2cube.plans.series import resolve_series

    if method not in SERIES_METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(SERIES_METHODS)}")
    one = align_cells(_with_roi(ds))
    p = patch_size(one)
    plan = resolve_series(one, plan)
    if plan.table.duplicated(["roi", "row", "col"]).any():
        raise ValueError("the plan has several series on one patch; a prediction cube holds one "
                         "series per patch: split the plan")
    view = view_of(one, variables=("s2", schema.mask_source(plan.detector)), small=())
    bands = view.band_select()
    labels = plan.slot_labels
    n_t, n_band = labels.size, one.sizes["band"]
    n_roi, n_rows, n_cols = one.sizes["roi"], one.sizes["row"], one.sizes["col"]
    name = f"series-{method}-" + dask.base.tokenize(view.url, plan.table, fill,
                                                    view.band.tolist(), one.sizes)
    planned = {(int(i), int(r), int(c)): k
               for k, (i, r, c) in enumerate(zip(plan.roi, plan.row, plan.col))}
    layer: dict = {}
    for i in range(n_roi):
        for r in range(n_rows):
            for c in range(n_cols):
                k = planned.get((i, r, c))
                key = (name, i, 0, 0, r, c)
                if k is None:
                    layer[key] = (np.full, (1, n_t, n_band, p, p), np.nan, np.float32)
                else:
                    layer[key] = (_baseline_task, method, fill, plan.detector, view.source,
                                  _series_args(view, plan, k), bands)
    chunks = ((1,) * n_roi, (n_t,), (n_band,), (p,) * n_rows, (p,) * n_cols)
    data = graph_array(name, layer, [], chunks, np.float32)
    coords = {k: v for k, v in one.coords.items()
              if set(v.dims) <= {"roi", "band", "y", "x"}}
    coords["time"] = ("time", labels)
    out = xr.DataArray(data, dims=("roi", "time", "band", "y", "x"), coords=coords, name=method)
    out.attrs.update(long_name=f"{method} series baseline", units="1", detector=plan.detector)
    return out if "roi" in ds.dims else out.isel(roi=0)


# --- scoring ---------------------------------------------------------------------------------

def score_frames(pred: np.ndarray, target: np.ndarray, scored: np.ndarray,
                 gap: np.ndarray) -> np.ndarray:
    """Rows ``(G, 3 + len(MASKED_METRICS))`` for ``G`` gapped frames.

    ``pred`` and ``target`` ``(G, band, P, P)`` reflectance, ``scored`` and ``gap`` ``(G, P, P)``.
    Columns: predicted (1, or NaN when the frame's prediction is all NaN), scored pixels,
    share of the frame under the gap, then the metrics.
    """
    rows = np.full((pred.shape[0], len(_HEAD) + len(M.MASKED_METRICS)), np.nan)
    for g in range(pred.shape[0]):
        rows[g, 1] = np.count_nonzero(scored[g])
        rows[g, 2] = np.count_nonzero(gap[g]) / gap[g].size
        if pred[g].size and np.isnan(pred[g]).all():
            continue
        rows[g, 0] = 1.0
        m = M.masked_metrics(pred[g], target[g], scored[g])
        rows[g, len(_HEAD):] = [m[k] for k in M.MASKED_METRICS]
    return rows


def _score_task(detector: str, source, args: _SeriesArgs, bands, where: tuple[int, ...],
                pred: np.ndarray) -> np.ndarray:
    """One series: read its gapped frames, their masks and donors; score ``pred[0][where]``."""
    roi, row, col, slots, gapped, donors = args
    sub = tuple(slots[g] for g in gapped)  # read only the gapped frames
    frames = read_series(source, detector, roi, row, col, sub, tuple(range(len(sub))), donors,
                         bands)
    p = np.asarray(pred[0])[list(where)]
    if p.dtype.kind in "ui":
        p = to_reflectance(p)
    return score_frames(p, frames.s2, frames.scored, frames.gap)


def _prediction_blocks(one: xr.Dataset, predictions: Any, plan, p: int):
    """The predictions as a dask array with one block per series, the block of each plan row
    (None: not predicted) and the positions of each row's gapped frames in the block."""
    import dask.array as da

    table = plan.table
    labels = plan.slot_labels
    bands = one.sizes["band"]
    if isinstance(predictions, xr.Dataset):
        names = [n for n in ("prediction", "s2") if n in predictions]
        if not names:
            raise ValueError("the prediction Dataset has no 'prediction' or 's2' variable")
        predictions = predictions[names[0]]
    gap_labels = [tuple(int(labels[g]) for g in gs) for gs in plan.gaps]
    if not isinstance(predictions, xr.DataArray):  # an array in plan order
        shape = tuple(getattr(predictions, "shape", np.shape(predictions)))
        want = (len(table), labels.size, bands, p, p)
        if shape != want:
            raise ValueError(f"predictions have shape {shape}; an array needs one series per "
                             f"plan row (series, time, band, P, P): {want}")
        data = predictions if isinstance(predictions, da.Array) else da.from_array(
            np.asarray(predictions), chunks=(1, -1, -1, -1, -1))
        data = data.rechunk((1, -1, -1, -1, -1))
        keys: list[tuple[Any, int, int, int, int, int] | None] = [
            (data.name, k, 0, 0, 0, 0) for k in range(len(table))]
        return data, keys, [tuple(int(g) for g in gs) for gs in plan.gaps]
    pred = predictions if "roi" in predictions.dims else predictions.expand_dims("roi")
    dims = ("roi", "time", "band", "y", "x")
    if set(pred.dims) != set(dims):
        raise ValueError(f"predictions have dims {pred.dims}; expected {dims} on the cube's "
                         "grid, or an array (series, time, band, P, P) in plan order")
    pred = pred.transpose(*dims)
    if pred.sizes["band"] != bands:
        raise ValueError(f"predictions have {pred.sizes['band']} bands; the Dataset has {bands}")
    if "band" in pred.coords and "band" in one.coords and list(
            schema.as_str(pred["band"].values)) != list(schema.as_str(one["band"].values)):
        pred = pred.sel(band=one["band"].values)
    times = [int(t) for t in np.asarray(pred["time"].values)]
    missing = sorted({g for gs in gap_labels for g in gs} - set(times))
    if missing:
        raise ValueError(f"predictions hold no frame for the gapped slot(s) {missing} (their "
                         f"time labels are {times}); predict the plan's slots")
    rois = list(schema.as_str(pred["roi"].values))
    ys = np.asarray(pred["y"].values) if "y" in pred.coords else np.arange(pred.sizes["y"])
    xs = np.asarray(pred["x"].values) if "x" in pred.coords else np.arange(pred.sizes["x"])
    if ys.dtype.kind not in "iu" or xs.dtype.kind not in "iu":
        raise ValueError("predictions must be on the cube's pixel grid (integer y/x labels)")
    row_at = {int(y) // p: k for k, y in enumerate(ys[::p])}
    col_at = {int(x) // p: k for k, x in enumerate(xs[::p])}
    data = pred.data if isinstance(pred.data, da.Array) else da.from_array(np.asarray(pred.data))
    data = data.rechunk((1, -1, -1, p, p))
    keys = [(data.name, rois.index(s.roi), 0, 0, row_at[int(s.row)], col_at[int(s.col)])
            if s.roi in rois and int(s.row) in row_at and int(s.col) in col_at else None
            for s in table.itertuples()]
    where = [tuple(times.index(g) for g in gs) for gs in gap_labels]
    return data, keys, where


def score_series(ds: xr.Dataset, predictions: Any, plan: Any):
    """Lazy per-frame scores and the table of the frames they score.

    Returns ``(scores, frames)``: a dask array ``(n_frames, 3 + len(MASKED_METRICS))`` (see
    :func:`score_frames`), one block (task) per predicted series, and a DataFrame with one
    row per gapped frame of those series (``sdx``, ``roi``, ``row``, ``col``, ``patch_id``,
    ``split``, ``region``, ``slot``, ``donor_row``, ``donor_col``, ``donor_slot``).
    """
    import dask.base

    from s2cube.io.view import view_of
    from s2cube.plans.series import resolve_series

    one = align_cells(_with_roi(ds))
    p = patch_size(one)
    plan = resolve_series(one, plan)
    view = view_of(one, variables=("s2", schema.mask_source(plan.detector)), small=())
    data, keys, where = _prediction_blocks(one, predictions, plan, p)
    bands = view.band_select()
    name = "evaluate-series-" + dask.base.tokenize(view.url, data.name, plan.table,
                                                   view.band.tolist())
    layer: dict = {}
    sizes: list[int] = []
    rows: list[dict[str, Any]] = []
    table = plan.table
    for k, key in enumerate(keys):
        if key is None or not len(plan.gaps[k]):
            continue
        layer[(name, len(sizes), 0)] = (_score_task, plan.detector, view.source,
                                        _series_args(view, plan, k), bands, where[k], key)
        sizes.append(len(plan.gaps[k]))
        s = table.iloc[k]
        for gl, dr, dc, dt in zip(s["gaps"], s["donor_row"], s["donor_col"], s["donor_slot"]):
            rows.append({"sdx": table.index[k], "roi": s["roi"], "row": int(s["row"]),
                         "col": int(s["col"]), "patch_id": int(s["patch_id"]),
                         "split": s["split"], "region": s["region"], "slot": int(gl),
                         "donor_row": int(dr), "donor_col": int(dc), "donor_slot": int(dt)})
    chunks = (tuple(sizes), (len(_HEAD) + len(M.MASKED_METRICS),))
    scores = graph_array(name, layer, [data], chunks, np.float64)
    return scores, pd.DataFrame(rows, columns=["sdx", "roi", "row", "col", "patch_id", "split",
                                               "region", "slot", "donor_row", "donor_col",
                                               "donor_slot"])


@dataclass(frozen=True)
class SeriesEvaluation:
    """Scores per gapped frame (``frames``) and their means per series, ROI, region, split.

    Every mean is over frames (images), as the reference averages per-image values; frames
    with no scored pixel (the gap fell on the target's own clouds) have NaN scores and are
    left out of the means (``n`` counts the frames with a score).
    """

    frames: pd.DataFrame

    def by(self, *keys: str) -> pd.DataFrame:
        """Means of the per-frame metrics grouped by ``keys`` (``n``: frames scored, ``pixels``)."""
        cols = [c for c in M.MASKED_METRICS if c in self.frames]
        g = self.frames.groupby(list(keys), sort=True)
        out = g[cols].mean()
        out.insert(0, "pixels", g["pixels"].sum().astype(np.int64))
        out.insert(0, "n", g["rmse"].count())
        return out

    @property
    def per_series(self) -> pd.DataFrame:
        return self.by("sdx", "roi", "row", "col")

    @property
    def per_roi(self) -> pd.DataFrame:
        return self.by("split", "region", "roi")

    @property
    def per_region(self) -> pd.DataFrame:
        return self.by("region")

    @property
    def per_split(self) -> pd.DataFrame:
        return self.by("split")

    @property
    def overall(self) -> pd.Series:
        """The mean of every metric over all scored frames."""
        cols = [c for c in M.MASKED_METRICS if c in self.frames]
        return self.frames[cols].mean().rename("mean")


def evaluate_series(ds: xr.Dataset, predictions: Any, plan: Any) -> SeriesEvaluation:
    """Score series predictions on the gapped, cloud-free pixels of a series plan (computes).

    Parameters
    ----------
    predictions
        Reflectance in [0, 1] as float, or DN as integers: a prediction cube ``(roi, time,
        band, y, x)`` on the cube's grid holding the plan's gapped slots (by ``time`` label;
        :func:`series_baseline` gives one), or an array ``(n_series, T, band, P, P)`` (NumPy,
        dask, array-like) holding plan row ``k``'s series over the plan's slots at ``k``.
        Series without a prediction, and frames whose prediction is all NaN, are left out.
    plan
        A series plan (:mod:`s2cube.plans.series`); its detector says which pixels are clouds.

    Returns
    -------
    SeriesEvaluation
        ``.frames`` (one row per scored gapped frame), ``.per_series``, ``.per_roi``,
        ``.per_region``, ``.per_split``, ``.overall``.

    Raises
    ------
    PlanError
        The plan names ROIs, patches or slots this Dataset does not hold.
    """
    scores, frames = score_series(ds, predictions, plan)
    ncol = len(_HEAD) + len(M.MASKED_METRICS)
    values = np.asarray(scores.compute()) if len(frames) else np.zeros((0, ncol))
    keep = values[:, 0] == 1.0
    out = frames.loc[keep].reset_index(drop=True)
    out["pixels"] = values[keep, 1].astype(np.int64)
    out["gap_fraction"] = values[keep, 2]
    for j, metric in enumerate(M.MASKED_METRICS):
        out[metric] = values[keep, len(_HEAD) + j]
    logger.info("scored %d of %d gapped frames", int(keep.sum()), len(frames))
    return SeriesEvaluation(out)
