"""Cloud detection: the fast path gives the reference loader's masks and coverages on real pixels."""

from __future__ import annotations

import json
import pickle
import shutil
import time

import numpy as np
import pytest

from s2cube import schema
from s2cube_conversion import _treemodel
from s2cube_conversion._realpixels import load_dn
from s2cube_conversion.clouds import (
    BLANK_FLAGS,
    S2CLOUDLESS_PARAMS,
    CloudDetector,
    reference_detect,
    rule_shadow,
)

P = 64
BLANK, SATURATED = 8, 7


def _blend(cloudy: np.ndarray, clear: np.ndarray, phase: float) -> np.ndarray:
    """Real cloud over real land with a smooth spatial weight: partial cover, all probabilities."""
    yy, xx = np.mgrid[0:P, 0:P] / P
    w = np.clip(0.5 + 0.8 * np.sin(2 * np.pi * 1.5 * xx + phase) * np.cos(2 * np.pi * yy), 0, 1)
    return np.rint(w * cloudy + (1 - w) * clear)


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    """(10, 13, 64, 64) uint16 DN from the real scenes: 2 cloudy, 3 clear, 4 mixed, 1 blank."""
    dn = load_dn().astype(np.float32)  # (5, 13, 101, 100), the packaged real scenes
    crops = [dn[s, :, 5 * s:5 * s + P, 30 - 5 * s:30 - 5 * s + P] for s in range(5)]
    frames = [*crops, _blend(crops[0], crops[2], 0.0), _blend(crops[1], crops[3], 2.0),
              _blend(crops[0], crops[4], 4.0), np.zeros_like(crops[0]),
              _blend(crops[1], crops[2], 1.0)]
    out = np.stack(frames).astype(np.uint16)
    out[SATURATED, :, :10, :12] = 15000  # beyond the clipping range, like bright clouds
    return out


@pytest.fixture(scope="module")
def reference(series):
    return reference_detect(series)


@pytest.fixture(scope="module")
def fast(series):
    det = CloudDetector("fast", threads=1)
    return det, det(series)


def _agreement(a: np.ndarray, b: np.ndarray, bit: int) -> float:
    return float(np.mean((a & bit) == (b & bit)))


def _assert_matches(result, reference, exact: bool) -> None:
    assert _agreement(result.flags, reference.flags, schema.FLAG_S2CLOUDLESS) >= 0.999
    np.testing.assert_allclose(result.coverage, reference.coverage, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(result.blank, reference.blank)
    if exact:
        np.testing.assert_array_equal(result.prob, reference.prob)
        np.testing.assert_array_equal(result.flags, reference.flags)
        np.testing.assert_array_equal(result.coverage, reference.coverage)


def test_fast_path_gives_s2cloudless_masks_and_reference_coverage(fast, reference):
    det, result = fast
    assert det.describe()["engine"] == "numba-kernel"  # numba is a dependency: no fallback
    _assert_matches(result, reference, exact=det.engine.exact)
    # the rule-based bits come from the same arithmetic: identical, whatever the engine
    for bit in (schema.FLAG_RULE_CLOUD, schema.FLAG_RULE_SHADOW):
        assert _agreement(result.flags, reference.flags, bit) == 1.0


def test_real_cloudy_scenes_are_cloudy_and_clear_scenes_clear(reference):
    mask_cover = reference.coverage[:, 0]
    assert np.all(mask_cover[:2] > 0.9)  # scenes 0 and 1 are under real cloud
    assert np.all(mask_cover[2:5] == 0)  # scenes 2, 3 and 4 are clear
    assert np.all((mask_cover[[5, 6, 7, 9]] > 0.05) & (mask_cover[[5, 6, 7, 9]] < 0.95))


def test_coverage_is_the_reference_arithmetic_of_the_flags(series, reference):
    flags, cov = reference.flags, reference.coverage
    live = ~reference.blank
    np.testing.assert_array_equal(
        cov[live, 0], np.mean((flags[live] & schema.FLAG_S2CLOUDLESS) > 0, axis=(1, 2),
                              dtype=np.float32))
    # cloud_cloudshadow_mask: the reference relabels shadow (-1) and cloud (+1) to 1: cloud OR shadow
    rule = (flags[live] & (schema.FLAG_RULE_CLOUD | schema.FLAG_RULE_SHADOW)) > 0
    np.testing.assert_allclose(cov[live, 2], rule.mean(axis=(1, 2)), rtol=0, atol=1e-6)
    shadow_only = (flags[live] & schema.FLAG_RULE_SHADOW) > 0
    assert shadow_only.any(), "the test series should contain rule-based shadow"
    # the map is blurred probability >= 0.5: never more than the fraction of such pixels plus blur
    assert np.all(cov[live, 1] <= np.mean(reference.prob[live] >= 50, axis=(1, 2)) + 0.05)


def test_blank_frames_follow_the_reference_rule(series, fast):
    det, result = fast
    assert result.blank.tolist() == [t == BLANK for t in range(len(series))]
    np.testing.assert_array_equal(result.coverage[BLANK], 1.0)
    assert not result.prob[BLANK].any()
    assert np.all(result.flags[BLANK] == BLANK_FLAGS)
    one = np.zeros((1, 13, 16, 16), np.uint16)
    one[0, 3, 5, 5] = 1  # mean 3e-4 ... std 1e-3 > 1e-5: not blank
    assert not det(one).blank[0] and not reference_detect(one).blank[0]


def test_flags_bits_prob_range_and_dtypes(series, fast):
    _, result = fast
    t, _, h, w = series.shape
    assert result.prob.shape == result.flags.shape == (t, h, w)
    assert result.coverage.shape == (t, len(schema.DETECTORS)) and result.blank.shape == (t,)
    assert (result.prob.dtype, result.flags.dtype, result.coverage.dtype, result.blank.dtype) == (
        np.uint8, np.uint8, np.float32, bool)
    assert result.prob.max() <= 100 and result.prob[:2].mean() > 50
    assert not np.any(result.flags & ~np.uint8(7))
    assert np.all((result.coverage >= 0) & (result.coverage <= 1))


def test_values_above_10000_are_clipped(series, fast):
    det, result = fast
    capped = np.minimum(series[[SATURATED]], 10000)
    again = det(capped)
    np.testing.assert_array_equal(again.flags[0], result.flags[SATURATED])
    np.testing.assert_array_equal(again.coverage[0], result.coverage[SATURATED])


def test_shadow_majority_count_equals_medfilt2d(series):
    rng = np.random.default_rng(0)
    for t in (0, 3, 5, 9):
        img = series[t].astype(np.float32)
        np.testing.assert_array_equal(rule_shadow(img), rule_shadow(img, literal=True))
    for shape in ((3, 4), (7, 7), (33, 20)):
        img = rng.integers(0, 3000, (13, *shape)).astype(np.float32)
        np.testing.assert_array_equal(rule_shadow(img), rule_shadow(img, literal=True))


@pytest.mark.parametrize("method", ["onnx", "lightgbm"])
def test_other_engines_match_the_reference(series, reference, method):
    det = CloudDetector(method)
    _assert_matches(det(series), reference, exact=method == "lightgbm")


def test_kernel_probabilities_are_lightgbms_bit_for_bit(series):
    import lightgbm

    engine = _treemodel.get_engine("kernel", 1)
    assert engine.name == "numba-kernel" and engine.exact
    dn = np.minimum(series, _treemodel.MAX_DN)
    got = engine.predict_frames(dn)
    booster = lightgbm.Booster(model_file=_treemodel.model_file().path)
    x = np.moveaxis(dn[:, list(_treemodel.MODEL_BAND_IDS)], 1, -1).astype(np.float32) / 10000
    expected = booster.predict(x.reshape(-1, x.shape[-1])).astype(np.float32).reshape(got.shape)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    # threads split the pixels; sizes that are not a multiple of the 8 interleaved pixels
    two = _treemodel.KernelEngine(_treemodel.cache_dir(), threads=2)
    np.testing.assert_array_equal(two.predict_frames(dn).view(np.uint32), got.view(np.uint32))
    odd = dn[:3, :, :13, :7]
    np.testing.assert_array_equal(engine.predict_frames(odd), got[:3, :13, :7])


def test_fast_needs_no_c_compiler(series, fast, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang
    monkeypatch.setattr(_treemodel, "_engines", {})
    det = CloudDetector("fast", cache_dir=tmp_path)
    assert det.describe()["engine"] == "numba-kernel"
    np.testing.assert_array_equal(det(series[5:7]).prob, fast[1].prob[5:7])


def test_fast_falls_back_to_onnx_without_numba(series, reference, tmp_path, monkeypatch, caplog):
    from s2cube.kernels import native

    onnx = _treemodel.cache_dir() / f"model-{_treemodel.model_file().key}.onnx"
    if onnx.exists():  # spare the 11 s conversion: the onnx test above cached it
        shutil.copy(onnx, tmp_path / onnx.name)
    monkeypatch.setattr(native, "_numba", lambda: None)  # as if numba could not be imported
    monkeypatch.setattr(_treemodel, "_engines", {})
    det = CloudDetector("fast", cache_dir=tmp_path)
    with caplog.at_level("WARNING"):
        assert det.describe()["engine"] == "onnxruntime"
    assert "numba is not installed" in caplog.text
    _assert_matches(det(series[5:7]), _subset(reference, slice(5, 7)), exact=False)
    shipped = pickle.loads(pickle.dumps(det))  # the converted model travels with the detector
    assert shipped._onnx_bytes == det._onnx_bytes


def _subset(result, sel):
    return type(result)(*(getattr(result, k)[sel] for k in ("prob", "flags", "coverage", "blank")))


def test_detector_pickles_small_and_works_after_unpickling(series, fast):
    det, result = fast
    blob = pickle.dumps(det)
    assert len(blob) < 10_000  # parameters only: workers load the kernel from their cache
    again = pickle.loads(blob)(series[5:7])
    np.testing.assert_array_equal(again.flags, result.flags[5:7])
    np.testing.assert_array_equal(again.coverage, result.coverage[5:7])


def test_threads_one_runs_on_one_thread_and_threads_two_agree(series, fast):
    psutil = pytest.importorskip("psutil")
    det, result = fast
    proc = psutil.Process()
    before = proc.num_threads()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(3):
        det(series)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert cpu / wall < 1.2, f"threads=1 used {cpu / wall:.2f} cores"
    assert proc.num_threads() <= before
    two = CloudDetector("fast", threads=2)(series)
    np.testing.assert_array_equal(two.flags, result.flags)


def test_describe_is_json_with_versions_and_parameters(fast):
    det, _ = fast
    info = json.loads(json.dumps(det.describe()))
    assert info["method"] == "fast" and info["threads"] == 1
    assert {"s2cloudless", "lightgbm", "numpy", "scipy"} <= set(info["versions"])
    assert info["s2cloudless_mask"] == S2CLOUDLESS_PARAMS
    assert info["detectors"] == list(schema.DETECTORS)
    assert len(info["model"]["sha256"]) == 64


def test_bad_arguments_are_refused_with_a_message(series):
    with pytest.raises(ValueError, match="method"):
        CloudDetector("magic")
    with pytest.raises(ValueError, match="threads"):
        CloudDetector(threads=0)
    with pytest.raises(ValueError, match="shape"):
        CloudDetector()(series[0])
    with pytest.raises(ValueError, match="dtype"):
        CloudDetector()(series.astype(np.float32) / 10000)
