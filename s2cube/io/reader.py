"""The one reader of the cube's bytes: layouts, shard indexes, byte ranges, checksums, decoding.

Everything s2cube reads from a cube goes through :class:`ChunkReader`: the xarray backend
(:mod:`s2cube.io.backend`, under every ``open_cube`` Dataset and so under every verb), the
training loader (:mod:`s2cube.training.batches`) and ``s2cube verify``. No xarray or dask here.

- An array's Zarr v3 metadata are parsed once into an :class:`ArrayLayout`.
- A shard's index (its chunks' byte ranges) is read once per process, its crc32c checked,
  its entries checked against the shard's size, and cached.
- The byte ranges a request needs are fetched together (``os.pread`` into a reused buffer
  on local files; one concurrent call through obstore or fsspec on object stores, near
  ranges of one object merged).
- Every chunk's crc32c (the Zarr v3 ``crc32c`` codec, schema version 2) is verified before
  it is decompressed, straight into the caller's array. A mismatch, an undecodable or
  truncated chunk, a garbage index, or a chunk missing where the cube says a frame exists
  raises :class:`~s2cube.errors.ChunkError` naming the variable, ROI, slot, patch and
  storage key. No byte is served unverified.

A :class:`ChunkReader` pickles without live state (clients, file handles, threads); every
process opens its own on first use, so it is safe under ``fork``, ``spawn`` and
``forkserver`` and inside dask workers.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2cube.errors import ChunkError, NotACubeError, S2CubeError
from s2cube.io.storage import Location, filesystem, parse_location

logger = logging.getLogger(__name__)

MAX_UINT_64 = 2**64 - 1
#: read-ahead merge: byte ranges of one object closer than this are fetched as one request
MERGE_GAP = 1 << 16
#: bytes-to-bytes codecs the reader decodes
COMPRESSORS = ("blosc", "zstd", "gzip")


# --- array layout ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArrayLayout:
    """What a reader needs to know of one array, parsed from its ``zarr.json``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: Any
    chunk: tuple[int, ...]  # the inner chunk (for a pixel array: one patch at one slot)
    shard: tuple[int, ...] | None  # None when the array is not sharded
    compressors: tuple[tuple[str, dict], ...]  # bytes-to-bytes codecs before the checksum
    checksum: bool  # every (inner) chunk ends with a crc32c of its bytes
    index_at_end: bool = True
    index_crc: bool = True
    prefix: str = "c"
    separator: str = "/"
    dims: tuple[str, ...] = ()

    @property
    def lead(self) -> int:
        """How many leading dims of the inner chunk have size 1 (roi and time, or patch)."""
        n = 0
        while n < len(self.chunk) - 1 and self.chunk[n] == 1:
            n += 1
        return n

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame: the inner chunk without its leading size-1 dims."""
        return self.chunk[self.lead:]

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        shard = self.shard or self.chunk
        return tuple(s // c for s, c in zip(shard, self.chunk))

    @property
    def index_nbytes(self) -> int:
        return 16 * math.prod(self.chunks_per_shard) + (4 if self.index_crc else 0)

    @property
    def fill_value(self) -> Any:
        return 0 if self.fill is None else self.fill

    def key(self, coords: Sequence[int]) -> str:
        """Storage key (below the array) of the chunk, or shard, at grid ``coords``."""
        parts = [str(int(c)) for c in coords]
        if self.prefix:
            parts.insert(0, self.prefix)
        return self.separator.join(parts)

    def shard_key(self, chunk: Sequence[int]) -> str:
        """Key of the shard (or unsharded chunk) holding the inner chunk at grid ``chunk``."""
        return self.key([int(c) // n for c, n in zip(chunk, self.chunks_per_shard)])

    def position(self, chunk: Sequence[int]) -> int:
        """Linear position of inner chunk ``chunk`` in its shard's index (C order)."""
        pos = 0
        for c, n in zip(chunk, self.chunks_per_shard):
            pos = pos * n + int(c) % n
        return pos

    def frame_chunk(self, roi: int, row: int, col: int, slot: int) -> tuple[int, ...]:
        """Grid coordinates of one frame's inner chunk in a time-series cube's pixel array
        (``roi, time, [channel,] y, x``; the frame is one patch at one slot)."""
        return (int(roi), int(slot), *(0,) * (len(self.shape) - 4), int(row), int(col))

    def object_key(self, roi: int, row: int, col: int, slot: int) -> str:
        """Key of the shard (or unsharded chunk) holding one frame of a time-series cube."""
        return self.shard_key(self.frame_chunk(roi, row, col, slot))

    def chunk_in_shard(self, slot: int) -> int:
        """Position of slot ``slot``'s chunk in its shard's index (time-series cubes)."""
        return self.position(self.frame_chunk(0, 0, 0, slot))


def parse_layout(name: str, meta: dict, *, frames: bool = True) -> ArrayLayout:
    """An :class:`ArrayLayout` from an array's Zarr v3 metadata (the ``zarr.json`` dict).

    ``frames``: check that the inner chunks are one square patch at one slot, as the frame
    reads of the pixel arrays need.
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
    compressors: list[tuple[str, dict]] = []
    checksum = False
    for i, c in enumerate(codecs):
        cname = c["name"]
        if cname == "bytes":
            endian = (c.get("configuration") or {}).get("endian", "little")
        elif cname == "crc32c" and i == len(codecs) - 1:
            checksum = True
        elif cname in COMPRESSORS:
            compressors.append((cname, dict(c.get("configuration") or {})))
        else:
            raise S2CubeError(f"{name}: codec {cname!r} is not supported by s2cube's reader; "
                              "read this array with zarr instead")
    dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
    fill = meta.get("fill_value")
    if isinstance(fill, str):
        fill = float(fill.replace("Infinity", "inf"))
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc["name"] == "default" else ".")
    prefix = "c" if enc["name"] == "default" else ""
    if frames and (len(chunk) < 4 or chunk[0] != 1 or chunk[1] != 1 or chunk[-1] != chunk[-2]):
        raise S2CubeError(f"{name}: inner chunks {chunk} are not one square patch at one slot; "
                          "the reader needs the cube layout (1, 1, ..., P, P)")
    return ArrayLayout(name, shape, dtype.str, fill, chunk, shard, tuple(compressors), checksum,
                       index_at_end, index_crc, prefix, sep,
                       tuple(meta.get("dimension_names") or ()))


# --- read statistics (for tests and benchmarks) --------------------------------------------------

@dataclass
class ReadStats:
    """Requests and bytes read by this process's readers while a :func:`counting` block ran."""

    requests: int = 0
    bytes: int = 0
    chunks: int = 0
    by_array: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, nbytes: int) -> None:
        self.requests += 1
        self.bytes += nbytes
        top = key.split("/", 1)[0]
        self.by_array[top] = self.by_array.get(top, 0) + nbytes


_COUNTERS: list[ReadStats] = []
_COUNT_LOCK = threading.Lock()


@contextmanager
def counting():
    """Count what every :class:`ChunkReader` of this process reads inside the block.

    ``with counting() as stats: ...`` then ``stats.requests``, ``stats.bytes``,
    ``stats.chunks`` (chunks decoded) and ``stats.by_array``. Reads in other processes
    (dask workers, DataLoader workers) are not counted.
    """
    stats = ReadStats()
    with _COUNT_LOCK:
        _COUNTERS.append(stats)
    try:
        yield stats
    finally:
        with _COUNT_LOCK:
            _COUNTERS.remove(stats)


def _count(key: str, nbytes: int) -> None:
    if _COUNTERS:
        with _COUNT_LOCK:
            for c in _COUNTERS:
                c.add(key, nbytes)


def _count_chunk() -> None:
    if _COUNTERS:
        with _COUNT_LOCK:
            for c in _COUNTERS:
                c.chunks += 1


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
        except (FileNotFoundError, NotADirectoryError):
            return None
        got = (fd, os.fstat(fd).st_size)
        with self._lock:
            self._fds[key] = got
            while len(self._fds) > self.max_open:
                os.close(self._fds.popitem(last=False)[1][0])
        return got

    def size(self, key: str) -> int | None:
        got = self._fd(key)
        return None if got is None else got[1]

    def read(self, key: str, start: int, stop: int | None) -> bytes | None:
        """Bytes ``[start, stop)`` of ``key`` (negative ``start``: a suffix); None if absent."""
        got = self._fd(key)
        if got is None:
            return None
        fd, size = got
        if start < 0:
            start, stop = max(size + start, 0), size
        stop = size if stop is None else min(stop, size)
        data = os.pread(fd, max(stop - start, 0), start)
        _count(key, len(data))
        return data

    def read_into(self, key: str, start: int, stop: int, buf: bytearray) -> memoryview | None:
        """Bytes ``[start, stop)`` of ``key`` read into ``buf`` (no allocation); None if absent."""
        got = self._fd(key)
        if got is None:
            return None
        view = memoryview(buf)[:stop - start]
        n = os.preadv(got[0], [view], start)
        _count(key, n)
        return view[:n]

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

    def size(self, key: str) -> int | None:
        try:
            return int(self.fs.size(f"{self.root}/{key}"))
        except FileNotFoundError:
            return None

    def read_many(self, reqs: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        if not reqs:
            return []
        paths = [f"{self.root}/{key}" for key, _, _ in reqs]
        starts = [start for _, start, _ in reqs]
        ends = [stop for _, _, stop in reqs]
        got = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        out: list[bytes | None] = []
        for (key, start, _), path, g in zip(reqs, paths, got):
            if isinstance(g, FileNotFoundError):
                out.append(None)
                continue
            if isinstance(g, BaseException) and start < 0:  # no suffix ranges here
                g = self._suffix(path, -start)
            elif isinstance(g, BaseException):
                raise S2CubeError(f"reading {path} failed: {g}") from g
            if g is not None:
                _count(key, len(g))
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
    """S3 through obstore (Rust object_store): ranges of each object coalesced and fetched
    concurrently, all objects of a request at once, on an event loop thread of this process."""

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

    def size(self, key: str) -> int | None:
        import obstore

        try:
            return int(self._run(obstore.head_async(self.store, key))["size"])
        except FileNotFoundError:
            return None

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
                        _count(key, len(g))
                for i in other:
                    start, stop = reqs[i][1], reqs[i][2]
                    rng: Any = ({"suffix": -start} if start < 0 else
                           {"offset": start} if stop is None else (start, stop))
                    res = await obstore.get_async(self.store, key, options={"range": rng})
                    out[i] = await res.bytes_async()
                    _count(key, len(out[i]))
            except FileNotFoundError:
                pass  # an absent object

        await asyncio.gather(*(one(k, v) for k, v in by_key.items()))
        return out

    def close(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._loop = None


def open_backend(loc: Location, backend: str | None = None):
    """The byte-range backend of this process for ``loc`` (local files, obstore or fsspec)."""
    if loc.is_local:
        return _LocalBackend(loc.path)
    if loc.is_s3:
        from s2cube.io.storage import backend_of

        if backend_of(backend) == "obstore":
            return _ObstoreBackend(loc)
    return _FsspecBackend(loc)


# --- checksums and decoding --------------------------------------------------------------------

def crc32c(data) -> int:
    """The CRC-32C of ``data`` (hardware-accelerated by google-crc32c where it can)."""
    import google_crc32c

    return google_crc32c.value(np.frombuffer(data, dtype=np.uint8))


def crc_ok(data: memoryview) -> bool:
    """Whether the last 4 bytes of ``data`` are the crc32c (little-endian) of the rest."""
    return crc32c(data[:-4]) == int.from_bytes(data[-4:], "little")


def decode_chunk(layout: ArrayLayout, buf, out: np.ndarray) -> str | None:
    """Verify and decode one stored chunk into ``out`` (the chunk's dtype, C-contiguous).

    Returns None when the chunk is good, else the reason it is not (``"checksum"``,
    ``"decode"``, ``"truncated"``): the caller names the chunk in its error.
    """
    data = memoryview(buf).cast("B")
    if layout.checksum:
        if len(data) < 4 or not crc_ok(data):
            return "checksum"
        data = data[:-4]
    steps = layout.compressors
    try:
        if not steps:
            if len(data) != out.nbytes:
                return "truncated"
            np.copyto(out, np.frombuffer(data, dtype=out.dtype).reshape(out.shape))
            return None
        for i, (name, _cfg) in enumerate(reversed(steps)):
            dest = out if i == len(steps) - 1 else None
            data = _decompress_one(name, data, dest, out.nbytes)
    except Exception:  # numcodecs raises SystemError, ValueError, RuntimeError on bad input
        logger.debug("decoding %s failed", layout.name, exc_info=True)
        return "decode"
    _count_chunk()
    return None


def _decompress_one(name: str, data: memoryview, dest: np.ndarray | None, nbytes: int):
    if name == "blosc":
        from numcodecs import blosc

        # the Blosc 1 header (16 bytes): version, versionlz, flags, typesize, then little-endian
        # uint32 nbytes, blocksize, cbytes; check it before trusting it with a buffer
        if len(data) < 16 or int.from_bytes(data[12:16], "little") != len(data):
            raise ValueError("the blosc header does not match the chunk's length")
        if dest is not None:
            size = int.from_bytes(data[4:8], "little")
            if size != nbytes:
                raise ValueError(f"blosc header says {size} bytes, the chunk holds {nbytes}")
            blosc.decompress(data, dest)
            return data
        return memoryview(blosc.decompress(data))
    if name == "zstd":
        from numcodecs import Zstd

        res = Zstd().decode(data, dest)
        return data if dest is not None else memoryview(res)
    if name == "gzip":
        from numcodecs import GZip

        res = GZip().decode(data, dest)
        return data if dest is not None else memoryview(res)
    raise ValueError(f"codec {name} cannot be decoded here")


# --- requests --------------------------------------------------------------------------------

#: A post-processing step: ``post(frame, out)`` writes the (selected) decoded frame into ``out``.
Post = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class FrameRequest:
    """One inner chunk (a frame) of a pixel array to read into ``out``.

    ``chunk`` is the inner chunk's coordinates on the array's chunk grid (for a time-series
    cube: :meth:`ArrayLayout.frame_chunk`, or :meth:`at`). ``select`` is an index applied to
    the decoded frame (e.g. bands and a window) before it is copied, or handed to
    ``post(frame, out)``; without either, the frame is decoded straight into ``out``.
    ``expect``: the cube says this frame exists, so an absent chunk is an error, not fill.
    """

    var: str
    chunk: tuple[int, ...]
    out: np.ndarray
    select: tuple | None = None
    post: Post | None = None
    expect: bool = False

    @classmethod
    def at(cls, layout: ArrayLayout, roi: int, row: int, col: int, slot: int, out: np.ndarray,
           select: tuple | None = None, post: Post | None = None,
           expect: bool = False) -> FrameRequest:
        """The frame of a time-series cube at (ROI, patch row, patch col, slot), stored positions."""
        return cls(layout.name, layout.frame_chunk(roi, row, col, slot), out, select, post, expect)


class ChunkReader:
    """Reads a cube's frames and small arrays: cached shard indexes, checksums, decoding.

    Parameters
    ----------
    url, storage_options
        The cube.
    layouts
        Parsed layouts of the arrays to read (:func:`parse_layout`), by variable name.
    roi_names
        The cube's ROI labels in stored order (errors name the ROI of a bad chunk).
    threads
        Decoding threads of this process. Chunks are always decoded in the reader's own
        threads, never the caller's: numcodecs' Blosc then uses a private context, not its
        global thread pool (which is not fork-safe, and would use every core from a dask
        task given one).
    backend
        For S3: ``"obstore"`` or ``"fsspec"`` (default: ``s2cube.io.storage.backend_of()``).
    """

    def __init__(self, url: str, layouts: dict[str, ArrayLayout], *,
                 roi_names: Sequence[str] = (), storage_options: dict | None = None,
                 threads: int = 1, backend: str | None = None) -> None:
        self.loc = parse_location(url, storage_options)
        self.backend = backend
        self.layouts = dict(layouts)
        self.roi_names = tuple(str(r) for r in roi_names)
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
            backend = open_backend(self.loc, self.backend)
            # decode in pool threads: numcodecs' Blosc then uses a private context instead of
            # its global thread pool (which is not fork-safe and serialises callers)
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

    # errors ---------------------------------------------------------------------------------
    def _where(self, var: str, key: str) -> str:
        return f"{self.loc.url}/{var}/{key}"

    def describe(self, var: str, chunk: Sequence[int]) -> tuple[str, dict]:
        """Where inner chunk ``chunk`` of ``var`` is, in words and as ChunkError fields."""
        lay = self.layouts[var]
        at = dict(zip(lay.dims, chunk))
        fields: dict[str, Any] = {}
        words = []
        if "roi" in at:
            i = int(at["roi"])
            fields["roi"] = self.roi_names[i] if i < len(self.roi_names) else f"#{i}"
            words.append(f"ROI {fields['roi']}")
        if "patch" in at:
            k = int(at["patch"])
            fields["roi"] = self.roi_names[k] if k < len(self.roi_names) else f"#{k}"
            words.append(f"patch {fields['roi']}")
        if "time" in at:
            fields["slot"] = int(at["time"])
            words.append(f"slot {fields['slot']}")
        if "y" in at and "x" in at and "roi" in at:
            fields["row"], fields["col"] = int(at["y"]), int(at["x"])
            words.append(f"patch (row {fields['row']}, col {fields['col']})")
        return ", ".join(words) or f"chunk {tuple(chunk)}", fields

    def chunk_error(self, reason: str, req: FrameRequest, key: str, detail: str = "") -> ChunkError:
        """A :class:`ChunkError` naming the frame of ``req`` and its storage key."""
        where, fields = self.describe(req.var, req.chunk)
        what = {"checksum": "fails its crc32c checksum",
                "decode": "cannot be decoded",
                "truncated": "is truncated",
                "index": "has a damaged shard index",
                "missing": "is missing although the cube records the frame as present"}[reason]
        return ChunkError(
            f"{req.var} of {where} {what}{': ' + detail if detail else ''} (key "
            f"{self._where(req.var, key)}). The cube is damaged: run `s2cube verify CUBE` to "
            "list every bad chunk, then convert the archive again into it (`s2cube convert "
            "ARCHIVE CUBE --verify` rewrites the patches that hold them)",
            variable=req.var, key=f"{req.var}/{key}", reason=reason, **fields)

    # shard indexes --------------------------------------------------------------------------
    def shard_index(self, var: str, key: str) -> np.ndarray | str | None:
        """The ``(n_chunks, 2)`` index of one shard, None if absent, or why it is unusable."""
        return self._indices([(var, key)])[(var, key)]

    def _indices(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Shard indices of ``(var, key)`` pairs, read once and cached (bad ones not cached)."""
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
            backend = st["backend"]
            sizes = ([backend.size(f"{var}/{key}") for var, key in todo]
                     if isinstance(backend, _LocalBackend) else [None] * len(todo))
            out = {}
            for (var, key), raw, size in zip(todo, backend.read_many(reqs), sizes):
                parsed = self.parse_index(var, raw, size)
                out[(var, key)] = parsed
                if not isinstance(parsed, str):
                    cache[(var, key)] = parsed
            return {k: cache[k] if k in cache else out[k] for k in keys}
        return {k: cache[k] for k in keys}

    def read_object(self, key: str) -> bytes | None:
        """A whole stored object (a shard, a chunk) by its key below the cube; None if absent."""
        (data,) = self._live()["backend"].read_many([(key, 0, None)])
        return data

    def parse_index(self, var: str, raw: bytes | None, size: int | None) -> np.ndarray | str | None:
        """A shard index from its bytes: ``(n, 2)`` offsets and sizes, None, or what is wrong."""
        if raw is None:
            return None
        lay = self.layouts[var]
        n = 16 * math.prod(lay.chunks_per_shard)
        if len(raw) < lay.index_nbytes:
            return f"the shard holds {len(raw)} bytes, less than its index"
        view = memoryview(raw)
        if lay.index_crc and not crc_ok(view[:lay.index_nbytes]):
            return "the shard index fails its crc32c checksum (a truncated or overwritten shard)"
        index = np.frombuffer(view[:n], dtype="<u8").reshape(-1, 2).copy()
        present = index[:, 0] != MAX_UINT_64
        if size is not None:
            body = size - lay.index_nbytes if lay.index_at_end else size
            start = 0 if lay.index_at_end else lay.index_nbytes
            ends = index[present, 0] + index[present, 1]
            if (index[present, 0] < start).any() or (ends > body + start).any():
                return "the shard index points outside the shard"
        return index

    # reading --------------------------------------------------------------------------------
    def read(self, requests: Sequence[FrameRequest]) -> None:
        """Fill every request's ``out``; fill value where a frame was never written.

        Raises
        ------
        ChunkError
            A chunk fails its checksum, cannot be decoded, its shard index is damaged, or
            it is absent while the request says the frame exists.
        """
        if not requests:
            return
        st = self._live()
        keys = [self.layouts[r.var].shard_key(r.chunk) for r in requests]
        sharded = [(r.var, k) for r, k in zip(requests, keys) if self.layouts[r.var].shard]
        index = self._indices(sharded) if sharded else {}
        ranges: list[tuple[str, int, int | None] | None] = []
        for r, key in zip(requests, keys):
            lay = self.layouts[r.var]
            if lay.shard is None:
                ranges.append((f"{r.var}/{key}", 0, None))
                continue
            idx = index[(r.var, key)]
            if isinstance(idx, str):
                raise self.chunk_error("index", r, key, idx)
            if idx is None:
                ranges.append(None)
                continue
            off, nbytes = (int(v) for v in idx[lay.position(r.chunk)])
            ranges.append(None if off == MAX_UINT_64 else (f"{r.var}/{key}", off, off + nbytes))
        backend = st["backend"]
        if isinstance(backend, _LocalBackend):
            jobs: list[tuple[Any, ...]] = [(r, k, rng, None)
                                           for r, k, rng in zip(requests, keys, ranges)]
        else:
            jobs = [(r, k, None, b) for r, k, b in zip(requests, keys, self._fetch(backend, ranges))]
        if self.threads == 1:  # one pool thread: the whole request in one hop
            st["pool"].submit(self._many, st, jobs).result()
            return
        for f in [st["pool"].submit(self._one, st, *job) for job in jobs]:
            f.result()

    def _many(self, st, jobs) -> None:
        for job in jobs:
            self._one(st, *job)

    def _fetch(self, backend, ranges) -> list[bytes | memoryview | None]:
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
        out: list[bytes | memoryview | None] = [None] * len(ranges)
        for m, data in zip(merged, got):
            if data is None:
                continue
            view = memoryview(data)
            for i, start, stop in m[3]:
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
        """This thread's read buffer of at least ``n`` bytes (no page faults per chunk)."""
        local = st["scratch"]
        buf = getattr(local, "raw", None)
        if buf is None or len(buf) < n:
            buf = local.raw = bytearray(max(n, 1 << 20))
        return buf

    def _one(self, st, req: FrameRequest, key: str, rng, data) -> None:
        lay = self.layouts[req.var]
        if rng is not None:
            k, start, stop = rng
            if stop is None:
                data = st["backend"].read(*rng)
            else:
                data = st["backend"].read_into(k, start, stop, self._bytes(st, stop - start))
            if data is not None and stop is not None and len(data) != stop - start:
                raise self.chunk_error("truncated", req, key,
                                       f"{len(data)} of {stop - start} bytes")
        direct = (req.select is None and req.post is None and req.out.dtype == np.dtype(lay.dtype)
                  and req.out.flags.c_contiguous and req.out.size == math.prod(lay.frame_shape))
        frame = req.out if direct else self._scratch(st, lay.frame_shape, lay.dtype)
        if data is None:
            if req.expect:
                raise self.chunk_error("missing", req, key)
            frame.fill(lay.fill_value)
        else:
            bad = decode_chunk(lay, data, frame)
            if bad is not None:
                raise self.chunk_error(bad, req, key)
        if direct:
            return
        if req.select is not None:
            frame = frame[req.select]
        if req.post is not None:
            req.post(frame, req.out)
        else:
            np.copyto(req.out, frame, casting="unsafe")

    # small arrays -------------------------------------------------------------------------------
    def read_array(self, var: str) -> np.ndarray:
        """A whole unsharded array (the cube's small variables), every chunk verified.

        Raises
        ------
        ChunkError
            A chunk fails its checksum or cannot be decoded.
        """
        lay = self.layouts[var]
        if lay.shard is not None:
            raise S2CubeError(f"{var} is sharded; read it frame by frame")
        st = self._live()
        coords = list(np.ndindex(*[math.ceil(s / c) for s, c in zip(lay.shape, lay.chunk)]))
        keys = [lay.key(c) for c in coords]
        got = st["backend"].read_many([(f"{var}/{k}", 0, None) for k in keys])
        out = np.full(lay.shape, lay.fill_value, dtype=np.dtype(lay.dtype))
        for c, key, data in zip(coords, keys, got):
            if data is None:
                continue
            chunk = np.empty(lay.chunk, dtype=np.dtype(lay.dtype))
            bad = decode_chunk(lay, data, chunk)
            if bad is not None:
                raise ChunkError(
                    f"{var} (a small variable of the cube) {bad} check failed at key "
                    f"{self._where(var, key)}. The cube is damaged: convert the archive again "
                    "into a new cube", variable=var, key=f"{var}/{key}", reason=bad)
            sl = tuple(slice(i * n, min((i + 1) * n, s)) for i, n, s in zip(c, lay.chunk, lay.shape))
            out[sl] = chunk[tuple(slice(0, s.stop - s.start) for s in sl)]
        return out.astype(np.dtype(lay.dtype).newbyteorder("="), copy=False)
