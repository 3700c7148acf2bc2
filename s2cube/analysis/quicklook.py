"""RGB quicklooks: true colour (B4, B3, B2) with a percentile stretch, as PNG bytes.

:func:`quicklook` computes one small image (it is a verb) and returns a
:class:`Quicklook`, which Jupyter shows inline through ``_repr_png_``. The PNG is
written with ``zlib`` alone: no matplotlib or PIL import.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from s2cube import schema

TRUE_COLOUR = ("B4", "B3", "B2")


@dataclass(frozen=True)
class Quicklook:
    """An RGB image ``(H, W, 3)`` uint8 with what it shows; renders to PNG."""

    rgb: np.ndarray = field(repr=False)
    title: str = ""
    stretch: tuple[float, float] = (2.0, 98.0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]

    def to_png(self) -> bytes:
        """The image as PNG bytes (8-bit RGB)."""
        return png_bytes(self.rgb)

    def save(self, path) -> None:
        """Write the PNG to ``path``."""
        with open(path, "wb") as fh:
            fh.write(self.to_png())

    def _repr_png_(self) -> bytes:
        return self.to_png()


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` or ``(H, W)`` uint8 array as a PNG."""
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if img.ndim == 2:
        colour = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        colour = 2
    else:
        raise ValueError(f"PNG needs (H, W) or (H, W, 3) uint8, got shape {img.shape}")
    h, w = img.shape[:2]
    rows = img.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(
            ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def stretch(values: np.ndarray, low: float = 2.0, high: float = 98.0,
            valid: np.ndarray | None = None) -> np.ndarray:
    """Percentile stretch per channel (last axis) to uint8; invalid pixels become black."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v).all(axis=-1)
    if valid is not None:
        ok &= valid
    out = np.zeros(v.shape, np.uint8)
    if not ok.any():
        return out
    for ch in range(v.shape[-1]):
        lo, hi = np.percentile(v[..., ch][ok], [low, high])
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out[..., ch] = np.where(ok, np.clip((v[..., ch] - lo) * scale, 0, 255), 0).astype(np.uint8)
    return out


def quicklook(
    data: xr.DataArray | xr.Dataset,
    *,
    bands: tuple[str, str, str] = TRUE_COLOUR,
    low: float = 2.0,
    high: float = 98.0,
    title: str = "",
    scale: int = 1,
) -> Quicklook:
    """Render one frame ``(band, y, x)`` of S2 DN or reflectance as a stretched RGB image.

    ``data`` is an ``s2`` DataArray (or a Dataset holding ``s2``) reduced to one frame,
    e.g. ``ds.s2cube.roi("ROIs1868_73").s2.isel(time=3)``. Zeros (the fill value) and
    NaN are shown black and left out of the percentiles; ``scale`` enlarges each pixel to
    ``scale × scale`` for display. Computes the three bands.
    """
    da = data["s2"] if isinstance(data, xr.Dataset) else data
    extra = [d for d in da.dims if d not in ("band", "y", "x")]
    if extra:
        raise ValueError(f"quicklook renders one frame (band, y, x); select {extra} first, "
                         "e.g. .isel(time=0)")
    missing = [str(b) for b in bands if b not in schema.BANDS]
    if missing:
        raise ValueError(f"bands {missing} are not Sentinel-2 bands {schema.BANDS}")
    rgb = da.sel(band=list(bands)).transpose("y", "x", "band").values.astype(np.float64)
    valid = np.asarray((rgb > 0).any(axis=-1))
    img = stretch(rgb, low, high, valid)
    if int(scale) > 1:
        img = img.repeat(int(scale), axis=0).repeat(int(scale), axis=1)
    return Quicklook(img, title, (low, high))


def roi_quicklook(ds: xr.Dataset, roi: str, time: int, **options) -> Quicklook:
    """Render ROI ``roi`` at the slot labelled ``time`` (the ``time`` label, not a position).

    Raises
    ------
    SelectionError
        The Dataset does not hold that ROI or that slot.
    """
    from s2cube.errors import SelectionError
    from s2cube.select import sel_roi

    one = sel_roi(ds, roi)
    labels = [int(t) for t in np.atleast_1d(one["time"].values)]
    if isinstance(time, bool) or not isinstance(time, int | np.integer) or int(time) not in labels:
        shown = int(time) if isinstance(time, np.integer) else time  # 5, not np.int64(5)
        raise SelectionError(f"slot {shown!r} is not in this Dataset; its time labels are "
                             f"{labels} (slots are named by label, e.g. quicklook({str(roi)!r}, "
                             f"{labels[0] if labels else 0}))")
    return quicklook(one.s2.sel(time=int(time)), title=f"{roi} slot {int(time)}", **options)
