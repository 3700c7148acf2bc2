"""The hot kernels side by side: the C kernels they replace, numba, and the NumPy twins/fallbacks.

Until now s2cube compiled three C kernels with the machine's ``cc`` at first use and fell back to
NumPy where there was none; they are now numba kernels (:mod:`s2cube.kernels.native`). This
script compiles the old C sources (kept below, verbatim, for this comparison only: it is the one
place that still needs a C compiler) and times, in one run and on the same inputs made of the
real Sentinel-2 pixels shipped with s2cube_conversion:

* the clear-value median of a 30-slot series of one 13-band patch (``clear_median``);
* the reference metrics of one 13-band image, float64 and float32 (``ssim_sum``,
  ``error_sums`` and the whole ``image_metrics``);
* s2cloudless's LightGBM model on 256² frames (``KernelEngine.predict_frames``, one thread).

Each time is per call after warm-up (JIT compilation done): the minimum over interleaved rounds
of the calling thread's CPU time (the kernels run on one thread; on a shared machine this is
what other processes disturb least), with the minimum wall-clock time beside it. "numba vs C"
is C's time / numba's (≥ 100 % means numba is as fast or faster). Values are compared bit for
bit where the kernels are exact, else as the largest relative difference.

A second table gives numba's one-off costs, measured in fresh interpreters: ``import numba``,
then each kernel's first call (compilation + one run) with an empty ``NUMBA_CACHE_DIR`` (cold),
the compilation alone (first call − a steady call), and the first call of a second interpreter
that loads the machine code from the cache the first one left (warm).

    .venv/bin/python benchmarks/bench_kernels.py [--repeat 30] [--size 256] [--slots 30]
        [--frames 4] [--no-jit-costs] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# --- the C kernels this replaced (s2cube 0.1.0, removed from the package) ---------------------

MEDIAN_C = r"""
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

FOREST_C = r"""
#include <math.h>
#include <stdint.h>

#define LANES 8
#define CHECK 4
#define BLOCK 1024
#define NFEAT 16

/* node word: bits 0-3 feature, 4-11 threshold bin, 12 leaf flag, 16-31 left child (the right
   child is the next node). A leaf points to itself with threshold 255, so it never moves. */
static inline uint32_t step(const uint32_t *w, const uint8_t *x, uint32_t k) {
  uint32_t q = w[k];
  return (q >> 16) + (x[q & 15u] > ((q >> 4) & 255u));
}

void s2c_forest_proba(const uint8_t *bins, int64_t n, const uint32_t *words,
                      const double *values, const int32_t *offsets, const int32_t *depths,
                      int32_t n_trees, double sigmoid, float *prob) {
  double acc[BLOCK];
  for (int64_t start = 0; start < n; start += BLOCK) {
    int m = (int)((n - start) < BLOCK ? (n - start) : BLOCK);
    const uint8_t *xb = bins + start * NFEAT;
    for (int i = 0; i < m; i++) acc[i] = 0.0;
    for (int t = 0; t < n_trees; t++) {
      const uint32_t *w = words + offsets[t];
      const double *v = values + offsets[t];
      const int depth = depths[t];
      const uint8_t *x = xb;
      int i = 0;
      for (; i + LANES <= m; i += LANES, x += LANES * NFEAT) {
        uint32_t k[LANES] = {0};
        for (int d = 0; d < depth; d += CHECK) {
          for (int c = 0; c < CHECK; c++)
            for (int l = 0; l < LANES; l++) k[l] = step(w, x + l * NFEAT, k[l]);
          uint32_t leaves = 1u;
          for (int l = 0; l < LANES; l++) leaves &= w[k[l]] >> 12;
          if (leaves & 1u) break;
        }
        for (int l = 0; l < LANES; l++) acc[i + l] += v[k[l]];
      }
      for (; i < m; i++, x += NFEAT) {
        uint32_t k = 0;
        for (int d = 0; d < depth; d++) k = step(w, x, k);
        acc[i] += v[k];
      }
    }
    for (int i = 0; i < m; i++)
      prob[start + i] = (float)(1.0 / (1.0 + exp(-sigmoid * acc[i])));
  }
}
"""


def _metrics_source() -> str:
    """The metrics kernels' C source, as s2cube generated it (float64 and float32 entries)."""
    parts = ["#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n#define TILE 1024\n",
             "#if defined(__x86_64__) && defined(__GNUC__)\n#define HAVE_AVX2 1\n"
             "#define CLONES __attribute__((target_clones(\"avx2\", \"default\")))\n"
             "#else\n#define CLONES\n#endif\n"]
    for sfx, ctype in {"f64": "double", "f32": "float"}.items():
        parts.append(_SSIM_BODY.substitute(name=f"generic_{sfx}", attr="", bytes=16, lanes=2,
                                           T=ctype))
        parts.append("#ifdef HAVE_AVX2\n" + _SSIM_BODY.substitute(
            name=f"avx2_{sfx}", attr='__attribute__((target("avx2,fma")))', bytes=32, lanes=4,
            T=ctype) + "#endif\n")
        parts.append(_ENTRIES.substitute(T=ctype, sfx=sfx))
    return "".join(parts)


def _compile(source: str, name: str, workdir: Path) -> ctypes.CDLL:
    """``cc -O3 -shared -fPIC`` as s2cube did (``$CC`` or cc/gcc/clang), loaded with ctypes."""
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang")
               if c and shutil.which(c.split()[0])), None)
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    src, lib = workdir / f"{name}.c", workdir / f"{name}.so"
    src.write_text(source)
    subprocess.run([*cc.split(), "-O3", "-shared", "-fPIC", "-o", str(lib), str(src), "-lm"],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


class CKernels:
    """The old C kernels behind the old Python wrappers (same preparation work per call)."""

    def __init__(self, workdir: Path) -> None:
        p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
        started = time.perf_counter()
        self.median_fn = _compile(MEDIAN_C, "median", workdir).s2c_clear_median
        self.median_fn.argtypes = [p, p, p, i64, i64, i64, i64, i64, p, i64, i64, p]
        self.median_fn.restype = None
        self.metrics = _compile(_metrics_source(), "metrics", workdir)
        for sfx in ("f64", "f32"):
            ssim = getattr(self.metrics, f"s2c_ssim_sum_{sfx}")
            ssim.argtypes = [p, p, i64, i64, i64, p, i64, f64, f64, p]
            ssim.restype = f64
            errors = getattr(self.metrics, f"s2c_errors_{sfx}")
            errors.argtypes = [p, p, i64, i64, p, p]
            errors.restype = None
        self.forest_fn = _compile(FOREST_C, "forest", workdir).s2c_forest_proba
        self.forest_fn.argtypes = [p, ctypes.c_int64, p, p, p, p, ctypes.c_int32, ctypes.c_double, p]
        self.forest_fn.restype = None
        self.compile_s = time.perf_counter() - started

    def clear_median(self, values: np.ndarray, clear: np.ndarray) -> np.ndarray:
        from s2cube.kernels.median import _network

        t, b, m = values.shape
        count = clear.sum(axis=0, dtype=np.uint8 if t < 256 else np.int64)
        if values.strides[2] != values.itemsize:
            values = np.ascontiguousarray(values)
        hide = np.where(clear, np.uint16(0), np.uint16(0xFFFF))
        size, pairs = _network(t)
        out = np.empty((b, m), np.float32)
        step = values.itemsize
        self.median_fn(values.ctypes.data, hide.ctypes.data, count.ctypes.data, t, b, m,
                       values.strides[0] // step, values.strides[1] // step, pairs.ctypes.data,
                       len(pairs), size, out.ctypes.data)
        return out

    @staticmethod
    def _contiguous(a: np.ndarray, b: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
        dtype = np.float32 if a.dtype == b.dtype == np.float32 else np.float64
        sfx = "f32" if dtype == np.float32 else "f64"
        return sfx, np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)

    def ssim_sum(self, pred: np.ndarray, target: np.ndarray, taps: np.ndarray, c1: float,
                 c2: float) -> float | None:
        sfx, p, t = self._contiguous(pred, target)
        w = np.ascontiguousarray(taps, dtype=np.float64)
        h, wd = p.shape[-2:]
        status = ctypes.c_int64(0)
        total = getattr(self.metrics, f"s2c_ssim_sum_{sfx}")(
            p.ctypes.data, t.ctypes.data, p.size // (h * wd), h, wd, w.ctypes.data, len(w) // 2,
            c1, c2, ctypes.byref(status))
        return None if status.value else float(total)

    def error_sums(self, pred: np.ndarray, target: np.ndarray,
                   classes: np.ndarray | None) -> np.ndarray | None:
        sfx, p, t = self._contiguous(pred, target)
        m = p.shape[-2] * p.shape[-1]
        cls = None if classes is None else np.ascontiguousarray(classes, dtype=np.uint8)
        out = np.zeros(9)
        getattr(self.metrics, f"s2c_errors_{sfx}")(p.ctypes.data, t.ctypes.data, p.size // m, m,
                                                   None if cls is None else cls.ctypes.data,
                                                   out.ctypes.data)
        return None if np.isnan(out[0]) else out

    def predict_frames(self, tables: Any, dn: np.ndarray) -> np.ndarray:
        from s2cube_conversion._treemodel import _NFEAT, MODEL_BAND_IDS

        f, _, h, w = dn.shape
        bins = np.zeros((f, h, w, _NFEAT), np.uint8)
        for j, band in enumerate(MODEL_BAND_IDS):
            bins[..., j] = tables.lut[j][dn[:, band]]
        bins = bins.reshape(-1, _NFEAT)
        out = np.empty(bins.shape[0], np.float32)
        self.forest_fn(bins.ctypes.data, bins.shape[0], tables.words.ctypes.data,
                       tables.values.ctypes.data, tables.offsets.ctypes.data,
                       tables.depths.ctypes.data, tables.depths.size, tables.sigmoid,
                       out.ctypes.data)
        return out.reshape(f, h, w)


# --- inputs (real Sentinel-2 pixels) ------------------------------------------------------------


def _tile(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` (..., H, W) mirrored and repeated to (..., size, size)."""
    while img.shape[-2] < size or img.shape[-1] < size:
        img = np.concatenate([img, img[..., ::-1, :]], -2)
        img = np.concatenate([img, img[..., ::-1]], -1)
    return np.ascontiguousarray(img[..., :size, :size])


def make_inputs(size: int, slots: int, frames: int) -> dict[str, Any]:
    """The benchmark's inputs, all from the 5 real 13-band scenes (2 cloudy, 3 clear)."""
    from s2cube_conversion._realpixels import load_dn

    tiles = np.stack([_tile(scene, size) for scene in load_dn()])  # (5, 13, size, size) uint16
    rng = np.random.default_rng(0)
    series = np.stack([np.roll(tiles[t % 5], tuple(rng.integers(0, size, 2)), (-2, -1))
                       for t in range(slots)])
    target = tiles[2].astype(np.float64) / 10000
    pred = np.clip(target + rng.normal(0, 0.02, target.shape), 0, 1)  # a "reconstruction"
    masks = (tiles[:2, 1] > 2500).astype(np.uint8)  # bright blue in the cloudy scenes
    return {
        "series": series.reshape(slots, series.shape[1], -1),  # (T, 13, size²) uint16 DN
        "clear": rng.random((slots, size * size)) > 0.4,
        "pred": pred, "target": target, "masks": masks,
        "classes": np.where(masks.max(0) > 0, np.uint8(1), np.uint8(2)),
        "frames": np.minimum(tiles[np.arange(frames) % 5], 10000).astype(np.uint16),
    }


def numpy_error_sums(pred: np.ndarray, target: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The 9 sums of ``error_sums`` with NumPy, as the fallback of ``image_metrics`` computes them."""
    p, t = pred.astype(np.float64), target.astype(np.float64)
    d = t - p
    sq, ab = d * d, np.abs(d)
    s2, s1 = sq.sum(0).ravel(), ab.sum(0).ravel()
    cls = classes.ravel()
    out = [sq.sum(), ab.sum()]
    for k in (1, 2):
        sel = cls == k
        out += [s2[sel].sum(), s1[sel].sum(), float(sel.sum())]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (t * p).sum(0) / np.sqrt((t * t).sum(0)) / np.sqrt((p * p).sum(0))
        out.append(np.arccos(np.clip(cos, -1, 1)).sum())
    return np.array(out)


@contextlib.contextmanager
def _patched(module: Any, **attrs: Any) -> Iterator[None]:
    before = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(module, k, v)


# --- timing -----------------------------------------------------------------------------------


def measure(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Per call: min over ``rounds`` interleaved rounds of thread CPU time and of wall time (s)."""
    for fn in fns.values():
        fn()  # warm-up: JIT compilation, first-touch of buffers
    best = {k: {"cpu": np.inf, "wall": np.inf} for k in fns}
    order = list(fns.items())
    for i in range(rounds):
        for k, fn in order if i % 2 else order[::-1]:  # alternate who goes first
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            c1, w1 = time.thread_time(), time.perf_counter()
            best[k]["cpu"] = min(best[k]["cpu"], c1 - c0)
            best[k]["wall"] = min(best[k]["wall"], w1 - w0)
    return best


def _same_bits(a: Any, b: Any) -> str:
    a, b = np.asarray(a), np.asarray(b)
    same = a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return "bit-identical" if same else f"differ ({np.mean(a != b) * 100:.3g} % of values)"


def _rel(a: Any, b: Any) -> str:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.array_equal(a, b):
        return "bit-identical"
    scale = np.maximum(np.abs(b), np.finfo(np.float64).tiny)
    return f"max rel. diff {np.max(np.abs(a - b) / scale):.1e}"


def kernel_rows(inputs: dict[str, Any], ck: CKernels | None, rounds: int,
                lightgbm_rounds: int) -> list[dict[str, Any]]:
    """One row per kernel: times of C, numba and the fallback, and how their values compare."""
    from s2cube.analysis import metrics as M
    from s2cube.kernels import median
    from s2cube.kernels import metrics as fastmetrics

    rows = []

    def row(name: str, numba_fn: Callable, c_fn: Callable | None, fallback: str,
            fallback_fn: Callable, compare: Callable, fallback_rounds: int) -> None:
        fns = {"numba": numba_fn} | ({"C": c_fn} if c_fn is not None else {})
        times = measure(fns, rounds)
        times |= {"fallback": measure({"f": fallback_fn}, fallback_rounds)["f"]}
        got = numba_fn()
        rows.append({"kernel": name, "times": times, "fallback": fallback,
                     "vs_C": compare(got, c_fn()) if c_fn is not None else "n/a",
                     "vs_fallback": compare(got, fallback_fn())})

    series, clear = inputs["series"], inputs["clear"]
    t_, b_, m_ = series.shape
    row(f"clear_median ({t_} slots × {b_} bands × {m_} px, uint16)",
        lambda: median.clear_median(series, clear),
        (lambda: ck.clear_median(series, clear)) if ck else None, "NumPy network",
        lambda: median.clear_median(series, clear, native_kernel=False), _same_bits,
        max(2, rounds // 10))
    taps, c1, c2 = M.gaussian_window(), M.SSIM_C1, M.SSIM_C2
    for dtype in (np.float64, np.float32):
        p, t = inputs["pred"].astype(dtype), inputs["target"].astype(dtype)
        cls = inputs["classes"]
        label = f"{p.shape[0]} × {p.shape[1]}×{p.shape[2]}, {np.dtype(dtype).name}"
        row(f"ssim_sum ({label})", lambda p=p, t=t: fastmetrics.ssim_sum(p, t, taps, c1, c2),
            (lambda p=p, t=t: ck.ssim_sum(p, t, taps, c1, c2)) if ck else None,
            "NumPy ssim_map().sum()", lambda p=p, t=t: M.ssim_map(p, t).sum(), _rel,
            max(2, rounds // 5))
        row(f"error_sums ({label})", lambda p=p, t=t, cls=cls: fastmetrics.error_sums(p, t, cls),
            (lambda p=p, t=t, cls=cls: ck.error_sums(p, t, cls)) if ck else None,
            "NumPy formulas", lambda p=p, t=t, cls=cls: numpy_error_sums(p, t, cls), _rel,
            max(2, rounds // 5))

        def with_c(p=p, t=t):
            with _patched(fastmetrics, ssim_sum=ck.ssim_sum, error_sums=ck.error_sums):
                return np.array(list(M.image_metrics(p, t, inputs["masks"]).values()))

        def without(p=p, t=t):
            with _patched(fastmetrics, _available=lambda: False):
                return np.array(list(M.image_metrics(p, t, inputs["masks"]).values()))

        row(f"image_metrics, all 11 ({label})",
            lambda p=p, t=t: np.array(list(M.image_metrics(p, t, inputs["masks"]).values())),
            with_c if ck else None, "NumPy formulas", without, _rel, max(2, rounds // 5))

    try:
        import lightgbm

        from s2cube_conversion import _treemodel
    except ImportError:  # the convert extra is not installed
        return rows
    engine = _treemodel.KernelEngine(_treemodel.cache_dir(), threads=1)
    booster = lightgbm.Booster(model_file=_treemodel.model_file().path)
    frames = inputs["frames"]

    def lgbm() -> np.ndarray:
        x = np.moveaxis(frames[:, list(_treemodel.MODEL_BAND_IDS)], 1, -1).astype(np.float32)
        prob = booster.predict((x / 10000).reshape(-1, x.shape[-1]), num_threads=1)
        return prob.astype(np.float32).reshape(frames.shape[0], *frames.shape[2:])

    f_, _, h_, w_ = frames.shape
    row(f"cloud model ({f_} frame{'s' * (f_ != 1)} of {h_}×{w_}, 1 thread)",
        lambda: engine.predict_frames(frames),
        (lambda: ck.predict_frames(engine.tables, frames)) if ck else None,
        "LightGBM (s2cloudless's booster)", lgbm, _same_bits, lightgbm_rounds)
    return rows


# --- numba's one-off costs, in fresh interpreters ----------------------------------------------


def first_calls(opts: dict[str, int]) -> dict[str, Any]:
    """In this (fresh) interpreter: numba's import time, then each kernel's first and second call."""
    t0 = time.thread_time()
    import numba  # noqa: F401

    out: dict[str, Any] = {"import_numba_s": time.thread_time() - t0, "kernels": {}}
    from s2cube.analysis import metrics as M
    from s2cube.kernels import median
    from s2cube.kernels import metrics as fastmetrics

    inputs = make_inputs(opts["size"], opts["slots"], opts["frames"])
    taps, cls = M.gaussian_window(), inputs["classes"]
    p64, t64 = inputs["pred"], inputs["target"]
    p32, t32 = p64.astype(np.float32), t64.astype(np.float32)
    cases: list[tuple[str, Any, Callable]] = [
        ("clear_median (uint16)", median._median_kernel,
         lambda: median.clear_median(inputs["series"], inputs["clear"])),
        ("ssim_sum (float64)", fastmetrics._ssim_kernel,
         lambda: fastmetrics.ssim_sum(p64, t64, taps, M.SSIM_C1, M.SSIM_C2)),
        ("ssim_sum (float32)", fastmetrics._ssim_kernel,
         lambda: fastmetrics.ssim_sum(p32, t32, taps, M.SSIM_C1, M.SSIM_C2)),
        ("error_sums (float64)", fastmetrics._errors_kernel,
         lambda: fastmetrics.error_sums(p64, t64, cls)),
        ("error_sums (float32)", fastmetrics._errors_kernel,
         lambda: fastmetrics.error_sums(p32, t32, cls)),
    ]
    try:
        from s2cube_conversion import _treemodel

        engine = _treemodel.KernelEngine(_treemodel.cache_dir(), threads=1)  # tables: not timed
        cases.append(("cloud model", _treemodel._forest_kernel,
                      lambda: engine.predict_frames(inputs["frames"])))
    except ImportError:
        pass

    def stats(kernel: Any) -> tuple[int, int]:
        d = kernel._dispatcher
        if d is None:
            return 0, 0
        return sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())

    for name, kernel, call in cases:
        hits, misses = stats(kernel)
        c0, w0 = time.thread_time(), time.perf_counter()
        call()
        first_cpu, first_wall = time.thread_time() - c0, time.perf_counter() - w0
        steady = []
        for _ in range(3):
            c0 = time.thread_time()
            call()
            steady.append(time.thread_time() - c0)
        hits2, misses2 = stats(kernel)
        out["kernels"][name] = {"first_s": first_cpu, "first_wall_s": first_wall,
                                "steady_s": min(steady), "loaded_from_cache": hits2 > hits,
                                "compiled": misses2 > misses}
    return out


def jit_costs(opts: dict[str, int]) -> dict[str, Any]:
    """:func:`first_calls` in a fresh interpreter with an empty numba cache, then again."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); import bench_kernels as b; "
            "print(json.dumps(b.first_calls(json.loads(sys.argv[1]))))")
    with tempfile.TemporaryDirectory(prefix="s2cube-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = {}
        for label in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", code, json.dumps(opts),
                                   str(Path(__file__).parent)], env=env, cwd=ROOT,
                                  capture_output=True, text=True, check=True)
            runs[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return runs


# --- report -----------------------------------------------------------------------------------


def environment(ck: CKernels | None, c_error: str | None) -> dict[str, str]:
    import llvmlite
    import llvmlite.binding as llvm
    import numba

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    cc = shutil.which("cc")
    cc_version = (subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
                  .splitlines()[0] if cc else "none")
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "llvm target": llvm.get_host_cpu_name(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "llvmlite": llvmlite.__version__,
            "C kernels": (f"{cc_version}, -O3 (compiled in {ck.compile_s:.1f} s)" if ck
                          else f"unavailable: {c_error}")}


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}" if s < 1 else f"{s * 1e3:.0f}"


def report(rows: list[dict[str, Any]], jit: dict[str, Any] | None, env: dict[str, str],
           rounds: int) -> None:
    print("Environment: " + "; ".join(f"{k}: {v}" for k, v in env.items()))
    print(f"\nPer call after warm-up, ms: min over {rounds} interleaved rounds of the thread's "
          "CPU time (wall-clock min in the next columns); numba vs C = C's time / numba's.\n")
    print("| kernel | C | numba | numba vs C | C wall | numba wall | numba vs C wall "
          "| fallback | fallback ms | numba = C | numba = fallback |")
    print("|---" * 11 + "|")
    for r in rows:
        t = r["times"]
        c = t.get("C")
        ratio = {k: f"{100 * c[k] / t['numba'][k]:.0f} %" if c else "n/a" for k in ("cpu", "wall")}
        print(f"| {r['kernel']} | {_ms(c['cpu']) if c else 'n/a'} | {_ms(t['numba']['cpu'])} "
              f"| {ratio['cpu']} | {_ms(c['wall']) if c else 'n/a'} | {_ms(t['numba']['wall'])} "
              f"| {ratio['wall']} | {r['fallback']} | {_ms(t['fallback']['cpu'])} "
              f"| {r['vs_C']} | {r['vs_fallback']} |")
    if jit:
        cold, warm = jit["cold"], jit["warm"]
        print("\nnumba's one-off costs in fresh interpreters, s of the thread's CPU time: cold = "
              "empty NUMBA_CACHE_DIR (compiles), warm = the cache the cold run left (loads); "
              "compile or load = first call − steady call (min of 3). The first kernel of a "
              "process also pays numba's own start-up.\n")
        print("| kernel (first call with these types) | cold first call | of which compile "
              "| (wall) | warm first call | of which cache load | (wall) | steady call |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| import numba | {cold['import_numba_s']:.2f} | | | {warm['import_numba_s']:.2f} "
              "| | | |")
        for name, c in cold["kernels"].items():
            w = warm["kernels"][name]
            note = "" if c["compiled"] and w["loaded_from_cache"] else " (cache not used!)"
            print(f"| {name}{note} | {c['first_s']:.2f} | {c['first_s'] - c['steady_s']:.2f} "
                  f"| {c['first_wall_s']:.2f} | {w['first_s']:.3f} "
                  f"| {w['first_s'] - w['steady_s']:.3f} | {w['first_wall_s']:.3f} "
                  f"| {w['steady_s']:.3f} |")
        total = {k: run["import_numba_s"] + sum(c["first_s"] - c["steady_s"]
                                                for c in run["kernels"].values())
                 for k, run in jit.items()}
        print(f"| all of the above, once per process | {total['cold']:.2f} | | | "
              f"{total['warm']:.2f} | | | |")
    print("\ncommand: " + " ".join(["NUMBA_CACHE_DIR=" + os.environ["NUMBA_CACHE_DIR"]]
                                   if "NUMBA_CACHE_DIR" in os.environ else [])
          + ".venv/bin/python benchmarks/bench_kernels.py " + " ".join(sys.argv[1:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="interleaved rounds (min kept)")
    parser.add_argument("--size", type=int, default=256, help="patch/frame side in pixels")
    parser.add_argument("--slots", type=int, default=30, help="series length of the median")
    parser.add_argument("--frames", type=int, default=4, help="frames for the cloud model")
    parser.add_argument("--lightgbm-rounds", type=int, default=1)
    parser.add_argument("--no-jit-costs", action="store_true", help="skip the fresh interpreters")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args(argv)
    opts = {"size": args.size, "slots": args.slots, "frames": args.frames}
    jit = None if args.no_jit_costs else jit_costs(opts)  # first: nothing of ours loaded yet
    with tempfile.TemporaryDirectory(prefix="s2cube-c-kernels-") as tmp:
        try:
            ck, c_error = CKernels(Path(tmp)), None
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            ck, c_error = None, str(exc)
        inputs = make_inputs(**opts)
        rows = kernel_rows(inputs, ck, args.repeat, args.lightgbm_rounds)
        env = environment(ck, c_error)
    report(rows, jit, env, args.repeat)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"environment": env, "rows": rows, "jit": jit, "argv": sys.argv[1:]}, indent=1,
            default=float))


if __name__ == "__main__":
    main()
