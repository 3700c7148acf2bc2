"""Plans by label: which patch and which ``time`` slots each sample uses, as a small table.

A *plan* is a :class:`pandas.DataFrame`, one row per sample (index ``pdx``): ``roi`` (the
ROI's name), ``row`` and ``col`` (the patch's labels on the cube's grid), ``inputs`` (a
tuple of ``time`` labels), ``target`` (a ``time`` label), plus ``patch_id``, ``split``,
``region`` and the sampler's ``match`` (the reference's ``coverage bin``). Everything is
named by label, never by a position inside a selection, so **the same plan gives the same
samples on any Dataset that holds its ROIs, patches and slots**, and a plan that needs what
a Dataset lacks is refused naming what is missing.

- :func:`sample_plan` makes one with the reference samplers (:mod:`s2cube.plans.rules`)
  from the Dataset's ``coverage``, reading no pixel;
- :func:`resolve` turns a plan into positions of a given Dataset, checking every label;
- :func:`save_plan` / :func:`load_plan` keep it as a plain CSV file, so published results
  can be reproduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema
from s2cube.errors import PlanError, SelectionError

PLAN_COLUMNS = ("roi", "row", "col", "inputs", "target")


def _series(ds: xr.Dataset, table: pd.DataFrame, detector: str) -> np.ndarray:
    """The (N, T) coverage of the table's patches over the Dataset's slots (blank rule applied)."""
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    stored = one["coverage"].sel(detector=schema.detector_name(detector), drop=True)
    cov = np.asarray(stored.transpose("roi", "time", "row", "col").values)
    where = (table["roi_pos"].to_numpy(), slice(None), table["row_pos"].to_numpy(),
             table["col_pos"].to_numpy())
    series = cov[where].reshape(len(table), -1)
    if "blank" in one:
        blank = np.asarray(one["blank"].transpose("roi", "time", "row", "col").values)
        series = np.where(blank[where].reshape(len(table), -1), np.float32(1), series)
    return series


def sample_plan(
    ds: xr.Dataset,
    *,
    split: str = "test",
    region: str = "all",
    detector: str = "s2cloudless_mask",
    **options: Any,
) -> pd.DataFrame:
    """The reference samples of ``split``/``region`` in this Dataset, as a plan table.

    The samplers choose among the Dataset's slots only (a time selection samples only
    those) and the plan names them by ``time`` label. ``options`` go to
    :func:`s2cube.plans.rules.choose_slots` (``sampler``, ``n_input_samples``, ``min_cov``,
    ``max_cov``, ``stable``, ``seed``, ``epoch``, ``subset`` as a range of ``time`` labels).
    Reads ``patch_id``, ``coverage`` and ``blank`` only.

    Raises
    ------
    SelectionError
        The Dataset holds no patch of ``split``/``region``, or too few slots.
    """
    from s2cube.plans.rules import choose_slots
    from s2cube.select import patch_table, roi_names

    table = patch_table(ds, split, region)
    if table.empty:
        infos = [schema.roi_info(r) for r in roi_names(ds)]
        raise SelectionError(
            f"this Dataset holds no patch of split={split!r}, region={region!r}: its ROIs are "
            f"{[i.name for i in infos]} (splits {sorted({i.split for i in infos})}, regions "
            f"{sorted({i.region for i in infos})})")
    labels = np.asarray(ds["time"].values, np.int64).reshape(-1)
    n = int(options.get("n_input_samples", 3))
    if options.get("sample_type", "cloudy_cloudfree") != "generic" and labels.size < n + 1:
        raise SelectionError(f"this Dataset holds {labels.size} slot(s) ({labels.tolist()}); "
                             f"n_input_samples={n} needs {n + 1}")
    if "subset" in options:
        lo, hi = (int(v) for v in options["subset"])
        inside = np.flatnonzero((labels >= lo) & (labels < hi))
        options["subset"] = (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)
    plan = choose_slots(_series(ds, table, detector), **options)
    out = table.drop(columns=["roi_pos", "row_pos", "col_pos"])
    # one NumPy take, then tuples (not a generator and a NumPy scalar per slot and sample)
    out["inputs"] = list(map(tuple, labels[np.asarray(plan.inputs, np.int64)].tolist()))
    out["target"] = np.where(plan.target >= 0, labels[np.maximum(plan.target, 0)], -1)
    out["match"] = plan.match
    return out


@dataclass(frozen=True)
class Resolved:
    """A plan checked against one Dataset: its table, and the positions of every sample."""

    table: pd.DataFrame
    roi: np.ndarray  # (N,) positions along the Dataset's roi
    row: np.ndarray
    col: np.ndarray
    inputs: np.ndarray  # (N, n) positions along the Dataset's time
    target: np.ndarray  # (N,) position, -1 without a target

    def __len__(self) -> int:
        return len(self.table)


def as_table(plan: Any, ds: xr.Dataset | None = None) -> pd.DataFrame:
    """A plan given as a table, a list of dicts, or a callable ``plan(ds)``, as a DataFrame."""
    if callable(plan) and not isinstance(plan, pd.DataFrame):
        plan = plan(ds)
    table = plan.copy() if isinstance(plan, pd.DataFrame) else pd.DataFrame(list(plan))
    missing = [c for c in PLAN_COLUMNS if c not in table.columns]
    if missing:
        raise PlanError(f"the plan lacks column(s) {missing}; it needs {list(PLAN_COLUMNS)} "
                        "(make one with ds.s2cube.sample_plan)")
    table["roi"] = table["roi"].astype(str)
    table["row"] = table["row"].astype(np.int64)
    table["col"] = table["col"].astype(np.int64)
    table["inputs"] = [tuple(int(t) for t in np.atleast_1d(v)) for v in table["inputs"]]
    table["target"] = table["target"].astype(np.int64)
    if table.index.name is None:
        table.index.name = "pdx"
    return table


def _lookup(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    where = {v: i for i, v in enumerate(values.tolist())}
    return np.array([where.get(v, -1) for v in wanted.tolist()], dtype=np.int64)


def resolve(ds: xr.Dataset, plan: Any) -> Resolved:
    """Check a plan against ``ds`` and give the positions of its samples there.

    Raises
    ------
    PlanError
        The plan is malformed, or names ROIs, patches or slots the Dataset does not hold
        (the message lists them).
    """
    from s2cube.select import held_cells, roi_names

    table = as_table(plan, ds)
    one = ds if "roi" in ds.dims else ds.expand_dims("roi")
    names = np.array(roi_names(one), dtype=object)
    roi = _lookup(names, table["roi"].to_numpy(dtype=object))
    if (roi < 0).any():
        unknown = sorted({str(r) for r in table.loc[roi < 0, "roi"]})  # names, not np.str_
        raise PlanError(f"the plan names ROI(s) {unknown} that this Dataset does not hold (it "
                        f"holds {names.tolist()}); select them or use another plan")
    rows = np.asarray(one["row"].values, np.int64)
    cols = np.asarray(one["col"].values, np.int64)
    row = _lookup(rows, table["row"].to_numpy())
    col = _lookup(cols, table["col"].to_numpy())
    held_r = held_cells(one, "y", "row")
    held_c = held_cells(one, "x", "col")
    bad = (row < 0) | (col < 0)
    ok = np.flatnonzero(~bad)
    bad[ok] = ~(held_r[row[ok]] & held_c[col[ok]])
    if bad.any():
        some = table.loc[bad, ["roi", "row", "col"]].head(3).to_dict("records")
        raise PlanError(f"the plan names {int(bad.sum())} patch(es) this Dataset does not hold "
                        f"(e.g. {some}); select them (whole patches) or use another plan")
    pid = np.asarray(one["patch_id"].transpose("roi", "row", "col").values)[roi, row, col]
    if (pid < 0).any():
        some = table.loc[pid < 0, ["roi", "row", "col"]].head(3).to_dict("records")
        raise PlanError(f"the plan points at cells with no patch, e.g. {some}")
    if "patch_id" not in table:
        table["patch_id"] = pid.astype(np.int64)
    labels = np.asarray(one["time"].values, np.int64)
    n = max((len(t) for t in table["inputs"]), default=0)
    if any(len(t) != n for t in table["inputs"]):
        raise PlanError("the plan's samples have different numbers of inputs; split the plan")
    inputs = np.array([list(t) for t in table["inputs"]], dtype=np.int64).reshape(len(table), n)
    targets = table["target"].to_numpy(np.int64)
    wanted = np.concatenate([inputs.ravel(), targets[targets >= 0]])
    pos = _lookup(labels, wanted)
    if (pos < 0).any():
        missing = sorted({int(t) for t in wanted[pos < 0]})
        raise PlanError(f"the plan needs slot(s) {missing} that this Dataset does not hold (its "
                        f"time labels are {labels.tolist()}); select them or use another plan")
    in_pos = pos[:inputs.size].reshape(inputs.shape)
    tgt_pos = np.full(len(table), -1, np.int64)
    tgt_pos[targets >= 0] = pos[inputs.size:]
    for column in ("split", "region"):
        if column not in table:
            table[column] = [getattr(schema.roi_info(r), column) for r in table["roi"]]
    return Resolved(table, roi, row, col, in_pos, tgt_pos)


def save_plan(plan: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a plan as CSV (``inputs`` as space-separated ``time`` labels)."""
    table = as_table(plan)
    out = table.copy()
    out["inputs"] = [" ".join(str(t) for t in v) for v in table["inputs"]]
    out.to_csv(path)


def load_plan(path: str | os.PathLike) -> pd.DataFrame:
    """Read a plan written by :func:`save_plan`."""
    table = pd.read_csv(path, index_col=0, dtype={"roi": str, "inputs": str})
    table["inputs"] = [tuple(int(t) for t in str(v).split()) if isinstance(v, str) else ()
                       for v in table["inputs"]]
    return as_table(table)

