"""Fast reads of whole frames from the cube's sharded Zarr v3 arrays, for training.

No xarray or dask in the hot path. A plain ``zarr`` read of one frame pays per call for
metadata, the shard index, a store request and a codec pipeline; a training sample needs
12 frames (S2, S1 and a mask at ``n + 1`` slots), so that overhead dominates the ~5 ms of
decoding. Here:

- the arrays' metadata are parsed once (:class:`ArrayLayout`), from the consolidated root;
- a shard's index (its chunks' byte ranges) is read once per patch and cached;
- the byte ranges a batch needs are fetched together (``os.pread`` on local files; one
  concurrent ``cat_ranges`` call through fsspec for object stores, adjacent chunks merged);
- chunks are decompressed with the array's own codec (numcodecs' Blosc/Zstd/GZip, which
  release the GIL) straight into preallocated buffers, in a thread pool, and a request's
  post-processing step (see :mod:`s2cube.training.batches`) runs in the same threads.

Each process opens its own store lazily, on first use: a :class:`ChunkReader` pickles
without any live client, thread pool or file handle, and one created before a ``fork``
re-opens everything in the child (a client used across a fork can hang).

Crops: chunks are one whole patch (``P x P``) per slot, so a crop still reads and decodes the
one chunk per frame it needs, and copies out the window; it saves memory and transfer to the
model, not I/O.

Turning sample plans into stacked arrays and batches lives in :mod:`s2cube.training.batches`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2cube import schema
from s2cube.errors import IncompleteCubeError, NotACubeError, S2CubeError
from s2cube.io.storage import Location, filesystem, parse_location

logger = logging.getLogger(__name__)

MAX_UINT_64 = 2**64 - 1
#: read-ahead merge: byte ranges of one shard closer than this are fetched as one request
MERGE_GAP = 1 << 16


# --- array layout ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArrayLayout:
    """What a reader needs to know of one pixel array, parsed from its ``zarr.json``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: Any
    chunk: tuple[int, ...]  # the inner chunk (one frame)
    shard: tuple[int, ...] | None  # None when the array is not sharded
    compressors: tuple[tuple[str, dict], ...]  # bytes-to-bytes codecs, in encoding order
    index_at_end: bool = True
    index_crc: bool = True
    prefix: str = "c"
    separator: str = "/"

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame (the chunk without its roi and time dims)."""
        return self.chunk[2:]

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        shard = self.shard or self.chunk
        return tuple(s // c for s, c in zip(shard, self.chunk))

    @property
    def index_nbytes(self) -> int:
        return 16 * math.prod(self.chunks_per_shard) + (4 if self.index_crc else 0)

    def _key(self, coords: Sequence[int]) -> str:
        parts = [str(int(c)) for c in coords]
        if self.prefix:
            parts.insert(0, self.prefix)
        return self.separator.join(parts)

    def object_key(self, roi: int, row: int, col: int, slot: int) -> str:
        """Key (below the array) of the shard, or unsharded chunk, holding this frame."""
        size = self.shard or self.chunk
        p = self.chunk[-1]
        coords = [roi // size[0], slot // size[1]] + [0] * (len(self.shape) - 4)
        coords += [row * p // size[-2], col * p // size[-1]]
        return self._key(coords)

    def chunk_in_shard(self, slot: int) -> int:
        """Linear position of slot ``slot``'s chunk in the shard index (C order)."""
        per = self.chunks_per_shard
        return int(slot % (self.shard or self.chunk)[1]) * math.prod(per[2:])


def parse_layout(name: str, meta: dict, *, cube: bool = True) -> ArrayLayout:
    """An :class:`ArrayLayout` from an array's Zarr v3 metadata (the ``zarr.json`` dict).

    ``cube``: check that the inner chunks are one patch at one slot, as the frame reads need.
    """
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise NotACubeError(f"{name} is not a Zarr v3 array")
    shape = tuple(meta["shape"])
    outer = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = meta["codecs"]
    shard = None
    index_at_end, index_crc = True, True
    if codecs and codecs[0]["name"] == "sharding_indexed":
        cfg = codecs[0]["configuration"]
        shard, chunk, codecs = outer, tuple(cfg["chunk_shape"]), cfg["codecs"]
        index_at_end = cfg.get("index_location", "end") == "end"
        index_names = [c["name"] for c in cfg.get("index_codecs", [])]
        if index_names not in (["bytes", "crc32c"], ["bytes"]):
            raise S2CubeError(f"{name}: shard index codecs {index_names} are not supported; "
                              "rewrite the array with the default index codecs")
        index_crc = "crc32c" in index_names
    else:
        chunk = outer
    endian = "little"
    compressors = []
    for c in codecs:
        cname = c["name"]
        if cname == "bytes":
            endian = (c.get("configuration") or {}).get("endian", "little")
        elif cname in ("blosc", "zstd", "gzip", "crc32c"):
            compressors.append((cname, dict(c.get("configuration") or {})))
        else:
            raise S2CubeError(f"{name}: codec {cname!r} is not supported by the fast reader; "
                              "read this array with zarr instead")
    dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
    fill = meta.get("fill_value")
    if isinstance(fill, str):
        fill = float(fill.replace("Infinity", "inf"))
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc["name"] == "default" else ".")
    prefix = "c" if enc["name"] == "default" else ""
    if cube and (len(chunk) < 4 or chunk[0] != 1 or chunk[1] != 1 or chunk[-1] != chunk[-2]):
        raise S2CubeError(f"{name}: inner chunks {chunk} are not one square patch at one slot; "
                          "the fast reader needs the cube layout (1, 1, ..., P, P)")
    return ArrayLayout(name, shape, dtype.str, fill, chunk, shard, tuple(compressors),
                       index_at_end, index_crc, prefix, sep)


# --- the cube's small variables -----------------------------------------------------------------

@dataclass(frozen=True)
class CubeMeta:
    """The cube's coordinates and small variables, as NumPy arrays (read once, never pixels)."""

    url: str
    storage_options: dict = field(hash=False, compare=False, repr=False)
    patch_size: int
    roi_names: tuple[str, ...]
    transform: np.ndarray  # (roi, 6)
    coverage: np.ndarray  # (roi, time, row, col, detector) float32
    patch_id: np.ndarray  # (roi, row, col)
    valid_s2: np.ndarray
    valid_s1: np.ndarray
    blank: np.ndarray
    s2_date: np.ndarray  # datetime64[D], NaT where missing
    s1_date: np.ndarray
    layouts: dict[str, ArrayLayout] = field(hash=False, compare=False, repr=False)

    @property
    def detectors(self) -> tuple[str, ...]:
        return schema.DETECTORS


def _decode_dates(values: np.ndarray, attrs: dict, fill: Any) -> np.ndarray:
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[D]")
    units = str(attrs.get("units", ""))
    unit, _, epoch = units.partition(" since ")
    steps = {"days": "D", "hours": "h", "minutes": "m", "seconds": "s"}
    if unit not in steps or not epoch:
        raise S2CubeError(f"dates encoded as {units!r} are not understood; expected "
                          "'days since YYYY-MM-DD'")
    missing = values == attrs.get("_FillValue", fill)
    out = (np.datetime64(epoch.strip()[:19]) + values.astype(np.int64).astype(
        f"timedelta64[{steps[unit]}]")).astype("datetime64[D]")
    out[missing] = np.datetime64("NaT")
    return out


def load_meta(url: str | os.PathLike, storage_options: dict | None = None, *,
              allow_incomplete: bool = False) -> CubeMeta:
    """Read the cube's small variables and pixel-array layouts (one consolidated metadata read).

    Raises
    ------
    NotACubeError
        ``url`` holds no s2cube cube.
    IncompleteCubeError
        The cube is being written or a conversion stopped before finishing.
    """
    import zarr

    from s2cube.io.storage import zarr_store

    loc = parse_location(url, storage_options)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            group = zarr.open_group(zarr_store(loc, read_only=True), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise NotACubeError(f"{loc.url} holds no Zarr group; check the path of the cube") from None
    attrs = dict(group.attrs)
    if attrs.get("title") != schema.TITLE:
        raise NotACubeError(f"{loc.url} is not an s2cube cube (title {attrs.get('title')!r})")
    if attrs.get(schema.ATTR_STATE) != schema.STATE_COMPLETE and not allow_incomplete:
        raise IncompleteCubeError(f"{loc.url} is {attrs.get(schema.ATTR_STATE)!r}, not complete; "
                                  "finish or resume the conversion first")
    arrays = {}
    for name in ("coverage", "patch_id", "valid_s2", "valid_s1", "blank", "s2_date", "s1_date",
                 "roi", "transform"):
        arrays[name] = group[name]
    dates = {k: _decode_dates(arrays[k][...], dict(arrays[k].attrs), arrays[k].fill_value)
             for k in ("s2_date", "s1_date")}
    layouts = {}
    for var in schema.PIXEL_VARIABLES:
        if var in group:
            layouts[var] = parse_layout(var, group[var].metadata.to_dict())
    return CubeMeta(
        url=loc.url, storage_options=dict(loc.storage_options),
        patch_size=int(attrs.get("patch_size") or layouts["s2"].chunk[-1]),
        roi_names=tuple(str(r) for r in arrays["roi"][...]),
        transform=np.asarray(arrays["transform"][...], np.float64),
        coverage=np.asarray(arrays["coverage"][...]),
        patch_id=np.asarray(arrays["patch_id"][...]),
        valid_s2=np.asarray(arrays["valid_s2"][...], bool),
        valid_s1=np.asarray(arrays["valid_s1"][...], bool),
        blank=np.asarray(arrays["blank"][...], bool),
        s2_date=dates["s2_date"], s1_date=dates["s1_date"], layouts=layouts,
    )


# --- backends: byte ranges from files or object stores --------------------------------------------

class _LocalBackend:
    """``os.pread`` on cached file descriptors (page cache, no copies through Python files)."""

    def __init__(self, root: str, max_open: int = 256) -> None:
        self.root = root
        self.max_open = max_open
        self._fds: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _fd(self, key: str) -> tuple[int, int] | None:
        with self._lock:
            got = self._fds.get(key)
            if got is not None:
                self._fds.move_to_end(key)
                return got
        try:
            fd = os.open(os.path.join(self.root, key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        got = (fd, os.fstat(fd).st_size)
        with self._lock:
            self._fds[key] = got
            while len(self._fds) > self.max_open:
                os.close(self._fds.popitem(last=False)[1][0])
        return got

    def read(self, key: str, start: int, stop: int | None) -> bytes | None:
        """Bytes ``[start, stop)`` of ``key`` (negative ``start``: a suffix); None if absent."""
        got = self._fd(key)
        if got is None:
            return None
        fd, size = got
        if start < 0:
            start, stop = max(size + start, 0), size
        stop = size if stop is None else stop
        return os.pread(fd, stop - start, start)

    def read_into(self, key: str, start: int, stop: int, buf: bytearray) -> memoryview | None:
        """Bytes ``[start, stop)`` of ``key`` read into ``buf`` (no allocation); None if absent."""
        got = self._fd(key)
        if got is None:
            return None
        view = memoryview(buf)[:stop - start]
        return view[:os.preadv(got[0], [view], start)]

    def read_many(self, reqs: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        return [self.read(*r) for r in reqs]

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


class _FsspecBackend:
    """Any fsspec filesystem; ``cat_ranges`` fetches many ranges concurrently on async ones."""

    def __init__(self, loc: Location) -> None:
        self.fs = filesystem(loc)
        self.root = loc.path

    def read_many(self, reqs: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        if not reqs:
            return []
        paths, starts, ends = [], [], []
        for key, start, stop in reqs:
            paths.append(f"{self.root}/{key}")
            starts.append(start)
            ends.append(stop)
        # suffix ranges (negative starts) go as they are: one request each on S3/HTTP
        got = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        out: list[bytes | None] = []
        for path, start, g in zip(paths, starts, got):
            if isinstance(g, FileNotFoundError):
                out.append(None)
            elif isinstance(g, BaseException) and start < 0:  # no suffix ranges here
                out.append(self._suffix(path, -start))
            elif isinstance(g, BaseException):
                raise S2CubeError(f"reading {path} failed: {g}") from g
            else:
                out.append(g)
        return out

    def _suffix(self, path: str, n: int) -> bytes | None:
        try:
            size = self.fs.size(path)
        except FileNotFoundError:
            return None
        return self.fs.cat_file(path, start=max(size - n, 0), end=size)

    def close(self) -> None:
        pass


class _ObstoreBackend:
    """S3 through obstore (Rust object_store): ranges of each shard coalesced and fetched
    concurrently, all shards of a batch at once, on an event loop thread of this process."""

    def __init__(self, loc: Location) -> None:
        from s2cube.io.storage import obstore_s3

        self.store = obstore_s3(loc)
        self._loop: Any = None
        self._lock = threading.Lock()

    def _run(self, coro):
        import asyncio

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True,
                                 name="s2cube-obstore").start()
                self._loop = loop
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def read_many(self, reqs: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        return self._run(self._gather(reqs)) if reqs else []

    async def _gather(self, reqs):
        import asyncio

        import obstore

        out: list[Any] = [None] * len(reqs)
        by_key: dict[str, list[int]] = {}
        for i, (key, _start, _stop) in enumerate(reqs):
            by_key.setdefault(key, []).append(i)

        async def one(key: str, idxs: list[int]) -> None:
            plain = [i for i in idxs if reqs[i][1] >= 0 and reqs[i][2] is not None]
            other = [i for i in idxs if i not in plain]
            try:
                if plain:
                    got = await obstore.get_ranges_async(
                        self.store, key, starts=[reqs[i][1] for i in plain],
                        ends=[reqs[i][2] for i in plain])
                    for i, g in zip(plain, got):
                        out[i] = g
                for i in other:
                    start, stop = reqs[i][1], reqs[i][2]
                    rng = ({"suffix": -start} if start < 0 else
                           {"offset": start} if stop is None else (start, stop))
                    res = await obstore.get_async(self.store, key, options={"range": rng})
                    out[i] = await res.bytes_async()
            except FileNotFoundError:
                pass  # an absent shard: fill values

        await asyncio.gather(*(one(k, v) for k, v in by_key.items()))
        return out

    def close(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._loop = None


def _backend(loc: Location, backend: str | None):
    """The byte-range backend of this process for ``loc``."""
    if loc.is_local:
        return _LocalBackend(loc.path)
    if getattr(loc, "is_s3", False):
        from s2cube.io.storage import backend_of

        if backend_of(backend) == "obstore":
            return _ObstoreBackend(loc)
    return _FsspecBackend(loc)


# --- decoding ---------------------------------------------------------------------------------

def _decompress(layout: ArrayLayout, buf: bytes, out: np.ndarray) -> None:
    """Decode one chunk's bytes into ``out`` (C-contiguous, the chunk's dtype and size)."""
    data = memoryview(buf)
    steps = list(layout.compressors)
    while steps and steps[-1][0] == "crc32c":  # a checksum after compression: strip it
        steps.pop()
        data = data[:-4]
    if not steps:
        np.copyto(out, np.frombuffer(data, dtype=out.dtype).reshape(out.shape))
        return
    for i, (name, _cfg) in enumerate(reversed(steps)):
        last = i == len(steps) - 1
        dest = out if last else None
        if name == "blosc":
            from numcodecs import blosc

            if dest is not None:
                blosc.decompress(data, dest)
            else:
                data = memoryview(blosc.decompress(data))
        elif name == "zstd":
            from numcodecs import Zstd

            res = Zstd().decode(data, dest)
            data = memoryview(res) if dest is None else data
        elif name == "gzip":
            from numcodecs import GZip

            res = GZip().decode(data, dest)
            data = memoryview(res) if dest is None else data
        else:
            raise S2CubeError(f"{layout.name}: codec {name} cannot be decoded here")


# --- requests --------------------------------------------------------------------------------

#: A post-processing step: ``post(frame, out)`` writes the (cropped) decoded frame into ``out``.
Post = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class FrameRequest:
    """One frame to read into ``out``: variable, patch location, slot, crop and post-processing.

    ``crop`` is ``(y0, x0, h, w)`` inside the patch; ``post`` receives the decoded (cropped)
    frame and ``out``; without it the frame is copied (or decoded straight) into ``out``.
    """

    var: str
    roi: int
    row: int
    col: int
    slot: int
    out: np.ndarray
    crop: tuple[int, int, int, int] | None = None
    post: Post | None = None


class ChunkReader:
    """Reads frames of a cube's pixel arrays, with a cached shard index and a thread pool.

    Pickles without live state (store clients, file handles, threads); every process opens its
    own on first use, so it is safe under ``fork``, ``spawn`` and ``forkserver``.

    Parameters
    ----------
    url, storage_options
        The cube.
    layouts
        Parsed layouts of the pixel arrays (from :func:`load_meta`).
    threads
        Decoding threads per process.
    backend
        For S3: ``"obstore"`` or ``"fsspec"`` (default: ``s2cube.io.storage.backend_of()``).
    """

    def __init__(self, url: str, layouts: dict[str, ArrayLayout], *,
                 storage_options: dict | None = None, threads: int = 2,
                 backend: str | None = None) -> None:
        self.loc = parse_location(url, storage_options)
        self.backend = backend
        self.layouts = dict(layouts)
        self.threads = max(1, int(threads))
        self._state: dict[str, Any] | None = None

    # live state, per process ---------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_state"] = None
        return state

    def _live(self) -> dict[str, Any]:
        st = self._state
        if st is None or st["pid"] != os.getpid():
            backend = _backend(self.loc, self.backend)
            # always decode in pool threads: numcodecs' Blosc then uses a private context
            # instead of its global thread pool (which is not fork-safe and serialises callers)
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="s2cube-read")
            st = {"pid": os.getpid(), "backend": backend, "pool": pool, "index": {},
                  "scratch": threading.local()}
            self._state = st
        return st

    def close(self) -> None:
        """Close files and threads of this process (they reopen on the next read)."""
        st = self._state
        if st is not None and st["pid"] == os.getpid():
            st["backend"].close()
            st["pool"].shutdown(wait=False)
        self._state = None

    # shard indices --------------------------------------------------------------------------
    def _indices(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray | None]:
        """Shard indices ``(n_chunks, 2)`` of ``(var, key)`` pairs, read once and cached."""
        st = self._live()
        cache: dict = st["index"]
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if todo:
            reqs = []
            for var, key in todo:
                lay = self.layouts[var]
                n = lay.index_nbytes
                reqs.append((f"{var}/{key}", -n, None) if lay.index_at_end
                            else (f"{var}/{key}", 0, n))
            for (var, key), raw in zip(todo, st["backend"].read_many(reqs)):
                cache[(var, key)] = self._parse_index(var, raw)
        return {k: cache[k] for k in keys}

    def _parse_index(self, var: str, raw: bytes | None) -> np.ndarray | None:
        if raw is None:
            return None
        lay = self.layouts[var]
        n = 16 * math.prod(lay.chunks_per_shard)
        if len(raw) < lay.index_nbytes:
            raise S2CubeError(f"shard of {var} is truncated ({len(raw)} bytes of index)")
        return np.frombuffer(memoryview(raw)[:n], dtype="<u8").reshape(-1, 2).copy()

    # reading --------------------------------------------------------------------------------
    def read(self, requests: Sequence[FrameRequest]) -> None:
        """Fill every request's ``out`` (fill value where a chunk or shard is absent)."""
        if not requests:
            return
        st = self._live()
        ranges: list[tuple[str, int, int | None] | None] = []
        sharded = [(r.var, self.layouts[r.var].object_key(r.roi, r.row, r.col, r.slot))
                   for r in requests if self.layouts[r.var].shard is not None]
        index = self._indices(sharded) if sharded else {}
        for r in requests:
            lay = self.layouts[r.var]
            key = lay.object_key(r.roi, r.row, r.col, r.slot)
            if lay.shard is None:
                ranges.append((f"{r.var}/{key}", 0, None))
                continue
            idx = index[(r.var, key)]
            if idx is None:
                ranges.append(None)
                continue
            off, nbytes = (int(v) for v in idx[lay.chunk_in_shard(r.slot)])
            ranges.append(None if off == MAX_UINT_64 else (f"{r.var}/{key}", off, off + nbytes))
        backend = st["backend"]
        if isinstance(backend, _LocalBackend):
            jobs = [(r, rng, None) for r, rng in zip(requests, ranges)]
        else:
            jobs = [(r, None, b) for r, b in zip(requests, self._fetch(backend, ranges))]
        for f in [st["pool"].submit(self._one, st, *job) for job in jobs]:
            f.result()

    def _fetch(self, backend, ranges) -> list[bytes | None]:
        """Fetch ranges in one call, merging near-adjacent ranges of one object."""
        wanted = sorted((rng[0], rng[1], rng[2], i) for i, rng in enumerate(ranges)
                        if rng is not None)
        merged: list[list] = []
        for key, start, stop, i in wanted:
            if stop is not None and merged and merged[-1][0] == key and merged[-1][2] is not None \
                    and start - merged[-1][2] <= MERGE_GAP:
                merged[-1][2] = max(merged[-1][2], stop)
                merged[-1][3].append((i, start, stop))
            else:
                merged.append([key, start, stop, [(i, start, stop)]])
        got = backend.read_many([(m[0], m[1], m[2]) for m in merged])
        out: list[bytes | None] = [None] * len(ranges)
        for m, data in zip(merged, got):
            view = memoryview(data) if data is not None else None
            for i, start, stop in m[3]:
                if view is not None:
                    out[i] = view[start - m[1]:(stop - m[1]) if stop is not None else None]
        return out

    def _scratch(self, st, shape, dtype) -> np.ndarray:
        local = st["scratch"]
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = {}
        key = (tuple(shape), np.dtype(dtype).str)
        buf = bufs.get(key)
        if buf is None:
            buf = bufs[key] = np.empty(shape, dtype)
        return buf

    def _bytes(self, st, n: int) -> bytearray:
        """This thread's read buffer, at least ``n`` bytes: a fresh ``bytes`` per chunk costs
        page faults wherever glibc serves large allocations by ``mmap`` (dask workers)."""
        local = st["scratch"]
        buf = getattr(local, "raw", None)
        if buf is None or len(buf) < n:
            buf = local.raw = bytearray(max(n, 1 << 20))
        return buf

    def _one(self, st, req: FrameRequest, rng, data) -> None:
        lay = self.layouts[req.var]
        if rng is not None:
            key, start, stop = rng
            if stop is None:
                data = st["backend"].read(*rng)
            else:
                data = st["backend"].read_into(key, start, stop, self._bytes(st, stop - start))
        direct = (req.crop is None and req.post is None and req.out.dtype == np.dtype(lay.dtype)
                  and req.out.flags.c_contiguous and req.out.shape == lay.frame_shape)
        frame = req.out if direct else self._scratch(st, lay.frame_shape, lay.dtype)
        if data is None:
            frame.fill(lay.fill if lay.fill is not None else 0)
        else:
            _decompress(lay, data, frame)
        if direct:
            return
        if req.crop is not None:
            y0, x0, h, w = req.crop
            frame = frame[..., y0:y0 + h, x0:x0 + w]
        if req.post is not None:
            req.post(frame, req.out)
        else:
            np.copyto(req.out, frame, casting="unsafe")

