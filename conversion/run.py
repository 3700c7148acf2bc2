"""Run a conversion on dask.distributed: discover → plan → begin → one task per patch → finalize.

Resumable by construction (see :mod:`s2cube_conversion.write`): running the same command
again after a crash or a kill skips every patch whose journal record exists and ends
with a cube identical to an uninterrupted run. Incremental: converting one region now and
the rest later grows the same cube.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from s2cube import __version__, schema
from s2cube.errors import ConversionError
from s2cube.io.storage import Location, check_access, parse_location, redact
from s2cube.parallel import TasksFailed, map_bounded
from s2cube_conversion.discover import discover
from s2cube_conversion.lock import CubeLock
from s2cube_conversion.patch import Job, convert_patch
from s2cube_conversion.plan import PatchTask, patch_georef, plan
from s2cube_conversion.write import begin, check_target, finalize, read_records

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Selection:
    """Which part of the archive to convert."""

    split: str | None = None
    region: str | None = None
    rois: tuple[str, ...] = ()

    def roi_names(self) -> list[str] | None:
        if not (self.split or self.region or self.rois):
            return None
        return [r.name for r in schema.select_rois(self.split, self.region, list(self.rois) or None)]


@dataclass
class ConvertReport:
    """What a conversion did: counts, problems (every one), skipped files, time."""

    cube: str
    patches: int
    converted: int
    resumed: int
    seconds: float
    problems: dict[str, str] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    #: seconds per phase: discover, plan, begin, journal (reading it), run, finalize
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def convert(
    source: str | os.PathLike,
    cube: str | os.PathLike,
    *,
    selection: Selection | None = None,
    s1: bool = True,
    clouds: bool = True,
    cloud_method: str = "fast",
    s1_dtype: str = "auto",
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    progress: Progress | None = None,
    client=None,
    verify: bool = False,
    break_lock: bool = False,
) -> ConvertReport:
    """Convert the archive at ``source`` (or the selected part) into the cube at ``cube``.

    Parameters
    ----------
    source, cube
        Local paths or fsspec URLs (``s3://bucket/prefix``).
    selection
        Split, region and/or ROI names to convert; everything when ``None``.
    s1, clouds
        Convert Sentinel-1 too; run cloud detection (``clouds=False`` is for benchmarks).
    s1_dtype
        ``"float32"``, ``"float64"``, or ``"auto"``: float32 when sampled S1 files round-trip
        through it exactly (a new cube only; an existing cube keeps its dtype).
    scheduler, n_workers, threads_per_worker, client
        An existing dask scheduler address or client; otherwise a ``LocalCluster`` with
        ``n_workers`` (default: all cores) single-threaded worker processes.
    progress
        Called as ``progress(done, total)`` after each patch location.
    verify
        Check every chunk of the patch locations already in the cube (checksums, missing
        frames) and convert again those that hold a bad chunk (``s2cube verify`` lists them).
    break_lock
        Take over the cube's lock even if the conversion holding it may still be running
        (when it is known to be gone, it is taken over without this).

    Raises
    ------
    CubeLockedError
        Another conversion is writing the cube (a :class:`ConversionError`; nothing was
        written). See :mod:`s2cube_conversion.lock`.
    """
    from s2cube_conversion import cr_archive, cr_convert  # SEN12MS-CR: its own layout and kind

    if cr_archive.is_cr_archive(source, source_storage_options or storage_options):
        return cr_convert.convert(
            source, cube, selection=selection, s1=s1, clouds=clouds, cloud_method=cloud_method,
            s1_dtype=s1_dtype, scheduler=scheduler, n_workers=n_workers,
            threads_per_worker=threads_per_worker, storage_options=storage_options,
            source_storage_options=source_storage_options, progress=progress, client=client,
            verify=verify, break_lock=break_lock)
    started = time.perf_counter()
    src = parse_location(source, source_storage_options or storage_options)
    dst = parse_location(cube, storage_options)
    if not src.is_local:  # object stores: a wrong credential or bucket fails here, in seconds
        check_access(src)
    if not dst.is_local:
        check_access(dst, write=True)
    check_target(dst)  # fail fast, before taking the lock or reading any header
    run_id = uuid.uuid4().hex
    clock = _Clock()
    with CubeLock(dst, run_id, break_lock=break_lock) as lock:  # a second conversion stops here
        existing = check_target(dst) or {}
        clock("lock")
        inventory = discover(src, rois=(selection or Selection()).roi_names(), s1=s1)
        clock("discover")
        the_plan = plan(inventory, src)
        clock("plan")
        detector = _detector(clouds, cloud_method, threads_per_worker)
        attrs = _attrs(inventory, selection, s1, detector)
        attrs["created"] = existing.get("created", attrs["updated"])  # the first run's time stays
        grids = list(the_plan.grids.values())
        if s1_dtype not in ("auto", "float32", "float64"):
            raise ValueError(f"s1_dtype {s1_dtype!r} is not one of auto, float32, float64")
        if s1_dtype == "auto":
            s1_dtype = choose_s1_dtype(src, the_plan) if s1 else "float32"
        layout, s1_dtype = begin(dst, grids, the_plan.patch_size, attrs, s1_dtype=s1_dtype)
        clock("begin")
        done = read_records(dst)
        clock("journal")
        todo = [t for t in the_plan.tasks
                if not _is_done(done.get(f"{t.roi}/{t.row}_{t.col}"), s1)]
        if verify:
            keys = {t.key for t in todo}  # a set: `t not in todo` was quadratic in the patches
            todo += _damaged(dst, [t for t in the_plan.tasks if t.key not in keys], client,
                             scheduler, n_workers, threads_per_worker)
        logger.info("%d patch locations, %d already converted, %d to do",
                    len(the_plan.tasks), len(the_plan.tasks) - len(todo), len(todo))
        job = Job(run_id, src, dst, dict(the_plan.grids), {g.roi: i for i, g in enumerate(layout)},
                  s1, detector, s1_dtype, threads_per_worker)
        if todo:
            with dask_client(client, scheduler, n_workers, threads_per_worker) as c:
                _run_tasks(c, job, todo, progress, storage_options)
        clock("run")
        missing = set(t.key for t in todo) - set(read_records(dst))
        if missing:
            raise ConversionError(f"{len(missing)} patch location(s) finished without a journal "
                                  f"record (e.g. {sorted(missing)[0]}); run the same command "
                                  "again to redo them")
        clock("journal")
        problems = finalize(dst, layout, the_plan.patch_size, attrs, lock=lock)
        clock("finalize")
    problems.update({p.path: p.message for p in inventory.problems})
    logger.info("conversion phases (s): %s", {k: round(v, 2) for k, v in clock.seconds.items()})
    return ConvertReport(dst.url, len(the_plan.tasks), len(todo), len(the_plan.tasks) - len(todo),
                         time.perf_counter() - started, dict(sorted(problems.items())),
                         list(inventory.skipped), clock.seconds)


class _Clock:
    """Seconds spent per phase of a conversion (a phase named twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def choose_s1_dtype(src: Location, the_plan, n: int = 8) -> str:
    """float32 when S1 files sampled across the plan round-trip through it exactly."""
    import numpy as np

    from s2cube_conversion.read import read_patch

    tasks = the_plan.tasks[:: max(1, len(the_plan.tasks) // n)][:n]
    for task in tasks:
        grid = the_plan.grids[task.roi]
        for path in [p for p in task.s1 if p][:1]:
            arr = read_patch(src, path, "s1", patch_georef(grid, task.row, task.col))
            if isinstance(arr, np.ndarray) and not np.array_equal(
                    arr.astype(np.float32).astype(np.float64), arr, equal_nan=True):
                logger.info("%s does not round-trip through float32: storing S1 as float64", path)
                return "float64"
    return "float32"


def _damaged(dst: Location, tasks: list[PatchTask], client, scheduler, n_workers,
             threads_per_worker) -> list[PatchTask]:
    """The patch locations among ``tasks`` that hold a bad chunk in the cube (to redo)."""
    from s2cube.io.verify import verify_cube

    if not tasks:
        return []
    with dask_client(client, scheduler, n_workers, threads_per_worker) as c:
        report = verify_cube(dst.url, dst.storage_options, client=c,
                             patches=[(t.roi, t.row, t.col) for t in tasks])
    bad = report.patches()
    small = [b for b in report.bad if b.row is None]
    if small:
        raise ConversionError(f"{dst.url}: the small variables are damaged ({small[0]}); "
                              "convert the archive into a new cube")
    for b in report.bad:
        logger.warning("rewriting %s/%s_%s: %s", b.roi, b.row, b.col, b)
    return [t for t in tasks if (t.roi, t.row, t.col) in bad]


def _is_done(record, s1: bool) -> bool:
    return record is not None and not record.problems and (record.s1_converted or not s1)


def _detector(clouds: bool, method: str, threads: int):
    if not clouds:
        return None
    from s2cube_conversion.clouds import CloudDetector

    return CloudDetector(method=method, threads=threads)


def _attrs(inventory, selection: Selection | None, s1: bool, detector) -> dict:
    sel = selection or Selection()
    return {
        "title": schema.TITLE,
        "references": schema.REFERENCES,
        "s2cube_version": __version__,
        "schema_version": schema.SCHEMA_VERSION,
        "updated": schema.utc_now(),
        "source": inventory.fingerprint(),
        "cloud_detection": detector.describe() if detector is not None else {"method": "none"},
        "conversion": {"split": sel.split, "region": sel.region, "rois": list(sel.rois),
                       "s1": s1},
        "Conventions": "CF-1.10",
    }


def local_cluster(n_workers: int | None = None, threads_per_worker: int = 1):
    """A ``LocalCluster`` on loopback tuned for conversion: one process per core by default.

    Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers, which turns glibc's adaptive
    mmap threshold off: every GeoTIFF buffer is then mmap'ed, faulted in and unmapped, and
    conversion runs at half speed (``benchmarks/bench_convert.py io``). We unset it here;
    set ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in the dask
    config of your own cluster for the same effect.
    """
    import dask
    from dask.distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers or os.cpu_count() or 1,
                            threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address="127.0.0.1:0", host="127.0.0.1")


@contextlib.contextmanager
def dask_client(client, scheduler, n_workers, threads_per_worker) -> Iterator:
    """``client`` itself, a client of ``scheduler``, or one of a new local cluster."""
    if client is not None:
        yield client
        return
    from dask.distributed import Client

    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    with local_cluster(n_workers, threads_per_worker) as cluster, Client(cluster) as c:
        yield c


def _run_tasks(client, job: Job, todo: list[PatchTask], progress, storage_options) -> None:
    """Submit one task per patch location, a bounded number in flight, and wait for all."""
    run_tasks(client, convert_patch, job, todo, "patch location", progress, storage_options)


def run_tasks(client, fn: Callable, job: Any, todo: list, what: str, progress,
              storage_options) -> None:
    """``fn(job, task)`` for every task of ``todo`` on ``client``, a bounded number in flight.

    ``job`` is scattered once to every worker; each task's ``key`` names its future. Waits for
    all, then raises one :class:`ConversionError` listing every failed ``what`` (the cube is
    left resumable). ``progress(done, total)`` is called as tasks finish.
    """
    prefix = what.split()[0]
    try:
        map_bounded(client, fn, job, todo, what=what, progress=progress,
                    key=lambda _i, task: f"{prefix}-{job.run_id}-{task.key}",
                    describe_error=lambda line: redact(line, storage_options))
    except TasksFailed as e:
        raise ConversionError(
            f"{len(e.failures)} {what}(s) failed; the cube is left incomplete and "
            "resumable: fix the cause and run the same command again:\n"
            + "\n".join(f"  - {f}" for f in e.failures[:50])) from None
