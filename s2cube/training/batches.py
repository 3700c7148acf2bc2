"""Sample plans turned into stacked arrays and batches, read by the cube's chunk reader.

- preprocessing exactly as the reference loader does it (:func:`s2_post`, :func:`s1_post`,
  :func:`mask_post`), run by the reader's decoding threads on each decoded frame;
- :class:`SampleReader`: the S2, S1 and mask frames of many (patch, slot) pairs of a
  :class:`~s2cube.io.view.CubeView`, read into stacked ``(B, T, ...)`` arrays;
- :class:`SampleSet`: the samples of a Dataset (any selection of ROIs, slots, bands and
  patches of an ``open_cube`` Dataset) without pixels: index, coverage, dates, plans per
  epoch, the reference's ``coord`` and archive paths;
- :class:`BatchMaker` and :func:`iter_batches`: seq2point or seq2seq batches of an epoch as
  NumPy arrays (what :func:`s2cube.torch.make_loader` wraps in tensors), each carrying its
  provenance: ROI, patch (row, col, id) and the ``time`` labels of every frame.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2cube import schema, sen12mscr
from s2cube.errors import SelectionError
from s2cube.grid import patch_bounds
from s2cube.io.reader import FrameRequest, Post
from s2cube.io.view import CubeView, source_of, view_of
from s2cube.plans import pairs
from s2cube.plans import rules as sampling

logger = logging.getLogger(__name__)


# --- preprocessing, exactly as the reference loader does it -------------------------------------

RESCALE_METHODS = ("default", "resnet")

#: ``alloc(shape, dtype)`` of the readers: an output array, or None for one from their pool
Alloc = Callable[[tuple[int, ...], Any], np.ndarray | None]


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
    """S1 dB → float32: ``default`` (clip(-25, 0) + 25)/25; ``resnet`` VV to [0, 2] from
    [-25, 0], VH from [-32.5, 0]; NaN → 0. ``polarizations``: the frame's channels, in order."""

    method: str = "default"
    polarizations: tuple[str, ...] = schema.POLARIZATIONS

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, frame, casting="unsafe")
        if self.method == "default":
            np.clip(out, -25, 0, out=out)
            np.subtract(out, -25, out=out)
            np.divide(out, 25, out=out)
        else:
            for band, pol in enumerate(self.polarizations):
                low = -25.0 if pol == "VV" else -32.5
                o = out[band]
                np.clip(o, low, 0, out=o)
                np.subtract(o, low, out=o)
                np.multiply(2, o, out=o)
                np.divide(o, 0 - low, out=o)
        np.nan_to_num(out, copy=False)


def s2_post(method: str | None) -> Post | None:
    """The reference's S2 preprocessing (None: raw DN)."""
    return None if method is None else S2Post(_check_method(method))


def s1_post(method: str | None, polarizations: tuple[str, ...] = schema.POLARIZATIONS) -> Post | None:
    """The reference's S1 preprocessing (None: raw dB)."""
    return None if method is None else S1Post(_check_method(method), tuple(polarizations))


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
        bits = schema.MASK_BITS.get(self.detector)
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
    schema.detector_name(detector)
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
    """Reads S2, S1 and masks of many (patch, slot) frames of a Dataset into stacked arrays.

    Parameters
    ----------
    view
        The Dataset's frames (:func:`~s2cube.io.view.view_of`); positions given to
        :meth:`read` are the Dataset's.
    detector
        Which mask to return (``schema.DETECTORS``), or None for no masks.
    rescale_method
        ``default``/``resnet`` (float32, the reference's preprocessing) or None (raw S2 DN
        uint16 and S1 dB float32, for preprocessing on the GPU).
    threads
        Decoding threads of this process.
    s1
        Read S1 too (when the Dataset holds it).
    alloc
        ``alloc(shape, dtype) -> np.ndarray | None`` for the output arrays (e.g. views of
        tensors in shared memory); by default (or when it returns None) arrays come from a
        :class:`BufferPool`, reused once the caller has dropped every reference to them.
    """

    def __init__(self, view: CubeView, *, detector: str | None = "s2cloudless_mask",
                 rescale_method: str | None = "default", threads: int = 2, s1: bool = True,
                 alloc: Alloc | None = None) -> None:
        from s2cube.io.reader import ChunkReader

        self.view = view
        self.detector = detector
        self.rescale_method = rescale_method
        self.s1 = s1 and "s1" in view.variables and view.polarization is not None
        self.alloc = alloc
        self.pool = BufferPool()
        src = view.source
        self._lay = src.layouts
        self.chunks = ChunkReader(src.url, src.layouts, roi_names=src.roi_names,
                                  storage_options=src.loc.storage_options, threads=threads)
        self._bands = None if np.array_equal(view.band, np.arange(len(schema.BANDS))) \
            else _index(view.band)
        pol = view.polarization if self.s1 else None  # not None when self.s1
        self._n_pols = 0 if pol is None else int(pol.size)
        self._pols = None
        if pol is not None and not np.array_equal(pol, np.arange(len(schema.POLARIZATIONS))):
            self._pols = _index(pol)
        self._s2_post = s2_post(rescale_method)
        pols = tuple(schema.POLARIZATIONS[i] for i in (pol if pol is not None else ()))
        self._s1_post = s1_post(rescale_method, pols or schema.POLARIZATIONS)
        if detector is not None:
            self._mask_var = schema.mask_source(detector)
            if self._mask_var not in view.variables:
                raise SelectionError(f"cloud_masks={detector!r} reads {self._mask_var!r}, which "
                                     "the Dataset does not hold; keep it in the selection or "
                                     "pass cloud_masks=None")
            self._mask_posts = {b: mask_post(detector, blank=b) for b in (False, True)}

    def _empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        got = self.alloc(shape, dtype) if self.alloc is not None else None
        return self.pool.get(shape, dtype) if got is None else got

    def read(self, roi: np.ndarray, row: np.ndarray, col: np.ndarray, slots: np.ndarray, *,
             crop: int | None = None, offsets: np.ndarray | None = None,
             gaps: Any | None = None) -> dict[str, np.ndarray]:
        """Frames of B samples at (B, T) ``slots`` (all positions in the Dataset).

        Returns ``S2`` (B, T, bands, h, w), ``S1`` (B, T, polarizations, h, w), ``masks``
        (B, T, h, w) and, with ``gaps`` (a :class:`~s2cube.plans.rules.GapPlan`),
        ``gap_masks`` (B, T, h, w): the real masks pasted as synthetic gaps (0 where none).
        ``crop`` is the side of a window at ``offsets`` (B, 2) = (y0, x0) inside the patch;
        the whole patch without it. Missing and blank frames get an all-ones mask (the
        reference's blank rule).

        Raises
        ------
        ChunkError
            A frame's chunk is damaged or missing (the message names it).
        """
        v = self.view
        roi, row, col = (np.asarray(a, np.int64).reshape(-1) for a in (roi, row, col))
        slots = np.asarray(slots, np.int64)
        b_n, t_n = slots.shape
        p = v.patch_size
        size = _check_crop(crop, p) if crop else p
        fdt = np.float32 if self.rescale_method else None
        out = {"S2": self._empty((b_n, t_n, v.band.size, size, size), fdt or np.uint16)}
        if self.s1:
            out["S1"] = self._empty((b_n, t_n, self._n_pols, size, size), np.float32)
        if self.detector is not None:
            out["masks"] = self._empty((b_n, t_n, size, size), np.float32)
        if gaps is not None and self.detector is not None:
            out["gap_masks"] = self._empty((b_n, t_n, size, size), np.float32)
        cells = (roi[:, None], slots, row[:, None], col[:, None])
        valid_s2 = _held(v.valid_s2, "valid_s2")
        has_s2 = valid_s2[cells]
        has_s1 = _held(v.valid_s1, "valid_s1")[cells]
        blank = _held(v.blank, "blank")[cells] | ~has_s2
        s_roi, s_row, s_col, s_slot = v.roi[roi], v.row[row], v.col[col], v.time[slots]
        reqs: list[FrameRequest] = []
        for b in range(b_n):
            win = (slice(None), slice(None))
            if size != p:
                y0, x0 = (int(o) for o in offsets[b]) if offsets is not None else (0, 0)
                win = (slice(y0, y0 + size), slice(x0, x0 + size))
            i, r, c = int(s_roi[b]), int(s_row[b]), int(s_col[b])
            s2_sel = None if (self._bands is None and size == p) else \
                (self._bands if self._bands is not None else slice(None), *win)
            lay = self._lay
            for k in range(t_n):
                t = int(s_slot[b, k])
                reqs.append(FrameRequest.at(lay["s2"], i, r, c, t, out["S2"][b, k], s2_sel,
                                            self._s2_post, bool(has_s2[b, k])))
                if self.s1:
                    s1_sel = None if (self._pols is None and size == p) else \
                        (self._pols if self._pols is not None else slice(None), *win)
                    reqs.append(FrameRequest.at(lay["s1"], i, r, c, t, out["S1"][b, k], s1_sel,
                                                self._s1_post, bool(has_s1[b, k])))
                if self.detector is None:
                    continue
                m_sel = None if size == p else win
                reqs.append(FrameRequest.at(lay[self._mask_var], i, r, c, t, out["masks"][b, k],
                                            m_sel, self._mask_posts[bool(blank[b, k])],
                                            bool(has_s2[b, k])))
                if gaps is None:
                    continue
                gslot = int(gaps.slot[b, k])
                if gslot < 0:
                    out["gap_masks"][b, k].fill(0)
                else:
                    gr, gc = int(gaps.row[b, k]), int(gaps.col[b, k])
                    reqs.append(FrameRequest.at(
                        lay[self._mask_var], i, int(v.row[gr]), int(v.col[gc]), int(v.time[gslot]),
                        out["gap_masks"][b, k], m_sel, self._mask_posts[False],
                        bool(valid_s2[roi[b], gslot, gr, gc])))
        self.chunks.read(reqs)
        return out

    def close(self) -> None:
        self.chunks.close()


def _held(value: np.ndarray | None, name: str) -> np.ndarray:
    """A small variable of a view, which must have been made with it (``view_of(small=...)``)."""
    if value is None:
        raise SelectionError(f"the view holds no {name!r}, which the loader needs; make it with "
                             f"view_of(ds) (small= must name {name!r})")
    return value


def _index(positions: np.ndarray) -> slice | np.ndarray:
    pos = np.asarray(positions, np.int64)
    if pos.size and (np.diff(pos) == 1).all():
        return slice(int(pos[0]), int(pos[-1]) + 1)
    return pos


# --- a Dataset's samples: plans per epoch, metadata, batches ---------------------------------------

@dataclass(frozen=True)
class SampleOptions:
    """The reference loader's options, checked once, when they are given."""

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
        if self.split not in ("all", *schema.SPLITS):
            raise ValueError(f"split {self.split!r} is not one of all, {', '.join(schema.SPLITS)}")
        if self.region not in ("all", *schema.REGIONS):
            raise ValueError(f"region {self.region!r} is not one of all, "
                             f"{', '.join(schema.REGIONS)}")
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
        if not 1 <= int(self.n_input_samples) < schema.N_SLOTS:
            raise ValueError(f"n_input_samples={self.n_input_samples} must be between 1 and "
                             f"{schema.N_SLOTS - 1} (a series has {schema.N_SLOTS} slots)")
        if not 0.0 <= self.min_cov <= self.max_cov <= 1.0:
            raise ValueError(f"min_cov={self.min_cov}, max_cov={self.max_cov}: need "
                             "0 <= min_cov <= max_cov <= 1")
        if self.rescale_method is not None:
            _check_method(self.rescale_method)
        start, stop = (int(v) for v in self.subset)
        if self.sampler == "fixedsubset" and not (
                0 <= start < stop <= schema.N_SLOTS and stop - start > self.n_input_samples):
            raise ValueError(f"subset={tuple(self.subset)} must be a slot range inside 0..."
                             f"{schema.N_SLOTS} holding at least n_input_samples + 1 = "
                             f"{self.n_input_samples + 1} slots")


class SampleSet:
    """The samples of a Dataset, without pixels: cheap, picklable, no live state.

    ``cube`` is a Dataset from :func:`s2cube.open_cube` (any selection of its ROIs, slots,
    bands and whole patches) or the path or URL of a cube. ``split``/``region`` pick ROIs
    within it; slots are the Dataset's ``time`` labels.

    Raises
    ------
    SelectionError
        The Dataset cannot be streamed as stored frames, or holds no sample of the split
        and region asked for (the message names what it holds).
    """

    def __init__(self, cube: Any, opts: SampleOptions, *, import_data_path: Any = None,
                 trust: bool = False, storage_options: dict | None = None,
                 check_pair_paths: bool = True, s1: bool = True) -> None:
        ds = source_of(cube, storage_options)
        mask = schema.mask_source(opts.cloud_masks)
        names = ("s2", mask) + (("s1",) if s1 and "s1" in ds.data_vars else ())
        view = view_of(ds, variables=names)
        self.view = view
        self.opts = opts
        patch_id = _held(view.patch_id, "patch_id")
        self.index = sampling.patch_index(patch_id, view.roi_names, opts.split, opts.region)
        ix = self.index
        if len(ix) == 0:
            infos = [schema.roi_info(r) for r in view.roi_names]
            raise SelectionError(
                f"no sample of split={opts.split!r}, region={opts.region!r} in this Dataset "
                f"({view.describe()}; splits {sorted({i.split for i in infos})}, regions "
                f"{sorted({i.region for i in infos})}, {int((patch_id >= 0).sum())} "
                "patches); choose a split and region it holds")
        n_slots = view.time.size
        if opts.sample_type == "cloudy_cloudfree" and n_slots < opts.n_input_samples + 1:
            raise SelectionError(f"the Dataset holds {n_slots} slot(s) ({view.describe()}); "
                                 f"n_input_samples={opts.n_input_samples} needs "
                                 f"{opts.n_input_samples + 1}")
        cov = sampling.sample_coverage(_held(view.coverage, "coverage"), ix, opts.cloud_masks)
        blank = _held(view.blank, "blank")[ix.roi, :, ix.row, ix.col]
        self.coverage = sampling.apply_blank_rule(cov, blank).astype(np.float32)
        self.valid_s2 = _held(view.valid_s2, "valid_s2")[ix.roi, :, ix.row, ix.col]
        self.s2_td = days(_held(view.s2_date, "s2_date")[ix.roi, :, ix.row, ix.col])
        self.s1_td = days(_held(view.s1_date, "s1_date")[ix.roi, :, ix.row, ix.col])
        self.pairs = None
        if import_data_path is not None:
            path = pairs.find_pair_file(import_data_path, opts.n_input_samples, opts.split,
                                         opts.region, opts.cloud_masks)
            self.pairs = pairs.load_pair_file(path, trust=trust)
            if check_pair_paths:
                pairs.check_paths(self.pairs, [(ix.roi_name(i), int(ix.patch_id[i]))
                                                for i in range(len(ix))])
        self._choices: dict[int, sampling.SlotChoice] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def slot_labels(self) -> np.ndarray:
        """The ``time`` label (stored slot) of each of the Dataset's time positions."""
        return self.view.time

    def positions(self, labels: Any, what: str) -> np.ndarray:
        """Time labels as the Dataset's positions (PlanError naming the slots it lacks)."""
        from s2cube.errors import PlanError

        where = {int(t): k for k, t in enumerate(self.view.time)}
        lab = np.asarray(labels, np.int64)
        missing = sorted({int(t) for t in lab.ravel() if int(t) not in where and t >= 0})
        if missing:
            raise PlanError(f"{what} names slot(s) {missing} that the Dataset does not hold "
                            f"({self.view.describe()}); select those slots or use another plan")
        return np.vectorize(lambda t: where.get(int(t), -1), otypes=[np.int64])(lab) \
            if lab.size else lab

    def choice(self, epoch: int) -> sampling.SlotChoice:
        """The slots of every sample in one epoch, as positions in the Dataset's ``time`` (the
        same in every process)."""
        epoch = int(epoch)
        got = self._choices.get(epoch)
        if got is not None:
            return got
        o = self.opts
        if self.pairs is not None:
            plan = pairs.slots_from_pairs(
                self.pairs, len(self), epoch=epoch, sample_type=o.sample_type, sampler=o.sampler,
                n_input_samples=o.n_input_samples, min_cov=o.min_cov, max_cov=o.max_cov,
                stable=o.stable_sort, subset=o.subset, seed=o.seed)
            target = plan.target
            plan = sampling.SlotChoice(self.positions(plan.inputs, "the pair file"),
                                       np.where(target >= 0, self.positions(
                                           np.maximum(target, 0), "the pair file"), -1),
                                       plan.match)
        else:
            subset = self.positions_range(o.subset)
            plan = sampling.choose_slots(
                self.coverage, sample_type=o.sample_type, sampler=o.sampler,
                n_input_samples=o.n_input_samples, min_cov=o.min_cov, max_cov=o.max_cov,
                stable=o.stable_sort, subset=subset, seed=o.seed, epoch=epoch)
        if len(self._choices) > 4:
            self._choices.clear()
        self._choices[epoch] = plan
        return plan

    def positions_range(self, labels: tuple[int, int]) -> tuple[int, int]:
        """A half-open range of slot labels as the range of the Dataset's positions inside it."""
        inside = np.flatnonzero((self.view.time >= labels[0]) & (self.view.time < labels[1]))
        if inside.size == 0:
            return (0, 0)
        return int(inside[0]), int(inside[-1]) + 1

    def coord(self, pdx: int) -> list[float]:
        """``[left, bottom, right, top]`` of sample ``pdx`` in its ROI's CRS (rasterio bounds)."""
        ix, v = self.index, self.view
        transform = [float(t) for t in v.transform[ix.roi[pdx]]]
        return list(patch_bounds(transform, v.patch_size, int(v.row[ix.row[pdx]]),
                                 int(v.col[ix.col[pdx]])))

    def provenance(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """ROI names, stored patch row/col and patch ids of samples ``ids``."""
        ix, v = self.index, self.view
        return {"roi": np.array([v.roi_names[i] for i in ix.roi[ids]]),
                "row": v.row[ix.row[ids]], "col": v.col[ix.col[ids]],
                "patch_id": ix.patch_id[ids].astype(np.int64)}

    def path(self, pdx: int, modality: str, slot: int, root: str | None) -> str:
        """The archive's file name of one frame (``slot``: a Dataset position); '' if missing."""
        ix = self.index
        info = schema.roi_info(ix.roi_name(pdx))
        td = (self.s1_td if modality == "s1" else self.s2_td)[pdx, slot]
        if td == NO_DATE:
            return ""
        label = int(self.view.time[slot])
        date = str(schema.TD_EPOCH + np.timedelta64(int(td), "D"))
        name = (f"{modality}_{info.collection}_{info.roi_id}_ImgNo_{label}_{date}_patch_"
                f"{int(ix.patch_id[pdx])}.tif")
        rel = f"{info.collection}/{info.roi_id}/{modality.upper()}/{label}/{name}"
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
                 alloc: Alloc | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        p = samples.view.patch_size
        if crop is not None:
            _check_crop(crop, p)
        n_slots = samples.view.time.size
        if window is not None and not 1 <= int(window) <= n_slots:
            raise ValueError(f"window={window} must be between 1 and the Dataset's {n_slots} slots")
        if not 0.0 <= float(gap_probability) <= 1.0:
            raise ValueError(f"gap_probability={gap_probability} must be between 0 and 1")
        self.samples, self.mode = samples, mode
        self.crop = int(crop) if crop and int(crop) < p else None
        self.window = window
        self.cloudy_threshold, self.gap_probability = cloudy_threshold, gap_probability
        o = samples.opts
        self.reader = SampleReader(samples.view, detector=o.cloud_masks,
                                   rescale_method=o.rescale_method, threads=threads, s1=s1,
                                   alloc=alloc)
        self._cache: tuple[int, dict] | None = None

    def draws(self, epoch: int) -> dict:
        """The epoch's draws for the whole selection (cached for the current epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        s, seed, n = self.samples, self.samples.opts.seed, len(self.samples)
        p = s.view.patch_size
        drawn: dict[str, Any] = {}
        if self.crop:
            rng = np.random.default_rng([seed, epoch, 1])
            drawn["offsets"] = rng.integers(0, p - self.crop + 1, size=(n, 2))
        if self.mode == "seq2point":
            drawn["choice"] = s.choice(epoch)
        else:
            n_slots = s.view.time.size
            length = self.window or n_slots
            windows = np.random.default_rng([seed, epoch, 2]) if length < n_slots else None
            drawn["slots"] = sampling.series_windows(n, length, windows, n_slots)
        self._cache = (epoch, drawn)
        return drawn

    def read_batch(self, ids: np.ndarray, epoch: int = 0) -> dict:
        """Samples ``ids`` of ``epoch`` as NumPy arrays.

        seq2point: ``{"input": {...}, "target": {...}, "coverage bin", "pdx", "roi", "row",
        "col", "patch_id"}``, each part with ``S2`` (B, T, bands, h, w), ``S1`` (B, T, 2, h, w),
        ``masks`` (B, T, h, w), ``coverage``, ``S1 TD``, ``S2 TD`` and ``idx`` (B, T: the
        frames' ``time`` labels). seq2seq: the same keys flat for the series, plus
        ``cloudy``, ``valid`` and (with gaps) ``gap_masks``.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        s, drawn = self.samples, self.draws(int(epoch))
        ix = s.index
        offsets = drawn["offsets"][ids] if "offsets" in drawn else None
        if self.mode == "seq2point":
            plan = drawn["choice"]
            slots = plan.slots[ids]
            gaps = None
        else:
            slots = drawn["slots"][ids]
            gaps = self._gaps(ids, slots, int(epoch))
        out = self.reader.read(ix.roi[ids], ix.row[ids], ix.col[ids], slots, crop=self.crop,
                               offsets=offsets, gaps=gaps)
        rows = ids[:, None]
        out.update({"coverage": s.coverage[rows, slots], "S1 TD": s.s1_td[rows, slots],
                    "S2 TD": s.s2_td[rows, slots], "idx": s.view.time[slots]})
        where = {"pdx": ids, **s.provenance(ids)}
        if self.mode == "seq2seq":
            out["cloudy"] = sampling.cloudy_frames(out["coverage"], self.cloudy_threshold)
            out["valid"] = s.valid_s2[rows, slots]
            out.update(where)
            return out
        k = plan.inputs.shape[1]
        return {"input": {key: v[:, :k] for key, v in out.items()},
                "target": {key: v[:, k:] for key, v in out.items()},
                "coverage bin": plan.match[ids], **where}

    def _gaps(self, ids: np.ndarray, slots: np.ndarray, epoch: int):
        if self.gap_probability <= 0 or self.samples.opts.cloud_masks is None:
            return None
        s = self.samples
        d = schema.DETECTORS.index(s.opts.cloud_masks)
        v = s.view
        coverage = _held(v.coverage, "coverage")
        blank, valid_s2 = _held(v.blank, "blank"), _held(v.valid_s2, "valid_s2")
        donors = {}
        for i in np.unique(s.index.roi[ids]):
            cov = np.array(coverage[i, :, :, :, d], np.float64)
            cov[blank[i] | ~valid_s2[i]] = np.nan  # blank or missing frames are no donors
            donors[int(i)] = cov
        sub = sampling.PatchIndex(s.index.roi[ids], s.index.row[ids], s.index.col[ids],
                                  s.index.patch_id[ids], s.index.roi_names)
        rng = np.random.default_rng([s.opts.seed, epoch, 3, int(ids[0])])
        cloudy = sampling.cloudy_frames(s.coverage[ids[:, None], slots], self.cloudy_threshold)
        return sampling.gap_plan(slots, sub, donors, rng, self.gap_probability,
                                 self.cloudy_threshold, frame_cloudy=cloudy)

    def close(self) -> None:
        self.reader.close()


def iter_batches(cube: Any, *, storage_options: dict | None = None, **options: Any):
    """NumPy batches of one epoch, in one process (the loader without torch).

    ``cube`` is a Dataset from :func:`s2cube.open_cube` — any selection of its ROIs, slots,
    bands and whole patches, streamed as it is — or the path or URL of a cube. The same
    batches as :func:`s2cube.torch.make_loader` (same options, one rank, one worker) as
    dicts of NumPy arrays. ``options``: those of :func:`series_batches` for a SEN12MS-CR-TS
    cube (see :meth:`BatchMaker.read_batch` for the keys), of
    :func:`s2cube.training.crsamples.iter_batches` for a SEN12MS-CR cube; an option of the
    other kind of cube is refused, naming it.
    """
    cube = source_of(cube, storage_options)  # opened once; a Dataset stays as it is
    if sen12mscr.is_cr(cube):
        from s2cube.training import crsamples

        return crsamples.iter_batches(cube, storage_options=storage_options, **options)
    return series_batches(cube, storage_options=storage_options, **options)


def series_batches(cube: Any, *, split: str = "train", region: str = "all",
                   cloud_masks: str = "s2cloudless_mask", mode: str = "seq2point",
                   sampler: str = "random", n_input_samples: int = 3, min_cov: float = 0.0,
                   max_cov: float = 1.0, rescale_method: str | None = "default",
                   batch_size: int = 8, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                   crop: int | None = None, window: int | None = None,
                   gap_probability: float = 0.0, threads: int = 2, s1: bool = True,
                   storage_options: dict | None = None):
    """:func:`iter_batches` of a SEN12MS-CR-TS cube (seq2point or seq2seq samples)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    opts = SampleOptions(split, region, cloud_masks, "cloudy_cloudfree", sampler,
                         int(n_input_samples), rescale_method, float(min_cov), float(max_cov),
                         seed=int(seed))
    samples = SampleSet(cube, opts, storage_options=storage_options, s1=s1)
    maker = BatchMaker(samples, mode=mode, crop=crop, window=window,
                       gap_probability=gap_probability, threads=threads, s1=s1)
    return _batches(maker, len(samples), int(batch_size), shuffle, int(seed), int(epoch))


def _batches(maker: BatchMaker, n: int, batch_size: int, shuffle: bool, seed: int, epoch: int):
    order = sampling.epoch_rng(seed, epoch).permutation(n) if shuffle else np.arange(n)
    try:
        for i in range(0, n, batch_size):
            yield maker.read_batch(order[i:i + batch_size], epoch)
    finally:
        maker.close()
