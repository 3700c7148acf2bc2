"""Check every file of a SEN12MS-CR archive against its cube: pixels, validity, georeference.

``s2cube validate`` calls :func:`validate` when the source is a SEN12MS-CR archive: both S2
images bit-exact, S1 value-exact (NaN too), each patch's stored transform equal to its S2
file's, its scene and patch number where the cube says; one dask task per block of
patches, like the conversion. Every difference is listed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s2cube import sen12mscr as cr
from s2cube.io.storage import Location, parse_location, zarr_store
from s2cube.parallel import map_bounded
from s2cube_conversion.cr_archive import SceneHeader, discover, select_scenes
from s2cube_conversion.cr_convert import read_file
from s2cube_conversion.discover import Problem
from s2cube_conversion.validate import ValidationReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Block:
    scene: str
    items: tuple[tuple[int, int | None, tuple[str | None, ...]], ...]  # (pid, position, paths)


@dataclass(frozen=True)
class _Check:
    source: Location
    cube: Location
    call: str  # names one validate call: what a process caches of the cube lives for it only


@lru_cache(maxsize=2)
def _open(cube: Location, call: str):
    import xarray as xr

    return xr.open_zarr(zarr_store(cube, read_only=True), consolidated=True, chunks=None)


def validate(source, cube, *, rois: list[str] | None = None, storage_options: dict | None = None,
             source_storage_options: dict | None = None, client=None,
             progress=None) -> ValidationReport:
    """Compare every GeoTIFF of the SEN12MS-CR archive at ``source`` (or of the scenes
    ``rois``) with the cube at ``cube``."""
    src = parse_location(source, source_storage_options or storage_options)
    dst = parse_location(cube, storage_options)
    inv = discover(src, scenes=select_scenes(rois=tuple(rois or ())))
    call = uuid.uuid4().hex  # the cube as it is now, not as an earlier call in this process saw it
    ds = _open(dst, call)
    table = cr.scenes_of(ds.attrs)
    names = [s.scene for s in table]
    where = {(names[s], int(p)): k for k, (s, p) in
             enumerate(zip(ds["scene"].values.tolist(), ds["patch_id"].values.tolist())) if s >= 0}
    blocks = []
    for scene in inv.scenes:
        items = [(pid, where.get((scene, pid)),
                  tuple(f.path if (f := files.get(m)) else None for m in cr.MODALITIES))
                 for pid, files in sorted(inv.by_scene[scene].items())]
        for b in range(0, len(items), cr.PATCHES_PER_SHARD):
            blocks.append(_Block(scene, tuple(items[b:b + cr.PATCHES_PER_SHARD])))
    check = _Check(src, dst, call)
    if client is None:
        results = []
        for i, b in enumerate(blocks):
            results.append(_check_block(check, b))
            if progress:
                progress(i + 1, len(blocks))
    else:
        results = map_bounded(client, _check_block, check, blocks, what="block check",
                              progress=progress, stop_on_error=True)
    diffs = [d for r in results for d in r]
    files = sum(sum(p is not None for p in paths) for b in blocks for _, _, paths in b.items)
    return ValidationReport(files, tuple(diffs))


def _check_block(check: _Check, block: _Block) -> list[Problem]:
    ds = _open(check.cube, check.call)
    table = {s.scene: s for s in cr.scenes_of(ds.attrs)}
    p = int(ds.attrs["patch_size"])
    out: list[Problem] = []
    scene = table.get(block.scene)
    if scene is None:
        return [Problem(path, f"{block.scene} is not in the cube; convert it")
                for _, _, paths in block.items for path in paths if path]
    header = SceneHeader(scene.crs_wkt, scene.epsg, (np.nan, np.nan), p)
    for pid, pos, paths in block.items:
        if pos is None:
            out += [Problem(path, f"patch p{pid} of {block.scene} is not in the cube; convert "
                            "the archive again into it") for path in paths if path]
            continue
        cell = ds.isel(patch=pos)
        for m, var, path in zip(cr.MODALITIES, ("s1", "s2", "s2_cloudy"), paths):
            if path is None:
                continue
            valid = bool(cell[f"valid_{m}"].values)
            got = read_file(check.source, path, m, _scene_header(header, cell))
            if isinstance(got, Problem):
                if valid:
                    out.append(Problem(path, f"unreadable now but marked valid in the cube "
                                       f"({got.message})"))
                continue
            arr, georef = got
            if not valid:
                out.append(Problem(path, f"the file reads, but the cube marks it missing "
                                   f"(valid_{m} false); convert again to fill the gap"))
                continue
            stored = cell[var].values
            same = (np.array_equal(stored, arr) if m != "s1" else
                    np.array_equal(stored.astype(np.float64), arr.astype(np.float64),
                                   equal_nan=True))
            if not same:
                n = int((~np.isclose(stored.astype(np.float64), arr.astype(np.float64), rtol=0,
                                     atol=0, equal_nan=True)).sum())
                out.append(Problem(path, f"{n} pixel value(s) differ from the cube"))
            if m == "s2" and not np.array_equal(np.asarray(cell["transform"].values),
                                                np.asarray(georef.transform, np.float64)):
                out.append(Problem(path, f"its transform {georef.transform} differs from the "
                                   f"cube's {cell['transform'].values.tolist()}"))
    return out


def _scene_header(header: SceneHeader, cell) -> SceneHeader:
    """The scene's header with the pixel size of the patch the cube recorded (a and e)."""
    t = np.asarray(cell["transform"].values, np.float64)
    pixel = (float(t[0]), float(t[4])) if np.isfinite(t).all() else header.pixel
    return SceneHeader(header.crs_wkt, header.epsg, pixel, header.patch_size)


__all__ = ["validate"]
