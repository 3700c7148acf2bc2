"""s2cube: SEN12MS-CR-TS as one chunked Zarr v3 cube, with a thin xarray accessor.

``import s2cube`` registers the ``.s2cube`` accessor; heavy dependencies (torch,
rasterio, s2cloudless) load only in the modules that need them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s2cube")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from s2cube.errors import (
    ArchiveError,
    ConversionError,
    IncompleteCubeError,
    NotACubeError,
    S2CubeError,
    StorageError,
)

__all__ = [
    "ArchiveError",
    "ConversionError",
    "IncompleteCubeError",
    "NotACubeError",
    "S2CubeError",
    "StorageError",
    "__version__",
]

from s2cube.accessor import S2CubeAccessor  # noqa: F401  (registers Dataset.s2cube)
from s2cube.io.open import open_cube

__all__ += ["open_cube"]
