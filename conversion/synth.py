"""Synthetic SEN12MS-CR-TS archives: the tree, names, bands, dtypes and CRS of archive.md.

:func:`synthesize_archive` writes
``<root>/<collection>/<roi_id>/S{1,2}/<t>/s{1,2}_<collection>_<roi_id>_ImgNo_<t>_<date>_patch_<pid>.tif``
for real ROI names, built from real Sentinel-2 L1C pixels (see :mod:`._realpixels`):

- Each ROI gets a UTM zone (EPSG 326xx north, 327xx south; africa is south, america is south or
  north by ROI), a plausible origin and a ``rows × cols`` grid of non-overlapping ``P × P``
  patches of 10 m pixels. Patch ids run row-major (row 0 = north) with a row stride of 16
  (``cols + 3`` for grids 16 wide or more) from a non-zero, ROI-dependent first id, like the
  real archive: place patches by georeference, never by id arithmetic.
- Per ROI and slot one mosaic is generated and cut into patches, so neighbours mosaic seamlessly.
  Land is tiled from 96-pixel blocks (rotated/flipped) of the clear real scenes, mixed by season;
  clouds blend toward the real cloudy scenes (brighter cores, raised B10) under a smooth random
  field that drifts between slots, with shadows offset from them. Some slots are fully clear, some
  overcast; some frames are all zero (blank, also from a swath edge), a few pixels exceed 10000
  (glare). S1 is VV/VH dB with speckle and NaN stripes.
- S1 and S2 dates of a slot differ by 1–4 days; 30 slots 12 days apart over 2018.

The same ``seed`` (and arguments) gives byte-identical files. Each ROI draws from its own
generators keyed by ``(seed, ROI name)``, so an ROI's data do not depend on the other ROIs, nor on
``s1``, ``missing``, ``corrupt``, ``holes`` or ``junk``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2cube import schema
from s2cube_conversion._realpixels import (
    CLEAR_SCENES,
    CLOUDY_SCENES,
    ENV_VAR,
    load_scenes,
    real_pixels_available,
    real_pixels_path,
)

__all__ = [
    "DEFAULT_ROIS",
    "ENV_VAR",
    "SynthManifest",
    "SynthRoi",
    "real_pixels_available",
    "real_pixels_path",
    "synthesize_archive",
]

logger = logging.getLogger(__name__)

#: One northern (asiaEast, test) and one southern (africa, train) ROI.
DEFAULT_ROIS: tuple[str, ...] = ("ROIs1868_73", "ROIs2017_8")
PIXEL_SIZE = 10.0
PID_STRIDE = 16
MIN_PATCH = 8
FIRST_DAY = np.datetime64("2018-01-05", "D")
SLOT_DAYS = 12
BLOCK = 96  # px, side of the blocks of real pixels the land is tiled from
CLOUD_SCALE = 1.5  # size of the cloud cells, in patch sides (at most MAX_CLOUD px)
MAX_CLOUD = 128
DRIFT = 1 / 6  # how far the cloud field moves per slot, in cloud cells
SHADOW_MAX = 40  # px, longest cloud-to-shadow offset
SOFT = 0.6  # field units from a cloud's edge to its opaque core
CORRUPT_KINDS = ("truncated", "not_tiff", "empty")
_S2_DTYPE = np.uint16
_S1_DTYPE = np.float64


# --- what was written ---------------------------------------------------------------------

@dataclass(frozen=True)
class SynthRoi:
    """One synthetic ROI: its georeference, patch ids, dates and ground truth.

    ``pids[row][col]`` is the patch id at that grid position (row 0 = north), -1 for a hole.
    ``origin`` is the (x, y) of the north-west corner of patch (0, 0) in ``EPSG:epsg``.
    ``blank`` lists the (slot, pid) whose S2 frame is all zero; ``cloud_cover[slot][row][col]``
    is the fraction of a patch's pixels under cloud of opacity >= 0.5 (0 for holes; blank
    frames keep the cloud field's value).
    """

    name: str
    collection: str
    roi_id: int
    epsg: int
    origin: tuple[float, float]
    patch_size: int
    pids: tuple[tuple[int, ...], ...]
    s2_dates: tuple[str, ...]
    s1_dates: tuple[str, ...]
    blank: tuple[tuple[int, int], ...] = ()
    cloud_cover: tuple[tuple[tuple[float, ...], ...], ...] = ()

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the ROI's patch grid."""
        return len(self.pids), len(self.pids[0])

    def transform(self, row: int, col: int) -> tuple[float, ...]:
        """GDAL/affine ``(a, b, c, d, e, f)`` of the patch at ``(row, col)``."""
        step = self.patch_size * PIXEL_SIZE
        x0, y0 = self.origin
        return (PIXEL_SIZE, 0.0, x0 + col * step, 0.0, -PIXEL_SIZE, y0 - row * step)

    def locations(self) -> Iterator[tuple[int, int, int]]:
        """``(row, col, pid)`` of every patch that exists (holes skipped), row-major."""
        for r, line in enumerate(self.pids):
            for c, pid in enumerate(line):
                if pid >= 0:
                    yield r, c, pid

    def relpath(self, modality: str, slot: int, pid: int) -> str:
        """Path of one file relative to the archive root (``modality`` is ``"s1"`` or ``"s2"``)."""
        date = (self.s1_dates if modality == "s1" else self.s2_dates)[slot]
        name = f"{modality}_{self.collection}_{self.roi_id}_ImgNo_{slot}_{date}_patch_{pid}.tif"
        return f"{self.collection}/{self.roi_id}/{modality.upper()}/{slot}/{name}"


@dataclass(frozen=True)
class SynthManifest:
    """What :func:`synthesize_archive` wrote. Paths are POSIX strings relative to ``root``.

    ``files`` is every ``.tif`` on disk (corrupt ones included), ``missing`` the ones left out,
    ``corrupt[i]`` was damaged as ``corrupt_kinds[i]`` (one of :data:`CORRUPT_KINDS`), ``junk``
    the non-TIFF files added; ``bytes_written`` is the size of ``files`` plus ``junk``.
    """

    root: Path
    rois: tuple[SynthRoi, ...]
    grid: tuple[int, int]
    patch_size: int
    n_slots: int
    seed: int
    s1: bool
    spectra: str
    files: tuple[str, ...]
    missing: tuple[str, ...]
    corrupt: tuple[str, ...]
    corrupt_kinds: tuple[str, ...]
    junk: tuple[str, ...]
    bytes_written: int

    def path(self, relpath: str) -> Path:
        """Absolute path of a file listed in the manifest."""
        return self.root / relpath

    def roi(self, name: str) -> SynthRoi:
        """The ROI labelled ``name`` (``"ROIs1868_73"``)."""
        for roi in self.rois:
            if roi.name == name:
                return roi
        raise KeyError(f"{name!r} is not in this archive; it has {[r.name for r in self.rois]}")


@dataclass(frozen=True)
class _Options:
    patch_size: int
    n_slots: int
    seed: int
    s1: bool


# --- the entry point ----------------------------------------------------------------------

def synthesize_archive(
    root: str | os.PathLike,
    *,
    rois: Sequence[str] = DEFAULT_ROIS,
    grid: tuple[int, int] = (3, 3),
    grids: Mapping[str, tuple[int, int]] | None = None,
    patch_size: int = 256,
    n_slots: int = schema.N_SLOTS,
    seed: int = 0,
    s1: bool = True,
    missing: float = 0,
    corrupt: float = 0,
    holes: int = 0,
    junk: bool = False,
    spectra: str = "real",
    real_pixels: str | os.PathLike | None = None,
) -> SynthManifest:
    """Write a synthetic SEN12MS-CR-TS archive into the empty (or new) directory ``root``.

    Parameters
    ----------
    root
        Directory to create; must be absent or empty.
    rois
        ROI labels from ``s2cube.schema.ROIS`` (``"ROIs1868_73"``); written in sample order.
    grid, grids
        ``(rows, cols)`` patches per ROI; ``grids`` overrides it per ROI label.
    patch_size
        Side of a patch in pixels, at least 8 (the real archive: 256).
    n_slots
        Time slots 0 … n_slots-1 (1 to 30).
    seed
        Seed of every random draw; the same arguments give byte-identical files.
    s1
        Also write the S1 files.
    missing, corrupt
        Files (S1 and S2 alike) to leave out / to damage: a number in [0, 1) is a fraction of all
        files (at least one if > 0), an integer >= 1 a count. Damage is truncation, non-TIFF bytes
        or an empty file, in turn.
    holes
        Grid positions per ROI without any file (an irregular ROI footprint).
    junk
        Add ``.DS_Store``, ``notes.txt`` and ``checksums.md5`` files to the tree.
    spectra
        ``"real"`` (the real pixels) or ``"synthetic"`` (a documented stand-in, see
        ``_realpixels.synthetic_scenes``).
    real_pixels
        Path of a real pixels file (``reference_scenes.npy`` or the packaged format); default
        ``$S2CUBE_REAL_PIXELS``, else the copy shipped in the package (``data/``).

    Returns
    -------
    SynthManifest

    Raises
    ------
    FileNotFoundError
        The real pixels are absent (and ``spectra="real"``).
    FileExistsError
        ``root`` exists and is not an empty directory.
    ValueError
        An argument is out of range or an ROI label is unknown.
    """
    opts = _Options(_patch_size(patch_size), _slots(n_slots), int(seed), bool(s1))
    base = _grid(grid, "grid", 0)
    infos = _select(rois)
    stray = sorted(set(grids or {}) - {i.name for i in infos})
    if stray:
        raise ValueError(f"grids names ROI(s) {stray} that are not in rois")
    shapes = {i.name: _grid((grids or {}).get(i.name, base), f"grid of {i.name}", holes)
              for i in infos}
    scenes = load_scenes(spectra, real_pixels)
    plans = [_plan_roi(i, shapes[i.name], holes, opts) for i in infos]
    planned = [p for roi in plans for p in _planned_files(roi, opts)]
    lost, damaged = _choose_damage(planned, missing, corrupt, opts.seed)
    root = _prepare_root(root)
    done = tuple(_write_roi(root, roi, scenes, opts, set(lost)) for roi in plans)
    kinds = tuple(_corrupt(root / rel, CORRUPT_KINDS[i % 3]) for i, rel in enumerate(damaged))
    files = tuple(sorted(set(planned) - set(lost)))
    extra = _write_junk(root, done[0], files, set(damaged)) if junk else ()
    size = sum((root / f).stat().st_size for f in (*files, *extra))
    logger.info("synthetic archive: %d files, %d missing, %d corrupt, %.1f MB in %s",
                len(files), len(lost), len(damaged), size / 1e6, root)
    return SynthManifest(
        root=root, rois=done, grid=base, patch_size=opts.patch_size,
        n_slots=opts.n_slots, seed=opts.seed, s1=opts.s1, spectra=spectra, files=files,
        missing=tuple(sorted(lost)), corrupt=damaged, corrupt_kinds=kinds, junk=extra,
        bytes_written=size,
    )


# --- argument checks ----------------------------------------------------------------------

def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def _patch_size(patch_size: int) -> int:
    p = _positive(patch_size, "patch_size")
    if p < MIN_PATCH:
        raise ValueError(f"patch_size={p} is below the smallest supported, {MIN_PATCH}")
    return p


def _slots(n_slots: int) -> int:
    n = _positive(n_slots, "n_slots")
    if n > schema.N_SLOTS:
        raise ValueError(f"n_slots={n} exceeds the archive's {schema.N_SLOTS} slots")
    return n


def _select(rois: Sequence[str]) -> list[schema.RoiInfo]:
    names = [rois] if isinstance(rois, str) else list(rois)
    if not names:
        raise ValueError("rois is empty: name at least one ROI, e.g. 'ROIs1868_73'")
    if len(set(names)) != len(names):
        raise ValueError(f"rois={names!r} lists an ROI twice")
    unknown = [n for n in names if n not in schema.ROIS]
    if unknown:
        raise ValueError(f"unknown ROI label(s) {unknown}; labels look like 'ROIs1868_73' "
                         "(see s2cube.schema.ROIS)")
    return sorted((schema.ROIS[n] for n in names), key=lambda i: i.order)


def _grid(shape: tuple[int, int], what: str, holes: int) -> tuple[int, int]:
    if len(tuple(shape)) != 2:
        raise ValueError(f"{what} = {shape!r} must be (rows, cols)")
    rows, cols = (_positive(v, what) for v in shape)
    if isinstance(holes, bool) or int(holes) != holes or not 0 <= holes < rows * cols:
        raise ValueError(f"holes={holes!r} must be an integer in [0, {rows * cols}) ({what})")
    return rows, cols


def _count(value: float, total: int, name: str) -> int:
    if isinstance(value, bool) or not 0 <= value <= total:
        raise ValueError(f"{name}={value!r} must be a fraction in [0, 1) or a count <= {total}")
    if value < 1:
        return max(1, round(value * total)) if value > 0 else 0
    if int(value) != value:
        raise ValueError(f"{name}={value!r}: give a fraction in [0, 1) or a whole count")
    return int(value)


def _prepare_root(root: str | os.PathLike) -> Path:
    path = Path(root).absolute()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty directory; "
                              "choose a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- planning: georeference, ids, dates ---------------------------------------------------

def _key(name: str) -> int:
    return zlib.crc32(name.encode())


#: UTM zones per region (plausible, not the real ROIs' zones).
_ZONES = {"europa": (29, 37), "asiaWest": (36, 43), "asiaEast": (44, 54), "africa": (30, 38),
          "america": (11, 23)}


def _utm_epsg(info: schema.RoiInfo) -> int:
    key = _key(info.name)
    lo, hi = _ZONES[info.region]
    south = info.region == "africa" or (info.region == "america" and key % 2 == 1)
    return (32700 if south else 32600) + lo + key % (hi - lo + 1)


def _origin(epsg: int, key: int) -> tuple[float, float]:
    x = 200_000.0 + 1000.0 * ((key >> 8) % 300)
    y0 = 6_500_000.0 if epsg >= 32700 else 1_000_000.0
    return x, y0 + 1000.0 * ((key >> 12) % 3000)


def _pid_grid(rows: int, cols: int, key: int, holes: int, rng: np.random.Generator) -> np.ndarray:
    stride = PID_STRIDE if cols < PID_STRIDE else cols + 3
    first_row, first_col = 1 + key % 12, (key >> 4) % (stride - cols + 1)
    pids = (first_row + np.arange(rows))[:, None] * stride + first_col + np.arange(cols)
    pids.flat[rng.choice(rows * cols, holes, replace=False)] = -1
    return pids


def _dates(n: int, rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """S2 12 days apart + 0..2; S1 1..4 days before or after: both strictly increasing."""
    s2 = FIRST_DAY + SLOT_DAYS * np.arange(n) + rng.integers(0, 3, n)
    s1 = s2 + rng.integers(1, 5, n) * rng.choice([-1, 1], n)
    return tuple(str(d) for d in s2), tuple(str(d) for d in s1)


def _plan_roi(info: schema.RoiInfo, shape: tuple[int, int], holes: int, o: _Options) -> SynthRoi:
    key = _key(info.name)
    epsg = _utm_epsg(info)
    pids = _pid_grid(*shape, key, holes, np.random.default_rng([o.seed, key, 1]))
    s2, s1 = _dates(o.n_slots, np.random.default_rng([o.seed, key, 2]))
    return SynthRoi(info.name, info.collection, info.roi_id, epsg, _origin(epsg, key),
                    o.patch_size, tuple(tuple(int(p) for p in r) for r in pids), s2, s1)


def _planned_files(roi: SynthRoi, o: _Options) -> list[str]:
    mods = ("s1", "s2") if o.s1 else ("s2",)
    return [roi.relpath(m, t, pid) for m in mods for t in range(o.n_slots)
            for _, _, pid in roi.locations()]


def _choose_damage(planned: list[str], missing: float, corrupt: float,
                   seed: int) -> tuple[list[str], tuple[str, ...]]:
    n_miss = _count(missing, len(planned), "missing")
    n_bad = _count(corrupt, len(planned), "corrupt")
    if n_miss + n_bad > len(planned):
        raise ValueError(f"missing={missing!r} and corrupt={corrupt!r} add up to more than the "
                         f"{len(planned)} files")
    order = np.random.default_rng([seed, 0xDA]).permutation(len(planned))
    lost = [planned[i] for i in order[:n_miss]]
    return lost, tuple(sorted(planned[i] for i in order[n_miss:n_miss + n_bad]))


# --- one ROI over time ----------------------------------------------------------------------

def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Unit-variance smooth noise, periodic in both axes: cubic B-spline upsampled coarse noise,
    two octaves (cells of ``scale`` and ``scale / 4`` pixels)."""
    from scipy.ndimage import zoom

    out = np.zeros(shape, np.float32)
    for step, weight in ((scale, 1.0), (scale / 4, 0.35)):
        cells = [max(2, -(-n // max(1, int(step)))) for n in shape]
        coarse = rng.standard_normal(cells).astype(np.float32)
        factor = [n / c for n, c in zip(shape, cells)]
        out += weight * zoom(coarse, factor, order=3, prefilter=False, grid_mode=True,
                             mode="grid-wrap")
    return out / out.std()


def _block_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Flat index map (h, w) into a 101 × 100 scene: blocks of BLOCK px at random offsets, each
    rotated/flipped at random, so a mosaic of any size is made of real pixels."""
    by, bx = np.arange(h) // BLOCK, np.arange(w) // BLOCK
    shape = (by[-1] + 1, bx[-1] + 1)
    oy, ox = rng.integers(0, 101 - BLOCK, shape), rng.integers(0, 100 - BLOCK, shape)
    swap, fy, fx = (rng.integers(0, 2, shape).astype(bool) for _ in range(3))
    u = np.broadcast_to((np.arange(h) % BLOCK)[:, None], (h, w))
    v = np.broadcast_to((np.arange(w) % BLOCK)[None, :], (h, w))
    sel = (by[:, None], bx[None, :])
    a, b = np.where(swap[sel], v, u), np.where(swap[sel], u, v)
    a, b = np.where(fy[sel], BLOCK - 1 - a, a), np.where(fx[sel], BLOCK - 1 - b, b)
    return ((oy[sel] + a) * 100 + ox[sel] + b).astype(np.intp)


def _gather(src: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``src`` (bands, 101, 100) at the flat pixel indices ``flat`` (h, w): (bands, h, w)."""
    return np.take(src.reshape(src.shape[0], -1), flat, axis=1)


@dataclass(frozen=True)
class _Slots:
    """Per-slot draws of one ROI: cloud cover, field phase, B10 level, shadow length, events."""

    cover: np.ndarray
    phase: np.ndarray
    b10: np.ndarray
    shadow: np.ndarray
    glare: np.ndarray
    swath: np.ndarray
    blank: np.ndarray  # (slots, rows, cols)


def _draw_slots(rng: np.random.Generator, n: int, rows: int, cols: int) -> _Slots:
    u = rng.random(n)
    cover = np.where(u < 0.25, 0.0, np.where(u > 0.85, rng.uniform(0.85, 1.0, n),
                                             rng.uniform(0.15, 0.85, n)))
    if n > 1:  # both kinds of slot, whatever the draw
        clear = int(rng.integers(0, n))
        cover[clear] = 0.0
        if not (cover > 0).any():
            cover[(clear + 1) % n] = rng.uniform(0.4, 0.9)
    glare = rng.random(n) < 0.15
    glare[rng.integers(0, n)] = True
    blank = rng.random((n, rows, cols)) < 0.015
    blank[rng.integers(0, n), rng.integers(0, rows), rng.integers(0, cols)] = True
    return _Slots(cover, rng.uniform(0, 2 * np.pi) + 0.7 * np.arange(n),
                  rng.uniform(0.005, 0.06, n), rng.uniform(15, SHADOW_MAX, n), glare,
                  rng.random(n) < 0.05, blank)


class _RoiSim:
    """One ROI's mosaics: land from the clear scenes, clouds from the cloudy ones, S1 from land."""

    def __init__(self, roi: SynthRoi, scenes: np.ndarray, o: _Options) -> None:
        key, (rows, cols) = _key(roi.name), roi.grid
        self.h, self.w, self.n = rows * o.patch_size, cols * o.patch_size, o.n_slots
        rng = np.random.default_rng([o.seed, key, 0])
        self.clear = scenes[list(CLEAR_SCENES)] * (1 + 0.04 * rng.standard_normal((13, 1, 1)))
        self.cloudy = scenes[list(CLOUDY_SCENES)]
        self.land_idx, self.cloud_idx = (_block_layout(rng, self.h, self.w) for _ in range(2))
        self.scale = min(MAX_CLOUD, CLOUD_SCALE * o.patch_size)
        big = (self.h + 2 * SHADOW_MAX, self.w + 2 * SHADOW_MAX)
        self.fields = [_smooth_field(rng, big, self.scale) for _ in range(2)]
        self.drift = DRIFT * self.scale * _unit(rng.uniform(0, 2 * np.pi))
        self.sun = _unit(rng.uniform(0, 2 * np.pi))
        self.season = rng.uniform(0, 2 * np.pi)
        self.slots = _draw_slots(rng, self.n, rows, cols)
        self.rng = rng
        self.s1_rng = np.random.default_rng([o.seed, key, 3])

    # S2 ------------------------------------------------------------------------------------
    def land(self, t: int) -> np.ndarray:
        angle = self.season + 2 * np.pi * t * SLOT_DAYS / 365 - 2 * np.pi * np.arange(3) / 3
        weight = 0.2 + np.maximum(0.0, np.cos(angle))
        mix = np.tensordot(weight / weight.sum(), self.clear, axes=1).astype(np.float32)
        return _gather(mix, self.land_idx)

    def field(self, t: int, offset: np.ndarray) -> np.ndarray:
        """The cloud field of slot ``t`` (periodic, so drifting wraps around), shifted."""
        y, x = np.rint(self.drift * t + offset).astype(int)
        big = self.fields[0].shape
        rows, cols = (y + np.arange(self.h)) % big[0], (x + np.arange(self.w)) % big[1]
        a, b = (f[rows[:, None], cols[None, :]] for f in self.fields)
        phase = self.slots.phase[t]
        return np.cos(phase) * a + np.sin(phase) * b

    def opacity(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Cloud and shadow opacity in [0, 1], (h, w) each."""
        cover = self.slots.cover[t]
        if cover == 0:
            zero = np.zeros((self.h, self.w), np.float32)
            return zero, zero
        now = self.field(t, np.zeros(2))
        thr = np.quantile(now[::4, ::4], 1 - cover)
        shade = self.field(t, -self.sun * self.slots.shadow[t])
        return tuple(np.clip((f - thr) / SOFT, 0, 1).astype(np.float32) for f in (now, shade))

    def s2(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(DN uint16 (13, h, w), cloud opacity (h, w)) of slot ``t``."""
        refl = self.land(t)
        cloud, shade = self.opacity(t)
        if cloud.any():
            refl = _clouded(refl, cloud, shade, self.cloudy, self.cloud_idx, self.slots.b10[t])
        if self.slots.glare[t]:
            _add_glare(refl, self.rng)
        dn = np.rint(np.clip(refl * 10000, 1, 65535)).astype(_S2_DTYPE)
        if self.slots.swath[t]:
            dn[:, _swath_edge(self.rng, self.h, self.w)] = 0
        _blank_patches(dn, self.slots.blank[t])
        return dn, cloud

    # S1 ------------------------------------------------------------------------------------
    def s1_base(self) -> np.ndarray:
        """Mean VV, VH dB (2, h, w) from the land's NDVI plus a smooth field."""
        red, nir = _gather(self.clear[0, [3, 7]], self.land_idx)
        ndvi = (nir - red) / (nir + red + 1e-6) - 0.5
        wet = _smooth_field(self.s1_rng, (self.h, self.w), self.scale)
        vv = -12.0 + 4.0 * ndvi + 1.5 * wet
        return np.stack([vv, vv - 7.0 + 3.0 * ndvi]).astype(np.float64)

    def s1(self, t: int, base: np.ndarray) -> np.ndarray:
        """VV, VH dB (2, h, w) float64 of slot ``t``: base + offset, gamma speckle, NaN stripes."""
        rng = self.s1_rng
        mean = base + rng.normal(0, 0.8, (2, 1, 1))
        looks = 4.4
        db = mean + 10 * np.log10(rng.gamma(looks, 1 / looks, mean.shape))
        if rng.random() < 0.1 or t == self.n // 2:
            db[(slice(None), *_stripe(rng, self.h, self.w))] = np.nan
        # float64 files holding float32-representable values, as exports of float32 dB do;
        # the converter checks this and keeps float64 when it does not hold
        return db.astype(np.float32).astype(np.float64)


def _unit(angle: float) -> np.ndarray:
    return np.array([np.sin(angle), np.cos(angle)])


def _clouded(land: np.ndarray, cloud: np.ndarray, shade: np.ndarray, cloudy: np.ndarray,
             idx: np.ndarray, b10: float) -> np.ndarray:
    """Darken land under shadows, then blend toward real cloud spectra (thin -> thick, brighter
    cores, raised B10) by the cloud opacity."""
    dark = np.linspace(0.45, 0.7, 13, dtype=np.float32)
    dark[10] = 0.1  # the cirrus band sees the atmosphere above the shadow
    land *= 1 - dark[:, None, None] * (shade * (1 - cloud))
    thick, thin = _gather(cloudy.reshape(26, *cloudy.shape[2:]), idx).reshape(2, 13, *idx.shape)
    thick *= 1 + 0.8 * cloud
    thick -= thin
    thick *= cloud
    thick += thin  # the cloud's spectrum: thin at the edges, bright thick cloud in the core
    thick[10] += np.float32(b10) * cloud
    thick -= land
    thick *= cloud
    land += thick
    return land


def _add_glare(refl: np.ndarray, rng: np.random.Generator) -> None:
    """A few small specular spots above reflectance 1 (DN > 10000), B10 untouched."""
    _, h, w = refl.shape
    yy, xx = np.ogrid[:h, :w]
    for _ in range(int(rng.integers(1, 5))):
        y, x, r = rng.integers(0, h), rng.integers(0, w), rng.uniform(1.0, 3.0)
        spot = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        level = rng.uniform(1.02, 1.6)
        for b in range(13):
            if b != 10:
                refl[b][spot] = level


def _swath_edge(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Mask (h, w) beyond a near-vertical swath edge cutting 15-50 % off one side."""
    slope = np.tan(rng.uniform(-0.26, 0.26))
    frac = rng.uniform(0.15, 0.5)
    yy, xx = np.ogrid[:h, :w]
    line = (xx - w / 2) - slope * (yy - h / 2)
    return line > w * (0.5 - frac) if rng.random() < 0.5 else line < -w * (0.5 - frac)


def _stripe(rng: np.random.Generator, h: int, w: int) -> tuple[slice, slice]:
    """A band of rows or columns a few pixels wide (where S1 has NaN)."""
    along_rows = rng.random() < 0.5
    size = h if along_rows else w
    width = int(rng.integers(1, max(2, size // 20) + 1))
    start = int(rng.integers(0, size - width + 1))
    band = slice(start, start + width)
    return (band, slice(None)) if along_rows else (slice(None), band)


def _blank_patches(dn: np.ndarray, blank: np.ndarray) -> None:
    p = dn.shape[1] // blank.shape[0]
    for r, c in zip(*np.nonzero(blank)):
        dn[:, r * p:(r + 1) * p, c * p:(c + 1) * p] = 0


# --- writing --------------------------------------------------------------------------------

def _write_tif(path: Path, data: np.ndarray, crs: object, transform: tuple[float, ...]) -> None:
    """Uncompressed, untiled GeoTIFF without a nodata tag, as the archive's files are."""
    import rasterio
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs, tiled=False,
                       transform=Affine(*transform)) as dst:
        dst.write(np.ascontiguousarray(data))


def _patch_stats(dn: np.ndarray, cloud: np.ndarray, rows: int,
                 cols: int) -> tuple[np.ndarray, np.ndarray]:
    p = cloud.shape[0] // rows
    blank = dn.reshape(13, rows, p, cols, p).max(axis=(0, 2, 4)) == 0
    cover = (cloud >= 0.5).reshape(rows, p, cols, p).mean(axis=(1, 3))
    return blank, np.round(cover, 4)


def _write_roi(root: Path, roi: SynthRoi, scenes: np.ndarray, o: _Options,
               skip: set[str]) -> SynthRoi:
    """Generate and write every slot of one ROI; return it with its ground truth filled in."""
    import rasterio
    from rasterio.crs import CRS

    sim, crs, p = _RoiSim(roi, scenes, o), CRS.from_epsg(roi.epsg), o.patch_size
    base = sim.s1_base() if o.s1 else None
    holes = np.array(roi.pids) < 0
    blank, cover = [], []
    with rasterio.Env():
        for t in range(o.n_slots):
            dn, cloud = sim.s2(t)
            frames = {"s2": dn, "s1": sim.s1(t, base) if o.s1 else None}
            is_blank, share = _patch_stats(dn, cloud, *roi.grid)
            blank += [(t, pid) for r, c, pid in roi.locations() if is_blank[r, c]]
            cover.append(tuple(tuple(line) for line in np.where(holes, 0.0, share).tolist()))
            for r, c, pid in roi.locations():
                for mod, data in frames.items():
                    rel = roi.relpath(mod, t, pid)
                    if data is None or rel in skip:
                        continue
                    tile = data[:, r * p:(r + 1) * p, c * p:(c + 1) * p]
                    _write_tif(root / rel, tile, crs, roi.transform(r, c))
    return dataclasses.replace(roi, blank=tuple(blank), cloud_cover=tuple(cover))


# --- damage and junk --------------------------------------------------------------------------

_NOT_TIFF = (b"<html><head><title>404 Not Found</title></head>\n"
             b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n")
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(2038)


def _corrupt(path: Path, kind: str) -> str:
    """Damage one file in place: keep its first third, replace it by HTML, or empty it."""
    data = path.read_bytes()
    new = {"truncated": data[: max(16, len(data) // 3)], "not_tiff": _NOT_TIFF, "empty": b""}
    path.write_bytes(new[kind])
    logger.debug("corrupted %s (%s)", path, kind)
    return kind


def _write_junk(root: Path, roi: SynthRoi, files: tuple[str, ...],
                damaged: set[str]) -> tuple[str, ...]:
    """Files a user's copy of the archive collects: Finder metadata, notes, a checksum list."""
    coll = roi.collection
    sums = [f for f in files if f.startswith(f"{coll}/") and f not in damaged][:5]
    md5 = "".join(f"{hashlib.md5((root / f).read_bytes()).hexdigest()}  {f[len(coll) + 1:]}\n"
                  for f in sums)
    junk = {
        ".DS_Store": _DS_STORE,
        "notes.txt": b"SEN12MS-CR-TS download notes\ns1 and s2 tarballs merged into one root.\n",
        f"{coll}/checksums.md5": md5.encode(),
        f"{coll}/{roi.roi_id}/.DS_Store": _DS_STORE,
        f"{coll}/{roi.roi_id}/S2/0/.DS_Store": _DS_STORE,
    }
    for rel, data in junk.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return tuple(sorted(junk))
