"""Open a cube from anywhere: local paths, ``file://``, ``s3://``, any fsspec URL or a zarr store.

:func:`open_cube` reads the root ``zarr.json`` once (it holds the consolidated metadata of
every array) and builds every coordinate from it, so opening costs one request on an
object store; the variables are lazy dask arrays whose chunks are the stored inner chunks
(one patch at one slot, all bands) or, on request, the shards. It refuses, with a message
saying why, stores that hold no s2cube cube and cubes whose conversion has not finished.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from s2cube import direct, schema
from s2cube.errors import IncompleteCubeError, NotACubeError
from s2cube.io.storage import Location, parse_location, redact, storage_error, zarr_store

logger = logging.getLogger(__name__)

#: Coordinates on ``roi`` (and ``wavelength`` on ``band``) that every cube carries.
ROI_COORDS = ("collection", "roi_id", "split", "region", "epsg", "transform", "n_rows", "n_cols")
DATE_VARS = ("s2_date", "s1_date")
CHUNK_CHOICES = ("inner", "shard")


def open_cube(
    url: str | os.PathLike | Any,
    *,
    storage_options: dict[str, Any] | None = None,
    consolidated: bool = True,
    allow_incomplete: bool = False,
    chunks: str | dict | None = "inner",
) -> xr.Dataset:
    """Open an s2cube cube lazily.

    Parameters
    ----------
    url
        A local path, ``file://``, ``s3://bucket/key`` or any fsspec URL, or a zarr v3
        store object (e.g. a wrapped store that counts requests).
    storage_options
        Passed to fsspec (credentials, ``anon=True``, ``endpoint_url``, ...).
    consolidated
        Read the consolidated metadata (one request); ``False`` lists the arrays instead.
    allow_incomplete
        Open a cube whose conversion is running or stopped before it finished.
    chunks
        ``"inner"`` (default): dask chunks = stored inner chunks (one patch, one slot, all
        bands); ``"shard"``: one patch's whole series per chunk; ``None``: no dask (lazy
        xarray indexing); a dict is passed to :func:`xarray.open_zarr` as is.

    Returns
    -------
    xarray.Dataset
        Lazy; nothing but metadata has been read.

    Raises
    ------
    NotACubeError
        Nothing is at ``url``, or it holds another dataset (or another schema version).
    IncompleteCubeError
        The cube's ``s2cube_state`` is not ``"complete"`` and ``allow_incomplete`` is False.
    """
    if chunks is not None and not isinstance(chunks, dict) and chunks not in CHUNK_CHOICES:
        raise ValueError(f"chunks={chunks!r}: use 'inner', 'shard', None or a dict of dim sizes")
    store, loc = _store(url, storage_options)
    where = redact(loc.url, storage_options) if loc is not None else type(store).__name__
    try:
        ds = _open(store, consolidated=consolidated, chunks=chunks)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        attrs = _root_attrs(store, loc)
        _check(attrs, where, allow_incomplete, cause=exc)
        # a cube being written has no consolidated metadata: list the arrays instead
        ds = _guard(lambda: _open(store, consolidated=False, chunks=chunks), loc)
    except Exception as exc:
        raise _translated(exc, loc) from None
    _check(dict(ds.attrs), where, allow_incomplete)
    ds = _finish(ds)
    if loc is not None:  # where the fast paths (``ds.s2cube.batches``) read from; no secrets
        ds.encoding["s2cube_url"] = loc.url
        direct.remember(ds, loc.url, loc.storage_options)
    return ds


def _store(url: Any, storage_options: dict[str, Any] | None) -> tuple[Any, Location | None]:
    if isinstance(url, str | os.PathLike):
        loc = parse_location(url, storage_options)
        return zarr_store(loc, read_only=True), loc
    return url, None


def _translated(exc: Exception, loc: Location | None) -> Exception:
    """A :class:`StorageError` saying what to fix for an object-store failure, else ``exc``."""
    if loc is None or loc.is_local:
        return exc
    return storage_error(exc, loc, action="read") or exc


def _guard(fn, loc: Location | None):
    try:
        return fn()
    except Exception as exc:
        err = _translated(exc, loc)
        if err is exc:
            raise
        raise err from None


def _open(store: Any, *, consolidated: bool, chunks: str | dict | None) -> xr.Dataset:
    # "shard": one dask chunk per patch series (the shards differ from the inner chunks
    # only along time); zarr then reads each shard in one call.
    dask_chunks = chunks if isinstance(chunks, dict) else {
        "inner": {}, "shard": {"time": -1}}.get(chunks)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        return xr.open_zarr(
            store, consolidated=consolidated, zarr_format=3, chunks=dask_chunks,
            decode_times=False, create_default_indexes=False,
        )


def _root_attrs(store: Any, loc: Location | None) -> dict | None:
    """The root group's attrs read without consolidated metadata, ``None`` if no group."""
    import zarr

    try:
        group = _guard(lambda: zarr.open_group(store, mode="r", zarr_format=3,
                                               use_consolidated=False), loc)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return dict(group.attrs)


def _check(attrs: dict | None, where: str, allow_incomplete: bool,
           cause: Exception | None = None) -> None:
    if attrs is None:
        raise NotACubeError(f"{where} holds no Zarr v3 group: check the URL (an s2cube cube "
                            "is the folder that holds the root zarr.json)") from cause
    if attrs.get("title") != schema.TITLE or "schema_version" not in attrs:
        raise NotACubeError(f"{where} is a Zarr group but not an s2cube cube (title "
                            f"{attrs.get('title')!r}); open it with xarray.open_zarr instead")
    if attrs["schema_version"] != schema.SCHEMA_VERSION:
        raise NotACubeError(f"{where} has cube schema version {attrs['schema_version']}; this "
                            f"s2cube reads version {schema.SCHEMA_VERSION}: install the s2cube "
                            "that wrote it or convert again")
    state = attrs.get(schema.ATTR_STATE)
    if state != schema.STATE_COMPLETE:
        if not allow_incomplete:
            raise IncompleteCubeError(
                f"{where} is not a complete cube (s2cube_state={state!r}): a conversion is "
                "running or stopped before it finished. Run the conversion again to finish it, "
                "or open it anyway with open_cube(..., allow_incomplete=True)") from cause
        logger.warning("opening %s although its s2cube_state is %r", where, state)


def _finish(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.set_coords([c for c in (*ROI_COORDS, "wavelength") if c in ds.data_vars])
    ds = _decode_dates(ds)
    return ds.assign_coords(_coords(ds))


def _coords(ds: xr.Dataset) -> dict[str, Any]:
    """Coordinates built from metadata (the root attrs and the schema) where possible.

    Only what the metadata cannot tell (a cube without the ``grids`` attr) is read from
    the store, all coordinates in one ``dask.compute``.
    """
    out: dict[str, Any] = {}
    sizes = ds.sizes
    known = {"time": np.arange(sizes.get("time", 0), dtype=np.int32),
             "band": np.array(schema.BANDS), "polarization": np.array(schema.POLARIZATIONS),
             "detector": np.array(schema.DETECTORS)}
    for dim in ("row", "col", "y", "x"):
        known[dim] = np.arange(sizes.get(dim, 0), dtype=np.int32)
    for dim, values in known.items():
        if dim in sizes and len(values) == sizes[dim]:
            out[dim] = (dim, values, ds[dim].attrs if dim in ds.variables else {})
    if "band" in out:
        out["wavelength"] = ("band", np.array(schema.WAVELENGTHS),
                             ds["wavelength"].attrs if "wavelength" in ds else {"units": "nm"})
    grids = ds.attrs.get("grids")
    if "roi" in sizes and grids and len(grids) == sizes["roi"]:
        out.update(_roi_coords(ds, grids))
    rest = [n for n in ds.coords if n not in out]
    if rest:
        import dask

        values = dask.compute(*[ds[n].variable.data for n in rest])
        for n, v in zip(rest, values):
            out[n] = (ds[n].dims, np.asarray(v), ds[n].attrs)
    return out


def _roi_coords(ds: xr.Dataset, grids: list[dict]) -> dict[str, Any]:
    names = [g["roi"] for g in grids]
    infos = [schema.roi_info(n) for n in names]

    def attrs(name: str) -> dict:
        return dict(ds[name].attrs) if name in ds.variables else {}

    return {
        "roi": np.array(names),
        "collection": ("roi", np.array([i.collection for i in infos]), attrs("collection")),
        "roi_id": ("roi", np.array([i.roi_id for i in infos], np.int32), attrs("roi_id")),
        "split": ("roi", np.array([i.split for i in infos]), attrs("split")),
        "region": ("roi", np.array([i.region for i in infos]), attrs("region")),
        "epsg": ("roi", np.array([g.get("epsg") or -1 for g in grids], np.int32), attrs("epsg")),
        "transform": (("roi", "affine"), np.array([g["transform"] for g in grids], np.float64),
                      attrs("transform")),
        "n_rows": ("roi", np.array([g["n_rows"] for g in grids], np.int32), attrs("n_rows")),
        "n_cols": ("roi", np.array([g["n_cols"] for g in grids], np.int32), attrs("n_cols")),
    }


def _decode_dates(ds: xr.Dataset) -> xr.Dataset:
    """Decode the CF-encoded date variables lazily (xarray would read values to check them)."""
    for name in DATE_VARS:
        if name not in ds or "units" not in ds[name].attrs:
            continue
        var = ds[name]
        attrs = dict(var.attrs)
        units, calendar = attrs.pop("units"), attrs.pop("calendar", "standard")
        encoding = {**var.encoding, "units": units, "calendar": calendar}
        data = var.data
        if hasattr(data, "map_blocks"):
            decoded = data.map_blocks(_decode_block, units, calendar, dtype="datetime64[ns]")
        else:
            decoded = _decode_block(np.asarray(data), units, calendar)
        ds[name] = xr.Variable(var.dims, decoded, attrs, encoding)
    return ds


def _decode_block(values: np.ndarray, units: str, calendar: str) -> np.ndarray:
    from xarray.coding.times import decode_cf_datetime

    out = decode_cf_datetime(np.asarray(values, dtype=np.float64), units, calendar,
                             use_cftime=False, time_unit="ns")
    return np.asarray(out, dtype="datetime64[ns]")


@dataclass
class ReadCounter:
    """What a :class:`CountingStore` has read: requests and bytes, per key prefix."""

    requests: int = 0
    bytes: int = 0
    by_array: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, nbytes: int) -> None:
        self.requests += 1
        self.bytes += nbytes
        top = key.split("/", 1)[0]
        self.by_array[top] = self.by_array.get(top, 0) + nbytes


_COUNTERS: dict[int, ReadCounter] = {}
_CLASSES: dict[str, type] = {}


def _counting_class() -> type:
    """The store wrapper class, made on first use (zarr loads only then) and picklable by name."""
    if "CountingStore" in _CLASSES:
        return _CLASSES["CountingStore"]
    from zarr.storage import WrapperStore

    class CountingStore(WrapperStore):
        """Counts every read into the :class:`ReadCounter` registered under ``counter_id``.

        The counter is looked up by id in this process, so the count survives the copies
        (pickling) that xarray and dask make of stores.
        """

        counter_id: int = 0

        def _with_store(self, store):
            out = type(self)(store)
            out.counter_id = self.counter_id
            return out

        def __getstate__(self):
            return {"_store": self._store, "counter_id": self.counter_id}

        def __setstate__(self, state):
            self._store = state["_store"]
            self.counter_id = state["counter_id"]

        def _count(self, key: str, buf) -> None:
            counter = _COUNTERS.get(self.counter_id)
            if counter is not None:
                counter.add(key, 0 if buf is None else len(buf))

        async def get(self, key, prototype, byte_range=None):
            buf = await self._store.get(key, prototype, byte_range)
            self._count(key, buf)
            return buf

        async def get_partial_values(self, prototype, key_ranges):
            bufs = await self._store.get_partial_values(prototype, key_ranges)
            for (key, _), buf in zip(key_ranges, bufs):
                self._count(key, buf)
            return bufs

    CountingStore.__module__ = __name__
    CountingStore.__qualname__ = "CountingStore"
    _CLASSES["CountingStore"] = CountingStore
    return CountingStore


def __getattr__(name: str):  # PEP 562: ``s2cube.io.open.CountingStore`` without importing zarr early
    if name == "CountingStore":
        return _counting_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def counting_store(store: Any) -> tuple[Any, ReadCounter]:
    """Wrap a zarr v3 store so that every read is counted (for benchmarks and tests).

    Returns the wrapped store (pass it to :func:`open_cube`) and its live counter. Reads
    are counted in this process (threads included), not in other worker processes.
    """
    counter = ReadCounter()
    wrapped = _counting_class()(store)
    wrapped.counter_id = id(counter)
    _COUNTERS[id(counter)] = counter
    return wrapped, counter
