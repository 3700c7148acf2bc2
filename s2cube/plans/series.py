"""Series plans by label: the seq2seq protocol as a small table (archive.md sec. 7).

The public seq2seq protocol (U-TILISE) on SEN12MS-CR-TS: a frame is *cloudy* when at
least 40 % of its pixels are masked; series with fewer than 5 clear frames are dropped;
evaluation gaps are synthetic — real cloud masks of the same tile (ROI) laid over clear
frames, so there is ground truth under every gap — and only the cloud-free target pixels
under a gap are scored.

A *series plan* is a :class:`pandas.DataFrame`, one row per series (index ``sdx``):

- ``roi`` (name), ``row``, ``col`` (the patch's labels), ``patch_id``, ``split``, ``region``;
- ``slots``: the series, a tuple of ``time`` labels;
- ``gaps``: the gapped frames (``time`` labels, a subset of ``slots``, clear frames only);
- ``donor_row``, ``donor_col``, ``donor_slot``: per gap, the donor mask's patch and slot
  (labels; the donor ROI is always the series' own ROI);
- ``detector``: whose masks are the clouds and the donors; ``n_clear`` (clear frames of the
  series by the rule) and ``cloudy_fraction`` (the rule's threshold), for the record.

Everything is named by label, like the seq2point plans of :mod:`s2cube.plans.table`, so
**the same plan gives the same series, gaps and donor masks on any Dataset that holds its
ROIs, patches (the donors' too) and slots**, and is refused naming what is missing
elsewhere. :func:`series_plan` draws one from the stored ``coverage`` (reading no pixel),
reproducibly from a seed: each series draws from its own generator keyed by the seed, its
ROI name and its patch labels, so a series' gaps do not depend on the other series, nor on
the order of the Dataset. :func:`save_series_plan` / :func:`load_series_plan` keep a plan
as a plain CSV or JSON-lines file, so published results can be reproduced.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema
from s2cube.errors import PlanError, SelectionError
from s2cube.plans.rules import CLOUDY_FRACTION

logger = logging.getLogger(__name__)

#: clear frames a series needs to be kept (U-TILISE protocol)
MIN_CLEAR = 5
#: donor masks come from frames whose coverage lies in this range (partly to fully cloudy)
DONOR_COVERAGE = (0.1, 1.0)
SERIES_COLUMNS = ("roi", "row", "col", "slots", "gaps", "donor_row", "donor_col", "donor_slot")
TUPLE_COLUMNS = ("slots", "gaps", "donor_row", "donor_col", "donor_slot")
DEFAULT_DETECTOR = "s2cloudless_mask"


class _PatchRow(Protocol):
    """A row of :func:`s2cube.select.patch_table` as ``DataFrame.itertuples()`` gives it."""

    roi: str
    row: int
    col: int
    patch_id: int
    split: str
    region: str
    roi_pos: int
    row_pos: int
    col_pos: int


class _SeriesRow(Protocol):
    """A row of a series table (after :func:`as_series_table`) as ``itertuples()`` gives it."""

    slots: tuple[int, ...]
    gaps: tuple[int, ...]
    donor_row: tuple[int, ...]
    donor_col: tuple[int, ...]
    donor_slot: tuple[int, ...]


def _series_rng(seed: int, roi: str, row: int, col: int) -> np.random.Generator:
    """The generator of one series: keyed by the seed and the series' labels only."""
    return np.random.default_rng([int(seed), zlib.crc32(roi.encode()), int(row), int(col)])


def _small(one: xr.Dataset, name: str, dims: tuple[str, ...]) -> np.ndarray:
    var = one[name]
    return np.asarray(var.transpose(*dims).values)


def series_plan(
    ds: xr.Dataset,
    *,
    split: str = "test",
    region: str = "all",
    detector: str = DEFAULT_DETECTOR,
    cloudy_fraction: float = CLOUDY_FRACTION,
    min_clear: int = MIN_CLEAR,
    n_gaps: int = 3,
    donor_coverage: tuple[float, float] = DONOR_COVERAGE,
    n_series: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The seq2seq series of ``split``/``region`` in this Dataset, with synthetic gaps.

    A series is one patch over the Dataset's slots (select ``time`` for shorter series).
    Reads ``patch_id``, ``coverage``, ``valid_s2`` and ``blank`` only, never a pixel.

    Parameters
    ----------
    split, region
        Which patches (as the reference loader takes them; ``all`` for every one).
    detector
        The detector whose coverage makes the cloudy rule and whose masks are the donors.
    cloudy_fraction
        A frame is cloudy when its coverage is at least this (missing and blank frames are
        cloudy too); the others are clear.
    min_clear
        Series with fewer clear frames are dropped.
    n_gaps
        Clear frames per series that get a synthetic gap (``1 <= n_gaps < min_clear``, so a
        clear frame is always left ungapped).
    donor_coverage
        ``(low, high)``: donor masks are the masks of frames of the same ROI (any of its
        patches the Dataset holds, any of its slots) with ``low <= coverage <= high``, valid
        and not blank; never the gapped frame's own mask.
    n_series
        Keep this many series, drawn from ``seed`` (in sample order); all by default.
    seed
        Seed of every draw.

    Returns
    -------
    pandas.DataFrame
        The plan (see the module docstring), index ``sdx``.

    Raises
    ------
    SelectionError
        The Dataset holds no patch of ``split``/``region``, or no series passes the rule.
    """
    from s2cube.select import patch_table, roi_names

    schema.detector_name(detector)
    n_gaps, min_clear = int(n_gaps), int(min_clear)
    if not 1 <= n_gaps < min_clear:
        raise ValueError(f"n_gaps={n_gaps} must be between 1 and min_clear - 1 = {min_clear - 1}")
    if not 0.0 < float(cloudy_fraction) <= 1.0:
        raise ValueError(f"cloudy_fraction={cloudy_fraction} must be in (0, 1]")
    low, high = (float(v) for v in donor_coverage)
    if not 0.0 <= low <= high <= 1.0 or high == 0.0:
        raise ValueError(f"donor_coverage={donor_coverage} must be a range inside [0, 1]")
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    table = patch_table(one, split, region)
    if table.empty:
        raise SelectionError(f"this Dataset holds no patch of split={split!r}, region={region!r} "
                             f"(its ROIs: {roi_names(one)})")
    labels = np.asarray(one["time"].values, np.int64).reshape(-1)
    if labels.size < min_clear:
        raise SelectionError(f"this Dataset holds {labels.size} slot(s); a series needs at "
                             f"least min_clear={min_clear} clear frames")
    t4 = ("roi", "time", "row", "col")
    cov = np.asarray(one["coverage"].sel(detector=detector, drop=True).transpose(*t4).values,
                     np.float64)
    usable = _small(one, "valid_s2", t4).astype(bool)
    if "blank" in one:
        usable &= ~_small(one, "blank", t4).astype(bool)
    held = np.zeros(cov.shape[:1] + cov.shape[2:], bool)  # (roi, row, col): patches held
    everything = patch_table(one, "all", "all")
    held[everything["roi_pos"], everything["row_pos"], everything["col_pos"]] = True
    clear = usable & (cov < cloudy_fraction)
    donor_ok = usable & (cov >= low) & (cov <= high) & held[:, None]
    rows = np.asarray(one["row"].values, np.int64)
    cols = np.asarray(one["col"].values, np.int64)
    donors: dict[int, np.ndarray] = {}  # roi position -> (k, 3) positions (time, row, col)
    records: list[dict[str, Any]] = []
    dropped = {"clear": 0, "donors": 0}
    # pandas-stubs type the fields of itertuples' rows as any scalar
    for s in cast("Iterable[_PatchRow]", table.itertuples()):
        i, r, c = int(s.roi_pos), int(s.row_pos), int(s.col_pos)
        ok = np.flatnonzero(clear[i, :, r, c])
        if ok.size < min_clear:
            dropped["clear"] += 1
            continue
        if i not in donors:  # (time, row, col) positions, in label order (positions are)
            donors[i] = np.argwhere(donor_ok[i])
        rng = _series_rng(seed, s.roi, s.row, s.col)
        gaps = np.sort(rng.choice(ok, size=n_gaps, replace=False))
        pool = donors[i]
        picks: list[np.ndarray] = []
        for t in gaps:
            own = (pool[:, 0] == t) & (pool[:, 1] == r) & (pool[:, 2] == c)
            choice = pool[~own]
            if len(choice) == 0:
                break
            picks.append(choice[rng.integers(0, len(choice))])
        if len(picks) < n_gaps:
            dropped["donors"] += 1
            continue
        picked = np.array(picks, np.int64).reshape(-1, 3)
        records.append({
            "roi": s.roi, "row": int(s.row), "col": int(s.col), "patch_id": int(s.patch_id),
            "split": s.split, "region": s.region,
            "slots": tuple(int(t) for t in labels),
            "gaps": tuple(int(labels[t]) for t in gaps),
            "donor_row": tuple(int(rows[p]) for p in picked[:, 1]),
            "donor_col": tuple(int(cols[p]) for p in picked[:, 2]),
            "donor_slot": tuple(int(labels[p]) for p in picked[:, 0]),
            "detector": detector, "n_clear": int(ok.size),
            "cloudy_fraction": float(cloudy_fraction),
        })
    logger.info("series plan: %d series kept, %d with fewer than %d clear frames, %d without "
                "donor masks", len(records), dropped["clear"], min_clear, dropped["donors"])
    if not records:
        raise SelectionError(
            f"no series of split={split!r}, region={region!r} has {min_clear} clear frames "
            f"(coverage < {cloudy_fraction} for {detector}) and donor masks with coverage in "
            f"[{low}, {high}] in its ROI: {dropped['clear']} had too few clear frames, "
            f"{dropped['donors']} no donors")
    plan = pd.DataFrame.from_records(records)
    if n_series is not None and int(n_series) < len(plan):
        pick = np.sort(np.random.default_rng(int(seed)).choice(len(plan), int(n_series),
                                                               replace=False))
        plan = plan.iloc[pick].reset_index(drop=True)
    plan.index.name = "sdx"
    return plan


# --- the table ------------------------------------------------------------------------------

def _tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(t) for t in value.replace(",", " ").split())
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    return tuple(int(t) for t in np.atleast_1d(value))


def as_series_table(plan: Any, ds: xr.Dataset | None = None) -> pd.DataFrame:
    """A series plan given as a table, a list of dicts, or a callable ``plan(ds)``, checked.

    Raises
    ------
    PlanError
        A column is missing, or the gaps and donors do not line up.
    """
    if callable(plan) and not isinstance(plan, pd.DataFrame):
        plan = plan(ds)
    table = plan.copy() if isinstance(plan, pd.DataFrame) else pd.DataFrame(list(plan))
    missing = [c for c in SERIES_COLUMNS if c not in table.columns]
    if missing:
        raise PlanError(f"the series plan lacks column(s) {missing}; it needs "
                        f"{list(SERIES_COLUMNS)} (make one with ds.s2cube.series_plan)")
    table["roi"] = table["roi"].astype(str)
    table["row"] = table["row"].astype(np.int64)
    table["col"] = table["col"].astype(np.int64)
    for column in TUPLE_COLUMNS:
        table[column] = [_tuple(v) for v in table[column]]
    if "detector" not in table:
        table["detector"] = DEFAULT_DETECTOR
    table["detector"] = table["detector"].astype(str)
    for d in set(table["detector"]):
        schema.detector_name(d)
    for k, s in enumerate(cast("Iterable[_SeriesRow]", table.itertuples())):
        n = len(s.gaps)
        if not (len(s.donor_row) == len(s.donor_col) == len(s.donor_slot) == n):
            raise PlanError(f"series {k} has {n} gap(s) but {len(s.donor_row)}/"
                            f"{len(s.donor_col)}/{len(s.donor_slot)} donor rows/cols/slots")
        extra = sorted(set(s.gaps) - set(s.slots))
        if extra:
            raise PlanError(f"series {k} has gaps at slot(s) {extra} outside its slots {s.slots}")
        if len(set(s.gaps)) != n:
            raise PlanError(f"series {k} names a gapped slot twice: {s.gaps}")
    if table.index.name is None:
        table.index.name = "sdx"
    return table


@dataclass(frozen=True)
class ResolvedSeries:
    """A series plan checked against one Dataset: its table and every label as a position.

    Positions are the Dataset's: ``roi``, ``row``, ``col`` (N,); ``slots`` (N, T) along its
    ``time``; per series ``gaps[k]`` the gapped frames as indices into the series (0..T-1),
    and ``donor_row[k]``, ``donor_col[k]``, ``donor_time[k]`` the donors' positions.
    """

    table: pd.DataFrame
    roi: np.ndarray
    row: np.ndarray
    col: np.ndarray
    slots: np.ndarray
    gaps: tuple[np.ndarray, ...]
    donor_row: tuple[np.ndarray, ...]
    donor_col: tuple[np.ndarray, ...]
    donor_time: tuple[np.ndarray, ...]
    detector: str

    def __len__(self) -> int:
        return len(self.table)

    @property
    def slot_labels(self) -> np.ndarray:
        """The ``time`` labels of the series (all series of a resolved plan share them)."""
        return np.asarray(self.table["slots"].iloc[0] if len(self.table) else (), np.int64)


def _lookup(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    where = {v: i for i, v in enumerate(values.tolist())}
    return np.array([where.get(v, -1) for v in np.asarray(wanted).tolist()], dtype=np.int64)


def _check_patches(one: xr.Dataset, pid: np.ndarray, roi: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the patches ``(rows, cols)`` (labels) in ROIs ``roi`` (positions);
    ``pid`` the Dataset's ``patch_id`` ``(roi, row, col)``."""
    from s2cube.select import held_cells

    row = _lookup(np.asarray(one["row"].values, np.int64), rows)
    col = _lookup(np.asarray(one["col"].values, np.int64), cols)
    held_r, held_c = held_cells(one, "y", "row"), held_cells(one, "x", "col")
    bad = (row < 0) | (col < 0)
    ok = np.flatnonzero(~bad)
    bad[ok] = ~(held_r[row[ok]] & held_c[col[ok]])
    if not bad.any():
        bad = pid[roi, row, col] < 0
        if not bad.any():
            return row, col
    names = np.asarray(one["roi"].values).reshape(-1)
    some = sorted({(str(names[i]), int(r), int(c)) for i, r, c
                   in zip(roi[bad], rows[bad], cols[bad])})
    raise PlanError(f"the plan names {len(some)} {what} patch(es) this Dataset does not hold (as "
                    f"(roi, row, col): {some[:5]}{' …' if len(some) > 5 else ''}); select them "
                    "(whole patches) or use another plan")


def resolve_series(ds: xr.Dataset, plan: Any) -> ResolvedSeries:
    """Check a series plan against ``ds`` and give the positions of everything it names.

    Raises
    ------
    PlanError
        The plan is malformed, mixes detectors or series lengths, or names ROIs, patches
        (series or donors) or slots the Dataset does not hold (the message lists them).
    """
    from s2cube.select import roi_names

    table = as_series_table(plan, ds)
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    detectors = sorted(set(table["detector"]))
    if len(detectors) > 1:
        raise PlanError(f"the plan mixes detectors {detectors}; split the plan")
    detector = detectors[0] if detectors else DEFAULT_DETECTOR
    names = np.array(roi_names(one), dtype=object)
    roi = _lookup(names, table["roi"].to_numpy(dtype=object))
    if (roi < 0).any():
        unknown = sorted({str(r) for r in table.loc[roi < 0, "roi"]})  # names, not np.str_
        raise PlanError(f"the plan names ROI(s) {unknown} that this Dataset does not hold (it "
                        f"holds {names.tolist()}); select them or use another plan")
    pid = np.asarray(one["patch_id"].transpose("roi", "row", "col").values)  # read once
    row, col = _check_patches(one, pid, roi, table["row"].to_numpy(), table["col"].to_numpy(),
                              "series")
    lengths = {len(s) for s in table["slots"]}
    if len(lengths) > 1 or len(set(table["slots"])) > 1:
        raise PlanError("the plan's series have different slots; a prediction cube holds one "
                        "series per patch on one time axis: split the plan")
    n = np.array([len(g) for g in table["gaps"]], np.int64)
    d_roi = np.repeat(roi, n)
    flat = {c: np.array([v for t in table[c] for v in t], np.int64)
            for c in ("donor_row", "donor_col", "donor_slot")}
    d_row, d_col = _check_patches(one, pid, d_roi, flat["donor_row"], flat["donor_col"],
                                  "donor")
    labels = np.asarray(one["time"].values, np.int64).reshape(-1)
    slot_labels = np.array([list(s) for s in table["slots"]], np.int64).reshape(len(table), -1)
    wanted = np.concatenate([slot_labels.ravel(), flat["donor_slot"]])
    pos = _lookup(labels, wanted)
    if (pos < 0).any():
        missing = sorted({int(t) for t in wanted[pos < 0]})
        raise PlanError(f"the plan needs slot(s) {missing} that this Dataset does not hold (its "
                        f"time labels are {labels.tolist()}); select them or use another plan")
    slots = pos[:slot_labels.size].reshape(slot_labels.shape)
    d_time = pos[slot_labels.size:]
    cuts = np.cumsum(n)[:-1]
    gaps = tuple(np.array([list(s).index(g) for g in gs], np.int64)
                 for s, gs in zip(table["slots"], table["gaps"]))
    for column in ("split", "region"):
        if column not in table:
            table[column] = [getattr(schema.roi_info(r), column) for r in table["roi"]]
    if "patch_id" not in table:
        table["patch_id"] = pid[roi, row, col].astype(np.int64)
    return ResolvedSeries(table, roi, row, col, slots, gaps, tuple(np.split(d_row, cuts)),
                          tuple(np.split(d_col, cuts)), tuple(np.split(d_time, cuts)), detector)


# --- files ----------------------------------------------------------------------------------

def _is_jsonl(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson")


def save_series_plan(plan: Any, path: str | os.PathLike) -> None:
    """Write a series plan as CSV (tuples as space-separated labels) or JSON lines.

    JSON lines when ``path`` ends in ``.jsonl``/``.json``/``.ndjson``, else CSV.
    """
    table = as_series_table(plan)
    if _is_jsonl(path):
        out = table.reset_index()
        with open(path, "w", encoding="utf-8") as f:
            for rec in out.to_dict("records"):
                rec = {k: (list(v) if isinstance(v, tuple) else v.item() if hasattr(v, "item")
                           else v) for k, v in rec.items()}
                f.write(json.dumps(rec) + "\n")
        return
    out = table.copy()
    for column in TUPLE_COLUMNS:
        out[column] = [" ".join(str(t) for t in v) for v in table[column]]
    out.to_csv(path)


def load_series_plan(path: str | os.PathLike) -> pd.DataFrame:
    """Read a series plan written by :func:`save_series_plan` (CSV or JSON lines)."""
    if _is_jsonl(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        table = pd.DataFrame(rows)
        if "sdx" in table:
            table = table.set_index("sdx")
    else:
        table = pd.read_csv(path, index_col=0, dtype={"roi": str, **{c: str for c in TUPLE_COLUMNS}},
                            keep_default_na=False)
    return as_series_table(table)
