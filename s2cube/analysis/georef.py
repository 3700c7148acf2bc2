"""Georeference: an ROI's grid as a small value, and one ROI as a georeferenced Dataset.

:class:`RoiGrid` is everything needed to place a pixel of an ROI on the ground (CRS,
affine of pixel (0, 0), size in patches, patch size), built from the cube's coordinates
and root attrs without reading a pixel. :func:`roi` crops the cube to one ROI's own grid,
gives it real ``x``/``y`` coordinates (pixel centres) and writes the CRS the rioxarray way,
so ``.rio.reproject``, ``.rio.clip`` and ``.rio.to_raster`` work on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from s2cube.select import sel_roi


@dataclass(frozen=True)
class RoiGrid:
    """One ROI's pixel grid on the ground.

    ``transform`` is the affine ``(a, b, c, d, e, f)`` of pixel (0, 0) in GDAL/affine order:
    ``x = c + a·col``, ``y = f + e·row`` for the pixel's upper-left corner.
    """

    name: str
    crs: str  # "EPSG:32650" or a WKT when the cube knows no EPSG code
    transform: tuple[float, float, float, float, float, float]
    n_rows: int
    n_cols: int
    patch_size: int

    @property
    def height(self) -> int:
        """Pixels from north to south."""
        return self.n_rows * self.patch_size

    @property
    def width(self) -> int:
        """Pixels from west to east."""
        return self.n_cols * self.patch_size

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def affine(self):
        """The transform as an :class:`affine.Affine` (rasterio's type)."""
        from affine import Affine

        return Affine(*self.transform)

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``: the CRS coordinates of the pixel centres of columns and rows."""
        a, b, c, d, e, f = self.transform
        if b or d:
            raise ValueError(f"{self.name}'s grid is rotated (b={b}, d={d}); it has no 1-D x/y "
                             "coordinates")
        x = c + a * (np.arange(self.width) + 0.5)
        y = f + e * (np.arange(self.height) + 0.5)
        return x, y

    def patch_transform(self, row: int, col: int) -> tuple[float, ...]:
        """The affine of the patch at (row, col), as its GeoTIFF has it."""
        a, b, c, d, e, f = self.transform
        p = self.patch_size
        return (a, b, c + col * p * a, d, e, f + row * p * e)

    def patch_bounds(self, row: int, col: int) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the patch at (row, col), the reference's ``coord``."""
        return patch_bounds(self.transform, self.patch_size, row, col)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the whole ROI grid."""
        a, _, c, _, e, f = self.transform
        xs, ys = (c, c + self.width * a), (f, f + self.height * e)
        return min(xs), min(ys), max(xs), max(ys)


def patch_bounds(transform: Sequence[float], patch_size: int, row: int,
                 col: int) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of the patch at (row, col) of an ROI grid whose pixel
    (0, 0) has the affine ``transform`` (GDAL order): rasterio's bounds of its GeoTIFF."""
    a, _, c, _, e, f = transform
    p = patch_size
    x0, y0 = c + col * p * a, f + row * p * e
    xs, ys = (x0, x0 + p * a), (y0, y0 + p * e)
    return min(xs), min(ys), max(xs), max(ys)


def roi_grid(ds: xr.Dataset, name: str) -> RoiGrid:
    """The grid of ROI ``name`` from the cube's ``roi`` coordinates (and root attrs for the WKT)."""
    one = sel_roi(ds, name)
    p = int(ds.attrs.get("patch_size") or 0)
    if p <= 0:
        raise ValueError("the dataset has no 'patch_size' attribute; open it with s2cube.open_cube")
    epsg = int(one["epsg"].values) if "epsg" in one.coords else -1
    wkt = next((g.get("crs_wkt") for g in ds.attrs.get("grids", []) if g.get("roi") == name), "")
    if epsg > 0:
        crs = f"EPSG:{epsg}"
    elif wkt:
        crs = wkt
    else:
        raise ValueError(f"{name} has neither an EPSG code nor a WKT in the cube; its CRS is unknown")
    transform = tuple(float(v) for v in np.asarray(one["transform"].values).ravel())
    return RoiGrid(name, crs, transform, int(one["n_rows"].values), int(one["n_cols"].values), p)


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
    return one
