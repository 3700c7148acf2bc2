"""Selections on a cube: ROIs by split, region or name; clear frames; the flat patch view.

Pure functions on an :class:`xarray.Dataset` laid out as in ``cube.md``. They never read a
pixel: ROI selections use the in-memory ROI coordinates, :func:`clear_frames` is a lazy
expression on ``coverage``, and :func:`patches` reads only the small ``patch_id`` array
to know which patches exist and in which order (the reference sample order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema


def _roi_labels(ds: xr.Dataset, coord: str) -> np.ndarray:
    if coord not in ds.coords:
        raise ValueError(f"the dataset has no {coord!r} coordinate on 'roi'; open it with "
                         "s2cube.open_cube")
    return schema.as_str(ds[coord].values)


def _sel_by(ds: xr.Dataset, coord: str, value: str, choices: tuple[str, ...]) -> xr.Dataset:
    if value not in ("all", *choices):
        raise ValueError(f"{coord} {value!r} is not one of all, {', '.join(choices)}")
    if value == "all":
        return ds
    return ds.isel(roi=np.flatnonzero(_roi_labels(ds, coord) == value))


def sel_split(ds: xr.Dataset, split: str) -> xr.Dataset:
    """The ROIs of one split (``"train"``, ``"val"``, ``"test"``; ``"all"`` keeps every ROI)."""
    return _sel_by(ds, "split", split, schema.SPLITS)


def sel_region(ds: xr.Dataset, region: str) -> xr.Dataset:
    """The ROIs of one region (``"africa"``, ``"america"``, ..., ``"all"`` keeps every ROI)."""
    return _sel_by(ds, "region", region, schema.REGIONS)


def sel_roi(ds: xr.Dataset, names: str | Sequence[str]) -> xr.Dataset:
    """One ROI (its ``roi`` dim dropped) or several (kept, in the order given) by name."""
    many = not isinstance(names, str)
    wanted = list(names) if many else [names]
    have = list(_roi_labels(ds, "roi"))
    missing = [n for n in wanted if n not in have]
    if missing:
        raise KeyError(f"ROI(s) {missing} are not in this cube; it holds {have}")
    index = [have.index(n) for n in wanted]
    return ds.isel(roi=index if many else index[0])


def detector_name(detector: str) -> str:
    """Check a detector name against :data:`s2cube.schema.DETECTORS`."""
    if detector not in schema.DETECTORS:
        raise ValueError(f"detector {detector!r} is not one of {', '.join(schema.DETECTORS)}")
    return detector


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


def patch_table(ds: xr.Dataset, split: str | None = "all",
                region: str | None = "all") -> pd.DataFrame:
    """Every patch of the cube in the reference sample order (index ``pdx``).

    ROIs in the order of the archive's tables, inside an ROI by ascending patch id (the
    order of :func:`s2cube.plans.rules.patch_index`). Columns: ``roi, roi_index, row, col,
    patch_id, split, region``. Reads the small ``patch_id`` array, never a pixel.
    """
    from s2cube.plans.rules import patch_index

    pid = np.asarray(ds["patch_id"].values)
    names = np.atleast_1d(_roi_labels(ds, "roi"))
    if pid.ndim == 2:  # a single ROI selected with its dim dropped
        pid = pid[None]
    index = patch_index(pid, list(names), split, region)
    infos = [schema.roi_info(str(n)) for n in names]
    table = pd.DataFrame({
        "roi": names[index.roi] if len(index) else np.array([], str),
        "roi_index": index.roi,
        "row": index.row,
        "col": index.col,
        "patch_id": index.patch_id,
        "split": [infos[i].split for i in index.roi],
        "region": [infos[i].region for i in index.roi],
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


def _split_pixels(data, dims: tuple[str, ...], p: int):
    """Reshape ``y`` → (row, py) and ``x`` → (col, px); no data moves when chunks are P."""
    shape, new_dims = [], []
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
    table = patch_table(ds)
    p = int(ds.attrs.get("patch_size") or 0)
    if p <= 0:
        raise ValueError("the dataset has no 'patch_size' attribute; open it with s2cube.open_cube")
    if "roi" not in ds.dims:
        ds = ds.expand_dims("roi")
    n_rows, n_cols = ds.sizes["row"], ds.sizes["col"]
    flat_index = ((table["roi_index"] * n_rows + table["row"]) * n_cols + table["col"]).to_numpy()
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
            index = table["roi_index"].to_numpy()
        axes = [dims.index(d) for d in lead]
        rest = [d for d in dims if d not in lead]
        out[name] = xr.Variable(("patch", *rest), _flatten(data, axes, index), var.attrs)
    coords = {
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
