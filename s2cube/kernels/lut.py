"""A lookup table applied to uint16 values: the reference's S2 preprocessing in one pass.

The reference turns S2 DN into float32 with ``clip(x, 0, 10000) / 10000`` (``default``) or
``clip(x, 0, 10000) / 2000`` (``resnet``) after ``astype(float32)``: three passes over a
3.4 MB float32 frame of 13 × 256², memory-bound, that two threads do not speed up. For uint16
input every result is one of 65,536 float32 values, so :func:`s2_table` computes them once
with the reference's own arithmetic and :func:`apply` writes ``table[x]`` for every DN in one
pass (a numba kernel, 2-3× faster than the three passes; ``np.take`` where numba cannot
run). The values are the reference's, bit for bit (``tests/test_sen12mscr_loader.py``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from s2cube.kernels import native


@cache
def s2_table(method: str) -> np.ndarray:
    """The float32 result of the reference's ``process_MS`` for every uint16 DN."""
    # float32 throughout (the stubs make ``img / int`` float64; NumPy keeps float32)
    img: np.ndarray = np.arange(65536, dtype=np.uint16).astype(np.float32)
    img = np.clip(img, 0, 10000)
    if method == "default":
        img = (img - 0) / (10000 - 0)
    elif method == "resnet":
        img /= 2000
    else:
        raise ValueError(f"rescale_method {method!r} is not one of default, resnet")
    out = np.nan_to_num(img).astype(np.float32)
    out.setflags(write=False)
    return out


@native.jit
def _apply(table, src, dst):  # pragma: no cover - compiled by numba
    for i in range(src.size):
        dst[i] = table[src[i]]


def apply(table: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = table[src]`` for uint16 ``src`` and float32 ``dst`` of the same shape."""
    src = np.ascontiguousarray(src)
    if native.available() and dst.flags.c_contiguous and dst.dtype == table.dtype:
        _apply(table, src.reshape(-1), dst.reshape(-1))
    else:
        np.take(table, src, out=dst) if dst.dtype == table.dtype else \
            np.copyto(dst, np.take(table, src), casting="unsafe")


#: per channel (low, high) of the reference's ``process_SAR`` dB ranges
S1_RANGES = {"default": {"VV": (-25.0, 0.0), "VH": (-25.0, 0.0)},
             "resnet": {"VV": (-25.0, 0.0), "VH": (-32.5, 0.0)}}


@native.jit
def _s1(src, dst, low, span, scale):  # pragma: no cover - compiled by numba
    n = src.shape[1]
    for c in range(src.shape[0]):
        lo, hi, sp, sc = low[c], low[c] + span[c], span[c], scale[c]
        for i in range(n):
            x = src[c, i]
            if x != x:
                dst[c, i] = 0
                continue
            if x < lo:
                x = lo
            elif x > hi:
                x = hi
            dst[c, i] = (sc * (x - lo)) / sp


def s1_rescale(method: str, polarizations: tuple[str, ...], src: np.ndarray,
               dst: np.ndarray) -> bool:
    """The reference's ``process_SAR`` of float32 ``src`` (channels first) into float32
    ``dst`` in one pass: ``(clip(x, lo, 0) - lo) / (0 - lo)`` (``resnet``: times 2, VH from
    -32.5), NaN → 0, in float32 as the reference computes it. False when it cannot run here
    (the caller then runs the NumPy version)."""
    if not native.available() or src.dtype != np.float32 or dst.dtype != np.float32 \
            or not dst.flags.c_contiguous:
        return False
    ranges = S1_RANGES[method]
    low = np.array([ranges[p][0] for p in polarizations], np.float32)
    span = np.array([ranges[p][1] - ranges[p][0] for p in polarizations], np.float32)
    scale = np.full(len(polarizations), 2 if method == "resnet" else 1, np.float32)
    c = len(polarizations)
    _s1(np.ascontiguousarray(src).reshape(c, -1), dst.reshape(c, -1), low, span, scale)
    return True
