"""Cloud detection for the converter: the reference loader's three detectors, run once per series.

For each S2 frame (raw DN, ``(T, 13, H, W)`` uint16) this computes what the reference data
loaders of SEN12MS-CR-TS compute on the fly (archive.md sec. 5), with the same arithmetic:

* the input is ``clip(DN, 0, 10000)`` as float32; a frame whose mean and std are both below
  1e-5 is *blank*: every detector gives an all-ones mask and coverage 1 (UnCRtainTS rule);
* ``s2cloudless_mask``: s2cloudless ``S2PixelCloudDetector(threshold=0.4, all_bands=True,
  average_over=4, dilation_size=2)`` on ``clip / 10000`` in H×W×13 order; coverage = mean of
  the binary mask;
* ``s2cloudless_map``: the s2cloudless probability, values < 0.5 set to 0, then
  ``scipy.ndimage.gaussian_filter(sigma=2)`` in float32; coverage = mean of that map;
* ``cloud_cloudshadow_mask``: the rule-based cloud score (B1, B2, B10, B11, visible sum, NDSI;
  grey closing 5×5, 7×7 mean, clipped to [1e-5, 1], cloud where >= 0.2) and the shadow test
  (``(B8+B11)/2`` and B2 below thresholds set from each frame's min and mean, 5×5 median).
  The reference encodes shadow as -1 and cloud as +1 (cloud wins), and then *relabels every
  non-zero pixel to 1* before taking the mean: PatrickTUM/UnCRtainTS ``data/dataLoader.py``
  (module function ``get_cloud_cloudshadow_mask``) and PatrickTUM/SEN12MS-CR-TS
  ``data/dataLoader.py`` (method ``SEN12MSCRTS.get_cloud_cloudshadow_mask``) both do this, on
  top of ``get_cloud_mask``/``get_shadow_mask`` from ``util/detect_cloudshadow.py``. Only that
  util module's own ``get_cloud_cloudshadow_mask`` returns the signed -1/0/+1 mask, and neither
  loader uses it. So the coverage is the fraction of pixels that are cloud OR shadow.

Coverages are ``np.mean`` of the float32 mask of one frame, the reference's own reduction, so the
numbers are the reference's float32 values. ``flags`` keeps the three masks apart
(``s2cube.schema.FLAG_*``: 1 s2cloudless, 2 rule-based cloud, 4 rule-based shadow); blank frames
get ``FLAG_S2CLOUDLESS | FLAG_RULE_CLOUD`` (the reference's all-ones masks) and probability 0.

Speed: s2cloudless's LightGBM ``predict`` is nearly all the cost. ``method="fast"`` runs the same
model through a small compiled kernel (see :mod:`s2cube_conversion._treemodel`) that gives
LightGBM's probabilities bit for bit, on all non-blank frames of a series at once; the
convolution and dilation (cv2, < 1 ms per frame) are s2cloudless's own ``get_mask_from_prob``.
Without a C compiler it falls back to ONNX Runtime, then to LightGBM itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s2cube import schema
from s2cube_conversion import _treemodel

logger = logging.getLogger(__name__)

#: The reference loader's s2cloudless parameters.
S2CLOUDLESS_PARAMS = {"threshold": 0.4, "all_bands": True, "average_over": 4, "dilation_size": 2}
MAP_THRESHOLD = 0.5
MAP_SIGMA = 2
RULE_CLOUD_THRESHOLD = 0.2
BLANK_TOLERANCE = 1e-5
BLANK_FLAGS = schema.FLAG_S2CLOUDLESS | schema.FLAG_RULE_CLOUD
METHODS = ("fast", "onnx", "lightgbm", "reference")
_FALLBACKS = {"fast": ("kernel", "onnx", "lightgbm"), "onnx": ("onnx",), "lightgbm": ("lightgbm",)}


@dataclass(frozen=True)
class CloudResult:
    """Cloud detection of one series of S2 frames."""

    prob: np.ndarray  # (T, H, W) uint8: s2cloudless probability × 100, rounded; 0 for blank
    flags: np.ndarray  # (T, H, W) uint8: schema.FLAG_* bits
    coverage: np.ndarray  # (T, 3) float32 in schema.DETECTORS order, as the reference computes
    blank: np.ndarray  # (T,) bool: the reference's blank rule


# --- the reference's rules, same arithmetic ----------------------------------------------------


def is_blank(img: np.ndarray) -> bool:
    """The reference's blank rule on a clipped float32 frame: mean and std below 1e-5."""
    return bool(img.mean() < BLANK_TOLERANCE and img.std() < BLANK_TOLERANCE)


def _rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (x - lo) / (hi - lo)


def _normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a + b
    total[total == 0] = 0.001
    return (a - b) / total


def rule_cloud(img: np.ndarray) -> np.ndarray:
    """The rule-based cloud mask (H, W) bool of a clipped float32 frame (13, H, W)."""
    from scipy import ndimage, signal

    x = img / 10000.0
    score = np.ones(x.shape[1:], np.float32)
    score = np.minimum(score, _rescale(x[1], 0.1, 0.5))  # bright in blue
    score = np.minimum(score, _rescale(x[0], 0.1, 0.3))  # bright in aerosol
    score = np.minimum(score, _rescale(x[0] + x[10], 0.4, 0.9))  # aerosol + cirrus
    score = np.minimum(score, _rescale(x[3] + x[2] + x[1], 0.2, 0.8))  # visible sum
    score = np.minimum(score, _rescale(_normalized_difference(x[2], x[11]), 0.8, 0.6))  # not snow
    score = ndimage.grey_closing(score, size=(5, 5))
    score = signal.convolve2d(score, np.ones((7, 7)) / 49, mode="same")
    return np.clip(score, 0.00001, 1.0) >= RULE_CLOUD_THRESHOLD


def _shadow_candidates(img: np.ndarray) -> np.ndarray:
    """Dark pixels: ``(B8+B11)/2`` and B2 below their frame's min + 3/4 resp. 5/6 of (mean − min)."""
    x = img / 10000.0
    csi = (x[7] + x[11]) / 2.0
    t3 = np.min(csi) + 3 / 4 * (np.mean(csi) - np.min(csi))
    t4 = np.min(x[1]) + 5 / 6 * (np.mean(x[1]) - np.min(x[1]))
    return (csi < t3) & (x[1] < t4)


def rule_shadow(img: np.ndarray, literal: bool = False) -> np.ndarray:
    """The rule-based shadow mask (H, W) bool of a clipped float32 frame (13, H, W).

    The reference takes ``scipy.signal.medfilt2d(-candidates, 5) < 0``. On a 0/−1 image with
    medfilt2d's zero padding that is "at least 13 of the 25 pixels are candidates", which
    :func:`_majority5` computes exactly from integer counts (25× faster); ``literal=True``
    runs medfilt2d itself.
    """
    dark = _shadow_candidates(img)
    if literal:
        from scipy import signal

        return signal.medfilt2d(np.where(dark, -1.0, 0.0).astype(np.float32), 5) < 0
    return _majority5(dark)


def _majority5(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    counts = mask.astype(np.int16)
    for axis in (0, 1):
        counts = ndimage.correlate1d(counts, np.ones(5, np.int16), axis=axis, mode="constant")
    return counts >= 13


def mean_coverage(mask: np.ndarray) -> np.float32:
    """The reference's coverage: ``np.mean`` of one frame's mask as float32."""
    return np.mean(mask.astype(np.float32))


def map_coverage(prob: np.ndarray) -> np.float32:
    """``s2cloudless_map`` coverage of one frame's float32 probability (H, W)."""
    from scipy.ndimage import gaussian_filter

    cloud_map = prob.copy()
    cloud_map[cloud_map < MAP_THRESHOLD] = 0
    return np.mean(gaussian_filter(cloud_map, sigma=MAP_SIGMA).astype(np.float32))


# --- assembling a result ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _s2cloudless():
    """s2cloudless's detector with the reference parameters (model loaded lazily by s2cloudless)."""
    from s2cloudless import S2PixelCloudDetector

    return S2PixelCloudDetector(**S2CLOUDLESS_PARAMS)


@contextlib.contextmanager
def _cv2_threads(threads: int):
    """Limit OpenCV's thread pool (s2cloudless's filter2D/dilate) for the duration."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _clipped(s2: np.ndarray) -> np.ndarray:
    """Check ``s2`` and return ``clip(s2, 0, 10000)`` as uint16."""
    s2 = np.asarray(s2)
    if s2.ndim != 4 or s2.shape[1] != len(schema.BANDS):
        raise ValueError(f"s2 must be (T, {len(schema.BANDS)}, H, W) raw DN, got shape {s2.shape}")
    if s2.dtype.kind not in "ui":
        raise ValueError(f"s2 must hold integer DN (uint16), got dtype {s2.dtype}; "
                         "pass the GeoTIFF values, not reflectances")
    if s2.dtype == np.uint16:
        return np.minimum(s2, _treemodel.MAX_DN)
    return np.clip(s2, 0, _treemodel.MAX_DN).astype(np.uint16)


def _empty(shape: tuple[int, ...]) -> CloudResult:
    t, _, h, w = shape
    return CloudResult(prob=np.zeros((t, h, w), np.uint8),
                       flags=np.full((t, h, w), BLANK_FLAGS, np.uint8),
                       coverage=np.ones((t, len(schema.DETECTORS)), np.float32),
                       blank=np.ones(t, bool))


def _fill(out: CloudResult, t: int, img: np.ndarray, prob: np.ndarray, mask: np.ndarray,
          literal: bool = False) -> None:
    """Write frame ``t`` (not blank) into ``out`` from its probability and s2cloudless mask."""
    cloud, shadow = rule_cloud(img), rule_shadow(img, literal)
    out.prob[t] = np.rint(prob * 100)
    out.flags[t] = (mask.astype(bool) * schema.FLAG_S2CLOUDLESS | cloud * schema.FLAG_RULE_CLOUD
                    | shadow * schema.FLAG_RULE_SHADOW)
    out.coverage[t] = (mean_coverage(mask), map_coverage(prob), mean_coverage(cloud | shadow))
    out.blank[t] = False


def reference_detect(s2: np.ndarray, threads: int = 1) -> CloudResult:
    """The reference loader's detection: s2cloudless once per frame, as the loader calls it.

    ``threads`` is passed to LightGBM as ``num_threads`` (the loader leaves LightGBM's default).
    The shadow median is scipy's ``medfilt2d`` itself.
    """
    dn = _clipped(s2)
    out = _empty(dn.shape)
    det = _s2cloudless()
    with _cv2_threads(threads):
        for t in range(dn.shape[0]):
            img = dn[t].astype(np.float32)
            if is_blank(img):
                continue
            x = np.moveaxis(img / 10000, 0, -1)[None, ...]
            prob = det.get_cloud_probability_maps(x, num_threads=threads)[0]
            mask = det.get_mask_from_prob(prob[None])[0]
            _fill(out, t, img, prob, mask, literal=True)
    return out


# --- the converter's detector -----------------------------------------------------------------


class CloudDetector:
    """The converter's cloud detection of one S2 series; picklable and cheap to construct.

    Parameters
    ----------
    method
        ``"fast"`` (compiled kernel, bit-identical to s2cloudless; falls back to ONNX Runtime,
        then LightGBM, when no C compiler is available), ``"onnx"``, ``"lightgbm"`` (s2cloudless's
        booster, batched) or ``"reference"`` (:func:`reference_detect`, one frame at a time).
    threads
        Threads for the model and OpenCV (``1`` in single-threaded dask workers).
    cache_dir
        Where compiled/converted models are cached; default ``$S2CUBE_CACHE_DIR`` or
        ``~/.cache/s2cube/clouds`` (see :func:`s2cube_conversion._treemodel.cache_dir`).
    """

    def __init__(self, method: str = "fast", threads: int = 1,
                 cache_dir: str | os.PathLike | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown cloud detection method {method!r}; use one of {METHODS}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        self.method = method
        self.threads = threads
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self._onnx_bytes: bytes | None = None
        self._engine = None

    def __getstate__(self) -> dict:
        # engines hold native handles: ship parameters (and a converted ONNX model, if any)
        return {"method": self.method, "threads": self.threads, "cache_dir": self.cache_dir,
                "onnx_bytes": self._onnx_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["method"], state["threads"], state["cache_dir"])
        self._onnx_bytes = state["onnx_bytes"]

    def __repr__(self) -> str:
        return f"CloudDetector(method={self.method!r}, threads={self.threads})"

    @property
    def engine(self):
        """The model engine, built on first use (``None`` for ``method="reference"``)."""
        if self._engine is None and self.method != "reference":
            self._engine = self._resolve()
        return self._engine

    def _resolve(self):
        errors = []
        for kind in _FALLBACKS[self.method]:
            try:
                engine = _treemodel.get_engine(kind, self.threads, self.cache_dir,
                                               self._onnx_bytes)
            except _treemodel.EngineUnavailable as exc:
                errors.append(f"{kind}: {exc}")
                logger.warning("cloud-detection engine %r unavailable (%s); trying the next", kind,
                               exc)
                continue
            if kind == "onnx":
                self._onnx_bytes = engine.model_bytes
            return engine
        raise _treemodel.EngineUnavailable("no cloud-detection engine works: " + "; ".join(errors))

    def __call__(self, s2: np.ndarray) -> CloudResult:
        """Detect clouds in ``s2`` (T, 13, H, W) raw DN; all-zero (missing) frames count as blank."""
        if self.method == "reference":
            return reference_detect(s2, self.threads)
        dn = _clipped(s2)
        out = _empty(dn.shape)
        todo = [t for t in range(dn.shape[0]) if not is_blank(dn[t].astype(np.float32))]
        if not todo:
            return out
        prob = self.engine.predict_frames(dn[todo])  # all frames of the series in one go
        with _cv2_threads(self.threads):
            masks = _s2cloudless().get_mask_from_prob(prob)
        for i, t in enumerate(todo):
            _fill(out, t, dn[t].astype(np.float32), prob[i], masks[i])
        return out

    def describe(self) -> dict:
        """Library versions, parameters and method for the cube's attrs (JSON-able)."""
        engine = self.engine
        model = _treemodel.model_file()
        versions = {name: _version(name) for name in
                    ("s2cloudless", "lightgbm", "numpy", "scipy", "opencv-python-headless",
                     "opencv-python")}
        if engine is not None and engine.name == "onnxruntime":
            versions.update(onnxruntime=_version("onnxruntime"), onnxmltools=_version("onnxmltools"))
        return {
            "method": self.method,
            "engine": "s2cloudless" if engine is None else engine.name,
            "bit_identical_to_s2cloudless": True if engine is None else bool(engine.exact),
            "threads": self.threads,
            "versions": {k: v for k, v in versions.items() if v is not None},
            "model": {"file": os.path.basename(model.path), "sha256": model.sha256},
            "detectors": list(schema.DETECTORS),
            "input": "clip(DN, 0, 10000) as float32; s2cloudless gets it / 10000, H x W x 13",
            "s2cloudless_mask": dict(S2CLOUDLESS_PARAMS),
            "s2cloudless_map": {"zero_below": MAP_THRESHOLD, "gaussian_sigma": MAP_SIGMA},
            "cloud_cloudshadow_mask": {
                "cloud_threshold": RULE_CLOUD_THRESHOLD, "closing": 5, "mean_box": 7,
                "shadow": "(B8+B11)/2 < min+3/4(mean-min) and B2 < min+5/6(mean-min), median 5x5",
                "coverage": "fraction of pixels that are cloud or shadow"},
            "blank_rule": "mean and std of the clipped frame < 1e-5: all-ones masks, coverage 1",
            "flags": {"s2cloudless_mask": schema.FLAG_S2CLOUDLESS,
                      "rule_based_cloud": schema.FLAG_RULE_CLOUD,
                      "rule_based_shadow": schema.FLAG_RULE_SHADOW,
                      "blank_frame": BLANK_FLAGS},
        }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
