"""The cube's contract in code: names, dims, dtypes, chunking and the ROI tables.

This is the single place that knows what the cube's contract (``docs/cube.md``) and the
archive decide: variable names, dims, dtypes, chunking, band order, the ROI tables with
their splits and regions, the cloud-mask bits, how dates are stored, and what makes a store
an s2cube cube. The converter writes through it and every reader reads through it. Pure
data and tiny functions: no I/O, no heavy imports.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

#: 2: every inner chunk of the pixel arrays and every small array carries a crc32c checksum.
SCHEMA_VERSION = 2
TITLE = "SEN12MS-CR-TS as a Zarr v3 cube (s2cube)"
#: the title of the family's other kind, SEN12MS-CR (``cube_kind = "sen12ms-cr"``, see
#: :mod:`s2cube.sen12mscr`)
TITLE_CR = "SEN12MS-CR as a Zarr v3 cube (s2cube)"
REFERENCES = "doi:10.1109/TGRS.2022.3146246"

N_SLOTS = 30
BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
#: Centre wavelengths in nm (Sentinel-2A), in band order.
WAVELENGTHS: tuple[float, ...] = (
    442.7, 492.4, 559.8, 664.6, 704.1, 740.5, 782.8, 832.8, 864.7, 945.1, 1373.5, 1613.7, 2202.4,
)
POLARIZATIONS: tuple[str, ...] = ("VV", "VH")
DETECTORS: tuple[str, ...] = ("s2cloudless_mask", "s2cloudless_map", "cloud_cloudshadow_mask")
RGB = (3, 2, 1)  # B4, B3, B2
NIR = 7  # B8

#: Bit flags of ``cloud_mask``.
FLAG_S2CLOUDLESS = 1
FLAG_RULE_CLOUD = 2
FLAG_RULE_SHADOW = 4
CLOUD_MASK_ATTRS = {
    "flag_masks": [FLAG_S2CLOUDLESS, FLAG_RULE_CLOUD, FLAG_RULE_SHADOW],
    "flag_meanings": "s2cloudless_mask rule_based_cloud rule_based_shadow",
    "long_name": "cloud and shadow masks as bit flags",
}

#: Day zero of the reference loader's ``S1 TD``/``S2 TD`` (the Sentinel-1 launch).
TD_EPOCH = np.datetime64("2014-04-03", "D")

#: ``cloud_prob`` (probability × 100) at or above which the ``s2cloudless_map`` detector
#: calls a pixel cloudy: the support of the reference map, which zeroes values < 0.5.
MAP_THRESHOLD = 50
#: bits of ``cloud_mask`` behind each binary detector
MASK_BITS = {"s2cloudless_mask": FLAG_S2CLOUDLESS,
             "cloud_cloudshadow_mask": FLAG_RULE_CLOUD | FLAG_RULE_SHADOW}


def detector_name(detector: str) -> str:
    """Check a detector name against :data:`DETECTORS` (ValueError naming the choices)."""
    if detector not in DETECTORS:
        raise ValueError(f"detector {detector!r} is not one of {', '.join(DETECTORS)}")
    return detector


def mask_source(detector: str) -> str:
    """The stored pixel variable a detector's mask is made from: ``cloud_mask`` or ``cloud_prob``."""
    return "cloud_prob" if detector_name(detector) == "s2cloudless_map" else "cloud_mask"


def cloudy(raw, detector: str):
    """Cloudy pixels of ``detector`` from its :func:`mask_source` values (NumPy or xarray).

    ``s2cloudless_mask``: bit 1 of ``cloud_mask``; ``cloud_cloudshadow_mask``: bits 2 or 4
    (rule-based cloud or shadow); ``s2cloudless_map``: ``cloud_prob`` ≥ 50 (the support of
    the reference's probability map, which zeroes values below 0.5). The one rule every
    analysis, plan and loader of s2cube uses.
    """
    if detector_name(detector) == "s2cloudless_map":
        return raw >= MAP_THRESHOLD
    return (raw & MASK_BITS[detector]) > 0

# --- ROIs, splits and regions (archive.md sec. 2) ------------------------------------

COLLECTIONS: tuple[str, ...] = ("ROIs1158", "ROIs1868", "ROIs1970", "ROIs2017")
ROI_IDS: dict[str, tuple[int, ...]] = {
    "ROIs1158": (106,),
    "ROIs1868": (17, 36, 56, 73, 85, 100, 114, 119, 121, 126, 127, 139, 142, 143),
    "ROIs1970": (20, 21, 35, 40, 57, 65, 71, 82, 83, 91, 112, 116, 119, 128, 132, 133, 135,
                 139, 142, 144, 149),
    "ROIs2017": (8, 22, 25, 32, 49, 61, 63, 69, 75, 103, 108, 115, 116, 117, 130, 140, 146),
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
REGIONS: tuple[str, ...] = ("africa", "america", "asiaEast", "asiaWest", "europa")

_REGION_TABLE: dict[str, dict[str, str]] = {
    "africa": {"test": "2017/32 2017/140", "val": "2017/22",
               "train": "1970/21 1970/35 1970/40 2017/8 2017/61 2017/75"},
    "america": {"test": "1158/106 1970/132", "val": "1970/65",
                "train": "1868/36 1868/85 1970/82 1970/142 2017/49 2017/116"},
    "asiaEast": {"test": "1868/73 1868/119 1970/139", "val": "2017/117",
                 "train": "1868/114 1868/126 1868/143 1970/116 1970/135 2017/25"},
    "asiaWest": {"test": "1868/100", "val": "1868/127",
                 "train": "1970/57 1970/83 1970/112 2017/69 2017/115 2017/130"},
    "europa": {"test": "2017/63 2017/103 2017/108 1868/142 1970/20", "val": "1868/17",
               "train": "1868/56 1868/121 1868/139 1970/71 1970/91 1970/119 1970/128 "
                        "1970/133 1970/144 1970/149 2017/146"},
}


def roi_name(collection: str, roi_id: int) -> str:
    """Return the cube's label of an ROI, e.g. ``roi_name("ROIs1868", 73) == "ROIs1868_73"``."""
    return f"{collection}_{int(roi_id)}"


@dataclass(frozen=True)
class RoiInfo:
    """One ROI of the archive: where it sits in the tables and in the sample order."""

    collection: str
    roi_id: int
    split: str
    region: str
    order: int  # position in the reference sample order (collections, then list order)

    @property
    def name(self) -> str:
        return roi_name(self.collection, self.roi_id)


def _build_rois() -> dict[str, RoiInfo]:
    where: dict[str, tuple[str, str]] = {}
    for region, splits in _REGION_TABLE.items():
        for split, items in splits.items():
            for item in items.split():
                c, r = item.split("/")
                where[roi_name(f"ROIs{c}", int(r))] = (split, region)
    table: dict[str, RoiInfo] = {}
    for collection in COLLECTIONS:
        for roi_id in ROI_IDS[collection]:
            name = roi_name(collection, roi_id)
            split, region = where[name]
            table[name] = RoiInfo(collection, roi_id, split, region, len(table))
    return table


ROIS: dict[str, RoiInfo] = _build_rois()


def roi_info(name: str) -> RoiInfo:
    """Look an ROI up by its cube label (``"ROIs1868_73"``); raise ``KeyError`` with the known ones."""
    try:
        return ROIS[name]
    except KeyError:
        raise KeyError(
            f"{str(name)!r} is not an ROI of SEN12MS-CR-TS; ROIs are named like 'ROIs1868_73'"
        ) from None


def select_rois(
    split: str | None = None, region: str | None = None, roi: list[str] | None = None
) -> list[RoiInfo]:
    """ROIs matching a split (``all``/``train``/``val``/``test``), a region and/or names, in sample order."""
    if split not in (None, "all", *SPLITS):
        raise ValueError(f"split {split!r} is not one of all, {', '.join(SPLITS)}")
    if region not in (None, "all", *REGIONS):
        raise ValueError(f"region {region!r} is not one of all, {', '.join(REGIONS)}")
    wanted = None if not roi else {roi_info(r).name for r in roi}
    return [
        info for info in ROIS.values()
        if split in (None, "all", info.split)
        and region in (None, "all", info.region)
        and (wanted is None or info.name in wanted)
    ]


# --- variables, dtypes and chunking (cube.md) ----------------------------------------

@dataclass(frozen=True)
class VarSpec:
    """A variable of the cube: dims, dtype, fill value and whether it is a per-pixel array."""

    dims: tuple[str, ...]
    dtype: str
    fill: object
    pixel: bool


VARIABLES: dict[str, VarSpec] = {
    "s2": VarSpec(("roi", "time", "band", "y", "x"), "uint16", 0, True),
    "s1": VarSpec(("roi", "time", "polarization", "y", "x"), "float32", float("nan"), True),
    "cloud_prob": VarSpec(("roi", "time", "y", "x"), "uint8", 0, True),
    "cloud_mask": VarSpec(("roi", "time", "y", "x"), "uint8", 0, True),
    "coverage": VarSpec(("roi", "time", "row", "col", "detector"), "float32", float("nan"), False),
    "valid_s2": VarSpec(("roi", "time", "row", "col"), "bool", False, False),
    "valid_s1": VarSpec(("roi", "time", "row", "col"), "bool", False, False),
    "blank": VarSpec(("roi", "time", "row", "col"), "bool", False, False),
    "s2_date": VarSpec(("roi", "time", "row", "col"), "datetime64[ns]", None, False),
    "s1_date": VarSpec(("roi", "time", "row", "col"), "datetime64[ns]", None, False),
    "patch_id": VarSpec(("roi", "row", "col"), "int32", -1, False),
}
PIXEL_VARIABLES = tuple(k for k, v in VARIABLES.items() if v.pixel)


def dim_sizes(n_roi: int, n_rows: int, n_cols: int, patch_size: int) -> dict[str, int]:
    """Sizes of every dim of a cube with ``n_roi`` ROIs on a grid of ``n_rows`` × ``n_cols`` patches."""
    return {
        "roi": n_roi, "time": N_SLOTS, "band": len(BANDS), "polarization": len(POLARIZATIONS),
        "y": n_rows * patch_size, "x": n_cols * patch_size, "row": n_rows, "col": n_cols,
        "detector": len(DETECTORS),
    }


def inner_chunks(var: str, sizes: dict[str, int], patch_size: int) -> tuple[int, ...]:
    """The unit of reading: one patch at one slot, all bands; small variables are one chunk."""
    spec = VARIABLES[var]
    if not spec.pixel:
        return tuple(sizes[d] for d in spec.dims)
    per_dim = {"roi": 1, "time": 1, "y": patch_size, "x": patch_size}
    return tuple(per_dim.get(d, sizes[d]) for d in spec.dims)


def shard_shape(var: str, sizes: dict[str, int], patch_size: int) -> tuple[int, ...] | None:
    """The unit of storage: one patch's whole series (``None`` for the small variables)."""
    spec = VARIABLES[var]
    if not spec.pixel:
        return None
    per_dim = {"roi": 1, "y": patch_size, "x": patch_size}
    return tuple(per_dim.get(d, sizes[d]) for d in spec.dims)


def as_str(values) -> np.ndarray:
    """Labels as a NumPy ``str`` array, whatever string dtype the store gave them.

    ``xr.open_zarr`` returns zarr v3 strings as NumPy's ``StringDType``, which refuses a
    direct ``astype(str)``.
    """
    return np.asarray(values).astype(object).astype(str)


#: How ``s2_date``/``s1_date`` are stored: whole days since the reference's day zero.
DATE_UNITS = "days since 2014-04-03"
DATE_FILL = int(np.iinfo(np.int32).min)


def decode_dates(values: np.ndarray, units: str = DATE_UNITS, fill: object = DATE_FILL) -> np.ndarray:
    """Stored dates (integers ``<unit> since <epoch>``) as ``datetime64[ns]``, NaT at ``fill``.

    The one date decoder of s2cube (the xarray backend and the converter's checks use it).
    """
    unit, _, epoch = str(units).partition(" since ")
    steps = {"days": "D", "hours": "h", "minutes": "m", "seconds": "s"}
    if unit.strip() not in steps or not epoch.strip():
        raise ValueError(f"dates stored as {units!r} are not understood; expected "
                         "'days since YYYY-MM-DD'")
    raw = np.asarray(values)
    if raw.dtype.kind == "M":
        return raw.astype("datetime64[ns]")
    missing = raw == fill if fill is not None else np.zeros(raw.shape, bool)
    if raw.dtype.kind == "f":
        missing |= np.isnan(raw)
    step = steps[unit.strip()]
    ints = np.where(missing, 0, raw).astype(np.int64)
    out = (np.datetime64(epoch.strip()[:19]).astype(f"datetime64[{step}]")
           + ints.astype(f"timedelta64[{step}]")).astype("datetime64[ns]")
    out[missing] = np.datetime64("NaT")
    return out


def check_cube_attrs(attrs: dict | None, where: str, *, allow_incomplete: bool = False) -> str:
    """The one "is this an s2cube cube" check, on the root attributes; returns the state.

    Raises
    ------
    NotACubeError
        No Zarr group (``attrs`` None), another dataset, or another schema version.
    IncompleteCubeError
        The cube is being written or a conversion stopped before it finished, and
        ``allow_incomplete`` is False.
    """
    from s2cube.errors import IncompleteCubeError, NotACubeError

    if attrs is None:
        raise NotACubeError(f"{where} holds no Zarr v3 group: check the URL (an s2cube cube "
                            "is the folder that holds the root zarr.json)")
    kind = attrs.get("cube_kind")  # the two kinds of the family (s2cube.sen12mscr)
    title = TITLE_CR if kind == "sen12ms-cr" else TITLE
    if kind not in (None, "sen12ms-cr-ts", "sen12ms-cr") or attrs.get("title") != title \
            or "schema_version" not in attrs:
        raise NotACubeError(f"{where} is a Zarr group but not an s2cube cube (title "
                            f"{attrs.get('title')!r}); open it with xarray.open_zarr instead")
    version = attrs["schema_version"]
    if version != SCHEMA_VERSION:
        hint = ("it predates per-chunk checksums: convert the archive again into a new cube "
                "with this s2cube (`s2cube convert ARCHIVE NEW.zarr`), or open it with "
                "xarray.open_zarr, unverified" if version == 1 else
                "install the s2cube that wrote it, or convert the archive again")
        raise NotACubeError(f"{where} has cube schema version {version}; this s2cube reads "
                            f"version {SCHEMA_VERSION}: {hint}")
    state = str(attrs.get(ATTR_STATE))
    if state != STATE_COMPLETE and not allow_incomplete:
        raise IncompleteCubeError(
            f"{where} is not a complete cube (s2cube_state={state!r}): a conversion is "
            "running or stopped before it finished. Run the conversion again to finish it, "
            "or open it anyway with allow_incomplete=True")
    return state


def utc_now() -> str:
    """ISO timestamp for the ``created`` attribute."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


# --- root attributes -------------------------------------------------------------------

ATTR_STATE = "s2cube_state"  # "writing" while a conversion runs, "complete" after it finalised
STATE_WRITING = "writing"
STATE_COMPLETE = "complete"
JOURNAL_PREFIX = "_s2cube_journal"  # per-patch records of a conversion, inside the cube's store
