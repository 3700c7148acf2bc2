"""Open a cube from anywhere: local paths, ``file://``, ``s3://`` or any fsspec URL.

:func:`open_cube` is ``xr.open_dataset(url, engine="s2cube", chunks=...)``: the root
``zarr.json`` is read once (one request on an object store), every coordinate is built
from it, and the variables are lazy dask arrays over the cube's backend
(:mod:`s2cube.io.backend`), whose reads verify every chunk's checksum. It refuses, with a
message saying why, stores that hold no s2cube cube, cubes of another schema version and
cubes whose conversion has not finished.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import xarray as xr

from s2cube import schema

logger = logging.getLogger(__name__)

#: ``chunks=`` choices: one patch's whole series per dask chunk (the stored shard, the unit of
#: the analyses), or one patch at one slot (the stored inner chunk, the unit of the loader)
CHUNK_CHOICES = {"series": {}, "frame": {"time": 1, "patch": 1}}  # patch: SEN12MS-CR cubes


def open_cube(
    url: str | os.PathLike | Any,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_incomplete: bool = False,
    chunks: str | dict | None = "series",
) -> xr.Dataset:
    """Open an s2cube cube lazily.

    Parameters
    ----------
    url
        A local path, ``file://``, ``s3://bucket/key`` or any fsspec URL of a cube; or a
        STAC Collection, Item or Asset of one (a pystac object, a dict, or the URL of its
        JSON), as ``s2cube stac`` writes them.
    storage_options
        Credentials and settings of the object store (s3fs names: ``key``, ``secret``,
        ``anon``, ``endpoint_url``, ...); the AWS environment and config files work too.
    allow_incomplete
        Open a cube whose conversion is running or stopped before it finished.
    chunks
        ``"series"`` (default): one dask chunk per patch location's whole series (all slots
        and bands of one patch, the stored shard); ``"frame"``: one per patch and slot;
        ``None``: no dask (lazily indexed arrays, read on access); a dict of dim sizes is
        passed to :func:`xarray.open_dataset` as it is.

    Returns
    -------
    xarray.Dataset
        Lazy; nothing but the root metadata has been read.

    Raises
    ------
    NotACubeError
        Nothing is at ``url``, or it holds another dataset (or another schema version).
    IncompleteCubeError
        The cube's ``s2cube_state`` is not ``"complete"`` and ``allow_incomplete`` is False.
    StorageError
        The object store refused: credentials, bucket, permissions.
    """
    from s2cube import stac
    from s2cube.io.backend import S2CubeBackend, coordinates

    if stac.is_stac(url):
        url, storage_options = stac.resolve(url, storage_options)

    if isinstance(chunks, str):
        if chunks not in CHUNK_CHOICES:
            raise ValueError(f"chunks={chunks!r}: use 'series', 'frame', None or a dict of "
                             "dim sizes")
        chunks = dict(CHUNK_CHOICES[chunks])
    elif chunks is not None and not isinstance(chunks, dict):
        raise ValueError(f"chunks={chunks!r}: use 'series', 'frame', None or a dict of dim sizes")
    with warnings.catch_warnings():
        # "frame" splits the stored shards into their inner chunks, the unit the reader
        # reads: xarray's warning about separating stored chunks does not apply
        warnings.filterwarnings("ignore", message=".*separate the stored chunks.*")
        ds = xr.open_dataset(os.fspath(url), engine=S2CubeBackend, chunks=chunks,
                             storage_options=storage_options, allow_incomplete=allow_incomplete)
    # xarray chunked the coordinates too; they come from the root metadata: keep them NumPy
    chunked = {k for k in ds.coords if ds[k].chunks is not None}
    if chunked:
        sizes = {str(d): n for d, n in ds.sizes.items()}
        ds = ds.assign_coords({k: v for k, v in coordinates(sizes, ds.attrs).items()
                               if k in chunked})
    state = ds.attrs.get(schema.ATTR_STATE)
    if state != schema.STATE_COMPLETE:
        logger.warning("opened %s although its s2cube_state is %r", ds.encoding.get("source"), state)
    return ds
