"""S3 backends side by side: fsspec (s3fs) vs obstore, for what s2cube does on S3.

    .venv/bin/python benchmarks/bench_s3.py [zarr] [objects] [convert] [open] [retry]
        [--patch 96] [--grid 3] [--repeat 3] [--json out.json]
        [--fail-rate 0.01] [--retry-samples 1000] [--retry-backend obstore] [--workdir DIR]
        [--init-backoff-ms MS] [--backoff-base B]

Starts SeaweedFS (``weed mini``, loopback only; its startup time is measured too) and
measures, per backend (``s2cube.io.storage`` with ``backend="fsspec"`` or ``"obstore"``):

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
- retry:   what retries cost the loader when S3 fails some requests: bench_loader's S3 row
           (its 256 px cube and samples, ``SampleReader`` raw, 2 threads, batch 8) read
           directly, through a loopback proxy (``FaultyS3Proxy`` of ``tests/servers.py``) that
           forwards everything, and through the same proxy failing ``--fail-rate`` of the
           requests with S3's 503 SlowDown; interleaved runs, samples/s over the time in
           ``read``. Prints the requests and failures per run, the proxy's own overhead
           (1 - proxied / direct at 0 %), the retry cost 1 - rate(1 %) / rate(0 %) next to
           the target (< 10 %), and whether every run read every sample bit-identical to
           the direct one (SHA-256 per sample).

Medians of ``--repeat`` runs; backends alternate (retry: medians and bests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BACKENDS = ("fsspec", "obstore")


def pixels(patch: int, grid: int) -> np.ndarray:
    """(1, 30, 13, grid*P, grid*P) uint16: crops of the real scenes, else smooth noise."""
    rng = np.random.default_rng(0)
    out = np.empty((1, 30, 13, grid * patch, grid * patch), np.uint16)
    if patch <= 100:
        from s2cube_conversion._realpixels import load_dn

        scenes = load_dn()  # uint16 (5, 13, 101, 100)
        for r in range(grid):
            for c in range(grid):
                for t in range(30):
                    y, x = rng.integers(0, 101 - patch + 1), rng.integers(0, 100 - patch + 1)
                    crop = scenes[(t + r + c) % 5, :, y:y + patch, x:x + patch]
                    out[0, t, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = crop
        return out
    print("note: --patch > 100 (the real scenes are 101x100): using synthetic pixels", file=sys.stderr)
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

    from s2cube.io.storage import parse_location, zarr_store

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
    from s2cube.io.storage import filesystem, parse_location

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


def _fresh_s2cube_state() -> None:
    """Forget what s2cube caches per process about S3 (settings, filesystems)."""
    from s2cube.io import storage

    storage._resolve.cache_clear()
    storage._FS_CACHE.clear()


def bench_open(server, tmp: Path, runs: int) -> dict:
    from _servers import FaultyS3Proxy
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
    counts, via_proxy = [], []
    with FaultyS3Proxy(server.endpoint_url) as proxy:  # fail_rate 0: counts only
        popts = {**opts, "endpoint_url": proxy.url}
        for _ in range(runs):
            _fresh_s2cube_state()
            proxy.reset()
            t0 = time.perf_counter()
            s2cube.open_cube(url, storage_options=popts)
            via_proxy.append(time.perf_counter() - t0)
            counts.append(list(proxy.requests))
    return {"seconds": seconds, "seconds_via_proxy": via_proxy,
            "requests": [len(c) for c in counts], "first_requests": counts[0]}


RETRY_TARGET = 0.10


def _read_epoch(meta, samples: list, threads: int, batch: int) -> tuple[float, list[bytes]]:
    """bench_loader's S3 row (``run_ours``, raw values), keeping a digest of every sample.

    Returns samples/s over the time spent in ``SampleReader.read`` (the digests are taken
    between batches, off the clock) and one SHA-256 per sample of its S2, S1 and mask arrays.
    """
    import hashlib

    from s2cube.training.batches import SampleReader

    sr = SampleReader(meta, detector="s2cloudless_mask", rescale_method=None, threads=threads)
    arr = np.array([s[:3] for s in samples])
    slots = np.array([s[3] for s in samples])
    sr.read(arr[:1, 0], arr[:1, 1], arr[:1, 2], slots[:1])  # open the store and the pool
    busy, digests = 0.0, []
    for i in range(0, len(samples), batch):
        sl = slice(i, i + batch)
        t0 = time.perf_counter()
        out = sr.read(arr[sl, 0], arr[sl, 1], arr[sl, 2], slots[sl])
        busy += time.perf_counter() - t0
        for j in range(len(arr[sl])):
            h = hashlib.sha256()
            for key in ("S2", "S1", "masks"):
                h.update(np.ascontiguousarray(out[key][j]).data)
            digests.append(h.digest())
        del out
    sr.close()
    return len(samples) / busy, digests


def bench_retry(server, args) -> dict:
    """Loader throughput direct, through the proxy at 0 % and at ``--fail-rate`` failures."""
    import os
    import tempfile

    import bench_loader  # the loader benchmark's cube, samples and reader (benchmarks/)
    from _servers import FaultyS3Proxy

    from s2cube.io import storage
    from s2cube_conversion.synth import DEFAULT_ROIS

    grid = tuple(int(v) for v in args.retry_grid.split("x"))
    rois = list(DEFAULT_ROIS[: args.retry_rois])
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_s3_retry_")
        workdir = Path(tmp.name)
    try:
        t0 = time.perf_counter()
        data = bench_loader.build(workdir, rois, grid, 256)
        _, _, samples = bench_loader.plan_samples(data["cube"], args.retry_samples)
        n = server.upload_folder(data["cube"], "bench", "retry/cube.zarr")
        setup = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    os.environ["S2CUBE_STORAGE_BACKEND"] = args.retry_backend
    if args.init_backoff_ms is not None:  # read by storage.obstore_s3 at each call
        storage.RETRY_INIT_BACKOFF_MS = args.init_backoff_ms
    if args.backoff_base is not None:
        storage.RETRY_BACKOFF_BASE = args.backoff_base
    url, opts = "s3://bench/retry/cube.zarr", server.storage_options("reader")
    kinds = ("direct", "proxy 0 %", f"proxy {100 * args.fail_rate:g} %")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    requests: dict[str, list[int]] = {k: [] for k in kinds}
    failed: dict[str, list[int]] = {k: [] for k in kinds}
    reference: list[bytes] | None = None
    identical = True
    with FaultyS3Proxy(server.endpoint_url, seed=args.seed) as proxy:
        popts = {**opts, "endpoint_url": proxy.url}
        for run in range(args.repeat):  # interleaved, order rotated: the machine is shared
            order = kinds[run % 3:] + kinds[:run % 3]
            for kind in order:
                proxy.fail_rate = 0.0
                meta = bench_loader.load_view(url, opts if kind == "direct" else popts)
                proxy.reset()
                proxy.fail_rate = args.fail_rate if kind == kinds[2] else 0.0
                rate, digests = _read_epoch(meta, samples, args.threads, args.batch)
                rates[kind].append(rate)
                if kind != "direct":
                    requests[kind].append(proxy.forwarded + proxy.failed)
                    failed[kind].append(proxy.failed)
                if reference is None:
                    reference = digests
                elif digests != reference:
                    identical = False
    os.environ.pop("S2CUBE_STORAGE_BACKEND", None)
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    return {"kinds": kinds, "rates": rates, "median": med, "best": best, "requests": requests,
            "failed": failed, "identical": identical, "samples": len(samples), "objects": n,
            "rois": len(rois), "grid": grid, "setup_s": setup,
            "cost_median": 1 - med[kinds[2]] / med[kinds[1]],
            "cost_best": 1 - best[kinds[2]] / best[kinds[1]],
            "proxy_overhead_median": 1 - med[kinds[1]] / med[kinds[0]],
            "proxy_overhead_best": 1 - best[kinds[1]] / best[kinds[0]],
            "retry": _retry_settings(storage, args.retry_backend)}


def _retry_settings(storage, backend: str) -> str:
    if backend == "obstore":
        return (f"obstore: first backoff {storage.RETRY_INIT_BACKOFF_MS} ms, then uniform in "
                f"[init, {storage.RETRY_BACKOFF_BASE:g} x previous], at most "
                f"{storage.RETRY_MAX_BACKOFF_S:g} s; no new retry after "
                f"{storage.RETRY_BUDGET_S} s or {storage.MAX_RETRIES} retries")
    return (f"botocore standard mode, {storage.MAX_ATTEMPTS} attempts, backoff rand(0, 1) x "
            "2**retry s (cap 20 s); s3fs retries SlowDown on top")


def _print_retry(res: dict, args) -> None:
    import os

    direct, zero, faulty = res["kinds"]
    print(f"\nretry cost: bench_loader's S3 row (seq2point n=3, S1+S2+masks, raw, "
          f"{res['samples']} samples of 256x256 px, {res['rois']} ROIs x "
          f"{res['grid'][0]}x{res['grid'][1]} patches, {args.threads} threads, batch "
          f"{args.batch}, {args.retry_backend}); {args.repeat} interleaved runs each; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; setup "
          f"{res['setup_s']:.0f} s")
    print(f"retries: {res['retry']}")
    print(f"{'run':<14}{'requests':>16}{'failed (503)':>16}{'samples/s median':>18}"
          f"{'best':>8}   all runs")
    for kind in res["kinds"]:
        reqs = "-" if kind == direct else "/".join(str(v) for v in res["requests"][kind])
        fails = "-" if kind == direct else "/".join(str(v) for v in res["failed"][kind])
        print(f"{kind:<14}{reqs:>16}{fails:>16}{res['median'][kind]:>18.1f}"
              f"{res['best'][kind]:>8.1f}   {[round(r, 1) for r in res['rates'][kind]]}")
    ok = res["cost_median"] < RETRY_TARGET
    print(f"proxy overhead 1 - rate({zero}) / rate({direct}): {res['proxy_overhead_median']:.1%}"
          f" of medians, {res['proxy_overhead_best']:.1%} of bests")
    print(f"retry cost     1 - rate({faulty}) / rate({zero}): {res['cost_median']:.1%} of "
          f"medians, {res['cost_best']:.1%} of bests   target < {RETRY_TARGET:.0%}   "
          f"{'ok' if ok else 'MISSED'}")
    same = ("every run read every sample bit-identical to the first (direct) run"
            if res["identical"] else "a run read DIFFERENT pixels than the first (direct) run")
    print(f"samples: {same} (SHA-256 of each sample's S2, S1 and masks)")


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
    ap.add_argument("sections", nargs="*",
                    choices=["zarr", "objects", "convert", "open", "retry", []])
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    retry = ap.add_argument_group("retry")
    retry.add_argument("--fail-rate", type=float, default=0.01,
                       help="fraction of requests the proxy fails with 503 SlowDown")
    retry.add_argument("--retry-samples", type=int, default=1000, help="samples per run")
    retry.add_argument("--retry-rois", type=int, default=2)
    retry.add_argument("--retry-grid", default="3x3", help="patches per ROI, RxC")
    retry.add_argument("--retry-backend", choices=BACKENDS, default="obstore")
    retry.add_argument("--threads", type=int, default=2)
    retry.add_argument("--batch", type=int, default=8)
    retry.add_argument("--seed", type=int, default=0, help="seed of the proxy's failures")
    retry.add_argument("--workdir", help="keep (and reuse) the synthetic archive and cube here")
    retry.add_argument("--init-backoff-ms", type=int,
                       help="obstore's first backoff instead of s2cube's (for comparisons)")
    retry.add_argument("--backoff-base", type=float, help="obstore's backoff base instead")
    args = ap.parse_args()
    args.sections = args.sections or ["zarr", "objects", "convert", "open", "retry"]

    from _servers import SeaweedServer

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
        if "retry" in args.sections:
            res = bench_retry(server, args)
            report["retry"] = res
            _print_retry(res, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
