"""The reference metrics of one image as compiled kernels, for :mod:`s2cube.analysis.metrics`.

Scoring a 13-band 256² sample with NumPy costs ~230 ms, ten times the cost of
decompressing it: SSIM alone runs five images through 22 full-array passes of the
separable window, and the error sums and SAM make a dozen more passes and temporaries.
Two kernels do the same arithmetic in cache (:data:`KERNEL_C`, compiled on first use by
:mod:`s2cube.kernels.native`), in float64, and agree with the NumPy formulas of
:mod:`s2cube.analysis.metrics` to ~1e-12 (only the order of the additions differs):

- ``s2c_ssim_sum``: the sum of the SSIM map, one output row at a time: the vertical pass of
  ``x, y, x², y², xy`` over the window's rows, the horizontal pass, the formula; four
  pixels per vector (AVX2 + FMA where the CPU has them, chosen at run time; two otherwise);
- ``s2c_errors``: per tile of pixels, the band sums of ``d²``, ``|d|``, ``x·y``, ``x²``,
  ``y²``, then the totals over all pixels and over the cloudy and the clear ones, and the
  spectral angle of each pixel.

Each function here returns None where the kernel is unavailable (no compiler) or does not
apply (NaN in the data, for the error sums); the caller then runs the NumPy formulas.
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from string import Template

import numpy as np

from s2cube.kernels import native

logger = logging.getLogger(__name__)

_SSIM_BODY = Template(r"""
$attr static double ssim_sum_$name(const $T *p, const $T *t, int64_t B, int64_t H,
                                   int64_t W, const double *w, int64_t r, double c1, double c2,
                                   double *vrow, double *out) {
  typedef double vec __attribute__((vector_size($bytes)));
  typedef double uvec __attribute__((vector_size($bytes), aligned(8)));
  typedef $T tvec __attribute__((vector_size($lanes * sizeof($T)), aligned(sizeof($T))));
  const int L = $lanes;
  int64_t n = 2 * r + 1, Wp = W + 2 * r + 2 * L, Wo = W + 2 * L, WL = W - W % L;
  double total = 0.0;
  for (int64_t b = 0; b < B; b++) {
    const $T *pb = p + b * H * W, *tb = t + b * H * W;
    for (int64_t y = 0; y < H; y++) {
      int64_t k0 = y < r ? r - y : 0, k1 = y + r >= H ? H - 1 - y + r : n - 1;
      double *v0 = vrow + r, *v1 = v0 + Wp, *v2 = v1 + Wp, *v3 = v2 + Wp, *v4 = v3 + Wp;
      for (int64_t x = 0; x < WL; x += L) {  /* vertical pass, L pixels in registers */
        vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0};
        for (int64_t k = k0; k <= k1; k++) {
          const double wk = w[k];
          const int64_t o = (y + k - r) * W + x;
          vec a = __builtin_convertvector(*(const tvec *)(tb + o), vec);
          vec c = __builtin_convertvector(*(const tvec *)(pb + o), vec);
          vec wa = wk * a, wc = wk * c;
          a0 += wa; a1 += wc; a2 += wa * a; a3 += wc * c; a4 += wa * c;
        }
        *(uvec *)(v0 + x) = a0; *(uvec *)(v1 + x) = a1; *(uvec *)(v2 + x) = a2;
        *(uvec *)(v3 + x) = a3; *(uvec *)(v4 + x) = a4;
      }
      for (int64_t x = WL; x < W; x++) {
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
        for (int64_t k = k0; k <= k1; k++) {
          const double wk = w[k];
          const int64_t o = (y + k - r) * W + x;
          double a = tb[o], c = pb[o], wa = wk * a, wc = wk * c;
          a0 += wa; a1 += wc; a2 += wa * a; a3 += wc * c; a4 += wa * c;
        }
        v0[x] = a0; v1[x] = a1; v2[x] = a2; v3[x] = a3; v4[x] = a4;
      }
      for (int q = 0; q < 5; q++) {  /* horizontal pass; reads past W land in zero padding */
        const double *src = vrow + q * Wp;
        double *dst = out + q * Wo;
        for (int64_t x = 0; x < W; x += 2 * L) {  /* two vectors: independent chains */
          vec acc = {0}, acc2 = {0};
          for (int64_t k = 0; k < n; k++) {
            acc += w[k] * *(const uvec *)(src + x + k);
            acc2 += w[k] * *(const uvec *)(src + x + L + k);
          }
          *(uvec *)(dst + x) = acc;
          *(uvec *)(dst + x + L) = acc2;
        }
      }
      const double *m1 = out, *m2 = out + Wo, *e11 = out + 2 * Wo, *e22 = out + 3 * Wo;
      const double *e12 = out + 4 * Wo;
      vec acc = {0};
      for (int64_t x = 0; x < WL; x += L) {
        vec u1 = *(const uvec *)(m1 + x), u2 = *(const uvec *)(m2 + x);
        vec mu12 = u1 * u2, mu11 = u1 * u1, mu22 = u2 * u2;
        vec num = (2.0 * mu12 + c1) * (2.0 * (*(const uvec *)(e12 + x) - mu12) + c2);
        vec den = (mu11 + mu22 + c1)
                  * ((*(const uvec *)(e11 + x) - mu11) + (*(const uvec *)(e22 + x) - mu22) + c2);
        acc += num / den;
      }
      double row = 0.0;
      for (int i = 0; i < L; i++) row += acc[i];
      for (int64_t x = WL; x < W; x++) {
        double mu12 = m1[x] * m2[x], mu11 = m1[x] * m1[x], mu22 = m2[x] * m2[x];
        double num = (2.0 * mu12 + c1) * (2.0 * (e12[x] - mu12) + c2);
        double den = (mu11 + mu22 + c1) * ((e11[x] - mu11) + (e22[x] - mu22) + c2);
        row += num / den;
      }
      total += row;
    }
  }
  return total;
}
""")

_ENTRIES = Template(r"""
/* Sum over bands and pixels of the SSIM map of p and t, (B, H, W) $T contiguous; w: the
   2r+1 taps of the window. *status = 1 when out of memory (the caller then uses NumPy). */
double s2c_ssim_sum_$sfx(const $T *p, const $T *t, int64_t B, int64_t H, int64_t W,
                         const double *w, int64_t r, double c1, double c2, int64_t *status) {
  double *vrow = calloc(5 * (W + 2 * r + 8), sizeof(double));  /* zero-padded rows, 2L <= 8 */
  double *out = calloc(5 * (W + 8), sizeof(double));
  double total = 0.0;
  *status = !vrow || !out;
  if (!*status) {
#ifdef HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      total = ssim_sum_avx2_$sfx(p, t, B, H, W, w, r, c1, c2, vrow, out);
    else
#endif
      total = ssim_sum_generic_$sfx(p, t, B, H, W, w, r, c1, c2, vrow, out);
  }
  free(vrow);
  free(out);
  return total;
}

/* Error sums and spectral angles of p against t, (B, M) $T contiguous. cls (M): 1
   cloudy, 2 clear, 0 neither (may be NULL). out: [sum d², sum |d|, cloudy: sum d², sum |d|,
   pixels, clear: sum d², sum |d|, pixels, sum of the angles (radians)]. */
CLONES void s2c_errors_$sfx(const $T *p, const $T *t, int64_t B, int64_t M, const uint8_t *cls,
                     double *out) {
  double sq[TILE], ab[TILE], dot[TILE], tt[TILE], pp[TILE];
  for (int i = 0; i < 9; i++) out[i] = 0.0;
  for (int64_t m0 = 0; m0 < M; m0 += TILE) {
    int64_t w = M - m0 < TILE ? M - m0 : TILE;
    for (int64_t i = 0; i < w; i++) { sq[i] = 0; ab[i] = 0; dot[i] = 0; tt[i] = 0; pp[i] = 0; }
    for (int64_t b = 0; b < B; b++) {
      const $T *pr = p + b * M + m0, *tr = t + b * M + m0;
      for (int64_t i = 0; i < w; i++) {
        double a = tr[i], c = pr[i], d = a - c;
        sq[i] += d * d; ab[i] += fabs(d); dot[i] += a * c; tt[i] += a * a; pp[i] += c * c;
      }
    }
    for (int64_t i = 0; i < w; i++) {
      out[0] += sq[i];
      out[1] += ab[i];
      int k = cls ? cls[m0 + i] : 0;
      if (k) {
        double *o = out + (k == 1 ? 2 : 5);
        o[0] += sq[i]; o[1] += ab[i]; o[2] += 1.0;
      }
      double cosv = dot[i] / sqrt(tt[i]) / sqrt(pp[i]);
      cosv = cosv > 1.0 ? 1.0 : (cosv < -1.0 ? -1.0 : cosv);  /* NaN stays NaN */
      out[8] += acos(cosv);
    }
  }
}
""")

#: input types the kernels take (float32 images are read as they are, widened in registers)
TYPES = {"f64": "double", "f32": "float"}


def _kernel_source() -> str:
    parts = ["#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n#define TILE 1024\n",
             "#if defined(__x86_64__) && defined(__GNUC__)\n#define HAVE_AVX2 1\n"
             "#define CLONES __attribute__((target_clones(\"avx2\", \"default\")))\n"
             "#else\n#define CLONES\n#endif\n"]
    for sfx, ctype in TYPES.items():
        parts.append(_SSIM_BODY.substitute(name=f"generic_{sfx}", attr="", bytes=16, lanes=2,
                                           T=ctype))
        parts.append("#ifdef HAVE_AVX2\n" + _SSIM_BODY.substitute(
            name=f"avx2_{sfx}", attr='__attribute__((target("avx2,fma")))', bytes=32, lanes=4,
            T=ctype) + "#endif\n")
        parts.append(_ENTRIES.substitute(T=ctype, sfx=sfx))
    return "".join(parts)


KERNEL_C = _kernel_source()


@lru_cache(maxsize=1)
def _library():
    """The compiled kernels with their signatures, or None where they cannot be built."""
    try:
        lib = native.load_library(KERNEL_C, "metrics")
    except native.NativeUnavailable as exc:
        logger.info("metric kernels unavailable, using NumPy (~5x slower): %s", exc)
        return None
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for sfx in TYPES:
        ssim = getattr(lib, f"s2c_ssim_sum_{sfx}")
        ssim.argtypes = [p, p, i64, i64, i64, p, i64, f64, f64, p]
        ssim.restype = f64
        errors = getattr(lib, f"s2c_errors_{sfx}")
        errors.argtypes = [p, p, i64, i64, p, p]
        errors.restype = None
    return lib


def _contiguous(a: np.ndarray, b: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """Both images C-contiguous in one kernel type: float32 if both are, else float64."""
    dtype = np.float32 if a.dtype == b.dtype == np.float32 else np.float64
    sfx = "f32" if dtype == np.float32 else "f64"
    return sfx, np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def ssim_sum(pred: np.ndarray, target: np.ndarray, taps: np.ndarray, c1: float,
             c2: float) -> float | None:
    """Sum of the SSIM map of two ``(..., H, W)`` images with the 1-D window ``taps``; or None."""
    lib = _library()
    if lib is None or pred.ndim < 2 or pred.size == 0:
        return None
    sfx, p, t = _contiguous(pred, target)
    w = np.ascontiguousarray(taps, dtype=np.float64)
    h, wd = p.shape[-2:]
    status = ctypes.c_int64(0)
    kernel = getattr(lib, f"s2c_ssim_sum_{sfx}")
    total = kernel(p.ctypes.data, t.ctypes.data, p.size // (h * wd), h, wd,
                             w.ctypes.data, len(w) // 2, c1, c2, ctypes.byref(status))
    return None if status.value else float(total)


def error_sums(pred: np.ndarray, target: np.ndarray, classes: np.ndarray | None) -> np.ndarray | None:
    """Error sums and summed spectral angles of two ``(band, H, W)`` images; or None.

    ``classes`` ``(H, W)`` uint8: 1 cloudy, 2 clear, 0 neither. Returns the 9 values of
    ``s2c_errors`` (see :data:`KERNEL_C`), or None without the kernel or with NaN in the data
    (whose NumPy semantics, NaN-skipping for the cloudy/clear split, the caller keeps).
    """
    lib = _library()
    if lib is None or pred.ndim < 2 or pred.size == 0:
        return None
    sfx, p, t = _contiguous(pred, target)
    m = p.shape[-2] * p.shape[-1]
    cls = None if classes is None else np.ascontiguousarray(classes, dtype=np.uint8)
    out = np.zeros(9)
    kernel = getattr(lib, f"s2c_errors_{sfx}")
    kernel(p.ctypes.data, t.ctypes.data, p.size // m, m,
           None if cls is None else cls.ctypes.data, out.ctypes.data)
    return None if np.isnan(out[0]) else out
