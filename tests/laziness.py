"""xarray's own check that nothing computes, imported once for the tests that need it."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # xarray.tests warns that it is not a public API
    from xarray.tests import raise_if_dask_computes

__all__ = ["raise_if_dask_computes"]
