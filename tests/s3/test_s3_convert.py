"""The converter end to end on S3: GeoTIFFs in a bucket, ``s2cube convert s3://… s3://…``,
the cube opened by plain xarray in a process that never imports s2cube; faults during a
conversion (a dask worker killed, two conversions into one cube at once); no secret in
the cube, the logs, the progress output or the error messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from s2cube.io.storage import parse_location, zarr_store

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def open_s3(url: str, options: dict) -> xr.Dataset:
    """The cube through s2cube's store (obstore), without dask: the fast way to compare."""
    return xr.open_zarr(zarr_store(parse_location(url, options), read_only=True), chunks=None)


def open_local(path) -> xr.Dataset:
    return xr.open_zarr(path, chunks=None)


def cube_bytes(seaweed, url: str) -> bytes:
    """Every object of the cube, concatenated with its key (for greps)."""
    loc = parse_location(url)
    client = seaweed.client()
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                                 Prefix=loc.key + "/"):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=loc.bucket, Key=obj["Key"])["Body"].read()
            out += [obj["Key"].encode(), body]
    return b"\n".join(out)


def assert_no_secret(seaweed, *texts: str | bytes) -> None:
    for secret in (seaweed.admin.secret_key, seaweed.reader.secret_key):
        for text in texts:
            data = text if isinstance(text, bytes) else text.encode()
            assert secret.encode() not in data, "a secret leaked"


FRESH_READER = textwrap.dedent("""
    import json, sys
    import xarray as xr
    cfg = json.load(sys.stdin)  # secrets on stdin, never on the command line
    ds = xr.open_zarr(cfg["url"], storage_options=cfg["storage_options"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("s2cube", "s2cube_conversion"))
    print(json.dumps({
        "s2cube_modules": leaked,
        "sizes": dict(ds.sizes),
        "dtypes": {v: str(ds[v].dtype) for v in ("s2", "s1", "cloud_mask", "cloud_prob")},
        "s2_sum": int(ds.s2.astype("uint64").sum().compute()),
        "s2_patch": ds.s2.isel(roi=0, time=3, band=[3, 2, 1], y=slice(0, 32),
                               x=slice(32, 64)).values.ravel().tolist()[:50],
        "coverage_sum": float(ds.coverage.sum().compute()),
        "state": ds.attrs.get("s2cube_state"),
    }))
""")


@pytest.fixture
def cli(dask_cluster, env_without_aws):
    """``s2cube ARGS`` in a fresh process on the session's dask cluster, AWS settings = env."""

    def run(*args: str, env: dict[str, str], timeout: float = 240):
        if args and args[0] == "convert":
            args = (*args, "--scheduler", dask_cluster.address)
        return subprocess.run([sys.executable, "-m", "s2cube.cli", *args],
                              env=env_without_aws(**env), capture_output=True, text=True,
                              timeout=timeout)

    return run


def test_convert_s3_to_s3_and_open_in_a_process_without_s2cube(seaweed, s3_archive, cli,
                                                                 reference_cube, dask_cluster,
                                                                 same_cube, env_without_aws):
    cube = "s3://cubes/e2e/cube.zarr"
    # the CLI as a user runs it: credentials only in the standard AWS variables, -vv logs
    run = cli("-vv", "convert", s3_archive, cube, env=seaweed.env("admin"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "4 patch locations" in run.stdout

    reader = seaweed.storage_options("reader")  # read-only credentials suffice
    fresh = subprocess.run([sys.executable, "-c", FRESH_READER], capture_output=True, text=True,
                           input=json.dumps({"url": cube, "storage_options": reader}),
                           env=env_without_aws(), timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = json.loads(fresh.stdout)
    ref = open_local(reference_cube)
    assert got["s2cube_modules"] == []
    assert got["state"] == "complete"
    assert got["sizes"] == dict(ref.sizes)
    assert got["dtypes"] == {"s2": "uint16", "s1": str(ref.s1.dtype), "cloud_mask": "uint8",
                             "cloud_prob": "uint8"}
    assert got["s2_sum"] == int(ref.s2.astype("uint64").sum())
    assert got["s2_patch"] == ref.s2.isel(roi=0, time=3, band=[3, 2, 1], y=slice(0, 32),
                                          x=slice(32, 64)).values.ravel().tolist()[:50]
    assert np.isclose(got["coverage_sum"], float(ref.coverage.sum()))
    same_cube(open_s3(cube, reader), ref)
    # no secret in the cube's objects (attrs, journal, chunks), the logs, the progress bar,
    # or the workers' logs
    worker_logs = [p.read_bytes() for p in Path(dask_cluster.root).glob("*.log")]
    assert_no_secret(seaweed, cube_bytes(seaweed, cube), run.stdout, run.stderr, *worker_logs)


def test_a_dask_worker_killed_mid_conversion_gives_the_same_cube(seaweed, s3_archive,
                                                                  reference_cube, dask_cluster,
                                                                  same_cube):
    from dask.distributed import Client

    from s2cube_conversion import convert

    cube = "s3://cubes/worker-kill/cube.zarr"
    options = seaweed.storage_options()
    killed: list[int] = []
    with Client(dask_cluster.address) as client:

        def kill_a_busy_worker(done: int, total: int) -> None:
            if killed or done != 1:
                return
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        try:
            report = convert(s3_archive, cube, storage_options=options, client=client,
                             progress=kill_a_busy_worker)
        except Exception as exc:  # say what reached the store, to tell a lost write apart
            keys = seaweed.client().list_objects_v2(Bucket="cubes", Prefix="worker-kill/")
            exc.add_note(f"objects in S3: {[o['Key'] for o in keys.get('Contents', [])]}")
            raise
        client.wait_for_workers(2, timeout=60)  # the nanny brings the worker back
    assert killed, "no worker was busy when the first patch finished"
    assert report.ok and report.converted == 4
    same_cube(open_s3(cube, options), open_local(reference_cube))


def test_two_conversions_into_one_cube_at_once(seaweed, s3_archive, reference_cube,
                                               dask_cluster, same_cube, env_without_aws):
    cube = "s3://cubes/twice/cube.zarr"
    args = [sys.executable, "-m", "s2cube.cli", "convert", s3_archive, cube, "--no-progress",
            "--scheduler", dask_cluster.address]
    env = env_without_aws(**seaweed.env("admin"))
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 0], [0, 3]), outs  # 3: refused, another conversion holds it
    for out, err in outs:
        assert_no_secret(seaweed, out, err)
    same_cube(open_s3(cube, seaweed.storage_options()), open_local(reference_cube))
    for code, (_, err) in zip(codes, outs):
        assert "Traceback" not in err, err
        if code == 3:  # the one that lost the race: one clear line, who holds the cube
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
            assert "is being written by another conversion" in err and "--break-lock" in err
    lock = seaweed.client().list_objects_v2(Bucket="cubes",
                                            Prefix="twice/cube.zarr/_s2cube_journal/lock")
    assert not lock.get("Contents"), "the winner left its lock behind"


CONVERT_ERRORS = {
    "wrong secret": ({"AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}, "s3://cubes/bad/a.zarr",
                     "secret key"),
    "missing bucket": ({}, "s3://no-such-bucket/a.zarr", "bucket 'no-such-bucket' does not exist"),
    "read-only credential": ("reader", "s3://cubes/bad/b.zarr", "may not write"),
}


@pytest.mark.parametrize("case", list(CONVERT_ERRORS))
def test_conversion_refuses_clearly_and_fast(seaweed, s3_archive, cli, case):
    extra, cube, hint = CONVERT_ERRORS[case]
    env = seaweed.env("reader") if extra == "reader" else {**seaweed.env("admin"), **extra}
    started = time.monotonic()
    run = cli("convert", s3_archive, cube, env=env, timeout=60)
    assert run.returncode != 0
    assert hint in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert time.monotonic() - started < 30  # the CLI's imports included
    assert_no_secret(seaweed, run.stdout, run.stderr)
    assert "wrong-secret-value" not in run.stderr
