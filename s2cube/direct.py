"""Direct reads: dask tasks that fetch a cube's frames themselves instead of through xarray.

xarray's zarr graph reads every chunk in a task of its own (zarr's synchronous wrapper
around its async pipeline, per call) and hands the arrays to the task that uses them. For
analyses whose unit of work is a patch series (a composite) or a sample's few frames
(scoring), one task that reads what it needs with the loader's :class:`ChunkReader`
(a cached shard index, one batched fetch, decompression straight into the output) and
computes at once costs little more than the decompression itself.

A variable qualifies only while it holds, unchanged, a selection of a cube opened by
:func:`s2cube.open_cube` in this process: its dask graph has the layers ``open_cube``
made for it and nothing but indexing and transposes on top, and its coordinates name the
stored positions it holds (ROI names, slot numbers, band names, the full pixel grid).
Anything else (arithmetic, ``where``, values from elsewhere, a crop inside the grid)
keeps the generic graph, which gives the same numbers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from s2cube import schema

logger = logging.getLogger(__name__)

#: dask layers a pure selection adds on top of the layers ``open_cube`` made
SELECTION_LAYERS = ("getitem-", "transpose-")
#: where ``open_cube`` keeps what this module needs, in ``Dataset.encoding``
ENCODING_KEY = "s2cube_direct"

_OPTIONS: dict[str, dict[str, Any]] = {}  # storage options of the cubes opened in this process
_READERS: dict[tuple, Any] = {}  # per process: one reader per cube
_LOCK = threading.Lock()


def remember(ds: xr.Dataset, url: str, storage_options: dict[str, Any]) -> None:
    """Record in ``ds.encoding`` what the direct path needs (no secrets there).

    The storage options stay in this process's memory, keyed by URL and a digest of them,
    like fsspec's cache of filesystems; a Dataset unpickled elsewhere finds none and, unless
    its cube is local, uses the generic graph.
    """
    layers = {name: var.data.name for name, var in ds.data_vars.items()
              if name in schema.PIXEL_VARIABLES and hasattr(var.data, "dask")}
    if not layers:
        return
    options = dict(storage_options)
    key = f"{url}#{hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[:16]}"
    _OPTIONS[key] = options
    ds.encoding[ENCODING_KEY] = {
        "url": url, "options": key, "layers": layers, "sizes": dict(ds.sizes),
        "rois": [str(r) for r in np.atleast_1d(schema.as_str(ds["roi"].values))]}


@dataclass(frozen=True)
class Frames:
    """Where to read a cube's frames from; pickles as its URL and options, reads per process."""

    url: str
    key: str  # the URL and a digest of the options: one reader per cube and credentials
    storage_options: dict = field(hash=False, compare=False, repr=False)
    threads: int | None = None  # decoding threads; None: as many as tasks can run at once

    def reader(self):
        """This process's :class:`~s2cube.io.reader.ChunkReader` of the cube (made once)."""
        key = (self.key, self.threads, os.getpid())
        got = _READERS.get(key)
        if got is None:
            with _LOCK:
                got = _READERS.get(key)
                if got is None:
                    got = _READERS[key] = _make_reader(self.url, self.storage_options,
                                                       self.threads or _task_threads())
        return got

    def read(self, var: str, roi: int, row: int, col: int, slots: Any, *,
             reuse: bool = False) -> np.ndarray:
        """Frames ``(len(slots), *frame)`` of ``var`` at one patch, stored positions.

        ``reuse``: read into this thread's buffer for ``var`` and return a view of it,
        valid until this thread's next ``reuse`` read of ``var``. A patch series is tens
        of MB; a fresh array per task costs its page faults again, and more in dask
        workers, which return freed memory to the system at once (``MALLOC_TRIM_THRESHOLD_``).
        """
        from s2cube.io.reader import FrameRequest

        reader = self.reader()
        layout = reader.layouts[var]
        shape = (len(slots), *layout.frame_shape)
        out = scratch(var, shape, layout.dtype) if reuse else np.empty(shape, layout.dtype)
        reader.read([FrameRequest(var, roi, row, col, int(t), out[k])
                     for k, t in enumerate(slots)])
        return out


_LOCAL = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """This thread's buffer called ``name``, grown to hold ``shape`` (a view of that shape).

    For temporaries of a task that nothing keeps after it returns.
    """
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    need = int(np.prod(shape))
    buf = bufs.get(name)
    if buf is None or buf.dtype != np.dtype(dtype) or buf.size < need:
        buf = bufs[name] = np.empty(need, dtype)
    return buf[:need].reshape(shape)


def _make_reader(url: str, storage_options: dict, threads: int):
    import zarr

    from s2cube.io.reader import ChunkReader, parse_layout
    from s2cube.io.storage import parse_location, zarr_store

    group = zarr.open_group(zarr_store(parse_location(url, storage_options), read_only=True),
                            mode="r")
    layouts = {v: parse_layout(v, group[v].metadata.to_dict())
               for v in schema.PIXEL_VARIABLES if v in group}
    return ChunkReader(url, layouts, storage_options=storage_options, threads=threads)


def _task_threads() -> int:
    """Decoding threads: as many as tasks can run at once here (a dask worker's threads, or
    the cores for the local threaded scheduler), so concurrent tasks never queue on one."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Selection:
    """The stored positions a variable's selection holds: ROI, slot and band indices.

    ``roi`` has one entry per position along the variable's ``roi`` dim (or one for a
    scalar ``roi``); ``band`` is None for variables without bands, ``all_bands`` whether it
    is every stored band in stored order.
    """

    frames: Frames
    var: str
    roi: tuple[int, ...]
    time: tuple[int, ...]
    band: tuple[int, ...] | None

    @property
    def all_bands(self) -> bool:
        return self.band is None or self.band == tuple(range(len(schema.BANDS)))


def selection(ds: xr.Dataset, name: str) -> Selection | None:
    """The stored positions of ``ds[name]``, or None when it cannot be read directly."""
    info = ds.encoding.get(ENCODING_KEY)
    if not info or name not in ds or name not in info["layers"]:
        return None
    var = ds[name]
    if not _pure(var.data, info["layers"][name]):
        return None
    sizes = info["sizes"]
    if not {"y", "x"} <= set(var.dims) or "time" not in var.dims:
        return None
    for dim in ("y", "x", "row", "col"):  # the whole pixel grid, and the small arrays' grid
        if (dim in ds.coords or dim in var.dims) and not (
                dim in ds.coords and _is_range(ds[dim].values, sizes.get(dim))):
            return None
    roi = _positions(var, "roi", info["rois"])
    time = _positions(var, "time", range(sizes["time"]))
    band = _positions(var, "band", list(schema.BANDS)) if "band" in var.dims else None
    if roi is None or time is None or ("band" in var.dims and band is None):
        return None
    options = _OPTIONS.get(info["options"])
    if options is None:  # opened in another process: only a local cube needs no options
        from s2cube.io.storage import parse_location

        if not parse_location(info["url"]).is_local:
            return None
        options = {}
    return Selection(Frames(info["url"], info["options"], options), name, roi, time, band)


def _pure(data: Any, base: str) -> bool:
    """Whether ``data`` is ``base`` (a layer ``open_cube`` made) under indexing only."""
    layers = getattr(getattr(data, "dask", None), "layers", None)
    if layers is None or base not in layers:
        return False
    return all(n in (base, f"original-{base}") or n.startswith(SELECTION_LAYERS) for n in layers)


def _is_range(values: np.ndarray, size: int | None) -> bool:
    return size is not None and values.shape == (size,) and np.array_equal(values, np.arange(size))


def _positions(var: xr.DataArray, dim: str, stored: Any) -> tuple[int, ...] | None:
    """Stored indices of ``var``'s ``dim`` coordinate values (a scalar one counts as one)."""
    if dim not in var.coords:
        return None
    values = np.atleast_1d(var[dim].values)
    if var[dim].ndim != (1 if dim in var.dims else 0) or values.dtype.kind not in "USiu":
        return None
    key = str if values.dtype.kind in "US" else int
    lookup = {key(v): k for k, v in enumerate(stored)}
    out = [lookup.get(key(v)) for v in values]
    return None if None in out else tuple(out)


# --- any lazily indexed array: read a block inside the task that uses it ----------------------

def block_source(data: Any) -> tuple | None:
    """A task tuple's head that reads a block of ``data`` given its slices, or None.

    xarray's backends open a variable as ``dask.array.from_array`` of a lazily indexed
    object (one graph key, ``original-<name>``), each block a ``getter`` task reading
    ``object[slices]``. When ``data`` is exactly that, the task that needs a block can read
    it itself: ``(*block_source(data), slices)``. For an unsharded Zarr v3 array on local
    disk the chunk is read straight into this thread's buffers (:class:`LocalChunks`);
    otherwise through the object, as dask's getter does. Anything on top of the variable
    (arithmetic, selection, rechunking) returns None and keeps the block tasks.
    """
    layers = getattr(getattr(data, "dask", None), "layers", None)
    orig = f"original-{getattr(data, 'name', '')}"
    if layers is None or set(layers) != {data.name, orig} or len(layers[orig]) != 1:
        return None
    obj = layers[orig].get(orig)
    if not hasattr(obj, "__getitem__") or type(obj).__module__.startswith("dask"):
        return None
    local = LocalChunks.of(obj, data.chunks)
    return (local.read,) if local is not None else (read_block, orig)


def block_slices(chunks: tuple[tuple[int, ...], ...], index: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices of block ``index`` of an array with dask ``chunks``."""
    out = []
    for sizes, i in zip(chunks, index):
        start = int(sum(sizes[:i]))
        out.append(slice(start, start + int(sizes[i])))
    return tuple(out)


def read_block(obj: Any, slices: tuple[slice, ...]) -> np.ndarray:
    """``object[slices]`` as NumPy, as dask's ``getter`` reads a block of ``from_array``."""
    return np.asarray(obj[slices])


@dataclass(frozen=True)
class LocalChunks:
    """An unsharded Zarr v3 array in a local folder whose dask blocks are its chunks."""

    folder: str
    layout: Any  # s2cube.io.reader.ArrayLayout

    @classmethod
    def of(cls, obj: Any, chunks: tuple[tuple[int, ...], ...]) -> LocalChunks | None:
        """From xarray's wrapper of a zarr array (exactly: no decoding step, whole array)."""
        from s2cube.errors import S2CubeError
        from s2cube.io.reader import parse_layout

        try:
            lazy = obj.array.array
            wrapper = lazy.array
            if (type(obj).__name__, type(obj.array).__name__, type(lazy).__name__,
                    type(wrapper).__name__) != ("ImplicitToExplicitIndexingAdapter",
                                                "CopyOnWriteArray", "LazilyIndexedArray",
                                                "ZarrArrayWrapper"):
                return None
            if any(k != slice(None) for k in lazy.key.tuple):
                return None
            array = wrapper._array
            if type(array.store).__name__ != "LocalStore":
                return None
            layout = parse_layout(array.path, array.metadata.to_dict(), cube=False)
        except (AttributeError, KeyError, TypeError, S2CubeError):
            return None
        blocks_are_chunks = all(s == c for dim, c in zip(chunks, layout.chunk) for s in dim[:-1])
        if layout.shard is not None or not blocks_are_chunks:
            return None
        return cls(os.path.join(str(array.store.root), array.path), layout)

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """The block at ``slices``: a view of this thread's buffer, valid until the next read."""
        from s2cube.io.reader import _decompress

        lay = self.layout
        coords = [s.start // c for s, c in zip(slices, lay.chunk)]
        out = scratch(f"chunk:{self.folder}", lay.chunk, lay.dtype)
        try:
            with open(os.path.join(self.folder, lay._key(coords)), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                raw = memoryview(scratch("chunk-bytes", (size,), np.uint8))
                n = f.readinto(raw)
            _decompress(lay, raw[:n], out)
        except FileNotFoundError:  # a chunk never written holds the fill value
            out.fill(lay.fill if lay.fill is not None else 0)
        return out[tuple(slice(0, s.stop - s.start) for s in slices)]
