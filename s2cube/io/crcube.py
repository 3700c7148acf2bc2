"""The xarray backend's side of SEN12MS-CR cubes (``cube_kind = "sen12ms-cr"``).

:func:`s2cube.io.backend.open_source` hands a SEN12MS-CR cube's root metadata here: the
same chunk reader, checksums and lazy arrays as a time-series cube (``PixelArray`` and
``SmallArray`` work on any regular chunk grid), with this kind's dims (``patch``, ``band``,
``polarization``, ``y``, ``x``, ``detector``, ``affine``), its validity flags (one per patch
and modality) and chunk errors that name the scene and the patch number. Opening reads the
root ``zarr.json`` only; every coordinate is built from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from xarray.core import indexing

from s2cube import schema
from s2cube import sen12mscr as cr
from s2cube.errors import NotACubeError
from s2cube.io.backend import SOURCE_KEY, CubeSource, PixelArray, SmallArray
from s2cube.io.reader import ArrayLayout, parse_layout
from s2cube.io.storage import Location


class CrSource(CubeSource):
    """A SEN12MS-CR cube's source: its layouts, scene table and per-patch validity."""

    kind = cr.KIND_CR

    def __init__(self, loc: Location, layouts: dict[str, ArrayLayout], patch_size: int,
                 attrs: dict[str, dict], clouds: bool, scenes: tuple[cr.Scene, ...]) -> None:
        super().__init__(loc, layouts, (), patch_size, attrs, clouds)
        self.scenes = scenes

    def __repr__(self) -> str:
        return f"CrSource({self.loc.url!r})"

    def live(self) -> dict[str, Any]:
        live = super().live()
        if "labels" not in live:
            live["labels"] = True  # first: reading the small arrays below comes back here
            try:
                live["reader"].roi_names = self.patch_labels()
            except Exception:  # errors then name positions (#k); the read itself will tell
                pass
        return live

    def patch_labels(self) -> tuple[str, ...]:
        """``"ROIs1868_summer_73 p30"`` per position (``"#k"`` where no patch is stored)."""
        scene, pid = self.small("scene"), self.small("patch_id")
        names = [s.scene for s in self.scenes]
        return tuple(f"{names[s]} p{p}" if 0 <= s < len(names) else f"#{k}"
                     for k, (s, p) in enumerate(zip(scene.tolist(), pid.tolist())))

    def valid(self, var: str) -> np.ndarray | None:
        """``(patch,)``: whether each patch's chunk of pixel variable ``var`` exists."""
        flag = cr.VALID_OF.get(var)
        if flag not in self.layouts or (var.startswith("cloud_") and not self.clouds):
            return None
        return self.small(flag)

    def expected(self, var: str):
        valid = self.valid(var)
        if valid is None:
            return lambda chunk: False
        return lambda chunk: bool(valid[int(chunk[0])])


def cr_source(loc: Location, attrs: dict, arrays: dict[str, dict]) -> CrSource:
    """The :class:`CrSource` of a SEN12MS-CR cube from its root metadata."""
    layouts = {}
    for name, meta in arrays.items():
        if name not in cr.VARIABLES:
            continue
        lay = parse_layout(name, meta, frames=False)
        if cr.VARIABLES[name].pixel and (lay.chunk[0] != 1 or lay.chunk[-1] != lay.chunk[-2]):
            raise NotACubeError(f"{loc.url}: {name}'s inner chunks {lay.chunk} are not one "
                                "square patch; this is not a SEN12MS-CR cube as s2cube writes it")
        layouts[name] = lay
    clouds = (attrs.get("cloud_detection") or {}).get("method", "none") != "none"
    return CrSource(loc, layouts, int(attrs.get("patch_size") or 0),
                    {n: dict(m.get("attributes") or {}) for n, m in arrays.items()}, clouds,
                    tuple(cr.scenes_of(attrs)))


def coordinates(sizes: dict[str, int]) -> dict[str, Any]:
    """Every coordinate of a SEN12MS-CR cube with these dim sizes (no I/O)."""
    out: dict[str, Any] = {
        "patch": ("patch", np.arange(sizes.get("patch", 0), dtype=np.int64),
                  {"long_name": "stored position; the scene and patch number are the 'scene' "
                                "and 'patch_id' variables"}),
        "band": ("band", np.array(schema.BANDS)),
        "wavelength": ("band", np.array(schema.WAVELENGTHS), {"units": "nm",
                                                                "long_name": "centre wavelength"}),
        "polarization": ("polarization", np.array(schema.POLARIZATIONS)),
        "detector": ("detector", np.array(schema.DETECTORS)),
        "affine": ("affine", np.array(cr.AFFINE)),
        "y": ("y", np.arange(sizes.get("y", 0), dtype=np.int32)),
        "x": ("x", np.arange(sizes.get("x", 0), dtype=np.int32)),
    }
    return {k: v for k, v in out.items() if v[0] in sizes}


def _variable(source: CrSource, name: str) -> xr.Variable:
    lay = source.layouts[name]
    spec = cr.VARIABLES[name]
    dims = lay.dims or spec.dims
    attrs = {k: v for k, v in source.attrs.get(name, {}).items()
             if k not in ("_FillValue", "coordinates", "units", "calendar")}
    if name == "s1" and "units" in source.attrs.get(name, {}):
        attrs["units"] = source.attrs[name]["units"]
    encoding: dict[str, Any] = {SOURCE_KEY: {"url": source.url, "variable": name, "source": source},
                                "dtype": np.dtype(lay.dtype).newbyteorder("=")}
    if spec.pixel:
        array: Any = PixelArray(source, name)
        encoding["preferred_chunks"] = dict(zip(dims, lay.shard or lay.chunk))
    else:
        array = SmallArray(source, name, np.dtype(lay.dtype).newbyteorder("="))
        encoding["preferred_chunks"] = dict(zip(dims, lay.shape))
    return xr.Variable(dims, indexing.LazilyIndexedArray(array), attrs, encoding)


def open_cr_dataset(source: CrSource, attrs: dict, drop_variables: Any = None) -> xr.Dataset:
    """The lazy Dataset of a SEN12MS-CR cube (what the backend returns for this kind)."""
    drop = set([drop_variables] if isinstance(drop_variables, str) else drop_variables or ())
    names = [n for n in cr.VARIABLES if n in source.layouts and n not in drop]
    variables = {n: _variable(source, n) for n in names}
    sizes: dict[str, int] = {}
    for v in variables.values():
        sizes.update({str(d): n for d, n in v.sizes.items()})
    coords = {k: v for k, v in coordinates(sizes).items() if k not in drop}
    ds = xr.Dataset(variables, coords=coords,
                    attrs={k: v for k, v in attrs.items() if k != "coordinates"})
    ds.encoding["source"] = source.url
    return ds
