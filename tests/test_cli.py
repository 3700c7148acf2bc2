"""The ``s2cube`` command as a user runs it: synth → convert → validate → info, and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest


def s2cube(*args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2cube.cli", *map(str, args)], check=check,
                          capture_output=True, text=True, timeout=600)


def test_help_lists_the_commands():
    out = s2cube("--help").stdout
    for command in ("synth", "convert", "info", "validate"):
        assert command in out


@pytest.mark.slow
def test_synth_convert_validate_info(tmp_path):
    archive, cube = tmp_path / "archive", tmp_path / "cube.zarr"
    made = s2cube("synth", archive, "--roi", "ROIs1868_73", "--grid", "2x2", "--patch-size", "16",
                  "--slots", "4", "--junk")
    assert "wrote" in made.stdout
    conv = s2cube("convert", archive, cube, "--workers", "1", "--no-progress")
    assert "4 patch locations, 4 converted" in conv.stdout
    assert "notice: skipped" in conv.stderr and ".DS_Store" in conv.stderr
    val = s2cube("validate", archive, cube)
    assert "0 difference(s)" in val.stdout
    info = s2cube("info", cube).stdout
    assert "state=complete" in info and "asiaEast" in info and "test" in info


def test_problems_exit_1_and_name_the_file(tiny_archive, tmp_path):
    bad = sorted(tiny_archive.glob("ROIs*/*/S2/1/*.tif"))[2]
    bad.write_bytes(b"II*\0 not really a tiff")
    cube = tmp_path / "cube.zarr"
    conv = s2cube("convert", tiny_archive, cube, "--workers", "1", "--no-progress", check=False)
    assert conv.returncode == 1
    assert bad.name in conv.stderr
    info = s2cube("info", cube).stdout
    assert "1 problem(s)" in info and bad.name in info


def test_validate_exits_1_on_a_difference(tiny_archive, tmp_path):
    import zarr

    cube = tmp_path / "cube.zarr"
    s2cube("convert", tiny_archive, cube, "--workers", "1", "--no-progress")
    arr = zarr.open_array(str(cube / "s1"), mode="r+")
    block = arr[0, 2, :, :16, :16]
    block[0, 0, 0] = 99.0
    arr[0, 2, :, :16, :16] = block
    val = s2cube("validate", tiny_archive, cube, check=False)
    assert val.returncode == 1 and "1 difference(s)" in val.stdout and "ImgNo_2_" in val.stdout


def test_bad_root_is_a_clear_error(tmp_path):
    out = s2cube("convert", tmp_path / "nowhere", tmp_path / "c.zarr", "--no-progress", check=False)
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "ROIs1158/" in out.stderr
    assert "Traceback" not in out.stderr
