"""Synthetic SEN12MS-CR archives: the layout of ``archive.md`` sec. 9 from real pixels.

:func:`synthesize_cr_archive` writes, per scene,
``ROIs<c>_<season>_{s1,s2,s2_cloudy}/{s1,s2,s2_cloudy}_<scene>/ROIs<c>_<season>_<mod>_<scene>_p<n>.tif``:

- the ground comes from the time-series generator (:mod:`s2cube_conversion.synth`): a scene
  that is also a SEN12MS-CR-TS ROI (``ROIs1868_summer_73`` ↔ ``ROIs1868_73``) gets that ROI's
  UTM zone, origin and land, so with the same ``grid`` and ``patch_size`` its patches cover
  the ground of the time-series archive's patches (what ``ds.s2cube.pair`` finds); other
  scenes get a zone and an origin of their own;
- the cloud-free image is the scene's mosaic at a clear slot, the cloudy one at a cloudy slot
  (clouds blended toward the real cloudy scenes, with shadows), S1 (float32 dB, speckle, NaN
  stripes) at the cloudy slot: real Sentinel-2 L1C pixels throughout (``_realpixels``);
- patches **overlap** (``stride`` pixels apart, half a patch by default, as SEN12MS cut its
  scenes), numbered row-major from a scene-dependent first number, with **gaps**: ``gaps``
  patches per scene are left out entirely;
- ``unpaired`` patches of the first scene lack their cloudy file (the reference loader drops
  them silently; the converter reports them), and ``blank`` patches have an all-zero cloudy
  image (the reference's blank rule).

The same arguments give byte-identical files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube_conversion import synth as ts
from s2cube_conversion._realpixels import load_scenes
from s2cube_conversion.cr_archive import relpath

logger = logging.getLogger(__name__)

#: two scenes that are SEN12MS-CR-TS ROIs (ts.DEFAULT_ROIS: a test and a train one), the
#: SEN12MS-CR train scene that is a SEN12MS-CR-TS test ROI, and scene 7 of the same season,
#: whose number is a prefix of 73 (the reference's substring leak)
DEFAULT_SCENES: tuple[str, ...] = ("ROIs1868_summer_7", "ROIs1868_summer_73",
                                   "ROIs1868_summer_100", "ROIs2017_winter_8")


@dataclass(frozen=True)
class CrSynthScene:
    """One synthetic scene: georeference, patches (number, pixel offsets), slots used."""

    name: str
    roi: str | None  # the SEN12MS-CR-TS ROI on the same ground, if any
    epsg: int
    origin: tuple[float, float]  # north-west corner of the mosaic
    patch_size: int
    patches: tuple[tuple[int, int, int], ...]  # (pid, y0, x0) of every patch written
    clear_slot: int
    cloudy_slot: int

    def transform(self, pid: int) -> tuple[float, ...]:
        """GDAL ``(a, b, c, d, e, f)`` of patch ``pid``."""
        _, y0, x0 = next(p for p in self.patches if p[0] == pid)
        px = ts.PIXEL_SIZE
        return (px, 0.0, self.origin[0] + x0 * px, 0.0, -px, self.origin[1] - y0 * px)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p[0] for p in self.patches)


@dataclass(frozen=True)
class CrSynthManifest:
    """What :func:`synthesize_cr_archive` wrote (paths relative to ``root``)."""

    root: Path
    scenes: tuple[CrSynthScene, ...]
    patch_size: int
    seed: int
    s1: bool
    files: tuple[str, ...]
    gaps: tuple[tuple[str, int], ...]  # (scene, pid) left out entirely
    unpaired: tuple[str, ...]  # the files left out of otherwise complete patches
    blank: tuple[tuple[str, int], ...]  # (scene, pid) whose cloudy image is all zero
    bytes_written: int

    def scene(self, name: str) -> CrSynthScene:
        for s in self.scenes:
            if s.name == name:
                return s
        raise KeyError(f"{name!r} is not in this archive; it has {[s.name for s in self.scenes]}")


def _scene_list(scenes: Sequence[str] | str) -> list[str]:
    names = [scenes] if isinstance(scenes, str) else list(scenes)
    if not names:
        raise ValueError("scenes is empty: name at least one, e.g. 'ROIs1868_summer_73'")
    out = [cr.normalize_scene(n) for n in names]
    if len(set(out)) != len(out):
        raise ValueError(f"scenes={names!r} names a scene twice")
    return sorted(out, key=lambda s: cr.order_key(*cr.parse_scene(s)))


def _georef(scene: str) -> tuple[str | None, int, tuple[float, float], int]:
    """(CR-TS ROI, EPSG, origin, generator key): the time-series ROI's when there is one."""
    roi = cr.roi_of_scene(scene)
    if roi is not None:
        info = schema.ROIS[roi]
        epsg = ts._utm_epsg(info)
        key = ts._key(roi)
        return roi, epsg, ts._origin(epsg, key), key
    key = ts._key(scene)
    epsg = 32600 + 1 + key % 60
    return None, epsg, ts._origin(epsg, key), key


def synthesize_cr_archive(
    root: str | os.PathLike,
    *,
    scenes: Sequence[str] = DEFAULT_SCENES,
    grid: tuple[int, int] = (2, 2),
    patch_size: int = 256,
    stride: int | None = None,
    seed: int = 0,
    s1: bool = True,
    gaps: int = 1,
    unpaired: int = 1,
    blank: int = 1,
    spectra: str = "real",
    real_pixels: str | os.PathLike | None = None,
) -> CrSynthManifest:
    """Write a synthetic SEN12MS-CR archive into the empty (or new) directory ``root``.

    Parameters
    ----------
    scenes
        Scene labels (``ROIs1868_summer_73``) or SEN12MS-CR-TS ROI names of the same ground.
    grid
        Each scene's extent in patches of ``patch_size`` (rows, cols): the extent of the
        time-series archive's ROI with the same ``grid``.
    patch_size, stride
        Patch side and the step between patches (default half a patch: overlapping).
    seed
        Seed of every draw; with the time-series generator's seed, scenes shared with it get
        the same land.
    s1
        Also write the S1 files.
    gaps, unpaired, blank
        Patches per scene left out entirely; patches (of the first scene) without their
        cloudy file; patches (of the first scene) with an all-zero cloudy image.
    spectra, real_pixels
        As :func:`s2cube_conversion.synth.synthesize_archive`.

    Raises
    ------
    ValueError
        An argument is out of range or a scene unknown.
    FileExistsError
        ``root`` exists and is not an empty directory.
    """
    names = _scene_list(scenes)
    opts = ts._Options(ts._patch_size(patch_size), schema.N_SLOTS, int(seed), bool(s1))
    rows, cols = ts._grid(grid, "grid", 0)
    p = opts.patch_size
    step = p // 2 if stride is None else int(stride)
    if not 1 <= step <= p:
        raise ValueError(f"stride={stride!r} must be between 1 and patch_size={p}")
    h, w = rows * p, cols * p
    ys, xs = range(0, h - p + 1, step), range(0, w - p + 1, step)
    n_cells = len(ys) * len(xs)
    if not 0 <= gaps < n_cells or unpaired < 0 or blank < 0 or unpaired + blank > n_cells - gaps:
        raise ValueError(f"gaps={gaps}, unpaired={unpaired}, blank={blank} do not fit scenes of "
                         f"{n_cells} patches")
    pixels = load_scenes(spectra, real_pixels)
    root = ts._prepare_root(root)
    files: list[str] = []
    out_scenes, left_out, lost, blanks = [], [], [], []
    for i, scene in enumerate(names):
        roi, epsg, origin, key = _georef(scene)
        collection, sid = cr.parse_scene(scene)
        rng = np.random.default_rng([opts.seed, key, 7])
        cells = [(y0, x0) for y0 in ys for x0 in xs]
        first = 1 + key % 50
        inner = np.arange(1, n_cells - 1) if n_cells - 2 >= gaps else np.arange(n_cells)
        dropped = set(rng.choice(inner, gaps, replace=False).tolist()) if gaps else set()
        patches = tuple((first + k, y0, x0) for k, (y0, x0) in enumerate(cells) if k not in dropped)
        left_out += [(scene, first + k) for k in sorted(dropped)]
        sim_roi = ts.SynthRoi(roi or scene, collection, sid, epsg, origin, p,
                              tuple(tuple(0 for _ in range(cols)) for _ in range(rows)), (), ())
        sim = ts._RoiSim(sim_roi, pixels, opts)
        cover = sim.slots.cover
        clear = int(np.flatnonzero(cover == 0)[0])
        # the least cloudy of the partly cloudy slots: masks (dilated) spread over more
        cloudy = int(np.argmin(np.where(cover > 0.1, cover, np.inf))) if (cover > 0.1).any() \
            else int(np.argmax(cover))
        dn_clear, _ = sim.s2(clear)
        dn_cloudy, _ = sim.s2(cloudy)
        radar = sim.s1(cloudy, sim.s1_base()).astype(np.float32) if opts.s1 else None
        no_cloudy = {patches[-1 - k][0] for k in range(unpaired)} if i == 0 else set()
        rest = [q[0] for q in patches if q[0] not in no_cloudy]
        zero = set((rest[1:] + rest[:1])[:blank]) if i == 0 else set()
        lost += [relpath(scene, "s2_cloudy", pid) for pid in sorted(no_cloudy)]
        blanks += [(scene, pid) for pid in sorted(zero)]
        crs = _crs(epsg)
        meta = CrSynthScene(scene, roi, epsg, origin, p, patches, clear, cloudy)
        for pid, y0, x0 in patches:
            win = (slice(None), slice(y0, y0 + p), slice(x0, x0 + p))
            images = {"s2": dn_clear[win], "s2_cloudy": dn_cloudy[win]}
            if pid in zero:
                images["s2_cloudy"] = np.zeros_like(images["s2_cloudy"])
            if radar is not None:
                images["s1"] = radar[win]
            for mod, data in images.items():
                if mod == "s2_cloudy" and pid in no_cloudy:
                    continue
                rel = relpath(scene, mod, pid)
                ts._write_tif(root / rel, data, crs, meta.transform(pid))
                files.append(rel)
        out_scenes.append(meta)
    size = sum((root / f).stat().st_size for f in files)
    logger.info("synthetic SEN12MS-CR archive: %d files, %.1f MB in %s", len(files), size / 1e6,
                root)
    return CrSynthManifest(root, tuple(out_scenes), p, opts.seed, opts.s1, tuple(sorted(files)),
                           tuple(left_out), tuple(lost), tuple(blanks), size)


def _crs(epsg: int):
    from rasterio.crs import CRS

    return CRS.from_epsg(epsg)
