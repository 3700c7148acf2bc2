"""Damaged cubes: every read path raises a ChunkError naming the chunk, never wrong pixels.

Each case damages one stored chunk of a copy of the converted cube — a flipped byte, a broken
Blosc header (with its checksum recomputed, so only the decoder can tell), a truncated
shard, a garbage shard index, a missing shard — and every way of reading it must refuse:
``open_cube`` values, ``engine="s2cube"``, the composite, the baselines and ``evaluate``,
``ds.s2cube.batches``, ``SEN12MSCRTS``, ``make_loader`` in the main process and in
DataLoader workers, and ``s2cube verify``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import s2cube
from s2cube.errors import ChunkError
from s2cube.io import reader
from s2cube.io.backend import open_source

pytestmark = pytest.mark.usefixtures("local_threads")

ROI, ROW, COL, SLOT = "ROIs2017_8", 1, 2, 5
CASES = ("flipped_byte", "blosc_header", "truncated_shard", "garbage_index", "missing_shard")
REASON = {"flipped_byte": "checksum", "blosc_header": "decode", "truncated_shard": "index",
          "garbage_index": "index", "missing_shard": "missing"}


def _shard(cube: Path, var: str) -> tuple[Path, reader.ArrayLayout, int]:
    meta = json.loads((cube / var / "zarr.json").read_text())
    lay = reader.parse_layout(var, meta)
    roi = list(open_source(cube)[0].roi_names).index(ROI)
    return cube / var / lay.object_key(roi, ROW, COL, SLOT), lay, roi


def damage(cube: Path, case: str, var: str = "s2") -> str:
    """Damage the chunk of ``var`` at (ROI, ROW, COL, SLOT) of ``cube``; return its key."""
    path, lay, _ = _shard(cube, var)
    data = bytearray(path.read_bytes())
    n = lay.index_nbytes
    index = np.frombuffer(bytes(data[-n:-4]), "<u8").reshape(-1, 2)
    off, size = (int(v) for v in index[lay.chunk_in_shard(SLOT)])
    if case == "flipped_byte":
        data[off + size // 2] ^= 0x10
    elif case == "blosc_header":
        data[off + 4:off + 8] = (10**9).to_bytes(4, "little")  # nbytes: a gigabyte
        body = bytes(data[off:off + size - 4])
        data[off + size - 4:off + size] = reader.crc32c(body).to_bytes(4, "little")
    elif case == "truncated_shard":
        data = data[: len(data) // 2]
    elif case == "garbage_index":
        data[-n:] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    elif case == "missing_shard":
        path.unlink()
        return str(path.relative_to(cube))
    path.write_bytes(bytes(data))
    return str(path.relative_to(cube))


@pytest.fixture(scope="module", params=CASES)
def damaged(request, small_cube, tmp_path_factory) -> tuple[Path, str, str]:
    cube = tmp_path_factory.mktemp(request.param) / "cube.zarr"
    shutil.copytree(small_cube, cube)
    key = damage(cube, request.param)
    return cube, key, request.param


def _check(err: BaseException, key: str, case: str) -> None:
    text = str(err)
    assert ROI in text and key in text and f"row {ROW}, col {COL}" in text, text
    if case in ("flipped_byte", "blosc_header"):  # else the whole shard is damaged
        assert f"slot {SLOT}" in text, text
    assert "s2cube verify" in text


def test_open_cube_values_refuse_the_damaged_chunk(damaged):
    cube, key, case = damaged
    ds = s2cube.open_cube(cube)
    with pytest.raises(ChunkError) as info:
        _ = ds.s2.sel(roi=ROI).values
    _check(info.value, key, case)
    assert info.value.variable == "s2" and info.value.reason == REASON[case]
    lazy = xr.open_dataset(cube, engine="s2cube")
    with pytest.raises(ChunkError):
        _ = lazy.s2.sel(roi=ROI, time=SLOT).values
    # the other ROI and the other patches of this one still read
    assert ds.s2.sel(roi="ROIs1868_73").isel(time=SLOT).values.any()
    assert ds.s2.sel(roi=ROI, time=SLOT).isel(y=slice(0, 32), x=slice(0, 32)).values.any()


def test_analyses_refuse_the_damaged_chunk(damaged):
    cube, key, case = damaged
    ds = s2cube.open_cube(cube)
    with pytest.raises(ChunkError) as info:
        ds.s2cube.sel_roi([ROI]).s2cube.composite().compute()
    _check(info.value, key, case)
    plan = ds.s2cube.sample_plan(split="all")
    one = plan[(plan.roi == ROI) & (plan.row == ROW) & (plan.col == COL)].copy()
    one["inputs"] = [(SLOT - 1, SLOT, SLOT + 1)]
    one["target"] = SLOT + 2
    with pytest.raises(ChunkError):
        ds.s2cube.baseline(one, "mosaic").compute()
    one["inputs"] = [(0, 1, 2)]
    one["target"] = SLOT
    p = ds.attrs["patch_size"]
    with pytest.raises(ChunkError):
        ds.s2cube.evaluate(np.zeros((1, 13, p, p), np.float32), one)


def test_loaders_refuse_the_damaged_chunk(damaged):
    torch_mod = pytest.importorskip("s2cube.torch")
    cube, key, case = damaged
    ds = s2cube.open_cube(cube).s2cube.sel_roi([ROI])
    with pytest.raises(ChunkError) as info:
        for _ in ds.s2cube.batches(split="all", mode="seq2seq", batch_size=8, shuffle=False):
            pass
    _check(info.value, key, case)
    drop = torch_mod.SEN12MSCRTS(ds, split="all", sample_type="generic")
    with pytest.raises(ChunkError):
        for i in range(len(drop)):
            drop[i]
    loader = torch_mod.make_loader(ds, split="all", mode="seq2seq", batch_size=8, shuffle=False)
    with pytest.raises(ChunkError):
        list(loader)


def test_verify_lists_the_damaged_chunk(damaged):
    from s2cube.io.verify import verify_cube

    cube, key, _case = damaged
    report = verify_cube(cube)
    assert not report.ok
    assert {(b.roi, b.row, b.col) for b in report.bad} == {(ROI, ROW, COL)}
    assert any(b.key == key for b in report.bad), report.bad


def test_dataloader_workers_raise_the_named_error(small_cube, tmp_path):
    torch_mod = pytest.importorskip("s2cube.torch")
    cube = tmp_path / "cube.zarr"
    shutil.copytree(small_cube, cube)
    key = damage(cube, "flipped_byte")
    loader = torch_mod.make_loader(cube, split="all", mode="seq2seq", batch_size=4,
                                   shuffle=False, num_workers=1, persistent_workers=False)
    with pytest.raises(ChunkError) as info:
        list(loader)
    assert key in str(info.value) and ROI in str(info.value)


def test_plain_zarr_refuses_a_flipped_byte_too(small_cube, tmp_path):
    """The checksum is the Zarr v3 crc32c codec: zarr itself checks it, without s2cube."""
    cube = tmp_path / "cube.zarr"
    shutil.copytree(small_cube, cube)
    damage(cube, "flipped_byte")
    roi = list(open_source(cube)[0].roi_names).index(ROI)
    plain = xr.open_zarr(cube)
    with pytest.raises(Exception, match=r"(?i)checksum|crc"):
        _ = plain.s2.isel(roi=roi, time=SLOT).values


def test_convert_with_verify_rewrites_the_damaged_patches(synthetic_archive, small_cube, tmp_path,
                                                          dask_client):
    from s2cube_conversion import convert

    cube = tmp_path / "cube.zarr"
    shutil.copytree(small_cube, cube)
    damage(cube, "flipped_byte")
    damage(cube, "flipped_byte", var="cloud_mask")
    report = convert(synthetic_archive, cube, client=dask_client, verify=True)
    assert report.converted == 1  # the one patch location holding bad chunks
    ds, ref = s2cube.open_cube(cube), s2cube.open_cube(small_cube)
    np.testing.assert_array_equal(ds.s2.sel(roi=ROI).values, ref.s2.sel(roi=ROI).values)
    from s2cube.io.verify import verify_cube

    assert verify_cube(cube).ok


def test_verify_command_exits_1_listing_the_bad_chunk_and_0_on_a_good_cube(small_cube, tmp_path):
    from click.testing import CliRunner

    from s2cube.cli import main

    good = CliRunner().invoke(main, ["verify", str(small_cube), "--no-progress"])
    assert good.exit_code == 0, good.output
    assert " 0 bad" in good.output
    cube = tmp_path / "cube.zarr"
    shutil.copytree(small_cube, cube)
    key = damage(cube, "flipped_byte")
    bad = CliRunner().invoke(main, ["verify", str(cube), "--no-progress"])
    assert bad.exit_code == 1
    assert key in bad.output and "crc32c mismatch" in bad.output and "--verify" in bad.output
