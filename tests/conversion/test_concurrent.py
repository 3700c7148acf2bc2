"""Two conversions into one cube on local disk: the second refuses clearly (exit 3) and writes
nothing; root-metadata updates are compare-and-swap; a lock left by a crash never blocks.

The same on S3 (SeaweedFS): ``tests/s3/test_s3_concurrent.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from s2cube.errors import ConversionError
from s2cube.io.storage import parse_location
from s2cube_conversion.lock import (
    LOCK_KEY,
    Conflict,
    CubeLock,
    CubeLockedError,
    Holder,
    LocalCas,
    cas_store,
)


@pytest.fixture
def run_ids() -> dict[str, str]:
    """Run ids unique to one test (a process remembers the runs that ended in it)."""
    tag = uuid.uuid4().hex[:8]
    return {k: f"run-{k}-{tag}" for k in "abc"}


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2cube.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


# --- compare-and-swap on local disk --------------------------------------------------------------

def test_local_create_is_exclusive_and_replace_needs_the_version_read(tmp_path):
    store = cas_store(parse_location(tmp_path / "cube.zarr"))
    assert isinstance(store, LocalCas)
    v1 = store.create("a/zarr.json", b"one")
    with pytest.raises(Conflict):
        store.create("a/zarr.json", b"two")
    v2 = store.replace("a/zarr.json", b"three", v1)
    with pytest.raises(Conflict):  # v1 is stale now
        store.replace("a/zarr.json", b"four", v1)
    with pytest.raises(Conflict):
        store.delete("a/zarr.json", v1)
    assert store.read("a/zarr.json").data == b"three"
    store.delete("a/zarr.json", v2)
    assert store.read("a/zarr.json") == store.read("nothing")
    leftovers = [p.name for p in (tmp_path / "cube.zarr" / "a").iterdir()]
    assert leftovers == [], leftovers  # no temporary file or mutex left behind


COUNTER = """
import sys
from s2cube.io.storage import parse_location
from s2cube_conversion.lock import Conflict, cas_store
store = cas_store(parse_location(sys.argv[1]))
done = conflicts = 0
while done < int(sys.argv[2]):
    cur = store.read("n")
    try:
        store.replace("n", str(int(cur.data) + 1).encode(), cur.version)
        done += 1
    except Conflict:
        conflicts += 1
print(conflicts)
"""


def test_concurrent_local_replaces_lose_no_update(tmp_path):
    """4 processes add 1 to a counter 25 times each, read-modify-write: the counter ends at 100."""
    cube = tmp_path / "cube.zarr"
    cas_store(parse_location(cube)).create("n", b"0")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(cube), "25"],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    conflicts = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert (cube / "n").read_bytes() == b"100", conflicts


def test_a_mutex_left_by_a_crash_is_broken(tmp_path):
    cube = tmp_path / "cube.zarr"
    store = cas_store(parse_location(cube))
    version = store.create("zarr.json", b"{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    from s2cube_conversion import lock

    holder = {**lock._process_identity(), "pid": int(dead), "pid_start": None}
    (cube / "zarr.json.cas").write_text(json.dumps(holder))  # its process is gone
    store.replace("zarr.json", b'{"a": 1}', version)
    assert not (cube / "zarr.json.cas").exists()
    (cube / "zarr.json.cas").write_text("")  # unreadable, from another machine: by its age
    old = time.time() - lock.MUTEX_STALE_S - 5
    os.utime(cube / "zarr.json.cas", (old, old))
    store.replace("zarr.json", b'{"a": 2}', store.read("zarr.json").version)
    assert store.read("zarr.json").data == b'{"a": 2}'


ROOT_WRITER = """
import sys
from s2cube.io.storage import parse_location
from s2cube_conversion.write import update_root
cube, who = parse_location(sys.argv[1]), sys.argv[2]
for j in range(20):
    def add(meta, j=j):
        meta = meta or {"zarr_format": 3, "node_type": "group", "attributes": {}}
        meta["attributes"][f"{who}-{j}"] = j
        return meta
    update_root(cube, add)
"""


def test_root_updates_from_several_processes_are_all_kept(tmp_path):
    """Blind writes would lose most of these; compare-and-swap keeps every one."""
    cube = tmp_path / "cube.zarr"
    procs = [subprocess.Popen([sys.executable, "-c", ROOT_WRITER, str(cube), f"p{i}"])
             for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    attrs = json.loads((cube / "zarr.json").read_text())["attributes"]
    assert set(attrs) == {f"p{i}-{j}" for i in range(3) for j in range(20)}


# --- the conversion lock -------------------------------------------------------------------------

def test_a_live_lock_refuses_with_who_holds_it_and_how_to_recover(run_ids, tmp_path):
    loc = parse_location(tmp_path / "cube.zarr")
    with CubeLock(loc, run_ids["a"]):
        with pytest.raises(CubeLockedError) as err:
            CubeLock(loc, run_ids["b"]).acquire()
    msg = str(err.value)
    assert "is being written by another conversion" in msg and f"pid {os.getpid()}" in msg
    assert "run the same command again" in msg and "--break-lock" in msg and LOCK_KEY in msg
    assert not (tmp_path / "cube.zarr" / LOCK_KEY).exists()  # released on exit


HOLD = """
import sys, time
from s2cube.io.storage import parse_location
from s2cube_conversion.lock import CubeLock
CubeLock(parse_location(sys.argv[1]), "killed-run").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_of_a_killed_process_is_taken_over_at_once(run_ids, tmp_path):
    cube = tmp_path / "cube.zarr"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cube)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(CubeLockedError, match="killed-run"[:12]):
        CubeLock(parse_location(cube), run_ids["b"]).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    started = time.monotonic()
    with CubeLock(parse_location(cube), run_ids["c"]):
        held = json.loads((cube / LOCK_KEY).read_text())
        assert held["run"] == run_ids["c"] and held["pid"] == os.getpid()
    assert time.monotonic() - started < 2


def _foreign_lock(cube, heartbeat_age: float, ttl: float = 120.0) -> None:
    """A lock written by a conversion on another machine, last heard from ``heartbeat_age`` ago."""
    now = time.time()
    holder = Holder("elsewhere-run", "other-host", "other-host|boot|pidns", 4242, None,
                    now - heartbeat_age - 60, now - heartbeat_age, ttl)
    cas_store(parse_location(cube)).create(LOCK_KEY, holder.encode())


def test_a_lock_from_another_machine_blocks_until_its_heartbeat_is_too_old(run_ids, tmp_path):
    cube = tmp_path / "cube.zarr"
    _foreign_lock(cube, heartbeat_age=5)
    with pytest.raises(CubeLockedError) as err:
        CubeLock(parse_location(cube), run_ids["b"]).acquire()
    assert "other-host" in str(err.value) and "120 s after it was last heard from" in str(err.value)
    (cube / LOCK_KEY).unlink()
    _foreign_lock(cube, heartbeat_age=300)  # gone: not heard from for longer than its ttl
    with CubeLock(parse_location(cube), run_ids["c"]):
        assert json.loads((cube / LOCK_KEY).read_text())["run"] == run_ids["c"]


def test_break_lock_takes_over_and_the_old_holder_stops_before_finalising(run_ids, tmp_path):
    loc = parse_location(tmp_path / "cube.zarr")
    first = CubeLock(loc, run_ids["a"], heartbeat=0.05)
    first.acquire()
    with CubeLock(loc, run_ids["b"], break_lock=True):
        deadline = time.monotonic() + 10
        while first.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.lost and "taken over" in first.lost
        with pytest.raises(ConversionError, match="stops before finalising"):
            first.check()
        first.release()  # must not delete the new holder's lock
        assert json.loads((tmp_path / "cube.zarr" / LOCK_KEY).read_text())["run"] == run_ids["b"]
    assert not (tmp_path / "cube.zarr" / LOCK_KEY).exists()


def test_the_heartbeat_refreshes_the_lock(run_ids, tmp_path):
    loc = parse_location(tmp_path / "cube.zarr")
    with CubeLock(loc, run_ids["a"], heartbeat=0.05):
        first = json.loads((tmp_path / "cube.zarr" / LOCK_KEY).read_text())["heartbeat"]
        time.sleep(0.5)
        later = json.loads((tmp_path / "cube.zarr" / LOCK_KEY).read_text())["heartbeat"]
    assert later > first


# --- the command, twice at once ----------------------------------------------------------------

def test_convert_refuses_while_another_conversion_holds_the_cube(tiny_archive, tmp_path):
    """Deterministic: this process holds the lock; the command exits 3, writing nothing."""
    cube = tmp_path / "cube.zarr"
    with CubeLock(parse_location(cube), "test-holder"):
        run = cli("convert", tiny_archive, cube, "--workers", "1", "--no-progress", timeout=120)
        assert run.returncode == 3, run.stderr
        assert "Traceback" not in run.stderr and run.stderr.startswith("error: ")
        assert "is being written by another conversion" in run.stderr
        assert f"pid {os.getpid()}" in run.stderr and "--break-lock" in run.stderr
        written = sorted(p.relative_to(cube).as_posix() for p in cube.rglob("*") if p.is_file())
        assert written == [LOCK_KEY]  # nothing but the holder's lock
        info = cli("info", cube)
        assert info.returncode == 2 and "Traceback" not in info.stderr
    run = cli("convert", tiny_archive, cube, "--workers", "1", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert not (cube / LOCK_KEY).exists()


def test_info_of_a_cube_being_written_names_the_conversion(tiny_archive, tmp_path):
    cube = tmp_path / "cube.zarr"
    assert cli("convert", tiny_archive, cube, "--workers", "1", "--no-progress").returncode == 0
    root = json.loads((cube / "zarr.json").read_text())
    root["attributes"]["s2cube_state"] = "writing"  # as begin() leaves it, small vars not yet
    root.pop("consolidated_metadata")
    (cube / "zarr.json").write_text(json.dumps(root))
    for name in ("coverage", "valid_s2"):
        shutil.rmtree(cube / name)
    with CubeLock(parse_location(cube), "writer-run"):
        info = cli("info", cube)
    assert info.returncode == 2 and "WARNING" not in info.stderr
    assert "conversion has not finished" in info.stderr
    assert "a conversion is writing it now" in info.stderr and "wait for it" in info.stderr
    info = cli("info", cube)  # the writer is gone
    assert "if no conversion is running, run the same `s2cube convert` command again" \
        in info.stderr


def test_two_conversions_into_one_local_cube_at_once(tiny_archive, tmp_path, dask_client):
    """Both commands at the same moment: one converts, the other converts too (it came
    after) or refuses with exit 3 and one clear line; the cube equals a lone conversion."""
    import xarray as xr

    from s2cube_conversion import convert

    reference = tmp_path / "reference.zarr"
    convert(tiny_archive, reference, client=dask_client)
    cube = tmp_path / "twice.zarr"
    args = [sys.executable, "-m", "s2cube.cli", "convert", str(tiny_archive), str(cube),
            "--no-progress", "--scheduler", dask_client.scheduler_info()["address"]]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 3]), outs
    for code, (_, err) in zip([p.returncode for p in procs], outs):
        assert "Traceback" not in err, err
        if code == 3:
            assert err.startswith("error: ") and "is being written by another conversion" in err
    a, b = xr.open_zarr(cube), xr.open_zarr(reference)
    for name in b.variables:
        assert a[name].equals(b[name]), name
    assert not (cube / LOCK_KEY).exists()
