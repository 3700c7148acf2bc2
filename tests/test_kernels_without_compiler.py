"""The fast kernels need no C compiler: numba compiles them with a PATH that has no cc/gcc/clang.

The first tests run a fresh interpreter (the venv's python, by absolute path) whose PATH is a
temporary directory holding only a symlink to that python, with ``CC`` unset and an empty numba
cache (``NUMBA_CACHE_DIR``), so every kernel is compiled in that process, not loaded: the
kernels' values there must equal this process's bit for bit, and the kernels' own tests must
pass there on the fast path (they assert it themselves: no NumPy fallback, the numba engine for
clouds). Another run hides numba itself and checks the NumPy fallback: same values, and a log
line. The last test takes numba's cache directories away: s2cube's is used, then none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("cc", "gcc", "clang", "c99", "tcc")
#: the cloud tests that run the numba engine (the others test the reference or other engines)
CLOUD_KERNEL_TESTS = ("test_fast_path_gives_s2cloudless_masks_and_reference_coverage",
                      "test_kernel_probabilities_are_lightgbms_bit_for_bit",
                      "test_fast_needs_no_c_compiler")

#: computes every kernel's values on fixed inputs and reports which path ran
SCRIPT = textwrap.dedent("""
    import json, logging, os, shutil, sys
    import numpy as np
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if os.environ.get("HIDE_NUMBA"):
        sys.modules["numba"] = None  # "import numba" fails: as where it is not installed
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from test_kernels_without_compiler import kernel_values
    from s2cube.kernels import median, metrics, native

    values = kernel_values()
    np.savez(sys.argv[1], **values)
    kernels = {"median": median._median_kernel, "ssim": metrics._ssim_kernel,
               "errors": metrics._errors_kernel}
    try:
        from s2cube_conversion import _treemodel
        kernels["forest"] = _treemodel._forest_kernel
    except ImportError:
        pass
    report = {
        "compilers": {c: shutil.which(c) for c in ("cc", "gcc", "clang")},
        "CC": os.environ.get("CC"),
        "numba": native.numba_version(),
        "compiled": {k: [str(s) for s in (f._dispatcher.signatures if f._dispatcher else [])]
                     for k, f in kernels.items()},
        "cache_misses": {k: sum(f._dispatcher.stats.cache_misses.values()) if f._dispatcher else 0
                         for k, f in kernels.items()},
        "cloud_engine": values.get("engine_name", np.array("")).item(),
    }
    print(json.dumps(report))
""")


def kernel_values() -> dict[str, np.ndarray]:
    """Every kernel's output on fixed inputs (the cloud model's too where s2cloudless is installed)."""
    from s2cube.analysis import metrics as M
    from s2cube.kernels import median

    rng = np.random.default_rng(42)
    out: dict[str, np.ndarray] = {}
    values = rng.integers(0, 10001, (30, 13, 700), dtype=np.uint16)
    clear = rng.random((30, 700)) > 0.4
    out["median"] = median.clear_median(values, clear)
    out["median_f32"] = median.clear_median(values[:7].astype(np.float32) / 3, clear[:7])
    t = rng.random((13, 40, 33))
    p = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    masks = (rng.random((2, 40, 33)) > 0.7).astype(np.uint8)
    for name, (a, b) in {"f64": (p, t), "f32": (p.astype(np.float32), t.astype(np.float32))}.items():
        m = M.image_metrics(a, b, masks)
        out[f"metrics_{name}"] = np.array([m[k] for k in M.METRICS])
    try:
        from s2cube_conversion import _treemodel
        from s2cube_conversion._realpixels import load_dn
    except ImportError:  # the convert extra is not installed
        return out
    try:
        engine = _treemodel.get_engine("kernel", 1)
    except _treemodel.EngineUnavailable:  # no numba: the converter uses ONNX Runtime instead
        return out
    dn = np.minimum(load_dn()[:, :, :48, :40], _treemodel.MAX_DN).astype(np.uint16)
    out["cloud_prob"] = engine.predict_frames(dn)
    out["engine_name"] = np.array(engine.name)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _no_compiler_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment with PATH = a directory holding only ``python``, no CC, a cold numba cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "NUMBA_DISABLE_JIT")}
    env.update(PATH=str(bin_dir), NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"),
               TESTS_DIR=str(ROOT / "tests"), PYTHONDONTWRITEBYTECODE="1", **extra)
    assert [p.name for p in bin_dir.iterdir()] == ["python"]
    assert not any(shutil.which(c, path=env["PATH"]) for c in COMPILERS)
    return env


def _run_script(tmp_path: Path, **extra: str) -> tuple[dict, dict[str, np.ndarray], str]:
    env = _no_compiler_env(tmp_path, **extra)
    out = tmp_path / "values.npz"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(out) as z:
        values = {k: z[k] for k in z.files}
    return report, values, done.stderr


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        if v.dtype.kind == "f":  # bit for bit, NaN included
            np.testing.assert_array_equal(got[k].view(f"u{v.itemsize}"), v.view(f"u{v.itemsize}"),
                                          err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_kernels_compile_without_a_c_compiler_and_give_the_same_values(tmp_path):
    report, values, _ = _run_script(tmp_path, S2CUBE_CACHE_DIR=str(tmp_path / "s2cube-cache"))
    assert report["compilers"] == {"cc": None, "gcc": None, "clang": None} and report["CC"] is None
    assert report["numba"]
    for name, signatures in report["compiled"].items():  # the fast path ran, compiled right there
        assert signatures, f"{name}: the numba kernel did not run (NumPy fallback?)"
        assert report["cache_misses"][name] >= 1, f"{name} came from a cache, not compiled"
    if "cloud_prob" in values:
        assert report["cloud_engine"] == "numba-kernel"
    _assert_same(values, kernel_values())


def test_the_kernels_tests_pass_without_a_c_compiler(tmp_path):
    env = _no_compiler_env(tmp_path)
    selection = ["tests/test_median.py", "tests/test_metrics.py"]
    if _has("s2cloudless"):
        selection += [f"tests/conversion/test_clouds.py::{name}" for name in CLOUD_KERNEL_TESTS]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *selection], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900, check=False)
    tail = done.stdout[-3000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], tail


def test_without_numba_the_numpy_twins_give_the_same_values_and_say_so(tmp_path):
    report, values, log = _run_script(tmp_path, HIDE_NUMBA="1",
                                      S2CUBE_CACHE_DIR=str(tmp_path / "s2cube-cache"))
    assert report["numba"] is None
    assert not any(report["compiled"].values())
    assert "numba cannot be imported" in log
    assert "the clear-value median runs in NumPy" in log and "the image metrics run in NumPy" in log
    expected = kernel_values()
    expected.pop("cloud_prob", None)  # without numba the clouds come from ONNX Runtime/LightGBM
    expected.pop("engine_name", None)
    values.pop("cloud_prob", None)
    values.pop("engine_name", None)
    np.testing.assert_array_equal(values["median"], expected["median"])
    np.testing.assert_array_equal(values["median_f32"], expected["median_f32"])
    for k in ("metrics_f64", "metrics_f32"):
        np.testing.assert_allclose(values[k], expected[k], rtol=1e-12, atol=1e-12)


def test_importing_s2cube_does_not_import_numba():
    code = ("import sys, s2cube, s2cube.analysis.metrics, s2cube.analysis.baselines\n"
            "print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # numba is imported by the first kernel call


def _triple(x):  # a kernel for the cache tests below (defined in a file: numba can cache it)
    return 3 * x


def test_numba_without_a_writable_cache_uses_s2cubes_then_compiles_in_memory(tmp_path,
                                                                             monkeypatch, caplog):
    from numba.core import caching, config

    from s2cube.kernels import native

    if not native.available():
        return
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # the name differs by version
    # numba finds no cache directory: not $NUMBA_CACHE_DIR (unset), not __pycache__, not ~/.cache
    monkeypatch.setattr(impl, "_locator_classes", [caching.UserProvidedCacheLocator])
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setenv("S2CUBE_CACHE_DIR", str(tmp_path))
    kernel = native.jit(_triple)
    with caplog.at_level("INFO", logger=native.__name__):
        assert kernel(14) == 42
    assert "using s2cube's" in caplog.text and config.CACHE_DIR == ""  # restored
    assert any(tmp_path.rglob("*.nbi")), "the kernel was not cached in S2CUBE_CACHE_DIR"
    # nothing writable at all: compiled in this process, with a warning, still no error
    monkeypatch.setattr(impl, "_locator_classes", [])
    caplog.clear()
    with caplog.at_level("WARNING", logger=native.__name__):
        assert native.jit(_triple)(5) == 15
    assert "compiled in every process" in caplog.text
