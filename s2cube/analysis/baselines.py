"""Baselines of the reference protocol (archive.md sec. 7) and the temporal median composite.

- **least cloudy**: the input frame with the fewest cloudy pixels (``np.argsort(...)[0]``,
  as the SEN12MS-CR-TS toolbox computes it);
- **mosaicing**: per pixel and band, the mean of the clear input values; where no input is
  clear, the constant 0.75 (the toolbox's 0.5 in its [−1, 1] space);
- **composite**: the temporal median of the clear pixels of whole patch series.

All on reflectance as the reference's default preprocessing gives it
(``clip(DN, 0, 10000) / 10000``), with the cloud masks of :func:`s2cube.schema.cloudy`.
Both are lazy and read exactly what the Dataset they are called on holds — any selection of
ROIs, slots, bands and whole patches: :func:`composite` is a dask expression over the
Dataset's own arrays (stored or computed), one task per patch series; :func:`baseline`
reads the stored frames the plan's labels name, a few per sample (:mod:`s2cube.io.view`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import xarray as xr

from s2cube import schema
from s2cube.kernels.median import clear_median
from s2cube.select import align_cells, patch_size

logger = logging.getLogger(__name__)

#: Mosaicing's value where no input is clear: 0.5 in the toolbox's [-1, 1] space.
MOSAIC_FILL = 0.75
METHODS = ("least_cloudy", "mosaic")


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


# --- dask plumbing: the Dataset's variables as frame blocks -------------------------------------

def frame_blocks(var: xr.DataArray, dims: tuple[str, ...], p: int):
    """``var``'s data as a dask array with one block per patch and slot (all channels).

    ``dims`` orders the axes (``roi, time, [channel,] y, x``). A variable in series chunks is
    split along ``time``: dask reads only the frames the graph's tasks use where it can
    push the split into the read, else each series once.
    """
    import dask.array as da

    v = var.transpose(*dims)
    want = tuple({"roi": 1, "time": 1, "y": p, "x": p, "row": 1, "col": 1}.get(d, v.sizes[d])
                 for d in dims)
    data = v.data
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=want)
    if data.chunksize != want or any(len(set(c[:-1])) > 1 for c in data.chunks):
        data = data.rechunk(want)
    return data


def graph_array(name: str, layer: dict, deps: list, chunks: tuple, dtype):
    """A dask array from a layer of tasks that read blocks of ``deps`` (dask's public graph API)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, chunks=chunks, dtype=dtype)


def _with_roi(ds: xr.Dataset) -> xr.Dataset:
    return ds if "roi" in ds.dims else ds.expand_dims("roi")


# --- baselines for a plan ------------------------------------------------------------------

def _baseline(method: str, fill: float, detector: str, source, mask_var: str, roi: int, row: int,
              col: int, inputs: tuple[int, ...], bands) -> np.ndarray:
    """One sample's baseline ``(1, band, P, P)``, reading its inputs' frames and masks by
    stored position (``bands`` selects the Dataset's bands)."""
    dn = source.frames("s2", roi, row, col, list(inputs), None if bands is None else (bands,))
    x = to_reflectance(dn)
    m = schema.cloudy(source.frames(mask_var, roi, row, col, list(inputs)), detector)
    m = m.astype(np.uint8)
    out = least_cloudy(x, m) if method == "least_cloudy" else mosaic(x, m, fill)
    return np.asarray(out, np.float32)[None]


def baseline(
    ds: xr.Dataset,
    plan: Any,
    method: str = "mosaic",
    *,
    detector: str = "s2cloudless_mask",
    fill: float = MOSAIC_FILL,
) -> xr.DataArray:
    """A baseline's predictions for the samples of ``plan``, as a lazy prediction cube.

    Returns ``(roi, band, y, x)`` float32 reflectance on the Dataset's grid (its ROIs, bands
    and patches), NaN where the plan has no sample. ``plan`` names slots by ``time`` label
    (:func:`s2cube.plans.table.resolve`); one task per sample reads the stored frames and
    masks of its inputs (:mod:`s2cube.io.view`: a computed ``s2`` is refused).
    """
    import dask.base

    from s2cube.io.view import view_of
    from s2cube.plans.table import resolve

    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    mask_var = schema.mask_source(detector)
    one = align_cells(_with_roi(ds))
    p = patch_size(one)
    plan = resolve(one, plan)
    if plan.table.duplicated(["roi", "row", "col"]).any():
        raise ValueError("the plan has several samples on one patch; a prediction cube holds one "
                         "prediction per patch: split the plan")
    view = view_of(one, variables=("s2", mask_var), small=())
    bands = view.band_select()
    n_roi, n_band = one.sizes["roi"], one.sizes["band"]
    n_rows, n_cols = one.sizes["row"], one.sizes["col"]
    name = f"baseline-{method}-" + dask.base.tokenize(view.url, plan.table, fill, detector,
                                                      view.band.tolist(), one.sizes)
    planned = {(int(i), int(r), int(c)): k
               for k, (i, r, c) in enumerate(zip(plan.roi, plan.row, plan.col))}
    layer: dict = {}
    for i in range(n_roi):
        for r in range(n_rows):
            for c in range(n_cols):
                k = planned.get((i, r, c))
                key = (name, i, 0, r, c)
                if k is None:
                    layer[key] = (np.full, (1, n_band, p, p), np.nan, np.float32)
                    continue
                layer[key] = (_baseline, method, fill, detector, view.source, mask_var,
                              int(view.roi[i]), int(view.row[r]), int(view.col[c]),
                              tuple(int(view.time[t]) for t in plan.inputs[k]), bands)
    chunks = ((1,) * n_roi, (n_band,), (p,) * n_rows, (p,) * n_cols)
    data = graph_array(name, layer, [], chunks, np.float32)
    coords = {k: v for k, v in one.coords.items() if set(v.dims) <= {"roi", "band", "y", "x"}}
    out = xr.DataArray(data, dims=("roi", "band", "y", "x"), coords=coords, name=method)
    out.attrs.update(long_name=f"{method} baseline", units="1", detector=detector)
    return out if "roi" in ds.dims else out.isel(roi=0)


# --- the composite ----------------------------------------------------------------------------

def _along_time(blocks: np.ndarray | list) -> np.ndarray:
    """A block, or the list of blocks along ``time`` that ``blockwise`` passes, as one array."""
    if not isinstance(blocks, list):
        return blocks
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def _composite_block(s2: Any, raw: Any, frames: Any, detector: str,
                     cell: tuple[int, int, int] | None = None) -> np.ndarray:
    """One patch series: s2 ``(1, T, B, P, P)``, raw mask ``(1, T, P, P)``, and its valid
    frames ``(1, T, 1, 1)`` — or, with ``cell = (roi, row, col)``, every patch's valid
    frames ``(roi, T, row, col)`` to take the patch's from."""
    s2, raw, frames = (_along_time(b) for b in (s2, raw, frames))
    if cell is not None:
        i, r, c = cell
        frames = frames[i:i + 1, :, r:r + 1, c:c + 1]
    clear = frames.astype(bool) & ~schema.cloudy(raw, detector)
    t, b, h, w = s2.shape[1:]
    if t == 0:
        return np.full((1, b, h, w), np.nan, np.float32)
    med = clear_median(s2[0].reshape(t, b, h * w), clear[0].reshape(t, h * w))
    return (med / np.float32(10000)).reshape(1, b, h, w)


def _series_blocks(var: xr.DataArray, dims: tuple[str, ...], chunks: dict[str, int]):
    import dask.array as da

    v = var.transpose(*dims)
    want = tuple(chunks.get(d, v.sizes[d]) for d in dims)
    data = v.data
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=want)
    if data.chunksize != want or any(len(set(c[:-1])) > 1 for c in data.chunks):
        data = data.rechunk({k: w for k, w in enumerate(want) if dims[k] != "time"})
    return data


def composite(ds: xr.Dataset, detector: str = "s2cloudless_mask") -> xr.DataArray:
    """Temporal median of the clear pixels: reflectance ``(roi, band, y, x)``, NaN if never clear.

    Clear: the frame is valid and not blank and the pixel is not cloudy for ``detector``.
    Over the Dataset's slots, bands and ROIs; the pixels must be whole patches. Lazy; one
    task per patch over its series (the chunks of ``open_cube``).
    """
    import dask.base

    from s2cube.analysis.stats import valid_frames

    schema.detector_name(detector)
    one = align_cells(_with_roi(ds))
    p = patch_size(one)
    s2 = _series_blocks(one["s2"], ("roi", "time", "band", "y", "x"), {"roi": 1, "y": p, "x": p})
    raw = _series_blocks(one[schema.mask_source(detector)], ("roi", "time", "y", "x"),
                         {"roi": 1, "y": p, "x": p})
    if s2.chunks[1] != raw.chunks[1]:
        raw = raw.rechunk({1: s2.chunks[1]})
    # the valid frames of every patch: one small block that each patch's task indexes
    frames = _series_blocks(valid_frames(one), ("roi", "time", "row", "col"), {})
    n_roi, n_time, n_band = s2.numblocks[0], s2.numblocks[1], one.sizes["band"]
    n_rows, n_cols = s2.numblocks[3], s2.numblocks[4]
    name = "composite-" + dask.base.tokenize(s2.name, raw.name, frames.name, detector)
    fkey = (frames.name, 0, 0, 0, 0)
    layer = {(name, i, 0, r, c): (
        _composite_block, [(s2.name, i, t, 0, r, c) for t in range(n_time)],
        [(raw.name, i, t, r, c) for t in range(n_time)], fkey, detector, (i, r, c))
        for i in range(n_roi) for r in range(n_rows) for c in range(n_cols)}
    data = graph_array(name, layer, [s2, raw, frames],
                       ((1,) * n_roi, (n_band,), (p,) * n_rows, (p,) * n_cols), np.float32)
    coords = {k: v for k, v in one.coords.items() if set(v.dims) <= {"roi", "band", "y", "x"}}
    out = xr.DataArray(data, dims=("roi", "band", "y", "x"), coords=coords, name="composite",
                       attrs={"long_name": f"median of the {detector}-clear reflectance over "
                                           "time", "units": "1"})
    return out if "roi" in ds.dims else out.isel(roi=0)
