"""The median of the clear values of a short series per pixel (the temporal composite's core).

``clear_median(values, clear)`` takes a series ``(T, B, M)`` of values and a clear flag
``(T, M)`` shared by the ``B`` bands, and returns ``(B, M)`` float32: the median of the clear
values (the mean of the two middle ones for an even count), NaN where none is clear.

Exact method, two implementations with equal results: unclear values are replaced by the
dtype's maximum (+inf for floats), each pixel's series is sorted by Batcher's odd-even merge
network (one min/max per comparator), and the middle one or two of its ``n`` clear values are
averaged in float32. NumPy runs a comparator over the whole array at a time: with 30 slots that
is ~190 passes over ~50 MB per 256² patch, several times the cost of decompressing it. The
kernel (:func:`_median_kernel`, compiled by numba: see :mod:`s2cube.kernels.native`) runs the
same network on tiles of 256 pixels that stay in L1, vectorised by LLVM for the host CPU
(AVX2 where it has it), and reads the clear flags itself: over ten times faster than NumPy
and ~25 % faster than the C kernel it replaces (``benchmarks/bench_kernels.py``), below the
decode cost. Where numba is not installed the NumPy network runs, with a log line saying so.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np

from s2cube.kernels import native

logger = logging.getLogger(__name__)

TILE = 256  # pixels per tile: a 32-slot series of uint16 is 16 KiB, in L1


def batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort of ``n`` (a power of two) items."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@cache
def _network(n: int) -> tuple[int, np.ndarray]:
    """The padded size and the comparators that matter for ``n`` slots (int32, (k, 2))."""
    size = 1 << max(n - 1, 0).bit_length()
    pairs = [(a, b) for a, b in batcher_pairs(size) if a < n or b < n]
    return size, np.asarray(pairs, np.int32).reshape(-1, 2)


def _top(dtype: np.dtype) -> int | float:
    """The value that sorts after every other: the integer maximum, or +inf."""
    return np.iinfo(dtype).max if dtype.kind in "ui" else np.inf


def sort_series(values: np.ndarray) -> np.ndarray:
    """Sort along axis 0 with the network: one vectorised min/max per comparator (NumPy)."""
    n = values.shape[0]
    size, pairs = _network(n)
    x = np.full((size, *values.shape[1:]), _top(values.dtype), dtype=values.dtype)
    x[:n] = values
    lo = np.empty_like(x[0])  # one buffer: no allocation per comparator
    for a, b in pairs:
        np.minimum(x[a], x[b], out=lo)
        np.maximum(x[a], x[b], out=x[b])
        x[a] = lo
    return x[:n]


@native.jit
def _median_kernel(values: np.ndarray, clear: np.ndarray, pairs: np.ndarray, size: int,
                   top: np.generic, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """The network on tiles: ``values`` (T, B, M), ``clear`` (T, M) bool, ``out`` (B, M) float32.

    ``pairs`` (k, 2) int32 are the comparators over ``size`` slots (a power of two >= T), ``top``
    the filler of unclear and padding slots. Each comparator is a min/max of two rows of the
    tile: loops over contiguous rows, which LLVM vectorises (for unsigned integers and without
    NaN, ``np.minimum``/``np.maximum`` are plain min/max; with NaN they propagate it as NumPy's
    network does).
    """
    n_slots, n_bands, m = values.shape
    buf = np.empty((size, TILE), values.dtype)
    count = np.zeros(TILE, np.int64)
    for m0 in range(0, m, TILE):
        w = min(m - m0, TILE)
        count[:] = 0
        for t in range(n_slots):
            ok = clear[t, m0:m0 + w]
            for i in range(w):
                count[i] += ok[i]
        for b in range(n_bands):
            for t in range(size):
                row = buf[t]
                if t < n_slots:
                    v = values[t, b, m0:m0 + w]
                    ok = clear[t, m0:m0 + w]
                    for i in range(w):
                        row[i] = v[i] if ok[i] else top
                    for i in range(w, TILE):
                        row[i] = top
                else:
                    for i in range(TILE):
                        row[i] = top
            for k in range(pairs.shape[0]):
                lo = buf[pairs[k, 0]]
                hi = buf[pairs[k, 1]]
                for i in range(TILE):
                    x = lo[i]
                    y = hi[i]
                    lo[i] = np.minimum(x, y)
                    hi[i] = np.maximum(x, y)
            o = out[b, m0:m0 + w]
            for i in range(w):
                n = count[i]
                if n == 0:
                    o[i] = np.float32(np.nan)
                else:
                    a = np.float32(buf[(n - 1) // 2, i])
                    c = np.float32(buf[n // 2, i])
                    o[i] = (a + c) / np.float32(2.0)


@cache
def _kernel_available() -> bool:
    """True where numba compiles the kernel; logs once where the NumPy network runs instead."""
    if native.available():
        return True
    logger.warning("numba is not installed: the clear-value median runs in NumPy (~10x slower); "
                   "pip install numba")
    return False


def _numpy_median(values: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """:func:`clear_median` with NumPy: the network over whole arrays, then the middle values."""
    count = clear.sum(axis=0, dtype=np.int64)
    s = sort_series(np.where(clear[:, None], values, _top(values.dtype)))
    lo = np.take_along_axis(s, np.maximum((count - 1) // 2, 0)[None, None], 0)[0]
    hi = np.take_along_axis(s, np.minimum(count // 2, s.shape[0] - 1)[None, None], 0)[0]
    med = (lo.astype(np.float32) + hi.astype(np.float32)) / np.float32(2)
    return np.where(count > 0, med, np.float32(np.nan)).astype(np.float32)


def clear_median(values: np.ndarray, clear: np.ndarray, *, native_kernel: bool = True) -> np.ndarray:
    """Median over axis 0 of the clear values of ``values`` ``(T, B, M)``; ``(B, M)`` float32.

    Parameters
    ----------
    values
        A series of ``T`` slots of ``B`` bands of ``M`` pixels (integer or floating dtype; the
        cube's uint16 DN is the common case).
    clear
        ``(T, M)`` booleans, shared by the bands: which values take part.
    native_kernel
        Use the compiled kernel where numba is installed (the result is the same without it;
        ``False`` runs the NumPy network, for tests and benchmarks).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, M)``; NaN where no slot is clear.
    """
    values = np.asarray(values)
    clear = np.asarray(clear, bool)
    if values.ndim != 3:
        raise ValueError(f"values must be (T, B, M), got shape {values.shape}")
    t, b, m = values.shape
    if clear.shape != (t, m):
        raise ValueError(f"clear has shape {clear.shape}; expected {(t, m)} for values {values.shape}")
    if values.dtype.kind not in "uif":
        raise ValueError(f"values must be numbers, got dtype {values.dtype}")
    if t == 0:
        return np.full((b, m), np.nan, np.float32)
    if not (native_kernel and _kernel_available()):
        return _numpy_median(values, clear)
    if values.dtype.kind == "f" and values.itemsize == 2:  # numba has no float16: exact
        values = values.astype(np.float32)
    elif not values.dtype.isnative:  # nor other byte orders
        values = values.astype(values.dtype.newbyteorder("="))
    if values.strides[2] != values.itemsize:  # the tile rows are read contiguously
        values = np.ascontiguousarray(values)
    if clear.strides[1] != clear.itemsize:
        clear = np.ascontiguousarray(clear)
    size, pairs = _network(t)
    out = np.empty((b, m), np.float32)
    _median_kernel(values, clear, pairs, size, values.dtype.type(_top(values.dtype)), out)
    return out


def median_of_clear(values: np.ndarray, clear: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median along ``axis`` of the ``clear`` values (broadcast to ``values``); NaN where none.

    float32, the mean of the two middle values for an even count; see :func:`clear_median`.
    """
    v, ok = np.broadcast_arrays(np.asarray(values), np.asarray(clear, bool))
    v, ok = np.moveaxis(v, axis, 0), np.moveaxis(ok, axis, 0)
    shape = v.shape[1:]
    flat_v = np.ascontiguousarray(v).reshape(v.shape[0], 1, -1)
    flat_ok = np.ascontiguousarray(ok).reshape(ok.shape[0], -1)
    return clear_median(flat_v, flat_ok).reshape(shape)
