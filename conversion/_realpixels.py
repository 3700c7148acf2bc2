"""The real Sentinel-2 L1C pixels the synthetic archive is built from.

Five real scenes of one 1 km² area, ``(5, 101, 100, 13)`` = scene, y, x, band as TOA reflectance
(scenes 0 and 1 under real cloud, 2, 3 and 4 clear). They ship with this package as
``data/reference_scenes_dn.npy.xz``: the integer digital numbers (reflectance × 10000) as uint16,
band first, in an xz-compressed ``.npy`` (see ``data/README.md`` for provenance, licence and
checksums). Read through :mod:`importlib.resources`, so an installed wheel needs no repository.
The float32 reflectance :func:`load_scenes` returns is ``DN / 10000``, bit-identical to the
original float32 file.

A different file can be used instead: the path passed by the caller, else the path in the
environment variable ``S2CUBE_REAL_PIXELS``. It may be the original float32 ``.npy``
``(5, 101, 100, 13)`` (returned as it is) or a file in the packaged format.

``spectra="synthetic"`` replaces it by a documented stand-in of the same shape (see
:func:`synthetic_scenes`); figures that depend on how real imagery behaves (compression, cloud
detection) must not be measured on the stand-in.
"""

from __future__ import annotations

import io
import logging
import lzma
import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ENV_VAR = "S2CUBE_REAL_PIXELS"
FILE_NAME = "reference_scenes.npy"  # the original float32 file (an override may point at it)
PACKAGED_NAME = "reference_scenes_dn.npy.xz"  # the packaged copy, in data/
SCALE = 10000  # reflectance = DN / SCALE
SHAPE = (5, 101, 100, 13)  # the original layout: scene, y, x, band
DN_SHAPE = (5, 13, 101, 100)  # the packaged and returned layout: scene, band, y, x
CLOUDY_SCENES = (0, 1)  # 0: thick cloud (s2cloudless 100 %), 1: thinner cloud (99.9 %)
CLEAR_SCENES = (2, 3, 4)

_XZ_MAGIC = b"\xfd7zXZ\x00"

#: TOA reflectance of the stand-in's endmembers, bands B1 … B12 (rounded means of the real file).
VEGETATION = (0.110, 0.080, 0.066, 0.041, 0.072, 0.198, 0.250, 0.244, 0.279, 0.082, 0.001, 0.125,
              0.055)
SOIL = (0.130, 0.110, 0.110, 0.130, 0.150, 0.170, 0.190, 0.200, 0.210, 0.080, 0.002, 0.280, 0.200)
THICK_CLOUD = (0.313, 0.299, 0.276, 0.275, 0.289, 0.366, 0.409, 0.391, 0.429, 0.135, 0.002, 0.318,
               0.257)
THIN_CLOUD = (0.177, 0.151, 0.135, 0.119, 0.145, 0.255, 0.304, 0.299, 0.327, 0.130, 0.005, 0.192,
              0.138)


def packaged_pixels() -> Traversable:
    """The copy shipped as package data (``s2cube_conversion/data/reference_scenes_dn.npy.xz``)."""
    return resources.files("s2cube_conversion") / "data" / PACKAGED_NAME


def real_pixels_path(path: str | os.PathLike | None = None) -> Path | Traversable:
    """Where the real pixels are read from: ``path``, else ``$S2CUBE_REAL_PIXELS``, else the
    packaged copy (:func:`packaged_pixels`)."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return packaged_pixels()


def real_pixels_available(path: str | os.PathLike | None = None) -> bool:
    """True when the real pixels exist where :func:`real_pixels_path` looks."""
    return real_pixels_path(path).is_file()


def _read(path: str | os.PathLike | None) -> tuple[str, np.ndarray]:
    """``("dn", uint16 (5, 13, 101, 100))`` from a file in the packaged format, or
    ``("reflectance", float32 (5, 13, 101, 100))`` from an original-format float32 ``.npy``."""
    where = real_pixels_path(path)
    if not where.is_file():
        raise FileNotFoundError(
            f"real Sentinel-2 pixels not found at {where}: point ${ENV_VAR} (or the real_pixels "
            f"argument) at {FILE_NAME} or {PACKAGED_NAME}, reinstall s2cube if its package data "
            "is missing, or pass spectra='synthetic' for a stand-in that is not real imagery"
        )
    raw = where.read_bytes()
    logger.debug("real pixels loaded from %s", where)
    if raw.startswith(_XZ_MAGIC):
        dn = np.load(io.BytesIO(lzma.decompress(raw)), allow_pickle=False)
        if dn.shape != DN_SHAPE or dn.dtype != np.uint16:
            raise ValueError(f"{where} holds {dn.dtype} {dn.shape}, expected uint16 {DN_SHAPE}")
        return "dn", dn
    refl = np.load(io.BytesIO(raw), allow_pickle=False)
    if refl.shape != SHAPE:
        raise ValueError(f"{where} holds an array of shape {refl.shape}, expected {SHAPE}")
    return "reflectance", np.ascontiguousarray(refl.astype(np.float32).transpose(0, 3, 1, 2))


def load_dn(path: str | os.PathLike | None = None) -> np.ndarray:
    """The five real scenes as uint16 digital numbers ``(5, 13, 101, 100)`` (band first).

    Read from :func:`real_pixels_path`: an xz-compressed uint16 ``.npy`` in that layout (the
    packaged format), or the original float32 reflectance ``.npy`` ``(5, 101, 100, 13)``, whose
    values × 10000 are rounded to the nearest integer.

    Raises
    ------
    FileNotFoundError
        The file is absent (the message names the path and the fixes).
    ValueError
        The file has the wrong shape or dtype.
    """
    kind, arr = _read(path)
    if kind == "dn":
        return arr
    return np.rint(arr.astype(np.float64) * SCALE).clip(0, np.iinfo(np.uint16).max).astype(np.uint16)


def load_scenes(spectra: str = "real", path: str | os.PathLike | None = None) -> np.ndarray:
    """The five scenes as float32 TOA reflectance ``(5, 13, 101, 100)`` (band first), real or
    the stand-in. From the packaged copy, the real ones are :func:`load_dn` / 10000 rounded to
    float32 once: bit-identical to the original float32 file.

    Raises
    ------
    FileNotFoundError
        ``spectra="real"`` and the file is absent (the message names the path and the fixes).
    ValueError
        ``spectra`` is unknown or the file has the wrong shape.
    """
    if spectra == "synthetic":
        return synthetic_scenes()
    if spectra != "real":
        raise ValueError(f"spectra={spectra!r} is not 'real' or 'synthetic'")
    kind, arr = _read(path)
    if kind == "dn":
        return arr.astype(np.float32) / np.float32(SCALE)
    return arr


def synthetic_scenes() -> np.ndarray:
    """A stand-in for the real file, same layout as :func:`load_scenes` returns.

    Clear scenes mix :data:`VEGETATION` and :data:`SOIL` by a smooth random field (a different
    season per scene); cloudy scenes are :data:`THICK_CLOUD` / :data:`THIN_CLOUD` with 8 %
    texture. Fixed seed: the stand-in never changes.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(20180101)
    shape = SHAPE[1:3]
    field = gaussian_filter(rng.standard_normal(shape), 6, mode="wrap")
    mix = np.clip(0.5 + field / (4 * field.std()), 0, 1)
    veg, soil = (np.asarray(s, np.float32)[:, None, None] for s in (VEGETATION, SOIL))
    out = np.empty((5, 13, *shape), np.float32)
    for k, shift in zip(CLEAR_SCENES, (0.0, 0.1, -0.1)):
        m = np.clip(mix + shift, 0, 1)
        out[k] = veg * m + soil * (1 - m)
    for k, spec in zip(CLOUDY_SCENES, (THICK_CLOUD, THIN_CLOUD)):
        tex = gaussian_filter(rng.standard_normal(shape), 3, mode="wrap")
        out[k] = np.asarray(spec, np.float32)[:, None, None] * (1 + 0.08 * tex / tex.std())
    return np.round(out, 4)
