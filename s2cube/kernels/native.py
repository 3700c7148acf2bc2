"""Small C kernels, compiled once with the machine's C compiler and cached on disk.

Some inner loops (a 30-slot median per pixel, a decision forest per pixel) cost many times
the decompression of the bytes they work on when written with NumPy, whose per-call
overhead and full-array temporaries dominate. s2cube ships them as short C sources, compiled
on first use (``cc -O3``, well under a second) into ``~/.cache/s2cube/<kind>/`` (or
``$S2CUBE_CACHE_DIR``) and loaded with :mod:`ctypes`, which releases the GIL during the call.
Every caller keeps a NumPy path with the same results for machines without a compiler: a
:class:`NativeUnavailable` from here means "use it".

Files are written atomically (a temporary file then a rename), so concurrent processes and
dask workers sharing a cache are safe, and a kill mid-compile leaves no broken library.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

CFLAGS = ("-O3", "-shared", "-fPIC")


class NativeUnavailable(RuntimeError):
    """A compiled kernel cannot be built or loaded here; callers fall back to NumPy."""


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
        os.chmod(tmp, 0o755 if path.suffix == ".so" else 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def compiler() -> str:
    """The C compiler: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name
    raise NativeUnavailable("no C compiler (cc, gcc or clang) found on PATH; set CC")


def compile_library(source: str, name: str, cache: Path) -> Path:
    """Compile ``source`` into ``cache`` once per source, flags and platform; its path.

    Raises
    ------
    NativeUnavailable
        No compiler, or it failed (its first 500 characters of stderr are in the message).
    """
    tag = f"{source}{CFLAGS}{platform.machine()}{sys.platform}".encode()
    path = cache / f"{name}-{hashlib.sha256(tag).hexdigest()[:16]}.so"
    if path.exists():
        return path
    cc = compiler()
    with tempfile.TemporaryDirectory(prefix=f"s2cube-{name}-") as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)

        def write(out: str) -> None:
            cmd = [*cc.split(), *CFLAGS, "-o", out, str(src), "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode:
                raise NativeUnavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[:500]}")

        try:
            write_atomic(path, write)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeUnavailable(f"cannot compile the {name} kernel with {cc}: {exc}") from exc
    logger.info("compiled the %s kernel to %s", name, path)
    return path


@cache
def load_library(source: str, name: str) -> ctypes.CDLL:
    """The compiled ``source`` loaded in this process (compiled into the user cache if needed)."""
    path = compile_library(source, name, cache_dir("kernels"))
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {path}: {exc}; delete it to rebuild") from exc
