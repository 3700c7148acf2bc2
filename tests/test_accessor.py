"""The .s2cube accessor: registered on import, stateless, one-line delegation, lazy; quicklooks."""

from __future__ import annotations

import ast
import inspect
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from laziness import raise_if_dask_computes

from s2cube import accessor, select
from s2cube.analysis import baselines, georef, indices, quicklook, stats

pytestmark = pytest.mark.usefixtures("local_threads")




PUBLIC = [name for name, _ in inspect.getmembers(accessor.S2CubeAccessor, inspect.isfunction)
          if not name.startswith("_")]


def test_import_registers_the_accessor_and_stays_light():
    code = textwrap.dedent("""
        import sys, xarray as xr
        import s2cube
        assert hasattr(xr.Dataset(), "s2cube")
        heavy = [m for m in ("rasterio", "rioxarray", "matplotlib", "torch", "scipy", "zarr")
                 if m in sys.modules]
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_the_accessor_holds_only_the_dataset_and_never_fails_to_attach():
    empty = xr.Dataset()
    acc = empty.s2cube
    assert isinstance(acc, accessor.S2CubeAccessor) and vars(acc) == {"_ds": empty}
    with pytest.raises(KeyError):  # methods fail clearly on what is missing, not on attach
        empty.s2cube.cloudiness()


@pytest.mark.parametrize("name", PUBLIC)
def test_each_method_is_one_documented_line_delegating_to_a_module(name):
    fn = getattr(accessor.S2CubeAccessor, name)
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    body = tree.body[0].body
    assert ast.get_docstring(tree.body[0]), f"{name} has no docstring"
    assert len(body) == 2 and isinstance(body[1], ast.Return), f"{name} is not one line"
    called = ast.unparse(body[1].value)
    modules = ("select.", "georef.", "stats.", "indices.", "quicklook.", "baselines.", "batches.",
               "table.", "evaluate.", "series.", "series_plans.", "pairing.")
    assert called.startswith(modules), called


def test_methods_equal_the_module_functions_and_stay_lazy(ds):
    with raise_if_dask_computes():
        pairs = [
            (ds.s2cube.sel_split("test"), select.sel_split(ds, "test")),
            (ds.s2cube.sel_region("africa"), select.sel_region(ds, "africa")),
            (ds.s2cube.sel_roi("ROIs2017_8"), select.sel_roi(ds, "ROIs2017_8")),
            (ds.s2cube.clear_frames(), select.clear_frames(ds)),
            (ds.s2cube.reflectance(), stats.reflectance(ds)),
            (ds.s2cube.cloud_mask("s2cloudless_map"), stats.cloud_mask(ds, "s2cloudless_map")),
            (ds.s2cube.masked_reflectance(), stats.masked_reflectance(ds)),
            (ds.s2cube.clear_fraction(), stats.clear_fraction(ds)),
            (ds.s2cube.cloudiness(by="split"), stats.cloudiness(ds, "split")),
            (ds.s2cube.index("nbr"), indices.index(ds, "nbr")),
            (ds.s2cube.ndvi(), indices.ndvi(ds)),
            (ds.s2cube.composite(), baselines.composite(ds)),
            (ds.s2cube.roi("ROIs1868_73"), georef.roi(ds, "ROIs1868_73")),
        ]
        assert ds.s2cube.grid("ROIs1868_73") == georef.roi_grid(ds, "ROIs1868_73")
    for got, expected in pairs:
        assert type(got) is type(expected)
        assert dict(got.sizes) == dict(expected.sizes)
        if isinstance(got, xr.DataArray):
            assert got.data.name == expected.data.name  # the very same dask graph


def test_quicklook_renders_a_stretched_true_colour_png(ds):
    pytest.importorskip("PIL")
    from PIL import Image

    look = ds.s2cube.quicklook("ROIs2017_8", 3)
    assert isinstance(look, quicklook.Quicklook)
    png = look._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.asarray(Image.open(io.BytesIO(png)))
    n = int(ds.n_rows.sel(roi="ROIs2017_8")) * ds.attrs["patch_size"]
    assert img.shape == (n, n, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, look.rgb)
    # the stretch: 2nd..98th percentile of each channel mapped to 0..255
    rgb = ds.s2.sel(roi="ROIs2017_8", band=["B4", "B3", "B2"]).isel(time=3).values
    red = rgb[0].astype(float)
    lo, hi = np.percentile(red[rgb.max(0) > 0], [2, 98])
    expected = np.clip((red - lo) * 255 / (hi - lo), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(look.rgb[..., 0], np.where(rgb.max(0) > 0, expected, 0))
    assert (img == 0).mean() < 0.2 and (img == 255).mean() < 0.2


def test_png_writer_round_trips_through_pillow():
    pytest.importorskip("PIL")
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(quicklook.png_bytes(rgb))))
    np.testing.assert_array_equal(back, rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(quicklook.png_bytes(grey)))), grey)


def test_quicklook_wants_one_frame(ds):
    with pytest.raises(ValueError, match="select"):
        quicklook.quicklook(ds.s2.isel(roi=0))


def test_the_accessor_works_on_a_plain_xarray_open_zarr_dataset(small_cube):
    import xarray as xr

    plain = xr.open_zarr(small_cube)  # zarr v3 strings arrive as NumPy's StringDType here
    assert [str(r) for r in plain.s2cube.sel_split("test").roi.values] == ["ROIs1868_73"]
    assert plain.s2cube.cloudiness(by="region").sizes["region"] == 2
    assert len(plain.s2cube.patch_table()) == 18
