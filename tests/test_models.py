"""Internal learning: a network fitted to one series (s2cube.models), on CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from s2cube import models  # noqa: E402
from s2cube.analysis import series as S  # noqa: E402
from s2cube.io import reader  # noqa: E402

pytestmark = pytest.mark.usefixtures("local_threads")

FAST = dict(max_steps=120, check_every=10, train_crop=None, device="cpu")


def synthetic_series(t: int = 10, bands: int = 4, size: int = 24, seed: int = 0) -> tuple:
    """A smooth scene drifting in time, its SAR twin, and square gaps filled with bright cloud.

    Returns ``(frames, truth)``: the series as read (clouds in place of the truth under the
    gaps) and the cloud-free truth.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = np.stack([0.15 + 0.1 * np.sin(4 * yy + b) * np.cos(3 * xx + rng.random())
                     for b in range(bands)])
    days = np.arange(t) * 12.0
    truth = (base[None] * (1 + 0.3 * np.sin(days / 60))[:, None, None, None]).astype(np.float32)
    gap = np.zeros((t, size, size), bool)
    gapped = np.array([2, 5, 7])
    for g in gapped:
        y0, x0 = rng.integers(0, size // 2, 2)
        gap[g, y0:y0 + size // 2, x0:x0 + size // 2] = True
    seen = np.where(gap[:, None], np.float32(0.9), truth)  # what the satellite saw: clouds
    s1 = (-14 + 20 * base[None, :2] * (1 + 0.3 * np.sin(days / 60))[:, None, None, None])
    s1 = s1.astype(np.float32)
    s1[4, :, 3:5, :] = np.nan  # a stripe without SAR, as the archive has
    frames = S.SeriesFrames(seen, np.zeros_like(gap), gap, np.ones(t, bool), days, gapped, s1,
                            np.ones(t, bool))
    return frames, truth


def _gap_rmse(pred: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> float:
    sel = np.broadcast_to(scored[:, None], truth.shape)
    return float(np.sqrt(np.mean((pred[sel] - truth[sel]) ** 2)))


@pytest.mark.parametrize("base", [None, "median"])
def test_the_loss_falls_and_the_reconstruction_beats_the_cloudy_input(base):
    frames, truth = synthetic_series()
    result = models.fit_series(frames, base=base, **FAST)
    assert result.prediction.shape == truth.shape and result.prediction.dtype == np.float32
    assert np.mean(result.losses[-10:]) < (0.2 if base is None else 0.8) * np.mean(
        result.losses[:10])
    scored = frames.scored
    assert scored.sum() > 0
    ours = _gap_rmse(result.prediction, truth, scored)
    cloudy = _gap_rmse(frames.s2, truth, scored)
    assert ours < 0.2 * cloudy, (ours, cloudy)
    # and it keeps the observed pixels: the fitted series is the series
    assert _gap_rmse(result.prediction, truth, frames.observed) < 0.03
    assert result.read_seconds == 0 and result.fit_seconds > 0 and result.device == "cpu"


def test_fits_are_reproducible_from_the_seed_and_leave_the_global_rngs_alone():
    frames, _ = synthetic_series(size=16)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    a = models.fit_series(frames, max_steps=15, check_every=5, seed=3, device="cpu")
    b = models.fit_series(frames, max_steps=15, check_every=5, seed=3, device="cpu")
    c = models.fit_series(frames, max_steps=15, check_every=5, seed=4, device="cpu")
    np.testing.assert_array_equal(a.prediction, b.prediction)
    assert a.losses == b.losses and a.checks == b.checks
    assert not np.array_equal(a.prediction, c.prediction)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002


def test_the_stopping_schedule_keeps_the_best_check():
    frames, _ = synthetic_series(size=16)
    opts = models.FitOptions(max_steps=400, check_every=5, patience=2, min_steps=10, holdout=0.2,
                             lr=0.05, train_crop=8, device="cpu")
    result = models.fit_series(frames, options=opts)
    steps = [s for s, _ in result.checks]
    assert steps == list(range(0, result.steps + 1, 5))  # 0: the base, before the first step
    losses = [v for _, v in result.checks]
    assert result.best_step == steps[int(np.argmin(losses))]
    if result.steps < opts.max_steps:  # stopped: patience checks without improvement
        assert len(steps) - 1 - steps.index(result.best_step) >= opts.patience
    full = models.fit_series(frames, max_steps=12, check_every=5, holdout=0.0, device="cpu")
    assert full.steps == 12 and [s for s, _ in full.checks] == [0, 5, 10, 12]
    assert full.best_step == 12  # without a holdout the last reconstruction is kept
    with pytest.raises(ValueError, match="holdout"):
        models.FitOptions(holdout=1.0)
    with pytest.raises(ValueError, match="base"):
        models.FitOptions(base="mosaic")


def test_with_a_base_the_fit_starts_from_it_and_never_keeps_worse_on_the_holdout():
    frames, _ = synthetic_series(size=16)
    result = models.fit_series(frames, base="linear", max_steps=40, check_every=10, holdout=0.3,
                               device="cpu")
    assert result.checks[0][0] == 0
    assert min(v for _, v in result.checks) <= result.checks[0][1]
    nothing = models.fit_series(frames, base="linear", max_steps=1, check_every=10, holdout=0.3,
                                lr=1e-12, device="cpu")
    # the base of the fitted pixels only (the held-out ones hidden from it too)
    rng = np.random.default_rng([0, 1])
    held = (rng.random(frames.observed.shape) < 0.3) & frames.observed
    hidden = S.SeriesFrames(frames.s2, frames.cloudy, frames.gap | held, frames.valid,
                            frames.days, frames.gapped)
    np.testing.assert_allclose(nothing.prediction, np.clip(S.fill_series(hidden, "linear"), 0, 1),
                               atol=1e-6)


def test_without_sar_the_code_and_time_alone_fit_the_series():
    frames, truth = synthetic_series(size=16)
    no_s1 = S.SeriesFrames(frames.s2, frames.cloudy, frames.gap, frames.valid, frames.days,
                           frames.gapped)
    with pytest.raises(ValueError, match="SAR"):
        models.fit_series(no_s1, max_steps=2, device="cpu")
    result = models.fit_series(no_s1, s1=False, **FAST)
    assert _gap_rmse(result.prediction, truth, frames.scored) < _gap_rmse(frames.s2, truth,
                                                                          frames.scored)


def test_fit_series_streams_its_series_from_the_cube(ds):
    plan = ds.s2cube.series_plan(split="test", n_series=2, seed=1)
    p = ds.attrs["patch_size"]
    with reader.counting() as stats:
        result = models.fit_series(ds, plan, 1, max_steps=6, check_every=3, device="cpu")
    assert result.prediction.shape == (30, 13, p, p)
    assert np.isfinite(result.prediction).all()
    assert result.read_seconds > 0
    assert stats.by_array["s2"] > 0 and stats.by_array["s1"] > 0  # the series and its prior
    window = models.fit_series(ds, plan, 1, max_steps=3, check_every=3, crop=16, device="cpu")
    assert window.prediction.shape == (30, 13, 16, 16) and window.window == (8, 8, 16)


def test_fit_plan_fits_every_series_and_scores_it_like_the_baselines(ds):
    plan = ds.s2cube.series_plan(split="all", n_series=2, seed=2)
    run = models.fit_plan(ds, plan, max_steps=8, check_every=4, device="cpu", keep=True)
    assert len(run.fits) == 2 and (run.fits["read_seconds"] > 0).all()
    frames = run.evaluation.frames
    assert len(frames) == sum(len(g) for g in plan["gaps"])
    again = ds.s2cube.evaluate_series(np.stack(run.predictions), plan).frames
    pd.testing.assert_frame_equal(frames, again)
    table = pd.DataFrame({"internal learning": run.evaluation.overall,
                          "linear": ds.s2cube.evaluate_series(
                              ds.s2cube.series_baseline(plan, "linear"), plan).overall}).T
    assert list(table.columns) == ["rmse", "mae", "psnr", "ssim", "sam_deg", "sam_rad"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_same_code_runs_on_cuda():  # pragma: no cover - no GPU in CI
    frames, truth = synthetic_series(size=16)
    result = models.fit_series(frames, max_steps=30, device="cuda")
    assert result.device.startswith("cuda") and result.prediction.shape == truth.shape


def test_importing_s2cube_and_its_series_verbs_does_not_import_torch():
    code = ("import sys, s2cube, s2cube.analysis.series, s2cube.plans.series; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
