"""What a cube holds, per split and region: ROIs, patches, frames, gaps, cloudiness, bytes.

Reads only the small variables (``coverage``, ``valid_*``, ``blank``, ``patch_id``) and
the store listing, never a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema


@dataclass(frozen=True)
class CubeSummary:
    """The table of :func:`summarize` and the cube's totals."""

    table: pd.DataFrame
    state: str
    patch_size: int
    stored_bytes: int | None
    problems: tuple[dict, ...]


def summarize(ds: xr.Dataset, *, stored_bytes: int | None = None) -> CubeSummary:
    """Per split and region: ROIs, patch locations, S2/S1 frames, blank frames, cloudiness."""
    small = ds[["coverage", "valid_s2", "valid_s1", "blank", "patch_id"]].load()
    rows = []
    for (split, region), idx in _groups(small):
        sub = small.isel(roi=idx)
        has_patch = sub["patch_id"] >= 0
        valid = sub["valid_s2"].values
        cov = sub["coverage"].sel(detector="s2cloudless_mask").values
        frames = int(valid.sum())
        rows.append({
            "split": split, "region": region, "rois": len(idx),
            "patches": int(has_patch.sum()),
            "s2_frames": frames, "s1_frames": int(sub["valid_s1"].values.sum()),
            "missing_s2": int((has_patch.values[:, None] & ~valid).sum()),
            "blank": int(sub["blank"].values.sum()),
            "mean_cover": float(np.nanmean(cov[valid])) if frames else float("nan"),
            "cloudy_share": float((cov[valid] > 0.1).mean()) if frames else float("nan"),
            "clear_frames": int((cov[valid] < 1e-3).sum()),
        })
    table = pd.DataFrame(rows).sort_values(["split", "region"]).reset_index(drop=True)
    return CubeSummary(table, str(ds.attrs.get(schema.ATTR_STATE, "unknown")),
                       int(ds.attrs.get("patch_size", 0)), stored_bytes,
                       tuple(ds.attrs.get("problems", [])))


def _groups(ds: xr.Dataset):
    split = list(schema.as_str(ds["split"].values))
    region = list(schema.as_str(ds["region"].values))
    keys = sorted(set(zip(split, region)))
    for key in keys:
        yield key, [i for i, k in enumerate(zip(split, region)) if k == key]
