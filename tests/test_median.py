"""The clear-value median: the compiled kernel and the NumPy network agree with np.nanmedian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from s2cube.kernels import median as med


def _nanmedian(values: np.ndarray, clear: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN pixels
        return np.nanmedian(np.where(clear[:, None], values.astype(float), np.nan), axis=0)


def test_the_compiled_kernel_is_available_here():
    # CI has gcc: the fast path must not silently fall back to NumPy
    assert med._kernel() is not None


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


def test_more_slots_than_the_kernel_holds_and_other_dtypes_use_numpy():
    rng = np.random.default_rng(2)
    for values in (rng.integers(0, 9, (70, 1, 50), dtype=np.uint16),
                   rng.normal(size=(30, 2, 50)).astype(np.float32)):
        clear = rng.random((values.shape[0], 50)) > 0.5
        np.testing.assert_allclose(med.clear_median(values, clear), _nanmedian(values, clear),
                                   rtol=1e-6)


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


def test_without_a_compiler_numpy_gives_the_same_answer(monkeypatch, tmp_path):
    from s2cube.kernels import native

    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang
    monkeypatch.setenv("S2CUBE_CACHE_DIR", str(tmp_path))  # nothing compiled before
    native.load_library.cache_clear()
    med._kernel.cache_clear()
    try:
        with pytest.raises(native.NativeUnavailable, match="no C compiler"):
            native.load_library(med.KERNEL_C, "median")
        assert med._kernel() is None
        rng = np.random.default_rng(4)
        values = rng.integers(0, 10001, (30, 2, 300), dtype=np.uint16)
        clear = rng.random((30, 300)) > 0.5
        np.testing.assert_array_equal(med.clear_median(values, clear),
                                      _nanmedian(values, clear).astype(np.float32))
    finally:
        native.load_library.cache_clear()
        med._kernel.cache_clear()
