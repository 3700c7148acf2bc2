"""Convert a SEN12MS-CR archive into a SEN12MS-CR cube (``cube_kind = "sen12ms-cr"``).

The same life as the time-series converter (:mod:`s2cube_conversion.write`,
:mod:`s2cube_conversion.run`), with its pieces reused: the root's ``s2cube_state``
(``writing`` until the last write), the journal under ``_s2cube_journal/`` written last by
every task, the codecs with their crc32c, every chunk of a recorded patch written
(``write_empty_chunks``), the cloud detector, the dask client and the report.

- :func:`begin` records the layout (the scene table in the root attrs, each scene's patch
  numbers in the journal) and creates or grows the pixel arrays;
- :func:`convert_block` (one dask task) reads one block of consecutive patches of a scene
  (one shard of every pixel variable), checks every file, runs the cloud detection on the
  cloudy images, writes the shards and then the block's journal record;
- :func:`finalize` builds the small variables from the journal, consolidates the metadata
  and marks the cube complete.

A block is done when its record exists, lists the same files as the archive now holds and
recorded no read problem: running again after a kill, or after fixing or adding files, redoes
exactly the blocks that need it. Converting a selection of scenes now and the rest later
grows the same cube (new scenes are appended in whole shards).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from s2cube import __version__, schema
from s2cube import sen12mscr as cr
from s2cube.errors import ConversionError, NotACubeError
from s2cube.io.storage import Location, check_access, filesystem, parse_location, zarr_store
from s2cube_conversion.cr_archive import (
    BLOCKS_DIR,
    LAYOUT_DIR,
    BlockTask,
    CrPlan,
    SceneHeader,
    discover,
    plan,
    select_scenes,
)
from s2cube_conversion.discover import Problem
from s2cube_conversion.lock import CubeLock
from s2cube_conversion.read import Georef, _short, georef_of, open_tif
from s2cube_conversion.run import (
    ConvertReport,
    Progress,
    Selection,
    _detector,
    dask_client,
    run_tasks,
)
from s2cube_conversion.write import (
    JOURNAL_GROUP,
    ROOT_META,
    _holds_anything,
    grow_or_create,
    pixel_codecs,
    publish,
    put_bytes,
    read_root,
    update_root,
)

logger = logging.getLogger(__name__)

#: band count of each modality; S2 files are uint16, S1 float32 (SEN12MS-CR) or float64
BANDS = {"s1": 2, "s2": 13, "s2_cloudy": 13}
S1_DTYPES = (np.dtype("float32"), np.dtype("float64"))


# --- the target -------------------------------------------------------------------------------

def check_target(cube: Location) -> dict | None:
    """The root attrs when ``cube`` is a SEN12MS-CR cube, None when it is new.

    Raises
    ------
    NotACubeError
        ``cube`` holds a SEN12MS-CR-TS cube, another Zarr dataset, or other files.
    """
    meta = read_root(cube)
    if meta is None:
        if _holds_anything(cube):
            raise NotACubeError(f"{cube.url} exists and is not an s2cube cube; choose a new "
                                "path for the cube or delete what is there")
        return None
    attrs = meta.get("attributes", {})
    if attrs.get("title") == schema.TITLE and cr.kind_of(attrs) == cr.KIND_TS:
        raise NotACubeError(f"{cube.url} is a SEN12MS-CR-TS cube; a SEN12MS-CR archive is "
                            "converted into a cube of its own: choose a new path (the two "
                            "cubes pair by georeference: ds.s2cube.pair(other))")
    if attrs.get("title") != cr.TITLE or "schema_version" not in attrs:
        raise NotACubeError(f"{cube.url} holds another Zarr dataset ({attrs.get('title')!r}), "
                            "not an s2cube cube; choose a new path for the cube")
    schema.check_cube_attrs(attrs, cube.url, allow_incomplete=True)
    return attrs


# --- begin ------------------------------------------------------------------------------------

def _var_attrs(var: str) -> dict:
    if var == "cloud_mask":
        return {**schema.CLOUD_MASK_ATTRS, "computed_on": "s2_cloudy"}
    return {
        "s2": {"long_name": "cloud-free Sentinel-2 L1C top-of-atmosphere DN (the target)"},
        "s2_cloudy": {"long_name": "cloudy Sentinel-2 L1C top-of-atmosphere DN (the input)"},
        "s1": {"long_name": "Sentinel-1 backscatter", "units": "dB"},
        "cloud_prob": {"long_name": "s2cloudless cloud probability x 100 of s2_cloudy",
                       "units": "percent"},
    }.get(var, {})


def begin(cube: Location, the_plan: CrPlan, attrs: dict, *, s1_dtype: str) -> str:
    """Mark the cube as being written, record the layout, create or grow the pixel arrays.

    Returns the S1 dtype of the cube (an existing cube keeps its own).
    """
    import zarr

    existing = check_target(cube)
    if existing is not None and int(existing.get("patch_size") or 0) != the_plan.patch_size:
        raise ConversionError(f"{cube.url} holds {existing.get('patch_size')}-pixel patches, the "
                              f"archive has {the_plan.patch_size}; convert into a new cube")

    def writing(meta: dict | None) -> dict:  # applied to the root as it is when written
        current = None if meta is None else dict(meta.get("attributes") or {})
        new = {"zarr_format": 3, "node_type": "group", **(meta or {})}
        new.pop("consolidated_metadata", None)
        new["attributes"] = {**(current or {}), **attrs, cr.ATTR_KIND: cr.KIND_CR,
                             "patch_size": the_plan.patch_size,
                             "patches_per_shard": the_plan.per_shard,
                             "scenes": [s.record() for s in the_plan.scenes],
                             schema.ATTR_STATE: schema.STATE_WRITING}
        return new

    update_root(cube, writing)  # creates the root of a new cube, exclusively
    store = zarr_store(cube)
    put_bytes(cube, f"{schema.JOURNAL_PREFIX}/{ROOT_META}", JOURNAL_GROUP)
    for scene, pids in the_plan.pids.items():
        put_bytes(cube, f"{schema.JOURNAL_PREFIX}/{LAYOUT_DIR}/{scene}.json",
                  json.dumps({"scene": scene, "pids": list(pids)}).encode())
    sizes = cr.dim_sizes(the_plan.size, the_plan.patch_size)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    for var in cr.PIXEL_VARIABLES:
        spec = cr.VARIABLES[var]
        shape = tuple(sizes[d] for d in spec.dims)
        found = grow_or_create(
            cube, group, var, shape, dtype=s1_dtype if var == "s1" else spec.dtype,
            chunks=cr.inner_chunks(var, sizes),
            shards=cr.shard_shape(var, sizes, the_plan.per_shard),
            fill_value=spec.fill, dimension_names=spec.dims, attributes=_var_attrs(var),
            **pixel_codecs("s1" if var == "s1" else "s2"))
        if var == "s1" and found is not None:
            s1_dtype = found
    return s1_dtype


# --- one block: the worker's side ---------------------------------------------------------------

@dataclass(frozen=True)
class CrJob:
    """Everything a worker needs besides the task (picklable, small)."""

    run_id: str
    source: Location
    cube: Location
    headers: dict[str, SceneHeader]
    patch_size: int
    s1: bool
    detector: object | None
    s1_dtype: str = "float32"
    threads: int = 1
    read_threads: int = 1


@dataclass(frozen=True)
class BlockRecord:
    """What a finished block contributes to the small variables (its journal record)."""

    scene: str
    block: int
    start: int
    pids: list
    paths: list  # [[s1, s2, s2_cloudy] per patch], the files converted (None: absent)
    transform: list  # 6 floats per patch, None where no file could be read
    valid_s2: list
    valid_s2_cloudy: list
    valid_s1: list
    blank: list
    coverage: list  # n x 3, None for NaN
    s1_converted: bool
    problems: list  # [[path, message]]: files that could not be read (redo the block)
    gaps: list  # [[path, message]]: files the archive lacks (unpaired patches)

    @property
    def key(self) -> str:
        return f"{self.scene}/{self.block}"


@lru_cache(maxsize=4)
def _arrays(run_id: str, cube: Location, threads: int) -> dict:
    import zarr

    zarr.config.set({"threading.max_workers": threads})
    group = zarr.open_group(zarr_store(cube), mode="r+", use_consolidated=False)
    # every chunk of a recorded frame is stored, even all-fill ones (readers verify them);
    # the config is read when an array is opened (zarr >= 3.1; Array.with_config came later)
    with zarr.config.set({"array.write_empty_chunks": True}):
        return {var: group[var] for var in cr.PIXEL_VARIABLES}


def read_file(root: Location, path: str, modality: str, header: SceneHeader, fs=None,
              data: bytes | None = None) -> tuple[np.ndarray, Georef] | Problem:
    """Read one file and check it against its scene: bands, dtype, size, CRS, pixel size."""
    import rasterio
    from rasterio.io import MemoryFile

    try:
        with contextlib.ExitStack() as ctx:
            if data is not None:
                src = ctx.enter_context(ctx.enter_context(MemoryFile(data)).open())
            else:
                src = ctx.enter_context(open_tif(root, path, fs))
            problem = _check(path, src, modality, header)
            if problem is not None:
                return problem
            return src.read(), georef_of(src)
    except rasterio.errors.RasterioError as exc:
        return Problem(path, f"cannot be read as a GeoTIFF ({_short(exc)}); re-download or "
                       "remove the file", fatal=False)
    except OSError as exc:
        return Problem(path, f"cannot be read ({_short(exc)}); check that the file is readable "
                       "and complete", fatal=False)


def _check(path: str, src, modality: str, header: SceneHeader) -> Problem | None:
    want = BANDS[modality]
    name = {"s1": "S1", "s2": "S2", "s2_cloudy": "cloudy S2"}[modality]
    if src.count != want:
        return Problem(path, f"has {src.count} bands, {name} files have {want}; this is not a "
                       "SEN12MS-CR file, replace it", fatal=False)
    dtype = np.dtype(src.dtypes[0])
    if (modality == "s1" and dtype not in S1_DTYPES) or (modality != "s1" and dtype != np.uint16):
        return Problem(path, f"has dtype {dtype}, {name} files are "
                       f"{'float32' if modality == 's1' else 'uint16'}; replace it with the "
                       "original file", fatal=False)
    p = header.patch_size
    if (src.width, src.height) != (p, p):
        return Problem(path, f"is {src.width}×{src.height} px, the archive's patches are {p}×{p}; "
                       "replace it", fatal=False)
    g = georef_of(src)
    if g.crs_wkt != header.crs_wkt:
        return Problem(path, f"its CRS (EPSG:{g.epsg}) differs from its scene's (EPSG:{header.epsg}); "
                       "replace it", fatal=False)
    a, b, _, d, e, _ = g.transform
    known = np.isfinite(header.pixel).all()
    if b or d or (known and not (np.isclose(a, header.pixel[0]) and np.isclose(e, header.pixel[1]))):
        return Problem(path, f"its pixel size or rotation ({a}, {e}) differs from its scene's "
                       f"{header.pixel}; replace it", fatal=False)
    return None


def _fetch(job: CrJob, task: BlockTask, problems: list) -> tuple[dict[str, bytes], object]:
    """Object stores: every file of the block fetched concurrently (one call)."""
    if job.source.is_local:
        return {}, None
    fs = filesystem(job.source)
    wanted = [p for paths in task.paths for p in paths if p]
    if not job.s1:
        wanted = [p for paths in task.paths for p in paths[1:] if p]
    full = {f"{job.source.path}/{p}": p for p in wanted}
    blobs = {}
    for key, value in fs.cat(list(full), on_error="return").items():
        if isinstance(value, Exception):
            problems.append(Problem(full[key], f"cannot be read ({value}); check that it exists "
                                    "and is readable", fatal=False))
        else:
            blobs[full[key]] = value
    return blobs, fs


def convert_block(job: CrJob, task: BlockTask) -> BlockRecord:
    """Convert one block (a shard of every pixel variable) and write its journal record."""
    from s2cube_conversion.patch import to_float32_exactly

    header, p, n = job.headers[task.scene], job.patch_size, len(task.pids)
    problems: list[Problem] = []
    blobs, fs = _fetch(job, task, problems)
    out = {"s2": np.zeros((n, 13, p, p), np.uint16), "s2_cloudy": np.zeros((n, 13, p, p), np.uint16),
           "s1": np.full((n, 2, p, p), np.nan, np.float64)}
    valid = {m: [False] * n for m in cr.MODALITIES}
    georefs: list[dict[str, Georef]] = [{} for _ in range(n)]
    mods = cr.MODALITIES if job.s1 else ("s2", "s2_cloudy")
    todo = [(k, m, task.paths[k][cr.MODALITIES.index(m)]) for k in range(n) for m in mods]
    todo = [(k, m, path) for k, m, path in todo if path and (fs is None or path in blobs)]

    def one(item):
        _, m, path = item
        return item, read_file(job.source, path, m, header, fs, blobs.get(path))

    if job.read_threads > 1:
        with ThreadPoolExecutor(job.read_threads) as pool:
            results = list(pool.map(one, todo))
    else:
        results = [one(item) for item in todo]
    for (k, m, _path), got in results:
        if isinstance(got, Problem):
            problems.append(got)
            continue
        out[m][k], georefs[k][m], valid[m][k] = got[0], got[1], True
    transforms: list = [None] * n
    for k in range(n):  # the patch's georeference: its S2 file's, which the others must share
        ref = next((m for m in ("s2", "s2_cloudy", "s1") if m in georefs[k]), None)
        if ref is None:
            continue
        transforms[k] = [float(v) for v in georefs[k][ref].transform]
        for m, g in georefs[k].items():
            if m != ref and not g.same_grid(georefs[k][ref]):
                path = task.paths[k][cr.MODALITIES.index(m)]
                problems.append(Problem(path, "does not cover the same ground as "
                                        f"{task.paths[k][cr.MODALITIES.index(ref)]} (origin "
                                        f"{g.transform[2]:.2f}, {g.transform[5]:.2f} vs "
                                        f"{georefs[k][ref].transform[2]:.2f}, "
                                        f"{georefs[k][ref].transform[5]:.2f}); replace it",
                                        fatal=False))
                valid[m][k] = False
                out[m][k] = 0 if m != "s1" else np.nan
    s1 = out["s1"]
    if job.s1 and job.s1_dtype == "float32":
        s1 = to_float32_exactly(s1, [task.paths[k][0] for k in range(n)])
    cloudy = out["s2_cloudy"]
    blank = [bool(v) and not cloudy[k].any() for k, v in enumerate(valid["s2_cloudy"])]
    coverage = np.full((n, len(schema.DETECTORS)), np.nan)
    arrays = _arrays(job.run_id, job.cube, job.threads)
    region = slice(task.start, task.start + n)
    arrays["s2"][region] = out["s2"]
    arrays["s2_cloudy"][region] = cloudy
    if job.s1:
        arrays["s1"][region] = s1
    if job.detector is not None:
        result = job.detector(cloudy)
        coverage = result.coverage.astype(np.float64)
        arrays["cloud_prob"][region] = result.prob
        arrays["cloud_mask"][region] = result.flags
    coverage[~np.asarray(valid["s2_cloudy"])] = np.nan
    record = BlockRecord(
        scene=task.scene, block=task.block, start=task.start, pids=list(task.pids),
        paths=[list(p) for p in task.paths], transform=transforms,
        valid_s2=valid["s2"], valid_s2_cloudy=valid["s2_cloudy"], valid_s1=valid["s1"],
        blank=blank,
        coverage=[[None if np.isnan(v) else float(np.float32(v)) for v in row] for row in coverage],
        s1_converted=job.s1, problems=[[pr.path, pr.message] for pr in problems],
        gaps=[list(g) for g in task.gaps])
    put_bytes(job.cube, task.journal_key, json.dumps(asdict(record), allow_nan=False).encode())
    return record


# --- the journal and finalize -----------------------------------------------------------------

def read_records(cube: Location) -> dict[str, BlockRecord]:
    """Every block record of the cube's journal, by ``"<scene>/<block>"``."""
    fs = filesystem(cube)
    base = f"{cube.path}/{schema.JOURNAL_PREFIX}/{BLOCKS_DIR}"
    try:
        paths = [p for p in fs.find(base) if p.endswith(".json")]
    except FileNotFoundError:
        return {}
    out: dict[str, BlockRecord] = {}
    if not paths:
        return out
    for path, data in fs.cat(paths, on_error="omit").items():
        try:
            rec = BlockRecord(**json.loads(data))
        except (ValueError, TypeError) as exc:  # a torn record: redo that block
            logger.warning("ignoring unreadable journal record %s (%s)", path, exc)
            continue
        out[rec.key] = rec
    return out


def small_dataset(records: dict[str, BlockRecord], scenes: list[cr.Scene], patch_size: int):
    """The small variables and the coordinates of the cube, in memory."""
    import xarray as xr

    n = sum(s.capacity for s in scenes)
    index = {s.scene: i for i, s in enumerate(scenes)}
    cov = np.full((n, len(schema.DETECTORS)), np.nan, np.float32)
    flags = {k: np.zeros(n, bool) for k in ("valid_s2", "valid_s2_cloudy", "valid_s1", "blank")}
    pid = np.full(n, -1, np.int32)
    scene = np.full(n, -1, np.int32)
    transform = np.full((n, 6), np.nan, np.float64)
    for rec in records.values():
        if rec.scene not in index:
            continue
        sl = slice(rec.start, rec.start + len(rec.pids))
        pid[sl], scene[sl] = rec.pids, index[rec.scene]
        cov[sl] = np.array(rec.coverage, dtype=np.float64).reshape(-1, len(schema.DETECTORS))
        for k in flags:
            flags[k][sl] = getattr(rec, k)
        transform[sl] = [t if t is not None else [np.nan] * 6 for t in rec.transform]

    def strings(values):
        return np.array(values, dtype=object)

    return xr.Dataset(
        {
            "coverage": (("patch", "detector"), cov,
                         {"long_name": "cloud fraction of s2_cloudy per detector"}),
            "valid_s2": ("patch", flags["valid_s2"], {"long_name": "the S2 file was read"}),
            "valid_s2_cloudy": ("patch", flags["valid_s2_cloudy"],
                                {"long_name": "the cloudy S2 file was read"}),
            "valid_s1": ("patch", flags["valid_s1"], {"long_name": "the S1 file was read"}),
            "blank": ("patch", flags["blank"], {"long_name": "all-zero cloudy S2 image"}),
            "patch_id": ("patch", pid, {"long_name": "patch number of the file names (p<n>)"}),
            "scene": ("patch", scene, {"long_name": "index into the root attribute 'scenes'"}),
            "transform": (("patch", "affine"), transform,
                          {"long_name": "affine (a, b, c, d, e, f) of the patch's GeoTIFF"}),
        },
        coords={
            "patch": np.arange(n, dtype=np.int64),
            "band": strings(schema.BANDS),
            "wavelength": ("band", np.array(schema.WAVELENGTHS), {"units": "nm"}),
            "polarization": strings(schema.POLARIZATIONS),
            "detector": strings(schema.DETECTORS),
            "affine": strings(cr.AFFINE),
            "y": np.arange(patch_size, dtype=np.int32),
            "x": np.arange(patch_size, dtype=np.int32),
        },
    )


def finalize(cube: Location, scenes: list[cr.Scene], patch_size: int, attrs: dict,
             lock=None) -> dict:
    """Write the small variables from the journal, then mark the cube complete.

    Returns every problem and gap the journal records, as ``{path: message}``. With
    ``lock`` (the conversion's), stops if another conversion took it over.
    """
    records = read_records(cube)
    problems = {p: m for rec in records.values() for p, m in [*rec.gaps, *rec.problems]}
    publish(cube, small_dataset(records, scenes, patch_size), attrs, problems, lock)
    return problems


# --- the run ----------------------------------------------------------------------------------

def _attrs(inv, sel: Selection, s1: bool, detector) -> dict:
    return {
        "title": cr.TITLE,
        cr.ATTR_KIND: cr.KIND_CR,
        "references": cr.REFERENCES,
        "s2cube_version": __version__,
        "schema_version": schema.SCHEMA_VERSION,
        "updated": schema.utc_now(),
        "source": inv.fingerprint(),
        "cloud_detection": {**(detector.describe() if detector is not None else {"method": "none"}),
                            **({"computed_on": "s2_cloudy"} if detector is not None else {})},
        "conversion": {"split": sel.split, "region": sel.region, "rois": list(sel.rois), "s1": s1,
                       "layout": cr.LAYOUT_CR},
        "Conventions": "CF-1.10",
    }


def choose_s1_dtype(src: Location, the_plan: CrPlan, n: int = 8) -> str:
    """float32 when S1 files sampled across the plan are float32 or round-trip through it."""
    tasks = the_plan.tasks[:: max(1, len(the_plan.tasks) // n)][:n]
    for task in tasks:
        path = next((paths[0] for paths in task.paths if paths[0]), None)
        if path is None:
            continue
        got = read_file(src, path, "s1", the_plan.headers[task.scene])
        if isinstance(got, tuple):
            arr = got[0]
            if arr.dtype == np.float64 and not np.array_equal(
                    arr.astype(np.float32).astype(np.float64), arr, equal_nan=True):
                logger.info("%s does not round-trip through float32: storing S1 as float64", path)
                return "float64"
    return "float32"


def _is_done(rec: BlockRecord | None, task: BlockTask, s1: bool) -> bool:
    if rec is None or rec.problems or not (rec.s1_converted or not s1):
        return False
    want = [list(p) if s1 else [None, *p[1:]] for p in task.paths]
    have = [p if s1 else [None, *p[1:]] for p in rec.paths]
    return rec.pids == list(task.pids) and have == want


def convert(source, cube, *, selection: Selection | None = None, s1: bool = True,
            clouds: bool = True, cloud_method: str = "fast", s1_dtype: str = "auto",
            scheduler: str | None = None, n_workers: int | None = None,
            threads_per_worker: int = 1, storage_options: dict | None = None,
            source_storage_options: dict | None = None, progress: Progress | None = None,
            client=None, verify: bool = False, break_lock: bool = False) -> ConvertReport:
    """Convert the SEN12MS-CR archive at ``source`` into the cube at ``cube``.

    The arguments are those of :func:`s2cube_conversion.convert`, which calls this when it
    recognises the layout. ``selection``: ``split`` picks scenes by the reference's lists
    (exact), ``rois`` names scenes (``ROIs1868_summer_73``, or the SEN12MS-CR-TS ROI of the same
    ground, ``ROIs1868_73``); SEN12MS-CR has no regions.
    """
    started = time.perf_counter()
    src = parse_location(source, source_storage_options or storage_options)
    dst = parse_location(cube, storage_options)
    if not src.is_local:
        check_access(src)
    if not dst.is_local:
        check_access(dst, write=True)
    check_target(dst)  # fail fast, before taking the lock or reading any header
    run_id = uuid.uuid4().hex
    with CubeLock(dst, run_id, break_lock=break_lock) as lock:  # a second conversion stops here
        existing = check_target(dst)
        sel = selection or Selection()
        inv = discover(src, scenes=select_scenes(sel.split, sel.region, sel.rois), s1=s1)
        the_plan = plan(inv, src, existing, dst)
        tasks = list(the_plan.tasks)
        detector = _detector(clouds, cloud_method, threads_per_worker)
        attrs = _attrs(inv, sel, s1, detector)
        attrs["created"] = (existing or {}).get("created", attrs["updated"])
        if s1_dtype not in ("auto", "float32", "float64"):
            raise ValueError(f"s1_dtype {s1_dtype!r} is not one of auto, float32, float64")
        if s1_dtype == "auto":
            s1_dtype = choose_s1_dtype(src, the_plan) if s1 else "float32"
        s1_dtype = begin(dst, the_plan, attrs, s1_dtype=s1_dtype)
        done = read_records(dst)
        todo = [t for t in tasks if not _is_done(done.get(t.key), t, s1)]
        if verify:
            todo += damaged_blocks(dst, [t for t in tasks if t not in todo])
        n_patches = sum(len(t.pids) for t in tasks)
        n_todo = sum(len(t.pids) for t in todo)
        logger.info("%d patches in %d blocks, %d blocks to do", n_patches, len(tasks), len(todo))
        job = CrJob(run_id, src, dst, dict(the_plan.headers), the_plan.patch_size, s1, detector,
                    s1_dtype, threads_per_worker)
        if todo:
            with dask_client(client, scheduler, n_workers, threads_per_worker) as c:
                _run_blocks(c, job, todo, progress, storage_options)
        missing = {t.key for t in todo} - set(read_records(dst))
        if missing:
            raise ConversionError(f"{len(missing)} block(s) finished without a journal record "
                                  f"(e.g. {sorted(missing)[0]}); run the same command again to "
                                  "redo them")
        problems = finalize(dst, list(the_plan.scenes), the_plan.patch_size, attrs, lock=lock)
    problems.update({p.path: p.message for p in inv.problems})
    return ConvertReport(dst.url, n_patches, n_todo, n_patches - n_todo,
                         time.perf_counter() - started, dict(sorted(problems.items())),
                         list(inv.skipped))


def _run_blocks(client, job: CrJob, todo: list[BlockTask], progress, storage_options) -> None:
    """One task per block, a bounded number in flight; every failure listed."""
    run_tasks(client, convert_block, job, todo, "block", progress, storage_options)


def damaged_blocks(dst: Location, tasks: list[BlockTask]) -> list[BlockTask]:
    """The blocks among ``tasks`` that hold a bad chunk in the cube (to convert again)."""
    from s2cube.io.crverify import verify_cr

    if not tasks:
        return []
    report = verify_cr(dst.url, dst.storage_options,
                       positions=[(t.start, len(t.pids)) for t in tasks])
    small = [b for b in report.bad if b.row is None and b.slot is None and not b.roi]
    if small:
        raise ConversionError(f"{dst.url}: the small variables are damaged ({small[0]}); "
                              "convert the archive into a new cube")
    bad = {b.row for b in report.bad if b.row is not None}  # ``row``: the patch position
    for b in report.bad:
        logger.warning("rewriting the block of %s: %s", b.roi, b)
    return [t for t in tasks if any(t.start <= p < t.start + len(t.pids) for p in bad)]


__all__ = ["BlockRecord", "CrJob", "begin", "check_target", "convert", "convert_block",
           "finalize", "read_records"]
