"""Pair SEN12MS-CR-TS and SEN12MS-CR patches that cover the same ground.

The ROIs of SEN12MS-CR-TS are scenes of SEN12MS-CR (``ROIs1868_73`` is ``ROIs1868_summer``
scene 73), but the two data sets cut their scenes differently: SEN12MS-CR's patches overlap
and are numbered with gaps, the time series' tile its ROIs' grids. So they are paired by
georeference, never by id: two patches pair when they are in the same CRS and their bounds
overlap. :func:`pair_patches` is that join, as a table (one row per pair); the accessor verb
``ds.s2cube.pair(other)`` calls it with the two cubes in either order. Reads the small
variables and the root attributes only, never a pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube.errors import SelectionError
from s2cube.grid import RoiGrid

COLUMNS = ("pdx", "roi", "row", "col", "patch_id", "scene", "cr_patch_id", "cr_patch", "epsg",
           "overlap", "cr_overlap", "iou", "x_offset", "y_offset", "same_scene")


class _TsBox(Protocol):
    """A row of :func:`ts_boxes` as ``DataFrame.itertuples(index=False)`` gives it."""

    pdx: int
    roi: str
    row: int
    col: int
    patch_id: int
    crs: str
    epsg: int
    left: float
    bottom: float
    right: float
    top: float
    px: float
    py: float


def _crs_key(epsg: int | None, wkt: str) -> str:
    return f"EPSG:{epsg}" if epsg and epsg > 0 else (wkt or "")


def ts_boxes(ds: xr.Dataset) -> pd.DataFrame:
    """The time-series Dataset's patches in sample order, with CRS, bounds and pixel size."""
    from s2cube.select import patch_size, patch_table

    table = patch_table(ds)
    p = patch_size(ds)
    grids = {g["roi"]: RoiGrid.from_record(g, p) for g in ds.attrs.get("grids") or []}
    if "transform" in ds.coords:  # the coordinates: what the Dataset holds
        names = [str(r) for r in np.atleast_1d(schema.as_str(ds["roi"].values))]
        tr = np.asarray(ds["transform"].values, np.float64).reshape(-1, 6)
        for name, t in zip(names, tr):
            if name in grids:
                g = grids[name]
                grids[name] = RoiGrid(g.roi, g.crs_wkt, g.epsg, tuple(float(v) for v in t),  # type: ignore[arg-type]
                                      g.n_rows, g.n_cols, p)
    rows = []
    for pdx, r in table.iterrows():
        g = grids[r["roi"]]
        left, bottom, right, top = g.patch_bounds(int(r["row"]), int(r["col"]))
        rows.append((pdx, r["roi"], int(r["row"]), int(r["col"]), int(r["patch_id"]),
                     _crs_key(g.epsg, g.crs_wkt), g.epsg or -1, left, bottom, right, top,
                     abs(g.transform[0]), abs(g.transform[4])))
    return pd.DataFrame(rows, columns=["pdx", "roi", "row", "col", "patch_id", "crs", "epsg",
                                       "left", "bottom", "right", "top", "px", "py"])


def cr_boxes(ds: xr.Dataset) -> pd.DataFrame:
    """The SEN12MS-CR Dataset's patches, with scene, CRS and bounds."""
    scenes = cr.scenes_of(ds.attrs)
    p = int(ds.attrs.get("patch_size") or 0)
    idx = np.asarray(ds["scene"].values, np.int64).reshape(-1)
    pid = np.asarray(ds["patch_id"].values, np.int64).reshape(-1)
    pos = np.asarray(ds["patch"].values, np.int64).reshape(-1)
    tr = np.asarray(ds["transform"].transpose("patch", "affine").values, np.float64).reshape(-1, 6)
    keep = np.flatnonzero((idx >= 0) & np.isfinite(tr).all(axis=1))
    bounds = np.array([cr.patch_bounds(tr[k], p) for k in keep]).reshape(-1, 4)
    return pd.DataFrame({
        "scene": [scenes[idx[k]].scene for k in keep],
        "cr_patch_id": pid[keep], "cr_patch": pos[keep],
        "crs": [_crs_key(scenes[idx[k]].epsg, scenes[idx[k]].crs_wkt) for k in keep],
        "left": bounds[:, 0], "bottom": bounds[:, 1], "right": bounds[:, 2], "top": bounds[:, 3],
    })


def pair_patches(ts: Any, mono: Any, *, min_overlap: float = 0.0,
                 storage_options: dict | None = None) -> pd.DataFrame:
    """For every patch of a SEN12MS-CR-TS Dataset, the SEN12MS-CR patches on the same ground.

    Parameters
    ----------
    ts, mono
        A SEN12MS-CR-TS and a SEN12MS-CR Dataset from :func:`s2cube.open_cube` (any
        selection of them), or their paths or URLs.
    min_overlap
        Keep pairs whose overlap covers more than this share of the time-series patch
        (0: any overlap of positive area).

    Returns
    -------
    pandas.DataFrame
        One row per pair, in the time-series sample order (``pdx``) and by decreasing
        overlap: the time-series patch (``roi``, ``row``, ``col``, ``patch_id``), the SEN12MS-CR
        patch (``scene``, ``cr_patch_id``, ``cr_patch``: its stored position), ``epsg``,
        ``overlap`` (share of the time-series patch covered), ``cr_overlap`` (share of the
        SEN12MS-CR patch), ``iou``, ``x_offset``/``y_offset`` (the SEN12MS-CR patch's upper-left
        corner in the time-series patch's pixels) and ``same_scene`` (the scene is the ROI's).
    """
    from s2cube.io.view import source_of

    ts, mono = source_of(ts, storage_options), source_of(mono, storage_options)
    if cr.is_cr(ts) and not cr.is_cr(mono):
        ts, mono = mono, ts
    if cr.is_cr(ts) or not cr.is_cr(mono):
        raise SelectionError("pair_patches needs a SEN12MS-CR-TS Dataset and a SEN12MS-CR one "
                             f"(got cube kinds {cr.kind_of(ts.attrs)!r} and "
                             f"{cr.kind_of(mono.attrs)!r})")
    a, b = ts_boxes(ts), cr_boxes(mono)
    out = []
    for crs, group in a.groupby("crs", sort=False):
        other = b[b["crs"] == crs].sort_values("left", kind="stable")
        if other.empty:
            continue
        ol, orr = other["left"].to_numpy(), other["right"].to_numpy()
        ob, ot = other["bottom"].to_numpy(), other["top"].to_numpy()
        width = float((orr - ol).max())
        # pandas-stubs type the fields of itertuples' rows as any scalar: the columns are ts_boxes'
        for r in cast("Iterable[_TsBox]", group.itertuples(index=False)):
            lo = np.searchsorted(ol, r.left - width, side="left")
            hi = np.searchsorted(ol, r.right, side="left")
            if hi <= lo:
                continue
            sl = slice(lo, hi)
            w = np.minimum(orr[sl], r.right) - np.maximum(ol[sl], r.left)
            h = np.minimum(ot[sl], r.top) - np.maximum(ob[sl], r.bottom)
            inter = np.where((w > 0) & (h > 0), w * h, 0.0)
            hit = np.flatnonzero(inter > 0)
            if hit.size == 0:
                continue
            area = (r.right - r.left) * (r.top - r.bottom)
            cr_area = (orr[sl][hit] - ol[sl][hit]) * (ot[sl][hit] - ob[sl][hit])
            sub = other.iloc[lo:hi].iloc[hit]
            scene = sub["scene"].to_numpy()
            cr_pid, cr_pos = sub["cr_patch_id"].to_numpy(), sub["cr_patch"].to_numpy()
            cr_left, cr_top = sub["left"].to_numpy(), sub["top"].to_numpy()
            share = inter[hit] / area
            roi_scene = cr.scene_of_roi(r.roi)
            for j in range(len(sub)):
                if share[j] <= min_overlap:
                    continue
                out.append((r.pdx, r.roi, r.row, r.col, r.patch_id, scene[j],
                            int(cr_pid[j]), int(cr_pos[j]), int(r.epsg),
                            float(share[j]), float(inter[hit][j] / cr_area[j]),
                            float(inter[hit][j] / (area + cr_area[j] - inter[hit][j])),
                            float((cr_left[j] - r.left) / r.px), float((r.top - cr_top[j]) / r.py),
                            scene[j] == roi_scene))
    table = pd.DataFrame(out, columns=list(COLUMNS))
    table = table.sort_values(["pdx", "overlap", "cr_patch"], ascending=[True, False, True],
                              kind="stable").reset_index(drop=True)
    return table


def pair(ds: xr.Dataset, other: Any, *, min_overlap: float = 0.0,
         storage_options: dict | None = None) -> pd.DataFrame:
    """:func:`pair_patches` of ``ds`` and ``other``, whichever kind each is."""
    return pair_patches(ds, other, min_overlap=min_overlap, storage_options=storage_options)
