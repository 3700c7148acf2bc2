"""The clear-value median: the numba kernel and the NumPy network agree with np.nanmedian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from s2cube.kernels import median as med
from s2cube.kernels import native


def _nanmedian(values: np.ndarray, clear: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN pixels
        return np.nanmedian(np.where(clear[:, None], values.astype(float), np.nan), axis=0)


def test_the_compiled_kernel_is_available_here():
    # numba is a dependency: the fast path must not silently fall back to NumPy
    assert native.available() and med._kernel_available()


@pytest.mark.parametrize("t", [1, 2, 7, 30, 33, 64])
@pytest.mark.parametrize("native_kernel", [True, False])
def test_clear_median_is_the_median_of_the_clear_values(t, native_kernel):
    rng = np.random.default_rng(t)
    values = rng.integers(0, 65536, (t, 3, 700), dtype=np.uint16)  # 700: a partial tile
    clear = rng.random((t, 700)) > 0.4
    clear[:, :5] = False  # never clear
    clear[:, 5:9] = True  # always clear
    got = med.clear_median(values, clear, native_kernel=native_kernel)
    assert got.dtype == np.float32 and got.shape == (3, 700)
    np.testing.assert_array_equal(got, _nanmedian(values, clear).astype(np.float32))
    assert np.isnan(got[:, :5]).all()


def test_kernel_and_numpy_are_bit_identical_on_strided_input():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 10001, (30, 13, 64, 64), dtype=np.uint16)[:, ::2]  # band stride 2
    clear = rng.random((30, 64 * 64)) > 0.6
    flat = values.reshape(30, 7, -1)
    fast = med.clear_median(flat, clear)
    slow = med.clear_median(flat, clear, native_kernel=False)
    np.testing.assert_array_equal(fast, slow)


def test_long_series_and_other_dtypes_take_the_kernel_with_numpys_values():
    rng = np.random.default_rng(2)
    floats = rng.normal(size=(30, 2, 50)).astype(np.float32)
    floats[3, 0, :10] = np.nan  # NaN propagates through the network as in NumPy's
    floats[4, 1, 5], floats[5, 1, 6] = np.inf, -np.inf
    for values in (rng.integers(0, 9, (70, 1, 50), dtype=np.uint16),  # more than 64 slots
                   rng.integers(0, 65536, (300, 2, 40), dtype=np.uint16),  # more than 255
                   rng.integers(-500, 500, (12, 2, 50), dtype=np.int16),
                   rng.integers(0, 256, (9, 3, 50), dtype=np.uint8),
                   rng.integers(0, 10001, (7, 2, 50), dtype=np.uint16).astype(">u2"),
                   rng.normal(size=(30, 2, 50)), floats, floats.astype(np.float16)):
        clear = rng.random((values.shape[0], values.shape[2])) > 0.5
        got = med.clear_median(values, clear)
        np.testing.assert_array_equal(got, med.clear_median(values, clear, native_kernel=False))
        if not np.isnan(values).any():
            np.testing.assert_allclose(got, _nanmedian(values, clear), rtol=1e-6)


def test_an_empty_series_gives_nan_and_bad_input_a_message():
    got = med.clear_median(np.zeros((0, 2, 5), np.uint16), np.zeros((0, 5), bool))
    assert got.shape == (2, 5) and np.isnan(got).all()
    with pytest.raises(ValueError, match=r"\(T, B, M\)"):
        med.clear_median(np.zeros((3, 4), np.uint16), np.ones((3, 4), bool))


def test_median_of_clear_takes_any_axis_and_broadcasts_the_flags():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 12000, (4, 40, 7), dtype=np.uint16)
    clear = rng.random((1, 40, 7)) > 0.4
    got = med.median_of_clear(values, clear, axis=1)
    flags = np.moveaxis(np.broadcast_to(clear, values.shape), 1, 0)[:, 0]  # the same for every row
    expected = _nanmedian(np.moveaxis(values, 1, 0), flags)
    assert got.shape == (4, 7)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_a_wrong_clear_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 5\).*expected \(3, 4\)"):
        med.clear_median(np.zeros((3, 2, 4), np.uint16), np.ones((3, 5), bool))


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_the_sorting_network_sorts_like_numpy(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 65536, (n, 5, 6), dtype=np.uint16)
    np.testing.assert_array_equal(med.sort_series(values), np.sort(values, axis=0))


def test_without_numba_numpy_gives_the_same_answer_and_says_so(monkeypatch, caplog):
    rng = np.random.default_rng(4)
    values = rng.integers(0, 10001, (30, 2, 300), dtype=np.uint16)
    clear = rng.random((30, 300)) > 0.5
    fast = med.clear_median(values, clear)
    monkeypatch.setattr(native, "_numba", lambda: None)  # as if numba could not be imported
    med._kernel_available.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=med.__name__):
            slow = med.clear_median(values, clear)
        assert "numba is not installed" in caplog.text
        np.testing.assert_array_equal(slow, fast)
        np.testing.assert_array_equal(slow, _nanmedian(values, clear).astype(np.float32))
    finally:
        med._kernel_available.cache_clear()
