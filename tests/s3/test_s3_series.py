"""Seq2seq on a cube in S3: the series plan, baselines, scores and internal learning read
through the read path from the object store and give what they give on local disk."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import s2cube

pytestmark = pytest.mark.s3


def test_series_verbs_and_internal_learning_read_from_s3_as_from_disk(seaweed, reference_cube,
                                                                      prefix):
    assert seaweed.upload_folder(reference_cube, "cubes", f"{prefix}/cube.zarr") > 10
    remote = s2cube.open_cube(f"s3://cubes/{prefix}/cube.zarr",
                              storage_options=seaweed.storage_options("reader"))
    local = s2cube.open_cube(reference_cube)
    plan = local.s2cube.series_plan(split="all", n_series=2, seed=0)
    pd.testing.assert_frame_equal(remote.s2cube.series_plan(split="all", n_series=2, seed=0), plan)
    with dask.config.set(scheduler="threads"):
        for method in ("nearest", "median"):
            got = remote.s2cube.evaluate_series(remote.s2cube.series_baseline(plan, method), plan)
            want = local.s2cube.evaluate_series(local.s2cube.series_baseline(plan, method), plan)
            pd.testing.assert_frame_equal(got.frames, want.frames)
    pytest.importorskip("torch")
    from s2cube.models import fit_series

    a = fit_series(remote, plan, 0, max_steps=5, check_every=5, device="cpu")
    b = fit_series(local, plan, 0, max_steps=5, check_every=5, device="cpu")
    np.testing.assert_array_equal(a.prediction, b.prediction)
    assert a.read_seconds > 0
