"""``s2cube verify`` for SEN12MS-CR cubes: every shard, every chunk, every recorded patch.

The same checks as :mod:`s2cube.io.verify` on this kind's layout: a shard holds
``patches_per_shard`` consecutive patches of one scene; its index's crc32c and bounds, each
chunk's crc32c and Blosc header (decompressed with ``decode=True``), and a chunk for every
patch whose file the cube records as read. Bad chunks name the scene and patch number;
``s2cube convert ARCHIVE CUBE --verify`` converts the blocks holding them again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2cube import sen12mscr as cr
from s2cube.io.backend import open_source
from s2cube.io.reader import MAX_UINT_64, decode_chunk
from s2cube.io.verify import BadChunk, VerifyReport, _quick
from s2cube.parallel import map_bounded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrBadChunk(BadChunk):
    """A bad chunk of a SEN12MS-CR cube: ``roi`` holds the patch's label (scene and patch
    number), ``row`` its position on the ``patch`` dim (a shard's first for shard faults)."""

    def __str__(self) -> str:
        return f"{self.variable}: {self.roi} (position {self.row}): {self.reason} ({self.key})"


def _check_shard(source, var: str, start: int, labels: tuple[str, ...], decode: bool
                 ) -> tuple[int, list[BadChunk]]:
    reader = source.reader()
    lay = source.layouts[var]
    n = (lay.shard or lay.chunk)[0]
    zeros = (0,) * (len(lay.shape) - 1)
    key = lay.shard_key((start, *zeros))
    where = f"{var}/{key}"
    valid = source.valid(var)
    stop = min(start + n, lay.shape[0])
    expected = np.zeros(n, bool)
    if valid is not None:
        expected[:stop - start] = np.asarray(valid[start:stop], bool)

    def label(k: int) -> str:
        return labels[k] if k < len(labels) else f"#{k}"

    data = reader.read_object(where)
    if data is None:
        if expected.any():
            return 0, [CrBadChunk(var, label(start), None, start, None, where,
                                  f"missing shard: {int(expected.sum())} recorded patches have "
                                  "no chunk")]
        return 0, []
    view = memoryview(data)
    parsed = reader.parse_index(var, bytes(view[-lay.index_nbytes:]) if lay.index_at_end
                                else bytes(view[:lay.index_nbytes]), len(view))
    if isinstance(parsed, str):
        return 0, [CrBadChunk(var, label(start), None, start, None, where, parsed)]
    out: list[BadChunk] = []
    frame = np.empty(lay.frame_shape, np.dtype(lay.dtype))
    checked = 0
    for j in range(stop - start):
        off, nbytes = (int(v) for v in parsed[lay.position((start + j, *zeros))])
        if off == MAX_UINT_64:
            if expected[j]:
                out.append(CrBadChunk(var, label(start + j), None, start + j, None, where,
                                      "missing chunk of a patch the cube records as present"))
            continue
        checked += 1
        chunk = view[off:off + nbytes]
        why = decode_chunk(lay, chunk, frame) if decode else _quick(lay, chunk, frame.nbytes)
        if why is not None:
            out.append(CrBadChunk(var, label(start + j), None, start + j, None, where,
                                  {"checksum": "crc32c mismatch", "decode": "cannot be decoded",
                                   "truncated": "truncated"}.get(why, why)))
    return checked, out


def _shard_task(source, start: int, decode: bool) -> tuple[int, list]:
    labels = source.patch_labels()
    total, bad = 0, []
    for var in cr.PIXEL_VARIABLES:
        if var in source.layouts:
            n, b = _check_shard(source, var, start, labels, decode)
            total += n
            bad += b
    return total, bad


def _small_task(source) -> tuple[int, list]:
    import math

    from s2cube.errors import ChunkError

    bad, n = [], 0
    for var in cr.SMALL_VARIABLES:
        lay = source.layouts.get(var)
        if lay is None:
            continue
        try:
            source.reader().read_array(var)
            n += math.prod(math.ceil(s / c) for s, c in zip(lay.shape, lay.chunk))
        except ChunkError as exc:
            bad.append(BadChunk(var, "", None, None, None, exc.key, exc.reason))
    return n, bad


def verify_cr(url: str | os.PathLike, storage_options: dict | None = None, *, client: Any = None,
              decode: bool = False, positions: list[tuple[int, int]] | None = None,
              progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every chunk of the SEN12MS-CR cube at ``url`` (``positions``: only the shards
    holding these ``(start, count)`` runs of patches)."""
    source, attrs = open_source(url, storage_options, allow_incomplete=True)
    report = VerifyReport(source.url)
    n, bad = _small_task(source)
    report.chunks += n
    report.bad += bad
    if bad:
        return report
    per = int(attrs.get("patches_per_shard") or cr.PATCHES_PER_SHARD)
    if positions is None:
        stored = np.flatnonzero(source.small("scene") >= 0)
    else:
        stored = np.array([p for start, k in positions for p in range(start, start + k)], np.int64)
    starts = sorted({int(p) // per * per for p in stored.tolist()})
    if progress:
        progress(0, len(starts))
    results = []
    if client is None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            futures = [pool.submit(_shard_task, source, s, decode) for s in starts]
            for k, f in enumerate(futures, 1):
                results.append(f.result())
                if progress:
                    progress(k, len(starts))
    else:
        results = map_bounded(client, _start_task, (source, decode), starts, what="shard check",
                              progress=progress, stop_on_error=True)
    for n, b in results:
        report.chunks += n
        report.bad += b
    report.shards = len(starts)
    logger.info("verified %d chunks of %d shards: %d bad", report.chunks, len(starts),
                len(report.bad))
    return report


def _start_task(shared, start):
    source, decode = shared
    return _shard_task(source, start, decode)
