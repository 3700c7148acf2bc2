"""Write the cube: create or grow its arrays, write one patch's shards, finalise.

The life of a cube, each step safe to interrupt:

1. :func:`begin` marks the root ``s2cube_state = "writing"`` (dropping consolidated
   metadata) and records the layout (ROIs and their grids) in the root attrs, then
   creates or grows the pixel arrays. A cube in this state is never opened as complete.
   The conversion holds the cube's lock (:class:`~s2cube_conversion.lock.CubeLock`)
   from before this step to the end, and every update of the root ``zarr.json`` is a
   compare-and-swap (:func:`update_root`).
2. Workers write each patch location's shards, then its journal record (a small JSON
   under ``_s2cube_journal/``) as the very last step: a patch without a record is
   redone on resume, so a kill mid-shard costs only that patch.
3. :func:`finalize` rebuilds the small variables and coordinates from the journal,
   writes the attrs, consolidates the metadata and only then marks ``complete``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from s2cube import schema
from s2cube.errors import ConversionError, NotACubeError
from s2cube.grid import RoiGrid
from s2cube.io.storage import Location, filesystem, zarr_store
from s2cube_conversion.lock import LOCK_KEY, Conflict, CubeLock, cas_store

logger = logging.getLogger(__name__)

ROOT_META = "zarr.json"
JOURNAL_GROUP = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
    "description": "s2cube conversion journal: one JSON record per finished patch location "
                   "(not data; s2cube convert and validate read it)"}}).encode()


def pixel_codecs(var: str) -> dict:
    """Codecs of the pixel variables, chosen by ``benchmarks/bench_convert.py`` on real pixels.

    Blosc zstd level 1 with bit-shuffle gave 0.30 of the raw bytes on real L1C patches at
    ~275 MB/s encode and ~660 MB/s decode, better than zstd 3-9 alone (0.38-0.40) and
    than blosc lz4 (0.47); higher zstd levels gain 1-2 % for 4-40x slower encoding. Every
    inner chunk ends with a crc32c of its compressed bytes (the Zarr v3 ``crc32c`` codec,
    checked by s2cube's reader and by any Zarr v3 reader).
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    shuffle = "shuffle" if var == "s1" else "bitshuffle"
    return {"compressors": (BloscCodec(cname="zstd", clevel=1, shuffle=shuffle), Crc32cCodec())}


def small_codecs() -> tuple:
    """Codecs of the small variables and coordinates: zstd, then a crc32c of the bytes."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(), Crc32cCodec())


def read_root(cube: Location) -> dict | None:
    """The root ``zarr.json`` of ``cube`` as a dict, or ``None`` when there is none."""
    fs = filesystem(cube)
    path = f"{cube.path}/{ROOT_META}"
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write_root(cube: Location, meta: dict) -> None:
    """Replace the root ``zarr.json`` atomically (rename locally, one PUT on object stores).

    Unconditional: the converter itself updates the root with :func:`update_root`.
    """
    data = json.dumps(meta, indent=2, allow_nan=False).encode()
    put_bytes(cube, ROOT_META, data)


#: compare-and-swap attempts of one root update before giving up
ROOT_CAS_ATTEMPTS = 8


def update_root(cube: Location, change: Callable[[dict | None], dict]) -> dict:
    """Read-modify-write the root ``zarr.json`` as a compare-and-swap.

    ``change(meta)`` gets the current root (None when there is none) and returns the new
    one. The write goes through only if the root is still what was read (S3: ``If-Match``
    on its ETag, or ``If-None-Match: *`` to create it; local disk: an exclusive create,
    or a replace under an ``O_EXCL`` mutex, see :mod:`s2cube_conversion.lock`);
    otherwise the root is read again and ``change`` applied to it, a few times.

    Returns
    -------
    dict
        The root as written.

    Raises
    ------
    ConversionError
        The root kept changing under this conversion (another program writes the cube).
    """
    store = cas_store(cube)
    for attempt in range(ROOT_CAS_ATTEMPTS):
        current = store.read(ROOT_META)
        meta = None if current.data is None else json.loads(current.data)
        new = change(meta)
        data = json.dumps(new, indent=2, allow_nan=False).encode()
        try:
            if current.version is None:
                store.create(ROOT_META, data)
            else:
                store.replace(ROOT_META, data, current.version)
            return new
        except Conflict:
            logger.info("%s/%s changed while this conversion updated it; reading it again",
                        cube.url, ROOT_META)
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise ConversionError(f"{cube.url}/{ROOT_META} kept changing while this conversion updated "
                          "it: another program is writing this cube; stop it, then run the same "
                          "command again (it resumes)")


def put_bytes(cube: Location, key: str, data: bytes) -> None:
    """Write ``data`` at ``key`` below the cube so that it is either whole or absent."""
    if cube.is_local:
        path = os.path.join(cube.path, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        filesystem(cube).pipe_file(f"{cube.path}/{key}", data)


def check_target(cube: Location) -> dict | None:
    """Return the cube's root attrs if ``cube`` is an s2cube cube, ``None`` if it is new.

    Raises
    ------
    NotACubeError
        When ``cube`` holds something else (another Zarr dataset, or any files).
    """
    meta = read_root(cube)
    if meta is None:
        if _holds_anything(cube):
            raise NotACubeError(f"{cube.url} exists and is not an s2cube cube; choose a new "
                                "path for the cube or delete what is there")
        return None
    return _cube_attrs(cube, meta)


def _cube_attrs(cube: Location, meta: dict) -> dict:
    """The root attrs of ``meta`` if it is an s2cube cube's root; NotACubeError otherwise."""
    attrs = meta.get("attributes", {})
    if attrs.get("title") != schema.TITLE or "schema_version" not in attrs:
        raise NotACubeError(f"{cube.url} holds another Zarr dataset ({attrs.get('title')!r}), "
                            "not an s2cube cube; choose a new path for the cube")
    schema.check_cube_attrs(attrs, cube.url, allow_incomplete=True)  # the one check readers make
    return attrs


def _holds_anything(cube: Location) -> bool:
    """Whether objects other than folder markers and write probes are below ``cube``."""
    fs = filesystem(cube)
    try:
        found = fs.find(cube.path, maxdepth=3, withdirs=False)
    except FileNotFoundError:
        return False
    own = cube.path.rstrip("/")
    lock = f"{own}/{LOCK_KEY}"  # a conversion that starts (or crashed) before the root exists
    root = f"{own}/{ROOT_META}."  # the root being created: its temporary file, its mutex
    return any(p.rstrip("/") != own and ".s2cube-write-probe-" not in p
               and not p.startswith((lock, root)) for p in found)


def begin(
    cube: Location, grids: list[RoiGrid], patch_size: int, attrs: dict, *, s1_dtype: str = "float32"
) -> tuple[list[RoiGrid], str]:
    """Mark the cube as being written, merge ``grids`` into its layout, create/grow arrays.

    Returns the full layout (existing ROIs first, in their cube order, then new ones) and
    the S1 dtype of the cube (an existing cube keeps its own).
    """
    import zarr

    check_target(cube)
    merged: list[list[RoiGrid]] = []

    def writing(meta: dict | None) -> dict:  # applied to the root as it is when written
        existing = None if meta is None else _cube_attrs(cube, meta)
        layout = _merge_layout(cube, existing, grids, patch_size)
        merged[:] = [layout]
        new = {"zarr_format": 3, "node_type": "group", **(meta or {})}
        new.pop("consolidated_metadata", None)
        new["attributes"] = {**(existing or {}), **attrs, "patch_size": patch_size,
                             "grids": [g.record() for g in layout],
                             schema.ATTR_STATE: schema.STATE_WRITING}
        return new

    update_root(cube, writing)  # creates the root of a new cube, exclusively
    records = merged[0]
    store = zarr_store(cube)
    # the journal's folder is an (empty) zarr group, so that tools walking the hierarchy
    # (xr.open_zarr(consolidated=False), zarr.open_group().members()) see no stray object
    put_bytes(cube, f"{schema.JOURNAL_PREFIX}/{ROOT_META}", JOURNAL_GROUP)
    sizes = layout_sizes(records, patch_size)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    for var in schema.PIXEL_VARIABLES:
        spec = schema.VARIABLES[var]
        shape = tuple(sizes[d] for d in spec.dims)
        found = grow_or_create(
            cube, group, var, shape, dtype=s1_dtype if var == "s1" else spec.dtype,
            chunks=schema.inner_chunks(var, sizes, patch_size),
            shards=schema.shard_shape(var, sizes, patch_size),
            fill_value=spec.fill, dimension_names=spec.dims,
            attributes=_var_attrs(var), **pixel_codecs(var))
        if var == "s1" and found is not None:
            s1_dtype = found  # the cube's S1 dtype wins over this run's choice
    return records, s1_dtype


def grow_or_create(cube: Location, group: Any, var: str, shape: tuple[int, ...],
                   **create: Any) -> str | None:
    """Resize the pixel array ``var`` of ``group`` to ``shape``, or create it (``create``:
    the arguments of :func:`zarr.create_array`); its dtype if it existed, else None.

    Another conversion creating the same array at the same moment is fine when it makes it
    with the same shape; otherwise a :class:`ConversionError` says to wait for it.
    """
    import zarr

    try:
        array = group[var]
    except KeyError:
        array = None
    if array is not None:
        if array.shape != shape:
            array.resize(shape)
        return str(array.dtype)
    try:
        zarr.create_array(group.store, name=var, shape=shape, **create)
    except _created_meanwhile() as exc:  # another conversion of the same cube made it
        other = zarr.open_group(group.store, mode="r+", use_consolidated=False)[var]
        if other.shape != shape:
            raise ConversionError(f"{cube.url}: another conversion into this cube is "
                                  f"starting with another layout ({var} {other.shape}, "
                                  f"here {shape}); wait for it, then run again") from exc
    return None


def _merge_layout(cube: Location, existing: dict | None, grids: list[RoiGrid],
                  patch_size: int) -> list[RoiGrid]:
    """The cube's ROIs (its own first, in cube order) with ``grids`` added; refuses a clash."""
    layout: dict[str, RoiGrid] = {}
    if existing is not None:
        if existing.get("patch_size") != patch_size:
            raise ConversionError(f"{cube.url} holds {existing.get('patch_size')}-pixel patches, "
                                  f"the archive has {patch_size}; convert into a new cube")
        for g in existing.get("grids", []):
            layout[g["roi"]] = RoiGrid.from_record(g, patch_size)
    for g in grids:
        old = layout.get(g.roi)
        if old is not None and not old.same_layout(g):
            raise ConversionError(f"{g.roi} is in {cube.url} with another grid "
                                  f"({old.n_rows}×{old.n_cols} patches, EPSG:{old.epsg}) than the "
                                  f"archive's ({g.n_rows}×{g.n_cols}, EPSG:{g.epsg}); convert into "
                                  "a new cube")
        layout.setdefault(g.roi, g)
    return list(layout.values())


def _created_meanwhile() -> tuple[type[BaseException], ...]:
    import zarr

    return (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError, FileExistsError)


def layout_sizes(records: list[RoiGrid], patch_size: int) -> dict[str, int]:
    """Dim sizes of a cube holding ``records`` (rows/cols of the largest ROI)."""
    return schema.dim_sizes(len(records), max(g.n_rows for g in records),
                            max(g.n_cols for g in records), patch_size)


def _var_attrs(var: str) -> dict:
    if var == "cloud_mask":
        return dict(schema.CLOUD_MASK_ATTRS)
    return {
        "s2": {"long_name": "Sentinel-2 L1C top-of-atmosphere DN (reflectance x 10000)"},
        "s1": {"long_name": "Sentinel-1 backscatter", "units": "dB"},
        "cloud_prob": {"long_name": "s2cloudless cloud probability x 100", "units": "percent"},
    }.get(var, {})


@dataclass(frozen=True)
class PatchRecord:
    """What a finished patch location contributes to the small variables."""

    roi: str
    row: int
    col: int
    pid: int
    coverage: list  # 30 x 3, None for NaN
    valid_s2: list
    valid_s1: list
    blank: list
    s2_dates: list
    s1_dates: list
    s1_converted: bool
    problems: list  # [[path, message], ...]

    @property
    def key(self) -> str:
        return f"{schema.JOURNAL_PREFIX}/{self.roi}/{self.row}_{self.col}.json"


def write_record(cube: Location, record: PatchRecord) -> None:
    """Write a patch's journal record: the mark that its shards are complete."""
    put_bytes(cube, record.key, json.dumps(asdict(record), allow_nan=False).encode())


def read_records(cube: Location) -> dict[str, PatchRecord]:
    """Every journal record of the cube, by ``"<roi>/<row>_<col>"``."""
    fs = filesystem(cube)
    base = f"{cube.path}/{schema.JOURNAL_PREFIX}"
    try:
        lock = f"{cube.path}/{LOCK_KEY}"
        paths = [p for p in fs.find(base)
                 if p.endswith(".json") and p.rsplit("/", 1)[-1] != ROOT_META and p != lock]
    except FileNotFoundError:
        return {}
    out: dict[str, PatchRecord] = {}
    if not paths:
        return out
    for path, data in fs.cat(paths, on_error="omit").items():
        try:
            rec = PatchRecord(**json.loads(data))
        except (ValueError, TypeError) as exc:  # a torn record: redo that patch
            logger.warning("ignoring unreadable journal record %s (%s)", path, exc)
            continue
        out[f"{rec.roi}/{rec.row}_{rec.col}"] = rec
    return out


def small_dataset(records: dict[str, PatchRecord], layout: list[RoiGrid], patch_size: int):
    """The small variables and all coordinates as an in-memory xarray Dataset."""
    import xarray as xr

    sizes = layout_sizes(layout, patch_size)
    index = {g.roi: i for i, g in enumerate(layout)}
    shape_t = (sizes["roi"], schema.N_SLOTS, sizes["row"], sizes["col"])
    cov = np.full((*shape_t, len(schema.DETECTORS)), np.nan, np.float32)
    valid_s2, valid_s1, blank = (np.zeros(shape_t, bool) for _ in range(3))
    nat = np.datetime64("NaT", "ns")
    s2_date, s1_date = (np.full(shape_t, nat, "datetime64[ns]") for _ in range(2))
    pid = np.full((sizes["roi"], sizes["row"], sizes["col"]), -1, np.int32)
    for rec in records.values():
        if rec.roi not in index:
            continue
        i, r, c = index[rec.roi], rec.row, rec.col
        cov[i, :, r, c] = np.array(rec.coverage, dtype=np.float64)
        valid_s2[i, :, r, c], valid_s1[i, :, r, c] = rec.valid_s2, rec.valid_s1
        blank[i, :, r, c] = rec.blank
        s2_date[i, :, r, c] = [np.datetime64(d, "ns") if d else nat for d in rec.s2_dates]
        s1_date[i, :, r, c] = [np.datetime64(d, "ns") if d else nat for d in rec.s1_dates]
        pid[i, r, c] = rec.pid
    infos = [schema.roi_info(g.roi) for g in layout]
    dims4 = ("roi", "time", "row", "col")

    def strings(values):
        return np.array(values, dtype=object)

    return xr.Dataset(
        {
            "coverage": ((*dims4, "detector"), cov, {"long_name": "cloud fraction per patch"}),
            "valid_s2": (dims4, valid_s2, {"long_name": "the S2 file existed and was read"}),
            "valid_s1": (dims4, valid_s1, {"long_name": "the S1 file existed and was read"}),
            "blank": (dims4, blank, {"long_name": "all-zero S2 frame"}),
            "s2_date": (dims4, s2_date),
            "s1_date": (dims4, s1_date),
            "patch_id": (("roi", "row", "col"), pid, {"long_name": "patch id of the file names"}),
        },
        coords={
            "roi": strings([g.roi for g in layout]),
            "time": np.arange(schema.N_SLOTS, dtype=np.int32),
            "band": strings(schema.BANDS),
            "wavelength": ("band", np.array(schema.WAVELENGTHS), {"units": "nm"}),
            "polarization": strings(schema.POLARIZATIONS),
            "detector": strings(schema.DETECTORS),
            "row": np.arange(sizes["row"], dtype=np.int32),
            "col": np.arange(sizes["col"], dtype=np.int32),
            "y": np.arange(sizes["y"], dtype=np.int32),
            "x": np.arange(sizes["x"], dtype=np.int32),
            "collection": ("roi", strings([i.collection for i in infos])),
            "roi_id": ("roi", np.array([i.roi_id for i in infos], np.int32)),
            "split": ("roi", strings([i.split for i in infos])),
            "region": ("roi", strings([i.region for i in infos])),
            "epsg": ("roi", np.array([g.epsg or -1 for g in layout], np.int32)),
            "transform": (("roi", "affine"), np.array([g.transform for g in layout], np.float64),
                          {"long_name": "affine (a, b, c, d, e, f) of pixel (0, 0) in the ROI's CRS"}),
            "n_rows": ("roi", np.array([g.n_rows for g in layout], np.int32)),
            "n_cols": ("roi", np.array([g.n_cols for g in layout], np.int32)),
        },
    )


_DATE_ENCODING = {"units": schema.DATE_UNITS, "calendar": "proleptic_gregorian",
                  "dtype": "int32", "_FillValue": np.int32(schema.DATE_FILL)}


@contextlib.contextmanager
def _quiet():
    """Silence zarr's notes about the journal prefix and consolidated metadata (both intended)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        yield


def _write_small(store: Any, small: Any) -> None:
    """Write the small variables; those of the same shape are overwritten in place.

    In place, so that a second conversion finishing at the same time never consolidates a
    moment where they are missing.
    """
    import zarr

    with _quiet():
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        existing = set()
        for name in list(small.variables):
            if name in group:
                if group[name].shape == small[name].shape:
                    existing.add(name)
                else:
                    del group[name]
        encoding = {}
        for name, var in small.variables.items():
            if name in existing:
                continue
            enc = {"compressors": small_codecs(), "chunks": var.shape or None}
            if name in ("s2_date", "s1_date"):
                enc.update(_DATE_ENCODING)
            encoding[name] = enc
        small.drop_encoding().to_zarr(store, mode="a", consolidated=False, zarr_format=3,
                                      encoding=encoding)


def finalize(cube: Location, layout: list[RoiGrid], patch_size: int, attrs: dict,
             lock: CubeLock | None = None) -> dict:
    """Write the small variables and coordinates from the journal, then mark the cube complete.

    Returns the journal records' problems as ``{path: message}``. With ``lock`` (the
    conversion's), stops with a :class:`ConversionError` if another conversion took it over.
    """
    records = read_records(cube)
    problems = {p: m for rec in records.values() for p, m in rec.problems}
    publish(cube, small_dataset(records, layout, patch_size), attrs, problems, lock)
    return problems


def publish(cube: Location, small: Any, attrs: dict, problems: dict[str, str],
            lock: CubeLock | None = None) -> None:
    """The last step of every conversion: write ``small`` (the small variables and
    coordinates), the root attrs with ``problems``, consolidate, then mark the cube complete.

    Each root update is a compare-and-swap; with ``lock``, stops with a
    :class:`ConversionError` before either update if another conversion took the lock over.
    """
    import zarr

    root_attrs = (read_root(cube) or {}).get("attributes", {})
    store = zarr_store(cube)
    for attempt in range(3):
        try:
            _write_small(store, small)
            break
        except _created_meanwhile() as exc:  # another conversion finishing: now overwrite theirs
            if attempt == 2:
                raise ConversionError(f"{cube.url}: another conversion keeps rewriting this "
                                      "cube's small variables; wait for it, then run again "
                                      "(it resumes)") from exc

    def with_attrs(meta: dict | None) -> dict:
        meta = dict(meta or {})
        meta.pop("consolidated_metadata", None)
        # xarray just wrote a global "coordinates" attr (transform, wavelength): keep it
        meta["attributes"] = {**root_attrs, **meta.get("attributes", {}), **attrs,
                              "problems": [{"path": p, "message": m}
                                           for p, m in sorted(problems.items())],
                              schema.ATTR_STATE: schema.STATE_WRITING}
        return meta

    def complete(meta: dict | None) -> dict:
        if not (meta or {}).get("consolidated_metadata"):
            raise ConversionError(f"{cube.url}/{ROOT_META} changed while this conversion "
                                  "finalised it (another program writes the cube); stop it, "
                                  "then run the same command again (it resumes)")
        meta["attributes"][schema.ATTR_STATE] = schema.STATE_COMPLETE
        return meta

    if lock is not None:
        lock.check()
    update_root(cube, with_attrs)
    with _quiet():
        zarr.consolidate_metadata(store)
    if lock is not None:
        lock.check()  # never mark complete a cube another conversion has taken over
    update_root(cube, complete)
