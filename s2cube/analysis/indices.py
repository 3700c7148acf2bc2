"""Spectral indices as lazy xarray expressions on reflectance.

Every index here is a normalised difference ``(a − b) / (a + b)`` of two Sentinel-2 bands,
computed on reflectance (DN / 10000); NaN where ``a + b`` is 0 (fill values, gaps).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

#: name -> (band a, band b) of ``(a - b) / (a + b)``.
INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("B8", "B4"),   # vegetation
    "ndwi": ("B3", "B8"),   # water (McFeeters)
    "ndsi": ("B3", "B11"),  # snow
    "nbr": ("B8", "B12"),   # burn ratio
    "ndmi": ("B8", "B11"),  # moisture
}


def index(data: xr.Dataset | xr.DataArray, name: str = "ndvi") -> xr.DataArray:
    """The normalised difference ``name`` of :data:`INDICES`, lazy, float32, without ``band``."""
    key = name.lower()
    if key not in INDICES:
        raise ValueError(f"unknown index {name!r}; known: {', '.join(INDICES)}")
    s2 = data["s2"] if isinstance(data, xr.Dataset) else data
    a_name, b_name = INDICES[key]
    a = s2.sel(band=a_name, drop=True).astype(np.float32)
    b = s2.sel(band=b_name, drop=True).astype(np.float32)
    total = a + b
    out = (a - b) / total.where(total != 0)
    return out.rename(key).assign_attrs(long_name=f"{key.upper()} = ({a_name} - {b_name}) / "
                                                  f"({a_name} + {b_name})")


def ndvi(data: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """Normalised difference vegetation index ``(B8 − B4) / (B8 + B4)``."""
    return index(data, "ndvi")
