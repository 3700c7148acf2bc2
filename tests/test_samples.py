"""Sample plans become arrays: the reference's preprocessing, masks and NumPy batches.

Uses the small cube of :func:`test_reader.write_cube` (known contents, blank and missing
frames), built once per session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_reader import shared_cube

import s2cube
from s2cube.errors import SelectionError
from s2cube.plans import rules as sampling
from s2cube.training import batches as samples


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return shared_cube(tmp_path_factory)


@pytest.fixture(scope="module")
def ds(cube):
    return s2cube.open_cube(cube)


def test_preprocessing_matches_the_reference_formulas():
    rng = np.random.default_rng(0)
    dn = rng.integers(0, 15000, size=(13, 8, 8)).astype(np.uint16)
    out = np.empty(dn.shape, np.float32)
    samples.s2_post("default")(dn, out)
    ref = np.clip(dn.astype(np.float32), 0, 10000)
    np.testing.assert_array_equal(out, (ref - 0) / 10000)
    samples.s2_post("resnet")(dn, out)
    np.testing.assert_array_equal(out, ref / 2000)
    db = rng.normal(-15, 10, size=(2, 8, 8)).astype(np.float32)
    db[0, 0, 0] = np.nan
    out = np.empty(db.shape, np.float32)
    samples.s1_post("default")(db, out)
    want = np.nan_to_num((np.clip(db, -25, 0) - -25) / (0 - -25))
    np.testing.assert_array_equal(out, want)
    assert out.min() >= 0 and out.max() <= 1 and out[0, 0, 0] == 0
    samples.s1_post("resnet")(db, out)
    vv = 2 * (np.clip(db[0], -25.0, 0) - -25.0) / (0 - -25.0)
    vh = 2 * (np.clip(db[1], -32.5, 0) - -32.5) / (0 - -32.5)
    np.testing.assert_array_equal(out, np.nan_to_num(np.stack([vv, vh])))
    with pytest.raises(ValueError, match="rescale_method"):
        samples.s2_post("minmax")


def test_masks_from_bit_flags_and_blank_rule():
    flags = np.array([[0, 1, 2, 4], [3, 5, 6, 7]], np.uint8)
    out = np.empty(flags.shape, np.float32)
    samples.mask_post("s2cloudless_mask")(flags, out)
    assert out.tolist() == [[0, 1, 0, 0], [1, 1, 0, 1]]
    samples.mask_post("cloud_cloudshadow_mask")(flags, out)
    assert out.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    samples.mask_post("s2cloudless_mask", blank=True)(flags, out)
    assert (out == 1).all() and out.dtype == np.float32


def test_iter_batches_yields_numpy_batches_of_the_reference_plan(cube, ds):
    """The torch-free batched path (what ``ds.s2cube.batches`` delegates to)."""
    import zarr

    got = list(samples.iter_batches(str(cube), split="all", sampler="fixed", batch_size=4,
                                    shuffle=False, rescale_method=None, threads=2))
    assert [len(b["pdx"]) for b in got] == [4, 4, 3]
    index = sampling.patch_index(ds.patch_id.values, list(ds.roi.values))
    cov = sampling.sample_coverage(ds.coverage.values, index, 0)
    cov = np.where(ds.blank.values[index.roi, :, index.row, index.col], np.float32(1), cov)
    plan = sampling.fixed(cov, 3)
    b = got[1]
    s2 = zarr.open_array(str(cube / "s2"), mode="r")
    assert b["input"]["S2"].shape == (4, 3, 13, 16, 16) and b["input"]["S2"].dtype == np.uint16
    for j, pdx in enumerate(b["pdx"]):
        assert b["input"]["idx"][j].tolist() == plan.inputs[pdx].tolist()
        assert b["target"]["idx"][j].tolist() == [plan.target[pdx]]
        i, r, c, t = index.roi[pdx], index.row[pdx], index.col[pdx], plan.target[pdx]
        want = s2[i, t, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
        np.testing.assert_array_equal(b["target"]["S2"][j, 0], want)
        assert b["roi"][j] == ds.roi.values[i] and (b["row"][j], b["col"][j]) == (r, c)
        assert b["patch_id"][j] == ds.patch_id.values[i, r, c]


def test_crops_outside_the_patch_are_refused_with_the_patch_size(ds):
    split = samples.SampleSet(ds, samples.SampleOptions())
    for crop in (0, 17):
        with pytest.raises(ValueError, match=f"crop={crop} must be between 1 and the patch size 16"):
            samples.BatchMaker(split, crop=crop)
    rd = samples.SampleReader(split.view, threads=1)
    with pytest.raises(ValueError, match="crop=17 must be between 1 and the patch size 16"):
        rd.read([0], [0], [0], np.zeros((1, 1), np.int64), crop=17)
    rd.close()


def test_accessor_batches_stream_from_the_cube_it_was_opened_from(small_cube):
    ds = s2cube.open_cube(small_cube)
    batch = next(iter(ds.s2cube.batches(split="all", batch_size=2, sampler="fixed",
                                        shuffle=False)))
    by_url = next(iter(samples.iter_batches(str(small_cube), split="all", batch_size=2,
                                            sampler="fixed", shuffle=False)))
    assert batch.keys() == by_url.keys()
    for key in batch:
        if isinstance(batch[key], np.ndarray):
            np.testing.assert_array_equal(batch[key], by_url[key])


def test_batches_refuse_a_dataset_that_does_not_say_where_its_frames_are(small_cube):
    import xarray as xr

    with pytest.raises(SelectionError, match="not the variable stored in a cube"):
        next(iter(xr.open_zarr(small_cube).s2cube.batches()))
