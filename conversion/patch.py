"""The worker side of a conversion: one patch location's whole series, end to end.

Read its (up to) 60 GeoTIFFs, detect clouds once for the 30 S2 frames, write the four
pixel shards, and write the journal record last. Runs in a dask worker; everything it
needs arrives in :class:`Job` (picklable, small) and per-process state is cached by run id.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s2cube import schema
from s2cube.grid import RoiGrid
from s2cube.io.storage import Location, filesystem, zarr_store
from s2cube_conversion.discover import Problem
from s2cube_conversion.plan import PatchTask, patch_georef
from s2cube_conversion.read import read_patch
from s2cube_conversion.write import PatchRecord, write_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the task: where to read and write, and how."""

    run_id: str
    source: Location
    cube: Location
    grids: dict[str, RoiGrid]
    roi_index: dict[str, int]
    s1: bool
    detector: object | None  # a picklable CloudDetector, or None to skip cloud detection
    s1_dtype: str = "float32"
    threads: int = 1  # per worker, for zarr's codec pool too ("single-threaded" means it)
    read_threads: int = 1


@lru_cache(maxsize=4)
def _arrays(run_id: str, cube: Location, threads: int) -> dict:
    """The cube's pixel arrays, opened once per worker process and run.

    Every chunk of a converted patch is written, even one that holds only the fill value
    (an all-NaN S1 frame, a cloud-free mask): readers then know that a chunk absent where
    the cube records a frame is damage, not a blank.
    """
    import zarr

    zarr.config.set({"threading.max_workers": threads})  # before zarr's pool first exists
    group = zarr.open_group(zarr_store(cube), mode="r+", use_consolidated=False)
    # every chunk of a recorded frame is stored, even all-fill ones (readers verify them);
    # the config is read when an array is opened (zarr >= 3.1; Array.with_config came later)
    with zarr.config.set({"array.write_empty_chunks": True}):
        return {var: group[var] for var in schema.PIXEL_VARIABLES}


def convert_patch(job: Job, task: PatchTask) -> PatchRecord:
    """Convert one patch location and return its journal record (already written)."""
    grid = job.grids[task.roi]
    expected = patch_georef(grid, task.row, task.col)
    p = grid.patch_size
    problems: list[Problem] = []
    s2 = np.zeros((schema.N_SLOTS, len(schema.BANDS), p, p), np.uint16)
    valid_s2 = _read_series(job, task.s2, "s2", expected, s2, problems)
    s1 = np.full((schema.N_SLOTS, len(schema.POLARIZATIONS), p, p), np.nan, np.float64)
    valid_s1 = [False] * schema.N_SLOTS
    if job.s1:
        valid_s1 = _read_series(job, task.s1, "s1", expected, s1, problems)
        if job.s1_dtype == "float32":
            s1 = to_float32_exactly(s1, task.s1)
    blank = [bool(v) and not s2[t].any() for t, v in enumerate(valid_s2)]
    coverage = np.full((schema.N_SLOTS, len(schema.DETECTORS)), np.nan)
    arrays = _arrays(job.run_id, job.cube, job.threads)
    i, y0, x0 = job.roi_index[task.roi], task.row * p, task.col * p
    region = (i, slice(None), slice(None), slice(y0, y0 + p), slice(x0, x0 + p))
    arrays["s2"][region] = s2
    if job.s1:
        arrays["s1"][region] = s1
    if job.detector is not None:
        result = job.detector(s2)
        coverage = result.coverage.astype(np.float64)
        arrays["cloud_prob"][region[:2] + region[3:]] = result.prob
        arrays["cloud_mask"][region[:2] + region[3:]] = result.flags
    coverage[~np.asarray(valid_s2)] = np.nan  # a missing frame has no cloud cover, not zero
    record = PatchRecord(
        roi=task.roi, row=task.row, col=task.col, pid=task.pid,
        coverage=[[None if np.isnan(v) else float(np.float32(v)) for v in row] for row in coverage],
        valid_s2=list(map(bool, valid_s2)), valid_s1=list(map(bool, valid_s1)), blank=blank,
        s2_dates=[d if v else None for d, v in zip(task.s2_dates, valid_s2)],
        s1_dates=[d if v else None for d, v in zip(task.s1_dates, valid_s1)],
        s1_converted=job.s1,
        problems=[[pr.path, pr.message] for pr in problems],
    )
    write_record(job.cube, record)
    return record


def _read_series(job: Job, paths, modality, expected, out: np.ndarray, problems) -> list[bool]:
    """Read every file of one modality into ``out``; return which slots were read."""
    valid = [False] * schema.N_SLOTS
    slots = [t for t, path in enumerate(paths) if path]
    fs = None if job.source.is_local else filesystem(job.source)
    blobs: dict[str, bytes] = {}
    if fs is not None:  # object stores: fetch the series' files concurrently
        full = {f"{job.source.path}/{paths[t]}": paths[t] for t in slots}
        got = fs.cat(list(full), on_error="return")
        for key, value in got.items():
            if isinstance(value, Exception):
                problems.append(Problem(full[key], f"cannot be read ({value}); check that it "
                                        "exists and is readable", fatal=False))
            else:
                blobs[full[key]] = value
    todo = [t for t in slots if fs is None or paths[t] in blobs]

    def one(t):
        return t, read_patch(job.source, paths[t], modality, expected, fs, blobs.get(paths[t]))

    if job.read_threads > 1:
        with ThreadPoolExecutor(job.read_threads) as pool:
            results = list(pool.map(one, todo))
    else:
        results = [one(t) for t in todo]
    for t, arr in results:
        if isinstance(arr, Problem):
            problems.append(arr)
        else:
            out[t] = arr
            valid[t] = True
    return valid


def to_float32_exactly(s1: np.ndarray, paths) -> np.ndarray:
    """S1 as float32 when every value round-trips exactly (NaN included), else an error."""
    s1_32 = s1.astype(np.float32)
    if np.array_equal(s1_32.astype(np.float64), s1, equal_nan=True):
        return s1_32
    from s2cube.errors import ConversionError

    lossy = ~((s1_32.astype(np.float64) == s1) | (np.isnan(s1) & np.isnan(s1_32)))
    t = int(np.flatnonzero(lossy.any(axis=(1, 2, 3)))[0])
    raise ConversionError(
        f"{paths[t]}: S1 values do not round-trip through float32 exactly, and this cube stores "
        "S1 as float32; convert into a new cube with --s1-dtype float64 (nothing is lost)")
