"""Sample plans turned into stacked arrays and batches, on top of :mod:`s2cube.io.reader`.

- preprocessing exactly as the reference loader does it (:func:`s2_post`, :func:`s1_post`,
  :func:`mask_post`), run by the reader's decoding threads on each decoded frame;
- :class:`SampleReader`: the S2, S1 and mask frames of many (patch, slot) pairs, read into
  stacked ``(B, T, ...)`` arrays from a :class:`BufferPool` (or a caller's allocator);
- :class:`SampleSet`: a split's samples without pixels (index, per-sample coverage, dates,
  plans per epoch, the reference's ``coord`` and archive paths);
- :class:`BatchMaker` and :func:`iter_batches`: seq2point or seq2seq batches of an epoch as
  NumPy arrays (what :func:`s2cube.torch.make_loader` wraps in tensors).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2cube import schema
from s2cube.analysis.georef import patch_bounds
from s2cube.io.reader import ChunkReader, CubeMeta, FrameRequest, Post, load_meta
from s2cube.plans import pairs
from s2cube.plans import rules as sampling

logger = logging.getLogger(__name__)


# --- preprocessing, exactly as the reference loader does it -------------------------------------

RESCALE_METHODS = ("default", "resnet")


def _check_method(method: str) -> str:
    if method not in RESCALE_METHODS:
        raise ValueError(f"rescale_method {method!r} is not one of {', '.join(RESCALE_METHODS)}")
    return method


@dataclass(frozen=True)
class S2Post:
    """S2 DN → float32: ``default`` clip(0, 10000)/10000, ``resnet`` clip(0, 10000)/2000."""

    method: str = "default"

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, frame, casting="unsafe")
        np.clip(out, 0, 10000, out=out)
        np.divide(out, np.float32(10000 if self.method == "default" else 2000), out=out)


@dataclass(frozen=True)
class S1Post:
    """S1 dB → float32: ``default`` (clip(-25, 0) + 25)/25; ``resnet`` VV, VH to [0, 2]; NaN → 0."""

    method: str = "default"

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, frame, casting="unsafe")
        if self.method == "default":
            np.clip(out, -25, 0, out=out)
            np.subtract(out, -25, out=out)
            np.divide(out, 25, out=out)
        else:
            for band, low in ((0, -25.0), (1, -32.5)):
                o = out[band]
                np.clip(o, low, 0, out=o)
                np.subtract(o, low, out=o)
                np.multiply(2, o, out=o)
                np.divide(o, 0 - low, out=o)
        np.nan_to_num(out, copy=False)


def s2_post(method: str | None) -> Post | None:
    """The reference's S2 preprocessing (None: raw DN)."""
    return None if method is None else S2Post(_check_method(method))


def s1_post(method: str | None) -> Post | None:
    """The reference's S1 preprocessing (None: raw dB)."""
    return None if method is None else S1Post(_check_method(method))


#: bits of ``cloud_mask`` behind each binary detector
MASK_BITS = {"s2cloudless_mask": schema.FLAG_S2CLOUDLESS,
             "cloud_cloudshadow_mask": schema.FLAG_RULE_CLOUD | schema.FLAG_RULE_SHADOW}


def mask_source(detector: str) -> str:
    """The pixel variable a detector's mask is made from."""
    if detector in MASK_BITS:
        return "cloud_mask"
    if detector == "s2cloudless_map":
        return "cloud_prob"
    raise ValueError(f"cloud_masks {detector!r} is not one of {', '.join(schema.DETECTORS)}")


@dataclass(frozen=True)
class MaskPost:
    """The reference's float32 mask: a detector's bits, or the s2cloudless map; ones if blank.

    ``s2cloudless_map`` is rebuilt from the stored probability (× 100, rounded): values < 0.5
    set to 0, then a Gaussian filter with sigma 2 (needs scipy), so it matches the reference
    to the stored precision (0.005), not bit for bit (and, on a crop, filters the window only).
    """

    detector: str
    blank: bool = False

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        bits = MASK_BITS.get(self.detector)
        if self.blank:
            out.fill(1)
        elif bits is not None:
            np.not_equal(np.bitwise_and(frame, bits), 0, out=out, casting="unsafe")
        else:
            from scipy.ndimage import gaussian_filter

            prob = frame.astype(np.float32) / np.float32(100)
            prob[prob < 0.5] = 0
            out[...] = gaussian_filter(prob, sigma=2)


def mask_post(detector: str, blank: bool = False) -> Post:
    """The mask post-processing of ``detector`` (see :class:`MaskPost`)."""
    mask_source(detector)
    return MaskPost(detector, blank)


# --- samples: plans resolved into stacked frames ----------------------------------------------

#: days since the S1 launch where a date is missing
NO_DATE = -1


def days(dates: np.ndarray) -> np.ndarray:
    """Days since 2014-04-03 (the reference's ``S1 TD``/``S2 TD``) as int64, -1 where NaT."""
    d = np.asarray(dates, dtype="datetime64[D]")
    out = (d - schema.TD_EPOCH).astype(np.int64)
    out[np.isnat(d)] = NO_DATE
    return out


class BufferPool:
    """Reuses output arrays once nothing references them any more (no page faults per batch).

    A fresh 100 MB batch array costs more in page faults than decoding its frames; an array
    of the pool is handed out again only when its reference count shows that no batch,
    view or tensor of it is alive.
    """

    def __init__(self, per_shape: int = 4) -> None:
        self.per_shape = per_shape
        self._arrays: dict[tuple, list[np.ndarray]] = {}

    def get(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        arrays = self._arrays.setdefault(key, [])
        for a in arrays:
            if sys.getrefcount(a) <= 3:  # the list, the loop variable, getrefcount's argument
                return a
        a = np.empty(shape, dtype)
        if len(arrays) < self.per_shape:
            arrays.append(a)
        return a

    def __getstate__(self) -> dict:
        return {"per_shape": self.per_shape, "_arrays": {}}


def _check_crop(crop: Any, patch_size: int) -> int:
    """``crop`` as an int, checked to be a window side inside the patch."""
    size = int(crop)
    if not 1 <= size <= patch_size:
        raise ValueError(f"crop={crop} must be between 1 and the patch size {patch_size}")
    return size


class SampleReader:
    """Reads S2, S1 and masks of many (patch, slot) frames into stacked arrays.

    Parameters
    ----------
    meta
        The cube's small variables (:func:`load_meta`).
    detector
        Which mask to return (``schema.DETECTORS``), or None for no masks.
    rescale_method
        ``default``/``resnet`` (float32, the reference's preprocessing) or None (raw S2 DN
        uint16 and S1 dB float32, for preprocessing on the GPU).
    threads
        Decoding threads of this process.
    s1
        Read S1 too.
    alloc
        ``alloc(shape, dtype) -> np.ndarray | None`` for the output arrays (e.g. views of
        tensors in shared memory); by default (or when it returns None) arrays come from a
        :class:`BufferPool`, reused once the caller has dropped every reference to them.
    """

    def __init__(self, meta: CubeMeta, *, detector: str | None = "s2cloudless_mask",
                 rescale_method: str | None = "default", threads: int = 2, s1: bool = True,
                 alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None = None) -> None:
        self.meta = meta
        self.detector = detector
        self.rescale_method = rescale_method
        self.s1 = s1 and "s1" in meta.layouts
        self.alloc = alloc
        self.pool = BufferPool()
        self.chunks = ChunkReader(meta.url, meta.layouts, storage_options=meta.storage_options,
                                  threads=threads)
        self._s2_post = s2_post(rescale_method)
        self._s1_post = s1_post(rescale_method)
        if detector is not None:
            self._mask_var = mask_source(detector)
            self._mask_posts = {b: mask_post(detector, blank=b) for b in (False, True)}

    def _empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        got = self.alloc(shape, dtype) if self.alloc is not None else None
        return self.pool.get(shape, dtype) if got is None else got

    def read(self, roi: np.ndarray, row: np.ndarray, col: np.ndarray, slots: np.ndarray, *,
             crop: int | None = None, offsets: np.ndarray | None = None,
             gaps: Any | None = None) -> dict[str, np.ndarray]:
        """Frames of B samples at (B, T) ``slots``.

        Returns ``S2`` (B, T, 13, h, w), ``S1`` (B, T, 2, h, w), ``masks`` (B, T, h, w) and,
        with ``gaps`` (a :class:`~s2cube.plans.rules.GapPlan`), ``gap_masks`` (B, T, h, w): the
        real masks pasted as synthetic gaps (0 where none). ``crop`` is the side of a window
        at ``offsets`` (B, 2) = (y0, x0) inside the patch; the whole patch without it.
        Missing and blank frames get an all-ones mask (the reference's blank rule).
        """
        m = self.meta
        roi, row, col = (np.asarray(a, np.int64).reshape(-1) for a in (roi, row, col))
        slots = np.asarray(slots, np.int64)
        b_n, t_n = slots.shape
        p = m.patch_size
        size = _check_crop(crop, p) if crop else p
        fdt = np.float32 if self.rescale_method else None
        out = {"S2": self._empty((b_n, t_n, len(schema.BANDS), size, size),
                                 fdt or np.uint16)}
        if self.s1:
            out["S1"] = self._empty((b_n, t_n, len(schema.POLARIZATIONS), size, size), np.float32)
        if self.detector is not None:
            out["masks"] = self._empty((b_n, t_n, size, size), np.float32)
        if gaps is not None and self.detector is not None:
            out["gap_masks"] = self._empty((b_n, t_n, size, size), np.float32)
        missing = ~m.valid_s2[roi[:, None], slots, row[:, None], col[:, None]]
        blank = m.blank[roi[:, None], slots, row[:, None], col[:, None]] | missing
        reqs: list[FrameRequest] = []
        for b in range(b_n):
            win = None
            if size != p:
                y0, x0 = (int(v) for v in offsets[b]) if offsets is not None else (0, 0)
                win = (y0, x0, size, size)
            i, r, c = int(roi[b]), int(row[b]), int(col[b])
            for k in range(t_n):
                t = int(slots[b, k])
                reqs.append(FrameRequest("s2", i, r, c, t, out["S2"][b, k], win, self._s2_post))
                if self.s1:
                    reqs.append(FrameRequest("s1", i, r, c, t, out["S1"][b, k], win,
                                             self._s1_post))
                if self.detector is None:
                    continue
                reqs.append(FrameRequest(self._mask_var, i, r, c, t, out["masks"][b, k], win,
                                         self._mask_posts[bool(blank[b, k])]))
                if gaps is None:
                    continue
                gslot = int(gaps.slot[b, k])
                if gslot < 0:
                    out["gap_masks"][b, k].fill(0)
                else:
                    reqs.append(FrameRequest(self._mask_var, i, int(gaps.row[b, k]),
                                             int(gaps.col[b, k]), gslot, out["gap_masks"][b, k],
                                             win, self._mask_posts[False]))
        self.chunks.read(reqs)
        return out

    def close(self) -> None:
        self.chunks.close()


# --- a split's samples: plans per epoch, metadata, batches ----------------------------------------

@dataclass(frozen=True)
class SampleOptions:
    """The reference loader's options, checked once."""

    split: str = "all"
    region: str = "all"
    cloud_masks: str = "s2cloudless_mask"
    sample_type: str = "cloudy_cloudfree"
    sampler: str = "fixed"
    n_input_samples: int = 3
    rescale_method: str | None = "default"
    min_cov: float = 0.0
    max_cov: float = 1.0
    stable_sort: bool = False
    subset: tuple[int, int] = (0, schema.N_SLOTS)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cloud_masks not in schema.DETECTORS:
            raise ValueError(
                f"cloud_masks={self.cloud_masks!r}: choose one of {', '.join(schema.DETECTORS)} "
                "(the masks are stored in the cube, so they cost nothing; the reference "
                "loader's cloud_masks=None fails when it computes coverage)")
        if self.sample_type not in sampling.SAMPLE_TYPES:
            raise ValueError(f"sample_type {self.sample_type!r} is not one of "
                             f"{', '.join(sampling.SAMPLE_TYPES)}")
        if self.sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of "
                             f"{', '.join(sampling.SAMPLERS)}")
        if self.rescale_method is not None:
            _check_method(self.rescale_method)


class SampleSet:
    """Everything about a split's samples except pixels: cheap, picklable, no live state."""

    def __init__(self, cube: Any, opts: SampleOptions, *, import_data_path: Any = None,
                 trust: bool = False, storage_options: dict | None = None,
                 check_pair_paths: bool = True) -> None:
        meta = cube if isinstance(cube, CubeMeta) else load_meta(
            cube, storage_options)
        self.meta = meta
        self.opts = opts
        self.index = sampling.patch_index(meta.patch_id, meta.roi_names, opts.split, opts.region)
        ix = self.index
        cov = sampling.sample_coverage(meta.coverage, ix, opts.cloud_masks)
        blank = meta.blank[ix.roi, :, ix.row, ix.col]
        self.coverage = sampling.apply_blank_rule(cov, blank).astype(np.float32)
        self.valid_s2 = meta.valid_s2[ix.roi, :, ix.row, ix.col]
        self.s2_td = days(meta.s2_date[ix.roi, :, ix.row, ix.col])
        self.s1_td = days(meta.s1_date[ix.roi, :, ix.row, ix.col])
        self.pairs = None
        if import_data_path is not None:
            path = pairs.find_pair_file(import_data_path, opts.n_input_samples, opts.split,
                                         opts.region, opts.cloud_masks)
            self.pairs = pairs.load_pair_file(path, trust=trust)
            if check_pair_paths:
                pairs.check_paths(self.pairs, [(ix.roi_name(i), int(ix.patch_id[i]))
                                                for i in range(len(ix))])
        self._plans: dict[int, sampling.SamplePlan] = {}

    def __len__(self) -> int:
        return len(self.index)

    def plan(self, epoch: int) -> sampling.SamplePlan:
        """The plan of one epoch (the same in every process for a seed and an epoch)."""
        epoch = int(epoch)
        got = self._plans.get(epoch)
        if got is not None:
            return got
        o = self.opts
        if len(self) == 0:
            plan = sampling.generic(0)
        elif self.pairs is not None:
            plan = pairs.plan_from_pairs(
                self.pairs, len(self), epoch=epoch, sample_type=o.sample_type, sampler=o.sampler,
                n_input_samples=o.n_input_samples, min_cov=o.min_cov, max_cov=o.max_cov,
                stable=o.stable_sort, subset=o.subset, seed=o.seed)
        else:
            plan = sampling.make_plan(
                self.coverage, sample_type=o.sample_type, sampler=o.sampler,
                n_input_samples=o.n_input_samples, min_cov=o.min_cov, max_cov=o.max_cov,
                stable=o.stable_sort, subset=o.subset, seed=o.seed, epoch=epoch)
        if len(self._plans) > 4:
            self._plans.clear()
        self._plans[epoch] = plan
        return plan

    def coord(self, pdx: int) -> list[float]:
        """``[left, bottom, right, top]`` of sample ``pdx`` in its ROI's CRS (rasterio bounds)."""
        ix, m = self.index, self.meta
        transform = [float(v) for v in m.transform[ix.roi[pdx]]]
        return list(patch_bounds(transform, m.patch_size, int(ix.row[pdx]), int(ix.col[pdx])))

    def path(self, pdx: int, modality: str, slot: int, root: str | None) -> str:
        """The archive's file name of one frame (relative, or below ``root``); '' if missing."""
        ix = self.index
        info = schema.roi_info(ix.roi_name(pdx))
        td = (self.s1_td if modality == "s1" else self.s2_td)[pdx, slot]
        if td == NO_DATE:
            return ""
        date = str(schema.TD_EPOCH + np.timedelta64(int(td), "D"))
        name = (f"{modality}_{info.collection}_{info.roi_id}_ImgNo_{slot}_{date}_patch_"
                f"{int(ix.patch_id[pdx])}.tif")
        rel = f"{info.collection}/{info.roi_id}/{modality.upper()}/{slot}/{name}"
        return os.path.join(root, rel) if root else rel


MODES = ("seq2point", "seq2seq")


class BatchMaker:
    """Turns sample ids of an epoch into stacked NumPy batches (seq2point or seq2seq).

    Per-epoch draws (the random sampler's plan, crop offsets, seq2seq windows, synthetic gaps)
    come from generators seeded by ``(seed, epoch)``, so every process computes the same ones.
    """

    def __init__(self, samples: SampleSet, *, mode: str = "seq2point", crop: int | None = None,
                 window: int | None = None, cloudy_threshold: float = sampling.CLOUDY_FRACTION,
                 gap_probability: float = 0.0, threads: int = 2, s1: bool = True,
                 alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        p = samples.meta.patch_size
        if crop is not None:
            _check_crop(crop, p)
        if window is not None and not 1 <= int(window) <= schema.N_SLOTS:
            raise ValueError(f"window={window} must be between 1 and {schema.N_SLOTS}")
        self.samples, self.mode = samples, mode
        self.crop = int(crop) if crop and int(crop) < p else None
        self.window = window
        self.cloudy_threshold, self.gap_probability = cloudy_threshold, gap_probability
        o = samples.opts
        self.reader = SampleReader(samples.meta, detector=o.cloud_masks,
                                   rescale_method=o.rescale_method, threads=threads, s1=s1,
                                   alloc=alloc)
        self._cache: tuple[int, dict] | None = None

    def draws(self, epoch: int) -> dict:
        """The epoch's draws for the whole split (cached for the current epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        s, seed, n = self.samples, self.samples.opts.seed, len(self.samples)
        p = s.meta.patch_size
        drawn: dict[str, Any] = {}
        if self.crop:
            rng = np.random.default_rng([seed, epoch, 1])
            drawn["offsets"] = rng.integers(0, p - self.crop + 1, size=(n, 2))
        if self.mode == "seq2point":
            drawn["plan"] = s.plan(epoch)
        else:
            length = self.window or schema.N_SLOTS
            rng = np.random.default_rng([seed, epoch, 2]) if length < schema.N_SLOTS else None
            drawn["slots"] = sampling.series_windows(n, length, rng)
        self._cache = (epoch, drawn)
        return drawn

    def read_batch(self, ids: np.ndarray, epoch: int = 0) -> dict:
        """Samples ``ids`` of ``epoch`` as NumPy arrays.

        seq2point: ``{"input": {...}, "target": {...}, "coverage bin", "pdx"}``, each part with
        ``S2`` (B, T, 13, h, w), ``S1`` (B, T, 2, h, w), ``masks`` (B, T, h, w), ``coverage``,
        ``S1 TD``, ``S2 TD`` and ``idx`` (B, T). seq2seq: the same keys flat for the series,
        plus ``cloudy``, ``valid`` and (with gaps) ``gap_masks``.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        s, drawn = self.samples, self.draws(int(epoch))
        ix = s.index
        offsets = drawn["offsets"][ids] if "offsets" in drawn else None
        if self.mode == "seq2point":
            plan = drawn["plan"]
            slots = plan.slots[ids]
            gaps = None
        else:
            slots = drawn["slots"][ids]
            gaps = self._gaps(ids, slots, int(epoch))
        out = self.reader.read(ix.roi[ids], ix.row[ids], ix.col[ids], slots, crop=self.crop,
                               offsets=offsets, gaps=gaps)
        rows = ids[:, None]
        out.update({"coverage": s.coverage[rows, slots], "S1 TD": s.s1_td[rows, slots],
                    "S2 TD": s.s2_td[rows, slots], "idx": slots})
        if self.mode == "seq2seq":
            out["cloudy"] = sampling.cloudy_frames(out["coverage"], self.cloudy_threshold)
            out["valid"] = s.valid_s2[rows, slots]
            out["pdx"] = ids
            return out
        k = plan.inputs.shape[1]
        return {"input": {key: v[:, :k] for key, v in out.items()},
                "target": {key: v[:, k:] for key, v in out.items()},
                "coverage bin": plan.match[ids], "pdx": ids}

    def _gaps(self, ids: np.ndarray, slots: np.ndarray, epoch: int):
        if self.gap_probability <= 0 or self.samples.opts.cloud_masks is None:
            return None
        s = self.samples
        d = schema.DETECTORS.index(s.opts.cloud_masks)
        m = s.meta
        donors = {}
        for i in np.unique(s.index.roi[ids]):
            cov = np.array(m.coverage[i, :, :, :, d], np.float64)
            cov[m.blank[i] | ~m.valid_s2[i]] = np.nan  # blank or missing frames are no donors
            donors[int(i)] = cov
        sub = sampling.PatchIndex(s.index.roi[ids], s.index.row[ids], s.index.col[ids],
                                  s.index.patch_id[ids], s.index.roi_names)
        rng = np.random.default_rng([s.opts.seed, epoch, 3, int(ids[0])])
        cloudy = sampling.cloudy_frames(s.coverage[ids[:, None], slots], self.cloudy_threshold)
        return sampling.gap_plan(slots, sub, donors, rng, self.gap_probability,
                                 self.cloudy_threshold, frame_cloudy=cloudy)

    def close(self) -> None:
        self.reader.close()


def iter_batches(cube: Any, *, split: str = "train", region: str = "all",
                 cloud_masks: str = "s2cloudless_mask", mode: str = "seq2point",
                 sampler: str = "random", n_input_samples: int = 3, min_cov: float = 0.0,
                 max_cov: float = 1.0, rescale_method: str | None = "default",
                 batch_size: int = 8, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 crop: int | None = None, window: int | None = None,
                 gap_probability: float = 0.0, threads: int = 2,
                 storage_options: dict | None = None):
    """NumPy batches of one epoch, in one process (the loader without torch).

    The same batches as :func:`s2cube.torch.make_loader` (same options, one rank, one worker)
    as dicts of NumPy arrays; see :meth:`BatchMaker.read_batch` for their keys.
    """
    opts = SampleOptions(split, region, cloud_masks, "cloudy_cloudfree", sampler,
                         int(n_input_samples), rescale_method, float(min_cov), float(max_cov),
                         seed=int(seed))
    samples = SampleSet(cube, opts, storage_options=storage_options)
    maker = BatchMaker(samples, mode=mode, crop=crop, window=window,
                       gap_probability=gap_probability, threads=threads)
    n = len(samples)
    order = sampling.epoch_rng(seed, epoch).permutation(n) if shuffle else np.arange(n)
    try:
        for i in range(0, n, batch_size):
            yield maker.read_batch(order[i:i + batch_size], epoch)
    finally:
        maker.close()


def dataset_batches(ds: Any, cube: Any = None, **options: Any):
    """:func:`iter_batches` for a Dataset opened by :func:`s2cube.open_cube` (its URL is known).

    The batches bypass xarray and dask: the Dataset only says where the cube is.
    """
    url = cube if cube is not None else ds.encoding.get("s2cube_url")
    if url is None:
        raise ValueError("this Dataset does not know where its cube is (open it with "
                         "s2cube.open_cube(url)); or pass cube=URL")
    return iter_batches(url, **options)
