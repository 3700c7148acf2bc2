"""Compiled kernels without a C compiler: numba, its on-disk cache, and s2cube's cache files.

A few inner loops (a 30-slot median per pixel, the SSIM window, a decision forest per pixel)
cost many times the decompression of the bytes they work on when written with NumPy, whose
per-call overhead and full-array temporaries dominate. s2cube writes them as plain loops
compiled by numba (LLVM inside the process: no C compiler, no linker), as numbagg, flox or
xarray-spatial do, with :func:`jit`: ``nogil`` (dask threads and s2cube's own thread pools run
them in parallel), ``fastmath=False`` (IEEE arithmetic in the order written, so the values
equal the NumPy formulas' and LightGBM's), ``error_model="numpy"`` (a division by zero gives
inf/NaN as in NumPy instead of raising) and ``cache=True``. One kernel relaxes one flag: the
SSIM window (:mod:`s2cube.kernels.metrics`) allows ``contract`` only, i.e. ``a * b + c`` may
become one fused multiply-add where the CPU has FMA, as GCC did for the C kernel it replaces;
no reordering, no assumption about NaN or infinity.

numba is imported, and a kernel compiled for the host CPU, at the kernel's first call (not at
``import s2cube``): ~0.2 s for the import and 0.7–2.6 s per kernel and argument type
(``benchmarks/bench_kernels.py``). The machine code is cached on disk, so a later process loads
a kernel in milliseconds (the first one also starts numba's runtime, ~0.25 s). numba looks for a
writable cache directory in this order: ``$NUMBA_CACHE_DIR``, the package's ``__pycache__``,
then ``~/.cache/numba``; read-only site-packages in a worker image are fine. When none of them
is writable (a read-only home too), :func:`jit` caches into s2cube's own cache directory (see
:func:`cache_dir`, which ends in a per-process temporary directory), and when even that fails
it compiles in every process. Never an error.

Where numba cannot be imported, :func:`available` is False (logged once) and each caller runs
its NumPy twin instead, with the same values. :func:`cache_dir` and :func:`write_atomic` keep
other cached files (the cloud model's tables): written atomically, so concurrent processes and
dask workers sharing a cache are safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The options of every kernel (see the module docstring).
JIT_OPTIONS: dict[str, Any] = {"nogil": True, "fastmath": False, "error_model": "numpy",
                               "cache": True}


class NativeUnavailable(RuntimeError):
    """A compiled kernel cannot run here (numba is not installed); callers fall back."""


@cache
def _numba() -> Any:
    """The numba module, imported on first use (not at ``import s2cube``), or None."""
    try:
        import numba
    except Exception as exc:  # not installed, or broken (too old for this NumPy, no llvmlite...)
        logger.warning("numba cannot be imported (%s): s2cube's kernels run in NumPy, several "
                       "times slower; pip install numba", exc)
        return None
    return numba


def available() -> bool:
    """True where the kernels are compiled by numba; False where the NumPy twins must run.

    Imports numba on the first call (~0.2 s), so ``import s2cube`` stays light.
    """
    return _numba() is not None


def numba_version() -> str | None:
    """numba's version, or None where it cannot be imported."""
    numba = _numba()
    return None if numba is None else numba.__version__


class Kernel:
    """A function compiled by numba on its first call, with :data:`JIT_OPTIONS`.

    Made by :func:`jit`. The compilation (or loading from numba's on-disk cache) happens in the
    first call, under a lock, so threads calling at once compile once. Kernels call no other
    kernels (numba would not know this wrapper).

    Raises
    ------
    NativeUnavailable
        When called where numba cannot be imported (check :func:`available` first).
    """

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func = fn
        self.options = {**JIT_OPTIONS, **options}
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self._dispatcher: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<s2cube kernel {self.__module__}.{self.__qualname__}>"

    def __call__(self, *args: Any) -> Any:
        d = self._dispatcher
        return (d if d is not None else self.dispatcher())(*args)

    def dispatcher(self) -> Any:
        """The numba dispatcher (made on first use; it compiles per argument types)."""
        with self._lock:
            if self._dispatcher is None:
                numba = _numba()
                if numba is None:
                    raise NativeUnavailable(f"{self.__name__} needs numba, which cannot be imported")
                self._dispatcher = _njit(numba, self.py_func, self.options)
        return self._dispatcher


def jit(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Compile ``fn`` with numba on first call (:class:`Kernel`); ``@jit`` or ``@jit(**options)``."""
    if fn is None:
        return lambda f: Kernel(f, options)
    return Kernel(fn, options)


def _njit(numba: Any, fn: Callable[..., Any], opts: dict[str, Any]) -> Any:
    """``numba.njit(**opts)(fn)``, caching on disk wherever a directory is writable."""
    if not opts.get("cache"):
        return numba.njit(**opts)(fn)
    try:
        return numba.njit(**opts)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        logger.info("numba has no writable cache directory for %s (%s); using s2cube's",
                    fn.__name__, exc)
    try:
        with _numba_cache_dir(cache_dir("numba")):
            return numba.njit(**opts)(fn)
    except RuntimeError as exc:
        logger.warning("cannot cache the compiled %s on disk (%s): it is compiled in every "
                       "process", fn.__name__, exc)
        return numba.njit(**{**opts, "cache": False})(fn)


@contextlib.contextmanager
def _numba_cache_dir(path: Path) -> Iterator[None]:
    """numba's cache directory set to ``path`` while a kernel is decorated, then restored.

    numba picks a function's cache directory when it is decorated and keeps it, so nothing
    else in the process (other packages' numba functions) sees the change.
    """
    from numba.core import config as numba_config

    config: Any = numba_config  # CACHE_DIR is set at run time (from NUMBA_CACHE_DIR), untyped
    before = config.CACHE_DIR
    config.CACHE_DIR = str(path)
    try:
        yield
    finally:
        config.CACHE_DIR = before


def cache_dir(kind: str, override: str | os.PathLike | None = None) -> Path:
    """A writable cache directory: ``override``, ``$S2CUBE_CACHE_DIR``, or the user cache.

    The user cache is ``$XDG_CACHE_HOME/s2cube/<kind>`` (``~/.cache/s2cube/<kind>``). When it
    cannot be created, a per-process temporary directory is used (and things get rebuilt).
    """
    if override is not None:
        path = Path(override)
    elif os.environ.get("S2CUBE_CACHE_DIR"):
        path = Path(os.environ["S2CUBE_CACHE_DIR"])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "s2cube" / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as exc:
        path = _fallback_dir(kind)
        logger.warning("s2cube cache unusable (%s); using %s", exc, path)
    return path


@cache
def _fallback_dir(kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"s2cube-{kind}-"))


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
