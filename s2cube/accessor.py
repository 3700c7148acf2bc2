"""The ``.s2cube`` accessor on :class:`xarray.Dataset`, registered by ``import s2cube``.

Thin by design (rioxarray's model): it holds only the Dataset, every method is one line
delegating to a plain function in a module named for its concept, and nothing computes
except the verbs that say so (``quicklook``, ``evaluate``, ``evaluate_series``, and the
tables ``patch_table`` / ``sample_plan`` / ``series_plan``, which read only small arrays).
Every verb works on exactly the ROIs, slots (by ``time`` label), bands and patches of the
Dataset it is called on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import xarray as xr

from s2cube import select
from s2cube.analysis import baselines, evaluate, georef, indices, pairing, quicklook, series, stats
from s2cube.plans import series as series_plans
from s2cube.plans import table
from s2cube.training import batches


@xr.register_dataset_accessor("s2cube")
class S2CubeAccessor:
    """Cube operations: ``ds.s2cube.sel_split("test").s2cube.cloudiness(by="region")``."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # selection ------------------------------------------------------------------------
    def sel_split(self, split: str, **options: Any) -> xr.Dataset:
        """The ROIs of a split (``train``/``val``/``test``/``all``); on a SEN12MS-CR cube the
        patches of its scenes (``split_mode="exact"``/``"reference"``/``"combined"``)."""
        return select.sel_split(self._ds, split, **options)

    def sel_region(self, region: str) -> xr.Dataset:
        """The ROIs of a region (``africa``, ``america``, ``asiaEast``, ``asiaWest``, ``europa``)."""
        return select.sel_region(self._ds, region)

    def sel_roi(self, names: str | Sequence[str]) -> xr.Dataset:
        """One ROI by name (``"ROIs1868_73"``; dim dropped) or a list of them."""
        return select.sel_roi(self._ds, names)

    def clear_frames(self, detector: str = "s2cloudless_mask", threshold: float = 1e-3) -> xr.DataArray:
        """Lazy ``(roi, time, row, col)``: valid, non-blank frames with coverage ≤ threshold."""
        return select.clear_frames(self._ds, detector, threshold)

    def patch_table(self, split: str = "all", region: str = "all", **options: Any) -> pd.DataFrame:
        """The patches this Dataset holds, in the reference sample order (reads ``patch_id``)."""
        return select.patch_table(self._ds, split, region, **options)

    def patches(self, variables: Sequence[str] | None = None) -> xr.Dataset:
        """The flat ``(patch, time, band, py, px)`` view in sample order, lazy, no copy."""
        return select.patches(self._ds, variables)

    # georeference -----------------------------------------------------------------------
    def grid(self, name: str) -> georef.RoiGrid:
        """The ROI's grid (CRS, transform, size) as a small value."""
        return georef.roi_grid(self._ds, name)

    def roi(self, name: str) -> xr.Dataset:
        """One ROI on its own grid with real x/y and its CRS written the rioxarray way."""
        return georef.roi(self._ds, name)

    # training ---------------------------------------------------------------------------
    def batches(self, **options: Any):
        """Seq2point/seq2seq NumPy batches of exactly this Dataset (see ``batches.iter_batches``;
        SEN12MS-CR cubes: ``crsamples.iter_batches``)."""
        return batches.iter_batches(self._ds, **options)

    # pairing the two data sets --------------------------------------------------------------
    def pair(self, other: Any, *, min_overlap: float = 0.0, **options: Any) -> pd.DataFrame:
        """SEN12MS-CR-TS patches and the SEN12MS-CR patches on the same ground (same CRS,
        overlapping bounds, overlap shares), whichever of the two this Dataset is."""
        return pairing.pair(self._ds, other, min_overlap=min_overlap, **options)

    # masks and statistics ---------------------------------------------------------------
    def reflectance(self, clip: bool = False) -> xr.DataArray:
        """``s2`` as float32 reflectance (DN / 10000), lazy."""
        return stats.reflectance(self._ds, clip=clip)

    def cloud_mask(self, detector: str = "s2cloudless_mask") -> xr.DataArray:
        """Lazy per-pixel cloud (and shadow) mask of a detector."""
        return stats.cloud_mask(self._ds, detector)

    def masked_reflectance(self, detector: str = "s2cloudless_mask") -> xr.DataArray:
        """Reflectance where clear for ``detector``, NaN elsewhere, lazy."""
        return stats.masked_reflectance(self._ds, detector)

    def clear_fraction(self, detector: str = "s2cloudless_mask") -> xr.DataArray:
        """Per pixel, the share of valid frames clear for ``detector``, lazy."""
        return stats.clear_fraction(self._ds, detector)

    def cloudiness(self, by: str | Sequence[str] = "roi", **options: Any) -> xr.Dataset:
        """Cloudiness from the stored coverage per roi/region/split/collection/month, lazy."""
        return stats.cloudiness(self._ds, by, **options)

    # indices and quicklooks ---------------------------------------------------------------
    def index(self, name: str = "ndvi") -> xr.DataArray:
        """A normalised-difference index (``ndvi``, ``ndwi``, ``ndsi``, ``nbr``, ``ndmi``), lazy."""
        return indices.index(self._ds, name)

    def ndvi(self) -> xr.DataArray:
        """NDVI, lazy."""
        return indices.ndvi(self._ds)

    def quicklook(self, roi: str, time: int, **options: Any) -> quicklook.Quicklook:
        """Render one ROI at the slot labelled ``time`` as a true-colour PNG (computes 3 bands)."""
        return quicklook.roi_quicklook(self._ds, roi, time, **options)

    # plans, baselines and evaluation -------------------------------------------------------
    def sample_plan(self, **options: Any) -> pd.DataFrame:
        """The reference samples of this Dataset as a plan by label (reads coverage only)."""
        return table.sample_plan(self._ds, **options)

    def baseline(self, plan: Any, method: str = "mosaic", **options: Any) -> xr.DataArray:
        """Least-cloudy or mosaicing predictions for a plan, as a lazy prediction cube."""
        return baselines.baseline(self._ds, plan, method, **options)

    def composite(self, detector: str = "s2cloudless_mask") -> xr.DataArray:
        """Temporal median of the clear pixels, lazy."""
        return baselines.composite(self._ds, detector)

    def evaluate(self, predictions: Any, plan: Any = None, **options: Any) -> evaluate.Evaluation:
        """Score predictions against the plan's targets (computes, in parallel)."""
        return evaluate.evaluate(self._ds, predictions, plan, **options)

    # seq2seq: series plans, series baselines and their evaluation ---------------------------
    def series_plan(self, **options: Any) -> pd.DataFrame:
        """Seq2seq series with synthetic gaps, as a plan by label (reads coverage only)."""
        return series_plans.series_plan(self._ds, **options)

    def series_baseline(self, plan: Any, method: str = "linear", **options: Any) -> xr.DataArray:
        """Nearest, linear or median reconstructions of a series plan, as a lazy cube."""
        return series.series_baseline(self._ds, plan, method, **options)

    def evaluate_series(self, predictions: Any, plan: Any) -> series.SeriesEvaluation:
        """Score series predictions on the plan's gapped, clear pixels (computes, in parallel)."""
        return series.evaluate_series(self._ds, predictions, plan)
