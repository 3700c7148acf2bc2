"""Does the hand-written reader earn its keep? s2cube's reader vs tensorstore, zarrs and zarr.

The loader's full job, every contender in one run: ``--samples`` seq2point samples (n = 3 inputs
+ 1 target = 4 slots of one patch; per slot the S2 frame, the S1 frame and the ``cloud_mask``
frame), read in batches of ``--batch`` samples with ``--threads`` threads, from local disk with
the page cache warm. Repeats are interleaved (the order rotates every repeat); printed are
the best and the median rate, the CPU time per sample (user + system, all threads: the cost
that bounds throughput once a DataLoader keeps every core busy, and much less sensitive to
other processes than wall time) and, per repeat, the ratio to s2cube's run of the same repeat
(median over repeats): this is a small, noisy, shared machine.

Contenders (all read the same cube, the same samples and the same bytes):

- **decode limit**: the very same chunks' compressed bytes already in memory, decompressed by
  numcodecs into reused buffers in ``--threads`` threads (as ``bench_loader.py`` does), with
  and without verifying each chunk's crc32c first;
- **s2cube** ``SampleReader(rescale_method=None)``: raw S2 DN, S1 dB and the
  ``s2cloudless_mask`` as float32 (ones where the frame is blank), stacked ``(B, T, ...)``;
- **tensorstore** ``zarr3`` driver (``data_copy_concurrency`` and ``file_io_concurrency`` =
  ``--threads``, no cache pool), reads grouped by ``ts.Batch``: per-frame reads with one batch
  per sample or per ``--batch`` samples, one orthogonal read per sample and variable, and the
  same turned into s2cube's output (NumPy copies into reused arrays, a virtual ``ts.stack``
  read, or ``ts.array(out).write(...)`` straight into the output);
- **zarr-python + zarrs** (``codec_pipeline.path = zarrs.ZarrsCodecPipeline``, strict,
  checksums validated, ``threading.max_workers`` = ``--threads``): per-frame reads from
  ``--threads`` Python threads, all frames of a batch at once through zarr's async API, per
  frame straight into the output (``out=``), one block read per sample and variable (every
  slot between the first and the last), and one orthogonal read per sample and variable
  (refused in strict mode; measured with zarr's Python fallback, 2 runs);
- **plain zarr-python**, one read per frame from ``--threads`` Python threads.

"raw" rows return the library's own arrays (per frame or per sample, masks as stored uint8);
"output" rows return exactly what ``SampleReader`` returns. Every contender's first batch is
checked against ``SampleReader``'s before anything is timed.

Checksums: cubes of schema version 2 carry a ``crc32c`` codec after blosc on every inner
chunk, and every contender verifies it (s2cube's reader always does). For an older cube
without it, a copy is made with zarr (codecs blosc + crc32c, the same chunks and shards) and
every contender reads that copy. The crc32c's own cost (google_crc32c, numcodecs ``CRC32C``)
is measured over the same compressed bytes.

``--requirements`` then checks, each case in a subprocess with a timeout: (a) torch
DataLoader workers started with ``spawn``/``forkserver`` (``fork`` too) on a handle opened
and used in the parent, (b) S3 on a loopback SeaweedFS with the standard AWS credential
chain (environment variables, ``AWS_PROFILE`` with keys in a temporary config or credentials
file, ``[default]`` in ``~/.aws/credentials``, a ``credential_process`` handing out 8-second
credentials, read again after they expired), (c) one byte flipped inside a stored inner chunk
(of the crc32c copy and of the converter's cube), (d) pickling an opened and used (local and
S3) handle and using it in another process. Every AWS metadata endpoint (IMDS, ECS) is
pointed at a closed loopback port, so nothing leaves the machine.

The cube: a small synthetic archive (``s2cube_conversion.synth``) converted without cloud
detection, masks set by a brightness rule as in ``bench_loader.py``, cached under
``benchmarks/output/bench_readers/`` (or ``--workdir``); or ``--cube PATH``.

    .venv/bin/python benchmarks/bench_readers.py [--cube PATH] [--workdir DIR] [--samples 48]
        [--batch 8] [--threads 2] [--repeat 7] [--rois 2] [--grid 3x3] [--patch 256]
        [--requirements] [--no-speed]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARS = ("s2", "s1", "cloud_mask")
N_SLOTS = 4  # seq2point, n = 3 inputs + 1 target
OUT_KEY = {"s2": "S2", "s1": "S1", "cloud_mask": "masks"}
CASE_TIMEOUT = 240
MACHINE = ""  # nproc, CPU, load at the start (nproc follows OMP_NUM_THREADS: taken first)


# --- the one place that uses s2cube's (moving) reader API -------------------------------------

@dataclass
class S2Cube:
    """What the harness needs from s2cube, found through its internal reader API."""

    path: Path
    patch: int
    patches: list[tuple[int, int, int]]  # (roi, row, col) of every patch with data
    blank: np.ndarray  # (roi, time, row, col): SampleReader returns an all-ones mask there
    mask_bits: int  # the bits of cloud_mask behind the s2cloudless_mask detector
    open_reader: Callable[..., Any]  # (threads) -> obj with .read(roi, row, col, slots), .close()


def s2cube_adapter(cube: str | Path, storage_options: dict | None = None) -> S2Cube:
    """Open ``cube`` as the loader does: ``open_cube`` + ``view_of`` + ``SampleReader`` (raw
    values, every chunk's crc32c verified)."""
    import s2cube
    from s2cube import schema
    from s2cube.io.view import view_of
    from s2cube.training import batches

    detector = "s2cloudless_mask"
    ds = s2cube.open_cube(str(cube), storage_options=storage_options)
    view = view_of(ds, variables=("s2", "cloud_mask", "s1"))
    pid = np.asarray(view.patch_id)
    patches = [(int(i), int(r), int(c)) for i, r, c in zip(*np.nonzero(pid >= 0))]

    def open_reader(threads: int = 2):
        return batches.SampleReader(view, detector=detector, rescale_method=None,
                                    threads=threads)

    blank = np.asarray(view.blank, bool) | ~np.asarray(view.valid_s2, bool)
    return S2Cube(Path(str(cube)) if "://" not in str(cube) else Path("/"), int(view.patch_size),
                  patches, blank, int(schema.MASK_BITS[detector]), open_reader)


def s2cube_read(reader, batch) -> dict[str, np.ndarray]:
    roi, row, col, slots = batch_arrays(batch)
    return reader.read(roi, row, col, slots)


# --- machine, cube ------------------------------------------------------------------------------

def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"nproc {nproc}; CPU {model}; load average {load}; Python "
            f"{platform.python_version()}; {versions()}")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("tensorstore", "zarrs", "zarr", "numcodecs", "google-crc32c", "obstore", "s3fs",
                "botocore", "torch", "numpy"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} -")
    return ", ".join(out)


def build_cube(workdir: Path, rois: int, grid: tuple[int, int], patch: int) -> Path:
    """Synthetic archive → cube (no cloud detection) → rule masks; cached in ``workdir``."""
    from s2cube_conversion import convert
    from s2cube_conversion.synth import DEFAULT_ROIS, synthesize_archive

    key = f"rois={rois} grid={grid[0]}x{grid[1]} patch={patch}"
    cube, ready = workdir / "cube.zarr", workdir / "cube.ready"
    if ready.exists() and ready.read_text() == key and cube.exists():
        return cube
    shutil.rmtree(workdir / "archive", ignore_errors=True)
    shutil.rmtree(cube, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if rois > len(DEFAULT_ROIS):
        raise SystemExit(f"--rois at most {len(DEFAULT_ROIS)}")
    t = time.perf_counter()
    synthesize_archive(workdir / "archive", rois=list(DEFAULT_ROIS[:rois]), grid=grid,
                       patch_size=patch, seed=0)
    report = convert(workdir / "archive", cube, n_workers=1, clouds=False)
    if not report.ok:
        raise SystemExit(f"conversion failed: {report.problems}")
    shutil.rmtree(workdir / "archive")  # 1.4 GB, not needed any more
    write_rule_masks(cube)
    ready.write_text(key)
    print(f"built {cube} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return cube


def write_rule_masks(cube: Path) -> None:
    """bench_loader's stand-in cloud mask (bright visible bands → flag 1), so masks have bytes."""
    import zarr

    s2 = zarr.open_array(str(cube / "s2"), mode="r")
    # every frame keeps its chunk (the cube's rule: a missing chunk of a present frame is damage)
    cm = zarr.open_array(str(cube / "cloud_mask"), mode="r+").with_config(
        {"write_empty_chunks": True})
    p = cm.metadata.codecs[0].chunk_shape[-1]
    for i in range(s2.shape[0]):
        for r in range(s2.shape[-2] // p):
            for c in range(s2.shape[-1] // p):
                ys, xs = slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)
                series = s2[i, :, 1:4, ys, xs].astype(np.int32)
                cm[i, :, ys, xs] = (series.sum(axis=1) > 6000).astype(np.uint8)


def inner_codecs(array_dir: Path) -> list[dict]:
    meta = json.loads((array_dir / "zarr.json").read_text())
    codecs = meta["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        return codecs[0]["configuration"]["codecs"]
    return codecs


def has_crc(cube: Path) -> bool:
    return all(any(c["name"] == "crc32c" for c in inner_codecs(cube / v)) for v in VARS)


def checksum_copy(cube: Path, dest: Path) -> Path:
    """``cube`` with every pixel array rewritten as blosc + crc32c (same chunks and shards).

    The rest of the cube (coordinates, small variables, journal) is copied as it is; the
    root attrs get ``schema_version`` of this checkout and the metadata is consolidated
    again, so that ``open_cube`` opens the copy.
    """
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    from s2cube import schema

    ready = dest.with_suffix(".ready")
    stamp = f"{cube.resolve()} {(cube / 'zarr.json').stat().st_mtime_ns}"
    if not (ready.exists() and ready.read_text() == stamp and dest.exists()):
        shutil.rmtree(dest, ignore_errors=True)
        pixel = set(schema.PIXEL_VARIABLES)
        top = cube.resolve()
        shutil.copytree(cube, dest, ignore=lambda d, names: [
            n for n in names if Path(d).resolve() == top and n in pixel])
        for var in schema.PIXEL_VARIABLES:
            if not (cube / var).exists():
                continue
            src = zarr.open_array(str(cube / var), mode="r")
            shard = src.metadata.chunk_grid.chunk_shape
            sharding = src.metadata.codecs[0]
            blosc = next(c for c in sharding.codecs if isinstance(c, BloscCodec))
            dst = zarr.create_array(
                str(dest), name=var, shape=src.shape, dtype=src.dtype, chunks=sharding.chunk_shape,
                shards=shard, fill_value=src.fill_value, dimension_names=src.metadata.dimension_names,
                attributes=dict(src.attrs), compressors=(blosc, Crc32cCodec()), overwrite=True)
            for idx in np.ndindex(*(s // c for s, c in zip(src.shape, shard))):
                sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, shard))
                dst[sel] = src[sel]
        ready.write_text(stamp)
    # checked on every run: the checkout's schema version may change under us, and the
    # consolidated metadata (what open_cube reads) must describe the rewritten arrays
    root = json.loads((dest / "zarr.json").read_text())
    consolidated = (root.get("consolidated_metadata") or {}).get("metadata", {})
    stale = any(consolidated.get(v, {}).get("codecs") != json.loads(
        (dest / v / "zarr.json").read_text())["codecs"] for v in VARS)
    if root["attributes"].get("schema_version") != schema.SCHEMA_VERSION or stale:
        root["attributes"]["schema_version"] = schema.SCHEMA_VERSION
        root["attributes"][schema.ATTR_STATE] = schema.STATE_COMPLETE
        root.pop("consolidated_metadata", None)
        (dest / "zarr.json").write_text(json.dumps(root, indent=2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(dest))
    return dest


# --- samples and the byte level -------------------------------------------------------------

Sample = tuple[int, int, int, tuple[int, ...]]  # roi, row, col, slots


def plan_samples(cube: S2Cube, n: int, seed: int = 0) -> list[Sample]:
    """``n`` samples: a random patch with data and 4 distinct random slots of it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, r, c = cube.patches[int(rng.integers(len(cube.patches)))]
        out.append((i, r, c, tuple(int(t) for t in rng.choice(30, N_SLOTS, replace=False))))
    return out


def batch_arrays(batch: list[Sample]):
    a = np.array([s[:3] for s in batch], np.int64)
    return a[:, 0], a[:, 1], a[:, 2], np.array([s[3] for s in batch], np.int64)


def batches_of(samples: list[Sample], size: int) -> list[list[Sample]]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


@dataclass
class ArrayInfo:
    """A pixel array's layout from its zarr.json (independent of s2cube's parser)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk: tuple[int, ...]
    shard: tuple[int, ...]
    codecs: list[dict]
    index_crc: bool

    @classmethod
    def read(cls, array_dir: Path) -> ArrayInfo:
        meta = json.loads((array_dir / "zarr.json").read_text())
        sh = meta["codecs"][0]
        assert sh["name"] == "sharding_indexed", "the cube's pixel arrays are sharded"
        cfg = sh["configuration"]
        endian = next((c.get("configuration", {}).get("endian", "little") for c in cfg["codecs"]
                       if c["name"] == "bytes"), "little")
        dt = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
        return cls(array_dir.name, tuple(meta["shape"]), dt, tuple(cfg["chunk_shape"]),
                   tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]), cfg["codecs"],
                   any(c["name"] == "crc32c" for c in cfg.get("index_codecs", [])))

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self.chunk[2:]

    def shard_key(self, roi: int, row: int, col: int, t: int) -> str:
        p = self.chunk[-1]
        coords = [roi, t // self.shard[1]] + [0] * (len(self.shape) - 4) + [row * p // self.shard[-2],
                                                                           col * p // self.shard[-1]]
        return "c/" + "/".join(map(str, coords))

    def chunk_range(self, cube: Path, roi: int, row: int, col: int,
                    t: int) -> tuple[Path, int, int] | None:
        """(shard file, offset, nbytes) of one frame's inner chunk; None if not stored."""
        path = cube / self.name / self.shard_key(roi, row, col, t)
        per = [s // c for s, c in zip(self.shard, self.chunk)]
        n = int(np.prod(per))
        if not path.exists():
            return None
        with open(path, "rb") as fh:
            fh.seek(-(16 * n + (4 if self.index_crc else 0)), os.SEEK_END)
            index = np.frombuffer(fh.read(16 * n), "<u8").reshape([*per, 2])
        pos = [0] * len(per)
        pos[1] = t % self.shard[1]
        off, nb = (int(v) for v in index[tuple(pos)])
        return None if off == 2**64 - 1 else (path, off, nb)

    def decode_into(self, data, out: np.ndarray, *, verify: bool = False) -> None:
        """Decompress one inner chunk into ``out`` (numcodecs), optionally checking its crc32c."""
        from numcodecs import Zstd, blosc

        view = memoryview(data)
        steps = [c["name"] for c in self.codecs if c["name"] != "bytes"]
        if steps and steps[-1] == "crc32c":
            if verify:
                import google_crc32c

                stored = int.from_bytes(view[-4:], "little")
                payload = np.frombuffer(data, np.uint8, count=len(view) - 4)
                if google_crc32c.value(payload) != stored:
                    raise ValueError("crc32c mismatch")
            view = view[:-4]
            steps = steps[:-1]
        if steps == ["blosc"]:
            blosc.decompress(view, out)
        elif steps == ["zstd"]:
            Zstd().decode(view, out)
        else:
            raise SystemExit(f"{self.name}: codecs {steps} not handled by the decode limit")


def collect_chunks(cube: Path, infos: dict[str, ArrayInfo], samples: list[Sample]):
    """The compressed bytes of every frame the samples read, in read order."""
    chunks = []
    for i, r, c, slots in samples:
        for t in slots:
            for v in VARS:
                got = infos[v].chunk_range(cube, i, r, c, t)
                if got is None:  # not stored: readers return the fill value
                    continue
                path, off, nb = got
                with open(path, "rb") as fh:
                    fh.seek(off)
                    chunks.append((v, fh.read(nb)))
    return chunks


# --- contenders --------------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    output: str  # "raw" (the library's own arrays) or "output" (SampleReader's)
    open: Callable[[], Any]  # -> state, untimed
    read: Callable[[Any, list[Sample]], Any]  # one batch
    close: Callable[[Any], None] = lambda st: None
    to_output: Callable[[Any, list[Sample]], dict] | None = None  # raw → output, for checks
    note: str = ""
    error: str | None = None
    batch_per_call: bool = True  # False: read() takes the whole sample list at once
    max_runs: int | None = None  # for contenders 10x slower than the rest: fewer repeats


class Harness:
    """Shared knowledge: the cube, its layout, the samples, output helpers."""

    def __init__(self, cube: S2Cube, path: Path, samples: list[Sample], threads: int, batch: int):
        self.cube, self.path, self.samples = cube, path, samples
        self.threads, self.batch = threads, batch
        self.p = cube.patch
        self.infos = {v: ArrayInfo.read(path / v) for v in VARS}

    def window(self, r: int, c: int) -> tuple[slice, slice]:
        p = self.p
        return slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)

    def empty_output(self, b: int) -> dict[str, np.ndarray]:
        p, t = self.p, N_SLOTS
        return {"S2": np.empty((b, t, self.infos["s2"].shape[2], p, p), np.uint16),
                "S1": np.empty((b, t, self.infos["s1"].shape[2], p, p), np.float32),
                "masks": np.empty((b, t, p, p), np.float32)}

    def masks_into(self, cm: np.ndarray, batch: list[Sample], out: np.ndarray) -> None:
        """uint8 cloud_mask (B, T, P, P) → SampleReader's float32 mask (ones where blank)."""
        np.not_equal(np.bitwise_and(cm, self.cube.mask_bits), 0, out=out, casting="unsafe")
        for b, (i, r, c, slots) in enumerate(batch):
            for k, t in enumerate(slots):
                if self.cube.blank[i, t, r, c]:
                    out[b, k].fill(1)

    def raw_to_output(self, raw, batch: list[Sample]) -> dict:
        """Per-sample raw results (dict var → list of frames or (T, ...) array) → output."""
        out = self.empty_output(len(batch))
        cm = np.empty(out["masks"].shape, np.uint8)
        for b, per in enumerate(raw):
            for v in VARS:
                dest = cm[b] if v == "cloud_mask" else out[OUT_KEY[v]][b]
                np.copyto(dest, np.asarray(per[v]), casting="unsafe")
        self.masks_into(cm, batch, out["masks"])
        return out


def contenders(h: Harness) -> list[Contender]:
    out = [decode_limit(h, verify=False), decode_limit(h, verify=True), *s2cube_contender(h)]
    out += tensorstore_contenders(h)
    out += zarr_contenders(h, zarrs=True)
    out += zarr_contenders(h, zarrs=False)
    return out


def decode_limit(h: Harness, verify: bool) -> Contender:
    chunks = collect_chunks(h.path, h.infos, h.samples)

    def open_():
        local = threading.local()

        def decode(item):
            v, data = item
            bufs = getattr(local, "bufs", None)
            if bufs is None:
                bufs = local.bufs = {k: np.empty(h.infos[k].frame_shape, h.infos[k].dtype)
                                     for k in VARS}
            h.infos[v].decode_into(data, bufs[v], verify=verify)

        pool = ThreadPoolExecutor(h.threads)
        list(pool.map(decode, chunks[: 3 * h.threads]))
        return pool, decode

    def read(st, _samples):
        pool, decode = st
        list(pool.map(decode, chunks))

    name = "decode limit + crc32c verify" if verify else "decode limit"
    return Contender(name, "-", open_, read, lambda st: st[0].shutdown(), batch_per_call=False,
                     note="same chunks' bytes from memory, numcodecs into reused buffers"
                          + (", google_crc32c check first" if verify else ""))


def s2cube_contender(h: Harness) -> list[Contender]:
    def open_():
        return h.cube.open_reader(h.threads)

    return [Contender("s2cube SampleReader (raw values)", "output", open_, s2cube_read,
                      lambda r: r.close(), note="shard index cached, pread, every chunk's crc32c "
                      "verified, numcodecs in threads")]


# tensorstore ------------------------------------------------------------------------------------

def ts_open(path: Path, threads: int, kvstore: dict | None = None, context: dict | None = None):
    import tensorstore as ts

    ctx = ts.Context({"data_copy_concurrency": {"limit": threads},
                      "file_io_concurrency": {"limit": threads}, **(context or {})})
    out = {}
    for v in VARS:
        kv = dict(kvstore) if kvstore else {"driver": "file"}
        kv["path"] = (kv.get("path", str(path)).rstrip("/") + f"/{v}/")
        out[v] = ts.open({"driver": "zarr3", "kvstore": kv}, read=True, context=ctx).result()
    return out


def tensorstore_contenders(h: Harness) -> list[Contender]:
    try:
        import tensorstore as ts
    except ImportError:
        return [Contender("tensorstore", "-", lambda: None, lambda s, b: None,
                          error="tensorstore is not installed")]

    def open_():
        return ts_open(h.path, h.threads)

    def frames(arrs, sample, tb):
        i, r, c, slots = sample
        ys, xs = h.window(r, c)
        return {v: [arrs[v][i, t, ..., ys, xs].read(batch=tb) for t in slots] for v in VARS}

    def per_frame_per_sample(arrs, batch):
        out = []
        for s in batch:
            with ts.Batch() as tb:
                futs = frames(arrs, s, tb)
            out.append({v: [f.result() for f in fs] for v, fs in futs.items()})
        return out

    def per_frame_per_batch(arrs, batch):
        with ts.Batch() as tb:
            futs = [frames(arrs, s, tb) for s in batch]
        return [{v: [f.result() for f in fs] for v, fs in per.items()} for per in futs]

    def oindex_views(arrs, sample):
        i, r, c, slots = sample
        ys, xs = h.window(r, c)
        return {v: arrs[v].oindex[i, list(slots), ..., ys, xs] for v in VARS}

    def oindex_per_batch(arrs, batch):
        with ts.Batch() as tb:
            futs = [{v: view.read(batch=tb) for v, view in oindex_views(arrs, s).items()}
                    for s in batch]
        return [{v: f.result() for v, f in per.items()} for per in futs]

    def into_output(state, batch, raw_reader):
        arrs, bufs = state
        out, cm = bufs.get(len(batch))
        raw = raw_reader(arrs, batch)
        for b, per in enumerate(raw):
            for v in VARS:
                dest = cm[b] if v == "cloud_mask" else out[OUT_KEY[v]][b]
                if isinstance(per[v], list):
                    for k, frame in enumerate(per[v]):
                        np.copyto(dest[k], frame)
                else:
                    np.copyto(dest, per[v])
        h.masks_into(cm, batch, out["masks"])
        return out

    def stacked(state, batch):
        arrs, _bufs = state
        views = [oindex_views(arrs, s) for s in batch]
        with ts.Batch() as tb:
            futs = {v: ts.stack([vw[v].translate_to[0] for vw in views], axis=0).read(batch=tb)
                    for v in VARS}
        out = {OUT_KEY[v]: futs[v].result() for v in ("s2", "s1")}
        out["masks"] = np.empty((len(batch), N_SLOTS, h.p, h.p), np.float32)
        h.masks_into(futs["cloud_mask"].result(), batch, out["masks"])
        return out

    def written(state, batch):
        arrs, bufs = state
        out, cm = bufs.get(len(batch))
        dests = bufs.ts_views(len(batch))
        futs = []
        for b, s in enumerate(batch):
            for v, view in oindex_views(arrs, s).items():
                futs.append(dests[v][b].write(view.translate_to[0]))
        for f in futs:
            f.result()
        h.masks_into(cm, batch, out["masks"])
        return out

    class Buffers:
        """Output arrays reused across batches (SampleReader reuses its own likewise)."""

        def __init__(self):
            self._by_size: dict[int, tuple] = {}
            self._ts: dict[int, dict] = {}

        def get(self, b):
            if b not in self._by_size:
                out = h.empty_output(b)
                self._by_size[b] = (out, np.empty(out["masks"].shape, np.uint8))
            return self._by_size[b]

        def ts_views(self, b):
            if b not in self._ts:
                out, cm = self.get(b)
                self._ts[b] = {v: ts.array(cm if v == "cloud_mask" else out[OUT_KEY[v]],
                                           copy=False, write=True) for v in VARS}
            return self._ts[b]

    def with_buffers():
        return open_(), Buffers()

    note = "zarr3 driver, ts.Batch, no cache pool"
    return [
        Contender("tensorstore: per-frame reads, ts.Batch per sample", "raw", open_,
                  per_frame_per_sample, to_output=h.raw_to_output, note=note),
        Contender("tensorstore: per-frame reads, ts.Batch per batch", "raw", open_,
                  per_frame_per_batch, to_output=h.raw_to_output, note=note),
        Contender("tensorstore: oindex per sample x var, ts.Batch per batch", "raw", open_,
                  oindex_per_batch, to_output=h.raw_to_output, note=note),
        Contender("tensorstore: per-frame, ts.Batch per batch + copy into output", "output",
                  with_buffers, lambda st, b: into_output(st, b, per_frame_per_batch),
                  note="NumPy copies into reused arrays, masks converted"),
        Contender("tensorstore: oindex + copy into output", "output", with_buffers,
                  lambda st, b: into_output(st, b, oindex_per_batch),
                  note="NumPy copies into reused arrays, masks converted"),
        Contender("tensorstore: virtual ts.stack of oindex views -> output", "output",
                  with_buffers, stacked, note="one read per variable and batch"),
        Contender("tensorstore: ts.array(out).write(oindex view) -> output", "output",
                  with_buffers, written, note="tensorstore copies into reused NumPy arrays"),
    ]


# zarr and zarrs -------------------------------------------------------------------------------

def zarrs_config(threads: int | None, strict: bool = True) -> dict:
    cfg: dict[str, Any] = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline",
                           "codec_pipeline.strict": strict,
                           "codec_pipeline.validate_checksums": True}
    if threads:
        cfg |= {"threading.max_workers": threads, "codec_pipeline.chunk_concurrent_maximum": threads}
    return cfg


def zarr_open(path: Path, *, zarrs: bool, strict: bool = True, threads: int | None = None,
              store_for: Callable[[str], Any] | None = None, require: bool = True) -> dict:
    """The three pixel arrays as ``zarr.Array`` (the pipeline is fixed when an array opens)."""
    import zarr
    from zarr.storage import LocalStore

    cfg = zarrs_config(threads, strict) if zarrs else {}
    with zarr.config.set(cfg):
        out = {}
        for v in VARS:
            store = store_for(v) if store_for else LocalStore(str(path / v), read_only=True)
            out[v] = zarr.open_array(store, mode="r")
        if zarrs and require:
            kinds = {type(a._async_array.codec_pipeline).__name__ for a in out.values()}
            if kinds != {"ZarrsCodecPipeline"}:
                raise RuntimeError(f"zarrs pipeline not in use: {kinds}")
    return out


def zarr_contenders(h: Harness, zarrs: bool) -> list[Contender]:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    if zarrs:
        try:
            import zarrs as _zarrs  # noqa: F401
        except ImportError:
            return [Contender("zarrs", "-", lambda: None, lambda s, b: None,
                              error="zarrs is not installed")]
    label = "zarr + zarrs" if zarrs else "zarr"

    def sel(s, t):
        i, r, c, _ = s
        ys, xs = h.window(r, c)
        return (i, t, ..., ys, xs)

    def open_(strict=True):
        def f():
            arrs = zarr_open(h.path, zarrs=zarrs, strict=strict, threads=h.threads)
            return arrs, ThreadPoolExecutor(h.threads)
        return f

    def close(st):
        st[1].shutdown()

    def frame_jobs(batch):
        return [(b, v, k, sel(s, t)) for b, s in enumerate(batch) for k, t in enumerate(s[3])
                for v in VARS]

    def assemble(batch, jobs, results):
        raw = [{v: [None] * N_SLOTS for v in VARS} for _ in batch]
        for (b, v, k, _), res in zip(jobs, results):
            raw[b][v][k] = res
        return raw

    def per_frame_threads(st, batch):
        arrs, pool = st
        jobs = frame_jobs(batch)
        return assemble(batch, jobs, pool.map(lambda j: arrs[j[1]][j[3]], jobs))

    def per_frame_async(st, batch):
        arrs, _ = st
        jobs = frame_jobs(batch)

        async def run():
            return await asyncio.gather(*(arrs[v]._async_array.getitem(s) for _, v, _, s in jobs))

        return assemble(batch, jobs, sync(run()))

    class Out:
        def __init__(self):
            self.by_size: dict[int, tuple] = {}

        def get(self, b):
            if b not in self.by_size:
                out = h.empty_output(b)
                self.by_size[b] = (out, np.empty(out["masks"].shape, np.uint8))
            return self.by_size[b]

    def open_out():
        arrs, pool = open_()()
        return arrs, pool, Out()

    def into_output(st, batch):
        arrs, pool, bufs = st
        out, cm = bufs.get(len(batch))
        proto = default_buffer_prototype().nd_buffer

        def one(j):
            b, v, k, s = j
            dest = cm[b, k] if v == "cloud_mask" else out[OUT_KEY[v]][b, k]
            arrs[v].get_basic_selection(s, out=proto.from_numpy_array(dest))

        list(pool.map(one, frame_jobs(batch)))
        h.masks_into(cm, batch, out["masks"])
        return out

    def oindex(st, batch):
        arrs, pool = st

        def one(s):
            i, r, c, slots = s
            ys, xs = h.window(r, c)
            # explicit slices: zarr 3.1's oindex fails on an Ellipsis next to an index array
            return {v: arrs[v].oindex[(i, np.array(slots), *[slice(None)] * (arrs[v].ndim - 4),
                                       ys, xs)] for v in VARS}

        return list(pool.map(one, batch))

    def block(st, batch):
        arrs, pool = st

        def one(s):
            i, r, c, slots = s
            ys, xs = h.window(r, c)
            t0, t1 = min(slots), max(slots) + 1
            pick = np.array(slots) - t0
            return {v: arrs[v][i, t0:t1, ..., ys, xs][pick] for v in VARS}

        return list(pool.map(one, batch))

    rows = [
        Contender(f"{label}: per-frame reads, {h.threads} Python threads", "raw", open_(),
                  per_frame_threads, close, h.raw_to_output,
                  note="strict, checksums validated" if zarrs else "default pipeline"),
    ]
    if zarrs:
        rows += [
            Contender(f"{label}: per-frame reads, async gather per batch", "raw", open_(),
                      per_frame_async, close, h.raw_to_output, note="strict, checksums validated"),
            Contender(f"{label}: per frame straight into output (out=)", "output", open_out,
                      into_output, lambda st: st[1].shutdown(),
                      note="strict, checksums validated; masks converted"),
            Contender(f"{label}: block read per sample x var (slots min..max, strict)", "raw",
                      open_(), block, close, h.raw_to_output, max_runs=3,
                      note="decodes every slot between the first and last, keeps 4"),
            Contender(f"{label}: oindex per sample x var (strict)", "raw", open_(), oindex, close,
                      h.raw_to_output),
            Contender(f"{label}: oindex per sample x var (non-strict fallback)", "raw",
                      open_(strict=False), oindex, close, h.raw_to_output, max_runs=2,
                      note="strict raises DiscontiguousArrayError (slots not contiguous), so this "
                           "is zarr's Python pipeline"),
        ]
    return rows


# --- timing ----------------------------------------------------------------------------------

def run_once(h: Harness, ct: Contender) -> tuple[float, float]:
    """(samples/s, CPU ms per sample) of one pass over all samples."""
    st = ct.open()
    try:
        groups = [h.samples] if not ct.batch_per_call else batches_of(h.samples, h.batch)
        if ct.batch_per_call:  # warm-up: open files, start threads (as a loader's first batch)
            ct.read(st, h.samples[:1])
        c0 = os.times()
        t0 = time.perf_counter()
        for g in groups:
            ct.read(st, g)
        dt = time.perf_counter() - t0
        c1 = os.times()
    finally:
        ct.close(st)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return len(h.samples) / dt, 1e3 * cpu / len(h.samples)


def same(a: dict, b: dict) -> str | None:
    for k in ("S2", "S1", "masks"):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return f"{k}: values differ"
    return None


def check_outputs(h: Harness, cts: list[Contender]) -> None:
    batch = h.samples[: h.batch]
    ref_reader = h.cube.open_reader(h.threads)
    ref = {k: np.array(v) for k, v in s2cube_read(ref_reader, batch).items()}
    ref_reader.close()
    for ct in cts:
        if ct.error or ct.output == "-":
            continue
        try:
            st = ct.open()
            try:
                got = ct.read(st, batch)
                got = ct.to_output(got, batch) if ct.to_output else got
            finally:
                ct.close(st)
            problem = same(got, ref)
            if problem:
                ct.error = f"output differs from SampleReader's: {problem}"
        except Exception as exc:  # a contender that fails is reported, not fatal
            ct.error = f"{type(exc).__name__}: {exc}"[:300]


def checksum_cost(h: Harness) -> list[tuple[str, float, str]]:
    """crc32c over the compressed bytes vs their decompression, ms per sample (threads)."""
    import google_crc32c
    from numcodecs import CRC32C

    chunks = collect_chunks(h.path, h.infos, h.samples)
    crc_codec = CRC32C()
    payloads = [np.frombuffer(d, np.uint8, count=len(d) - 4) for _, d in chunks]
    n = len(h.samples)
    nbytes = sum(len(d) for _, d in chunks)
    bad = sum(google_crc32c.value(p) != int.from_bytes(d[-4:], "little")
              for p, (_, d) in zip(payloads, chunks))
    local = threading.local()

    def decode(item):
        v, data = item
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = {k: np.empty(h.infos[k].frame_shape, h.infos[k].dtype) for k in VARS}
        h.infos[v].decode_into(data, bufs[v])

    jobs = {
        "decompress (numcodecs blosc)": (decode, chunks),
        "crc32c (google_crc32c.value)": (google_crc32c.value, payloads),
        "crc32c check + strip (numcodecs CRC32C.decode)": (lambda d: crc_codec.decode(d[1]), chunks),
    }
    best: dict[str, list[float]] = {k: [] for k in jobs}
    with ThreadPoolExecutor(h.threads) as pool:
        for _ in range(7):
            for name, (fn, items) in jobs.items():
                t = time.perf_counter()
                list(pool.map(fn, items))
                best[name].append(1e3 * (time.perf_counter() - t) / n)
    dec = min(best["decompress (numcodecs blosc)"])
    rows = []
    for name, ms in best.items():
        rows.append((name, min(ms), f"median {statistics.median(ms):.3f} ms; "
                     f"{min(ms) / dec:.1%} of decompression" if "crc" in name else
                     f"median {statistics.median(ms):.3f} ms"))
    rows.append(("(bytes checked per sample)", nbytes / n / 2**20,
                 f"MiB of compressed chunks per sample; {bad} stored crc32c mismatches"))
    return rows


def speed(args, h: Harness, cmd: str) -> None:
    cts = contenders(h)
    check_outputs(h, cts)
    live = [ct for ct in cts if not ct.error]
    for ct in live:  # warm-up pass (imports, thread pools, page cache)
        if ct.max_runs is None:
            run_once(h, ct)
    t0 = time.perf_counter()
    loads = []
    runs: dict[str, dict[int, tuple[float, float]]] = {ct.name: {} for ct in cts}
    for rep in range(args.repeat):
        order = live[rep % len(live):] + live[: rep % len(live)]
        for ct in order:
            if ct.error or (ct.max_runs is not None and len(runs[ct.name]) >= ct.max_runs):
                continue
            try:
                runs[ct.name][rep] = run_once(h, ct)
            except Exception as exc:
                ct.error = f"{type(exc).__name__}: {exc}"[:300]
        loads.append(os.getloadavg()[0])
    wall = time.perf_counter() - t0
    dec = max(r for r, _ in runs[cts[0].name].values())
    ours_name = next(ct.name for ct in cts if ct.name.startswith("s2cube"))
    ours = runs[ours_name]
    ours_best = max(r for r, _ in ours.values())
    ours_cpu = statistics.median(c for _, c in ours.values())
    variant = "blosc + crc32c" if has_crc(h.path) else "blosc (no per-chunk crc32c)"
    print(f"\n## Readers on the loader's full job\n\ncommand: `{cmd}`\n")
    print(f"machine: {MACHINE}\n")
    print(f"cube: {h.path} ({variant} on every inner chunk; every row read it); "
          f"{len(h.samples)} seq2point samples of {h.p}x{h.p} px (4 slots x S2 + S1 + cloud_mask "
          f"= {len(h.samples) * 4 * 3} frames), batches of {h.batch}, {h.threads} threads, page "
          f"cache warm; {args.repeat} interleaved repeats (order rotated) in {wall:.0f} s, 1-min "
          f"load average during them {min(loads):.2f}-{max(loads):.2f}. Ratios to s2cube: > 1 is "
          "faster (or cheaper in CPU) than s2cube; 'paired' is the median over repeats of the "
          "ratio to s2cube's run of the same repeat (robust to the machine's load); 'CPU' is "
          "s2cube's CPU time per sample over this row's (user + system, all threads).\n")
    print("| contender | returns | samples/s best | median | ms/sample best | CPU ms/sample | "
          "of decode limit | vs s2cube best | paired | CPU | note |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for ct in cts:
        mine = runs[ct.name]
        if ct.error or not mine:
            print(f"| {ct.name} | {ct.output} | - | - | - | - | - | - | - | - | {ct.error} |")
            continue
        rates = [r for r, _ in mine.values()]
        b, m = max(rates), statistics.median(rates)
        cpu = statistics.median(c for _, c in mine.values())
        paired = statistics.median(mine[k][0] / ours[k][0] for k in mine if k in ours)
        ret = {"raw": "raw arrays", "output": "SampleReader's output", "-": "-"}[ct.output]
        runs_note = f" ({len(mine)} runs)" if len(mine) != args.repeat else ""
        print(f"| {ct.name} | {ret} | {b:.1f} | {m:.1f} | {1e3 / b:.1f} | {cpu:.1f} | "
              f"{b / dec:.0%} | {b / ours_best:.2f}x | {paired:.2f}x | {ours_cpu / cpu:.2f}x | "
              f"{ct.note}{runs_note} |")
    print("\n## crc32c's own cost (same compressed bytes, "
          f"{h.threads} threads, best of 7, per sample)\n")
    print("| step | ms/sample | note |")
    print("|---|---:|---|")
    for name, ms, note in checksum_cost(h):
        print(f"| {name} | {ms:.3f} | {note} |")


# --- requirements ------------------------------------------------------------------------------
# Each case runs in its own process (``--case NAME JSON``), prints one JSON line and is killed
# after CASE_TIMEOUT seconds: a library that hangs after a fork or crashes on corrupt bytes
# shows up as such instead of stopping the benchmark.

LIBS = ("s2cube", "tensorstore", "zarrs")


def frame_digest(x: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()[:12]


class LibHandle:
    """One library's opened arrays, reading (S2, S1, mask) of one (roi, row, col, slot)."""

    def __init__(self, lib: str, path: str, p: int, *, s3: dict | None = None,
                 open_now: bool = True) -> None:
        self.lib, self.path, self.p, self.s3 = lib, path, p, s3
        self.obj: Any = None
        if open_now:
            self.open()

    def open(self) -> None:
        if self.lib == "s2cube":
            url = self.path if not self.s3 else self.s3["url"]
            opts = self.s3.get("storage_options") if self.s3 else None
            self.obj = s2cube_adapter(url, opts).open_reader(1)
        elif self.lib == "tensorstore":
            kv = None
            if self.s3:
                kv = {"driver": "s3", "bucket": self.s3["bucket"], "path": self.s3["prefix"],
                      "endpoint": self.s3["endpoint"], "aws_region": "us-east-1"}
            ctx = {"aws_credentials": ts_credentials(self.s3["ts_credentials"])} if self.s3 and \
                self.s3.get("ts_credentials") else None
            self.obj = ts_open(Path(self.path), 1, kv, ctx)
        elif self.lib in ("zarrs", "zarr"):
            store_for = None
            if self.s3:
                store_for = s3_store_factory(self.s3)
            self.obj = zarr_open(Path(self.path), zarrs=self.lib == "zarrs", threads=1,
                                 store_for=store_for, require=False)
        else:
            raise ValueError(self.lib)

    def read(self, roi: int, row: int, col: int, t: int) -> dict[str, np.ndarray]:
        p = self.p
        ys, xs = slice(row * p, (row + 1) * p), slice(col * p, (col + 1) * p)
        if self.lib == "s2cube":
            got = self.obj.read(np.array([roi]), np.array([row]), np.array([col]),
                                np.array([[t]]))
            return {"S2": np.array(got["S2"][0, 0]), "S1": np.array(got["S1"][0, 0]),
                    "masks": np.array(got["masks"][0, 0])}
        if self.lib == "tensorstore":
            return {OUT_KEY[v]: self.obj[v][roi, t, ..., ys, xs].read().result() for v in VARS}
        return {OUT_KEY[v]: self.obj[v][roi, t, ..., ys, xs] for v in VARS}

    def pipeline(self) -> str:
        """Which codec pipeline and settings a zarr array uses in this process."""
        if self.lib not in ("zarrs", "zarr"):
            return ""
        import zarr

        pl = self.obj["s2"]._async_array.codec_pipeline
        name = type(pl).__name__
        if name == "ZarrsCodecPipeline":
            name += " (Rust)" if getattr(pl, "impl", None) is not None else " (Python fallback)"
        else:
            name += " (zarr's own: zarrs NOT used)"
        cfg = {k: zarr.config.get(k, None) for k in (
            "codec_pipeline.strict", "codec_pipeline.validate_checksums", "threading.max_workers")}
        return (f"{name}; config here: " + ", ".join(
            f"{k.split('.')[-1]}={'unset' if v is None else v}" for k, v in cfg.items()))


def ts_credentials(kind: str) -> dict:
    """tensorstore's ``aws_credentials``: ``default`` as documented, or ``default`` with
    ``profile`` set from ``AWS_PROFILE`` (else "default"): tensorstore 0.1.86's chain loads no
    profile at all unless the spec names one."""
    if kind == "profile":
        return {"type": "default", "profile": os.environ.get("AWS_PROFILE", "default")}
    return {"type": "default"}


def digests(frames: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: frame_digest(v) for k, v in frames.items()}


def s3_store_factory(s3: dict) -> Callable[[str], Any]:
    """zarr stores on S3 for the zarrs/zarr cases: obstore (native chain or a botocore
    credential provider) or s3fs through FsspecStore."""
    kind = s3.get("zarr_store", "obstore")

    def make(var: str):
        prefix = f"{s3['prefix'].rstrip('/')}/{var}"
        if kind == "fsspec":
            import s3fs
            from zarr.storage import FsspecStore

            fs = s3fs.S3FileSystem(asynchronous=True, endpoint_url=s3["endpoint"],
                                   client_kwargs={"region_name": "us-east-1"})
            return FsspecStore(fs, path=f"{s3['bucket']}/{prefix}", read_only=True)
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        kw: dict[str, Any] = {"endpoint": s3["endpoint"], "region": "us-east-1",
                              "client_options": {"allow_http": True}}
        if kind == "obstore+botocore":
            kw["credential_provider"] = BotocoreCredentials()
        return ObjectStore(S3Store(s3["bucket"], prefix=prefix, **kw), read_only=True)

    return make


class BotocoreCredentials:
    """An obstore credential provider over botocore's chain (refreshes near expiry);
    what a zarrs user needs for profiles, config files and credential_process."""

    def __init__(self) -> None:
        self._creds = None

    def __getstate__(self):
        return {"_creds": None}

    def __call__(self) -> dict:
        import datetime as dt

        import botocore.session

        if self._creds is None:
            self._creds = botocore.session.Session().get_credentials()
        frozen = self._creds.get_frozen_credentials()
        expiry = getattr(self._creds, "_expiry_time", None)  # None: static credentials
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token,
                "expires_at": expiry.astimezone(dt.UTC) if expiry else None}


def run_case(name: str, params: dict) -> dict:
    """One requirement case, in this (child) process."""
    kind = name.split(":")[0]
    if kind == "dl":
        return case_dataloader(params)
    if kind == "s3":
        return case_s3(params)
    if kind == "crc":
        return case_checksum(params)
    if kind == "pickle-dump":
        return case_pickle_dump(params)
    if kind == "pickle-load":
        return case_pickle_load(params)
    raise ValueError(name)


class FrameDataset:
    """A torch map-style dataset over one library handle (opened in the parent)."""

    def __init__(self, handle: LibHandle, items: list[tuple[int, int, int, int]]) -> None:
        self.handle, self.items = handle, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        frames = self.handle.read(*self.items[k])
        return {"digests": digests(frames), "pid": os.getpid(), "pipeline": self.handle.pipeline()}


def case_dataloader(params: dict) -> dict:
    import multiprocessing as mp

    import torch.utils.data as tud

    h = LibHandle(params["lib"], params["cube"], params["p"])
    items = [tuple(x) for x in params["items"]]
    expected = [digests(h.read(*it)) for it in items]  # used in the parent before the workers
    parent_pipeline = h.pipeline()
    ds = FrameDataset(h, items)
    loader = tud.DataLoader(ds, batch_size=None, num_workers=2, shuffle=False,
                            multiprocessing_context=mp.get_context(params["method"]))
    got = list(loader)
    wrong = sum(g["digests"] != e for g, e in zip(got, expected))
    pids = {g["pid"] for g in got}
    return {"ok": wrong == 0 and len(got) == len(items), "wrong": wrong, "n": len(got),
            "workers": len(pids - {os.getpid()}), "pipeline_parent": parent_pipeline,
            "pipeline_worker": got[0]["pipeline"] if got else ""}


def case_s3(params: dict) -> dict:
    """Read one frame from S3 with the credentials of the environment; optionally again after
    the temporary credentials expired (credential_process refresh)."""
    counter = Path(params["counter"]) if params.get("counter") else None
    h = LibHandle(params["lib"], params.get("local", ""), params["p"], s3=params["s3"])
    first = digests(h.read(*params["item"]))
    out = {"ok": first == params["expected"], "calls_after_first": count_lines(counter),
           "pipeline": h.pipeline()}
    if params.get("wait"):
        time.sleep(params["wait"])
        second = digests(h.read(*params["item"]))
        out["ok_after_expiry"] = second == params["expected"]
        out["calls_after_second"] = count_lines(counter)
    return out


def count_lines(path: Path | None) -> int | None:
    if path is None:
        return None
    return len(path.read_text().splitlines()) if path.exists() else 0


def case_checksum(params: dict) -> dict:
    h = LibHandle(params["lib"], params["cube"], params["p"])
    try:
        frames = h.read(*params["item"])
    except Exception as exc:
        return {"raised": True, "error": f"{type(exc).__name__}: {exc}"[:400]}
    d = digests(frames)
    return {"raised": False, "matches_original": d["S2"] == params["expected"]["S2"],
            "error": "" if d["S2"] == params["expected"]["S2"] else
            "returned data silently (S2 differs from the original)"}


def case_pickle_dump(params: dict) -> dict:
    h = LibHandle(params["lib"], params.get("cube", ""), params["p"], s3=params.get("s3"))
    first = digests(h.read(*params["item"]))  # live clients, threads, caches now exist
    try:
        blob = pickle.dumps(h.obj)
    except Exception as exc:
        return {"ok": False, "error": f"pickle.dumps: {type(exc).__name__}: {exc}"[:400]}
    Path(params["out"]).write_bytes(blob)
    secret = params.get("secret")
    return {"ok": first == params["expected"], "bytes": len(blob),
            "secret_in_pickle": bool(secret) and secret.encode() in blob}


def case_pickle_load(params: dict) -> dict:
    h = LibHandle(params["lib"], "", params["p"], open_now=False)
    h.obj = pickle.loads(Path(params["blob"]).read_bytes())
    got = digests(h.read(*params["item"]))
    return {"ok": got == params["expected"], "pipeline": h.pipeline()}


def spawn_case(name: str, params: dict, env: dict | None = None, timeout: int = CASE_TIMEOUT) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, json.dumps(params)]
    full_env = None
    if env is not None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        full_env.update({k: v for k, v in env.items() if v is not None})
        for k in [k for k, v in env.items() if v is None]:
            full_env.pop(k, None)
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                             cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s (hung)", "seconds": timeout}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        err = res.stderr.strip().splitlines()
        tail = " / ".join(err[-3:]) if err else f"exit {res.returncode}"
        return {"ok": False, "error": f"exit {res.returncode}: {tail}"[:500],
                "seconds": time.perf_counter() - t}
    out = json.loads(lines[-1])
    aborts = sorted({ln.strip() for ln in res.stderr.splitlines() if "abort" in ln.lower()})
    if out.get("error") and aborts:  # e.g. a library that kills forked workers on purpose
        out["error"] = f"{out['error']} (worker stderr: {' / '.join(aborts)})"
    out["seconds"] = time.perf_counter() - t
    return out


def case_main(name: str, params_json: str) -> None:
    try:
        out = run_case(name, json.loads(params_json))
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
               "trace": traceback.format_exc()[-1500:]}
    print(json.dumps(out, default=str))
    sys.stdout.flush()
    os._exit(0)  # no atexit hooks: a hung library thread must not keep the case alive


def short(text: str, n: int = 230) -> str:
    line = " ".join(str(text).split("Debug source")[0].split())
    return line if len(line) <= n else line[: n - 1] + "…"


def cell(res: dict, good: Callable[[dict], bool], text: Callable[[dict], str]) -> str:
    if res.get("error"):
        return "✗ " + short(res["error"]).replace("|", "/")
    return ("✓ " if good(res) else "✗ ") + short(text(res), 400).replace("|", "/")


def requirements(args, h: Harness, cube_base: Path | None, cmd: str) -> None:
    """(a)-(d), printed as tables with the evidence under them."""
    print("\n## Requirements\n")
    p = h.p
    i, r, c = h.cube.patches[0]
    items = [(i, r, c, t) for t in (0, 7, 13, 29)]
    local = LibHandle("zarr", str(h.path), p)  # the reference implementation
    expected = {it: digests(local.read(*it)) for it in items}
    ref = LibHandle("s2cube", str(h.path), p)
    for it in items:  # the mask differs (float32 output vs stored uint8): compare S2 and S1
        e = digests(ref.read(*it))
        expected[it] = {**expected[it], "masks_s2cube": e["masks"]}
    libs = [lib for lib in LIBS if lib == "s2cube" or importable(lib)]

    # (a) DataLoader workers -------------------------------------------------------------------
    print("### (a) torch DataLoader, 2 workers, handle opened and used in the parent\n")
    print("| start method | " + " | ".join(libs) + " |")
    print("|---|" + "---|" * len(libs))
    for method in ("spawn", "forkserver", "fork"):
        cells = []
        for lib in libs:
            res = spawn_case(f"dl:{lib}:{method}", {"lib": lib, "cube": str(h.path), "p": p,
                                                    "items": items, "method": method},
                             timeout=120)
            cells.append(cell(res, lambda x: x["ok"], lambda x: (
                f"{x['n']} items correct from {x['workers']} workers, {x['seconds']:.1f} s"
                + (f"; worker pipeline: {x['pipeline_worker']}" if x.get("pipeline_worker") else ""))))
        print(f"| {method} | " + " | ".join(cells) + " |")

    # (c) checksums ----------------------------------------------------------------------------
    print("\n### (c) one byte flipped inside a stored inner chunk (S2, slot 7)\n")
    with tempfile.TemporaryDirectory(prefix="bench_readers_crc_") as tmp:
        variants = [("crc32c cube", h.path)]
        if cube_base is not None and cube_base != h.path and not has_crc(cube_base):
            variants.append(("no crc32c (converter's cube)", cube_base))
        print("| cube | " + " | ".join([*libs, *(["zarr"] if importable("zarr") else [])]) + " |")
        print("|---|" + "---|" * (len(libs) + 1))
        for label, src in variants:
            bad = corrupt_copy(src, Path(tmp) / label.split()[0], h.infos["s2"], (i, r, c, 7))
            cells = []
            for lib in [*libs, "zarr"]:
                res = spawn_case(f"crc:{lib}", {"lib": lib, "cube": str(bad), "p": p,
                                                "item": (i, r, c, 7),
                                                "expected": expected[items[1]]})
                cells.append(cell(res, lambda x: x["raised"], lambda x: x["error"]))
            print(f"| {label} | " + " | ".join(cells) + " |")

    # (b) S3 and (d) pickling --------------------------------------------------------------------
    s3_and_pickle(h, libs, items, expected)


def importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def corrupt_copy(cube: Path, dest: Path, s2: ArrayInfo, item: tuple[int, int, int, int]) -> Path:
    """Hard-linked copy of ``cube`` whose shard holding ``item``'s S2 frame is a real copy
    with one byte in the middle of that frame's compressed chunk flipped."""
    shutil.copytree(cube, dest, copy_function=os.link)
    path, off, nb = s2.chunk_range(cube, *item[:3], item[3])
    shard = dest / path.relative_to(cube)
    data = bytearray(shard.read_bytes())
    shard.unlink()
    data[off + nb // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    return dest


def s3_and_pickle(h: Harness, libs: list[str], items, expected) -> None:
    from _servers import SeaweedServer

    p = h.p
    item = items[1]
    with SeaweedServer() as srv, tempfile.TemporaryDirectory(prefix="bench_readers_s3_") as tmp:
        tmpd = Path(tmp)
        srv.create_bucket("bench")
        n = upload_subset(srv, h.path, "bench", "cube.zarr", h.infos, item)
        ident = srv.admin
        base_env = {"AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    # any IMDS/ECS lookup goes to a closed loopback port, never off the machine
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
                    "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9",
                    "HOME": str(tmpd / "home"),
                    "AWS_CONFIG_FILE": str(tmpd / "base-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmpd / "base-credentials")}
        (tmpd / "home").mkdir()
        (tmpd / "base-config").write_text("[default]\nregion = us-east-1\n")
        (tmpd / "base-credentials").write_text("")
        keys = {"AWS_ACCESS_KEY_ID": ident.access_key, "AWS_SECRET_ACCESS_KEY": ident.secret_key}
        # a profile in a config file; a credential_process with 8-second credentials
        cfg = tmpd / "config"
        cfg.write_text(f"[profile bench]\naws_access_key_id = {ident.access_key}\n"
                       f"aws_secret_access_key = {ident.secret_key}\nregion = us-east-1\n")
        creds = tmpd / "credentials"
        creds.write_text(f"[bench]\naws_access_key_id = {ident.access_key}\n"
                         f"aws_secret_access_key = {ident.secret_key}\n")
        home2 = tmpd / "home2"
        (home2 / ".aws").mkdir(parents=True)
        (home2 / ".aws" / "config").write_text("[default]\nregion = us-east-1\n")
        (home2 / ".aws" / "credentials").write_text(
            f"[default]\naws_access_key_id = {ident.access_key}\n"
            f"aws_secret_access_key = {ident.secret_key}\n")
        counter = tmpd / "process-calls"
        proc_script = tmpd / "credproc.py"
        proc_script.write_text(
            "import datetime as dt, json, sys\n"
            f"open({str(counter)!r}, 'a').write('x\\n')\n"
            "exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=8)\n"
            f"print(json.dumps({{'Version': 1, 'AccessKeyId': {ident.access_key!r}, "
            f"'SecretAccessKey': {ident.secret_key!r}, "
            "'Expiration': exp.strftime('%Y-%m-%dT%H:%M:%SZ')}))\n")
        pcfg = tmpd / "config-process"
        pcfg.write_text(f"[profile bench]\ncredential_process = {sys.executable} {proc_script}\n"
                        "region = us-east-1\n")
        modes = {
            "env vars": ({**keys}, None),
            "AWS_PROFILE, keys in a temp config file": ({"AWS_PROFILE": "bench",
                                                         "AWS_CONFIG_FILE": str(cfg)}, None),
            "AWS_PROFILE, keys in a temp credentials file":
                ({"AWS_PROFILE": "bench", "AWS_SHARED_CREDENTIALS_FILE": str(creds)}, None),
            "no AWS_PROFILE, [default] in ~/.aws/credentials":
                ({"HOME": str(home2), "AWS_CONFIG_FILE": None,
                  "AWS_SHARED_CREDENTIALS_FILE": None}, None),
            "credential_process (8 s credentials, read again after 10 s)":
                ({"AWS_PROFILE": "bench", "AWS_CONFIG_FILE": str(pcfg)}, counter),
        }
        s3 = {"url": "s3://bench/cube.zarr", "bucket": "bench", "prefix": "cube.zarr",
              "endpoint": srv.endpoint_url,
              "storage_options": {"endpoint_url": srv.endpoint_url,
                                  "client_kwargs": {"region_name": "us-east-1"}},
              "ts_credentials": "default"}
        routes = []
        for lib in libs:
            if lib == "zarrs":
                routes += [("zarrs + obstore S3Store (its own chain)", "zarrs", {"zarr_store": "obstore"}),
                           ("zarrs + obstore + botocore credential_provider", "zarrs",
                            {"zarr_store": "obstore+botocore"}),
                           ("zarrs + s3fs FsspecStore (strict)", "zarrs", {"zarr_store": "fsspec"})]
            elif lib == "tensorstore":
                routes += [("tensorstore (aws_credentials type default)", lib, {}),
                           ("tensorstore (type default, profile = $AWS_PROFILE or 'default' "
                            "put in the spec)", lib, {"ts_credentials": "profile"})]
            else:
                routes.append(("s2cube (its storage layer: botocore chain)", lib, {}))
        print(f"\n### (b) S3 on a loopback SeaweedFS ({srv.endpoint_url}, {n} objects uploaded: "
              "metadata + the shards read), standard AWS chain\n")
        print("| route | " + " | ".join(modes) + " |")
        print("|---|" + "---|" * len(modes))
        for label, lib, extra in routes:
            cells = []
            for env, ctr in modes.values():
                if ctr is not None and ctr.exists():
                    ctr.unlink()
                params = {"lib": lib, "p": p, "s3": {**s3, **extra}, "item": item,
                          "expected": expected[item] if lib != "s2cube" else
                          {**expected[item], "masks": expected[item]["masks_s2cube"]},
                          "counter": str(ctr) if ctr else None, "wait": 10 if ctr else 0}
                params["expected"] = {k: params["expected"][k] for k in ("S2", "S1", "masks")}
                res = spawn_case(f"s3:{lib}", params, env={**base_env, **env}, timeout=120)
                cells.append(cell(res, lambda x: x["ok"] and x.get("ok_after_expiry", True)
                                  and "NOT used" not in x.get("pipeline", ""), s3_text))
            print(f"| {label} | " + " | ".join(cells) + " |")

        # (d) pickle an opened, used handle; load and read in a fresh process ------------------
        print("\n### (d) pickle.dumps of an opened and used handle, loaded and read in a new "
              "process\n")
        print("| handle | local | S3 (env-var credentials) |")
        print("|---|---|---|")
        for lib in libs:
            cells = []
            for where in ("local", "s3"):
                blob = tmpd / f"{lib}-{where}.pkl"
                exp = {k: (expected[item]["masks_s2cube"] if (k == "masks" and lib == "s2cube")
                           else expected[item][k]) for k in ("S2", "S1", "masks")}
                params = {"lib": lib, "p": p, "item": item, "expected": exp, "out": str(blob),
                          "cube": str(h.path) if where == "local" else "",
                          "s3": {**s3, "zarr_store": "obstore"} if where == "s3" else None,
                          "secret": ident.secret_key}
                env = {**base_env, **keys}
                dumped = spawn_case(f"pickle-dump:{lib}", params, env=env)
                if not dumped.get("ok"):
                    cells.append(cell(dumped, lambda x: False, lambda x: "dump failed"))
                    continue
                loaded = spawn_case(f"pickle-load:{lib}", {"lib": lib, "p": p, "item": item,
                                                            "expected": exp, "blob": str(blob)},
                                    env=env)
                loaded["error"] = loaded.get("error")
                cells.append(cell(loaded, lambda x: x["ok"], lambda x, d=dumped: (
                    f"{d['bytes']} bytes, read correctly in a new process; secret key in the "
                    f"pickle: {'YES' if d['secret_in_pickle'] else 'no'}"
                    + (f"; {x['pipeline']}" if x.get("pipeline") else ""))))
            print(f"| {lib} | " + " | ".join(cells) + " |")


def s3_text(x: dict) -> str:
    out = "read correctly" if x["ok"] else "read WRONG data"
    if x.get("pipeline"):
        out += f" [{x['pipeline'].split(';')[0]}]"
    if "ok_after_expiry" in x:
        out += (f"; after expiry {'read correctly' if x['ok_after_expiry'] else 'FAILED'}; "
                f"credential_process ran {x['calls_after_first']} then {x['calls_after_second']} "
                "times")
    return out


def upload_subset(srv, cube: Path, bucket: str, prefix: str, infos: dict[str, ArrayInfo],
                  item: tuple[int, int, int, int]) -> int:
    """Every file of the cube except the pixel shards, plus the shards ``item`` reads."""
    client = srv.client("admin")
    keep = {infos[v].shard_key(*item[:3], item[3]) for v in VARS}
    n = 0
    for root, _dirs, files in os.walk(cube):
        rel_root = Path(root).relative_to(cube)
        top = rel_root.parts[0] if rel_root.parts else ""
        for f in files:
            rel = (rel_root / f).as_posix()
            if top in infos and f != "zarr.json":
                inside = Path(rel).relative_to(top).as_posix()
                if inside not in keep:
                    continue
            client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=(Path(root) / f).read_bytes())
            n += 1
    return n


# --- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cube", default=None, help="an existing cube (default: build one)")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "output" / "bench_readers"))
    ap.add_argument("--rois", type=int, default=2)
    ap.add_argument("--grid", default="3x3")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--requirements", action="store_true", help="also check (a)-(d)")
    ap.add_argument("--no-speed", action="store_true", help="skip the timing tables")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*(Consolidated metadata|not recognized as a comp)")
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_readers.py",
                                            *(argv if argv is not None else sys.argv[1:])])
    global MACHINE
    MACHINE = machine()
    print(f"command: `{cmd}`")
    print(f"machine: {MACHINE}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cube:
        base = Path(args.cube).resolve()
    else:
        environ = dict(os.environ)
        base = build_cube(workdir, args.rois, tuple(int(v) for v in args.grid.split("x")),
                          args.patch)
        os.environ.clear()  # the converter's dask sets OMP_NUM_THREADS=1 & co. in this process
        os.environ.update(environ)
    path = base if has_crc(base) else checksum_copy(base, workdir / f"{base.stem}-crc32c.zarr")
    print(f"cube read by every row: {path} "
          f"({'has' if path == base else 'copy of ' + str(base) + ' with'} crc32c on every inner "
          "chunk)")
    cube = s2cube_adapter(path)
    samples = plan_samples(cube, args.samples)
    for root, _d, files in os.walk(path):  # page cache warm
        for f in files:
            Path(root, f).read_bytes()
    import zarr

    zarr.config.set({"threading.max_workers": args.threads})
    h = Harness(cube, path, samples, args.threads, args.batch)
    if not args.no_speed:
        speed(args, h, cmd)
    if args.requirements:
        requirements(args, h, base, cmd)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--case":
        case_main(sys.argv[2], sys.argv[3])
    else:
        main()
