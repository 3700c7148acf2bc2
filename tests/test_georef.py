"""roi(): an ROI on its own grid, georeferenced the rioxarray way, round-tripping to GeoTIFF."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from laziness import raise_if_dask_computes

from s2cube import schema

pytestmark = pytest.mark.usefixtures("local_threads")

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("rioxarray")
# rasterio/rioxarray use affine's `*`, deprecated in favour of `@`: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")




def _source(archive, roi: str, modality: str, slot: int, pid: int):
    info = schema.roi_info(roi)
    folder = archive / info.collection / str(info.roi_id) / modality.upper() / str(slot)
    found = sorted(folder.glob(f"{modality}_*_patch_{pid}.tif"))
    assert len(found) == 1, (folder, pid)
    return found[0]


def test_grid_is_a_small_value_from_the_metadata(ds):
    name = str(ds.roi.values[0])
    with raise_if_dask_computes():
        grid = ds.s2cube.grid(name)
    p = ds.attrs["patch_size"]
    assert grid.patch_size == p and grid.shape == (grid.n_rows * p, grid.n_cols * p)
    assert grid.crs == f"EPSG:{int(ds.epsg.values[0])}"
    a, _, c, _, e, f = grid.transform
    assert grid.patch_transform(1, 2) == (a, 0.0, c + 2 * p * a, 0.0, e, f + p * e)
    left, bottom, right, top = grid.patch_bounds(0, 0)
    assert (left, top) == (c, f) and right - left == p * a and top - bottom == -p * e
    with pytest.raises(dataclasses.FrozenInstanceError):
        grid.n_rows = 3


def test_roi_has_pixel_centre_coordinates_and_a_crs(ds):
    name = "ROIs2017_8"
    with raise_if_dask_computes():
        one = ds.s2cube.roi(name)
    grid = ds.s2cube.grid(name)
    a, _, c, _, e, f = grid.transform
    assert one.sizes["y"] == grid.height and one.sizes["x"] == grid.width
    assert one.x.values[0] == pytest.approx(c + a / 2) and one.y.values[0] == pytest.approx(f + e / 2)
    assert one.rio.crs.to_epsg() == int(ds.epsg.values[list(ds.roi.values).index(name)])
    assert tuple(one.rio.transform())[:6] == pytest.approx(grid.transform)
    assert "spatial_ref" in one.coords and one.s2.chunks is not None
    assert one.coverage.sizes["row"] == grid.n_rows  # the small variables are cropped too


@pytest.mark.parametrize("roi", ["ROIs1868_73", "ROIs2017_8"])
def test_to_raster_round_trips_to_the_source_geotiffs(ds, synthetic_archive, tmp_path, roi):
    slot = 4
    one = ds.s2cube.roi(roi)
    out = tmp_path / f"{roi}.tif"
    one.s2.isel(time=slot).rio.to_raster(out)
    table = ds.s2cube.patch_table()
    rows = table[table["roi"] == roi]
    assert len(rows) == 9
    with rasterio.open(out) as mosaic:
        assert mosaic.dtypes[0] == "uint16" and mosaic.count == 13
        for r in rows.itertuples():
            with rasterio.open(_source(synthetic_archive, roi, "s2", slot, r.patch_id)) as src:
                window = rasterio.windows.from_bounds(*src.bounds, transform=mosaic.transform)
                assert (window.row_off, window.col_off) == (r.row * src.height, r.col * src.width)
                assert mosaic.crs == src.crs
                assert mosaic.window_transform(window) == src.transform
                np.testing.assert_array_equal(mosaic.read(window=window), src.read())


def test_reproject_and_clip_work_on_an_roi(ds):
    from shapely.geometry import box

    one = ds.s2cube.roi("ROIs1868_73").s2.isel(time=0)
    grid = ds.s2cube.grid("ROIs1868_73")
    clipped = one.rio.clip([box(*grid.patch_bounds(1, 1))], all_touched=False)
    p = grid.patch_size
    assert clipped.shape == (13, p, p)
    np.testing.assert_array_equal(clipped.values, one.isel(y=slice(p, 2 * p), x=slice(p, 2 * p)).values)
    lonlat = one.rio.reproject("EPSG:4326")
    assert lonlat.rio.crs.to_epsg() == 4326
    left, bottom, right, top = lonlat.rio.bounds()
    assert -180 < left < right < 180 and -90 < bottom < top < 90
