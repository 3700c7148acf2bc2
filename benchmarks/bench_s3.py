"""S3 backends side by side: fsspec (s3fs) vs obstore, for what s2cube does on S3.

    .venv/bin/python benchmarks/bench_s3.py [zarr] [objects] [convert] [open]
        [--patch 96] [--grid 3] [--repeat 3] [--json out.json]

Starts SeaweedFS (``weed mini``, loopback only; its startup time is measured too) and
measures, per backend (``s2cube.storage`` with ``backend="fsspec"`` or ``"obstore"``):

- zarr:    an array shaped like the cube's ``s2`` (shard = one patch's 30 slots x 13
           bands, inner chunk = one slot), the converter's codec, pixels cut from the real
           L1C scenes when present:
           write  every shard (one PUT each), MB/s of raw pixels;
           read   the whole array, MB/s of raw pixels;
           sample one inner chunk (one patch, one slot, all bands) at a time in random
                  order, as the loader reads: ms per sample (byte-range GETs);
           open   opening the array from a fresh store, ms.
- objects: ``filesystem(loc).cat`` of 60 GeoTIFF-sized objects (one patch's series, as
           the converter reads them): ms per object.
- convert: the converter, S3 -> S3 vs local -> local, on one in-process dask worker,
           without cloud detection (the I/O path only) and with it (the default):
           patches/s and the S3/local ratio.
- open:    ``s2cube.open_cube("s3://...", storage_options=...)`` of a small converted cube,
           libraries imported, s2cube's settings and filesystem caches cleared before each
           open (a fresh process's state): seconds, and the HTTP requests it makes, counted
           by a loopback proxy in front of the server (every GET/HEAD/list), next to the
           targets (< 0.5 s, <= 5 requests).

Medians of ``--repeat`` runs; backends alternate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real-s2-l1c" / "reference_scenes.npy"
BACKENDS = ("fsspec", "obstore")


def pixels(patch: int, grid: int) -> np.ndarray:
    """(1, 30, 13, grid*P, grid*P) uint16: crops of the real scenes, else smooth noise."""
    rng = np.random.default_rng(0)
    out = np.empty((1, 30, 13, grid * patch, grid * patch), np.uint16)
    if REAL.exists() and patch <= 100:
        scenes = np.rint(np.load(REAL) * 10000).astype(np.uint16)  # (5, 101, 100, 13)
        for r in range(grid):
            for c in range(grid):
                for t in range(30):
                    y, x = rng.integers(0, 101 - patch + 1), rng.integers(0, 100 - patch + 1)
                    crop = scenes[(t + r + c) % 5, y:y + patch, x:x + patch].transpose(2, 0, 1)
                    out[0, t, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = crop
        return out
    print(f"note: {REAL} missing (or --patch > 100): using synthetic pixels", file=sys.stderr)
    base = rng.normal(2000, 300, out.shape[2:]).cumsum(axis=-1) / 50
    return (base + rng.integers(0, 200, out.shape)).clip(0, 65535).astype(np.uint16)


def codecs() -> dict:
    try:
        from s2cube_conversion.write import pixel_codecs

        return pixel_codecs("s2")
    except ImportError:
        from zarr.codecs import BloscCodec

        return {"compressors": (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),)}


def bench_backend(server, backend: str, data: np.ndarray, patch: int, run: int) -> dict:
    import zarr

    from s2cube.storage import parse_location, zarr_store

    loc = parse_location(f"s3://bench/{backend}-{run}.zarr", server.storage_options())
    mb = data.nbytes / 1e6
    shards = (1, 30, 13, patch, patch)
    arr = zarr.create_array(zarr_store(loc, backend=backend), name="s2", shape=data.shape,
                            dtype=data.dtype, chunks=(1, 1, 13, patch, patch), shards=shards,
                            fill_value=0, **codecs())
    t0 = time.perf_counter()
    arr[:] = data
    write = time.perf_counter() - t0

    t0 = time.perf_counter()
    arr = zarr.open_array(zarr_store(loc, read_only=True, backend=backend), path="s2")
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = arr[:]
    read = time.perf_counter() - t0
    if not np.array_equal(back, data):
        raise SystemExit(f"{backend}: read back differs from what was written")

    grid = data.shape[-1] // patch
    rng = np.random.default_rng(run)
    picks = [(int(t), int(r), int(c)) for t, r, c in zip(rng.integers(0, 30, 60),
                                                         rng.integers(0, grid, 60),
                                                         rng.integers(0, grid, 60))]
    arr = zarr.open_array(zarr_store(loc, read_only=True, backend=backend), path="s2")
    t0 = time.perf_counter()
    for t, r, c in picks:
        arr[0, t, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
    sample = (time.perf_counter() - t0) / len(picks)
    return {"write_MBps": mb / write, "read_MBps": mb / read, "sample_ms": 1e3 * sample,
            "open_ms": 1e3 * opened}


def bench_objects(server, backend: str, run: int, n: int = 60, size: int = 200_000) -> dict:
    from s2cube.storage import filesystem, parse_location

    loc = parse_location(f"s3://bench/objects-{backend}-{run}", server.storage_options())
    fs = filesystem(loc, backend=backend)
    blob = np.random.default_rng(run).integers(0, 255, size, dtype=np.uint8).tobytes()
    paths = [f"{loc.path}/f{i}.tif" for i in range(n)]
    t0 = time.perf_counter()
    for p in paths:
        fs.pipe_file(p, blob)
    put = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    got = fs.cat(paths)
    get = (time.perf_counter() - t0) / n
    if any(v != blob for v in got.values()):
        raise SystemExit(f"{backend}: objects read back differ")
    return {"put_ms": 1e3 * put, "cat_ms": 1e3 * get}


def bench_convert(server, tmp: Path, runs: int, clouds: bool) -> dict:
    import os

    from dask.distributed import Client

    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    archive = tmp / "archive"
    if not archive.exists():
        synthesize_archive(archive, rois=("ROIs1868_73",), grid=(3, 3), patch_size=64, seed=0)
        server.upload_folder(archive, "bench", "archive")
    tag = "clouds" if clouds else "io"
    opts = server.storage_options()
    out: dict[str, list[float]] = {"local": [], "fsspec": [], "obstore": []}
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        convert(archive, tmp / f"warm-{tag}.zarr", client=client, clouds=clouds)
        for run in range(runs):
            for kind in ("local", "fsspec", "obstore"):
                os.environ["S2CUBE_STORAGE_BACKEND"] = "fsspec" if kind == "fsspec" else "obstore"
                t0 = time.perf_counter()
                if kind == "local":
                    report = convert(archive, tmp / f"{tag}-{run}.zarr", client=client,
                                     clouds=clouds)
                else:
                    report = convert("s3://bench/archive", f"s3://bench/{tag}-{kind}-{run}.zarr",
                                     client=client, clouds=clouds, storage_options=opts)
                out[kind].append(report.patches / (time.perf_counter() - t0))
    os.environ.pop("S2CUBE_STORAGE_BACKEND", None)
    return {k: statistics.median(v) for k, v in out.items()}


OPEN_TARGET_S = 0.5
OPEN_TARGET_REQUESTS = 5


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that counts the requests it
    forwards (method and path). The Host header is passed on as is, so signatures hold."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        up = urlsplit(upstream)
        self.requests: list[tuple[str, str]] = []
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                with lock:
                    proxy.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fresh_s2cube_state() -> None:
    """Forget what s2cube caches per process about S3 (settings, filesystems)."""
    from s2cube import storage

    storage._resolve.cache_clear()
    storage._FS_CACHE.clear()


def bench_open(server, tmp: Path, runs: int) -> dict:
    from dask.distributed import Client

    import s2cube
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    archive = tmp / "open-archive"
    synthesize_archive(archive, rois=("ROIs1868_73",), grid=(2, 2), patch_size=32, seed=0)
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        report = convert(archive, tmp / "open-cube.zarr", client=client)
    if not report.ok:
        raise SystemExit(f"open: conversion failed: {report.problems}")
    server.upload_folder(tmp / "open-cube.zarr", "bench", "open/cube.zarr")
    url, opts = "s3://bench/open/cube.zarr", server.storage_options()
    s2cube.open_cube(url, storage_options=opts)  # imports and first-use setup, not timed
    seconds = []
    for _ in range(runs):
        _fresh_s2cube_state()
        t0 = time.perf_counter()
        s2cube.open_cube(url, storage_options=opts)
        seconds.append(time.perf_counter() - t0)
    proxy = CountingProxy(server.endpoint_url)
    counts, via_proxy = [], []
    try:
        popts = {**opts, "endpoint_url": proxy.url}
        for _ in range(runs):
            _fresh_s2cube_state()
            proxy.requests.clear()
            t0 = time.perf_counter()
            s2cube.open_cube(url, storage_options=popts)
            via_proxy.append(time.perf_counter() - t0)
            counts.append(list(proxy.requests))
    finally:
        proxy.close()
    return {"seconds": seconds, "seconds_via_proxy": via_proxy,
            "requests": [len(c) for c in counts], "first_requests": counts[0]}


def _table(title: str, results: dict[str, list[dict]]) -> dict:
    table = {b: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
             for b, rs in results.items()}
    cols = list(next(iter(table.values())))
    print(f"\n{title}")
    print(f"{'backend':<10}" + "".join(f"{c:>13}" for c in cols))
    for b in BACKENDS:
        print(f"{b:<10}" + "".join(f"{table[b][c]:>13.1f}" for c in cols))
    ratio = {c: table["obstore"][c] / table["fsspec"][c] for c in cols}
    print(f"{'obs/fss':<10}" + "".join(f"{ratio[c]:>13.2f}" for c in cols))
    return table


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sections", nargs="*", choices=["zarr", "objects", "convert", "open", []])
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.sections = args.sections or ["zarr", "objects", "convert", "open"]

    from s2cube.testing import SeaweedServer

    report: dict = {}
    starts = []
    for _ in range(3):
        with SeaweedServer() as s:
            starts.append(s.startup_seconds)
    report["startup_s"] = starts
    print(f"SeaweedFS weed mini startup (S3 port answering): "
          f"median {statistics.median(starts):.2f} s of {[round(s, 2) for s in starts]}")
    with SeaweedServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.create_bucket("bench")
        if "zarr" in args.sections:
            data = pixels(args.patch, args.grid)
            zres: dict[str, list[dict]] = {b: [] for b in BACKENDS}
            for run in range(args.repeat):
                for backend in BACKENDS if run % 2 == 0 else BACKENDS[::-1]:
                    zres[backend].append(bench_backend(server, backend, data, args.patch, run))
            report["zarr"] = _table(
                f"zarr: array {data.shape} uint16 = {data.nbytes / 1e6:.1f} MB raw, "
                f"{args.grid**2} shards of {args.patch} px; medians of {args.repeat} runs", zres)
        if "objects" in args.sections:
            ores: dict[str, list[dict]] = {b: [] for b in BACKENDS}
            for run in range(args.repeat):
                for backend in BACKENDS if run % 2 == 0 else BACKENDS[::-1]:
                    ores[backend].append(bench_objects(server, backend, run))
            report["objects"] = _table("objects: 60 x 200 kB through filesystem(loc)", ores)
        if "convert" in args.sections:
            for clouds in (False, True):
                conv = bench_convert(server, Path(tmp), args.repeat, clouds)
                report[f"convert_clouds={clouds}"] = conv
                print(f"\nconvert: 1 ROI x 3x3 patches x 30 slots, 64 px, "
                      f"{'with' if clouds else 'without'} cloud detection, 1 in-process worker")
                for kind, rate in conv.items():
                    print(f"{kind:<10}{rate:>10.2f} patches/s {rate / conv['local']:>6.2f} x local")
        if "open" in args.sections:
            res = bench_open(server, Path(tmp), max(args.repeat, 5))
            report["open"] = res
            median, requests = statistics.median(res["seconds"]), max(res["requests"])
            print(f"\nopen_cube from the loopback S3 (1 ROI x 2x2 patches x 30 slots, 32 px), "
                  f"{len(res['seconds'])} fresh opens")
            print(f"time      median {median:.3f} s of {[round(s, 3) for s in res['seconds']]}"
                  f"   target < {OPEN_TARGET_S} s   {'ok' if median < OPEN_TARGET_S else 'MISSED'}")
            print(f"requests  {res['requests']} (HTTP, counted at a proxy)   target <= "
                  f"{OPEN_TARGET_REQUESTS}   {'ok' if requests <= OPEN_TARGET_REQUESTS else 'MISSED'}")
            for method, path in res["first_requests"]:
                print(f"          {method} {path}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
