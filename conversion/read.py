"""Read the archive's GeoTIFFs through rasterio, checking each against what the plan expects.

Every check failure comes back as a :class:`~s2cube_conversion.discover.Problem` that names
the file and says what is wrong, so a conversion records the gap and goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from s2cube.io.storage import Location, filesystem
from s2cube_conversion.discover import Problem

logger = logging.getLogger(__name__)

#: band count and dtype of each modality (archive.md sec. 3)
EXPECTED = {"s2": (13, np.dtype("uint16")), "s1": (2, np.dtype("float64"))}


@dataclass(frozen=True)
class Georef:
    """Where a GeoTIFF sits: its CRS, affine transform and size."""

    crs_wkt: str
    epsg: int | None
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f
    width: int
    height: int

    def same_grid(self, other: Georef, tol: float = 1e-6) -> bool:
        """True when both have the same CRS, size and transform (to ``tol`` pixels)."""
        return (
            self.crs_wkt == other.crs_wkt
            and (self.width, self.height) == (other.width, other.height)
            and np.allclose(self.transform, other.transform, rtol=0, atol=tol * abs(self.transform[0]))
        )


@contextlib.contextmanager
def open_tif(root: Location, path: str, fs=None) -> Iterator:
    """Open ``root/path`` with rasterio: directly for local files, else through fsspec bytes."""
    import rasterio
    from rasterio.io import MemoryFile

    if root.is_local:
        with rasterio.open(f"{root.path}/{path}") as src:
            yield src
        return
    fs = fs or filesystem(root)
    data = fs.cat_file(f"{root.path}/{path}")
    with MemoryFile(data) as mem, mem.open() as src:
        yield src


def georef_of(src) -> Georef:
    """The :class:`Georef` of an open rasterio dataset."""
    crs = src.crs
    t = src.transform
    return Georef(
        crs.to_wkt() if crs else "",
        crs.to_epsg() if crs else None,
        (t.a, t.b, t.c, t.d, t.e, t.f),
        src.width,
        src.height,
    )


def read_header(root: Location, path: str, fs=None) -> Georef | Problem:
    """Read only the georeference of one file."""
    try:
        with open_tif(root, path, fs) as src:
            return georef_of(src)
    except Exception as exc:  # rasterio raises many kinds; each becomes a named problem
        return Problem(path, f"cannot be read as a GeoTIFF ({_short(exc)}); "
                       "re-download or remove the file", fatal=False)


def read_patch(
    root: Location, path: str, modality: str, expected: Georef, fs=None, data: bytes | None = None
) -> np.ndarray | Problem:
    """Read one file and check band count, dtype, size and grid against ``expected``.

    Returns the array (bands, H, W) in the file's dtype, or the :class:`Problem` found.
    """
    import rasterio
    from rasterio.io import MemoryFile

    count, dtype = EXPECTED[modality]
    try:
        if data is not None:
            ctx = contextlib.ExitStack()
            mem = ctx.enter_context(MemoryFile(data))
            src = ctx.enter_context(mem.open())
        else:
            ctx = contextlib.ExitStack()
            src = ctx.enter_context(open_tif(root, path, fs))
        with ctx:
            problem = _check(path, src, modality, count, dtype, expected)
            if problem is not None:
                return problem
            arr = src.read()
    except rasterio.errors.RasterioError as exc:
        return Problem(path, f"cannot be read as a GeoTIFF ({_short(exc)}); "
                       "re-download or remove the file", fatal=False)
    except OSError as exc:
        return Problem(path, f"cannot be read ({_short(exc)}); check that the file is "
                       "readable and complete", fatal=False)
    return arr


def _check(path, src, modality, count, dtype, expected: Georef) -> Problem | None:
    if src.count != count:
        return Problem(path, f"has {src.count} bands, {modality.upper()} files have {count}; "
                       "this is not a SEN12MS-CR-TS file, replace it", fatal=False)
    if np.dtype(src.dtypes[0]) != dtype:
        return Problem(path, f"has dtype {src.dtypes[0]}, {modality.upper()} files are {dtype}; "
                       "replace it with the original file", fatal=False)
    if (src.width, src.height) != (expected.width, expected.height):
        return Problem(path, f"is {src.width}×{src.height} px, the ROI's patches are "
                       f"{expected.width}×{expected.height}; replace it", fatal=False)
    got = georef_of(src)
    if not got.same_grid(expected):
        return Problem(path, "its CRS or pixel grid does not fit the ROI's other patches "
                       f"(expected origin {expected.transform[2]:.2f}, {expected.transform[5]:.2f} "
                       f"in EPSG:{expected.epsg}, found {got.transform[2]:.2f}, "
                       f"{got.transform[5]:.2f} in EPSG:{got.epsg}); replace it", fatal=False)
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
