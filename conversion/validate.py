"""Check every source file against the cube: S2 bit-exact, S1 value-exact (NaN too), dates, ids.

Runs one task per patch location on dask, like the conversion, and lists every
difference (the CLI exits non-zero when there is any).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s2cube import schema
from s2cube.grid import RoiGrid
from s2cube.io.storage import Location, parse_location, zarr_store
from s2cube.parallel import map_bounded
from s2cube_conversion.discover import Problem, discover
from s2cube_conversion.plan import PatchTask, patch_georef, plan
from s2cube_conversion.read import read_patch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationReport:
    """Files checked and every difference found."""

    files: int
    differences: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclass(frozen=True)
class _Check:
    source: Location
    cube: Location
    grids: dict[str, RoiGrid]
    call: str  # names one validate call: what a process caches of the cube lives for it only


def validate(
    source: str | os.PathLike,
    cube: str | os.PathLike,
    *,
    rois: list[str] | None = None,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    client=None,
    progress=None,
) -> ValidationReport:
    """Compare every GeoTIFF under ``source`` (or of ``rois``) with the cube at ``cube``."""
    from s2cube_conversion import cr_archive, cr_validate  # SEN12MS-CR: its own layout

    if cr_archive.is_cr_archive(source, source_storage_options or storage_options):
        return cr_validate.validate(source, cube, rois=rois, storage_options=storage_options,
                                    source_storage_options=source_storage_options,
                                    client=client, progress=progress)
    src = parse_location(source, source_storage_options or storage_options)
    dst = parse_location(cube, storage_options)
    # a cube converted without S1 (--no-s1) is checked against the S2 files only, not
    # reported as missing every S1 file of the archive
    call = uuid.uuid4().hex  # the cube as it is now, not as an earlier call in this process saw it
    s1 = bool((_open(dst, call).attrs.get("conversion") or {}).get("s1", True))
    inventory = discover(src, rois=rois, s1=s1)
    the_plan = plan(inventory, src)
    check = _Check(src, dst, dict(the_plan.grids), call)
    tasks = list(the_plan.tasks)
    if client is None:
        results = []
        for i, t in enumerate(tasks):
            results.append(_check_patch(check, t))
            if progress:
                progress(i + 1, len(tasks))
    else:
        # one copy of the check (it holds every ROI's grid) for all tasks, a bounded number in
        # flight: passed with each task, or all submitted at once, the graph grew as ROIs x
        # patches
        results = map_bounded(client, _check_patch, check, tasks, what="patch location check",
                              progress=progress, stop_on_error=True)
    diffs = [d for r in results for d in r]
    files = sum(sum(p is not None for p in t.s2 + t.s1) for t in tasks)
    return ValidationReport(files, tuple(diffs))


@lru_cache(maxsize=2)
def _open(cube: Location, call: str):
    import xarray as xr

    return xr.open_zarr(zarr_store(cube, read_only=True), consolidated=True, chunks=None)


@lru_cache(maxsize=2)
def _small(cube: Location, call: str) -> dict[str, np.ndarray]:
    """The small variables a check reads, once per process and validate ``call``: read per
    patch, each whole (one chunk) array was decoded again for every patch, a cost growing
    with the ROIs."""
    ds = _open(cube, call)
    out = {k: ds[k].values for k in ("patch_id", "valid_s2", "valid_s1", "s2_date", "s1_date")}
    out["roi"] = schema.as_str(ds["roi"].values)
    return out


def _check_patch(check: _Check, task: PatchTask) -> list[Problem]:
    ds = _open(check.cube, check.call)
    small = _small(check.cube, check.call)
    grid = check.grids[task.roi]
    rois = list(small["roi"])
    if task.roi not in rois:
        return [Problem(f, f"{task.roi} is not in the cube; convert it") for f in task.s2 if f]
    i, p = rois.index(task.roi), grid.patch_size
    cell = {k: v[i][..., task.row, task.col] for k, v in small.items() if k != "roi"}
    out: list[Problem] = []
    if int(cell["patch_id"]) != task.pid:
        out.append(Problem(f"{task.roi}/patch_{task.pid}", f"patch id in the cube at row "
                           f"{task.row}, col {task.col} is {int(cell['patch_id'])}, not {task.pid}"))
        return out
    ys, xs = slice(task.row * p, (task.row + 1) * p), slice(task.col * p, (task.col + 1) * p)
    expected = patch_georef(grid, task.row, task.col)
    for mod, paths, dates in (("s2", task.s2, task.s2_dates), ("s1", task.s1, task.s1_dates)):
        stored = ds[mod].isel(roi=i, y=ys, x=xs)
        valid = cell[f"valid_{mod}"]
        cube_dates = cell[f"{mod}_date"]
        for t, path in enumerate(paths):
            if path is None:
                continue
            arr = read_patch(check.source, path, mod, expected)
            if isinstance(arr, Problem):
                if valid[t]:
                    out.append(Problem(path, f"unreadable now but marked valid in the cube ({arr.message})"))
                continue
            if not valid[t]:
                out.append(Problem(path, "the file reads, but the cube marks it missing "
                                   f"(valid_{mod} false); convert again to fill the gap"))
                continue
            got = stored.isel(time=t).values
            same = (np.array_equal(got, arr) if mod == "s2"
                    else np.array_equal(got.astype(np.float64), arr, equal_nan=True))
            if not same:
                n = int((got != arr).sum()) if mod == "s2" else int(
                    (~np.isclose(got, arr, rtol=0, atol=0, equal_nan=True)).sum())
                out.append(Problem(path, f"{n} pixel value(s) differ from the cube"))
            if np.datetime64(dates[t], "D") != cube_dates[t].astype("datetime64[D]"):
                out.append(Problem(path, f"date in the cube is {cube_dates[t]}, the file name says "
                                   f"{dates[t]}"))
    return out
