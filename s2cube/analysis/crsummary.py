"""What a SEN12MS-CR cube holds, per split and collection (``s2cube info``).

The counterpart of :mod:`s2cube.analysis.summary` for SEN12MS-CR cubes: scenes, patches,
samples (all three files read), patches lacking a file, blank cloudy images and the
cloudiness of the cloudy images (``s2cloudless_mask`` coverage). Reads the small variables
only, never a pixel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube.analysis.summary import CubeSummary


def extent(ds: xr.Dataset) -> str:
    """``rois=N`` for a time-series cube, ``scenes=N patches=M`` for a SEN12MS-CR cube."""
    if not cr.is_cr(ds):
        return f"rois={ds.sizes.get('roi', 0)}"
    n = int((np.asarray(ds["scene"].values) >= 0).sum()) if "scene" in ds else 0
    return f"scenes={len(cr.scenes_of(ds.attrs))}  patches={n}"


def summarize(ds: xr.Dataset, *, stored_bytes: int | None = None,
              split_mode: str = "exact") -> CubeSummary:
    """Per split (under ``split_mode``) and collection: scenes, patches, samples, gaps,
    blank cloudy images, mean cloud cover of the cloudy images, cloudy share, clear ones."""
    small = ds[["coverage", "valid_s2", "valid_s2_cloudy", "valid_s1", "blank", "patch_id",
                "scene"]].load()
    table = cr.scenes_of(ds.attrs)
    idx = np.asarray(small["scene"].values, np.int64)
    exists = idx >= 0
    v2, vc, v1 = (np.asarray(small[k].values, bool) for k in ("valid_s2", "valid_s2_cloudy",
                                                              "valid_s1"))
    sample = exists & v2 & vc & (v1 if v1.any() else True)
    cov = np.asarray(small["coverage"].values)[:, schema.DETECTORS.index("s2cloudless_mask")]
    blank = np.asarray(small["blank"].values, bool)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(table):
        splits = cr.scene_splits(s.scene, split_mode)
        key = ("/".join(sorted(splits)) or "none", s.collection)
        groups.setdefault(key, []).append(i)
    rows = []
    for (split, collection), scenes in sorted(groups.items()):
        sel = exists & np.isin(idx, scenes)
        ok = sel & sample
        c = cov[ok]
        rows.append({
            "split": split, "collection": collection, "scenes": len(scenes),
            "patches": int(sel.sum()), "samples": int(ok.sum()),
            "lacking_a_file": int((sel & ~sample).sum()), "blank": int((sel & blank).sum()),
            "mean_cover": float(np.nanmean(c)) if c.size else float("nan"),
            "cloudy_share": float((c > 0.1).mean()) if c.size else float("nan"),
            "clear": int((c < 1e-3).sum()),
        })
    out = pd.DataFrame(rows)
    return CubeSummary(out, str(ds.attrs.get(schema.ATTR_STATE, "unknown")),
                       int(ds.attrs.get("patch_size", 0)), stored_bytes,
                       tuple(ds.attrs.get("problems", [])))
