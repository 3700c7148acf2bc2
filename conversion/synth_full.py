"""The whole archive, synthetic: all 53 ROIs, 16,009 patch locations, up to 960,540 GeoTIFFs.

:func:`synthesize_full_archive` writes an archive with the cardinality of SEN12MS-CR-TS
(``archive.md`` sec. 2 and 4) at a small patch size, so that everything that grows with the
number of ROIs, patches and files (listing, planning, graphs, journals, indexes, loaders) can
be rehearsed on one machine:

- every one of the 53 ROIs, with its real collection, split and region;
- grids shaped like the real ROIs (:func:`full_archive_grids`): 16,009 patch locations in all,
  12,293 train+val and 3,716 test, the per-region test totals of ``archive.md``,
  ``ROIs1868_73`` 16 × 15 and ``ROIs1868_100`` 300 patches; the others ~300 patches on grids
  14-20 patches wide, the last row partly empty (an irregular footprint);
- 30 slots, S1 and S2, real pixels: each ROI is generated exactly as
  :func:`s2cube_conversion.synth.synthesize_archive` generates it (same seed, same grid: the
  same bytes).

It streams: one ROI's mosaic of one slot is in memory at a time per process, and nothing per
file is kept. It is resumable: every file is written under a temporary name and renamed when
whole, files already present are skipped (and leftovers of a killed run removed), so running
the same call again after an interruption finishes the archive with the same bytes as an
uninterrupted run. ROIs are written in parallel by ``workers`` processes.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2cube import schema
from s2cube_conversion.synth import (
    SynthRoi,
    _grid,
    _Options,
    _patch_size,
    _plan_roi,
    _RoiSim,
    _select,
    _slots,
    _write_tif,
    load_scenes,
)

__all__ = [
    "KNOWN_GRIDS",
    "TEST_PATCHES",
    "TOTAL_PATCHES",
    "FullArchive",
    "full_archive_grids",
    "synthesize_full_archive",
]

logger = logging.getLogger(__name__)

#: Patch locations of the real archive (``archive.md`` sec. 4).
TOTAL_PATCHES = 16_009
#: Patch locations of the test ROIs, per region (``archive.md`` sec. 4).
TEST_PATCHES: dict[str, int] = {"africa": 508, "america": 508, "asiaEast": 810, "asiaWest": 300,
                                "europa": 1590}
#: ROIs whose size ``archive.md`` gives: (rows, cols, patch locations).
KNOWN_GRIDS: dict[str, tuple[int, int, int]] = {"ROIs1868_73": (16, 15, 240),
                                                "ROIs1868_100": (15, 20, 300)}
#: Suffix of a file being written; renamed to its ``.tif`` name once whole.
PARTIAL = ".partial"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FullArchive:
    """What :func:`synthesize_full_archive` made.

    ``rois`` are the ROIs' plans (georeference, patch ids, dates; no per-frame ground truth,
    which would grow with the archive). ``files`` counts every GeoTIFF the archive holds,
    ``written`` those this call wrote and ``kept`` those it found complete (a resumed run);
    ``bytes_written`` is the size of the files written by this call.
    """

    root: Path
    rois: tuple[SynthRoi, ...]
    patch_size: int
    n_slots: int
    seed: int
    s1: bool
    files: int
    written: int
    kept: int
    bytes_written: int
    seconds: float

    @property
    def patches(self) -> int:
        """Patch locations in the archive."""
        return sum(1 for roi in self.rois for _ in roi.locations())


# --- grids ------------------------------------------------------------------------------------

def _share(total: int, names: Sequence[str]) -> dict[str, int]:
    """Split ``total`` patches among ``names``: weights 0.75-1.25 from each name's hash,
    rounded so the parts add up to ``total`` exactly."""
    if not names:
        return {}
    weights = np.array([0.75 + 0.5 * (zlib.crc32(f"size {n}".encode()) % 1000) / 999
                        for n in names])
    raw = total * weights / weights.sum()
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: total - int(out.sum())]:
        out[i] += 1
    return dict(zip(names, out.tolist()))


def full_archive_grids() -> dict[str, tuple[int, int, int]]:
    """``{roi: (rows, cols, holes)}`` for the 53 ROIs: 16,009 patch locations, as the real archive.

    Test ROIs share their region's test total of ``archive.md``, train and val ROIs share the
    rest (12,293); :data:`KNOWN_GRIDS` are kept as given. Each grid is 14-20 patches wide
    (from the ROI's name) and as many rows as needed; ``holes`` grid cells stay empty.
    """
    counts: dict[str, int] = {}
    groups: dict[str, list[str]] = {}
    for name, info in schema.ROIS.items():
        if name in KNOWN_GRIDS:
            counts[name] = KNOWN_GRIDS[name][2]
        else:
            groups.setdefault(info.region if info.split == "test" else "trainval", []).append(name)
    fixed = {g: sum(counts[n] for n in counts
                    if schema.ROIS[n].split == "test" and schema.ROIS[n].region == g)
             for g in TEST_PATCHES}
    for group, names in groups.items():
        total = (TEST_PATCHES[group] - fixed[group] if group in TEST_PATCHES
                 else TOTAL_PATCHES - sum(TEST_PATCHES.values()))
        counts.update(_share(total, names))
    out: dict[str, tuple[int, int, int]] = {}
    for name in schema.ROIS:
        if name in KNOWN_GRIDS:
            rows, cols, n = KNOWN_GRIDS[name]
        else:
            n = counts[name]
            cols = 14 + zlib.crc32(f"cols {name}".encode()) % 7
            rows = math.ceil(n / cols)
        out[name] = (rows, cols, rows * cols - n)
    return out


# --- the entry point ----------------------------------------------------------------------------

def synthesize_full_archive(
    root: str | os.PathLike,
    *,
    rois: Sequence[str] | None = None,
    patch_size: int = 8,
    n_slots: int = schema.N_SLOTS,
    seed: int = 0,
    s1: bool = True,
    grid: tuple[int, int] | None = None,
    workers: int | None = None,
    spectra: str = "real",
    real_pixels: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> FullArchive:
    """Write (or finish writing) the full-cardinality synthetic archive into ``root``.

    Parameters
    ----------
    root
        Directory of the archive: new, empty, or one an earlier call with the same arguments
        left unfinished (it is completed; files already whole are kept).
    rois
        ROI labels (``"ROIs1868_73"``); all 53 when None. Each ROI is the same whatever the
        others are, so a smaller call writes a subset of the full archive.
    patch_size
        Side of a patch in pixels, at least 8 (the real archive: 256; 8-16 keeps the whole
        archive within a few GB).
    n_slots, seed, s1
        As :func:`~s2cube_conversion.synth.synthesize_archive`.
    grid
        ``(rows, cols)`` for every ROI instead of the real-like grids (e.g. ``(2, 2)`` for a
        quick rehearsal of all 53 ROIs).
    workers
        Processes writing ROIs in parallel (default: the cores).
    spectra, real_pixels
        As :func:`~s2cube_conversion.synth.synthesize_archive`.
    progress
        Called as ``progress(rois_done, rois_total)`` as ROIs finish.

    Raises
    ------
    FileNotFoundError
        The real pixels are absent (and ``spectra="real"``).
    FileExistsError
        ``root`` exists and is not a directory.
    ValueError
        An argument is out of range or an ROI label is unknown.
    """
    started = time.perf_counter()
    opts = _Options(_patch_size(patch_size), _slots(n_slots), int(seed), bool(s1))
    infos = _select(list(schema.ROIS) if rois is None else rois)
    shapes = full_archive_grids()
    if grid is not None:
        rows, cols = _grid(grid, "grid", 0)
        shapes = {n: (rows, cols, 0) for n in shapes}
    plans = tuple(_plan_roi(i, shapes[i.name][:2], shapes[i.name][2], opts) for i in infos)
    load_scenes(spectra, real_pixels)  # fail here, before any process starts, if absent
    path = Path(root).absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose a new or empty "
                              "directory (or the folder of an unfinished run to finish it)")
    path.mkdir(parents=True, exist_ok=True)
    n_workers = max(1, min(len(plans), workers or os.cpu_count() or 1))
    totals = np.zeros(3, np.int64)  # written, kept, bytes
    done = 0
    if progress:
        progress(0, len(plans))
    if n_workers == 1:
        scenes = load_scenes(spectra, real_pixels)
        for roi in plans:
            totals += write_roi_resumable(path, roi, scenes, opts)
            done += 1
            if progress:
                progress(done, len(plans))
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # GDAL and threads do not survive a fork
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(spectra, real_pixels)) as pool:
            futures = [pool.submit(_write_in_worker, path, roi, opts) for roi in plans]
            for fut in as_completed(futures):
                totals += fut.result()
                done += 1
                if progress:
                    progress(done, len(plans))
    written, kept, size = (int(v) for v in totals)
    seconds = time.perf_counter() - started
    logger.info("full synthetic archive: %d ROIs, %d files (%d written, %d kept), %.1f MB "
                "written in %.0f s into %s", len(plans), written + kept, written, kept,
                size / 1e6, seconds, path)
    return FullArchive(path, plans, opts.patch_size, opts.n_slots, opts.seed, opts.s1,
                       written + kept, written, kept, size, seconds)


_SCENES: dict[str, np.ndarray] = {}


def _init_worker(spectra: str, real_pixels: str | os.PathLike | None) -> None:
    _SCENES["scenes"] = load_scenes(spectra, real_pixels)


def _write_in_worker(root: Path, roi: SynthRoi, opts: _Options) -> np.ndarray:
    return write_roi_resumable(root, roi, _SCENES["scenes"], opts)


# --- one ROI ------------------------------------------------------------------------------------

def _present(folder: Path) -> set[str]:
    """Names of the whole files in ``folder``; leftovers of an interrupted write are removed."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return set()
    names = set()
    for e in entries:
        if e.name.endswith(PARTIAL):
            os.unlink(e.path)
        else:
            names.add(e.name)
    return names


def write_roi_resumable(root: Path, roi: SynthRoi, scenes: np.ndarray,
                        o: _Options) -> np.ndarray:
    """Write every file of one ROI that is not already whole; return (written, kept, bytes).

    The ROI is simulated slot by slot exactly as ``synth._write_roi`` does (the random draws
    do not depend on which files exist), so the files equal those of an uninterrupted run.
    """
    import rasterio
    from rasterio.crs import CRS

    sim, crs = _RoiSim(roi, scenes, o), CRS.from_epsg(roi.epsg)
    base = sim.s1_base() if o.s1 else None
    locations = list(roi.locations())
    written = kept = size = 0
    with rasterio.Env():
        for t in range(o.n_slots):
            written, kept, size = _write_slot(root, roi, sim, base, t, crs, locations, o,
                                              (written, kept, size))
    logger.debug("%s: %d files written, %d kept", roi.name, written, kept)
    return np.array([written, kept, size], np.int64)


def _write_slot(root: Path, roi: SynthRoi, sim: _RoiSim, base: np.ndarray | None, t: int,
                crs: object, locations: list[tuple[int, int, int]], o: _Options,
                counts: tuple[int, int, int]) -> tuple[int, int, int]:
    """Simulate slot ``t`` of one ROI and write its missing files; return updated counts."""
    written, kept, size = counts
    p = o.patch_size
    dn, _ = sim.s2(t)
    frames = {"s2": dn, "s1": sim.s1(t, base) if o.s1 else None}
    for mod, data in frames.items():
        if data is None:
            continue
        folder = root / roi.relpath(mod, t, 0).rsplit("/", 1)[0]
        present = _present(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for r, c, pid in locations:
            rel = roi.relpath(mod, t, pid)
            name = rel.rsplit("/", 1)[1]
            if name in present:
                kept += 1
                continue
            final = root / rel
            partial = final.with_name(name + PARTIAL)
            _write_tif(partial, data[:, r * p:(r + 1) * p, c * p:(c + 1) * p], crs,
                       roi.transform(r, c))
            size += partial.stat().st_size
            os.replace(partial, final)
            written += 1
    return written, kept, size
