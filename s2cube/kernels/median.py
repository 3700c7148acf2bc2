"""The median of the clear values of a short series per pixel (the temporal composite's core).

``clear_median(values, clear)`` takes a series ``(T, B, M)`` of integer values and a clear
flag ``(T, M)`` shared by the ``B`` bands, and returns ``(B, M)`` float32: the median of the
clear values (the mean of the two middle ones for an even count), NaN where none is clear.

Exact method, two implementations with equal results: unclear values are replaced by the
dtype's maximum, each pixel's series is sorted by Batcher's odd-even merge network (one
min/max per comparator), and the middle one or two of its ``n`` clear values are averaged in
float32. NumPy runs a comparator over the whole array at a time: with 30 slots that is ~190
passes over ~50 MB per 256² patch, several times the cost of decompressing it. The C kernel
(:data:`KERNEL_C`, compiled on first use by :mod:`s2cube.kernels.native`) runs the same network on
tiles of 256 pixels that stay in L1, vectorised (AVX2 where the CPU has it): several times faster,
below the decode cost. Without a compiler the NumPy path runs, with a log line saying so.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache, lru_cache

import numpy as np

from s2cube.kernels import native

logger = logging.getLogger(__name__)

MAX_SLOTS = 64  # the kernel's tile holds series of up to 64 slots

KERNEL_C = r"""
#include <math.h>
#include <stdint.h>

#define TMAX 64
#define TILE 256
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* values (T, B, M) uint16, element strides sT, sB, unit stride along M; hide (T, M): 0 where
   clear, 0xFFFF where not; count (M): clear slots; pairs: the network's comparators over
   `size` slots (a power of two >= T); out (B, M) float32. */
CLONES void s2c_clear_median(const uint16_t *values, const uint16_t *hide, const uint8_t *count,
                             int64_t T, int64_t B, int64_t M, int64_t sT, int64_t sB,
                             const int32_t *pairs, int64_t npairs, int64_t size, float *out) {
  uint16_t buf[TMAX * TILE] __attribute__((aligned(32)));
  for (int64_t b = 0; b < B; b++) {
    for (int64_t m0 = 0; m0 < M; m0 += TILE) {
      int64_t w = M - m0 < TILE ? M - m0 : TILE;
      for (int64_t t = 0; t < size; t++) {
        uint16_t *restrict r = buf + t * TILE;
        int64_t i = 0;
        if (t < T) {
          const uint16_t *restrict v = values + t * sT + b * sB + m0;
          const uint16_t *restrict h = hide + t * M + m0;
          for (; i < w; i++) r[i] = v[i] | h[i];
        }
        for (; i < TILE; i++) r[i] = 0xFFFF;
      }
      for (int64_t k = 0; k < npairs; k++) {
        uint16_t *restrict lo = buf + pairs[2 * k] * TILE;
        uint16_t *restrict hi = buf + pairs[2 * k + 1] * TILE;
        for (int i = 0; i < TILE; i++) {
          uint16_t x = lo[i], y = hi[i];
          lo[i] = x < y ? x : y;
          hi[i] = x < y ? y : x;
        }
      }
      const uint8_t *c = count + m0;
      float *o = out + b * M + m0;
      for (int64_t i = 0; i < w; i++) {
        int n = c[i];
        if (n == 0) {
          o[i] = NAN;
        } else {
          float lo = buf[((n - 1) / 2) * TILE + i], hi = buf[(n / 2) * TILE + i];
          o[i] = (lo + hi) / 2.0f;
        }
      }
    }
  }
}
"""


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


def sort_series(values: np.ndarray) -> np.ndarray:
    """Sort along axis 0 with the network: one vectorised min/max per comparator (NumPy)."""
    n = values.shape[0]
    size, pairs = _network(n)
    top = np.iinfo(values.dtype).max if values.dtype.kind in "ui" else np.inf
    x = np.full((size, *values.shape[1:]), top, dtype=values.dtype)
    x[:n] = values
    lo = np.empty_like(x[0])  # one buffer: no allocation per comparator
    for a, b in pairs:
        np.minimum(x[a], x[b], out=lo)
        np.maximum(x[a], x[b], out=x[b])
        x[a] = lo
    return x[:n]


@lru_cache(maxsize=1)
def _kernel():
    """The compiled kernel's function, or None where it cannot be built (logged once)."""
    try:
        fn = native.load_library(KERNEL_C, "median").s2c_clear_median
    except native.NativeUnavailable as exc:
        logger.info("median kernel unavailable, using NumPy (several times slower): %s", exc)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, p, i64, i64, i64, i64, i64, p, i64, i64, p]
    fn.restype = None
    return fn


def _numpy_median(values: np.ndarray, clear: np.ndarray, count: np.ndarray) -> np.ndarray:
    top = np.iinfo(values.dtype).max if values.dtype.kind in "ui" else np.inf
    s = sort_series(np.where(clear[:, None], values, top))
    count = count.astype(np.int64)
    lo = np.take_along_axis(s, np.maximum((count - 1) // 2, 0)[None, None], 0)[0]
    hi = np.take_along_axis(s, np.minimum(count // 2, s.shape[0] - 1)[None, None], 0)[0]
    med = (lo.astype(np.float32) + hi.astype(np.float32)) / np.float32(2)
    return np.where(count > 0, med, np.float32(np.nan)).astype(np.float32)


def clear_median(values: np.ndarray, clear: np.ndarray, *, native_kernel: bool = True) -> np.ndarray:
    """Median over axis 0 of the clear values of ``values`` ``(T, B, M)``; ``(B, M)`` float32.

    Parameters
    ----------
    values
        A series of ``T`` slots of ``B`` bands of ``M`` pixels (any numeric dtype; uint16
        takes the compiled kernel).
    clear
        ``(T, M)`` booleans, shared by the bands: which values take part.
    native_kernel
        Use the compiled kernel when it applies (the result is the same without it).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, M)``; NaN where no slot is clear.
    """
    values = np.asarray(values)
    clear = np.asarray(clear, bool)
    t, b, m = values.shape
    if clear.shape != (t, m):
        raise ValueError(f"clear has shape {clear.shape}; expected {(t, m)} for values {values.shape}")
    count = clear.sum(axis=0, dtype=np.uint8 if t < 256 else np.int64)
    fn = _kernel() if native_kernel and values.dtype == np.uint16 and 0 < t <= MAX_SLOTS else None
    if fn is None:
        return _numpy_median(values, clear, count)
    if values.strides[2] != values.itemsize:
        values = np.ascontiguousarray(values)
    hide = np.where(clear, np.uint16(0), np.uint16(0xFFFF))
    size, pairs = _network(t)
    out = np.empty((b, m), np.float32)
    step = values.itemsize
    fn(values.ctypes.data, hide.ctypes.data, count.ctypes.data, t, b, m,
       values.strides[0] // step, values.strides[1] // step, pairs.ctypes.data, len(pairs), size,
       out.ctypes.data)
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
