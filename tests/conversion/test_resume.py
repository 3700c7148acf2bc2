"""Kill a conversion (SIGKILL, the whole process group) at several moments, run it again,
and get a cube identical to an uninterrupted run; a half-written cube never looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import xarray as xr

from s2cube_conversion import convert

VOLATILE_ATTRS = {"created", "updated"}


def _records(cube) -> int:
    return len(list((cube / "_s2cube_journal").glob("*/*.json")))


def _state(cube) -> str | None:
    try:
        return json.loads((cube / "zarr.json").read_text())["attributes"].get("s2cube_state")
    except (FileNotFoundError, ValueError, KeyError):
        return None


def assert_same_cube(a_path, b_path) -> None:
    a, b = xr.open_zarr(a_path), xr.open_zarr(b_path)
    assert list(a.roi.values) == list(b.roi.values)
    for name in a.variables:
        assert a[name].equals(b[name]), f"{name} differs after resume"
    drop = lambda attrs: {k: v for k, v in attrs.items() if k not in VOLATILE_ATTRS}  # noqa: E731
    assert drop(a.attrs) == drop(b.attrs)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0, 1, 9])
def test_sigkill_then_resume_gives_the_same_cube(synthetic_archive, small_cube, tmp_path,
                                                  dask_client, kill_at):
    cube = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "s2cube.cli", "convert", str(synthetic_archive), str(cube),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (kill_at == 0 and (cube / "zarr.json").exists()) or (kill_at and _records(cube) >= kill_at):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode == -signal.SIGKILL and _state(cube) is not None:
        assert _state(cube) != "complete" or _records(cube) == 18
        if _state(cube) != "complete":
            from s2cube.errors import IncompleteCubeError

            with pytest.raises(IncompleteCubeError):
                _open_strict(cube)
    report = convert(synthetic_archive, cube, client=dask_client)
    assert report.ok
    assert report.resumed >= kill_at  # finished patches are not converted twice
    assert_same_cube(small_cube, cube)


def test_crash_while_finalising_leaves_an_incomplete_cube_that_resumes(
        synthetic_archive, small_cube, tmp_path, dask_client, monkeypatch):
    import zarr

    from s2cube.errors import IncompleteCubeError

    cube = tmp_path / "crashed.zarr"

    def crash(*args, **kwargs):
        raise OSError("simulated crash while consolidating metadata")

    monkeypatch.setattr(zarr, "consolidate_metadata", crash)
    with pytest.raises(OSError, match="simulated crash"):
        convert(synthetic_archive, cube, client=dask_client)
    assert _state(cube) == "writing"
    with pytest.raises(IncompleteCubeError):
        _open_strict(cube)
    monkeypatch.undo()
    report = convert(synthetic_archive, cube, client=dask_client)
    assert (report.converted, report.resumed) == (0, 18)
    assert_same_cube(small_cube, cube)


def _open_strict(cube):
    from s2cube import open_cube

    return open_cube(cube)
