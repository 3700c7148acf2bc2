"""Selections on a SEN12MS-CR cube by label: its scenes' patches by split, and its table.

The counterpart of :mod:`s2cube.select` for the family's other kind (``cube_kind =
"sen12ms-cr"``, :mod:`s2cube.sen12mscr`): patches sit on one ``patch`` dim, each belongs to a
scene (the small ``scene`` variable, an index into the root attribute ``scenes``), and a
scene's split depends on the split mode (``exact``, ``reference``, ``combined``). Reads the
small ``scene``/``patch_id``/``valid_*`` arrays, never a pixel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import sen12mscr as cr
from s2cube.errors import SelectionError


def _require(ds: xr.Dataset) -> list[cr.Scene]:
    if not cr.is_cr(ds):
        raise SelectionError("this Dataset is not a SEN12MS-CR cube (root attribute cube_kind "
                             f"{ds.attrs.get(cr.ATTR_KIND)!r})")
    return cr.scenes_of(ds.attrs)


def scene_names(ds: xr.Dataset) -> np.ndarray:
    """The scene label of each of the Dataset's patches ('' where no patch is stored)."""
    table = _require(ds)
    names = np.array([s.scene for s in table] + [""], dtype=object)
    idx = np.asarray(ds["scene"].values, np.int64).reshape(-1)
    return names[np.where(idx >= 0, idx, len(table))]


def sel_split(ds: xr.Dataset, split: str, split_mode: str = "exact") -> xr.Dataset:
    """The patches of the scenes of ``split`` under ``split_mode`` (``all``: of any list)."""
    names = scene_names(ds)
    member = {s: cr.in_split(s, split, split_mode) for s in set(names.tolist()) if s}
    keep = np.flatnonzero([member.get(s, False) for s in names])
    if keep.size == 0:
        held = sorted({s for s in names.tolist() if s})
        raise SelectionError(f"this Dataset holds no patch of split {split!r} under split_mode "
                             f"{split_mode!r}; its scenes are {held} with splits "
                             f"{ {s: sorted(cr.scene_splits(s, split_mode)) for s in held} }")
    return ds.isel(patch=keep)


def sel_scene(ds: xr.Dataset, names: str | list[str]) -> xr.Dataset:
    """The patches of one scene or a list of them (scene labels or CR-TS ROI names)."""
    wanted = {cr.normalize_scene(n) for n in ([names] if isinstance(names, str) else names)}
    got = scene_names(ds)
    keep = np.flatnonzero(np.isin(got, list(wanted)))
    if keep.size == 0:
        raise SelectionError(f"this Dataset holds no patch of {sorted(wanted)}; it holds "
                             f"{sorted({s for s in got.tolist() if s})}")
    return ds.isel(patch=keep)


def patch_table(ds: xr.Dataset, split: str = "all", split_mode: str = "exact") -> pd.DataFrame:
    """Every patch the Dataset holds in the reference sample order (index ``pdx`` of the
    samples when ``sample`` is True): scene, collection, scene_id, patch_id, patch (stored
    position), split, the validity of its three files and whether it is a sample."""
    _require(ds)
    names = scene_names(ds)
    pid = np.asarray(ds["patch_id"].values, np.int64).reshape(-1)
    pos = np.asarray(ds["patch"].values, np.int64).reshape(-1)
    exists = names != ""
    member = {s: cr.in_split(s, split, split_mode) for s in set(names[exists].tolist())}
    keep = np.flatnonzero(exists & np.array([member.get(s, False) for s in names], bool))
    parsed = [cr.parse_scene(s) for s in names[keep]]
    order = np.lexsort(([p for p in pid[keep]], [n for _, n in parsed],
                        [cr.order_key(c, 0)[0] for c, _ in parsed])) if keep.size else keep
    keep = keep[order]
    valid = {v: np.asarray(ds[v].values, bool).reshape(-1)[keep]
             for v in ("valid_s2", "valid_s2_cloudy", "valid_s1")}
    table = pd.DataFrame({
        "scene": names[keep].astype(str),
        "collection": [cr.parse_scene(s)[0] for s in names[keep]],
        "scene_id": [cr.parse_scene(s)[1] for s in names[keep]],
        "patch_id": pid[keep],
        "patch": pos[keep],
        "split": ["/".join(sorted(cr.scene_splits(s, split_mode))) for s in names[keep]],
        **valid,
        "sample": valid["valid_s2"] & valid["valid_s2_cloudy"]
        & (valid["valid_s1"] if valid["valid_s1"].any() else True),
    })
    table.index.name = "row"
    return table
