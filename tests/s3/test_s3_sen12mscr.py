"""A SEN12MS-CR archive in a bucket, converted on the dask process cluster into a cube in a
bucket, equals the local conversion; validated from S3; loaded from S3 by the drop-in and
the batched path with read-only credentials."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from s2cube.io.storage import parse_location, zarr_store

pytestmark = [pytest.mark.s3, pytest.mark.slow]


@pytest.fixture(scope="module")
def mono_archive(tmp_path_factory):
    from s2cube_conversion.cr_synth import synthesize_cr_archive

    return synthesize_cr_archive(tmp_path_factory.mktemp("s3-cr") / "SEN12MSCR",
                                 scenes=("ROIs1868_summer_73", "ROIs2017_winter_8"), grid=(2, 2),
                                 patch_size=16, seed=2)


def test_convert_validate_and_load_on_s3(seaweed, dask_cluster, mono_archive, tmp_path):
    from dask.distributed import Client

    from s2cube.torch import SEN12MSCR, make_loader
    from s2cube_conversion import convert
    from s2cube_conversion.validate import validate

    assert seaweed.upload_folder(mono_archive.root, "cubes", "cr-archive") == len(mono_archive.files)
    admin, reader = seaweed.storage_options(), seaweed.storage_options("reader")
    local, cube = tmp_path / "cr.zarr", "s3://cubes/cr/cube.zarr"
    with Client(dask_cluster.address) as client:
        ref = convert(mono_archive.root, local, client=client)
        got = convert("s3://cubes/cr-archive", cube, storage_options=admin, client=client)
        assert got.problems == ref.problems and len(got.problems) == 1  # the unpaired patch
        assert got.patches == ref.patches == 2 * 8  # 9 overlapping patches, a gap each
        report = validate("s3://cubes/cr-archive", cube, storage_options=admin, client=client)
    assert report.ok and report.files == len(mono_archive.files), report.differences[:3]
    remote = xr.open_zarr(zarr_store(parse_location(cube, reader), read_only=True), chunks=None)
    a = xr.open_zarr(local, chunks=None)
    for name in a.variables:
        assert remote[name].equals(a[name]), name
    volatile = {"created", "updated", "source"}  # source: the listing's paths differ
    assert {k: v for k, v in remote.attrs.items() if k not in volatile} == \
        {k: v for k, v in a.attrs.items() if k not in volatile}
    ours, theirs = (SEN12MSCR(c, split="all", storage_options=o)
                    for c, o in ((cube, reader), (str(local), None)))
    assert len(ours) == len(theirs) == 15
    for pdx in (0, 7, 14):
        for part in ("input", "target"):
            np.testing.assert_array_equal(ours[pdx][part]["S2"], theirs[pdx][part]["S2"])
        np.testing.assert_array_equal(ours[pdx]["input"]["masks"], theirs[pdx]["input"]["masks"])
    batches = list(make_loader(cube, split="all", batch_size=6, storage_options=reader,
                               shuffle=False))
    assert sum(len(b["pdx"]) for b in batches) == 15
    np.testing.assert_array_equal(batches[0]["input"]["S1"][1].numpy(), theirs[1]["input"]["S1"])
