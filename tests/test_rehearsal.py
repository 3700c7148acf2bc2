"""The whole archive's cardinality in CI: all 53 ROIs, reduced to 2x2 patches of 8 px, S2 only.

What only shows with every ROI present — every region, split and collection, ROIs of both
UTM hemispheres side by side, grids padded to the largest — is converted by the real converter
on the real dask cluster, then opened, summarised, planned and streamed as a user would.
``benchmarks/bench_scale.py`` measures the same at full cardinality (16,009 patch locations).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rasterio")

from s2cube import schema
from s2cube_conversion.synth import real_pixels_available

GRID = (2, 2)
PATCH = 8
SLOTS = 30
TRAIN = [n for n, i in schema.ROIS.items() if i.split == "train"]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, dask_client) -> tuple[Path, Path, object]:
    """All 53 ROIs written by ``synth --full-archive`` (2x2 grids) and converted."""
    if not real_pixels_available():
        pytest.skip("real Sentinel-2 pixels not found")
    from s2cube_conversion import convert
    from s2cube_conversion.synth_full import synthesize_full_archive

    tmp = tmp_path_factory.mktemp("rehearsal")
    archive = synthesize_full_archive(tmp / "archive", grid=GRID, patch_size=PATCH,
                                      n_slots=SLOTS, s1=False, workers=2)
    assert archive.files == 53 * GRID[0] * GRID[1] * SLOTS
    cube = tmp / "cube.zarr"
    report = convert(archive.root, cube, s1=False, client=dask_client)
    assert report.ok, report.problems
    return archive.root, cube, report


@pytest.fixture(scope="module")
def ds(rehearsal):
    import s2cube

    return s2cube.open_cube(rehearsal[1])


def test_every_roi_split_region_and_collection_is_in_the_cube(rehearsal, ds):
    _, _, report = rehearsal
    assert report.patches == report.converted == 53 * GRID[0] * GRID[1]
    assert set(report.timings) >= {"discover", "plan", "begin", "journal", "run", "finalize"}
    assert list(schema.as_str(ds["roi"].values)) == list(schema.ROIS)  # the sample order
    assert set(schema.as_str(ds["split"].values)) == set(schema.SPLITS)
    assert set(schema.as_str(ds["region"].values)) == set(schema.REGIONS)
    assert set(schema.as_str(ds["collection"].values)) == set(schema.COLLECTIONS)
    for name, info in schema.ROIS.items():
        one = ds.sel(roi=name)
        assert (str(one["split"].values), str(one["region"].values)) == (info.split, info.region)
    assert int((ds["patch_id"] >= 0).sum()) == 53 * GRID[0] * GRID[1]
    assert bool(ds["valid_s2"].all()) and not bool(ds["valid_s1"].any())


def test_both_utm_hemispheres_sit_side_by_side(ds):
    epsg = ds["epsg"].values
    north, south = (epsg >= 32601) & (epsg <= 32660), (epsg >= 32701) & (epsg <= 32760)
    assert north.any() and south.any() and (north | south).all()
    # a southern ROI keeps northings of the southern hemisphere (false northing 10,000 km)
    f = ds["transform"].values[:, 5]
    assert (f[south] > 1e6).all()
    africa = ds.s2cube.sel_region("africa")
    assert (africa["epsg"].values >= 32701).all()


def test_info_summarises_every_split_and_region(rehearsal):
    cube = rehearsal[1]
    done = subprocess.run([str(Path(sys.executable).parent / "s2cube"), "info", str(cube)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "rois=53" in lines[0]
    for split in schema.SPLITS:
        for region in schema.REGIONS:
            assert any(line.split()[:2] == [split, region] for line in lines), (split, region)


def test_cloudiness_covers_every_frame(ds):
    table = ds.s2cube.cloudiness(by=["split", "region"]).compute()
    assert int(table["frames"].sum()) == 53 * GRID[0] * GRID[1] * SLOTS
    assert np.isfinite(table["mean_coverage"].values).all()


def test_the_train_plan_samples_every_train_roi(ds):
    plan = ds.s2cube.sample_plan(split="train", sampler="fixed", n_input_samples=3, min_cov=0.1)
    assert len(plan) == len(TRAIN) * GRID[0] * GRID[1]
    assert list(dict.fromkeys(plan["roi"])) == TRAIN  # every train ROI, in the sample order
    assert set(plan["split"]) == {"train"}
    assert plan["inputs"].map(len).eq(3).all() and (plan["target"] >= 0).all()
    test = ds.s2cube.sel_split("test").s2cube.sample_plan(split="test")
    assert set(test["region"]) == set(schema.REGIONS)


def test_a_loader_batch_names_its_rois_and_holds_their_pixels(rehearsal, ds):
    from s2cube.torch import make_loader

    cube = rehearsal[1]
    loader = make_loader(cube, split="train", batch_size=len(TRAIN) * GRID[0] * GRID[1],
                         num_workers=0, sampler="random", n_input_samples=3, s1=False,
                         pin_memory=False, rescale_method=None, shuffle=False)
    (batch,) = list(loader)  # the whole train split in one batch
    assert batch["input"]["S2"].shape == (len(TRAIN) * GRID[0] * GRID[1], 3, 13, PATCH, PATCH)
    assert set(batch["roi"]) == set(TRAIN)
    k = 5
    roi, row, col = str(batch["roi"][k]), int(batch["row"][k]), int(batch["col"][k])
    slots = [int(t) for t in batch["input"]["idx"][k]]
    one = ds["s2"].sel(roi=roi).isel(y=slice(row * PATCH, (row + 1) * PATCH),
                                     x=slice(col * PATCH, (col + 1) * PATCH))
    np.testing.assert_array_equal(batch["input"]["S2"][k].numpy(),
                                  one.sel(time=slots).values)
