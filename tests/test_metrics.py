"""The reference metrics: hand-computed values, a literal re-implementation, and the dask wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from s2cube.analysis import metrics as M
from s2cube_conversion._realpixels import load_scenes


def _naive_ssim(pred, target):
    """SSIM written out literally: a 2-D 11x11 Gaussian window over a zero-padded image."""
    g = np.array([math.exp(-((x - 5) ** 2) / (2 * 1.5**2)) for x in range(11)])
    g /= g.sum()
    w = np.outer(g, g)

    def conv(img):
        pad = np.pad(img, 5)
        out = np.zeros_like(img)
        for i in range(img.shape[0]):
            for j in range(img.shape[1]):
                out[i, j] = (pad[i:i + 11, j:j + 11] * w).sum()
        return out

    maps = []
    for t, p in zip(np.asarray(target, float), np.asarray(pred, float)):
        mu1, mu2 = conv(t), conv(p)
        s1, s2, s12 = conv(t * t) - mu1**2, conv(p * p) - mu2**2, conv(t * p) - mu1 * mu2
        c1, c2 = 0.01**2, 0.03**2
        maps.append(((2 * mu1 * mu2 + c1) * (2 * s12 + c2))
                    / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2)))
    return float(np.mean(maps))


def test_rmse_mae_psnr_on_a_constant_error():
    target = np.full((13, 8, 8), 0.5)
    pred = target + 0.1
    assert M.rmse(pred, target) == pytest.approx(0.1)
    assert M.mae(pred, target) == pytest.approx(0.1)
    assert M.psnr(pred, target) == pytest.approx(20.0)  # 20 log10(1 / 0.1)


def test_identical_images_score_perfectly():
    rng = np.random.default_rng(0)
    img = rng.random((13, 16, 16))
    m = M.image_metrics(img, img)
    assert m["rmse"] == 0 and m["mae"] == 0 and m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0)
    assert m["sam_deg"] == pytest.approx(0.0, abs=1e-5)


def test_sam_is_the_angle_between_spectra_in_degrees_and_radians():
    target = np.zeros((2, 1, 1))
    target[0] = 1.0
    pred = np.zeros((2, 1, 1))
    pred[1] = 1.0
    assert M.sam(pred, target) == pytest.approx(90.0)
    assert M.sam(pred, target, degrees=False) == pytest.approx(math.pi / 2)
    assert M.sam(3 * target, target) == pytest.approx(0.0)  # brightness does not change the angle
    pred45 = np.array([1.0, 1.0]).reshape(2, 1, 1)
    assert M.sam(pred45, target) == pytest.approx(45.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_equals_the_literal_formula(seed):
    rng = np.random.default_rng(seed)
    target = rng.random((3, 20, 24))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    assert M.ssim(pred, target) == pytest.approx(_naive_ssim(pred, target), abs=1e-9)


def test_ssim_matches_the_reference_torch_code():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    target = rng.random((13, 32, 32)).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    # pytorch_ssim of the reference: conv2d with the 11x11 window, padding 5, groups=channel
    g = torch.tensor([math.exp(-((x - 5) ** 2) / (2 * 1.5**2)) for x in range(11)])
    g = (g / g.sum()).unsqueeze(1)
    w = (g @ g.t()).float().expand(13, 1, 11, 11).contiguous()
    t, p = torch.from_numpy(target)[None], torch.from_numpy(pred)[None]
    mu1, mu2 = F.conv2d(t, w, padding=5, groups=13), F.conv2d(p, w, padding=5, groups=13)
    s1 = F.conv2d(t * t, w, padding=5, groups=13) - mu1**2
    s2 = F.conv2d(p * p, w, padding=5, groups=13) - mu2**2
    s12 = F.conv2d(t * p, w, padding=5, groups=13) - mu1 * mu2
    ref = (((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4))
           / ((mu1**2 + mu2**2 + 1e-4) * (s1 + s2 + 9e-4))).mean().item()
    assert M.ssim(pred, target) == pytest.approx(ref, abs=1e-5)


def test_cloudy_and_clear_errors_use_the_union_of_the_input_masks():
    target = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    pred[:, 0, 0] = 0.3  # error only at pixel (0, 0)
    pred[:, 1, 1] = 0.1  # and at (1, 1)
    masks = np.zeros((2, 2, 2))
    masks[0, 0, 0] = 1  # input 0 cloudy at (0, 0)
    masks[1, 0, 1] = 1  # input 1 cloudy at (0, 1)
    out = M.masked_errors(pred, target, masks)
    # cloudy pixels: (0,0) error 0.3 and (0,1) error 0; clear: (1,0) 0 and (1,1) 0.1
    assert out["rmse_cloudy"] == pytest.approx(math.sqrt((0.09 * 2) / 4))
    assert out["mae_cloudy"] == pytest.approx(0.6 / 4)
    assert out["rmse_clear"] == pytest.approx(math.sqrt((0.01 * 2) / 4))
    assert out["mae_clear"] == pytest.approx(0.2 / 4)
    assert out["cloudy_fraction"] == 0.5


def test_no_cloudy_pixel_gives_nan_not_an_error():
    out = M.masked_errors(np.ones((1, 2, 2)), np.zeros((1, 2, 2)), np.zeros((3, 2, 2)))
    assert math.isnan(out["rmse_cloudy"]) and out["rmse_clear"] == pytest.approx(1.0)


def test_shape_mismatch_is_refused_with_a_message():
    with pytest.raises(ValueError, match="differs from target"):
        M.rmse(np.zeros((13, 4, 4)), np.zeros((13, 4, 5)))


def test_metrics_blocks_on_dask_is_lazy_and_equals_numpy():
    import dask.array as da
    from xarray.tests import raise_if_dask_computes

    rng = np.random.default_rng(5)
    pred, target = rng.random((4, 3, 12, 12)), rng.random((4, 3, 12, 12))
    masks = rng.random((4, 2, 12, 12)) > 0.5
    expected = M.metrics_blocks(pred, target, masks)
    with raise_if_dask_computes():
        lazy = M.metrics_blocks(da.from_array(pred, chunks=(1, 3, 12, 12)),
                                da.from_array(target, chunks=(2, 3, 6, 12)),
                                da.from_array(masks, chunks=(1, 1, 12, 12)))
    assert lazy.shape == (4, len(M.METRICS)) and lazy.numblocks[0] == 4
    np.testing.assert_allclose(lazy.compute(), expected)
    assert expected[2, M.METRICS.index("rmse")] == pytest.approx(M.rmse(pred[2], target[2]))


def test_metrics_on_real_pixels_equal_plain_formulas():
    scenes = load_scenes()[:, :, :32, :32].astype(np.float64)  # the packaged real scenes
    target, pred = np.clip(scenes[2], 0, 1), np.clip(scenes[3], 0, 1)
    m = M.image_metrics(pred, target)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((target - pred) ** 2)), rel=1e-12)
    assert m["ssim"] == pytest.approx(_naive_ssim(pred, target), abs=1e-9)
    cos = (target * pred).sum(0) / np.linalg.norm(target, axis=0) / np.linalg.norm(pred, axis=0)
    assert m["sam_rad"] == pytest.approx(np.mean(np.arccos(np.clip(cos, -1, 1))), rel=1e-9)


def test_the_compiled_kernels_equal_the_numpy_formulas(monkeypatch):
    from s2cube.kernels import metrics as fastmetrics

    assert fastmetrics._available()  # numba is a dependency: the fast path must not fall back
    rng = np.random.default_rng(5)
    cases = []
    for shape in ((13, 64, 64), (2, 7, 5), (1, 30, 17), (3, 4, 41), (2, 9, 13), (1, 1, 1),
                  (2, 3, 2)):
        t = rng.random(shape)
        p = np.clip(t + rng.normal(0, 0.1, shape), 0, 1)
        masks = (rng.random((3, *shape[1:])) > 0.8).astype(np.uint8)
        cases.append((p, t, masks))
        # float32 images go to the kernels as they are (widened in registers), bool masks too
        cases.append((p.astype(np.float32), t.astype(np.float32), masks.astype(bool)))
    windows = (11, 7, 5, 3, 1)
    fast = [(M.image_metrics(p, t, m), M.image_metrics(p, t), [M.ssim(p, t, window=k) for k in windows])
            for p, t, m in cases]
    monkeypatch.setattr(fastmetrics, "_available", lambda: False)  # NumPy only
    for (p, t, m), (with_masks, without, ssims) in zip(cases, fast):
        for got, expected in ((with_masks, M.image_metrics(p, t, m)), (without, M.image_metrics(p, t))):
            assert got.keys() == expected.keys()
            for k in got:
                assert got[k] == pytest.approx(expected[k], rel=1e-12, abs=1e-12, nan_ok=True), k
        for k, got in zip(windows, ssims):
            assert got == pytest.approx(float(np.mean(M.ssim_map(p, t, window=k))), abs=1e-12)


def test_the_ssim_kernel_takes_any_window_like_the_numpy_filter():
    from s2cube.kernels import metrics as fastmetrics

    rng = np.random.default_rng(9)
    t = rng.random((2, 19, 23))
    p = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    c1, c2 = M.SSIM_C1, M.SSIM_C2
    for taps in (np.array([1, 2, 2, 1]) / 6, rng.random(6), rng.random(7), np.array([0.25, 0.5, 0.25]),
                 M.gaussian_window(9), rng.random(2)):
        mu1, mu2, s1, s2, s12 = M._filter(np.stack([t, p, t * t, p * p, t * p]), taps)
        s1, s2, s12 = s1 - mu1 * mu1, s2 - mu2 * mu2, s12 - mu1 * mu2
        ref = (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).sum()
        for a, b in ((p, t), (p.astype(np.float32), t.astype(np.float32))):
            got = fastmetrics.ssim_sum(a, b, taps, c1, c2)
            assert got == pytest.approx(ref, rel=1e-12 if a.dtype == np.float64 else 1e-6), len(taps)


def test_without_numba_the_metrics_come_from_numpy_and_say_so(monkeypatch, caplog):
    from s2cube.kernels import metrics as fastmetrics
    from s2cube.kernels import native

    rng = np.random.default_rng(8)
    t = rng.random((3, 16, 16))
    p = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    fast = M.image_metrics(p, t)
    monkeypatch.setattr(native, "_numba", lambda: None)  # as if numba could not be imported
    fastmetrics._available.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=fastmetrics.__name__):
            assert fastmetrics.ssim_sum(p, t, M.gaussian_window(), M.SSIM_C1, M.SSIM_C2) is None
            assert fastmetrics.error_sums(p, t, None) is None
            slow = M.image_metrics(p, t)
        assert "numba is not installed" in caplog.text
        for k in M.METRICS:
            assert slow[k] == pytest.approx(fast[k], rel=1e-12, abs=1e-12, nan_ok=True), k
    finally:
        fastmetrics._available.cache_clear()


def test_nan_predictions_take_the_numpy_path_and_its_semantics():
    rng = np.random.default_rng(7)
    t = rng.random((3, 8, 8))
    p = t.copy()
    p[:, 0, 0] = np.nan  # an unpredicted pixel
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 0, 0] = 1  # ... that is the only cloudy one
    got = M.image_metrics(p, t, masks)
    assert np.isnan(got["rmse"]) and np.isnan(got["rmse_cloudy"])  # nansum of nothing: no value
    assert got["rmse_clear"] == 0.0 and got["cloudy_fraction"] == pytest.approx(1 / 64)


def test_cloudy_and_clear_errors_skip_nan_errors_like_nansum():
    rng = np.random.default_rng(6)
    t = rng.random((3, 8, 8))
    p = rng.random((3, 8, 8))
    masks = (rng.random((2, 8, 8)) > 0.7).astype(np.uint8)
    clean = M.masked_errors(p, t, masks)
    p_nan = p.copy()
    p_nan[0, 0, 0] = np.nan  # one NaN error is left out, the rest unchanged
    cloudy = masks.max(axis=0) > 0
    d = (t - p_nan)
    sel = cloudy if cloudy[0, 0] else ~cloudy
    name = "cloudy" if cloudy[0, 0] else "clear"
    vals = d[:, sel]
    expected = math.sqrt(np.nansum(vals**2) / np.count_nonzero(~np.isnan(vals)))
    assert M.masked_errors(p_nan, t, masks)[f"rmse_{name}"] == pytest.approx(expected, rel=1e-12)
    other = "clear" if name == "cloudy" else "cloudy"
    got = M.masked_errors(p_nan, t, masks)[f"rmse_{other}"]
    assert got == pytest.approx(clean[f"rmse_{other}"], rel=1e-12)
