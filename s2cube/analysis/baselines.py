"""The reference evaluation protocol (archive.md sec. 7): sample plans, baselines, scoring.

- A *plan* is a small table, one row per sample: ``roi, row, col`` (the patch), ``inputs``
  (slots) and ``target`` (slot); :func:`sample_plan` makes it with the reference samplers
  of :mod:`s2cube.plans.rules` from the stored ``coverage`` (no pixel read), and
  :func:`as_plan` accepts your own.
- Baselines, as the SEN12MS-CR-TS toolbox computes them on reflectance in [0, 1]:
  **least cloudy** (the input with the fewest cloudy pixels, ``np.argsort(...)[0]``) and
  **mosaicing** (per pixel and band the mean of the clear input values; where no input
  is clear the constant 0.75, the toolbox's 0.5 in its [−1, 1] space), plus a temporal
  **median composite** of the clear pixels of whole ROIs.
- :func:`evaluate` scores a prediction cube against the targets, one dask task per
  sample that reads only that sample's chunks, into a table per sample with means per
  ROI, region and split.

Baselines, composites and scores of a Dataset opened by :func:`s2cube.open_cube` read
their frames inside their own tasks (:mod:`s2cube.direct`); other Datasets go through
xarray's graph with the same numbers.

Reflectance follows the reference's default preprocessing: ``clip(DN, 0, 10000) / 10000``.
Cloud masks per detector are those of :func:`s2cube.analysis.stats.cloud_mask` (0 clear, 1 cloudy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import direct, schema
from s2cube.analysis import metrics as M
from s2cube.analysis.stats import _patch_size, mask_from, mask_source, valid_frames
from s2cube.kernels.median import clear_median
from s2cube.select import detector_name, patch_table

logger = logging.getLogger(__name__)

#: Mosaicing's value where no input is clear: 0.5 in the toolbox's [-1, 1] space.
MOSAIC_FILL = 0.75
METHODS = ("least_cloudy", "mosaic")
PLAN_COLUMNS = ("roi", "row", "col", "inputs", "target")


# --- pure NumPy ------------------------------------------------------------------------

def to_reflectance(dn: Any) -> np.ndarray:
    """DN to reflectance as the reference's default preprocessing: ``clip(0, 10000) / 10000``.

    float32; integer DN are clipped before the cast (the same values: they are exact in
    float32), so a frame costs one float array.
    """
    a = np.asarray(dn)
    out = (np.clip(a, 0, 10000).astype(np.float32) if a.dtype.kind in "ui"
           else np.clip(a.astype(np.float32), 0, 10000))
    out /= np.float32(10000)
    return out


def least_cloudy_index(masks: Any) -> int:
    """Index of the input with the fewest cloudy pixels (``np.argsort(sums)[0]``, as the reference)."""
    m = np.asarray(masks, dtype=np.float64)
    return int(np.argsort([m[k].sum() for k in range(m.shape[0])])[0])


def least_cloudy(inputs: Any, masks: Any) -> np.ndarray:
    """The input frame ``(band, H, W)`` with the fewest cloudy pixels of ``masks`` ``(n, H, W)``."""
    x = np.asarray(inputs)
    return x[least_cloudy_index(masks)]


def mosaic(inputs: Any, masks: Any, fill: float = MOSAIC_FILL) -> np.ndarray:
    """Per pixel and band, the mean of the clear inputs (mask 0); ``fill`` where none is clear.

    ``inputs`` ``(n, band, H, W)`` reflectance, ``masks`` ``(n, H, W)``. Returns float32.
    """
    x = np.asarray(inputs, dtype=np.float64)
    clear = (np.asarray(masks) == 0)[:, None]
    clear = np.broadcast_to(clear, x.shape)
    total = np.where(clear, x, 0.0).sum(axis=0)
    count = clear.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / count, fill)
    return out.astype(np.float32)


# --- plans -----------------------------------------------------------------------------

def sample_plan(
    ds: xr.Dataset,
    *,
    split: str = "test",
    region: str = "all",
    detector: str = "s2cloudless_mask",
    **options: Any,
) -> pd.DataFrame:
    """The reference samples of ``split``/``region`` as a plan table (index ``pdx``).

    ``options`` go to :func:`s2cube.plans.rules.make_plan` (``sampler``, ``n_input_samples``,
    ``min_cov``, ``max_cov``, ``stable``, ...). Reads ``patch_id`` and ``coverage`` only.
    """
    from s2cube.plans.rules import make_plan

    table = patch_table(ds, split, region)
    cov = np.asarray(ds["coverage"].sel(detector=detector_name(detector)).values)
    if cov.ndim == 3:
        cov = cov[None]
    series = cov[table["roi_index"].to_numpy(), :, table["row"].to_numpy(), table["col"].to_numpy()]
    plan = make_plan(series.reshape(len(table), -1), **options)
    table["inputs"] = [tuple(int(t) for t in row) for row in plan.inputs]
    table["target"] = plan.target.astype(np.int64)
    table["match"] = plan.match
    return table


def as_plan(ds: xr.Dataset, plan: Any) -> pd.DataFrame:
    """Normalise a plan: a table with ``roi, row, col, inputs, target`` (plus cube positions).

    ``plan`` may be such a table (any extra columns are kept), a list of dicts, a callable
    ``plan(ds)`` returning one, or a ``(PatchIndex, SamplePlan)`` pair of
    :mod:`s2cube.plans.rules`.
    """
    if callable(plan) and not isinstance(plan, pd.DataFrame):
        plan = plan(ds)
    if isinstance(plan, tuple) and len(plan) == 2 and hasattr(plan[1], "inputs"):
        index, sp = plan
        plan = pd.DataFrame({
            "roi": [index.roi_name(i) for i in range(len(index))], "row": index.row,
            "col": index.col, "inputs": [tuple(int(t) for t in r) for r in sp.inputs],
            "target": sp.target})
        plan.index.name = "pdx"
    table = plan.copy() if isinstance(plan, pd.DataFrame) else pd.DataFrame(list(plan))
    missing = [c for c in PLAN_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the plan lacks column(s) {missing}; it needs {list(PLAN_COLUMNS)} "
                         "(make one with s2cube.analysis.baselines.sample_plan)")
    names = list(np.atleast_1d(schema.as_str(ds["roi"].values)))
    unknown = sorted(set(table["roi"].astype(str)) - set(names))
    if unknown:
        raise ValueError(f"the plan names ROI(s) {unknown} that are not in the cube ({names})")
    table["roi"] = table["roi"].astype(str)
    table["roi_index"] = [names.index(r) for r in table["roi"]]
    table["inputs"] = [tuple(int(t) for t in np.atleast_1d(v)) for v in table["inputs"]]
    table["target"] = table["target"].astype(np.int64)
    if "patch_id" not in table:  # reads the small patch_id array
        pid = np.asarray(ds["patch_id"].values)
        pid = pid[None] if pid.ndim == 2 else pid
        table["patch_id"] = pid[table["roi_index"], table["row"], table["col"]]
    if (table["patch_id"] < 0).any():
        bad = table.loc[table["patch_id"] < 0, ["roi", "row", "col"]].head(3).to_dict("records")
        raise ValueError(f"the plan points at cells with no patch, e.g. {bad}")
    for col in ("split", "region"):
        if col not in table:
            table[col] = [getattr(schema.roi_info(r), col) for r in table["roi"]]
    if table.index.name is None:
        table.index.name = "pdx"
    return table


# --- dask plumbing: one task per patch, reading only the chunks it needs --------------------

def _blocked(var: xr.DataArray, chunks: dict[str, int]):
    """``var``'s data as a dask array with exactly ``chunks`` (dims not named: whole)."""
    import dask.array as da

    want = tuple(chunks.get(d, var.sizes[d]) for d in var.dims)
    data = var.data
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=want)
    if data.chunksize != want or any(len(set(c[:-1])) > 1 for c in data.chunks):
        data = data.rechunk(want)
    return data


def _graph_array(name: str, layer: dict, deps: list, chunks: tuple, dtype):
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, chunks=chunks, dtype=dtype)


def _cube_arrays(ds: xr.Dataset, detector: str):
    """The s2 and raw mask dask arrays, one chunk per patch and slot, with ``roi`` kept."""
    p = _patch_size(ds)
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    s2 = _blocked(one["s2"].transpose("roi", "time", "band", "y", "x"),
                  {"roi": 1, "time": 1, "y": p, "x": p})
    raw = one[mask_source(detector)].transpose("roi", "time", "y", "x")
    return s2, _blocked(raw, {"roi": 1, "time": 1, "y": p, "x": p}), p


def _direct_pair(ds: xr.Dataset, detector: str):
    """The direct selections of ``s2`` and the detector's mask source, if both qualify.

    See :mod:`s2cube.direct`: tasks then read their frames themselves, the same values as
    through the xarray graph at a fraction of the cost.
    """
    s2 = direct.selection(ds, "s2")
    raw = direct.selection(ds, mask_source(detector))
    if s2 is None or raw is None or (s2.roi, s2.time) != (raw.roi, raw.time):
        return None
    return s2, raw


def _baseline(method: str, fill: float, detector: str, dn: np.ndarray,
              raw: np.ndarray) -> np.ndarray:
    """One sample's baseline ``(1, band, P, P)`` from DN ``(n, band, P, P)``, raw masks ``(n, P, P)``."""
    x = to_reflectance(dn)
    m = mask_from(raw, detector).astype(np.uint8)
    out = least_cloudy(x, m) if method == "least_cloudy" else mosaic(x, m, fill)
    return np.asarray(out, np.float32)[None]


def _baseline_block(method: str, fill: float, detector: str, s2_blocks: list,
                    raw_blocks: list) -> np.ndarray:
    return _baseline(method, fill, detector, np.concatenate([b[0] for b in s2_blocks], axis=0),
                     np.concatenate([b[0] for b in raw_blocks], axis=0))


def _baseline_direct(method: str, fill: float, detector: str, s2: direct.Selection,
                     raw: direct.Selection, roi: int, row: int, col: int,
                     inputs: tuple[int, ...]) -> np.ndarray:
    """:func:`_baseline_block` reading the sample's frames itself (``roi``, ``inputs``: positions)."""
    dn = s2.frames.read("s2", s2.roi[roi], row, col, [s2.time[t] for t in inputs])
    if not s2.all_bands:
        dn = dn[:, list(s2.band)]
    masks = raw.frames.read(raw.var, raw.roi[roi], row, col, [raw.time[t] for t in inputs])
    return _baseline(method, fill, detector, dn, masks)


def baseline(
    ds: xr.Dataset,
    plan: Any,
    method: str = "mosaic",
    *,
    detector: str = "s2cloudless_mask",
    fill: float = MOSAIC_FILL,
) -> xr.DataArray:
    """A baseline's predictions for the samples of ``plan``, as a lazy prediction cube.

    Returns ``(roi, band, y, x)`` float32 reflectance on the cube's grid, NaN where the
    plan has no sample; each patch is one task reading only its input chunks.
    """
    import dask.base

    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    table = as_plan(ds, plan)
    if table.duplicated(["roi", "row", "col"]).any():
        raise ValueError("the plan has several samples on one patch; a prediction cube holds one "
                         "prediction per patch: split the plan")
    s2, mask, p = _cube_arrays(ds, detector_name(detector))
    n_roi, n_band = s2.shape[0], s2.shape[2]
    n_rows, n_cols = s2.numblocks[3], s2.numblocks[4]
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    fast = _direct_pair(ds, detector)
    name = f"baseline-{method}-" + dask.base.tokenize(s2.name, mask.name, table, method, fill,
                                                      fast)  # the two graphs get their own keys
    layer: dict = {}
    planned = {(int(s.roi_index), int(s.row), int(s.col)): s.inputs for s in table.itertuples()}
    for i in range(n_roi):
        for r in range(n_rows):
            for c in range(n_cols):
                inputs = planned.get((i, r, c))
                key = (name, i, 0, r, c)
                if inputs is None:
                    layer[key] = (np.full, (1, n_band, p, p), np.nan, np.float32)
                elif fast is not None:
                    layer[key] = (_baseline_direct, method, fill, detector, *fast, i, r, c, inputs)
                else:
                    layer[key] = (_baseline_block, method, fill, detector,
                                  [(s2.name, i, t, 0, r, c) for t in inputs],
                                  [(mask.name, i, t, r, c) for t in inputs])
    chunks = ((1,) * n_roi, (n_band,), (p,) * n_rows, (p,) * n_cols)
    data = _graph_array(name, layer, [] if fast else [s2, mask], chunks, np.float32)
    coords = {k: one.coords[k] for k in ("roi", "band", "y", "x") if k in one.coords}
    out = xr.DataArray(data, dims=("roi", "band", "y", "x"), coords=coords, name=method)
    out.attrs.update(long_name=f"{method} baseline", units="1", detector=detector)
    return out if "roi" in ds.dims else out.isel(roi=0)


def _along_time(blocks: np.ndarray | list) -> np.ndarray:
    """A block, or the list of blocks along axis 1 that ``blockwise`` passes, as one array."""
    if not isinstance(blocks, list):
        return blocks
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def _composite_block(s2: np.ndarray, raw: np.ndarray, frames: np.ndarray,
                     detector: str) -> np.ndarray:
    """One patch series: s2 ``(1, T, B, P, P)``, raw mask ``(1, T, P, P)``, frames ``(1, T, 1, 1)``.

    Each may come as the list of its blocks along ``T`` (one block for shard chunks: no copy).
    """
    s2, raw, frames = (_along_time(b) for b in (s2, raw, frames))
    clear = frames.astype(bool) & ~mask_from(raw, detector)
    t, b, h, w = s2.shape[1:]
    med = clear_median(s2[0].reshape(t, b, h * w), clear[0].reshape(t, h * w))
    return (med / np.float32(10000)).reshape(1, b, h, w)


def _cells_of_pixels(ds: xr.Dataset, p: int) -> xr.Dataset:
    """``ds`` with the per-patch arrays' ``row``/``col`` cut to the patches its ``y``/``x`` hold.

    A spatial selection of the pixels (``ds.isel(y=slice(0, 2 * P))``) leaves the small
    arrays whole; per-patch work needs both to name the same patches, so the pixels must
    be whole patches.
    """
    cut = {}
    for pix, cell in (("y", "row"), ("x", "col")):
        if cell not in ds.dims or pix not in ds.coords or ds.sizes[cell] * p == ds.sizes[pix]:
            continue
        v = np.asarray(ds[pix].values)
        starts = v[::p]
        whole = (v.size % p == 0 and v.dtype.kind in "iu" and (starts % p == 0).all()
                 and np.array_equal(v, (starts[:, None] + np.arange(p)).ravel()))
        if not whole:
            raise ValueError(f"the selection along {pix!r} cuts patches ({v.size} pixels from "
                             f"{v[0] if v.size else '-'}); select whole patches of {p} pixels")
        cut[cell] = starts // p
    return ds.sel(cut) if cut else ds


def _composite_patch(s2: direct.Selection, raw: direct.Selection, detector: str,
                     valid: np.ndarray, i: int, row: int, col: int, p: int) -> np.ndarray:
    """:func:`_composite_block` of one patch, reading only its valid frames itself.

    ``valid`` ``(roi, time, row, col)``: the selection's valid frames; ``i`` a position.
    """
    ok = np.asarray(valid)[i, :, row, col]
    n_band = len(s2.band) if s2.band is not None else len(schema.BANDS)
    slots = [t for t, keep in zip(s2.time, ok) if keep]
    if not slots:
        return np.full((1, n_band, p, p), np.nan, np.float32)
    dn = s2.frames.read("s2", s2.roi[i], row, col, slots, reuse=True)
    if not s2.all_bands:
        dn = dn[:, list(s2.band)]
    clear = ~mask_from(raw.frames.read(raw.var, raw.roi[i], row, col, slots, reuse=True),
                       detector)
    med = clear_median(dn.reshape(len(slots), n_band, p * p), clear.reshape(len(slots), p * p))
    med /= np.float32(10000)
    return med.reshape(1, n_band, p, p)


def _composite_direct(one: xr.Dataset, s2: direct.Selection, raw: direct.Selection,
                      detector: str, p: int):
    """The composite as one task per patch reading its series directly (see :mod:`direct`)."""
    import dask.base

    valid = _blocked(valid_frames(one).transpose("roi", "time", "row", "col"), {})
    n_roi, n_band = one.sizes["roi"], one.sizes["band"]
    n_rows, n_cols = one.sizes["y"] // p, one.sizes["x"] // p
    name = "composite-" + dask.base.tokenize(s2, raw, valid.name, detector)
    vkey = (valid.name, 0, 0, 0, 0)
    layer = {(name, i, 0, r, c): (_composite_patch, s2, raw, detector, vkey, i, r, c, p)
             for i in range(n_roi) for r in range(n_rows) for c in range(n_cols)}
    chunks = ((1,) * n_roi, (n_band,), (p,) * n_rows, (p,) * n_cols)
    return _graph_array(name, layer, [valid], chunks, np.float32)


def composite(ds: xr.Dataset, detector: str = "s2cloudless_mask") -> xr.DataArray:
    """Temporal median of the clear pixels: reflectance ``(roi, band, y, x)``, NaN if never clear.

    Clear: the frame is valid and not blank and the pixel is not cloudy for ``detector``.
    Lazy; one task per patch over its whole series. On a selection (ROIs, slots, bands) of
    a cube opened by :func:`s2cube.open_cube` each task reads its patch's valid frames
    itself (:mod:`s2cube.direct`); otherwise it goes through xarray's graph, where a cube
    opened with ``chunks="shard"`` reads each series in one zarr call. The pixels must be
    whole patches.
    """
    import dask.array as da

    detector = detector_name(detector)
    p = _patch_size(ds)
    one = _cells_of_pixels(ds if "roi" in ds.dims else ds.expand_dims("roi"), p)
    fast = _direct_pair(ds, detector)
    if fast is not None:
        data = _composite_direct(one, *fast, detector, p)
    else:
        s2 = _blocked(one["s2"].transpose("roi", "time", "band", "y", "x"),
                      {"roi": 1, "y": p, "x": p})
        raw = _blocked(one[mask_source(detector)].transpose("roi", "time", "y", "x"),
                       {"roi": 1, "y": p, "x": p})
        frames = _blocked(valid_frames(one).transpose("roi", "time", "row", "col"),
                          {"roi": 1, "row": 1, "col": 1})
        data = da.blockwise(_composite_block, "rbyx", s2, "rtbyx", raw, "rtyx", frames, "rtyx",
                            detector=detector, align_arrays=False, concatenate=False,
                            dtype=np.float32)
    src = one["s2"]
    coords = {k: v for k, v in src.coords.items() if "time" not in v.dims}
    out = xr.DataArray(data, dims=("roi", "band", "y", "x"), coords=coords, name="composite",
                       attrs={"long_name": f"median of the {detector}-clear reflectance over "
                                           "time", "units": "1"})
    return out if "roi" in ds.dims else out.isel(roi=0)


# --- evaluation ----------------------------------------------------------------------------

def _prediction_blocks(ds: xr.Dataset, predictions: Any, table: pd.DataFrame, p: int):
    """The predictions as a dask array with one block per image, and each plan row's block.

    Three layouts: the cube's grid ``(roi, band, y, x)``; the flat view of
    :func:`s2cube.select.patches` ``(patch, band, py, px)`` with its ``roi``/``row``/``col``
    coordinates; or an array ``(n, band, P, P)`` in the order of the plan's rows. Returns
    ``(array, keys)`` with ``keys[k]`` the block of plan row ``k`` or None (not predicted).
    """
    if isinstance(predictions, xr.Dataset):
        names = [n for n in ("prediction", "s2") if n in predictions]
        if not names:
            raise ValueError("the prediction Dataset has no 'prediction' or 's2' variable")
        predictions = predictions[names[0]]
    bands = ds.sizes["band"]
    if not isinstance(predictions, xr.DataArray):  # an array in plan order
        shape = tuple(getattr(predictions, "shape", np.shape(predictions)))
        if shape != (len(table), bands, p, p):
            raise ValueError(f"predictions have shape {shape}; an array needs one image per "
                             f"plan row: {(len(table), bands, p, p)}")
        data = _blocked(xr.DataArray(predictions, dims=("sample", "band", "py", "px")),
                        {"sample": 1})
        return data, [(data.name, k, 0, 0, 0) for k in range(len(table))]
    if "time" in predictions.dims:
        raise ValueError("predictions hold a 'time' dim; seq2point predictions are one image per "
                         "patch: select the predicted slot")
    if "patch" in predictions.dims:  # the flat view
        want = ("patch", "band", "py", "px")
        if set(predictions.dims) != set(want) or not {"roi", "row", "col"} <= set(predictions.coords):
            raise ValueError(f"flat predictions need dims {want} and roi/row/col coordinates on "
                             f"'patch' (as ds.s2cube.patches() gives); got {predictions.dims}")
        pred = predictions.transpose(*want)
        _check_sizes(pred, {"band": bands, "py": p, "px": p})
        where = {(str(r), int(y), int(x)): k for k, (r, y, x) in enumerate(zip(
            schema.as_str(pred["roi"].values), pred["row"].values, pred["col"].values))}
        data = _blocked(pred, {"patch": 1})
        return data, [None if (k := where.get((s.roi, int(s.row), int(s.col)))) is None
                      else (data.name, k, 0, 0, 0) for s in table.itertuples()]
    pred = predictions if "roi" in predictions.dims else predictions.expand_dims("roi")
    want = ("roi", "band", "y", "x")
    if set(pred.dims) != set(want):
        raise ValueError(f"predictions have dims {pred.dims}; expected {want} on the cube's grid, "
                         "('patch', 'band', 'py', 'px') as patches() gives, or an array in plan order")
    pred = pred.transpose(*want)
    _check_sizes(pred, {d: ds.sizes[d] for d in ("band", "y", "x")})
    rois = list(schema.as_str(pred["roi"].values))
    data = _blocked(pred, {"roi": 1, "y": p, "x": p})
    return data, [(data.name, rois.index(s.roi), 0, int(s.row), int(s.col)) if s.roi in rois
                  else None for s in table.itertuples()]


def _check_sizes(pred: xr.DataArray, sizes: dict[str, int]) -> None:
    for d, n in sizes.items():
        if pred.sizes[d] != n:
            raise ValueError(f"predictions have {pred.sizes[d]} {d}; the cube has {n}")


def _score(detector: str, target: np.ndarray, raw: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One sample's row: 1 and the metrics, or NaN where the prediction is all NaN.

    ``target`` ``(band, P, P)`` reflectance (float) or DN (integers), ``raw`` ``(n, P, P)``
    the inputs' raw masks, ``pred`` ``(band, P, P)`` reflectance (or DN as integers).
    """
    if pred.dtype.kind in "ui":
        pred = to_reflectance(pred)
    if target.dtype.kind in "ui":
        target = to_reflectance(target)
    if pred.size and np.isnan(pred.flat[0]) and np.isnan(pred).all():  # not predicted
        return np.full((1, len(M.METRICS) + 1), np.nan)
    masks = mask_from(raw, detector).astype(np.uint8)
    row = M.image_metrics(pred, target, masks)
    return np.array([[1.0, *[row[k] for k in M.METRICS]]])


def _score_block(detector: str, target_block: np.ndarray, raw_blocks: list,
                 pred_block: np.ndarray) -> np.ndarray:
    return _score(detector, target_block[0, 0], np.concatenate([b[0] for b in raw_blocks]),
                  pred_block[0])


def _score_direct(detector: str, s2: direct.Selection, raw: direct.Selection, roi: int,
                  row: int, col: int, target: int, inputs: tuple[int, ...],
                  pred_block: np.ndarray) -> np.ndarray:
    """:func:`_score_block` reading the target and the input masks itself (positions)."""
    dn = s2.frames.read("s2", s2.roi[roi], row, col, [s2.time[target]], reuse=True)[0]
    if not s2.all_bands:
        dn = dn[list(s2.band)]
    np.clip(dn, 0, 10000, out=dn)  # to_reflectance, in this thread's buffers
    target_r = np.divide(dn, np.float32(10000), dtype=np.float32,
                         out=direct.scratch("reflectance", dn.shape, np.float32))
    masks = raw.frames.read(raw.var, raw.roi[roi], row, col, [raw.time[t] for t in inputs])
    return _score(detector, target_r, masks, pred_block[0])


def score_samples(
    ds: xr.Dataset, predictions: Any, plan: Any, *, detector: str = "s2cloudless_mask",
):
    """Lazy ``(n_samples, 1 + len(METRICS))`` dask array of per-sample scores, and its plan.

    Column 0 is 1 where the prediction had values, NaN where the patch was not predicted.
    Samples whose ROI is not in ``predictions`` are left out of the returned plan.
    """
    import dask.base

    table = as_plan(ds, plan)
    s2, mask, p = _cube_arrays(ds, detector_name(detector))
    pred, keys = _prediction_blocks(ds, predictions, table, p)
    table = table[[k is not None for k in keys]]
    keys = [k for k in keys if k is not None]
    fast = _direct_pair(ds, detector)
    source = direct.block_source(pred) if fast is not None else None
    name = "evaluate-" + dask.base.tokenize(s2.name, mask.name, pred.name, table, detector, fast)
    layer = {}
    for k, (s, key) in enumerate(zip(table.itertuples(), keys)):
        i, r, c = int(s.roi_index), int(s.row), int(s.col)
        if fast is not None:  # the task reads its prediction block too where it can
            block = ((*source, direct.block_slices(pred.chunks, key[1:]))
                     if source is not None else key)
            layer[(name, k, 0)] = (_score_direct, detector, *fast, i, r, c, int(s.target),
                                   s.inputs, block)
        else:
            layer[(name, k, 0)] = (
                _score_block, detector, (s2.name, i, int(s.target), 0, r, c),
                [(mask.name, i, t, r, c) for t in s.inputs], key)
    chunks = ((1,) * len(table), (len(M.METRICS) + 1,))
    deps = [pred] if fast is not None else [s2, mask, pred]  # culled to what the tasks use
    return _graph_array(name, layer, deps, chunks, np.float64), table


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
    plan: Any | Callable | None = None,
    *,
    detector: str = "s2cloudless_mask",
) -> Evaluation:
    """Score predictions against the targets of ``plan``, in parallel with dask.

    Parameters
    ----------
    predictions
        Reflectance in [0, 1] as float, or DN as integers, in one of three layouts: a
        prediction cube ``(roi, band, y, x)`` on the cube's grid (any subset of ROIs); the
        flat view ``(patch, band, py, px)`` with the ``roi``/``row``/``col`` coordinates of
        ``ds.s2cube.patches()`` (any subset of patches); or an array ``(n, band, P, P)``
        (NumPy, dask, anything array-like) holding plan row ``k``'s prediction at ``k``.
        Samples without a prediction, or whose prediction is all NaN, are left out.
    plan
        Which slots are inputs and target per sample (see :func:`as_plan`); by default the
        reference's fixed sampler with 3 inputs on every split (:func:`sample_plan`).
    detector
        The detector of the input masks for the cloudy/clear split of RMSE and MAE.

    Returns
    -------
    Evaluation
        ``.samples`` (one row per scored sample, index ``pdx``), ``.per_roi``,
        ``.per_region``, ``.per_split``, ``.overall``.
    """
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
