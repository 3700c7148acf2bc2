"""A check that nothing computes: a dask scheduler that refuses to run any graph.

Written here with dask's public scheduler interface (``dask.config.set(scheduler=get)``)
instead of importing ``xarray.tests``, which is not a public API.
"""

from __future__ import annotations

import contextlib

import dask


class DaskComputed(RuntimeError):
    """A graph was computed inside :func:`raise_if_dask_computes`."""


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Fail when dask computes more than ``max_computes`` graphs inside the block."""
    count = 0

    def get(dsk, keys, **kwargs):
        nonlocal count
        count += 1
        if count > max_computes:
            raise DaskComputed(f"dask computed {count} graph(s); expected at most {max_computes}")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=get):
        yield
