"""Selections on a cube by label: ROIs by split, region or name; patches; clear frames.

Pure functions on an :class:`xarray.Dataset` laid out as in ``docs/cube.md``, working on
whatever selection they are given. They never read a pixel: ROI selections use the
in-memory ROI coordinates, :func:`clear_frames` is a lazy expression on ``coverage``,
:func:`patch_table` and :func:`patches` read only the small ``patch_id`` array to know which
patches exist and in which order (the reference sample order), and :func:`held_cells` is
the one rule for which patches a spatial selection holds (whole patches only).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema, sen12mscr
from s2cube.errors import SelectionError


def _roi_labels(ds: xr.Dataset, coord: str) -> np.ndarray:
    if coord not in ds.coords:
        raise SelectionError(f"the dataset has no {coord!r} coordinate on 'roi'; open it with "
                             "s2cube.open_cube")
    return schema.as_str(ds[coord].values)


def _positions(index: Sequence[int] | np.ndarray) -> slice | np.ndarray:
    """ROI positions as a slice when they are consecutive: dask then selects whole blocks
    with plain slicing, which it fuses into the reads, instead of a gather."""
    pos = np.asarray(index, dtype=np.int64).reshape(-1)
    if pos.size and (np.diff(pos) == 1).all():
        return slice(int(pos[0]), int(pos[-1]) + 1)
    return pos


def _sel_by(ds: xr.Dataset, coord: str, value: str, choices: tuple[str, ...]) -> xr.Dataset:
    if value not in ("all", *choices):
        raise ValueError(f"{coord} {value!r} is not one of all, {', '.join(choices)}")
    if value == "all":
        return ds
    keep = np.flatnonzero(np.atleast_1d(_roi_labels(ds, coord)) == value)
    if keep.size == 0:
        held = sorted(set(np.atleast_1d(_roi_labels(ds, coord)).tolist()))
        raise SelectionError(f"this Dataset holds no ROI of {coord} {value!r} (its ROIs are of "
                             f"{coord} {held}: {roi_names(ds)})")
    return ds.isel(roi=_positions(keep))


def roi_names(ds: xr.Dataset) -> list[str]:
    """The Dataset's ROI labels as plain strings."""
    return [str(r) for r in np.atleast_1d(_roi_labels(ds, "roi"))]


def sel_split(ds: xr.Dataset, split: str, split_mode: str | None = None) -> xr.Dataset:
    """The ROIs of one split (``"train"``, ``"val"``, ``"test"``; ``"all"`` keeps every ROI).

    On a SEN12MS-CR cube, the patches of the split's scenes (:func:`s2cube.crselect.sel_split`;
    ``split_mode`` ``"exact"`` by default, ``"reference"`` or ``"combined"``).
    """
    if sen12mscr.is_cr(ds):
        from s2cube import crselect

        return crselect.sel_split(ds, split, split_mode or "exact")
    if split_mode is not None:
        raise SelectionError(f"split_mode={split_mode!r} applies to SEN12MS-CR cubes only; this "
                             "time-series Dataset's ROIs each have one split: leave it out")
    return _sel_by(ds, "split", split, schema.SPLITS)


def sel_region(ds: xr.Dataset, region: str) -> xr.Dataset:
    """The ROIs of one region (``"africa"``, ``"america"``, ..., ``"all"`` keeps every ROI)."""
    return _sel_by(ds, "region", region, schema.REGIONS)


def sel_roi(ds: xr.Dataset, names: str | Sequence[str]) -> xr.Dataset:
    """One ROI (its ``roi`` dim dropped) or several (kept, in the order given) by name."""
    many = not isinstance(names, str)
    wanted = [str(n) for n in names] if many else [str(names)]
    have = roi_names(ds)
    missing = [n for n in wanted if n not in have]
    if missing:
        raise KeyError(f"ROI(s) {missing} are not in this Dataset; it holds {have}")
    index = [have.index(n) for n in wanted]
    return ds.isel(roi=_positions(index) if many else index[0])


def detector_name(detector: str) -> str:
    """Check a detector name against :data:`s2cube.schema.DETECTORS`."""
    return schema.detector_name(detector)


def clear_frames(ds: xr.Dataset, detector: str = "s2cloudless_mask",
                 threshold: float = 1e-3) -> xr.DataArray:
    """Lazy boolean ``(roi, time, row, col)``: the frame exists, is not blank, coverage ≤ threshold.

    Read from the stored ``coverage`` of ``detector``; no pixel is read.
    """
    cov = ds["coverage"].sel(detector=detector_name(detector), drop=True)
    clear = (cov <= threshold) & ds["valid_s2"]
    if "blank" in ds:
        clear = clear & ~ds["blank"]
    return clear.rename("clear").assign_attrs(
        long_name=f"frame with {detector} coverage <= {threshold}")


def patch_size(ds: xr.Dataset) -> int:
    """The cube's patch size P (root attribute ``patch_size``)."""
    p = int(ds.attrs.get("patch_size") or 0)
    if p <= 0:
        raise SelectionError("the dataset has no 'patch_size' attribute; open it with "
                             "s2cube.open_cube")
    return p


def held_cells(ds: xr.Dataset, pix: str, cell: str, p: int | None = None) -> np.ndarray:
    """Which of the Dataset's ``cell`` labels (``row`` or ``col``) have all P pixels in ``pix``.

    A patch is held when all its pixels are in the Dataset, not held when none are; a
    selection that keeps part of a patch is refused (per-patch verbs need whole patches).
    """
    p = patch_size(ds) if p is None else p
    cells = np.asarray(ds[cell].values, dtype=np.int64).reshape(-1)
    if pix not in ds.dims:
        return np.ones(cells.size, bool)
    pixels = np.asarray(ds[pix].values).reshape(-1)
    if pixels.dtype.kind not in "iu":  # real coordinates (ds.s2cube.roi()): aligned by roi()
        if pixels.size == cells.size * p:
            return np.ones(cells.size, bool)
        raise SelectionError(f"the Dataset's {pix!r} coordinate holds {pixels.dtype} values for "
                             f"{pixels.size} pixels and {cells.size} {cell}s of {p}: select "
                             "whole patches on the cube's grid")
    inside = np.isin(cells[:, None] * p + np.arange(p)[None, :], pixels).sum(axis=1)
    cut = np.flatnonzero((inside > 0) & (inside < p))
    if cut.size:
        c = int(cells[cut[0]])
        raise SelectionError(
            f"the selection along {pix!r} cuts patch {cell} {c} ({int(inside[cut[0]])} of its "
            f"{p} pixels); this verb works on whole patches: select whole patches of {p} pixels")
    return inside == p


def align_cells(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``row``/``col`` cut to the patches whose pixels ``y``/``x`` hold, in order.

    A spatial selection of the pixels (``ds.isel(y=slice(0, 2 * P))``) leaves the small
    per-patch arrays whole; per-patch work needs both to name the same patches.

    Raises
    ------
    SelectionError
        The pixels cut a patch, or are not in patch order.
    """
    p = patch_size(ds)
    cut: dict[str, np.ndarray] = {}
    for pix, cell in (("y", "row"), ("x", "col")):
        if cell not in ds.dims or pix not in ds.dims:
            continue
        held = held_cells(ds, pix, cell, p)
        cells = np.asarray(ds[cell].values, dtype=np.int64)[held]
        want = (cells[:, None] * p + np.arange(p)[None, :]).ravel()
        pixels = np.asarray(ds[pix].values)
        if pixels.dtype.kind in "iu" and not np.array_equal(pixels, want):
            raise SelectionError(f"the Dataset's {pix!r} pixels are not its patches' pixels in "
                                 f"order ({cell} labels {cells.tolist()[:6]}); select whole "
                                 "patches in the cube's order")
        if held.size != cells.size:
            cut[cell] = np.flatnonzero(held)
    return ds.isel(cut) if cut else ds


def patch_table(ds: xr.Dataset, split: str | None = "all",
                region: str | None = "all", split_mode: str | None = None) -> pd.DataFrame:
    """Every patch the Dataset holds, in the reference sample order (index ``pdx``).

    On a SEN12MS-CR cube, :func:`s2cube.crselect.patch_table` (by scene, ``split_mode``).

    ROIs in the order of the archive's tables, inside an ROI by ascending patch id (the
    order of :func:`s2cube.plans.rules.patch_index`). Columns: ``roi``, ``row``, ``col``
    (labels), ``patch_id``, ``split``, ``region``; and ``roi_pos``, ``row_pos``, ``col_pos``,
    the patch's positions in this Dataset. Reads the small ``patch_id`` array, never a pixel.
    """
    from s2cube.plans.rules import patch_index

    if sen12mscr.is_cr(ds):
        from s2cube import crselect

        if region not in ("all", None):
            raise SelectionError(f"region={region!r}: a SEN12MS-CR cube has no regions (as in the "
                                 "reference loader); leave it out")
        return crselect.patch_table(ds, split or "all", split_mode or "exact")
    if split_mode is not None:
        raise SelectionError(f"split_mode={split_mode!r} applies to SEN12MS-CR cubes only; leave "
                             "it out")
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    pid = np.asarray(one["patch_id"].transpose("roi", "row", "col").values).astype(np.int64)
    held = held_cells(one, "y", "row")[:, None] & held_cells(one, "x", "col")[None, :]
    pid = np.where(held[None], pid, -1)
    names = roi_names(one)
    index = patch_index(pid, names, split, region)
    rows = np.asarray(one["row"].values, np.int64)
    cols = np.asarray(one["col"].values, np.int64)
    infos = [schema.roi_info(n) for n in names]
    table = pd.DataFrame({
        "roi": np.array(names, dtype=object)[index.roi] if len(index) else np.array([], object),
        "row": rows[index.row],
        "col": cols[index.col],
        "patch_id": index.patch_id.astype(np.int64),
        "split": [infos[i].split for i in index.roi],
        "region": [infos[i].region for i in index.roi],
        "roi_pos": index.roi,
        "row_pos": index.row,
        "col_pos": index.col,
    })
    table.index.name = "pdx"
    return table


def _flatten(data, lead_axes: list[int], order: np.ndarray):
    """Move ``lead_axes`` (roi, row, col) first, merge them, then take ``order`` of them."""
    rest = [a for a in range(data.ndim) if a not in lead_axes]
    data = data.transpose([*lead_axes, *rest])
    n = int(np.prod(data.shape[:len(lead_axes)]))
    shape = (n, *data.shape[len(lead_axes):])
    if hasattr(data, "dask"):
        import dask.array as da

        flat = da.reshape(data, shape, merge_chunks=False)
    else:
        flat = np.reshape(data, shape)
    return flat[order]


def _split_pixels(data, dims: tuple[Hashable, ...], p: int):
    """Reshape ``y`` → (row, py) and ``x`` → (col, px); no data moves when chunks are P."""
    shape: list[int] = []
    new_dims: list[Hashable] = []
    for size, d in zip(data.shape, dims):
        if d == "y":
            shape += [size // p, p]
            new_dims += ["row", "py"]
        elif d == "x":
            shape += [size // p, p]
            new_dims += ["col", "px"]
        else:
            shape.append(size)
            new_dims.append(d)
    return data.reshape(tuple(shape)), tuple(new_dims)


def patches(ds: xr.Dataset, variables: Sequence[str] | None = None) -> xr.Dataset:
    """The flat view: every patch on a ``patch`` dim in the reference sample order.

    Pixel variables become ``(patch, time, band, py, px)`` (``s1``: polarization,
    ``cloud_*``: no band), the small ones ``(patch, time, ...)``. On dask arrays this is a
    lazy reshape and selection of the stored chunks (one chunk per patch and slot), no copy.
    Coordinates on ``patch``: ``pdx`` (the sample index), ``roi``, ``row``, ``col``,
    ``patch_id``, ``split``, ``region``.
    """
    p = patch_size(ds)
    if "roi" not in ds.dims:
        ds = ds.expand_dims("roi")
    ds = align_cells(ds)
    table = patch_table(ds)
    n_rows, n_cols = ds.sizes["row"], ds.sizes["col"]
    flat_index = ((table["roi_pos"] * n_rows + table["row_pos"]) * n_cols
                  + table["col_pos"]).to_numpy()
    names = list(variables) if variables is not None else [
        n for n, v in ds.data_vars.items() if "roi" in v.dims]
    out = {}
    for name in names:
        var = ds[name].variable
        if "y" in var.dims:
            data, dims = _split_pixels(var.data, var.dims, p)
        else:
            data, dims = var.data, var.dims
        if "row" in dims:
            lead = ["roi", "row", "col"]
            index = flat_index
        else:
            lead = ["roi"]
            index = table["roi_pos"].to_numpy()
        axes = [dims.index(d) for d in lead]
        rest = [d for d in dims if d not in lead]
        out[name] = xr.Variable(("patch", *rest), _flatten(data, axes, index), var.attrs)
    coords: dict[str, Any] = {
        "pdx": ("patch", table.index.to_numpy()),
        "roi": ("patch", table["roi"].to_numpy()),
        "row": ("patch", table["row"].to_numpy(np.int32)),
        "col": ("patch", table["col"].to_numpy(np.int32)),
        "patch_id": ("patch", table["patch_id"].to_numpy(np.int32)),
        "split": ("patch", table["split"].to_numpy()),
        "region": ("patch", table["region"].to_numpy()),
    }
    for dim in ("time", "band", "polarization", "detector"):
        if dim in ds.coords and any(dim in v.dims for v in out.values()):
            coords[dim] = ds[dim].variable
    if "wavelength" in ds.coords and "band" in coords:
        coords["wavelength"] = ds["wavelength"].variable
    return xr.Dataset({k: v for k, v in out.items() if k not in coords}, coords=coords,
                      attrs=dict(ds.attrs))
