"""Check every chunk of a cube against its checksums, without the source archive.

:func:`verify_cube` reads each shard of the pixel arrays whole (one request), checks its
index's crc32c and bounds, every chunk's crc32c and Blosc header (and, with
``decode=True``, decompresses it), and that every frame the cube records as present has a
chunk; then the same for the small arrays. One dask task per patch location, so it runs on
a local cluster or any ``dask.distributed`` cluster. Bad chunks are listed with the
variable, ROI, slot, patch and key; ``s2cube convert ARCHIVE CUBE --verify`` rewrites the
patch locations that hold them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2cube import schema
from s2cube.io.backend import CubeSource, open_source
from s2cube.io.reader import MAX_UINT_64, ChunkReader, crc_ok, decode_chunk
from s2cube.parallel import map_bounded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadChunk:
    """One chunk that failed: where it is and why."""

    variable: str
    roi: str
    slot: int | None
    row: int | None
    col: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"ROI {self.roi}" + (f", slot {self.slot}" if self.slot is not None else "")
        if self.row is not None:
            where += f", patch (row {self.row}, col {self.col})"
        return f"{self.variable}: {where}: {self.reason} ({self.key})"


@dataclass
class VerifyReport:
    """What :func:`verify_cube` checked and what failed."""

    url: str
    chunks: int = 0
    shards: int = 0
    bad: list[BadChunk] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad

    def patches(self) -> set[tuple[str, int, int]]:
        """``(roi, row, col)`` of every patch location holding a bad chunk."""
        return {(b.roi, b.row, b.col) for b in self.bad if b.row is not None and b.col is not None}


def _check_shard(reader: ChunkReader, var: str, roi: int, row: int, col: int,
                 expected: np.ndarray | None, decode: bool) -> tuple[int, list[BadChunk]]:
    """Check one shard of ``var``: its index, every chunk, the frames that must be there."""
    lay = reader.layouts[var]
    name = reader.roi_names[roi]
    key = lay.object_key(roi, row, col, 0)
    data = reader.read_object(f"{var}/{key}")
    where = f"{var}/{key}"

    def bad(reason: str, slot: int | None = None) -> BadChunk:
        return BadChunk(var, name, slot, row, col, where, reason)

    n_slots = (lay.shard or lay.chunk)[1]
    if data is None:
        if expected is not None and expected.any():
            return 0, [bad(f"missing shard: {int(expected.sum())} recorded frames have no chunk")]
        return 0, []
    view = memoryview(data)
    parsed = reader.parse_index(var, bytes(view[-lay.index_nbytes:]) if lay.index_at_end
                                 else bytes(view[:lay.index_nbytes]), len(view))
    if isinstance(parsed, str):
        return 0, [bad(parsed)]
    assert parsed is not None  # None only when there are no bytes
    out: list[BadChunk] = []
    frame = np.empty(lay.frame_shape, np.dtype(lay.dtype))
    checked = 0
    for slot in range(n_slots):
        off, nbytes = (int(v) for v in parsed[lay.chunk_in_shard(slot)])
        if off == MAX_UINT_64:
            if expected is not None and expected[slot]:
                out.append(bad("missing chunk of a frame the cube records as present", slot))
            continue
        chunk = view[off:off + nbytes]
        checked += 1
        if decode:
            why = decode_chunk(lay, chunk, frame)
        else:
            why = _quick(lay, chunk, frame.nbytes)
        if why is not None:
            out.append(bad({"checksum": "crc32c mismatch", "decode": "cannot be decoded",
                            "truncated": "truncated"}.get(why, why), slot))
    return checked, out


def _quick(lay, chunk: memoryview, nbytes: int) -> str | None:
    """The checksum and the Blosc header, without decompressing."""
    data = chunk
    if lay.checksum:
        if len(data) < 4 or not crc_ok(data):
            return "checksum"
        data = data[:-4]
    if lay.compressors and lay.compressors[-1][0] == "blosc":
        if len(data) < 16 or int.from_bytes(data[12:16], "little") != len(data) or \
                int.from_bytes(data[4:8], "little") != nbytes:
            return "decode"
    return None


def _patch_task(source: CubeSource, roi: int, row: int, col: int, decode: bool) -> tuple[int, list]:
    reader = source.reader()
    total, bad = 0, []
    for var in schema.PIXEL_VARIABLES:
        if var not in source.layouts:
            continue
        valid = source.valid(var)
        inside = valid is not None and roi < valid.shape[0] and row < valid.shape[2] \
            and col < valid.shape[3]  # the small arrays may predate this patch location
        expected = np.asarray(valid[roi, :, row, col]) if valid is not None and inside else None
        n, b = _check_shard(reader, var, roi, row, col, expected, decode)
        total += n
        bad += b
    return total, bad


def _small_task(source: CubeSource) -> tuple[int, list]:
    from s2cube.errors import ChunkError

    bad, n = [], 0
    for var, lay in source.layouts.items():
        if var in schema.PIXEL_VARIABLES:
            continue
        try:
            source.reader().read_array(var)
            n += math.prod(math.ceil(s / c) for s, c in zip(lay.shape, lay.chunk))
        except ChunkError as exc:
            bad.append(BadChunk(var, "", None, None, None, exc.key, exc.reason))
    return n, bad


def verify_cube(url: str | os.PathLike, storage_options: dict | None = None, *,
                client: Any = None, decode: bool = False,
                patches: list[tuple[str, int, int]] | None = None,
                progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every chunk of the cube at ``url`` (see the module docstring).

    Parameters
    ----------
    client
        A ``dask.distributed`` client to run on; without one, dask's local threads.
    decode
        Also decompress every chunk (the checksums already catch any changed byte; this
        catches a chunk written wrong before it was checksummed).
    patches
        Only these ``(roi, row, col)`` patch locations (labels); every patch when None.
    progress
        Called as ``progress(done, total)`` as patch locations finish.
    """
    source, _ = open_source(url, storage_options, allow_incomplete=True)
    if getattr(source, "kind", None) == "sen12ms-cr":  # patches on one dim: its own shards
        from s2cube.io.crverify import verify_cr

        positions = None if patches is None else [(int(r), 1) for _, r, _ in patches]
        return verify_cr(url, storage_options, client=client, decode=decode,
                         positions=positions, progress=progress)
    report = VerifyReport(source.url)
    small_n, small_bad = _small_task(source)
    report.chunks += small_n
    report.bad += small_bad
    if small_bad:  # without the small arrays the frames cannot be checked against them
        return report
    pid = source.small("patch_id")
    if patches is None:
        cells = [tuple(int(v) for v in c) for c in np.argwhere(pid >= 0)]
    else:
        where = {n: i for i, n in enumerate(source.roi_names)}
        cells = [(where[r], int(y), int(x)) for r, y, x in patches if r in where]
    total = len(cells)
    if progress:
        progress(0, total)
    results = _run(client, source, cells, decode, progress, total)
    for n, bad in results:
        report.chunks += n
        report.bad += bad
    report.shards = total
    logger.info("verified %d chunks of %d patch locations: %d bad", report.chunks, total,
                len(report.bad))
    return report


def _run(client, source, cells, decode, progress, total) -> list:
    if client is None:
        from concurrent.futures import ThreadPoolExecutor

        out = []
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            futures = [pool.submit(_patch_task, source, roi, row, col, decode)
                       for roi, row, col in cells]
            for k, f in enumerate(futures, 1):
                out.append(f.result())
                if progress:
                    progress(k, total)
        return out
    # one copy of the source for all tasks (sent with each, the graph grew with it), a
    # bounded number in flight
    return map_bounded(client, _cell_task, (source, decode), cells, what="patch location check",
                       progress=progress, stop_on_error=True)


def _cell_task(shared: tuple[CubeSource, bool], cell: tuple[int, int, int]) -> tuple[int, list]:
    source, decode = shared
    roi, row, col = cell
    return _patch_task(source, roi, row, col, decode)
