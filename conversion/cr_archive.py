"""A SEN12MS-CR archive: recognise its layout, list and parse its files, plan the cube.

The layout (``docs/archive.md`` sec. 9, the 12 archives merged into one root)::

    <root>/ROIs1868_summer_s1/s1_73/ROIs1868_summer_s1_73_p30.tif                 # 2 bands, dB
    <root>/ROIs1868_summer_s2/s2_73/ROIs1868_summer_s2_73_p30.tif                 # 13 bands, clear
    <root>/ROIs1868_summer_s2_cloudy/s2_cloudy_73/ROIs1868_summer_s2_cloudy_73_p30.tif

:func:`detect_layout` tells it from a SEN12MS-CR-TS root by the root's own folders (one
listing of one level) and refuses a root that mixes both. Like the time-series converter,
names alone say what the archive holds (:func:`discover`), every problem is collected in one
list, structural ones stop the conversion before anything is written, and bad content is a
recorded gap. Unlike it, patches are never placed on a grid: SEN12MS cut its scenes with
overlapping patches and patch numbers have gaps, so every patch keeps its own georeference
(read by the workers) and the plan only reserves positions: each scene gets whole shards of
the ``patch`` dim, its patches in natural order of their numbers (the reference's order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube.errors import ArchiveError, ConversionError
from s2cube.io.storage import Location, check_access, filesystem
from s2cube_conversion.discover import Problem, list_files
from s2cube_conversion.read import read_header

logger = logging.getLogger(__name__)

ROOT_HINT = ("point at the folder that holds ROIs1158_spring_s1/ ROIs1158_spring_s2/ "
             "ROIs1158_spring_s2_cloudy/ … (the SEN12MS-CR archives merged into one root)")
_TOP_CR = re.compile(r"^(ROIs\d{4})_(spring|summer|fall|winter)_(s1|s2|s2_cloudy)$")
_TOP_TS = re.compile(r"^ROIs\d{4}$")
_SUB = re.compile(r"^(s1|s2|s2_cloudy)_(\d+)$")
_NAME = re.compile(r"^(?P<collection>ROIs\d{4})_(?P<season>spring|summer|fall|winter)_"
                   r"(?P<mod>s1|s2|s2_cloudy)_(?P<scene>\d+)_p(?P<pid>\d+)\.tif$")
#: journal entries of a SEN12MS-CR conversion, below ``schema.JOURNAL_PREFIX``
LAYOUT_DIR, BLOCKS_DIR = "layout", "blocks"


# --- which layout is this ------------------------------------------------------------------

def _top_names(loc: Location) -> list[str]:
    if loc.is_local:
        try:
            return sorted(os.listdir(loc.path))
        except OSError:
            return []
    fs = filesystem(loc)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(loc.path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def detect_layout(loc: Location) -> str | None:
    """``"sen12ms-cr"``, ``"sen12ms-cr-ts"`` or None, from the root's own folder names.

    Raises
    ------
    ArchiveError
        The root holds folders of both layouts.
    """
    names = _top_names(loc)
    ts = [n for n in names if _TOP_TS.match(n)]
    mono = [n for n in names if _TOP_CR.match(n)]
    if ts and mono:
        raise ArchiveError(
            f"{loc.url} mixes the two layouts: SEN12MS-CR-TS collections ({', '.join(ts[:4])}) "
            f"and SEN12MS-CR folders ({', '.join(mono[:4])}). Convert each data set from a root "
            "of its own into a cube of its own (s2cube pairs the two cubes by georeference: "
            "ds.s2cube.pair(other))")
    if mono:
        return cr.LAYOUT_CR
    if ts:
        return cr.LAYOUT_TS
    return None


def is_cr_archive(source, storage_options: dict | None = None) -> bool:
    """Whether ``source`` (a path, URL or Location) is the root of a SEN12MS-CR archive."""
    from s2cube.io.storage import parse_location

    loc = source if isinstance(source, Location) else parse_location(source, storage_options)
    if not loc.is_local:
        check_access(loc)  # a wrong credential or bucket fails here, in seconds
    return detect_layout(loc) == cr.LAYOUT_CR


# --- names ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CrFile:
    """One GeoTIFF of a SEN12MS-CR archive, known by its name alone."""

    path: str  # relative to the root, '/'-separated
    modality: str  # "s1", "s2" or "s2_cloudy"
    scene: str  # "ROIs1868_summer_73"
    pid: int
    size: int


relpath = cr.relpath


def parse_name(path: str, size: int = 0) -> CrFile | Problem:
    """Parse ``ROIs1868_summer_s2/s2_73/ROIs1868_summer_s2_73_p30.tif``."""
    parts = path.split("/")
    m = _NAME.match(parts[-1])
    if m is None:
        return Problem(path, "file name does not parse as <collection>_<season>_<s1|s2|s2_cloudy>_"
                       "<scene>_p<patch>.tif (e.g. ROIs1868_summer_s2_73_p30.tif); rename it or "
                       "move it out of the archive")
    collection, season, mod = m["collection"], m["season"], m["mod"]
    sid, pid = int(m["scene"]), int(m["pid"])
    if collection not in cr.SEASONS:
        return Problem(path, f"{collection} is not a collection of SEN12MS-CR "
                       f"({', '.join(cr.SEASONS)}); remove the file")
    if cr.SEASONS[collection] != season:
        return Problem(path, f"{collection} is the {cr.SEASONS[collection]} collection, the file "
                       f"name says {season}; rename it")
    want = [f"{collection}_{season}_{mod}", f"{mod}_{sid}"]
    if parts[:-1] != want:
        return Problem(path, f"file is not in the folder its name implies ({'/'.join(want)}/); "
                       "move it there")
    return CrFile(path, mod, cr.scene_name(collection, sid), pid, int(size))


@dataclass(frozen=True)
class CrInventory:
    """What a SEN12MS-CR archive holds: files by scene and patch, files skipped, problems."""

    root: str
    files: tuple[CrFile, ...]
    skipped: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    by_scene: dict[str, dict[int, dict[str, CrFile]]] = field(default_factory=dict,
                                                               compare=False, hash=False)

    @property
    def scenes(self) -> list[str]:
        """Scenes present, in the reference sample order."""
        return sorted(self.by_scene, key=lambda s: cr.order_key(*cr.parse_scene(s)))

    def fingerprint(self) -> dict:
        """File count, bytes and a hash of the sorted listing (names and sizes)."""
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            digest.update(f"{f.path}\t{f.size}\n".encode())
        return {"files": len(self.files), "bytes": int(sum(f.size for f in self.files)),
                "listing_sha256": digest.hexdigest()}


def select_scenes(split: str | None = None, region: str | None = None,
                  rois: tuple[str, ...] | list[str] = ()) -> set[str] | None:
    """The scenes a selection asks for (None: all). ``rois`` may name scenes or CR-TS ROIs."""
    if region not in (None, "all"):
        raise ArchiveError(f"region {region!r}: SEN12MS-CR has no regions (its reference loader "
                           "takes region='all' only); select by --split or --roi")
    if split not in (None, "all", *schema.SPLITS):
        raise ArchiveError(f"split {split!r} is not one of all, {', '.join(schema.SPLITS)}")
    wanted: set[str] | None = None
    if split not in (None, "all"):
        wanted = set(cr.SPLIT_SCENES[split])
    if rois:
        try:
            named = {cr.normalize_scene(r) for r in rois}
        except ValueError as exc:
            raise ArchiveError(str(exc)) from None
        wanted = named if wanted is None else wanted & named
    return wanted


def discover(loc: Location, *, scenes: set[str] | None = None, s1: bool = True) -> CrInventory:
    """List and parse the SEN12MS-CR archive at ``loc`` (only ``scenes`` when given).

    Raises
    ------
    ArchiveError
        Nothing of SEN12MS-CR is under ``loc``.
    """
    listing = list_files(loc)
    files: list[CrFile] = []
    skipped: list[str] = []
    problems: list[Problem] = []
    for path, size in sorted(listing.items()):
        if not path.lower().endswith(".tif"):
            skipped.append(path)
            continue
        parsed = parse_name(path, size)
        if isinstance(parsed, Problem):
            problems.append(parsed)
        elif (scenes is None or parsed.scene in scenes) and (s1 or parsed.modality != "s1"):
            files.append(parsed)
    if not files and not problems:
        hint = "" if scenes is None else f" for the scenes asked for ({', '.join(sorted(scenes))})"
        raise ArchiveError(f"no SEN12MS-CR GeoTIFFs found under {loc.url}{hint}; {ROOT_HINT}")
    for path in skipped:
        logger.info("skipping %s: not a .tif", path)
    by_scene: dict[str, dict[int, dict[str, CrFile]]] = defaultdict(lambda: defaultdict(dict))
    for f in files:
        by_scene[f.scene][f.pid][f.modality] = f
    problems += _unpaired(by_scene, s1)
    return CrInventory(loc.url, tuple(files), tuple(skipped), tuple(problems),
                       {s: dict(v) for s, v in by_scene.items()})


def _unpaired(by_scene, s1: bool) -> list[Problem]:
    """A patch without all three files is kept as a recorded gap (the reference drops it
    silently); a modality a scene holds no file of at all is one problem for the scene."""
    mods = cr.MODALITIES if s1 else ("s2", "s2_cloudy")
    out = []
    for scene, patches in by_scene.items():
        held = {m for files in patches.values() for m in files}
        for m in mods:
            if m not in held:
                some = next(iter(next(iter(patches.values())).values()))
                out.append(Problem(some.path, f"scene {scene} has no {m} file at all "
                                   f"({relpath(scene, m, some.pid).split('/')[0]}/ is missing); "
                                   f"its patches are kept with valid_{m} false and are no samples",
                                   fatal=False))
        for pid, files in sorted(patches.items()):
            lost = [m for m in mods if m in held and m not in files]
            if not lost:
                continue
            have = files[next(m for m in cr.MODALITIES if m in files)]
            what = " and ".join(relpath(scene, m, pid) for m in lost)
            out.append(Problem(have.path, f"unpaired patch: {what} is missing (the reference "
                               "loader silently drops such a patch); it is kept with "
                               f"{', '.join('valid_' + m for m in lost)} false and is no sample",
                               fatal=False))
    return out


# --- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockTask:
    """One shard's worth of consecutive patches of one scene: the unit of work."""

    scene: str
    block: int
    start: int  # position of the first patch on the ``patch`` dim
    pids: tuple[int, ...]
    paths: tuple[tuple[str | None, str | None, str | None], ...]  # (s1, s2, s2_cloudy) per patch
    gaps: tuple[tuple[str, str], ...] = ()  # the inventory's problems of its patches

    @property
    def key(self) -> str:
        return f"{self.scene}/{self.block}"

    @property
    def journal_key(self) -> str:
        return f"{schema.JOURNAL_PREFIX}/{BLOCKS_DIR}/{self.scene}/{self.block}.json"


@dataclass(frozen=True)
class SceneHeader:
    """What the first readable file of a scene says: CRS, pixel size, patch size."""

    crs_wkt: str
    epsg: int | None
    pixel: tuple[float, float]  # (a, e) of the transform
    patch_size: int


@dataclass(frozen=True)
class CrPlan:
    """The scenes' layout on the ``patch`` dim (existing ones first) and the block tasks."""

    scenes: tuple[cr.Scene, ...]
    headers: dict[str, SceneHeader]
    pids: dict[str, tuple[int, ...]]  # per scene, natural order: position = start + index
    tasks: tuple[BlockTask, ...]
    patch_size: int
    per_shard: int

    @property
    def size(self) -> int:
        return sum(s.capacity for s in self.scenes)


def _headers(inv: CrInventory, root: Location, threads: int) -> dict[str, SceneHeader | Problem]:
    fs = None if root.is_local else filesystem(root)

    def first(scene):
        last: Problem | None = None
        for pid in sorted(inv.by_scene[scene])[:4]:
            for m in ("s2", "s2_cloudy", "s1"):
                f = inv.by_scene[scene][pid].get(m)
                if f is None:
                    continue
                got = read_header(root, f.path, fs)
                if isinstance(got, Problem):
                    last = got
                    continue
                if got.width != got.height:
                    return scene, Problem(f.path, f"patch is {got.width}×{got.height} px, "
                                          "not square")
                return scene, SceneHeader(got.crs_wkt, got.epsg,
                                          (got.transform[0], got.transform[4]), got.width)
        return scene, last or Problem(scene, "no file of the scene can be read")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(pool.map(first, inv.scenes))


def read_layout(cube: Location, scene: str) -> tuple[int, ...] | None:
    """The patch numbers a cube recorded for ``scene`` (its positions), None if new."""
    fs = filesystem(cube)
    try:
        data = fs.cat_file(f"{cube.path}/{schema.JOURNAL_PREFIX}/{LAYOUT_DIR}/{scene}.json")
    except FileNotFoundError:
        return None
    return tuple(int(p) for p in json.loads(data)["pids"])


def plan(inv: CrInventory, root: Location, existing: dict | None, cube: Location, *,
         per_shard: int = cr.PATCHES_PER_SHARD, threads: int = 16) -> CrPlan:
    """Read one header per scene and lay the scenes out on the ``patch`` dim.

    Scenes already in the cube (``existing`` root attrs) keep their positions; new ones are
    appended in sample order.

    Raises
    ------
    ArchiveError
        Listing every fatal problem (from discovery and from the headers).
    ConversionError
        A scene in the cube now holds patch numbers the cube was laid out without.
    """
    problems = [p for p in inv.problems if p.fatal]
    headers: dict[str, SceneHeader] = {}
    for scene, h in _headers(inv, root, threads).items():
        if isinstance(h, SceneHeader):
            headers[scene] = h
        else:
            problems.append(Problem(h.path, f"no file of scene {scene} can be read ({h.message}); "
                                    "replace its files or remove them"))
    old = cr.scenes_of(existing or {})
    if existing is not None:
        per_shard = int(existing.get("patches_per_shard") or per_shard)
    sizes = {h.patch_size for h in headers.values()}
    if existing is not None and headers:
        sizes.add(int(existing.get("patch_size") or 0))
    if len(sizes) > 1:
        problems.append(Problem(inv.root, f"scenes have different patch sizes {sorted(sizes)} (the "
                                "cube's included); convert them into separate cubes"))
    if problems:
        raise ArchiveError(f"the archive at {inv.root} has {len(problems)} problem(s) that stop "
                           "the conversion; fix them and run again:", problems)
    layout: list[cr.Scene] = list(old)
    pids: dict[str, tuple[int, ...]] = {}
    at = {s.scene: s for s in old}
    end = sum(s.capacity for s in old)
    for scene in inv.scenes:
        h = headers[scene]
        held = tuple(sorted(inv.by_scene[scene]))
        if scene in at:
            recorded = read_layout(cube, scene) or ()
            new = sorted(set(held) - set(recorded))
            if new:
                raise ConversionError(
                    f"{scene} is in {cube.url} with {len(recorded)} patches; the archive now "
                    f"also holds p{', p'.join(map(str, new[:5]))}, which the cube was laid out "
                    "without: convert the archive into a new cube")
            s = at[scene]
            if s.crs_wkt != h.crs_wkt:
                raise ConversionError(f"{scene} is in {cube.url} in another CRS (EPSG:{s.epsg}) "
                                      f"than the archive's (EPSG:{h.epsg}); convert into a new cube")
            pids[scene] = recorded
            continue
        cap = cr.capacity(len(held), per_shard)
        s = cr.Scene(scene, h.epsg, h.crs_wkt, end, cap, len(held))
        end += cap
        layout.append(s)
        pids[scene] = held
    tasks = []
    by_name = {s.scene: s for s in layout}
    gaps: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for pr in inv.problems:  # non-fatal ones (the fatal ones stopped above): by patch
        f = parse_name(pr.path)
        if isinstance(f, CrFile):
            gaps[(f.scene, f.pid)].append((pr.path, pr.message))
    for scene in inv.scenes:
        s, files = by_name[scene], inv.by_scene[scene]
        order = pids[scene]
        for b in range(0, len(order), per_shard):
            chunk = order[b:b + per_shard]
            paths = tuple(tuple(files[p][m].path if p in files and m in files[p] else None
                                for m in cr.MODALITIES) for p in chunk)
            found = tuple(g for p in chunk for g in gaps.get((scene, p), ()))
            tasks.append(BlockTask(scene, b // per_shard, s.start + b, chunk, paths, found))
    size = sizes.pop() if sizes else int((existing or {}).get("patch_size") or 0)
    return CrPlan(tuple(layout), headers, pids, tuple(tasks), size, per_shard)
