"""Image metrics of the reference evaluation (archive.md sec. 7).

One image is a ``(band, H, W)`` array of reflectance in [0, 1]; every function scores one
image and the reference averages the per-image values over images. The formulas are the
ones of the authors' code (the SEN12MS-CR-TS toolbox's ``compute_metric`` and UnCRtainTS'
``img_metrics``):

- RMSE and MAE over all bands and pixels; PSNR = 20·log10(1 / RMSE);
- SSIM with an 11-pixel Gaussian window (σ 1.5, zero padding, same-size output),
  C1 = 0.01², C2 = 0.03², averaged over bands and pixels;
- SAM: the mean over pixels of the angle between the two spectra (UnCRtainTS reports
  degrees, the toolbox radians); a pixel whose spectrum is all zero has no angle and
  makes the mean NaN, as in the reference;
- RMSE and MAE over cloudy and over clear pixels, where a pixel is cloudy when the sum
  of the input masks, clipped to [0, 1], is 1 and clear when it is 0 (the union of the
  input masks for binary masks).

Everything is computed in float64, with the formulas written out in NumPy here;
:func:`image_metrics` and :func:`ssim` take the same sums from the compiled kernels of
:mod:`s2cube.kernels.metrics` where they apply (several times faster, equal to ~1e-12).
:func:`metrics_blocks` maps :func:`image_metrics` over a stack of images held in a dask
array, one task per block of images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s2cube.kernels import metrics as fastmetrics

#: Names of the values :func:`image_metrics` returns, in this order.
METRICS: tuple[str, ...] = (
    "rmse", "mae", "psnr", "ssim", "sam_deg", "sam_rad",
    "rmse_cloudy", "rmse_clear", "mae_cloudy", "mae_clear", "cloudy_fraction",
)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2



def _pair(pred: Any, target: Any, *, keep_float32: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (or as they are when both are float32 and ``keep_float32``)."""
    p, t = np.asarray(pred), np.asarray(target)
    if not (keep_float32 and p.dtype == t.dtype == np.float32):
        p, t = p.astype(np.float64, copy=False), t.astype(np.float64, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}; "
                         "pass two (band, H, W) images of the same size")
    return p, t


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error over all bands and pixels."""
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean(np.square(t - p))))


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error over all bands and pixels."""
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(t - p)))


def psnr(pred: Any, target: Any) -> float:
    """Peak signal-to-noise ratio for data in [0, 1]: ``20 log10(1 / RMSE)`` (inf when equal)."""
    return _psnr(np.float64(rmse(pred, target)))


def _psnr(r: np.float64) -> float:
    with np.errstate(divide="ignore"):
        return float(20.0 * np.log10(np.float64(1.0) / r))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian of the reference SSIM (its 2-D window is the outer product)."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with ``w``, zero padding, same size.

    Written with a few preallocated buffers: on dask workers (where ``MALLOC_TRIM_THRESHOLD_``
    makes every large temporary a fresh ``mmap``) this is ~3x faster than ``y += w * x``.
    """
    r = len(w) // 2
    h, wd = x.shape[-2:]
    lead = x.shape[:-2]
    p = np.zeros((*lead, h + 2 * r, wd), dtype=np.float64)
    p[..., r:r + h, :] = x
    y = np.multiply(p[..., 0:h, :], w[0])
    tmp = np.empty_like(y)
    for k in range(1, len(w)):
        np.multiply(p[..., k:k + h, :], w[k], out=tmp)
        y += tmp
    q = np.zeros((*lead, h, wd + 2 * r), dtype=np.float64)
    q[..., r:r + wd] = y
    np.multiply(q[..., 0:wd], w[0], out=y)
    for k in range(1, len(w)):
        np.multiply(q[..., k:k + wd], w[k], out=tmp)
        y += tmp
    return y


def ssim_map(pred: Any, target: Any, *, window: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The per-pixel SSIM of each band, shape of the inputs (``(band, H, W)``)."""
    p, t = _pair(pred, target)
    if p.ndim < 2:
        raise ValueError(f"SSIM needs images (..., H, W), got shape {p.shape}")
    w = gaussian_window(window, sigma)
    mu1, mu2, s1, s2, s12 = _filter(np.stack([t, p, t * t, p * p, t * p]), w)
    # the reference formula, computed in place (few large temporaries: see _filter)
    mu1_sq, mu2_sq, num = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 -= mu1_sq  # sigma1²
    s2 -= mu2_sq  # sigma2²
    s12 -= num  # sigma12
    num *= 2
    num += SSIM_C1
    s12 *= 2
    s12 += SSIM_C2
    num *= s12  # (2 mu1 mu2 + C1)(2 sigma12 + C2)
    mu1_sq += mu2_sq
    mu1_sq += SSIM_C1
    s1 += s2
    s1 += SSIM_C2
    mu1_sq *= s1  # (mu1² + mu2² + C1)(sigma1² + sigma2² + C2)
    num /= mu1_sq
    return num


def ssim(pred: Any, target: Any, *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> float:
    """Structural similarity, Gaussian window 11 / σ 1.5, averaged over bands and pixels."""
    p, t = _pair(pred, target)
    return _ssim_mean(p, t, window, sigma)


def _ssim_mean(p: np.ndarray, t: np.ndarray, window: int = SSIM_WINDOW,
               sigma: float = SSIM_SIGMA) -> float:
    """The mean of :func:`ssim_map`, by the compiled kernel where there is one."""
    total = fastmetrics.ssim_sum(p, t, gaussian_window(window, sigma), SSIM_C1, SSIM_C2)
    if total is None:
        return float(np.mean(ssim_map(p, t, window=window, sigma=sigma)))
    return total / p.size


def sam(pred: Any, target: Any, *, degrees: bool = True) -> float:
    """Spectral angle mapper: mean angle between predicted and true spectra (band axis 0)."""
    p, t = _pair(pred, target)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.sum(t * p, axis=0) / np.sqrt(np.sum(t * t, axis=0)) / np.sqrt(np.sum(p * p, axis=0))
        angle = float(np.mean(np.arccos(np.clip(cos, -1.0, 1.0))))
    return float(np.degrees(angle)) if degrees else angle


def cloudy_pixels(input_masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(cloudy, clear)`` pixel masks ``(H, W)`` from the input masks ``(n, H, W)``.

    As the reference: the masks are summed and clipped to [0, 1]; 1 is cloudy and 0 clear.
    """
    m = np.asarray(input_masks)
    if m.ndim == 2:
        m = m[None]
    if m.dtype.kind in "bu":  # 0/1 (or any non-negative integer) masks: the sum clips at 1
        cloudy = np.logical_or.reduce(m != 0, axis=0)
        return cloudy, ~cloudy
    agg = np.clip(m.astype(np.float64).sum(axis=0), 0.0, 1.0)
    return agg == 1.0, agg == 0.0


def masked_errors(pred: Any, target: Any, input_masks: Any) -> dict[str, float]:
    """RMSE and MAE over the cloudy and over the clear pixels of the input masks (all bands)."""
    p, t = _pair(pred, target)
    d = t - p
    return _masked_errors(d, d * d, np.abs(d), input_masks)


def _masked_errors(d: np.ndarray, sq: np.ndarray, ab: np.ndarray, input_masks: Any) -> dict[str, float]:
    """:func:`masked_errors` from the error ``d``, its square and its absolute value."""
    cloudy, clear = cloudy_pixels(input_masks)
    _check_mask_shape(cloudy, d)
    out = {}
    per_pixel = None
    if not np.isnan(d).any():  # per-pixel sums over the bands, then over each pixel set
        lead = d.size // cloudy.size
        per_pixel = (sq.reshape(lead, *cloudy.shape).sum(axis=0),
                     ab.reshape(lead, *cloudy.shape).sum(axis=0), lead)
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, sel in (("cloudy", cloudy), ("clear", clear)):
            if per_pixel is not None:
                s2, s1, lead = per_pixel
                n = int(np.count_nonzero(sel)) * lead
                total_sq, total_abs = s2[sel].sum(), s1[sel].sum()
            else:  # NaN errors are left out, as nansum does
                vals = d[..., sel]
                n = int(np.count_nonzero(~np.isnan(vals)))
                total_sq, total_abs = np.nansum(vals**2), np.nansum(np.abs(vals))
            out[f"rmse_{name}"] = float(np.sqrt(total_sq / n)) if n else float("nan")
            out[f"mae_{name}"] = float(total_abs / n) if n else float("nan")
    out["cloudy_fraction"] = float(cloudy.mean())
    return out


def image_metrics(pred: Any, target: Any, input_masks: Any | None = None) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one ``(band, H, W)`` image in [0, 1].

    Without ``input_masks`` the cloudy/clear values are NaN.
    """
    p, t = _pair(pred, target, keep_float32=True)  # the kernels widen float32 in registers
    fast = _image_metrics_fast(p, t, input_masks)
    if fast is not None:
        return fast
    p, t = _pair(p, t)
    err = t - p
    sq, ab = err * err, np.abs(err)
    r = np.sqrt(np.mean(sq))
    out = {"rmse": float(r), "mae": float(np.mean(ab)), "psnr": _psnr(r),
           "ssim": _ssim_mean(p, t)}
    rad = sam(p, t, degrees=False)
    out["sam_deg"], out["sam_rad"] = float(np.degrees(rad)), rad
    if input_masks is None:
        out.update({k: float("nan") for k in METRICS if k not in out})
    else:
        out.update(_masked_errors(err, sq, ab, input_masks))
    return out


def _image_metrics_fast(p: np.ndarray, t: np.ndarray, input_masks: Any | None) -> dict | None:
    """:func:`image_metrics` from the compiled kernels' sums; None where they do not apply."""
    if p.ndim != 3:
        return None
    classes = None
    if input_masks is not None:
        cloudy, clear = cloudy_pixels(input_masks)
        _check_mask_shape(cloudy, p)
        classes = np.where(cloudy, np.uint8(1), np.where(clear, np.uint8(2), np.uint8(0)))
    sums = fastmetrics.error_sums(p, t, classes)
    if sums is None:
        return None
    bands, pixels = p.shape[0], p.shape[1] * p.shape[2]
    r = np.sqrt(sums[0] / p.size)
    rad = float(sums[8] / pixels)
    out = {"rmse": float(r), "mae": float(sums[1] / p.size), "psnr": _psnr(r),
           "ssim": _ssim_mean(p, t), "sam_deg": float(np.degrees(rad)), "sam_rad": rad}
    if classes is None:
        out.update({k: float("nan") for k in METRICS if k not in out})
        return out
    for name, (total_sq, total_abs, n_pix) in (("cloudy", sums[2:5]), ("clear", sums[5:8])):
        n = n_pix * bands
        out[f"rmse_{name}"] = float(np.sqrt(total_sq / n)) if n else float("nan")
        out[f"mae_{name}"] = float(total_abs / n) if n else float("nan")
    out["cloudy_fraction"] = float(np.count_nonzero(classes == 1) / pixels)
    return out


def _check_mask_shape(cloudy: np.ndarray, images: np.ndarray) -> None:
    if cloudy.shape != images.shape[-2:]:
        raise ValueError(f"input masks are {cloudy.shape} pixels, the images "
                         f"{images.shape[-2:]}; pass masks of the same patch")


def _metrics_block(pred: np.ndarray, target: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    rows = [image_metrics(pred[i], target[i], None if masks is None else masks[i])
            for i in range(pred.shape[0])]
    return np.array([[r[k] for k in METRICS] for r in rows], dtype=np.float64).reshape(
        pred.shape[0], len(METRICS))


def metrics_blocks(pred: Any, target: Any, input_masks: Any | None = None):
    """Score a stack of images ``(n, band, H, W)``: an ``(n, len(METRICS))`` array.

    Works on NumPy arrays and lazily on dask arrays (one task per block of images along
    the first axis; the other axes are made single-chunk). ``input_masks`` is
    ``(n, n_inputs, H, W)`` or ``None``.
    """
    import dask.array as da

    if not any(isinstance(a, da.Array) for a in (pred, target, input_masks)):
        p, t = np.asarray(pred), np.asarray(target)
        return _metrics_block(p, t, None if input_masks is None else np.asarray(input_masks))
    p = da.asarray(pred)
    t = da.asarray(target).rechunk({0: p.chunks[0], 1: -1, 2: -1, 3: -1})
    p = p.rechunk({1: -1, 2: -1, 3: -1})
    args = [p, "nbhw", t, "nbhw"]
    if input_masks is not None:
        m = da.asarray(input_masks).rechunk({0: p.chunks[0], 1: -1, 2: -1, 3: -1})
        args += [m, "nkhw"]
    else:
        args += [None, None]
    return da.blockwise(_metrics_block, "nm", *args, new_axes={"m": len(METRICS)},
                        concatenate=True, dtype=np.float64)


# --- scores on a pixel mask (the seq2seq protocol: the gapped, cloud-free pixels) ----------------

#: Names of the values :func:`masked_metrics` returns, in this order.
MASKED_METRICS: tuple[str, ...] = ("rmse", "mae", "psnr", "ssim", "sam_deg", "sam_rad")


def masked_metrics(pred: Any, target: Any, mask: Any, *, fast: bool = True) -> dict[str, float]:
    """The metrics of one ``(band, H, W)`` image in [0, 1] on the pixels of ``mask`` only.

    What the seq2seq protocol scores: the gapped, cloud-free pixels of a target frame.

    - RMSE and MAE over the mask's pixels and all bands; PSNR = 20·log10(1 / RMSE);
    - SAM: the mean over the mask's pixels of the angle between the spectra;
    - SSIM: the SSIM map (:func:`ssim_map`) of the prediction *completed with the target
      outside the mask*, averaged over the mask's pixels and the bands. Nothing outside the
      mask counts (not even through the window), and a prediction equal to the target on
      the mask scores 1 whatever it holds elsewhere.

    An empty mask gives NaN for every metric. The sums come from the compiled kernels of
    :mod:`s2cube.kernels.metrics` where they apply (``fast``), else from the NumPy formulas
    written out below; the two agree to ~1e-12.

    Parameters
    ----------
    pred, target
        ``(band, H, W)`` images.
    mask
        ``(H, W)`` booleans: the pixels scored.
    fast
        Use the compiled kernels where numba is installed (``False``: the NumPy formulas).
    """
    p, t = _pair(pred, target, keep_float32=True)
    m = np.asarray(mask, bool)
    if p.ndim != 3:
        raise ValueError(f"masked_metrics scores one (band, H, W) image, got shape {p.shape}")
    _check_mask_shape(m, p)
    n_pix = int(np.count_nonzero(m))
    if n_pix == 0:
        return {k: float("nan") for k in MASKED_METRICS}
    p = np.where(m, p, t)  # the prediction completed with the target outside the mask
    sel_p, sel_t = p[:, m], t[:, m]  # (band, pixels)
    if fast:
        sums = fastmetrics.error_sums(sel_p[:, None, :], sel_t[:, None, :], None)
        total = fastmetrics.ssim_masked_sum(p, t, gaussian_window(), SSIM_C1, SSIM_C2, m)
        if sums is not None and total is not None:
            r = np.sqrt(sums[0] / sel_p.size)
            rad = float(sums[8] / n_pix)
            return {"rmse": float(r), "mae": float(sums[1] / sel_p.size), "psnr": _psnr(r),
                    "ssim": total / sel_p.size, "sam_deg": float(np.degrees(rad)), "sam_rad": rad}
    sel_p, sel_t = sel_p.astype(np.float64), sel_t.astype(np.float64)
    d = sel_t - sel_p
    r = np.sqrt(np.mean(d * d))
    rad = sam(sel_p[:, :, None], sel_t[:, :, None], degrees=False)
    return {"rmse": float(r), "mae": float(np.mean(np.abs(d))), "psnr": _psnr(r),
            "ssim": float(np.mean(ssim_map(p, t)[:, m])), "sam_deg": float(np.degrees(rad)),
            "sam_rad": rad}
