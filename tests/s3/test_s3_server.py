"""The SeaweedFS launcher: loopback only, credentials enforced, nothing left behind."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import psutil
import pytest
from servers import SeaweedServer

pytestmark = pytest.mark.s3


def _loopback(addr) -> bool:
    return not addr or ipaddress.ip_address(addr.ip).is_loopback


def test_every_socket_of_the_server_is_on_loopback(seaweed):
    seaweed.client().list_buckets()  # some traffic, so there are established connections too
    conns = psutil.Process(seaweed.pid).net_connections(kind="inet")
    listening = [c for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening, "the server listens on nothing?"
    assert all(c.laddr.ip == "127.0.0.1" for c in listening), listening
    assert all(_loopback(c.laddr) and _loopback(c.raddr) for c in conns), conns
    cmdline = " ".join(psutil.Process(seaweed.pid).cmdline())
    assert "-master.telemetry=false" in cmdline and "-ip.bind=127.0.0.1" in cmdline


def test_credentials_are_enforced(seaweed, prefix):
    from botocore.exceptions import ClientError

    seaweed.client("admin").put_object(Bucket="cubes", Key=f"{prefix}/a", Body=b"x")
    assert seaweed.client("reader").get_object(Bucket="cubes", Key=f"{prefix}/a")["Body"].read() == b"x"
    for who, call in [("reader", "put_object"), ("anon", "put_object"), ("anon", "get_object")]:
        kwargs = {"Bucket": "cubes", "Key": f"{prefix}/a"} | ({"Body": b"y"} if call == "put_object"
                                                              else {})
        with pytest.raises(ClientError, match="AccessDenied"):
            getattr(seaweed.client(who), call)(**kwargs)


def test_start_and_stop_leave_nothing_behind(tmp_path):
    with SeaweedServer() as server:
        pid, root, ports = server.pid, server.root, dict(server.ports)
        assert server.startup_seconds < 30
        server.create_bucket("bkt")
        assert (root / "logs").is_dir() and any((root / "data").iterdir())
        sockets = [Path(f"/tmp/seaweedfs-{s}-grpc-{p + 10000}.sock") for s, p in ports.items()]
        assert any(p.exists() for p in sockets)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not root.exists()
    assert not any(p.exists() for p in sockets)


def test_server_is_stopped_when_the_test_body_fails():
    server = SeaweedServer()
    with pytest.raises(RuntimeError, match="boom"), server:
        pid = server.pid
        raise RuntimeError("boom")
    assert not psutil.pid_exists(pid)


def test_kill_and_restart_keep_data_and_ports(tmp_path):
    with SeaweedServer(tmp_path / "sw") as server:
        server.create_bucket("bkt")
        server.client().put_object(Bucket="bkt", Key="k", Body=b"kept")
        port, old = server.ports["s3"], server.pid
        server.restart()
        assert server.ports["s3"] == port and server.pid != old
        assert not psutil.pid_exists(old)
        assert server.client().get_object(Bucket="bkt", Key="k")["Body"].read() == b"kept"
    assert (tmp_path / "sw" / "data").is_dir()  # a given root is the caller's to keep
    assert not any(p.name.startswith("seaweedfs-") and p.name.endswith(f"-{port + 10000}.sock")
                   for p in Path("/tmp").iterdir())


def test_no_aws_settings_of_the_machine_reach_the_server(seaweed):
    env = psutil.Process(seaweed.pid).environ()
    assert not [k for k in env if k.startswith("AWS_")]
    assert os.path.commonpath([env["TMPDIR"], str(seaweed.root)]) == str(seaweed.root)
