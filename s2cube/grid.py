"""An ROI's grid: the one small value that places every pixel of an ROI on the ground.

The converter builds it from the GeoTIFFs' georeference and records it in the cube's root
attributes (``grids``); the reader builds the ``roi`` coordinates from those records; the
analyses and the STAC catalog read it back with ``ds.s2cube.grid(name)``. Pure data and
arithmetic: no I/O, no heavy imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Affine6 = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class RoiGrid:
    """One ROI's patch grid: CRS, the affine of pixel (0, 0), its size in patches.

    ``transform`` is the affine ``(a, b, c, d, e, f)`` of pixel (0, 0) in GDAL/affine
    order: ``x = c + a·col``, ``y = f + e·row`` for the pixel's upper-left corner.
    """

    roi: str
    crs_wkt: str
    epsg: int | None
    transform: Affine6
    n_rows: int
    n_cols: int
    patch_size: int

    @property
    def name(self) -> str:
        """The ROI's label (``"ROIs1868_73"``)."""
        return self.roi

    @property
    def crs(self) -> str:
        """``"EPSG:32650"``, or the WKT when the grid has no EPSG code."""
        if self.epsg and self.epsg > 0:
            return f"EPSG:{self.epsg}"
        if self.crs_wkt:
            return self.crs_wkt
        raise ValueError(f"{self.roi} has neither an EPSG code nor a WKT; its CRS is unknown")

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
            raise ValueError(f"{self.roi}'s grid is rotated (b={b}, d={d}); it has no 1-D x/y "
                             "coordinates")
        x = c + a * (np.arange(self.width) + 0.5)
        y = f + e * (np.arange(self.height) + 0.5)
        return x, y

    def patch_transform(self, row: int, col: int) -> Affine6:
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

    def record(self) -> dict:
        """The grid as the cube's root attribute ``grids`` stores it (patch size aside)."""
        return {"roi": self.roi, "epsg": self.epsg, "crs_wkt": self.crs_wkt,
                "transform": list(self.transform), "n_rows": self.n_rows, "n_cols": self.n_cols}

    @classmethod
    def from_record(cls, record: dict, patch_size: int) -> RoiGrid:
        """A grid from one entry of the root attribute ``grids``."""
        return cls(str(record["roi"]), str(record.get("crs_wkt") or ""),
                   int(record["epsg"]) if record.get("epsg") not in (None, -1) else None,
                   tuple(float(v) for v in record["transform"]),  # type: ignore[arg-type]
                   int(record["n_rows"]), int(record["n_cols"]), int(patch_size))

    def same_layout(self, other: RoiGrid) -> bool:
        """Whether ``other`` places patches on the same grid (CRS and size)."""
        return (self.crs_wkt, self.n_rows, self.n_cols) == (other.crs_wkt, other.n_rows,
                                                            other.n_cols)


def patch_bounds(transform: Sequence[float], patch_size: int, row: int,
                 col: int) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of the patch at (row, col) of an ROI grid whose pixel
    (0, 0) has the affine ``transform`` (GDAL order): rasterio's bounds of its GeoTIFF."""
    a, _, c, _, e, f = transform
    p = patch_size
    x0, y0 = c + col * p * a, f + row * p * e
    xs, ys = (x0, x0 + p * a), (y0, y0 + p * e)
    return min(xs), min(ys), max(xs), max(ys)
