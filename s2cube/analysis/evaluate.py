"""Score predictions against a plan's targets (archive.md sec. 7), in parallel with dask.

:func:`evaluate` resolves the plan against the Dataset it is called on (ROIs, patches and
``time`` labels: the same plan scores the same samples on any Dataset that holds them),
builds one dask task per sample that reads the sample's target frame and its inputs'
masks (the stored frames the Dataset's labels name, checksums verified) and scores its
prediction, and returns a table per sample with means per ROI, region and split.
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
from s2cube.analysis.baselines import _with_roi, frame_blocks, graph_array, to_reflectance
from s2cube.select import align_cells, patch_size

logger = logging.getLogger(__name__)


def _prediction_blocks(one: xr.Dataset, predictions: Any, plan, p: int):
    """The predictions as a dask array with one block per image, and each plan row's block.

    Three layouts: the cube's grid ``(roi, band, y, x)``; the flat view of
    :func:`s2cube.select.patches` ``(patch, band, py, px)`` with its ``roi``/``row``/``col``
    coordinates; or an array ``(n, band, P, P)`` in the order of the plan's rows. Returns
    ``(array, keys)`` with ``keys[k]`` the block of plan row ``k`` or None (not predicted).
    """
    table = plan.table
    if isinstance(predictions, xr.Dataset):
        names = [n for n in ("prediction", "s2") if n in predictions]
        if not names:
            raise ValueError("the prediction Dataset has no 'prediction' or 's2' variable")
        predictions = predictions[names[0]]
    bands = one.sizes["band"]
    if not isinstance(predictions, xr.DataArray):  # an array in plan order
        shape = tuple(getattr(predictions, "shape", np.shape(predictions)))
        if shape != (len(table), bands, p, p):
            raise ValueError(f"predictions have shape {shape}; an array needs one image per "
                             f"plan row: {(len(table), bands, p, p)}")
        data = frame_blocks(xr.DataArray(predictions, dims=("sample", "band", "py", "px")),
                            ("sample", "band", "py", "px"), p)
        data = data.rechunk((1, bands, p, p))
        return data, [(data.name, k, 0, 0, 0) for k in range(len(table))]
    if "time" in predictions.dims:
        raise ValueError("predictions hold a 'time' dim; seq2point predictions are one image per "
                         "patch: select the predicted slot")
    if "band" in predictions.dims and "band" in predictions.coords and "band" in one.coords:
        if list(schema.as_str(predictions["band"].values)) != list(schema.as_str(one["band"].values)):
            predictions = predictions.sel(band=one["band"].values)
    if "patch" in predictions.dims:  # the flat view
        want = ("patch", "band", "py", "px")
        if set(predictions.dims) != set(want) or not {"roi", "row", "col"} <= set(predictions.coords):
            raise ValueError(f"flat predictions need dims {want} and roi/row/col coordinates on "
                             f"'patch' (as ds.s2cube.patches() gives); got {predictions.dims}")
        pred = predictions.transpose(*want)
        _check_sizes(pred, {"band": bands, "py": p, "px": p})
        where = {(str(r), int(y), int(x)): k for k, (r, y, x) in enumerate(zip(
            schema.as_str(pred["roi"].values), pred["row"].values, pred["col"].values))}
        data = frame_blocks(pred, want, p).rechunk((1, bands, p, p))
        return data, [None if (k := where.get((s.roi, int(s.row), int(s.col)))) is None
                      else (data.name, k, 0, 0, 0) for s in table.itertuples()]
    pred = predictions if "roi" in predictions.dims else predictions.expand_dims("roi")
    want = ("roi", "band", "y", "x")
    if set(pred.dims) != set(want):
        raise ValueError(f"predictions have dims {pred.dims}; expected {want} on the cube's grid, "
                         "('patch', 'band', 'py', 'px') as patches() gives, or an array in plan order")
    pred = pred.transpose(*want)
    _check_sizes(pred, {"band": bands})
    rois = list(schema.as_str(pred["roi"].values))
    ys = np.asarray(pred["y"].values) if "y" in pred.coords else np.arange(pred.sizes["y"])
    xs = np.asarray(pred["x"].values) if "x" in pred.coords else np.arange(pred.sizes["x"])
    if ys.dtype.kind not in "iu" or xs.dtype.kind not in "iu":
        raise ValueError("predictions must be on the cube's pixel grid (integer y/x labels)")
    row_at = {int(y) // p: k for k, y in enumerate(ys[::p])}
    col_at = {int(x) // p: k for k, x in enumerate(xs[::p])}
    data = frame_blocks(pred, want, p)
    return data, [(data.name, rois.index(s.roi), 0, row_at[int(s.row)], col_at[int(s.col)])
                  if s.roi in rois and int(s.row) in row_at and int(s.col) in col_at else None
                  for s in table.itertuples()]


def _check_sizes(pred: xr.DataArray, sizes: dict[str, int]) -> None:
    for d, n in sizes.items():
        if pred.sizes[d] != n:
            raise ValueError(f"predictions have {pred.sizes[d]} {d}; the Dataset has {n}")


def _score(detector: str, target: np.ndarray, raws: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One sample's row: 1 and the metrics, or NaN where the prediction is all NaN.

    ``target`` ``(band, P, P)`` (DN as integers, or reflectance), ``raws`` the inputs' stored
    masks ``(n, P, P)``, ``pred`` ``(band, P, P)``.
    """
    if pred.dtype.kind in "ui":
        pred = to_reflectance(pred)
    if target.dtype.kind in "ui":
        target = to_reflectance(target)
    if pred.size and np.isnan(pred.flat[0]) and np.isnan(pred).all():  # not predicted
        return np.full((1, len(M.METRICS) + 1), np.nan)
    masks = schema.cloudy(raws, detector).astype(np.uint8)
    row = M.image_metrics(pred, target, masks)
    return np.array([[1.0, *[row[k] for k in M.METRICS]]])


def _score_stored(detector: str, source, mask_var: str, roi: int, row: int, col: int,
                  target: int, inputs: tuple[int, ...], bands, pred: np.ndarray) -> np.ndarray:
    """:func:`_score` of one sample, reading its target frame and input masks by stored
    position (``bands`` selects the Dataset's bands of the target)."""
    dn = source.frames("s2", roi, row, col, [target], None if bands is None else (bands,))[0]
    raws = source.frames(mask_var, roi, row, col, list(inputs))
    return _score(detector, dn, raws, pred[0])


def score_samples(ds: xr.Dataset, predictions: Any, plan: Any, *,
                  detector: str = "s2cloudless_mask"):
    """Lazy ``(n_samples, 1 + len(METRICS))`` dask array of per-sample scores, and its plan.

    Column 0 is 1 where the prediction had values, NaN where the patch was not predicted.
    Samples without a prediction are left out of the returned plan table. Each sample is
    one task that reads its target frame and its inputs' masks (the stored frames the
    Dataset's labels name, see :mod:`s2cube.io.view`) and its prediction block.
    """
    import dask.base

    from s2cube.io.view import view_of
    from s2cube.plans.table import resolve

    mask_var = schema.mask_source(detector)
    one = align_cells(_with_roi(ds))
    p = patch_size(one)
    plan = resolve(one, plan)
    if (plan.target < 0).any():
        raise ValueError("the plan has samples without a target (generic samples); evaluate "
                         "scores seq2point plans")
    view = view_of(one, variables=("s2", mask_var), small=())
    pred, keys = _prediction_blocks(one, predictions, plan, p)
    keep = np.flatnonzero([k is not None for k in keys])
    bands = view.band_select()
    name = "evaluate-" + dask.base.tokenize(view.url, pred.name, plan.table, detector,
                                            view.band.tolist())
    layer = {}
    for n, k in enumerate(keep):
        layer[(name, n, 0)] = (
            _score_stored, detector, view.source, mask_var, int(view.roi[plan.roi[k]]),
            int(view.row[plan.row[k]]), int(view.col[plan.col[k]]),
            int(view.time[plan.target[k]]), tuple(int(view.time[t]) for t in plan.inputs[k]),
            bands, keys[k])
    chunks = ((1,) * len(keep), (len(M.METRICS) + 1,))
    return graph_array(name, layer, [pred], chunks, np.float64), plan.table.iloc[keep]


@dataclass(frozen=True)
class Evaluation:
    """Scores per sample (``samples``) and their means per ROI, region and split."""

    samples: pd.DataFrame
    detector: str

    def by(self, *keys: str) -> pd.DataFrame:
        """Means of the per-sample metrics grouped by ``keys`` (with the sample count ``n``)."""
        cols = [c for c in M.METRICS if c in self.samples]
        g = self.samples.groupby(list(keys), sort=True)
        out = g[cols].mean()
        out.insert(0, "n", g.size())
        return out

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
        """The mean of every metric over all samples (the reference's headline numbers)."""
        cols = [c for c in M.METRICS if c in self.samples]
        return self.samples[cols].mean().rename("mean")


def evaluate(
    ds: xr.Dataset,
    predictions: Any,
    plan: Any = None,
    *,
    detector: str = "s2cloudless_mask",
) -> Evaluation:
    """Score predictions against the targets of ``plan``, in parallel with dask.

    Parameters
    ----------
    predictions
        Reflectance in [0, 1] as float, or DN as integers, in one of three layouts: a
        prediction cube ``(roi, band, y, x)`` on the cube's grid (any subset of ROIs and
        patches); the flat view ``(patch, band, py, px)`` with the ``roi``/``row``/``col``
        coordinates of ``ds.s2cube.patches()``; or an array ``(n, band, P, P)`` (NumPy,
        dask, anything array-like) holding plan row ``k``'s prediction at ``k``. Samples
        without a prediction, or whose prediction is all NaN, are left out.
    plan
        Which slots are inputs and target per sample, by ``time`` label (see
        :mod:`s2cube.plans.table`); by default the reference's fixed sampler with 3 inputs
        on every split of the Dataset (:func:`~s2cube.plans.table.sample_plan`).
    detector
        The detector of the input masks for the cloudy/clear split of RMSE and MAE.

    Returns
    -------
    Evaluation
        ``.samples`` (one row per scored sample, index ``pdx``), ``.per_roi``,
        ``.per_region``, ``.per_split``, ``.overall``.

    Raises
    ------
    PlanError
        The plan names ROIs, patches or slots this Dataset does not hold.
    """
    from s2cube.plans.table import sample_plan

    if plan is None:
        plan = sample_plan(ds, split="all", detector=detector)
    scores, table = score_samples(ds, predictions, plan, detector=detector)
    values = np.asarray(scores.compute()) if len(table) else np.zeros((0, len(M.METRICS) + 1))
    keep = values[:, 0] == 1.0
    cols = [c for c in ("roi", "row", "col", "patch_id", "split", "region", "inputs", "target")
            if c in table]
    out = table.loc[keep, cols].copy()
    for j, metric in enumerate(M.METRICS):
        out[metric] = values[keep, j + 1]
    logger.info("scored %d of %d planned samples", int(keep.sum()), len(table))
    return Evaluation(out, detector)
