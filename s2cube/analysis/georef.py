"""Georeference: an ROI's grid as a small value, and one ROI as a georeferenced Dataset.

:class:`RoiGrid` is everything needed to place a pixel of an ROI on the ground (CRS,
affine of pixel (0, 0), size in patches, patch size), built from the cube's coordinates
and root attrs without reading a pixel. :func:`roi` crops the cube to one ROI's own grid,
gives it real ``x``/``y`` coordinates (pixel centres) and writes the CRS the rioxarray way,
so ``.rio.reproject``, ``.rio.clip`` and ``.rio.to_raster`` work on it.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from s2cube.errors import SelectionError
from s2cube.grid import RoiGrid, patch_bounds
from s2cube.select import sel_roi

__all__ = ["RoiGrid", "patch_bounds", "roi", "roi_grid"]


def roi_grid(ds: xr.Dataset, name: str) -> RoiGrid:
    """The grid of ROI ``name`` from the cube's ``roi`` coordinates (and root attrs for the WKT)."""
    one = sel_roi(ds, name)
    p = int(ds.attrs.get("patch_size") or 0)
    if p <= 0:
        raise ValueError("the dataset has no 'patch_size' attribute; open it with s2cube.open_cube")
    epsg = int(one["epsg"].values) if "epsg" in one.coords else -1
    wkt = next((g.get("crs_wkt") for g in ds.attrs.get("grids", []) if g.get("roi") == name), "")
    transform = tuple(float(v) for v in np.asarray(one["transform"].values).ravel())
    grid = RoiGrid(name, wkt or "", epsg if epsg > 0 else None, transform,  # type: ignore[arg-type]
                   int(one["n_rows"].values), int(one["n_cols"].values), p)
    grid.crs  # noqa: B018  (refuse a grid without a CRS now, naming the ROI)
    return grid


def roi(ds: xr.Dataset, name: str) -> xr.Dataset:
    """One ROI cropped to its own grid, with real ``x``/``y`` and its CRS (rioxarray style).

    ``x``/``y`` are the pixel centres in the ROI's CRS; the CRS and transform are written
    by ``rio.write_crs`` / ``rio.write_transform`` in the ``spatial_ref`` coordinate; the
    small per-patch variables keep their ``row``/``col`` dims, cropped too. Lazy.

    Requires rioxarray (``pip install s2cube[geo]``).
    """
    try:
        import rioxarray  # noqa: F401  (registers .rio)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("roi() writes the CRS with rioxarray: pip install 's2cube[geo]'") from exc

    grid = roi_grid(ds, name)
    one = sel_roi(ds, name).drop_vars(["transform"], errors="ignore")
    one = one.isel(y=slice(0, grid.height), x=slice(0, grid.width),
                   row=slice(0, grid.n_rows), col=slice(0, grid.n_cols))
    x, y = grid.pixel_centres()
    one = one.assign_coords(
        x=("x", x, {"standard_name": "projection_x_coordinate", "units": "m",
                    "long_name": "x of pixel centres"}),
        y=("y", y, {"standard_name": "projection_y_coordinate", "units": "m",
                    "long_name": "y of pixel centres"}),
    )
    one = one.rio.write_crs(grid.crs).rio.write_transform(grid.affine())
    for var in one.data_vars.values():
        if "x" in var.dims and "y" in var.dims:
            var.encoding["grid_mapping"] = "spatial_ref"
    one._cache = {"rio": _roi_raster_class()(one)}  # .rio of this Dataset: see below
    return one


@functools.cache
def _roi_raster_class():
    """rioxarray's Dataset accessor, whose ``to_raster`` says what a GeoTIFF can hold.

    ``roi(...).rio.to_raster(path)`` would stack every variable (pixels of every slot,
    flags, dates) into one array and fail deep inside NumPy; a GeoTIFF holds one
    ``(band, y, x)`` array, so this names the call that writes one.
    """
    from rioxarray.raster_dataset import RasterDataset

    class RoiRaster(RasterDataset):
        def to_raster(self, raster_path, *args, **kwargs):
            ds = self._obj
            rasters = [n for n, v in ds.data_vars.items() if set(v.dims) == {"y", "x"}]
            if len(rasters) == len(ds.data_vars) and len({ds[n].dtype for n in rasters}) == 1:
                return super().to_raster(raster_path, *args, **kwargs)
            example = "one.s2.sel(time=4)" if "time" in ds["s2"].dims else "one.s2"
            raise SelectionError(
                f"a GeoTIFF holds one (band, y, x) array, and this ROI Dataset holds "
                f"{len(ds.data_vars)} variables of several dims and dtypes "
                f"({', '.join(map(str, ds.data_vars))}); write one variable at one slot, e.g. "
                f"{example}.rio.to_raster({str(raster_path)!r}), with "
                ".sel(band=['B4', 'B3', 'B2']) for fewer bands")

    return RoiRaster
