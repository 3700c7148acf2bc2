"""The SEN12MS-CR cube's contract in code: names, dims, scenes, splits, sample order.

SEN12MS-CR (Ebel et al., IEEE TGRS 59, 2021) is the mono-temporal predecessor of
SEN12MS-CR-TS: per patch one Sentinel-1 image, one cloud-free and one cloudy Sentinel-2
image. Its scenes are those of SEN12MS; the ROIs of SEN12MS-CR-TS are some of them
(CR-TS ``ROIs1868/73`` is SEN12MS-CR's ``ROIs1868_summer`` scene 73). s2cube writes it as a
second *cube kind* of the same family (``docs/cube.md``, section "SEN12MS-CR cubes"): root
attribute ``cube_kind = "sen12ms-cr"``, a flat ``patch`` dim, each patch with its own
georeference. This module is the single place that knows that contract and the reference
loader's tables (UnCRtainTS ``data/dataLoader.py``, class ``SEN12MSCR``): the splits, the
sample order, and the substring membership the reference uses. Pure data and tiny
functions: no I/O, no heavy imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from s2cube import schema

#: root attribute telling the two kinds of cube apart (absent on older time-series cubes)
ATTR_KIND = "cube_kind"
KIND_TS = "sen12ms-cr-ts"
KIND_CR = "sen12ms-cr"
TITLE = schema.TITLE_CR
REFERENCES = "doi:10.1109/TGRS.2020.3024744"
#: the archive layout names of ``s2cube synth --layout`` and of the converter's detection
LAYOUT_TS, LAYOUT_CR = KIND_TS, KIND_CR

SEASONS: dict[str, str] = {"ROIs1158": "spring", "ROIs1868": "summer", "ROIs1970": "fall",
                           "ROIs2017": "winter"}
MODALITIES: tuple[str, ...] = ("s1", "s2", "s2_cloudy")
AFFINE: tuple[str, ...] = ("a", "b", "c", "d", "e", "f")
#: patches per shard (one object per pixel variable): a run of consecutive patches of one
#: scene. 32 patches of 256 px make s2 shards of ~18 MB on real pixels (benchmarks/
#: bench_sen12mscr.py), the object size S3 serves at full speed, and one task of the
#: converter reads ~170 MB of GeoTIFFs, which keeps a worker's memory flat.
PATCHES_PER_SHARD = 32


def kind_of(attrs: dict | None) -> str:
    """The cube kind recorded in root attributes (time series when absent)."""
    return str((attrs or {}).get(ATTR_KIND) or KIND_TS)


def is_cr(obj) -> bool:
    """Whether ``obj`` (a Dataset or a root-attribute dict) is a SEN12MS-CR cube."""
    attrs = getattr(obj, "attrs", obj)
    return isinstance(attrs, dict) and kind_of(attrs) == KIND_CR


# --- scenes ------------------------------------------------------------------------------

_SCENE = re.compile(r"^(ROIs\d{4})_(spring|summer|fall|winter)_(\d+)$")


def scene_name(collection: str, scene_id: int) -> str:
    """``scene_name("ROIs1868", 73) == "ROIs1868_summer_73"`` (the cube's scene label)."""
    if collection not in SEASONS:
        raise KeyError(f"{collection!r} is not a collection of SEN12MS-CR "
                       f"({', '.join(SEASONS)})")
    return f"{collection}_{SEASONS[collection]}_{int(scene_id)}"


def parse_scene(name: str) -> tuple[str, int]:
    """``("ROIs1868", 73)`` from ``"ROIs1868_summer_73"`` (ValueError naming the form)."""
    m = _SCENE.match(str(name))
    if m is None or SEASONS.get(m[1]) != m[2]:
        raise ValueError(f"{name!r} is not a SEN12MS-CR scene; scenes are named like "
                         "'ROIs1868_summer_73' (collection, its season, scene number)")
    return m[1], int(m[3])


def scene_of_roi(roi: str) -> str:
    """The SEN12MS-CR scene covering a SEN12MS-CR-TS ROI: ``ROIs1868_73`` → ``ROIs1868_summer_73``."""
    info = schema.roi_info(roi)
    return scene_name(info.collection, info.roi_id)


def roi_of_scene(scene: str) -> str | None:
    """The SEN12MS-CR-TS ROI on the ground of ``scene``, None when the scene is not one."""
    collection, sid = parse_scene(scene)
    name = schema.roi_name(collection, sid)
    return name if name in schema.ROIS else None


def normalize_scene(name: str) -> str:
    """A scene label from a scene name or from a SEN12MS-CR-TS ROI name of the same ground."""
    if _SCENE.match(str(name)):
        parse_scene(name)
        return str(name)
    if str(name) in schema.ROIS:
        return scene_of_roi(str(name))
    raise ValueError(f"{name!r} is neither a SEN12MS-CR scene ('ROIs1868_summer_73') nor a "
                     "SEN12MS-CR-TS ROI ('ROIs1868_73')")


def relpath(scene: str, modality: str, pid: int) -> str:
    """The archive path of one file, relative to the root (``modality``: ``s1``, ``s2`` or
    ``s2_cloudy``): ``ROIs1868_summer_s2/s2_73/ROIs1868_summer_s2_73_p30.tif``."""
    collection, sid = parse_scene(scene)
    season = SEASONS[collection]
    return (f"{collection}_{season}_{modality}/{modality}_{sid}/"
            f"{collection}_{season}_{modality}_{sid}_p{int(pid)}.tif")


def order_key(collection: str, scene_id: int, patch_id: int = 0) -> tuple[int, int, int]:
    """The reference sample order: collections 1158, 1868, 1970, 2017 (the natural order of
    the ``*_s1`` folders), then scenes and files in natural order (by number)."""
    return (schema.COLLECTIONS.index(collection), int(scene_id), int(patch_id))


# --- splits (the reference's lists, "conform with SEN12MS-CR-TS") --------------------------

#: The reference's lists, in its listing order, per collection.
_SPLIT_LISTS: dict[str, dict[str, str]] = {
    "test": {"ROIs1158": "106 123 140 31 44", "ROIs1868": "119 73", "ROIs1970": "139",
             "ROIs2017": "108 63"},
    "val": {"ROIs1158": "17", "ROIs1868": "19 80 127 17", "ROIs1970": "65",
            "ROIs2017": "22 107 130 84"},
    "train": {
        "ROIs1158": "9 1 124 40 101 21 134 145 141 66 8 26 77 113 100 117 119 6 58 120 110 126 "
                    "115 121 39 109 63 75 132 128 142 15 45 97 147",
        "ROIs1868": "90 87 25 124 114 135 40 101 42 31 36 139 56 133 55 43 113 76 123 143 93 125 "
                    "89 120 126 72 115 121 146 140 95 102 7 11 132 15 137 4 27 147 86 47 100",
        "ROIs1970": "3 22 148 107 1 114 135 40 42 31 149 64 28 144 57 35 133 30 134 141 112 116 "
                    "37 26 77 100 83 71 93 119 104 136 6 41 125 91 131 120 110 19 14 81 39 109 "
                    "33 88 11 128 142 122 4 27 147 85 82 105",
        "ROIs2017": "68 25 62 135 42 64 21 55 112 116 8 59 49 104 81 146 75 94 102 61 47",
    },
}
SPLIT_SCENES: dict[str, tuple[str, ...]] = {
    split: tuple(scene_name(c, int(n)) for c in schema.COLLECTIONS for n in lists[c].split())
    for split, lists in _SPLIT_LISTS.items()
}
#: ``exact``: a scene is in the split whose list names it (the intended behaviour);
#: ``reference``: the reference's substring test (``'ROIs1868_summer_s1/s1_7' in path``), which
#: puts a scene in every split that lists a scene whose number is a prefix of its own;
#: ``combined``: ``exact``, but the scenes that are SEN12MS-CR-TS ROIs take that ROI's split, so
#: no ground is in the training split of one data set and the val/test split of the other.
SPLIT_MODES: tuple[str, ...] = ("exact", "reference", "combined")
#: the scene the reference's comment asks to drop from training when combining both data sets
CR_TS_TEST_IN_TRAIN = "ROIs1868_summer_100"


def _check_mode(mode: str) -> str:
    if mode not in SPLIT_MODES:
        raise ValueError(f"split_mode {mode!r} is not one of {', '.join(SPLIT_MODES)}")
    return mode


def scene_splits(scene: str, mode: str = "exact") -> frozenset[str]:
    """The splits (``train``/``val``/``test``) ``scene`` belongs to under ``mode``.

    ``exact`` and ``combined`` give at most one split; ``reference`` may give several (that is
    the reference's leak) or none (a scene in no list).
    """
    _check_mode(mode)
    collection, sid = parse_scene(scene)
    if mode == "combined":
        roi = roi_of_scene(scene)
        if roi is not None:
            return frozenset({schema.ROIS[roi].split})
    if mode in ("exact", "combined"):
        return frozenset(s for s, names in SPLIT_SCENES.items() if scene in names)
    digits = str(sid)
    out = set()
    for split, names in SPLIT_SCENES.items():
        for other in names:
            c, n = parse_scene(other)
            if c == collection and digits.startswith(str(n)):
                out.add(split)
    return frozenset(out)


def in_split(scene: str, split: str, mode: str = "exact") -> bool:
    """Whether the samples of ``scene`` are in ``split`` (``all``: in any list) under ``mode``."""
    if split not in ("all", *schema.SPLITS):
        raise ValueError(f"split {split!r} is not one of all, {', '.join(schema.SPLITS)}")
    got = scene_splits(scene, mode)
    return bool(got) if split == "all" else split in got


@dataclass(frozen=True)
class Move:
    """A scene whose split differs between two split modes."""

    scene: str
    exact: tuple[str, ...]
    other: tuple[str, ...]
    because: str


def split_moves(mode: str, scenes: list[str] | None = None) -> list[Move]:
    """Every listed scene (or every one of ``scenes``) whose splits under ``mode`` differ from
    ``exact``, and why: the table the README and ``docs/cube.md`` print."""
    _check_mode(mode)
    names = scenes if scenes is not None else sorted(
        {n for v in SPLIT_SCENES.values() for n in v},
        key=lambda s: order_key(*parse_scene(s)))
    out = []
    for scene in names:
        exact, other = scene_splits(scene, "exact"), scene_splits(scene, mode)
        if exact == other:
            continue
        if mode == "reference":
            collection, sid = parse_scene(scene)
            by = sorted({o for s in other - exact for o in SPLIT_SCENES[s]
                         if parse_scene(o)[0] == collection
                         and str(sid).startswith(str(parse_scene(o)[1])) and o != scene},
                        key=lambda s: parse_scene(s)[1])
            why = "substring of " + ", ".join(f"s1_{parse_scene(o)[1]}" for o in by)
        else:
            why = f"SEN12MS-CR-TS {roi_of_scene(scene)} is {'/'.join(sorted(other))}"
        out.append(Move(scene, tuple(sorted(exact)), tuple(sorted(other)), why))
    return out


# --- variables, dtypes and chunking ---------------------------------------------------------

VARIABLES: dict[str, schema.VarSpec] = {
    "s2": schema.VarSpec(("patch", "band", "y", "x"), "uint16", 0, True),
    "s2_cloudy": schema.VarSpec(("patch", "band", "y", "x"), "uint16", 0, True),
    "s1": schema.VarSpec(("patch", "polarization", "y", "x"), "float32", float("nan"), True),
    "cloud_prob": schema.VarSpec(("patch", "y", "x"), "uint8", 0, True),
    "cloud_mask": schema.VarSpec(("patch", "y", "x"), "uint8", 0, True),
    "coverage": schema.VarSpec(("patch", "detector"), "float32", float("nan"), False),
    "valid_s2": schema.VarSpec(("patch",), "bool", False, False),
    "valid_s2_cloudy": schema.VarSpec(("patch",), "bool", False, False),
    "valid_s1": schema.VarSpec(("patch",), "bool", False, False),
    "blank": schema.VarSpec(("patch",), "bool", False, False),
    "patch_id": schema.VarSpec(("patch",), "int32", -1, False),
    "scene": schema.VarSpec(("patch",), "int32", -1, False),
    "transform": schema.VarSpec(("patch", "affine"), "float64", float("nan"), False),
}
PIXEL_VARIABLES = tuple(k for k, v in VARIABLES.items() if v.pixel)
SMALL_VARIABLES = tuple(k for k, v in VARIABLES.items() if not v.pixel)
#: which ``valid_*`` flag says a patch's chunk of a pixel variable exists
VALID_OF = {"s2": "valid_s2", "s2_cloudy": "valid_s2_cloudy", "s1": "valid_s1",
            "cloud_prob": "valid_s2_cloudy", "cloud_mask": "valid_s2_cloudy"}
#: the file of each modality, by the pixel variable holding it
MODALITY_OF = {"s2": "s2", "s2_cloudy": "s2_cloudy", "s1": "s1"}


def dim_sizes(n_patches: int, patch_size: int) -> dict[str, int]:
    """Sizes of every dim of a SEN12MS-CR cube with ``n_patches`` positions."""
    return {"patch": int(n_patches), "band": len(schema.BANDS),
            "polarization": len(schema.POLARIZATIONS), "y": int(patch_size),
            "x": int(patch_size), "detector": len(schema.DETECTORS), "affine": len(AFFINE)}


def inner_chunks(var: str, sizes: dict[str, int]) -> tuple[int, ...]:
    """The unit of reading: one patch, all bands; small variables are one chunk."""
    spec = VARIABLES[var]
    if not spec.pixel:
        return tuple(sizes[d] for d in spec.dims)
    return tuple(1 if d == "patch" else sizes[d] for d in spec.dims)


def shard_shape(var: str, sizes: dict[str, int], per_shard: int = PATCHES_PER_SHARD
                ) -> tuple[int, ...] | None:
    """The unit of storage: ``per_shard`` consecutive patches of one scene (None if small)."""
    spec = VARIABLES[var]
    if not spec.pixel:
        return None
    return tuple(per_shard if d == "patch" else sizes[d] for d in spec.dims)


def capacity(n: int, per_shard: int = PATCHES_PER_SHARD) -> int:
    """Positions a scene of ``n`` patches takes: whole shards, so no shard spans two scenes."""
    return max(1, -(-int(n) // per_shard)) * per_shard


@dataclass(frozen=True)
class Scene:
    """One scene of a SEN12MS-CR cube, as the root attribute ``scenes`` records it.

    Its patches sit at positions ``start`` … ``start + n_patches - 1`` of the ``patch`` dim,
    in natural order of their patch numbers; ``capacity`` positions are reserved (whole
    shards), the rest is never written.
    """

    scene: str
    epsg: int | None
    crs_wkt: str
    start: int
    capacity: int
    n_patches: int

    @property
    def collection(self) -> str:
        return parse_scene(self.scene)[0]

    @property
    def scene_id(self) -> int:
        return parse_scene(self.scene)[1]

    @property
    def season(self) -> str:
        return SEASONS[self.collection]

    @property
    def crs(self) -> str:
        if self.epsg and self.epsg > 0:
            return f"EPSG:{self.epsg}"
        if self.crs_wkt:
            return self.crs_wkt
        raise ValueError(f"{self.scene} has neither an EPSG code nor a WKT; its CRS is unknown")

    def record(self) -> dict:
        return {"scene": self.scene, "collection": self.collection, "season": self.season,
                "scene_id": self.scene_id, "epsg": self.epsg, "crs_wkt": self.crs_wkt,
                "start": self.start, "capacity": self.capacity, "n_patches": self.n_patches}

    @classmethod
    def from_record(cls, rec: dict) -> Scene:
        epsg = rec.get("epsg")
        return cls(str(rec["scene"]), int(epsg) if epsg not in (None, -1) else None,
                   str(rec.get("crs_wkt") or ""), int(rec["start"]), int(rec["capacity"]),
                   int(rec["n_patches"]))


def scenes_of(attrs: dict) -> list[Scene]:
    """The scene table of a SEN12MS-CR cube's root attributes, in stored order."""
    return [Scene.from_record(r) for r in attrs.get("scenes") or []]


def patch_bounds(transform, patch_size: int) -> list[float]:
    """``[left, bottom, right, top]`` of a patch with GDAL ``transform``, as rasterio's
    ``DatasetReader.bounds`` computes it (the reference's ``coord``)."""
    a, b, c, d, e, f = (float(v) for v in transform)
    w = h = int(patch_size)
    if b == 0 and d == 0:
        return [c, f + e * h, c + a * w, f]
    xs = [c, c + a * w, c + b * h, c + a * w + b * h]
    ys = [f, f + d * w, f + e * h, f + d * w + e * h]
    return [min(xs), min(ys), max(xs), max(ys)]


def natural_key(text: str) -> tuple:
    """natsort's default key (digit runs as integers), for the reference's ``natsorted``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text)))


def sample_order(scenes: np.ndarray, patch_ids: np.ndarray, table: list[Scene]) -> np.ndarray:
    """Positions sorted in the reference sample order (collection, scene, patch number)."""
    keys = np.array([order_key(table[s].collection, table[s].scene_id, p) if s >= 0 else
                     (99, 0, 0) for s, p in zip(scenes, patch_ids)], np.int64).reshape(-1, 3)
    return np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0])) if keys.size else \
        np.zeros(0, np.int64)
