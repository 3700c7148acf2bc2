"""SEN12MS-CR samples from a SEN12MS-CR cube: the reference loader's, and batches of them.

The reference (UnCRtainTS ``data/dataLoader.py``, class ``SEN12MSCR``) gives one sample per
patch that has all three files, in the order it walks the archive (collections, scenes and
files in natural order), with the cloudy image as input, the cloud-free one as target, and a
cloud mask computed on the raw cloudy DN at every read. Here:

- :class:`CrSampleSet` is that list of samples, built from the small variables only (which
  patches exist, are valid, belong to the split), with the stored coverage;
- :class:`CrSampleReader` reads S1, the cloudy and the cloud-free S2 and the stored mask of
  many samples into stacked arrays, preprocessed as the reference does it
  (:class:`~s2cube.training.batches.S2Post`, ``S1Post``, ``MaskPost``) by the reader's
  decoding threads;
- :class:`CrDataset` is the drop-in's logic (torch-free; :class:`s2cube.torch.SEN12MSCR`
  wraps it), :class:`CrBatchMaker` and :func:`iter_batches` the batched path.

Splits follow :mod:`s2cube.sen12mscr`: exact scene matching by default, the reference's
substring membership with ``split_mode="reference"``, and ``"combined"`` for training on both
data sets without sharing ground between a training and an evaluation split.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube.errors import SelectionError
from s2cube.io.crcube import CrSource
from s2cube.io.reader import ChunkReader, FrameRequest
from s2cube.io.view import _source, channel_positions, source_of
from s2cube.training.batches import Alloc, BufferPool, S1Post, S2Post, _check_crop, _index, mask_post
from s2cube.training.batches import _check_method as check_method

logger = logging.getLogger(__name__)

SAMPLE_TYPES = ("pretrain",)


@dataclass(frozen=True)
class S2TablePost:
    """S2 DN → float32 as the reference's ``process_MS`` (``default``/``resnet``), one table
    lookup per DN (:mod:`s2cube.kernels.lut`): the same values as
    :class:`~s2cube.training.batches.S2Post`, in one pass instead of three."""

    method: str = "default"

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        from s2cube.kernels import lut

        if frame.dtype != np.uint16:
            S2Post(check_method(self.method))(frame, out)
            return
        lut.apply(lut.s2_table(self.method), frame, out)


@dataclass(frozen=True)
class S1KernelPost:
    """S1 dB → float32 as the reference's ``process_SAR``, in one pass
    (:func:`s2cube.kernels.lut.s1_rescale`): the values of
    :class:`~s2cube.training.batches.S1Post`."""

    method: str = "default"
    polarizations: tuple[str, ...] = schema.POLARIZATIONS

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        from s2cube.kernels import lut

        if not lut.s1_rescale(self.method, self.polarizations, frame, out):
            S1Post(check_method(self.method), tuple(self.polarizations))(frame, out)


@dataclass(frozen=True)
class CrOptions:
    """The reference loader's options (and the split mode), checked once."""

    split: str = "all"
    region: str = "all"
    cloud_masks: str | None = "s2cloudless_mask"
    sample_type: str = "pretrain"
    rescale_method: str | None = "default"
    split_mode: str = "exact"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("all", *schema.SPLITS):
            raise ValueError(f"split {self.split!r} is not one of all, {', '.join(schema.SPLITS)}")
        if self.region != "all":
            raise ValueError(f"region {self.region!r}: SEN12MS-CR has no regions; the reference "
                             "loader takes region='all' only")
        if self.cloud_masks is not None and self.cloud_masks not in schema.DETECTORS:
            raise ValueError(f"cloud_masks={self.cloud_masks!r}: choose None or one of "
                             f"{', '.join(schema.DETECTORS)}")
        if self.sample_type not in SAMPLE_TYPES:
            raise ValueError(f"sample_type {self.sample_type!r}: SEN12MS-CR samples are "
                             "'pretrain' (one cloudy image, one cloud-free target)")
        if self.rescale_method is not None:
            check_method(self.rescale_method)
        cr._check_mode(self.split_mode)


# --- a Dataset's patches as stored positions ---------------------------------------------------

@dataclass(frozen=True)
class CrView:
    """What a SEN12MS-CR Dataset holds, as stored positions (cf. :class:`s2cube.io.view.CubeView`).

    Arrays below are per patch of the Dataset; ``position`` maps them to the stored ``patch``
    positions, ``band`` and ``polarization`` to the stored channels.
    """

    source: Any  # s2cube.io.crcube.CrSource
    position: np.ndarray
    band: np.ndarray
    polarization: np.ndarray | None
    variables: frozenset[str]
    patch_size: int
    scene: np.ndarray  # index into ``scenes``, -1 where no patch is stored
    patch_id: np.ndarray
    valid_s2: np.ndarray
    valid_s2_cloudy: np.ndarray
    valid_s1: np.ndarray
    blank: np.ndarray
    coverage: np.ndarray  # (patch, detector)
    transform: np.ndarray  # (patch, 6)
    scenes: tuple[cr.Scene, ...]

    @property
    def url(self) -> str:
        return self.source.url

    def scene_name(self, k: int) -> str:
        """The scene label of the Dataset's patch ``k``."""
        return self.scenes[int(self.scene[k])].scene

    def describe(self) -> str:
        held = sorted({self.scenes[s].scene for s in self.scene.tolist() if s >= 0},
                      key=lambda s: cr.order_key(*cr.parse_scene(s)))
        return (f"{int((self.scene >= 0).sum())} patches of {len(held)} scene(s) "
                f"{held[:6]}{' …' if len(held) > 6 else ''}")


def cr_view_of(ds: xr.Dataset, *, variables: tuple[str, ...] = ("s2",)) -> CrView:
    """Resolve a SEN12MS-CR Dataset (any selection of its patches, bands and polarizations
    from :func:`s2cube.open_cube`) into stored positions.

    Raises
    ------
    SelectionError
        The Dataset is not a SEN12MS-CR cube's, a pixel variable is not the stored one, or a
        selection cuts the patches (the loaders read whole patches; use ``crop``).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray Dataset from s2cube.open_cube, got {type(ds).__name__}")
    if not cr.is_cr(ds):
        raise SelectionError("this Dataset is not a SEN12MS-CR cube (root attribute cube_kind "
                             f"{ds.attrs.get(cr.ATTR_KIND)!r}); SEN12MS-CR-TS cubes load with "
                             "s2cube.torch.SEN12MSCRTS and make_loader")
    if "patch" not in ds.dims:
        ds = ds.expand_dims("patch")
    source = _source(ds, variables)
    if not isinstance(source, CrSource):
        raise SelectionError(f"{source.url} is not a SEN12MS-CR cube")
    p = source.patch_size
    for dim in ("y", "x"):
        if dim in ds.dims and (ds.sizes[dim] != p or not np.array_equal(
                np.asarray(ds[dim].values), np.arange(p))):
            raise SelectionError(f"the selection along {dim!r} cuts the patches ({ds.sizes[dim]} "
                                 f"of {p} pixels); the loaders read whole patches: pass crop= "
                                 "for windows")
    position = np.asarray(ds["patch"].values, np.int64).reshape(-1)
    n_stored = source.layouts["s2"].shape[0]
    if position.size and (position.min() < 0 or position.max() >= n_stored):
        raise SelectionError(f"the Dataset's patch labels are not positions of the cube "
                             f"{source.url} (0 … {n_stored - 1})")
    band, pol = channel_positions(ds, variables, source.url)
    missing = [v for v in cr.SMALL_VARIABLES if v not in ds.variables]
    if missing:
        raise SelectionError(f"the Dataset lacks {missing}, which the loader needs (to choose "
                             "samples and find their frames); keep them in the selection")

    def take(name, dims=("patch",)):
        return np.asarray(ds[name].transpose(*dims).values)

    return CrView(
        source=source, position=position, band=band, polarization=pol,
        variables=frozenset(v for v in cr.PIXEL_VARIABLES if v in ds.data_vars), patch_size=p,
        scene=take("scene").astype(np.int64), patch_id=take("patch_id").astype(np.int64),
        valid_s2=take("valid_s2").astype(bool), valid_s2_cloudy=take("valid_s2_cloudy").astype(bool),
        valid_s1=take("valid_s1").astype(bool), blank=take("blank").astype(bool),
        coverage=take("coverage", ("patch", "detector")).astype(np.float32),
        transform=take("transform", ("patch", "affine")).astype(np.float64),
        scenes=tuple(source.scenes))


# --- the samples ---------------------------------------------------------------------------------

class CrSampleSet:
    """The samples of a SEN12MS-CR Dataset in the reference's order; no pixel read.

    ``index[pdx]`` is the Dataset position of sample ``pdx``. A patch is a sample when its
    scene is in the split (``opts.split_mode``), and its cloud-free, cloudy and (when the cube
    holds S1 and ``s1``) S1 files were all read: the reference's "all three files exist",
    with unreadable files counted as absent.

    Raises
    ------
    SelectionError
        Not a SEN12MS-CR Dataset, or no sample of the split in it (the message says what it
        holds).
    """

    def __init__(self, cube: Any, opts: CrOptions, *, storage_options: dict | None = None,
                 s1: bool = True) -> None:
        ds = source_of(cube, storage_options)
        names: tuple[str, ...] = ("s2", "s2_cloudy")
        if opts.cloud_masks is not None:
            names += (schema.mask_source(opts.cloud_masks),)
        view0 = cr_view_of(ds, variables=names)
        self.s1 = bool(s1 and "s1" in ds.data_vars and view0.valid_s1.any())
        view = cr_view_of(ds, variables=names + (("s1",) if self.s1 else ()))
        self.view, self.opts = view, opts
        exists = view.scene >= 0
        ok = exists & view.valid_s2 & view.valid_s2_cloudy & (view.valid_s1 if self.s1 else True)
        member = {i: cr.in_split(s.scene, opts.split, opts.split_mode)
                  for i, s in enumerate(view.scenes)}
        keep = np.flatnonzero(ok & np.array([member.get(int(s), False) for s in view.scene], bool))
        order = cr.sample_order(view.scene[keep], view.patch_id[keep], list(view.scenes))
        self.index = keep[order]
        if len(self.index) == 0:
            held = sorted({view.scenes[s].scene for s in view.scene.tolist() if s >= 0})
            splits = {s: sorted(cr.scene_splits(s, opts.split_mode)) for s in held}
            raise SelectionError(
                f"no sample of split={opts.split!r} (split_mode={opts.split_mode!r}) in this "
                f"Dataset ({view.describe()}; their splits: {splits}; "
                f"{int((exists & ~ok).sum())} patches lack a file); choose a split it holds")
        if opts.cloud_masks is not None:
            d = schema.DETECTORS.index(opts.cloud_masks)
            cov = view.coverage[self.index, d].copy()
            cov[view.blank[self.index]] = 1  # the blank rule (stored so already)
            self.coverage: np.ndarray | None = cov.astype(np.float32)
        else:
            self.coverage = None
        dropped = int((exists & ~ok).sum())
        if dropped:
            logger.info("%d patches lack a file (unpaired or unreadable) and are no sample, as "
                        "in the reference", dropped)

    def __len__(self) -> int:
        return int(self.index.size)

    def scene(self, pdx: int) -> str:
        return self.view.scene_name(self.index[pdx])

    def patch_id(self, pdx: int) -> int:
        return int(self.view.patch_id[self.index[pdx]])

    def coord(self, pdx: int) -> list[float]:
        """``[left, bottom, right, top]`` of the sample's S2 file (rasterio's bounds)."""
        return cr.patch_bounds(self.view.transform[self.index[pdx]], self.view.patch_size)

    def path(self, pdx: int, modality: str, root: str | None = None) -> str:
        """The archive path of one of the sample's files (``root``-prefixed when given)."""
        rel = cr.relpath(self.scene(pdx), modality, self.patch_id(pdx))
        return os.path.join(root, rel) if root else rel

    def provenance(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Scene, patch number and stored position of samples ``ids``."""
        k = self.index[ids]
        v = self.view
        return {"scene": np.array([v.scene_name(i) for i in k]),
                "patch_id": v.patch_id[k].astype(np.int64), "patch": v.position[k]}

    def table(self):
        """The samples as a table (``pdx`` index): scene, collection, scene_id, patch_id,
        patch (stored position), splits under each split mode, coverage."""
        import pandas as pd

        scenes = [self.scene(i) for i in range(len(self))]
        parsed = [cr.parse_scene(s) for s in scenes]
        out = pd.DataFrame({
            "scene": scenes, "collection": [c for c, _ in parsed],
            "scene_id": [n for _, n in parsed],
            "patch_id": self.view.patch_id[self.index].astype(np.int64),
            "patch": self.view.position[self.index],
            **{f"split_{m}": ["/".join(sorted(cr.scene_splits(s, m))) for s in scenes]
               for m in cr.SPLIT_MODES},
        })
        if self.coverage is not None:
            out["coverage"] = self.coverage
        out.index.name = "pdx"
        return out


class CrSampleReader:
    """Reads the frames of many samples into stacked arrays, preprocessed by the reader's
    threads: ``S1`` (B, 2, h, w), ``S2`` (the cloudy image) and ``target`` (the cloud-free
    one) (B, bands, h, w), ``masks`` (B, h, w). ``rescale_method=None`` gives raw DN and dB.
    """

    def __init__(self, samples: CrSampleSet, *, threads: int = 2,
                 alloc: Alloc | None = None) -> None:
        v = samples.view
        self.samples, self.view = samples, v
        o = samples.opts
        self.detector, self.rescale_method = o.cloud_masks, o.rescale_method
        self.s1 = samples.s1
        self.alloc, self.pool = alloc, BufferPool()
        src = v.source
        self._lay = src.layouts
        self.chunks = ChunkReader(src.url, src.layouts, storage_options=src.loc.storage_options,
                                  threads=threads)
        self._labelled = False
        self._bands = None if np.array_equal(v.band, np.arange(len(schema.BANDS))) else _index(v.band)
        pol = v.polarization if self.s1 else None
        if self.s1 and pol is None:
            raise SelectionError("the samples read S1 but their view has no polarization: make "
                                 "the view with 's1' among its variables")
        self._n_pols = 0 if pol is None else int(pol.size)
        self._pols = None
        if pol is not None and not np.array_equal(pol, np.arange(len(schema.POLARIZATIONS))):
            self._pols = _index(pol)
        self._s2_post = None if self.rescale_method is None else S2TablePost(self.rescale_method)
        pols = tuple(schema.POLARIZATIONS[i] for i in (pol if pol is not None else ()))
        self._s1_post = None if self.rescale_method is None else \
            S1KernelPost(self.rescale_method, pols or schema.POLARIZATIONS)
        if self.detector is not None:
            self._mask_var = schema.mask_source(self.detector)
            self._mask_posts = {b: mask_post(self.detector, blank=b) for b in (False, True)}

    def _empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        got = self.alloc(shape, dtype) if self.alloc is not None else None
        return self.pool.get(shape, dtype) if got is None else got

    def _label(self) -> None:
        """Chunk errors name the scene and patch number (read once, on first use)."""
        if not self._labelled:
            self._labelled = True
            try:
                self.chunks.roi_names = self.view.source.patch_labels()
            except Exception:  # the read below reports what is wrong
                pass

    def read(self, ids: np.ndarray, *, crop: int | None = None,
             offsets: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Samples ``ids`` (positions in the sample set) as stacked arrays.

        Raises
        ------
        ChunkError
            A chunk is damaged or missing (the message names the scene and patch).
        """
        self._label()
        v, s = self.view, self.samples
        ids = np.asarray(ids, np.int64).reshape(-1)
        k = s.index[ids]
        b_n, p = ids.size, v.patch_size
        size = _check_crop(crop, p) if crop else p
        fdt = np.float32 if self.rescale_method else np.uint16
        out = {"S2": self._empty((b_n, v.band.size, size, size), fdt),
               "target": self._empty((b_n, v.band.size, size, size), fdt)}
        if self.s1:
            out["S1"] = self._empty((b_n, self._n_pols, size, size), np.float32)
        if self.detector is not None:
            out["masks"] = self._empty((b_n, size, size), np.float32)
        reqs: list[FrameRequest] = []
        for b in range(b_n):
            win: tuple = (slice(None), slice(None))
            if size != p:
                y0, x0 = (int(o) for o in offsets[b]) if offsets is not None else (0, 0)
                win = (slice(y0, y0 + size), slice(x0, x0 + size))
            pos = int(v.position[k[b]])
            whole = size == p
            s2_sel = None if (self._bands is None and whole) else \
                (self._bands if self._bands is not None else slice(None), *win)
            reqs.append(FrameRequest("s2_cloudy", (pos, 0, 0, 0), out["S2"][b], s2_sel,
                                     self._s2_post, True))
            reqs.append(FrameRequest("s2", (pos, 0, 0, 0), out["target"][b], s2_sel,
                                     self._s2_post, True))
            if self.s1:
                s1_sel = None if (self._pols is None and whole) else \
                    (self._pols if self._pols is not None else slice(None), *win)
                reqs.append(FrameRequest("s1", (pos, 0, 0, 0), out["S1"][b], s1_sel,
                                         self._s1_post, True))
            if self.detector is not None:
                reqs.append(FrameRequest(self._mask_var, (pos, 0, 0), out["masks"][b],
                                         None if whole else win,
                                         self._mask_posts[bool(v.blank[k[b]])], True))
        self.chunks.read(reqs)
        return out

    def close(self) -> None:
        self.chunks.close()


# --- the drop-in's logic and the batched path ------------------------------------------------------

class CrDataset:
    """The reference ``SEN12MSCR``'s samples and dict (torch-free; see s2cube.torch.SEN12MSCR)."""

    def __init__(self, cube: Any, opts: CrOptions, *, root: str | None = None, threads: int = 2,
                 storage_options: dict | None = None) -> None:
        self.samples = CrSampleSet(cube, opts, storage_options=storage_options)
        self.reader = CrSampleReader(self.samples, threads=threads)
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, pdx: int) -> dict:
        pdx = int(pdx)
        n = len(self)
        if not -n <= pdx < n:
            raise IndexError(f"sample {pdx} is out of range for {n} samples")
        pdx %= n
        s = self.samples
        got = self.reader.read(np.array([pdx]))
        coord = s.coord(pdx)
        masks = got["masks"][0] if "masks" in got else None
        return {
            "input": {
                "S1": got["S1"][0] if "S1" in got else None,
                "S2": got["S2"][0],
                "masks": masks,
                "coverage": None if s.coverage is None else np.float32(s.coverage[pdx]),
                "S1 path": s.path(pdx, "s1", self.root),
                "S2 path": s.path(pdx, "s2_cloudy", self.root),
                "coord": list(coord),
            },
            "target": {
                "S2": got["target"][0],
                "S2 path": s.path(pdx, "s2", self.root),
                "coord": list(coord),
            },
        }

    def close(self) -> None:
        self.reader.close()


class CrBatchMaker:
    """Sample ids of an epoch → stacked NumPy batches; crops drawn from ``(seed, epoch)``."""

    def __init__(self, samples: CrSampleSet, *, crop: int | None = None, threads: int = 2,
                 alloc: Alloc | None = None) -> None:
        p = samples.view.patch_size
        if crop is not None:
            _check_crop(crop, p)
        self.samples = samples
        self.crop = int(crop) if crop and int(crop) < p else None
        self.reader = CrSampleReader(samples, threads=threads, alloc=alloc)
        self._offsets: tuple[int, np.ndarray] | None = None

    def offsets(self, epoch: int) -> np.ndarray | None:
        if not self.crop:
            return None
        if self._offsets is None or self._offsets[0] != epoch:
            rng = np.random.default_rng([self.samples.opts.seed, epoch, 1])
            p = self.samples.view.patch_size
            self._offsets = (epoch, rng.integers(0, p - self.crop + 1, size=(len(self.samples), 2)))
        return self._offsets[1]

    def read_batch(self, ids: np.ndarray, epoch: int = 0) -> dict:
        """``{"input": {"S1", "S2", "masks", "coverage"}, "target": {"S2"}, "pdx", "scene",
        "patch_id", "patch"}``: (B, C, h, w) arrays, ``coverage`` (B,)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        s = self.samples
        off = self.offsets(int(epoch))
        got = self.reader.read(ids, crop=self.crop, offsets=None if off is None else off[ids])
        inputs: dict[str, np.ndarray] = {k: got[k] for k in ("S1", "S2", "masks") if k in got}
        if s.coverage is not None:
            inputs["coverage"] = s.coverage[ids]
        return {"input": inputs, "target": {"S2": got["target"]}, "pdx": ids,
                **s.provenance(ids)}

    def close(self) -> None:
        self.reader.close()


def iter_batches(cube: Any, *, split: str = "train", split_mode: str = "exact",
                 cloud_masks: str | None = "s2cloudless_mask",
                 rescale_method: str | None = "default", batch_size: int = 8,
                 shuffle: bool = True, seed: int = 0, epoch: int = 0, crop: int | None = None,
                 threads: int = 2, s1: bool = True, storage_options: dict | None = None,
                 **unsupported: Any):
    """NumPy batches of one epoch of a SEN12MS-CR cube (see :meth:`CrBatchMaker.read_batch`):
    the same batches as ``s2cube.torch.make_loader`` gives for it with one rank and worker."""
    if unsupported:
        raise ValueError(f"{sorted(unsupported)}: not options of SEN12MS-CR batches (one cloudy "
                         "image and its cloud-free target per sample; no time series)")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    opts = CrOptions(split, "all", cloud_masks, "pretrain", rescale_method, split_mode, int(seed))
    samples = CrSampleSet(cube, opts, storage_options=storage_options, s1=s1)
    maker = CrBatchMaker(samples, crop=crop, threads=threads)
    n = len(samples)
    from s2cube.plans.rules import epoch_rng

    order = epoch_rng(int(seed), int(epoch)).permutation(n) if shuffle else np.arange(n)
    try:
        for i in range(0, n, int(batch_size)):
            yield maker.read_batch(order[i:i + int(batch_size)], int(epoch))
    finally:
        maker.close()
