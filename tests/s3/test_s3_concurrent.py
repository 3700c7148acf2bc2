"""Compare-and-swap and the conversion lock on a real S3 server (SeaweedFS ``weed mini``).

SeaweedFS 4 honours S3 conditional writes: ``PUT`` with ``If-None-Match: *`` fails with 412
when the object exists, ``PUT`` with ``If-Match: <ETag>`` fails with 412 when the object
changed, atomically (no update lost under concurrent writers, below). The local-disk twin of
these tests is ``tests/conversion/test_concurrent.py``; two ``s2cube convert`` into one S3
cube at once is ``test_s3_convert.py::test_two_conversions_into_one_cube_at_once``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from s2cube.io.storage import parse_location
from s2cube_conversion.lock import LOCK_KEY, Conflict, CubeLock, CubeLockedError, Holder, S3Cas, cas_store

pytestmark = [pytest.mark.s3]


@pytest.fixture
def run_ids() -> dict[str, str]:
    """Run ids unique to one test (a process remembers the runs that ended in it)."""
    tag = uuid.uuid4().hex[:8]
    return {k: f"run-{k}-{tag}" for k in "abc"}


def test_seaweedfs_rejects_conditional_puts_that_lost(seaweed, prefix):
    """What the server does with the raw headers (boto3), then through s2cube's store."""
    from botocore.exceptions import ClientError

    client = seaweed.client()
    key = f"{prefix}/raw"
    first = client.put_object(Bucket="cubes", Key=key, Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as err:
        client.put_object(Bucket="cubes", Key=key, Body=b"two", IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as err:
        client.put_object(Bucket="cubes", Key=key, Body=b"two", IfMatch='"not-the-etag"')
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    client.put_object(Bucket="cubes", Key=key, Body=b"three", IfMatch=first["ETag"])
    assert client.get_object(Bucket="cubes", Key=key)["Body"].read() == b"three"

    store = cas_store(parse_location(f"s3://cubes/{prefix}/cube.zarr", seaweed.storage_options()))
    assert isinstance(store, S3Cas)
    v1 = store.create("zarr.json", b"{}")
    with pytest.raises(Conflict):
        store.create("zarr.json", b"{}")
    v2 = store.replace("zarr.json", b'{"a": 1}', v1)
    with pytest.raises(Conflict):
        store.replace("zarr.json", b'{"a": 2}', v1)
    assert store.read("zarr.json") == type(store.read("zarr.json"))(b'{"a": 1}', v2)
    store.delete("zarr.json", v2)
    assert store.read("zarr.json").data is None


def test_concurrent_s3_replaces_lose_no_update(seaweed, prefix):
    """8 writers add 1 to a counter 10 times each, read-modify-write with If-Match: 80."""
    store = cas_store(parse_location(f"s3://cubes/{prefix}", seaweed.storage_options()))
    store.create("n", b"0")

    def add(_):
        done = conflicts = 0
        while done < 10:
            cur = store.read("n")
            try:
                store.replace("n", str(int(cur.data) + 1).encode(), cur.version)
                done += 1
            except Conflict:
                conflicts += 1
        return conflicts

    with ThreadPoolExecutor(8) as pool:
        conflicts = sum(pool.map(add, range(8)))
    assert store.read("n").data == b"80"
    assert conflicts > 0  # the race happened, and lost nothing


def test_only_one_of_many_creates_wins(seaweed, prefix):
    store = cas_store(parse_location(f"s3://cubes/{prefix}", seaweed.storage_options()))

    def create(i):
        try:
            store.create("lock", str(i).encode())
            return 1
        except Conflict:
            return 0

    for k in range(3):
        store = cas_store(parse_location(f"s3://cubes/{prefix}/{k}", seaweed.storage_options()))
        with ThreadPoolExecutor(12) as pool:
            assert sum(pool.map(create, range(12))) == 1


def test_a_live_lock_on_s3_refuses_and_a_stale_one_is_taken_over(run_ids, seaweed, prefix):
    loc = parse_location(f"s3://cubes/{prefix}/cube.zarr", seaweed.storage_options())
    with CubeLock(loc, run_ids["a"]):
        with pytest.raises(CubeLockedError, match="is being written by another conversion"):
            CubeLock(loc, run_ids["b"]).acquire()
    assert cas_store(loc).read(LOCK_KEY).data is None  # released
    now = time.time()
    gone = Holder("elsewhere", "other-host", "other-host|x|y", 99, None, now - 900, now - 600, 120)
    cas_store(loc).create(LOCK_KEY, gone.encode())
    with CubeLock(loc, run_ids["c"]):
        assert json.loads(cas_store(loc).read(LOCK_KEY).data)["run"] == run_ids["c"]


def test_convert_into_an_s3_cube_another_conversion_holds_exits_3(seaweed, prefix, s3_archive,
                                                                  env_without_aws):
    cube = f"s3://cubes/{prefix}/cube.zarr"
    loc = parse_location(cube, seaweed.storage_options())
    started = time.monotonic()
    with CubeLock(loc, "test-holder"):
        run = subprocess.run([sys.executable, "-m", "s2cube.cli", "convert", s3_archive, cube,
                              "--workers", "1", "--no-progress"],
                             env=env_without_aws(**seaweed.env("admin")), capture_output=True,
                             text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1
    assert f"pid {os.getpid()}" in run.stderr and "--break-lock" in run.stderr
    assert time.monotonic() - started < 30  # refused before any worker starts
    keys = seaweed.client().list_objects_v2(Bucket="cubes", Prefix=f"{prefix}/")
    assert [o["Key"] for o in keys.get("Contents", [])] == []  # the holder's lock is gone too
