"""validate checks a cube converted without S1 against the S2 files only."""

from __future__ import annotations

import pytest

pytest.importorskip("rasterio")


def test_a_cube_without_s1_validates_clean_against_an_archive_with_s1(tiny_archive, tmp_path,
                                                                       dask_client):
    from s2cube_conversion import convert
    from s2cube_conversion.validate import validate

    cube = tmp_path / "s2.zarr"
    assert convert(tiny_archive, cube, s1=False, client=dask_client).ok
    report = validate(tiny_archive, cube, client=dask_client)
    assert report.ok, report.differences[:3]
    assert report.files == len(list(tiny_archive.rglob("s2_*.tif")))


def test_validate_reads_the_cube_as_it_is_now_not_as_an_earlier_call_saw_it(tiny_archive,
                                                                            tmp_path,
                                                                            dask_client):
    """In one process: validate, convert the S1 files into the same cube, validate again."""
    from s2cube_conversion import convert
    from s2cube_conversion.validate import validate

    cube = tmp_path / "grown.zarr"
    assert convert(tiny_archive, cube, s1=False, client=dask_client).ok
    assert validate(tiny_archive, cube).files == len(list(tiny_archive.rglob("s2_*.tif")))
    assert convert(tiny_archive, cube, s1=True, client=dask_client).ok
    report = validate(tiny_archive, cube)
    assert report.ok, report.differences[:3]
    assert report.files == len(list(tiny_archive.rglob("*.tif")))  # S1 checked too now
