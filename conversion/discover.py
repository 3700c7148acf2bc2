"""Discover an archive: list its files, parse their names, and report every problem at once.

Nothing here opens a GeoTIFF: names, folders and sizes are enough to know what the
archive holds. Structural problems (names that do not parse, duplicates, unknown ROIs)
are collected in one list so a user fixing a 1.3 TB archive sees them all in one run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from s2cube import schema
from s2cube.errors import ArchiveError
from s2cube.io.storage import Location, filesystem

logger = logging.getLogger(__name__)

ROOT_HINT = "point at the folder that holds ROIs1158/ ROIs1868/ ROIs1970/ ROIs2017/"
_COLLECTION = re.compile(r"^ROIs\d{4}$")

_NAME = re.compile(
    r"^(?P<mod>s[12])_(?P<collection>ROIs\d{4})_(?P<roi>\d+)_ImgNo_(?P<slot>\d+)_"
    r"(?P<date>\d{4}-\d{2}-\d{2})_patch_(?P<pid>\d+)\.tif$"
)


@dataclass(frozen=True)
class SourceFile:
    """One GeoTIFF of the archive, known by its name alone."""

    path: str  # relative to the archive root, '/'-separated
    modality: str  # "s1" or "s2"
    roi: str  # cube label, e.g. "ROIs1868_73"
    slot: int
    date: str  # YYYY-MM-DD
    pid: int
    size: int


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file (or a pair of files), and what to do about it."""

    path: str
    message: str
    fatal: bool = True  # fatal problems stop a conversion before it writes anything

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Inventory:
    """What an archive holds: its files by ROI, the files skipped, and every problem found."""

    root: str
    files: tuple[SourceFile, ...]
    skipped: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    by_roi: dict[str, list[SourceFile]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def rois(self) -> list[str]:
        """ROIs present, in the reference sample order."""
        return sorted(self.by_roi, key=lambda r: schema.roi_info(r).order)

    def fingerprint(self) -> dict:
        """File count, bytes and a hash of the sorted listing (names and sizes)."""
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            digest.update(f"{f.path}\t{f.size}\n".encode())
        return {
            "files": len(self.files),
            "bytes": int(sum(f.size for f in self.files)),
            "listing_sha256": digest.hexdigest(),
        }


def parse_name(path: str, size: int = 0) -> SourceFile | Problem:
    """Parse ``<collection>/<roi>/S2/<t>/s2_<collection>_<roi>_ImgNo_<t>_<date>_patch_<pid>.tif``."""
    parts = path.split("/")
    m = _NAME.match(parts[-1])
    if m is None:
        return Problem(path, "file name does not parse as "
                       "s1|s2_<collection>_<roi>_ImgNo_<t>_<YYYY-MM-DD>_patch_<pid>.tif; "
                       "rename it or move it out of the archive")
    mod, collection, roi_id = m["mod"], m["collection"], int(m["roi"])
    slot, pid = int(m["slot"]), int(m["pid"])
    expected = [collection, str(roi_id), mod.upper(), str(slot)]
    if len(parts) < 5 or parts[-5:-1] != expected:
        return Problem(path, f"file is not in the folder its name implies "
                       f"({'/'.join(expected)}/); move it there")
    name = schema.roi_name(collection, roi_id)
    if name not in schema.ROIS:
        return Problem(path, f"{name} is not one of the 53 ROIs of SEN12MS-CR-TS; "
                       "remove it or check the collection and ROI number")
    if not 0 <= slot < schema.N_SLOTS:
        return Problem(path, f"time slot {slot} is outside 0..{schema.N_SLOTS - 1}")
    try:
        np.datetime64(m["date"], "D")
    except ValueError:
        return Problem(path, f"date {m['date']} in the file name is not a valid date")
    return SourceFile(path, mod, name, slot, m["date"], pid, int(size))


#: folders listed at once on object storage (each listing is sequential pages of 1,000 keys)
LIST_THREADS = 16


def list_files(loc: Location, prefixes: list[str] | None = None, *,
               threads: int = LIST_THREADS) -> dict[str, int]:
    """Every file below ``loc`` (or below its folders ``prefixes``) with its size, by path
    relative to ``loc``.

    Locally, links that point nowhere are listed too (size 0), so that they are reported
    as unreadable instead of silently missing. On object storage the folders are listed
    ``threads`` at a time: the whole archive's 960,000 keys are 961 pages, which one listing
    fetches one after the other; the tree's two top levels (collections, ROIs) are listed
    first, then every ROI folder in parallel.
    """
    if loc.is_local:
        return _list_local(loc, prefixes)
    fs = filesystem(loc)
    found: dict = {}
    try:
        if not fs.isdir(loc.path):
            raise ArchiveError(f"archive root {loc.url} is not a folder; {ROOT_HINT}")
        if prefixes is None:
            folders = [loc.path]
            for _level in range(2):  # collections, then ROIs: a page or two each
                below = []
                for folder in folders:
                    for info in fs.ls(folder, detail=True):
                        if info.get("type") == "directory":
                            below.append(info["name"])
                        else:
                            found[info["name"]] = info
                folders = below
        else:
            folders = [f"{loc.path}/{p}".rstrip("/") for p in prefixes]
        found.update(_find_all(loc, folders, threads))
    except PermissionError as exc:
        raise ArchiveError(f"cannot list archive root {loc.url}: {exc}; check permissions") from exc
    except FileNotFoundError as exc:
        raise ArchiveError(f"archive root {loc.url} does not exist; {ROOT_HINT}") from exc
    base = loc.path.rstrip("/") + "/"
    return {
        (full[len(base):] if full.startswith(base) else full): int(info.get("size") or 0)
        for full, info in found.items() if info.get("type", "file") == "file"
    }


def _find_all(loc: Location, folders: list[str], threads: int) -> dict:
    """``fs.find`` of every folder, ``threads`` at a time; a folder that is not there has
    nothing (a selection names ROIs the archive may not hold)."""
    from concurrent.futures import ThreadPoolExecutor

    def find(folder: str) -> dict:
        try:
            return filesystem(loc).find(folder, detail=True)  # one client per thread
        except FileNotFoundError:
            return {}

    found: dict = {}
    if threads <= 1 or len(folders) <= 1:
        for folder in folders:
            found.update(find(folder))
        return found
    with ThreadPoolExecutor(min(threads, len(folders))) as pool:
        for part in pool.map(find, folders):
            found.update(part)
    return found


def _list_local(loc: Location, prefixes: list[str] | None = None) -> dict[str, int]:
    if not os.path.isdir(loc.path):
        what = "does not exist" if not os.path.exists(loc.path) else "is not a folder"
        raise ArchiveError(f"archive root {loc.url} {what}; {ROOT_HINT}")
    out: dict[str, int] = {}
    tops = [loc.path] if prefixes is None else [
        top for top in (os.path.join(loc.path, p) for p in prefixes) if os.path.isdir(top)]
    for folder, _, names in (w for top in tops for w in os.walk(top, onerror=_raise_listing)):
        rel = os.path.relpath(folder, loc.path).replace(os.sep, "/")
        for name in names:
            full = os.path.join(folder, name)
            try:
                size = os.stat(full).st_size
            except OSError:
                size = 0  # dangling link or vanished file: reported when read
            out[name if rel == "." else f"{rel}/{name}"] = size
    return out


def _raise_listing(exc: OSError) -> None:
    raise ArchiveError(f"cannot list {exc.filename}: {exc.strerror}; check permissions") from exc


def _check_root(loc: Location, tifs: list[str]) -> None:
    """The root must hold the ``ROIs<seed>/`` collections; say where they are if one level off."""
    if not tifs or any(_COLLECTION.match(p.split("/", 1)[0]) for p in tifs):
        return
    deeper = sorted({p.split("/")[0] for p in tifs if len(p.split("/")) > 1
                     and _COLLECTION.match(p.split("/")[1])})
    hint = f" (they are one level down, in {loc.url}/{deeper[0]})" if deeper else ""
    raise ArchiveError(f"{loc.url} is not the root of a SEN12MS-CR-TS archive{hint}; {ROOT_HINT}")


def discover(loc: Location, *, rois: list[str] | None = None, s1: bool = True) -> Inventory:
    """List and parse the archive at ``loc``, keeping only ``rois`` (all when ``None``).

    Raises
    ------
    ArchiveError
        When nothing of SEN12MS-CR-TS is found under ``loc``.
    """
    # a selection lists only its ROIs' folders: converting one ROI of the 960,000-file
    # archive must not list all of it; when they hold nothing, the whole tree says why
    prefixes = None if rois is None else [f"{i.collection}/{i.roi_id}" for i in
                                          (schema.ROIS[r] for r in rois if r in schema.ROIS)]
    listing = list_files(loc, prefixes)
    if prefixes is not None and not any(p.lower().endswith(".tif") for p in listing):
        listing = list_files(loc)
    _check_root(loc, [p for p in listing if p.lower().endswith(".tif")])
    wanted = None if rois is None else set(rois)
    files: list[SourceFile] = []
    skipped: list[str] = []
    problems: list[Problem] = []
    for path, size in sorted(listing.items()):
        if not path.lower().endswith(".tif"):
            skipped.append(path)
            continue
        parsed = parse_name(path, size)
        if isinstance(parsed, Problem):
            problems.append(parsed)
        elif wanted is None or parsed.roi in wanted:
            if s1 or parsed.modality == "s2":
                files.append(parsed)
    if not files and not problems:
        hint = "" if wanted is None else f" for the ROIs asked for ({', '.join(sorted(wanted))})"
        raise ArchiveError(f"no SEN12MS-CR-TS GeoTIFFs found under {loc.url}{hint}; {ROOT_HINT}")
    for path in skipped:
        logger.info("skipping %s: not a .tif", path)
    problems += _duplicates(files) + _unpaired(files, s1)
    by_roi: dict[str, list[SourceFile]] = defaultdict(list)
    for f in files:
        by_roi[f.roi].append(f)
    return Inventory(loc.url, tuple(files), tuple(skipped), tuple(problems), dict(by_roi))


def _duplicates(files: list[SourceFile]) -> list[Problem]:
    seen: dict[tuple, SourceFile] = {}
    problems = []
    for f in files:
        key = (f.modality, f.roi, f.slot, f.pid)
        if key in seen:
            problems.append(Problem(
                f.path, f"duplicate patch id {f.pid} at slot {f.slot}: {seen[key].path} "
                "has the same one; keep only one of them"))
        else:
            seen[key] = f
    return problems


def _unpaired(files: list[SourceFile], s1: bool) -> list[Problem]:
    """An S1 without its S2 (or the reverse) is recorded as a gap, not a stop."""
    if not s1:
        return []
    keys = {(f.modality, f.roi, f.slot, f.pid): f for f in files}
    held = {(f.modality, f.roi) for f in files}  # a user may hold no S1 of an ROI at all
    problems = []
    for (mod, roi, slot, pid), f in keys.items():
        other = "s1" if mod == "s2" else "s2"
        if (other, roi) in held and (other, roi, slot, pid) not in keys:
            problems.append(Problem(
                f.path, f"{mod.upper()} file has no {other.upper()} partner for patch {pid} at "
                f"slot {slot}; the gap is recorded (valid_{other} false)", fatal=False))
    return problems
