"""What a Dataset holds, as stored frames: its labels resolved into stored positions.

The verbs that need a few frames of many patches — the training loader, ``baseline`` and
``evaluate`` — read them with the chunk reader, not through the Dataset's dask graph (whose
blocks are whole patch series: one frame would cost a series). So they must know exactly
which stored frames the Dataset they are given holds. :func:`view_of` resolves its labels —
ROI names, ``time`` labels (slots), ``band`` and ``polarization`` names, ``row``/``col``
patch labels and the ``y``/``x`` pixels — into stored positions, and takes the small
variables (coverage, validity, dates, patch ids) as the Dataset holds them. It refuses what
cannot be read as stored frames, saying why: a pixel variable that is not the stored one
(computed, renamed, cast, from another cube), a crop that cuts patches, labels the cube
does not have. Values written over a stored variable while xarray keeps its encoding
(``roll``, ``shift``, ``copy(data=...)``, item assignment) are not told apart from it: call
``drop_encoding()`` after such an operation, and these verbs refuse the variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from s2cube import schema
from s2cube.errors import SelectionError
from s2cube.io.backend import SOURCE_KEY, CubeSource
from s2cube.select import held_cells

#: small variables the loader takes from the Dataset
SMALL = ("coverage", "valid_s2", "valid_s1", "blank", "s2_date", "s1_date", "patch_id")


@dataclass(frozen=True)
class CubeView:
    """A Dataset's frames as stored positions, and its small variables as it holds them.

    Positions along ``roi``, ``time``, ``row`` and ``col`` below are the Dataset's; the
    arrays ``roi``, ``time``, ``row``, ``col``, ``band``, ``polarization`` map them to the
    stored ones.
    """

    source: CubeSource
    roi_names: tuple[str, ...]
    roi: np.ndarray
    time: np.ndarray
    row: np.ndarray
    col: np.ndarray
    band: np.ndarray
    polarization: np.ndarray | None
    variables: frozenset[str]
    patch_size: int
    patch_id: np.ndarray | None  # (roi, row, col), -1 where the Dataset holds no patch
    coverage: np.ndarray | None  # (roi, time, row, col, detector); None when not asked for
    valid_s2: np.ndarray | None
    valid_s1: np.ndarray | None
    blank: np.ndarray | None
    s2_date: np.ndarray | None  # datetime64, NaT where missing
    s1_date: np.ndarray | None
    transform: np.ndarray  # (roi, 6)

    @property
    def url(self) -> str:
        return self.source.url

    def band_select(self) -> np.ndarray | slice | None:
        """The Dataset's bands as an index into a stored S2 frame (None: all, in order)."""
        if np.array_equal(self.band, np.arange(len(schema.BANDS))):
            return None
        pos = np.asarray(self.band, np.int64)
        if pos.size and (np.diff(pos) == 1).all():
            return slice(int(pos[0]), int(pos[-1]) + 1)
        return pos

    def describe(self) -> str:
        """A short description of the selection, for messages."""
        slots = _ranges(self.time)
        return (f"{len(self.roi_names)} ROI(s) {list(self.roi_names)[:6]}"
                f"{' …' if len(self.roi_names) > 6 else ''}, slots {slots}")


def _ranges(values: np.ndarray) -> str:
    v = [int(x) for x in values]
    if v and v == list(range(v[0], v[-1] + 1)):
        return f"{v[0]}–{v[-1]}"
    return str(v)


def _source(ds: xr.Dataset, names: tuple[str, ...]) -> CubeSource:
    """The cube the pixel variables ``names`` were read from; refuse computed ones."""
    source = None
    for name in names:
        if name not in ds.data_vars:
            raise SelectionError(f"the Dataset holds no {name!r} variable, which the loader "
                                 "reads; keep it in the selection")
        info = ds[name].encoding.get(SOURCE_KEY)
        if not isinstance(info, dict) or info.get("variable") != name:
            raise SelectionError(
                f"{name!r} in this Dataset is not the variable stored in a cube (it was computed, "
                "renamed or built in memory); the loader streams stored frames only. Select "
                "from s2cube.open_cube(...) without changing the pixel variables, or write your "
                "variable to a cube first")
        got = info.get("source")
        if not isinstance(got, CubeSource):
            raise SelectionError(f"{name!r} does not say which cube it came from; open the cube "
                                 "with s2cube.open_cube")
        if source is not None and got.url != source.url:
            raise SelectionError(f"{name!r} comes from {got.url}, other pixel variables from "
                                 f"{source.url}; the loader reads one cube at a time")
        stored = np.dtype(got.layouts[name].dtype).newbyteorder("=")
        if ds[name].dtype != stored:
            raise SelectionError(f"{name!r} is {ds[name].dtype} here, {stored} in the cube: it "
                                 "was cast; the loader reads stored frames (use "
                                 "rescale_method for float32 output)")
        source = got
    assert source is not None
    return source


def _labels_to(stored: list, labels: np.ndarray, dim: str, url: str) -> np.ndarray:
    where = {v: i for i, v in enumerate(stored)}
    out = [where.get(v) for v in labels]
    missing = [lab for lab, i in zip(labels, out) if i is None]
    if missing:
        raise SelectionError(f"the Dataset's {dim} labels {missing[:5]} are not in the cube "
                             f"{url}; the loader reads stored frames by label")
    return np.asarray(out, dtype=np.int64)


def _values(ds: xr.Dataset, name: str, dims: tuple[str, ...]) -> np.ndarray:
    var = ds[name]
    missing = [d for d in dims if d not in var.dims]
    if missing:
        var = var.expand_dims(missing)
    return np.asarray(var.transpose(*dims).values)


def view_of(ds: xr.Dataset, *, variables: tuple[str, ...] = ("s2",),
            small: tuple[str, ...] = SMALL) -> CubeView:
    """Resolve ``ds`` into stored frames (see the module docstring).

    ``variables``: the pixel variables that will be read (they must be the stored ones);
    ``small``: the small variables to take from the Dataset.

    Raises
    ------
    SelectionError
        What the Dataset holds cannot be read as stored frames (see the message).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray Dataset from s2cube.open_cube, got {type(ds).__name__}")
    if ds.attrs.get("cube_kind") == "sen12ms-cr":
        raise SelectionError("this is a SEN12MS-CR cube (one cloudy image per patch, no time "
                             "series): load it with s2cube.torch.SEN12MSCR, make_loader or "
                             "ds.s2cube.batches; this verb works on SEN12MS-CR-TS cubes")
    if "roi" not in ds.dims:  # one ROI selected with its dim dropped
        ds = ds.expand_dims("roi")
    source = _source(ds, variables)
    p = source.patch_size
    missing = [v for v in small if v not in ds.variables]
    if missing:
        raise SelectionError(f"the Dataset lacks {missing}, which this verb needs (to choose "
                             "samples and find their frames); keep them in the selection")
    roi_names = tuple(str(r) for r in schema.as_str(ds["roi"].values))
    roi = _labels_to(list(source.roi_names), np.array(roi_names, dtype=object), "roi", source.url)
    time = np.asarray(ds["time"].values, dtype=np.int64)
    if time.size and (time.min() < 0 or time.max() >= source.layouts["s2"].shape[1]):
        raise SelectionError(f"the Dataset's time labels {time.tolist()} are not the cube's slots")
    n_rows, n_cols = source.layouts["s2"].shape[-2] // p, source.layouts["s2"].shape[-1] // p
    row = np.asarray(ds["row"].values, dtype=np.int64)
    col = np.asarray(ds["col"].values, dtype=np.int64)
    if (row.size and (row.min() < 0 or row.max() >= n_rows)) or \
            (col.size and (col.min() < 0 or col.max() >= n_cols)):
        raise SelectionError("the Dataset's row/col labels are not the cube's patch grid")
    band, pol = channel_positions(ds, variables, source.url)
    held = held_cells(ds, "y", "row", p)[:, None] & held_cells(ds, "x", "col", p)[None, :]
    pid = None
    if "patch_id" in small:
        pid = np.where(held[None], _values(ds, "patch_id", ("roi", "row", "col")), -1)
    t4 = ("roi", "time", "row", "col")
    transform = np.asarray(ds["transform"].transpose("roi", ...).values, np.float64).reshape(-1, 6)

    def take(name, dims, cast):
        return _values(ds, name, dims).astype(cast) if name in small else None

    return CubeView(
        source=source, roi_names=roi_names, roi=roi, time=time, row=row, col=col, band=band,
        polarization=pol, variables=frozenset(v for v in schema.PIXEL_VARIABLES if v in ds),
        patch_size=p, patch_id=pid,
        coverage=take("coverage", (*t4, "detector"), np.float32),
        valid_s2=take("valid_s2", t4, bool), valid_s1=take("valid_s1", t4, bool),
        blank=take("blank", t4, bool),
        s2_date=take("s2_date", t4, "datetime64[D]"), s1_date=take("s1_date", t4, "datetime64[D]"),
        transform=transform,
    )



def channel_positions(ds: xr.Dataset, variables: Sequence[str],
                      url: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored positions of the Dataset's ``band`` labels, and of its ``polarization`` labels
    when ``variables`` hold ``s1`` (None otherwise); a missing dim means all of them."""
    band = _labels_to(list(schema.BANDS), schema.as_str(ds["band"].values).astype(object), "band",
                      url) if "band" in ds.dims else np.arange(len(schema.BANDS))
    pol = None
    if "s1" in variables:
        pol = (_labels_to(list(schema.POLARIZATIONS),
                          schema.as_str(ds["polarization"].values).astype(object),
                          "polarization", url)
               if "polarization" in ds.dims else np.arange(len(schema.POLARIZATIONS)))
    return band, pol


def source_of(cube: Any, storage_options: dict | None = None) -> xr.Dataset:
    """A Dataset for ``cube``: the Dataset itself, or ``open_cube`` of a path or URL."""
    if isinstance(cube, xr.Dataset):
        return cube
    from s2cube.io.open import open_cube

    return open_cube(cube, storage_options=storage_options)
