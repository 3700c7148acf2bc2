"""Every error s2cube raises on purpose, under one base class.

Messages name the file, URL or value at fault and say what to do about it.
"""

from __future__ import annotations


class S2CubeError(Exception):
    """Base class of the errors s2cube raises on purpose."""


class NotACubeError(S2CubeError, ValueError):
    """The URL holds no s2cube cube (or another dataset)."""


class IncompleteCubeError(S2CubeError):
    """The cube is being written, or a conversion stopped before it finished."""


class ArchiveError(S2CubeError):
    """The source archive has problems; ``problems`` lists every one found in this run."""

    def __init__(self, message: str, problems: list | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems[:200])
            more = len(self.problems) - 200
            tail = f"\n  … and {more} more" if more > 0 else ""
            message = f"{message}\n{lines}{tail}"
        super().__init__(message)


class ConversionError(S2CubeError):
    """A conversion could not run or finish (the cube is left resumable)."""


class StorageError(S2CubeError):
    """Object storage refused a request (credentials, bucket, permissions)."""


class ChunkError(S2CubeError):
    """A stored chunk failed its checksum, could not be decoded, or is missing.

    The message names the variable, ROI, slot, patch and storage key; the attributes hold
    the same for programs: ``variable``, ``roi``, ``slot``, ``row``, ``col``, ``key``,
    ``reason`` (``"checksum"``, ``"decode"``, ``"truncated"``, ``"index"``, ``"missing"``).
    """

    def __init__(self, message: str, *, variable: str = "", roi: str = "", slot: int | None = None,
                 row: int | None = None, col: int | None = None, key: str = "",
                 reason: str = "") -> None:
        super().__init__(message)
        self.variable, self.roi, self.slot = variable, roi, slot
        self.row, self.col, self.key, self.reason = row, col, key, reason

    def __reduce__(self):  # keep the attributes across processes (dask, DataLoader workers)
        return (type(self), (self.args[0],), dict(self.__dict__))


class SelectionError(S2CubeError, ValueError):
    """A verb cannot honour the Dataset it was called on (empty, cropped, computed, ...)."""


class PlanError(S2CubeError, ValueError):
    """A plan names ROIs, patches or slots that the Dataset does not hold, or is malformed."""
