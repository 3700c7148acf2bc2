"""The real Sentinel-2 L1C pixels the synthetic archive is built from.

The file is ``reference_scenes.npy`` (float32, ``(5, 101, 100, 13)`` = scene, y, x, band, TOA
reflectance; scenes 0 and 1 under real cloud, 2, 3 and 4 clear). It is never copied into the
repository: it is found, in this order, at the path passed by the caller, at the path in the
environment variable ``S2CUBE_REAL_PIXELS``, or at ``<repo root>/../shared/data/real-s2-l1c/``.

``spectra="synthetic"`` replaces it by a documented stand-in of the same shape (see
:func:`synthetic_scenes`) for machines without the file; figures that depend on how real imagery
behaves (compression, cloud detection) must not be measured on the stand-in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ENV_VAR = "S2CUBE_REAL_PIXELS"
FILE_NAME = "reference_scenes.npy"
SHAPE = (5, 101, 100, 13)
CLOUDY_SCENES = (0, 1)  # 0: thick cloud (s2cloudless 100 %), 1: thinner cloud (99.9 %)
CLEAR_SCENES = (2, 3, 4)

#: TOA reflectance of the stand-in's endmembers, bands B1 … B12 (rounded means of the real file).
VEGETATION = (0.110, 0.080, 0.066, 0.041, 0.072, 0.198, 0.250, 0.244, 0.279, 0.082, 0.001, 0.125,
              0.055)
SOIL = (0.130, 0.110, 0.110, 0.130, 0.150, 0.170, 0.190, 0.200, 0.210, 0.080, 0.002, 0.280, 0.200)
THICK_CLOUD = (0.313, 0.299, 0.276, 0.275, 0.289, 0.366, 0.409, 0.391, 0.429, 0.135, 0.002, 0.318,
               0.257)
THIN_CLOUD = (0.177, 0.151, 0.135, 0.119, 0.145, 0.255, 0.304, 0.299, 0.327, 0.130, 0.005, 0.192,
              0.138)


def repo_root() -> Path:
    """The repository holding this package (``conversion/`` is installed in editable mode)."""
    return Path(__file__).resolve().parents[1]


def real_pixels_path(path: str | os.PathLike | None = None) -> Path:
    """Where the real pixels are looked for: ``path``, else ``$S2CUBE_REAL_PIXELS``, else
    ``<repo root>/../shared/data/real-s2-l1c/reference_scenes.npy``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return (repo_root().parent / "shared" / "data" / "real-s2-l1c" / FILE_NAME).resolve()


def real_pixels_available(path: str | os.PathLike | None = None) -> bool:
    """True when the real pixels file exists where :func:`real_pixels_path` looks."""
    return real_pixels_path(path).is_file()


def load_scenes(spectra: str = "real", path: str | os.PathLike | None = None) -> np.ndarray:
    """The five scenes as float32 ``(5, 13, 101, 100)`` (band first), real or the stand-in.

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
    where = real_pixels_path(path)
    if not where.is_file():
        raise FileNotFoundError(
            f"real Sentinel-2 pixels not found at {where}: put {FILE_NAME} there, point "
            f"${ENV_VAR} (or the real_pixels argument) at it, or pass spectra='synthetic' "
            "for a stand-in that is not real imagery"
        )
    scenes = np.load(where, allow_pickle=False)
    if scenes.shape != SHAPE:
        raise ValueError(f"{where} holds an array of shape {scenes.shape}, expected {SHAPE}")
    logger.debug("real pixels loaded from %s", where)
    return np.ascontiguousarray(scenes.astype(np.float32).transpose(0, 3, 1, 2))


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
