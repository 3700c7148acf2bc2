"""The reference metrics of one image as compiled kernels, for :mod:`s2cube.analysis.metrics`.

Scoring a 13-band 256² sample with NumPy costs ~230 ms, ten times the cost of
decompressing it: SSIM alone runs five images through 22 full-array passes of the
separable window, and the error sums and SAM make a dozen more passes and temporaries.
Two kernels, compiled by numba (see :mod:`s2cube.kernels.native`), do the same arithmetic in
cache, in float64 (float32 images are widened as they are read), and agree with the NumPy
formulas of :mod:`s2cube.analysis.metrics` to ~1e-12 (the order of the additions differs,
and SSIM's rounding where multiply-adds are fused):

- :func:`_ssim_kernel`: the sum of the SSIM map, one output row at a time: the vertical pass
  of ``x, y, x², y², xy`` over the window's rows, the horizontal pass, the formula, each a loop
  along contiguous rows that LLVM vectorises (AVX2, with fused multiply-adds, where the CPU
  has them, as the C kernel had);
- :func:`_errors_kernel`: per tile of pixels, the band sums of ``d²``, ``|d|``, ``x·y``, ``x²``,
  ``y²``, then the totals over all pixels and over the cloudy and the clear ones, and the
  spectral angle of each pixel (bit-identical to the C kernel it replaces).

Each function here returns None where numba is not installed (logged once) or where the kernel
does not apply (NaN in the data, for the error sums); the caller then runs the NumPy formulas.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np

from s2cube.kernels import native

logger = logging.getLogger(__name__)

TILE = 1024  # pixels per tile of the error sums: five float64 rows of 8 KiB


@native.jit(fastmath={"contract"})
def _ssim_kernel(p: np.ndarray, t: np.ndarray, w: np.ndarray, c1: float,
                 c2: float) -> float:  # pragma: no cover (compiled)
    """Sum over bands and pixels of the SSIM map of ``p`` and ``t``, ``(B, H, W)`` C-contiguous.

    ``w``: the ``2r+1`` taps of the separable window (zero padding, same-size output). Each
    output row: the vertical pass sums ``w·t, w·p, (w·t)·t, (w·p)·p, (w·t)·p`` over the
    window's rows inside the image, the horizontal pass ``Σ w[k]·row[x+k]`` over the
    zero-padded rows, then the formula: the operations of the C kernel this replaces. Every
    loop runs along a contiguous row, so LLVM vectorises it, and takes three rows (four taps)
    at a time, which keeps the accumulators' loads and stores few without changing the order
    of the additions (the first group is stored, not added to zero: that only drops the sign
    of a zero). The five rows of the vertical pass lie one after the other, each with its zero
    padding, so one horizontal pass does all five (the outputs between them are not used); with
    symmetric taps it adds the two rows of each pair before multiplying by their weight (6
    instead of 11 multiplications). The map is summed per column, then the columns. Those two
    are the only changes to the order of the arithmetic; and like the C kernel (GCC contracts
    ``a * b + c`` by default) this one allows fused multiply-adds (``fastmath={"contract"}``,
    nothing else: no reordering, NaN and infinity as IEEE). Each changes a value by ~1e-16
    relative; the tests hold the result to the NumPy formulas within 1e-12.
    """
    n_bands, h, wd = t.shape
    n = w.shape[0]
    r = n // 2
    seg = wd + 2 * r
    nout = 5 * seg - 2 * r
    vrow = np.zeros(5 * seg)  # the vertical pass's five rows in a row, r zeros around each
    hrow = np.empty(nout)
    colsum = np.zeros(wd)
    symmetric = n % 2 == 1  # and w[k] == w[n-1-k], as the Gaussian window is
    for k in range(r):
        symmetric = symmetric and w[k] == w[n - 1 - k]
    v0 = vrow[r:r + wd]
    v1 = vrow[seg + r:seg + r + wd]
    v2 = vrow[2 * seg + r:2 * seg + r + wd]
    v3 = vrow[3 * seg + r:3 * seg + r + wd]
    v4 = vrow[4 * seg + r:4 * seg + r + wd]
    for b in range(n_bands):
        for y in range(h):
            k = r - y if y < r else 0  # the window's rows inside the image: k .. k1
            k1 = h - 1 - y + r if y + r >= h else n - 1
            if k + 2 <= k1:  # the first three rows: written, not added
                wa, wb, wc = w[k], w[k + 1], w[k + 2]
                ta, tb, tc = t[b, y + k - r], t[b, y + k + 1 - r], t[b, y + k + 2 - r]
                pa, pb, pc = p[b, y + k - r], p[b, y + k + 1 - r], p[b, y + k + 2 - r]
                for x in range(wd):
                    a1, a2, a3 = np.float64(ta[x]), np.float64(tb[x]), np.float64(tc[x])
                    b1, b2, b3 = np.float64(pa[x]), np.float64(pb[x]), np.float64(pc[x])
                    x1, x2, x3 = wa * a1, wb * a2, wc * a3
                    y1, y2, y3 = wa * b1, wb * b2, wc * b3
                    v0[x] = x1 + x2 + x3
                    v1[x] = y1 + y2 + y3
                    v2[x] = x1 * a1 + x2 * a2 + x3 * a3
                    v3[x] = y1 * b1 + y2 * b2 + y3 * b3
                    v4[x] = x1 * b1 + x2 * b2 + x3 * b3
                k += 3
            else:
                v0[:] = 0.0
                v1[:] = 0.0
                v2[:] = 0.0
                v3[:] = 0.0
                v4[:] = 0.0
            while k + 2 <= k1:  # three window rows per pass
                wa, wb, wc = w[k], w[k + 1], w[k + 2]
                ta, tb, tc = t[b, y + k - r], t[b, y + k + 1 - r], t[b, y + k + 2 - r]
                pa, pb, pc = p[b, y + k - r], p[b, y + k + 1 - r], p[b, y + k + 2 - r]
                for x in range(wd):
                    a1, a2, a3 = np.float64(ta[x]), np.float64(tb[x]), np.float64(tc[x])
                    b1, b2, b3 = np.float64(pa[x]), np.float64(pb[x]), np.float64(pc[x])
                    x1, x2, x3 = wa * a1, wb * a2, wc * a3
                    y1, y2, y3 = wa * b1, wb * b2, wc * b3
                    v0[x] = v0[x] + x1 + x2 + x3
                    v1[x] = v1[x] + y1 + y2 + y3
                    v2[x] = v2[x] + x1 * a1 + x2 * a2 + x3 * a3
                    v3[x] = v3[x] + y1 * b1 + y2 * b2 + y3 * b3
                    v4[x] = v4[x] + x1 * b1 + x2 * b2 + x3 * b3
                k += 3
            if k + 1 <= k1:  # two
                wa, wb = w[k], w[k + 1]
                ta, tb = t[b, y + k - r], t[b, y + k + 1 - r]
                pa, pb = p[b, y + k - r], p[b, y + k + 1 - r]
                for x in range(wd):
                    a1, a2 = np.float64(ta[x]), np.float64(tb[x])
                    b1, b2 = np.float64(pa[x]), np.float64(pb[x])
                    x1, x2 = wa * a1, wb * a2
                    y1, y2 = wa * b1, wb * b2
                    v0[x] = v0[x] + x1 + x2
                    v1[x] = v1[x] + y1 + y2
                    v2[x] = v2[x] + x1 * a1 + x2 * a2
                    v3[x] = v3[x] + y1 * b1 + y2 * b2
                    v4[x] = v4[x] + x1 * b1 + x2 * b2
                k += 2
            if k <= k1:  # one
                wa = w[k]
                ta, pa = t[b, y + k - r], p[b, y + k - r]
                for x in range(wd):
                    a1, b1 = np.float64(ta[x]), np.float64(pa[x])
                    x1, y1 = wa * a1, wa * b1
                    v0[x] += x1
                    v1[x] += y1
                    v2[x] += x1 * a1
                    v3[x] += y1 * b1
                    v4[x] += x1 * b1
            src = vrow  # horizontal pass, over the five rows at once
            dst = hrow
            if symmetric:  # w[k] == w[n-1-k]: the two rows of a pair of taps are added first
                wc = w[r]
                sc = src[r:r + nout]
                k = 0
                if r >= 2:  # the centre and two pairs: written, not added
                    wa, wb = w[0], w[1]
                    sa, sa2 = src[0:nout], src[2 * r:2 * r + nout]
                    sb, sb2 = src[1:1 + nout], src[2 * r - 1:2 * r - 1 + nout]
                    for x in range(nout):
                        dst[x] = wc * sc[x] + wa * (sa[x] + sa2[x]) + wb * (sb[x] + sb2[x])
                    k = 2
                else:
                    for x in range(nout):
                        dst[x] = wc * sc[x]
                while k + 1 < r:  # two pairs per pass
                    wa, wb = w[k], w[k + 1]
                    sa, sa2 = src[k:k + nout], src[2 * r - k:2 * r - k + nout]
                    sb, sb2 = src[k + 1:k + 1 + nout], src[2 * r - k - 1:2 * r - k - 1 + nout]
                    for x in range(nout):
                        dst[x] = dst[x] + wa * (sa[x] + sa2[x]) + wb * (sb[x] + sb2[x])
                    k += 2
                if k < r:
                    wa = w[k]
                    sa, sa2 = src[k:k + nout], src[2 * r - k:2 * r - k + nout]
                    for x in range(nout):
                        dst[x] = dst[x] + wa * (sa[x] + sa2[x])
            else:  # any taps: four per pass
                k = 0
                if n >= 4:  # the first four taps: written, not added
                    wa, wb, wc, we = w[0], w[1], w[2], w[3]
                    sa, sb, sc, sd = src[0:nout], src[1:1 + nout], src[2:2 + nout], src[3:3 + nout]
                    for x in range(nout):
                        dst[x] = wa * sa[x] + wb * sb[x] + wc * sc[x] + we * sd[x]
                    k = 4
                else:
                    dst[:] = 0.0
                while k + 3 < n:
                    wa, wb, wc, we = w[k], w[k + 1], w[k + 2], w[k + 3]
                    sa, sb = src[k:k + nout], src[k + 1:k + 1 + nout]
                    sc, sd = src[k + 2:k + 2 + nout], src[k + 3:k + 3 + nout]
                    for x in range(nout):
                        dst[x] = dst[x] + wa * sa[x] + wb * sb[x] + wc * sc[x] + we * sd[x]
                    k += 4
                if k + 2 < n:
                    wa, wb, wc = w[k], w[k + 1], w[k + 2]
                    sa, sb, sc = src[k:k + nout], src[k + 1:k + 1 + nout], src[k + 2:k + 2 + nout]
                    for x in range(nout):
                        dst[x] = dst[x] + wa * sa[x] + wb * sb[x] + wc * sc[x]
                elif k + 1 < n:
                    wa, wb = w[k], w[k + 1]
                    sa, sb = src[k:k + nout], src[k + 1:k + 1 + nout]
                    for x in range(nout):
                        dst[x] = dst[x] + wa * sa[x] + wb * sb[x]
                elif k < n:
                    wa = w[k]
                    sa = src[k:k + nout]
                    for x in range(nout):
                        dst[x] += wa * sa[x]
            m1, m2, e11 = hrow[0:wd], hrow[seg:seg + wd], hrow[2 * seg:2 * seg + wd]
            e22, e12 = hrow[3 * seg:3 * seg + wd], hrow[4 * seg:4 * seg + wd]
            for x in range(wd):  # the reference formula
                mu12 = m1[x] * m2[x]
                mu11 = m1[x] * m1[x]
                mu22 = m2[x] * m2[x]
                num = (2.0 * mu12 + c1) * (2.0 * (e12[x] - mu12) + c2)
                den = (mu11 + mu22 + c1) * ((e11[x] - mu11) + (e22[x] - mu22) + c2)
                colsum[x] += num / den
    total = 0.0
    for x in range(wd):
        total += colsum[x]
    return total


@native.jit
def _errors_kernel(p: np.ndarray, t: np.ndarray, cls: np.ndarray,
                   out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Error sums and spectral angles of ``p`` against ``t``, ``(B, M)`` C-contiguous.

    ``cls`` ``(M,)`` uint8: 1 cloudy, 2 clear, 0 neither (empty: no classes). ``out`` (9,):
    sum d², sum |d|, cloudy: sum d², sum |d|, pixels, clear: sum d², sum |d|, pixels, and the
    sum of the spectral angles (radians).
    """
    n_bands, m = t.shape
    sq = np.empty(TILE)
    ab = np.empty(TILE)
    dot = np.empty(TILE)
    tt = np.empty(TILE)
    pp = np.empty(TILE)
    cos = np.empty(TILE)
    has_cls = cls.shape[0] > 0
    # the totals in local variables (registers), added to in the same order as out[] would be
    all_sq = all_ab = cloudy_sq = cloudy_ab = cloudy_n = clear_sq = clear_ab = clear_n = 0.0
    angles = 0.0
    for m0 in range(0, m, TILE):
        w = min(m - m0, TILE)
        # the band sums per pixel, in band order; the first band is stored (0 + x is x but for
        # the sign of a zero), then two bands per pass: fewer loads and stores of the sums
        pr = p[0, m0:m0 + w]
        tr = t[0, m0:m0 + w]
        for i in range(w):
            a = np.float64(tr[i])
            c = np.float64(pr[i])
            d = a - c
            sq[i] = d * d
            ab[i] = abs(d)
            dot[i] = a * c
            tt[i] = a * a
            pp[i] = c * c
        for b in range(1, n_bands - 1, 2):
            pr, pr2 = p[b, m0:m0 + w], p[b + 1, m0:m0 + w]
            tr, tr2 = t[b, m0:m0 + w], t[b + 1, m0:m0 + w]
            for i in range(w):
                a, a2 = np.float64(tr[i]), np.float64(tr2[i])
                c, c2 = np.float64(pr[i]), np.float64(pr2[i])
                d, d2 = a - c, a2 - c2
                sq[i] = sq[i] + d * d + d2 * d2
                ab[i] = ab[i] + abs(d) + abs(d2)
                dot[i] = dot[i] + a * c + a2 * c2
                tt[i] = tt[i] + a * a + a2 * a2
                pp[i] = pp[i] + c * c + c2 * c2
        if n_bands > 1 and n_bands % 2 == 0:  # the last band
            pr = p[n_bands - 1, m0:m0 + w]
            tr = t[n_bands - 1, m0:m0 + w]
            for i in range(w):
                a = np.float64(tr[i])
                c = np.float64(pr[i])
                d = a - c
                sq[i] += d * d
                ab[i] += abs(d)
                dot[i] += a * c
                tt[i] += a * a
                pp[i] += c * c
        for i in range(w):  # the cosines of the spectral angles, vectorised
            c = dot[i] / np.sqrt(tt[i]) / np.sqrt(pp[i])
            cos[i] = 1.0 if c > 1.0 else (-1.0 if c < -1.0 else c)  # NaN stays NaN
        for i in range(w):
            all_sq += sq[i]
            all_ab += ab[i]
            k = cls[m0 + i] if has_cls else 0
            # selects, not branches (a mixed mask mispredicts); adding +0.0 changes nothing here
            cloudy_sq += sq[i] if k == 1 else 0.0
            cloudy_ab += ab[i] if k == 1 else 0.0
            cloudy_n += 1.0 if k == 1 else 0.0
            clear_sq += sq[i] if k == 2 else 0.0
            clear_ab += ab[i] if k == 2 else 0.0
            clear_n += 1.0 if k == 2 else 0.0
            angles += np.arccos(cos[i])
    out[0] = all_sq
    out[1] = all_ab
    out[2] = cloudy_sq
    out[3] = cloudy_ab
    out[4] = cloudy_n
    out[5] = clear_sq
    out[6] = clear_ab
    out[7] = clear_n
    out[8] = angles


@cache
def _available() -> bool:
    """True where numba compiles the kernels; logs once where the NumPy formulas run instead."""
    if native.available():
        return True
    logger.warning("numba is not installed: the image metrics run in NumPy (~5x slower); "
                   "pip install numba")
    return False


def _contiguous(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images C-contiguous in one kernel type: float32 if both are, else float64."""
    dtype = np.float32 if a.dtype == b.dtype == np.float32 else np.float64
    return np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def ssim_sum(pred: np.ndarray, target: np.ndarray, taps: np.ndarray, c1: float,
             c2: float) -> float | None:
    """Sum of the SSIM map of two ``(..., H, W)`` images with the 1-D window ``taps``; or None.

    Parameters
    ----------
    pred, target
        The images, float32 or float64 (others are read as float64), of the same shape.
    taps
        The 1-D window (an odd number of taps); the 2-D window is its outer product.
    c1, c2
        The SSIM constants.

    Returns
    -------
    float or None
        The sum over all bands and pixels, or None where numba is not installed or the images
        are empty (the caller then takes the mean of the NumPy SSIM map).
    """
    if not _available() or pred.ndim < 2 or pred.size == 0:
        return None
    p, t = _contiguous(pred, target)
    h, wd = p.shape[-2:]
    w = np.ascontiguousarray(taps, dtype=np.float64)
    return float(_ssim_kernel(p.reshape(-1, h, wd), t.reshape(-1, h, wd), w, float(c1), float(c2)))


def error_sums(pred: np.ndarray, target: np.ndarray, classes: np.ndarray | None) -> np.ndarray | None:
    """Error sums and summed spectral angles of two ``(band, H, W)`` images; or None.

    Parameters
    ----------
    pred, target
        The images, float32 or float64, of the same shape.
    classes
        ``(H, W)`` uint8: 1 cloudy, 2 clear, 0 neither; or None.

    Returns
    -------
    numpy.ndarray or None
        float64 (9,): ``sum d², sum |d|``, cloudy: ``sum d², sum |d|``, pixels, clear:
        ``sum d², sum |d|``, pixels, and the sum of the spectral angles in radians. None where numba is not
        installed or with NaN in the data (whose NumPy semantics, NaN-skipping for the
        cloudy/clear split, the caller keeps).
    """
    if not _available() or pred.ndim < 2 or pred.size == 0:
        return None
    p, t = _contiguous(pred, target)
    m = p.shape[-2] * p.shape[-1]
    cls = (np.zeros(0, np.uint8) if classes is None
           else np.ascontiguousarray(classes, dtype=np.uint8).reshape(-1))
    out = np.zeros(9)
    _errors_kernel(p.reshape(-1, m), t.reshape(-1, m), cls, out)
    return None if np.isnan(out[0]) else out


# --- a pixel mask: the scores of the seq2seq protocol (gapped pixels only) ----------------------

@native.jit
def _ssim_masked_kernel(p: np.ndarray, t: np.ndarray, w: np.ndarray, c1: float, c2: float,
                        m: np.ndarray) -> float:  # pragma: no cover (compiled)
    """Sum over bands and over the pixels of ``m`` of the SSIM map of ``p`` and ``t``.

    ``p``, ``t`` ``(B, H, W)`` C-contiguous, ``m`` ``(H, W)`` uint8 (nonzero: summed). The
    map is :func:`_ssim_kernel`'s (zero padding, same size), written plainly: only the rows
    holding a pixel of ``m`` get the vertical pass, only the pixels of ``m`` the horizontal
    pass and the formula, so a small gap costs little. IEEE arithmetic in the order written
    (no fused multiply-adds): equal to the NumPy map's values within ~1e-15 relative.
    """
    n_bands, h, wd = t.shape
    n = w.shape[0]
    r = n // 2
    v0 = np.zeros(wd)
    v1 = np.zeros(wd)
    v2 = np.zeros(wd)
    v3 = np.zeros(wd)
    v4 = np.zeros(wd)
    rows = np.zeros(h, np.bool_)
    for y in range(h):
        for x in range(wd):
            if m[y, x] != 0:
                rows[y] = True
                break
    total = 0.0
    for b in range(n_bands):
        for y in range(h):
            if not rows[y]:
                continue
            v0[:] = 0.0
            v1[:] = 0.0
            v2[:] = 0.0
            v3[:] = 0.0
            v4[:] = 0.0
            for k in range(n):  # the vertical pass over the window's rows inside the image
                yy = y + k - r
                if yy < 0 or yy >= h:
                    continue
                wk = w[k]
                ta = t[b, yy]
                pa = p[b, yy]
                for x in range(wd):
                    a = np.float64(ta[x])
                    c = np.float64(pa[x])
                    v0[x] += wk * a
                    v1[x] += wk * c
                    v2[x] += wk * (a * a)
                    v3[x] += wk * (c * c)
                    v4[x] += wk * (a * c)
            for x in range(wd):  # the horizontal pass and the formula, at the mask's pixels
                if m[y, x] == 0:
                    continue
                m1 = m2 = e11 = e22 = e12 = 0.0
                for k in range(n):
                    xx = x + k - r
                    if xx < 0 or xx >= wd:
                        continue
                    wk = w[k]
                    m1 += wk * v0[xx]
                    m2 += wk * v1[xx]
                    e11 += wk * v2[xx]
                    e22 += wk * v3[xx]
                    e12 += wk * v4[xx]
                mu12 = m1 * m2
                mu11 = m1 * m1
                mu22 = m2 * m2
                num = (2.0 * mu12 + c1) * (2.0 * (e12 - mu12) + c2)
                den = (mu11 + mu22 + c1) * ((e11 - mu11) + (e22 - mu22) + c2)
                total += num / den
    return total


def ssim_masked_sum(pred: np.ndarray, target: np.ndarray, taps: np.ndarray, c1: float, c2: float,
                    mask: np.ndarray) -> float | None:
    """Sum of the SSIM map of two ``(B, H, W)`` images over the pixels of ``mask``; or None.

    Parameters
    ----------
    pred, target
        The images, float32 or float64, of the same shape.
    taps
        The 1-D window (an odd number of taps).
    c1, c2
        The SSIM constants.
    mask
        ``(H, W)``: the pixels whose map values are summed (over every band).

    Returns
    -------
    float or None
        The sum, or None where numba is not installed or the images are empty (the caller
        then sums the NumPy SSIM map over the mask).
    """
    if not _available() or pred.ndim != 3 or pred.size == 0:
        return None
    p, t = _contiguous(pred, target)
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.shape != p.shape[-2:]:
        raise ValueError(f"mask has shape {m.shape}; the images are {p.shape[-2:]} pixels")
    w = np.ascontiguousarray(taps, dtype=np.float64)
    return float(_ssim_masked_kernel(p, t, w, float(c1), float(c2), m))
