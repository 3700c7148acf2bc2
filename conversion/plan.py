"""Plan a conversion: place every patch on its ROI's grid by its georeference, never by id.

One header per patch location is read (the first readable file of its series); the grid
of each ROI follows from the patches' origins. Problems that change the layout (a CRS or
grid that does not fit, two patches on one cell, mixed patch sizes) are collected, all of
them, and stop the conversion before anything is written.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from s2cube import schema
from s2cube.errors import ArchiveError
from s2cube.grid import RoiGrid
from s2cube.io.storage import Location, filesystem
from s2cube_conversion.discover import Inventory, Problem, SourceFile
from s2cube_conversion.read import Georef, read_header

logger = logging.getLogger(__name__)


def patch_georef(grid: RoiGrid, row: int, col: int) -> Georef:
    """The georeference the GeoTIFFs of the patch at (row, col) of ``grid`` must have."""
    p = grid.patch_size
    return Georef(grid.crs_wkt, grid.epsg, grid.patch_transform(row, col), p, p)


@dataclass(frozen=True)
class PatchTask:
    """One patch location's whole series: the unit of work of a conversion."""

    roi: str
    row: int
    col: int
    pid: int
    s2: tuple[str | None, ...]  # relative path per slot
    s1: tuple[str | None, ...]
    s2_dates: tuple[str | None, ...]
    s1_dates: tuple[str | None, ...]

    @property
    def key(self) -> str:
        return f"{self.roi}/{self.row}_{self.col}"


@dataclass(frozen=True)
class Plan:
    """Grids of the ROIs and the patch tasks, in the reference sample order."""

    grids: dict[str, RoiGrid]
    tasks: tuple[PatchTask, ...]
    patch_size: int


def plan(inventory: Inventory, root: Location, *, threads: int = 16) -> Plan:
    """Read one header per patch location and lay every ROI's patches on its grid.

    Raises
    ------
    ArchiveError
        Listing every fatal problem of the archive (from discovery and from the grids).
    """
    problems = [p for p in inventory.problems if p.fatal]
    series = _series(inventory)
    headers = _headers(series, root, threads)
    grids: dict[str, RoiGrid] = {}
    cells: dict[str, dict[int, tuple[int, int]]] = {}
    for roi in inventory.rois:
        grid, placed, found = _grid(roi, {pid: headers.get((roi, pid)) for pid in series[roi]},
                                    series[roi])
        problems += found
        if grid is not None:
            grids[roi], cells[roi] = grid, placed
    sizes = {g.patch_size for g in grids.values()}
    if len(sizes) > 1:
        problems.append(Problem(inventory.root, f"ROIs have different patch sizes {sorted(sizes)}; "
                                "convert them into separate cubes"))
    if problems:
        raise ArchiveError(f"the archive at {inventory.root} has {len(problems)} problem(s) "
                           "that stop the conversion; fix them and run again:", problems)
    tasks = [_task(roi, pid, rc, series[roi][pid]) for roi in grids
             for pid, rc in sorted(cells[roi].items())]
    return Plan(grids, tuple(tasks), sizes.pop())


def _series(inv: Inventory) -> dict[str, dict[int, list[SourceFile]]]:
    out: dict[str, dict[int, list[SourceFile]]] = defaultdict(lambda: defaultdict(list))
    for f in inv.files:
        out[f.roi][f.pid].append(f)
    return out


def _candidates(files: list[SourceFile]) -> list[SourceFile]:
    return sorted(files, key=lambda f: (f.modality != "s2", f.slot))


def _headers(series, root: Location, threads: int) -> dict[tuple[str, int], Georef | Problem]:
    fs = None if root.is_local else filesystem(root)

    def first_readable(item):
        (roi, pid), files = item
        result: Georef | Problem | None = None
        for f in _candidates(files)[:4]:
            result = read_header(root, f.path, fs)
            if isinstance(result, Georef):
                return (roi, pid), result
        return (roi, pid), result

    items = [((roi, pid), files) for roi, by_pid in series.items() for pid, files in by_pid.items()]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(pool.map(first_readable, items))


def _grid(roi, headers: dict[int, Georef | Problem | None], files):
    problems: list[Problem] = []
    good = {pid: h for pid, h in headers.items() if isinstance(h, Georef)}
    for pid, h in headers.items():
        if not isinstance(h, Georef):
            path = _candidates(files[pid])[0].path
            problems.append(Problem(path, f"no file of patch {pid} of {roi} can be read, so it "
                                    "cannot be placed on the grid; replace its files or remove them"))
    if not good:
        return None, {}, problems
    pid0 = min(good)
    ref = good[pid0]
    p = ref.width
    a, _, _, _, e, _ = ref.transform
    for pid, h in sorted(good.items()):
        path = _candidates(files[pid])[0].path
        if h.width != h.height:
            problems.append(Problem(path, f"patch is {h.width}×{h.height} px, not square"))
        elif h.width != p:
            problems.append(Problem(path, f"patch is {h.width} px wide, the ROI's other patches "
                                    f"are {p}; replace it"))
        elif h.crs_wkt != ref.crs_wkt:
            problems.append(Problem(path, f"CRS EPSG:{h.epsg} differs from the ROI's other patches "
                                    f"(EPSG:{ref.epsg}, e.g. patch {pid0}); replace it"))
        elif h.transform[1] or h.transform[3] or (h.transform[0], h.transform[4]) != (a, e):
            problems.append(Problem(path, "pixel size or rotation differs from the ROI's other "
                                    "patches; replace it"))
    if problems:
        return None, {}, problems
    left = min(h.transform[2] for h in good.values())
    top = max(h.transform[5] for h in good.values())
    placed: dict[int, tuple[int, int]] = {}
    at: dict[tuple[int, int], int] = {}
    for pid, h in sorted(good.items()):
        path = _candidates(files[pid])[0].path
        col_f = (h.transform[2] - left) / (p * a)
        row_f = (h.transform[5] - top) / (p * e)
        row, col = round(row_f), round(col_f)
        if abs(col_f - col) > 1e-3 or abs(row_f - row) > 1e-3:
            problems.append(Problem(path, f"patch origin ({h.transform[2]}, {h.transform[5]}) is "
                                    f"not on the ROI's {p}-pixel patch grid (overlapping or shifted "
                                    "patch); replace it"))
        elif (row, col) in at:
            other = _candidates(files[at[(row, col)]])[0].path
            problems.append(Problem(path, f"patch {pid} covers the same ground as patch "
                                    f"{at[(row, col)]} ({other}); remove one of them"))
        else:
            at[(row, col)] = pid
            placed[pid] = (row, col)
    if problems:
        return None, {}, problems
    n_rows = 1 + max(r for r, _ in placed.values())
    n_cols = 1 + max(c for _, c in placed.values())
    grid = RoiGrid(roi, ref.crs_wkt, ref.epsg, (a, 0.0, left, 0.0, e, top), n_rows, n_cols, p)
    return grid, placed, []


def _task(roi: str, pid: int, rc: tuple[int, int], files: list[SourceFile]) -> PatchTask:
    paths: dict[str, list[str | None]] = {m: [None] * schema.N_SLOTS for m in ("s1", "s2")}
    dates: dict[str, list[str | None]] = {m: [None] * schema.N_SLOTS for m in ("s1", "s2")}
    for f in files:
        paths[f.modality][f.slot] = f.path
        dates[f.modality][f.slot] = f.date
    return PatchTask(roi, rc[0], rc[1], pid, tuple(paths["s2"]), tuple(paths["s1"]),
                     tuple(dates["s2"]), tuple(dates["s1"]))
