"""Faults of the object store on the data path: the server is killed and restarted while a
reader loops over patches, or a proxy throttles a fraction of the requests (503 SlowDown);
the retries ride it out and every read returns the right pixels."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr
from servers import FaultyS3Proxy, SeaweedServer

from s2cube.io.storage import parse_location, zarr_store

pytestmark = pytest.mark.s3

P = 32
SHAPE = (1, 30, 13, 2 * P, 2 * P)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of this module's own: these tests kill it."""
    with SeaweedServer(tmp_path_factory.mktemp("seaweed-faults")) as server:
        server.create_bucket("cubes")
        yield server


@pytest.mark.parametrize("backend", ["fsspec", "obstore"])
def test_reads_survive_a_server_kill_and_restart(own_server, backend):
    loc = parse_location(f"s3://cubes/{backend}.zarr", own_server.storage_options())
    data = np.random.default_rng(5).integers(0, 10000, SHAPE, dtype=np.uint16)
    arr = zarr.create_array(zarr_store(loc, backend=backend), name="s2", shape=SHAPE,
                            dtype=data.dtype, chunks=(1, 1, 13, P, P), shards=(1, 30, 13, P, P),
                            fill_value=0)
    arr[:] = data
    reader = zarr.open_array(zarr_store(loc, read_only=True, backend=backend), path="s2")
    results: list[tuple[float, float, bool]] = []  # (start, end, right pixels)
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        rng = np.random.default_rng(0)
        while not stop.is_set():
            t, r, c = (int(v) for v in rng.integers(0, (30, 2, 2)))
            window = (0, t, slice(None), slice(r * P, (r + 1) * P), slice(c * P, (c + 1) * P))
            started = time.monotonic()
            try:
                ok = bool(np.array_equal(reader[window], data[window]))
            except BaseException as exc:  # recorded, the test fails on it below
                errors.append(exc)
                return
            results.append((started, time.monotonic(), ok))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.5)
    killed = time.monotonic()
    own_server.restart(down_for=1.0)  # SIGKILL, 1 s down, start on the same ports
    back = time.monotonic()
    deadline = back + 60
    while (time.monotonic() < deadline and not errors
           and sum(start > back for start, _, _ in results) < 20):
        time.sleep(0.1)
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "the read loop hangs"
    assert not errors, f"a read failed across the restart: {errors[0]!r}"
    assert all(ok for _, _, ok in results), "a read returned wrong pixels (fill values?)"
    assert any(start < killed < end for start, end, _ in results), "no read spanned the outage"
    assert sum(start > back for start, _, _ in results) >= 20, "reads did not resume"


@pytest.mark.slow
def test_server_killed_mid_conversion_then_the_same_command_gives_the_same_cube(
        own_server, archive, reference_cube, dask_cluster, same_cube):
    """SIGKILL the S3 server when the first patch is done, bring it back a second later:
    the conversion rides it out on retries, or fails and the same command resumes it."""
    import xarray as xr
    from dask.distributed import Client

    from s2cube_conversion import convert

    own_server.upload_folder(archive, "cubes", "archive")
    options = own_server.storage_options()  # explicit: the workers' env points elsewhere
    cube = "s3://cubes/server-kill/cube.zarr"
    restarts: list[threading.Thread] = []
    restart_errors: list[BaseException] = []

    def restart_later() -> None:
        try:
            time.sleep(1.0)
            own_server.start()
        except BaseException as exc:
            restart_errors.append(exc)

    def kill_the_server(done: int, total: int) -> None:
        if done == 1 and not restarts:
            own_server.kill()
            restarts.append(threading.Thread(target=restart_later, daemon=True))
            restarts[0].start()

    with Client(dask_cluster.address) as client:
        try:
            first = convert("s3://cubes/archive", cube, storage_options=options, client=client,
                            progress=kill_the_server)
            resumed = None
        except Exception:  # the same command resumes it, once the server is back
            restarts[0].join(60)
            assert not restart_errors and own_server.pid, restart_errors
            first = None
            resumed = convert("s3://cubes/archive", cube, storage_options=options,
                              client=client)
    assert restarts, "the server was never killed"
    restarts[0].join(60)
    report = resumed or first
    print("conversion", "resumed by a second run" if resumed else "rode out the restart")
    assert report.ok and report.patches == 4
    if resumed is not None:
        assert resumed.resumed >= 1  # the patch done before the kill was not redone
    got = xr.open_zarr(zarr_store(parse_location(cube, options), read_only=True), chunks=None)
    same_cube(got, xr.open_zarr(reference_cube, chunks=None))


@pytest.fixture(scope="module")
def s3_cube(own_server, archive, tmp_path_factory) -> str:
    """The small archive converted locally (one in-process worker), uploaded to the server."""
    from dask.distributed import Client

    from s2cube_conversion import convert

    local = tmp_path_factory.mktemp("faults-cube") / "cube.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        report = convert(archive, local, client=client)
    assert report.ok, report.problems
    assert own_server.upload_folder(local, "cubes", "epoch/cube.zarr") > 10
    return "s3://cubes/epoch/cube.zarr"


def _epoch(batches) -> dict[int, dict]:
    """``{sample id: its arrays}`` of an epoch; fails on a sample yielded twice."""
    out: dict[int, dict] = {}
    for batch in batches:
        for j, pdx in enumerate(batch["pdx"].tolist()):
            assert pdx not in out, f"sample {pdx} yielded twice"
            out[pdx] = {f"{part}/{key}": np.asarray(v[j])
                        for part in ("input", "target") for key, v in batch[part].items()}
    return out


def test_epoch_survives_a_server_kill_and_restart(own_server, s3_cube):
    """SIGKILL the server after the epoch's first batch, bring it back a second later: the
    loader's retries ride it out and the epoch yields every sample once, with its pixels."""
    from s2cube.training.batches import iter_batches

    kwargs = dict(storage_options=own_server.storage_options(), split="all", batch_size=1,
                  shuffle=True, seed=3, epoch=0)
    reference = _epoch(iter_batches(s3_cube, **kwargs))
    assert len(reference) >= 4

    restarts: list[threading.Thread] = []
    restart_errors: list[BaseException] = []

    def start_later() -> None:
        try:
            time.sleep(1.0)
            own_server.start()
        except BaseException as exc:  # recorded, the test fails on it below
            restart_errors.append(exc)

    times: list[float] = []  # when each batch arrived; [0] is the kill

    def disturbed():
        for i, batch in enumerate(iter_batches(s3_cube, **kwargs)):
            times.append(time.monotonic())
            yield batch
            if i == 0:  # mid-epoch: the next batches read from a dead, then restarted server
                own_server.kill()
                times[0] = time.monotonic()
                restarts.append(threading.Thread(target=start_later, daemon=True))
                restarts[0].start()

    got = _epoch(disturbed())
    assert restarts, "the server was never killed"
    restarts[0].join(60)
    assert not restart_errors and own_server.pid, restart_errors
    assert times[1] - times[0] > 0.9, "the batch after the kill did not wait for the server"
    assert sorted(got) == sorted(reference), "the disturbed epoch lost or added samples"
    for pdx, arrays in reference.items():
        assert arrays.keys() == got[pdx].keys()
        for key, value in arrays.items():
            np.testing.assert_array_equal(got[pdx][key], value, err_msg=f"sample {pdx}: {key}")


def test_the_proxy_fails_requests_as_a_throttling_s3_does(own_server):
    """A failed request is an S3 error (503, code SlowDown) that botocore parses; the others
    are forwarded (signatures hold); the proxy listens on loopback only."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import ClientError

    own_server.client().put_object(Bucket="cubes", Key="proxy/probe", Body=b"pixels")
    with pytest.raises(ValueError, match="is not http:"):
        FaultyS3Proxy("http://192.0.2.1:8333")
    with FaultyS3Proxy(own_server.endpoint_url, fail_rate=1.0) as proxy:
        assert proxy.server.server_address[0] == "127.0.0.1"
        client = botocore.session.Session().create_client(  # no retries: see each answer
            "s3", endpoint_url=proxy.url, region_name="us-east-1",
            aws_access_key_id=own_server.admin.access_key,
            aws_secret_access_key=own_server.admin.secret_key,
            config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(ClientError) as err:
            client.get_object(Bucket="cubes", Key="proxy/probe")
        assert err.value.response["Error"]["Code"] == "SlowDown"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert (proxy.failed, proxy.forwarded) == (1, 0)
        proxy.fail_rate = 0.0
        assert client.get_object(Bucket="cubes", Key="proxy/probe")["Body"].read() == b"pixels"
        assert client.head_object(Bucket="cubes", Key="proxy/probe")["ContentLength"] == 6
        assert (proxy.failed, proxy.forwarded) == (1, 2)
        assert [m for m, _ in proxy.requests] == ["GET", "GET", "HEAD"]


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_epochs_through_a_throttling_proxy_equal_direct_reads(own_server, s3_cube, backend,
                                                               monkeypatch):
    """A proxy fails 10 % of the requests with 503 SlowDown: the retries hide every failure
    and each epoch yields every sample once, with the pixels of a direct read."""
    from s2cube.training.batches import iter_batches

    monkeypatch.setenv("S2CUBE_STORAGE_BACKEND", backend)
    options = own_server.storage_options()
    kwargs = dict(split="all", batch_size=1, shuffle=True, seed=3)
    with FaultyS3Proxy(own_server.endpoint_url, fail_rate=0.1, seed=1) as proxy:
        proxied = {**options, "endpoint_url": proxy.url}
        for epoch in range(3):
            direct = _epoch(iter_batches(s3_cube, storage_options=options, epoch=epoch,
                                         **kwargs))
            assert len(direct) >= 4
            got = _epoch(iter_batches(s3_cube, storage_options=proxied, epoch=epoch, **kwargs))
            assert sorted(got) == sorted(direct), "the throttled epoch lost or added samples"
            for pdx, arrays in direct.items():
                assert arrays.keys() == got[pdx].keys()
                for key, value in arrays.items():
                    np.testing.assert_array_equal(got[pdx][key], value,
                                                  err_msg=f"epoch {epoch}, sample {pdx}: {key}")
    print(f"{backend}: {proxy.forwarded} requests forwarded, {proxy.failed} failed (503)")
    assert proxy.failed >= 3, "the proxy failed too few requests to test anything"
    assert proxy.forwarded > proxy.failed
