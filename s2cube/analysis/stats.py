"""Masks, reflectance and cloud statistics, as lazy xarray expressions.

Per-pixel functions (:func:`cloud_mask`, :func:`masked_reflectance`,
:func:`clear_fraction`) read the pixel variables chunk by chunk when computed;
:func:`cloudiness` reads only the small ``coverage``, ``valid_s2`` and ``s2_date`` arrays
(well under 1 % of a cube's bytes). Nothing here computes: call ``.compute()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from s2cube import schema
from s2cube.select import detector_name, patch_size

DN_SCALE = 10000.0
GROUPS = ("roi", "region", "split", "month", "collection")


def rechunk(arr: xr.DataArray, chunks: dict[str, int]) -> xr.DataArray:
    """Rechunk the data only (``DataArray.chunk`` would turn in-memory coordinates into dask)."""
    import dask.array as da

    spec = {arr.get_axis_num(d): c for d, c in chunks.items() if d in arr.dims}
    data = arr.data
    data = data.rechunk(spec) if isinstance(data, da.Array) else da.from_array(data).rechunk(spec)
    return arr.copy(data=data)


def to_pixels(frame_values: xr.DataArray, patch_size: int) -> xr.DataArray:
    """Spread a per-patch array ``(..., row, col)`` to pixels ``(..., y, x)``, chunk for chunk.

    Each patch becomes one ``P × P`` chunk, aligned with the pixel variables' chunks.
    """
    v = frame_values
    if v.chunks is not None:
        v = rechunk(v, {"row": 1, "col": 1})
    data = v.data
    if hasattr(data, "dask"):
        import dask.array as da

        data = da.repeat(da.repeat(data, patch_size, axis=v.get_axis_num("row")),
                         patch_size, axis=v.get_axis_num("col"))
    else:
        data = np.repeat(np.repeat(data, patch_size, axis=v.get_axis_num("row")),
                         patch_size, axis=v.get_axis_num("col"))
    dims = tuple({"row": "y", "col": "x"}.get(str(d), d) for d in v.dims)
    coords = {k: c for k, c in v.coords.items() if "row" not in c.dims and "col" not in c.dims}
    return xr.DataArray(data, dims=dims, coords=coords, name=v.name, attrs=v.attrs)


def mask_source(detector: str) -> str:
    """The stored variable a detector's pixel mask comes from (``cloud_mask`` or ``cloud_prob``)."""
    return schema.mask_source(detector)


def mask_from(raw, detector: str):
    """Cloudy pixels of ``detector`` from its stored values (:func:`s2cube.schema.cloudy`)."""
    return schema.cloudy(raw, detector)


def cloud_mask(ds: xr.Dataset, detector: str = "s2cloudless_mask") -> xr.DataArray:
    """Lazy boolean ``(roi, time, y, x)``: the pixel is cloudy (or shadow) for ``detector``.

    See :func:`mask_from` for what each detector's mask is.
    """
    return mask_from(ds[mask_source(detector)], detector).rename(f"cloudy_{detector}")


def valid_frames(ds: xr.Dataset) -> xr.DataArray:
    """Lazy boolean ``(roi, time, row, col)``: the S2 frame exists and is not blank."""
    valid = ds["valid_s2"]
    if "blank" in ds:
        valid = valid & ~ds["blank"]
    return valid.rename("valid")


def valid_pixels(ds: xr.Dataset) -> xr.DataArray:
    """:func:`valid_frames` spread to pixels ``(roi, time, y, x)``, one chunk per patch."""
    return to_pixels(valid_frames(ds), patch_size(ds))


def reflectance(ds: xr.Dataset, *, clip: bool = False) -> xr.DataArray:
    """``s2`` as float32 TOA reflectance (DN / 10000); ``clip`` first clips DN to [0, 10000]."""
    s2 = ds["s2"]
    if clip:
        s2 = s2.clip(0, int(DN_SCALE))
    out = s2.astype(np.float32) / np.float32(DN_SCALE)
    return out.rename("reflectance").assign_attrs(long_name="TOA reflectance", units="1")


def clear_pixels(ds: xr.Dataset, detector: str = "s2cloudless_mask") -> xr.DataArray:
    """Lazy boolean ``(roi, time, y, x)``: a valid frame and not cloudy for ``detector``."""
    return (valid_pixels(ds) & ~cloud_mask(ds, detector)).rename("clear")


def masked_reflectance(ds: xr.Dataset, detector: str = "s2cloudless_mask") -> xr.DataArray:
    """Reflectance where the pixel is clear for ``detector``, NaN elsewhere (and in gaps)."""
    return reflectance(ds).where(clear_pixels(ds, detector)).rename(f"reflectance_{detector}")


def clear_fraction(ds: xr.Dataset, detector: str = "s2cloudless_mask") -> xr.DataArray:
    """Per pixel ``(roi, y, x)``: the share of its valid frames that are clear for ``detector``."""
    valid = valid_pixels(ds)
    clear = valid & ~cloud_mask(ds, detector)
    n = valid.sum("time")
    return (clear.sum("time") / n.where(n > 0)).rename("clear_fraction").assign_attrs(
        long_name=f"share of valid frames clear for {detector}")


def _months(dates: xr.DataArray) -> xr.DataArray:
    """One-hot ``(month, ...)`` of the dates' months (False where NaT), lazy."""
    month = dates.dt.month
    labels = np.arange(1, 13)
    hot = month == xr.DataArray(labels, dims="month", coords={"month": labels})
    return hot


def cloudiness(
    ds: xr.Dataset,
    by: str | Sequence[str] = "roi",
    *,
    detector: str = "s2cloudless_mask",
    cloudy: float = 0.1,
    clear: float = 1e-3,
) -> xr.Dataset:
    """Cloudiness of the valid S2 frames from the stored ``coverage``, grouped ``by``.

    Parameters
    ----------
    by
        One or more of ``"roi"``, ``"region"``, ``"split"``, ``"collection"``, ``"month"``
        (month of the S2 acquisition date); ``()`` for the whole cube.
    detector
        Which stored coverage to use.
    cloudy, clear
        A frame is cloudy when its coverage > ``cloudy``, clear when ≤ ``clear``.

    Returns
    -------
    xarray.Dataset
        Lazy: ``mean_coverage``, ``cloudy_share``, ``clear_share`` and ``frames`` over the
        ``by`` dims. Reads only ``coverage``, ``valid_s2`` (and ``s2_date`` for months).
    """
    groups = [by] if isinstance(by, str) else list(by)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {unknown}; use any of {', '.join(GROUPS)}")
    cov = ds["coverage"].sel(detector=detector_name(detector), drop=True)
    w = ds["valid_s2"].astype(np.float64)
    parts = {
        "frames": w,
        "coverage_sum": w * cov.fillna(0.0),
        "cloudy_frames": w * (cov > cloudy),
        "clear_frames": w * (cov <= clear),
    }
    frame_dims = [d for d in ("time", "row", "col") if d in w.dims]
    if "month" in groups:
        hot = _months(ds["s2_date"])
        parts = {k: (v * hot) for k, v in parts.items()}
    sums = xr.Dataset({k: v.sum(frame_dims) for k, v in parts.items()})
    sums = sums.drop_vars([c for c in sums.coords if c not in ("roi", "month", *ROI_LABELS)])
    roi_groups = [g for g in groups if g != "month"]
    if "roi" in sums.dims:
        if not roi_groups:
            sums = sums.sum("roi")
        elif roi_groups != ["roi"]:
            if len(roi_groups) > 1 and "roi" in roi_groups:
                raise ValueError("group by 'roi' alone or by labels of ROIs (region, split, "
                                 f"collection), not by {roi_groups}")
            sums = _group_rois(sums, roi_groups)
    n = sums["frames"]
    out = xr.Dataset({
        "mean_coverage": sums["coverage_sum"] / n.where(n > 0),
        "cloudy_share": sums["cloudy_frames"] / n.where(n > 0),
        "clear_share": sums["clear_frames"] / n.where(n > 0),
        "frames": n.fillna(0).astype(np.int64),  # NaN: a label combination without ROIs
    })
    out["mean_coverage"].attrs["long_name"] = f"mean {detector} coverage of the valid frames"
    out["cloudy_share"].attrs["long_name"] = f"share of frames with coverage > {cloudy}"
    out["clear_share"].attrs["long_name"] = f"share of frames with coverage <= {clear}"
    out.attrs.update(detector=detector, cloudy=cloudy, clear=clear)
    return out


ROI_LABELS = ("region", "split", "collection")


def _group_rois(sums: xr.Dataset, keys: list[str]) -> xr.Dataset:
    """Sum over the ROIs sharing the labels ``keys`` (numpy labels: stays lazy)."""
    labels = [schema.as_str(sums[k].values) for k in keys]
    combos = sorted(set(zip(*labels)))
    pieces = []
    for combo in combos:
        sel = np.all([lab == v for lab, v in zip(labels, combo)], axis=0)
        pieces.append(sums.isel(roi=np.flatnonzero(sel)).sum("roi"))
    out = xr.concat(pieces, dim="group")
    if len(keys) == 1:
        return out.assign_coords(group=[c[0] for c in combos]).rename(group=keys[0])
    index = {k: ("group", [c[i] for c in combos]) for i, k in enumerate(keys)}
    return out.assign_coords(index).set_index(group=keys).unstack("group")
