"""The chunk reader returns exactly what zarr returns, reading only the frames asked for.

``write_cube`` builds a small cube in the decided layout (sharded pixel arrays with inner
chunk (1, 1, C, P, P) and shard (1, 30, C, P, P), crc32c on every chunk, small variables in
one chunk, consolidated, ``s2cube_state = complete``) with known values: ties, blank frames
and missing frames.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from s2cube import schema
from s2cube.io import reader
from s2cube.training import batches as samples

T = schema.N_SLOTS


def _mask_mean(mask: np.ndarray) -> np.float32:
    return np.mean(mask.astype(np.float32))


def write_cube(path: Path, *, rois=("ROIs1868_73", "ROIs2017_8"), grid=(2, 3), patch=16,
               seed=0, missing=((0, 4, 0, 1),), blank=((1, 2, 1, 0),),
               holes=((1, 1, 2),)) -> Path:
    """A cube with known contents. ``missing``/``blank`` are (roi, slot, row, col); ``holes``
    (roi, row, col) grid positions without a patch."""
    import xarray as xr
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    rng = np.random.default_rng(seed)
    n_roi, (rows, cols), p = len(rois), grid, patch
    sizes = schema.dim_sizes(n_roi, rows, cols, p)
    pid = np.full((n_roi, rows, cols), -1, np.int32)
    for i in range(n_roi):
        first = 100 + 50 * i
        for r in range(rows):
            for c in range(cols):
                pid[i, r, c] = first + 16 * r + c
    for i, r, c in holes:
        pid[i, r, c] = -1
    present = np.broadcast_to((pid >= 0)[:, None], (n_roi, T, rows, cols)).copy()
    valid = present.copy()
    for i, t, r, c in missing:
        valid[i, t, r, c] = False
    shape_px = (n_roi, T, sizes["y"], sizes["x"])
    s2 = rng.integers(0, 12000, size=(n_roi, T, 13, sizes["y"], sizes["x"])).astype(np.uint16)
    s1 = rng.normal(-15, 8, size=(n_roi, T, 2, sizes["y"], sizes["x"])).astype(np.float32)
    s1[:, :, :, 0, :3] = np.nan
    prob = rng.integers(0, 101, size=shape_px).astype(np.uint8)
    # clouds per frame: whole-frame levels so coverage is exactly known, with many ties at 0
    level = rng.choice([0.0, 0.0, 0.0, 0.3, 0.6, 1.0], size=(n_roi, T, rows, cols))
    field = rng.random(shape_px)
    flags = np.zeros(shape_px, np.uint8)
    cov = np.full((n_roi, T, rows, cols, 3), np.nan, np.float32)
    blank_arr = np.zeros((n_roi, T, rows, cols), bool)
    for i, t, r, c in blank:
        blank_arr[i, t, r, c] = True
    for i in range(n_roi):
        for t in range(T):
            for r in range(rows):
                for c in range(cols):
                    ys, xs = slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)
                    if not valid[i, t, r, c]:
                        s2[i, t, :, ys, xs] = 0
                        s1[i, t, :, ys, xs] = np.nan
                        prob[i, t, ys, xs] = 0
                        continue
                    if blank_arr[i, t, r, c]:
                        s2[i, t, :, ys, xs] = 0
                    cloud = field[i, t, ys, xs] < level[i, t, r, c]
                    shadow = field[i, t, ys, xs] > 0.97
                    flags[i, t, ys, xs] = cloud * 1 + cloud * 2 + shadow * 4
                    if blank_arr[i, t, r, c]:
                        cov[i, t, r, c] = 1.0
                        continue
                    m = (flags[i, t, ys, xs] & 1) != 0
                    cov[i, t, r, c, 0] = _mask_mean(m)
                    mp = samples.mask_post("s2cloudless_map")
                    out = np.empty((p, p), np.float32)
                    mp(prob[i, t, ys, xs], out)
                    cov[i, t, r, c, 1] = np.mean(out)
                    cov[i, t, r, c, 2] = _mask_mean((flags[i, t, ys, xs] & 6) != 0)
    days = np.datetime64("2018-01-05") + 12 * np.arange(T)
    s2_date = np.where(valid, days[None, :, None, None], np.datetime64("NaT"))
    s1_date = np.where(valid, (days - 3)[None, :, None, None], np.datetime64("NaT"))
    transform = np.array([(10.0, 0.0, 300000.0 + 1e4 * i, 0.0, -10.0, 5000000.0 - 2e4 * i)
                          for i in range(n_roi)])
    infos = [schema.roi_info(r) for r in rois]
    ds = xr.Dataset(
        {
            "coverage": (("roi", "time", "row", "col", "detector"), cov),
            "valid_s2": (("roi", "time", "row", "col"), valid),
            "valid_s1": (("roi", "time", "row", "col"), valid),
            "blank": (("roi", "time", "row", "col"), blank_arr),
            "s2_date": (("roi", "time", "row", "col"), s2_date.astype("datetime64[ns]")),
            "s1_date": (("roi", "time", "row", "col"), s1_date.astype("datetime64[ns]")),
            "patch_id": (("roi", "row", "col"), pid),
        },
        coords={
            "roi": np.array(rois, dtype=object), "time": np.arange(T, dtype=np.int32),
            "band": np.array(schema.BANDS, dtype=object),
            "polarization": np.array(schema.POLARIZATIONS, dtype=object),
            "detector": np.array(schema.DETECTORS, dtype=object),
            "transform": (("roi", "affine"), transform),
            "n_rows": ("roi", np.full(n_roi, rows, np.int32)),
            "n_cols": ("roi", np.full(n_roi, cols, np.int32)),
            "split": ("roi", np.array([i.split for i in infos], dtype=object)),
            "region": ("roi", np.array([i.region for i in infos], dtype=object)),
        },
        attrs={"title": schema.TITLE, "schema_version": schema.SCHEMA_VERSION,
               "patch_size": p, schema.ATTR_STATE: schema.STATE_COMPLETE,
               "cloud_detection": {"method": "test"},
               "grids": [{"roi": r, "epsg": 32650 + i, "crs_wkt": "", "transform": list(t),
                          "n_rows": rows, "n_cols": cols}
                         for i, (r, t) in enumerate(zip(rois, transform))]},
    )
    enc = {k: {"compressors": (ZstdCodec(), Crc32cCodec())} for k in ds.variables}
    for k in ("s2_date", "s1_date"):
        enc[k].update({"units": schema.DATE_UNITS, "dtype": "int32",
                       "_FillValue": np.int32(schema.DATE_FILL)})
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    data = {"s2": s2, "s1": s1, "cloud_prob": prob, "cloud_mask": flags}
    for var, arr in data.items():
        spec = schema.VARIABLES[var]
        a = zarr.create_array(
            str(path), name=var, shape=arr.shape, dtype=spec.dtype, dimension_names=spec.dims,
            chunks=schema.inner_chunks(var, sizes, p), shards=schema.shard_shape(var, sizes, p),
            fill_value=spec.fill, config={"write_empty_chunks": True},
            compressors=(BloscCodec(cname="zstd", clevel=1,
                                    shuffle="shuffle" if var == "s1" else "bitshuffle"),
                         Crc32cCodec()))
        for i in range(n_roi):
            for r in range(rows):
                for c in range(cols):
                    if pid[i, r, c] < 0:
                        continue
                    ys, xs = slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)
                    # one shard write per patch; missing frames are never written
                    for t in range(T):
                        if valid[i, t, r, c]:
                            a[(i, t, ..., ys, xs)] = arr[i, t][..., ys, xs]
    zarr.consolidate_metadata(str(path))
    return path


def shared_cube(tmp_path_factory) -> Path:
    """The default :func:`write_cube` cube, built once per test session."""
    path = tmp_path_factory.getbasetemp() / "s2cube_reader_cube" / "cube.zarr"
    if not (path / "zarr.json").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_cube(path)
    return path


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return shared_cube(tmp_path_factory)


@pytest.fixture(scope="module")
def source(cube):
    from s2cube.io.backend import open_source

    return open_source(cube)[0]


def _reader(cube, source, **kw):
    return reader.ChunkReader(str(cube), source.layouts, roi_names=source.roi_names, **kw)


def _zarr(cube, var):
    import zarr

    return zarr.open_array(str(cube / var), mode="r")


def test_source_has_layouts_and_small_variables(cube, source):
    assert source.roi_names == ("ROIs1868_73", "ROIs2017_8")
    assert source.patch_size == 16 and source.small("coverage").dtype == np.float32
    dates = source.small("s2_date")
    assert dates[0, 3, 0, 0] == np.datetime64("2018-02-10")
    assert np.isnat(dates[0, 4, 0, 1])
    lay = source.layouts["s2"]
    assert lay.chunk == (1, 1, 13, 16, 16) and lay.shard == (1, 30, 13, 16, 16)
    assert lay.checksum and lay.index_crc
    assert lay.object_key(1, 1, 2, 7) == "c/1/0/0/1/2"


def test_frames_equal_zarr_reads_including_missing_frames_and_crops(cube, source):
    rd = _reader(cube, source, threads=2)
    frames = [(0, 0, 1, t) for t in (0, 3, 4, 29)] + [(1, 1, 0, 2), (1, 1, 2, 5)]  # missing, hole
    for var in schema.PIXEL_VARIABLES:
        z = _zarr(cube, var)
        lay = source.layouts[var]
        outs = [np.empty(lay.frame_shape, lay.dtype) for _ in frames]
        rd.read([reader.FrameRequest.at(lay, i, r, c, t, o) for (i, r, c, t), o in zip(frames, outs)])
        for (i, r, c, t), o in zip(frames, outs):
            want = z[(i, t, ..., slice(r * 16, r * 16 + 16), slice(c * 16, c * 16 + 16))]
            np.testing.assert_array_equal(o, want)
    crop = np.empty((3, 5, 7), np.uint16)
    rd.read([reader.FrameRequest.at(source.layouts["s2"], 0, 1, 2, 9, crop,
                                    select=([3, 2, 1], slice(3, 8), slice(8, 15)))])
    np.testing.assert_array_equal(crop, _zarr(cube, "s2")[0, 9, [3, 2, 1], 19:24, 40:47])


def test_shard_index_is_read_once_per_patch_and_only_needed_chunks_are_read(cube, source):
    rd = _reader(cube, source, threads=1)
    lay = source.layouts["s2"]
    out = np.empty((4, 13, 16, 16), np.uint16)
    with reader.counting() as stats:
        rd.read([reader.FrameRequest.at(lay, 0, 0, 0, t, out[k]) for k, t in enumerate((1, 5, 6, 9))])
        rd.read([reader.FrameRequest.at(lay, 0, 0, 0, t, out[k]) for k, t in enumerate((2, 3))])
    assert stats.requests == 1 + 6  # one shard index (cached), then one read per chunk
    assert stats.chunks == 6
    size = os.path.getsize(cube / "s2" / "c/0/0/0/0/0")
    assert stats.bytes < size / 4  # 6 of 30 chunks, not the shard


def test_reader_pickles_without_live_state_and_reopens_per_process(cube, source):
    import pickle

    rd = _reader(cube, source, threads=2)
    out = np.empty((13, 16, 16), np.uint16)
    rd.read([reader.FrameRequest.at(source.layouts["s2"], 0, 0, 0, 0, out)])
    clone = pickle.loads(pickle.dumps(rd))
    assert clone._state is None
    again = np.empty_like(out)
    clone.read([reader.FrameRequest.at(source.layouts["s2"], 0, 0, 0, 0, again)])
    np.testing.assert_array_equal(out, again)
    rd._state["pid"] = -1  # as seen from a forked child: everything is reopened
    rd.read([reader.FrameRequest.at(source.layouts["s2"], 0, 0, 0, 0, again)])
    assert rd._state["pid"] == os.getpid()
    rd.close()
    clone.close()


def test_fsspec_backend_reads_the_same_bytes(cube, source):
    """The object-store path (one concurrent cat_ranges call) on fsspec's memory filesystem."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for root, _dirs, files in os.walk(cube):
        for f in files:
            local = os.path.join(root, f)
            fs.pipe_file("/c1/" + os.path.relpath(local, cube), Path(local).read_bytes())
    rd = reader.ChunkReader("memory://c1", source.layouts, threads=2)
    a = np.empty((3, 2, 16, 16), np.float32)
    rd.read([reader.FrameRequest.at(source.layouts["s1"], 1, 0, 1, t, a[k]) for k, t in enumerate((0, 1, 2))])
    np.testing.assert_array_equal(a, _zarr(cube, "s1")[1, 0:3, :, 0:16, 16:32])


def test_incomplete_or_foreign_cubes_are_refused(tmp_path, cube):
    import shutil

    from s2cube.errors import IncompleteCubeError, NotACubeError
    from s2cube.io.backend import open_source

    copy = tmp_path / "half.zarr"
    shutil.copytree(cube, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"][schema.ATTR_STATE] = schema.STATE_WRITING
    meta["consolidated_metadata"] = None
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IncompleteCubeError, match="not a complete cube"):
        open_source(copy)
    assert open_source(copy, allow_incomplete=True)[0].layouts.keys() == \
        open_source(cube)[0].layouts.keys()
    with pytest.raises(NotACubeError):
        open_source(tmp_path / "nothing")


@pytest.fixture(scope="module")
def s3_cube(cube):
    """The cube on a real S3 server (SeaweedFS on 127.0.0.1), read with read-only credentials."""
    from servers import SeaweedServer, find_weed

    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    import fsspec

    with SeaweedServer() as server:
        server.create_bucket("cubes")
        fsspec.filesystem("s3", **server.storage_options()).put(str(cube), "cubes/c.zarr",
                                                                 recursive=True)
        yield "s3://cubes/c.zarr", server.storage_options("reader")


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_object_store_reads_equal_local_reads(cube, source, s3_cube, backend, monkeypatch):
    from s2cube.io.backend import open_source

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    url, options = s3_cube
    remote = open_source(url, options)[0]
    assert np.array_equal(remote.small("coverage"), source.small("coverage"), equal_nan=True)
    meta = source
    frames = [(0, 0, 1, t) for t in (0, 4, 5, 6)] + [(1, 1, 2, 3)]  # missing frame, hole
    for var in ("s2", "s1", "cloud_mask"):
        lay = meta.layouts[var]
        want = [np.empty(lay.frame_shape, lay.dtype) for _ in frames]
        got = [np.empty(lay.frame_shape, lay.dtype) for _ in frames]
        local = _reader(cube, source)
        local.read([reader.FrameRequest.at(lay, *f, o) for f, o in zip(frames, want)])
        rd = reader.ChunkReader(url, remote.layouts, storage_options=options, backend=backend)
        rd.read([reader.FrameRequest.at(lay, *f, o) for f, o in zip(frames, got)])
        assert type(rd._live()["backend"]).__name__.lower().startswith(f"_{backend}")
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
        rd.close()
