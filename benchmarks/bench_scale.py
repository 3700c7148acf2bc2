"""The whole archive, rehearsed: how every step's cost grows from 1 to 53 ROIs.

    .venv/bin/python benchmarks/bench_scale.py                       # synth + all sizes + table
    .venv/bin/python benchmarks/bench_scale.py synth [--root DIR] [--patch-size 8] [--no-s1]
    .venv/bin/python benchmarks/bench_scale.py run [--sizes 1,5,13,53] [--no-s1-at 53]
                                                   [--no-validate-at 53] [--profile steps]
    .venv/bin/python benchmarks/bench_scale.py s3     # needs `weed` (S2CUBE_WEED)
    .venv/bin/python benchmarks/bench_scale.py table [--json FILE]

``synth`` writes the full-cardinality synthetic archive (``s2cube synth --full-archive``:
53 ROIs, 16,009 patch locations, 30 slots, S1 and S2, 960,540 GeoTIFFs of 8 px; resumable).
``run`` converts nested subsets of it (1, 5, 13 and 53 ROIs, each a superset of the last;
every region, split and both hemispheres from 5 ROIs on) into one cube each, every size in a
fresh process with a fresh 2-worker ``LocalCluster``, and measures for each size:

- the conversion's phases (``ConvertReport.timings``): discovery (listing and parsing the
  file names), planning (one header per patch location), begin, journal reads, the run,
  finalisation; wall time and CPU (client + workers) per file; peak RSS of the client and of
  each worker; the tasks submitted, their pickled size and the time spent submitting them,
  and the size of the one scattered job;
- ``open_cube`` (seconds and files opened, counted with an audit hook), ``s2cube info``
  (the command, in its own process), ``cloudiness(by="region")`` over the whole cube,
  ``sample_plan`` of the whole train split;
- the loader (``make_loader``, train split, random sampler, S1+S2+masks, batch 32,
  in-process, 2 decoding threads): set-up, first batch, one epoch (samples/s);
- ``validate`` (every file against the cube) and ``verify`` (every chunk), on the cluster.

Results accumulate in a JSON file (``--json``), so sizes can be run one at a time; ``table``
prints the table and the growth of each per-file / per-sample cost from the smallest to the
largest size. ``--profile`` keeps cProfile dumps of the client side of each step.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
ROOT = Path("/tmp/scale")

#: Nested subsets: each size holds the ROIs of the smaller ones.
FIRST = ["ROIs2017_8"]  # africa train, southern UTM zone
FIVE = [*FIRST, "ROIs1868_73", "ROIs1868_17", "ROIs1970_82", "ROIs1970_57"]
THIRTEEN = [*FIVE, "ROIs1158_106", "ROIs1868_100", "ROIs2017_22", "ROIs1868_114", "ROIs1868_56",
            "ROIs1970_71", "ROIs2017_146", "ROIs1970_21"]


def subset(n: int) -> list[str] | None:
    """The first ``n`` ROIs of the nested order (None: all 53)."""
    from s2cube import schema

    if n >= len(schema.ROIS):
        return None
    rest = [r for r in schema.ROIS if r not in THIRTEEN]
    return (THIRTEEN + rest)[:n]


# --- measuring helpers ------------------------------------------------------------------------

def _rusage() -> tuple[float, int]:
    """(CPU seconds, peak RSS in MB) of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_maxrss // 1024


class _Opens:
    """Counts files opened by this process (``open`` audit events) while active."""

    active = False
    under = ""
    count = 0
    paths: ClassVar[list[str]] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active and event == "open" and str(args[0]).startswith(cls.under):
            cls.count += 1
            if len(cls.paths) < 20:
                cls.paths.append(str(args[0])[len(cls.under):])

    @classmethod
    @contextmanager
    def counting(cls, under: Path):
        """Count the files opened below ``under``."""
        cls.count, cls.paths, cls.active, cls.under = 0, [], True, str(under)
        try:
            yield cls
        finally:
            cls.active = False


sys.addaudithook(_Opens.hook)


@contextmanager
def _profiled(name: str, out: Path | None):
    if out is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(str(out / f"{name}.prof"))


def _timed_client(client) -> dict:
    """Record the client's submissions (count, seconds, pickled task sizes) and scatters."""
    stats = {"submitted": 0, "submit_s": 0.0, "task_bytes": [], "scattered_bytes": 0}
    submit, scatter = client.submit, client.scatter

    def timed_submit(*args, **kwargs):
        t = time.perf_counter()
        fut = submit(*args, **kwargs)
        stats["submit_s"] += time.perf_counter() - t
        stats["submitted"] += 1
        if len(stats["task_bytes"]) < 200 and len(args) > 2:  # (function, job future, task)
            stats["task_bytes"].append(len(pickle.dumps(args[2:])))
        return fut

    def timed_scatter(data, *args, **kwargs):
        stats["scattered_bytes"] += len(pickle.dumps(data))
        return scatter(data, *args, **kwargs)

    client.submit, client.scatter = timed_submit, timed_scatter
    return stats


def _worker_usage(client) -> list[tuple[float, int]]:
    return list(client.run(_rusage).values())


# --- one size -----------------------------------------------------------------------------------

def measure_size(n: int, archive: Path, work: Path, s1: bool, checks: bool,
                 profile: str | None) -> dict:
    """Every figure for the first ``n`` ROIs (runs in a fresh process)."""
    import numpy as np
    from dask.distributed import Client

    import s2cube
    from s2cube.io.reader import counting
    from s2cube.io.verify import verify_cube
    from s2cube.torch import make_loader
    from s2cube_conversion import Selection, convert
    from s2cube_conversion.run import local_cluster
    from s2cube_conversion.validate import validate

    rois = subset(n)
    cube = work / f"cube-{n}.zarr"
    shutil.rmtree(cube, ignore_errors=True)
    prof = None
    if profile:
        prof = work / f"prof-{n}"
        prof.mkdir(exist_ok=True)
    res: dict = {"rois": n, "s1": s1}
    cpu0, _ = _rusage()
    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        base = _worker_usage(client)
        stats = _timed_client(client)
        marks: dict[int, float] = {}

        def progress(done: int, total: int) -> None:  # steady state: 10 % to 90 % done
            for q in (1, 9):
                if q not in marks and done >= total * q / 10:
                    marks[q] = time.perf_counter()

        with _profiled("convert", prof if profile == "all" else None):
            report = convert(archive, cube, selection=Selection(rois=tuple(rois or ())),
                             s1=s1, client=client, progress=progress)
        after = _worker_usage(client)
    cpu1, rss = _rusage()
    files = int(json.loads((cube / "zarr.json").read_text())["attributes"]["source"]["files"])
    res.update(patches=report.patches, files=files, problems=len(report.problems),
               convert_s=report.seconds, phases=report.timings,
               client_cpu_s=cpu1 - cpu0, client_rss_mb=rss,
               worker_cpu_s=sum(a[0] - b[0] for a, b in zip(after, base)),
               worker_rss_mb=[a[1] for a in after],
               submitted=stats["submitted"], submit_s=stats["submit_s"],
               task_bytes=float(np.mean(stats["task_bytes"])) if stats["task_bytes"] else 0,
               scattered_bytes=stats["scattered_bytes"],
               steady_patches_per_s=(0.8 * report.patches / (marks[9] - marks[1])
                                     if marks.get(9, 0) > marks.get(1, 0) else float("nan")))
    print(f"  converted {n} ROIs: {report.patches} patches, {files} files, "
          f"{report.seconds:.1f} s {report.timings}", flush=True)

    # open_cube: seconds and files of the cube opened; the first open in this process
    # imports xarray's backends, the second is what every further open costs
    t = time.perf_counter()
    s2cube.open_cube(cube)
    res["open_first_s"] = time.perf_counter() - t
    with _Opens.counting(cube) as opens, counting() as reads, _profiled("open", prof):
        t = time.perf_counter()
        ds = s2cube.open_cube(cube)
        res["open_s"] = time.perf_counter() - t
    res["open_files"] = opens.count
    res["open_requests"] = reads.requests
    res["open_paths"] = list(opens.paths)
    t = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "s2cube"), "info", str(cube)],
                          capture_output=True, text=True, check=False)
    res["info_s"] = time.perf_counter() - t
    res["info_ok"] = done.returncode == 0
    with _profiled("cloudiness", prof):
        t = time.perf_counter()
        table = ds.s2cube.cloudiness(by="region").compute()
        res["cloudiness_s"] = time.perf_counter() - t
    res["cloudiness_frames"] = int(table["frames"].sum())
    train = ds.s2cube.sel_split("train") if "train" in set(ds["split"].values.tolist()) else ds
    split = "train" if train is not ds else "all"
    with _profiled("sample_plan", prof):
        t = time.perf_counter()
        plan = train.s2cube.sample_plan(split=split, sampler="fixed", n_input_samples=3)
        res["plan_s"] = time.perf_counter() - t
    res["plan_samples"] = len(plan)

    # the loader, in this process (no DataLoader workers), 2 decoding threads
    with _profiled("loader_setup", prof):
        t = time.perf_counter()
        loader = make_loader(cube, split=split, batch_size=32, num_workers=0, threads=2,
                             sampler="random", n_input_samples=3, s1=s1, pin_memory=False)
        res["loader_setup_s"] = time.perf_counter() - t
    it = iter(loader)
    t = time.perf_counter()
    batch = next(it)
    res["first_batch_s"] = time.perf_counter() - t
    first = seen = len(batch["pdx"])
    with _profiled("epoch", prof), counting() as reads:
        t = time.perf_counter()
        for batch in it:
            seen += len(batch["pdx"])
        epoch = time.perf_counter() - t
    res["epoch_samples"] = seen
    res["epoch_requests_per_sample"] = reads.requests / max(seen - first, 1)
    res["epoch_bytes_per_sample"] = reads.bytes / max(seen - first, 1)
    res["epoch_samples_per_s"] = (seen - first) / epoch if seen > first else float("nan")
    print(f"  open {res['open_s']:.3f} s ({res['open_files']} files), info {res['info_s']:.1f} s, "
          f"plan {res['plan_s']:.2f} s ({len(plan)}), loader {res['epoch_samples_per_s']:.0f}/s",
          flush=True)

    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        t = time.perf_counter()
        vr = verify_cube(cube, client=client)
        res["verify_s"] = time.perf_counter() - t
        res["verify_chunks"], res["verify_bad"] = vr.chunks, len(vr.bad)
        print(f"  verify {res['verify_s']:.1f} s", flush=True)
        if checks:
            t = time.perf_counter()
            v = validate(archive, cube, rois=rois, client=client)
            res["validate_s"] = time.perf_counter() - t
            res["validate_files"], res["validate_diffs"] = v.files, len(v.differences)
            print(f"  validate {res['validate_s']:.1f} s", flush=True)
    res["client_rss_end_mb"] = _rusage()[1]
    return res


def loader_epoch(cube: Path, s1: bool) -> dict:
    """One epoch of the loader over ``cube``'s train split in this process (``_loader``)."""
    import gc

    from s2cube.torch import make_loader

    spent = {"gc_s": 0.0, "start": 0.0}

    def clock(phase: str, _info: dict) -> None:
        if phase == "start":
            spent["start"] = time.perf_counter()
        else:
            spent["gc_s"] += time.perf_counter() - spent["start"]

    gc.callbacks.append(clock)
    loader = make_loader(cube, split="train", batch_size=32, num_workers=0, threads=2,
                         sampler="random", n_input_samples=3, s1=s1, pin_memory=False)
    it = iter(loader)
    first = len(next(it)["pdx"])
    t = time.perf_counter()
    seen = sum(len(b["pdx"]) for b in it)
    dt = time.perf_counter() - t
    return {"samples": seen + first, "ms_per_sample": 1e3 * dt / max(seen, 1),
            "gc_s": spent["gc_s"]}


def cmd_loader(args) -> None:
    """The loader's epoch in a fresh process per run (what a training script sees), for the
    cubes of ``--sizes``; the median of ``--repeat`` runs joins each size's results."""
    import statistics

    results = _load(args.json)
    for _ in range(args.repeat):  # sizes interleaved, so drifting load hits them alike
        for n in args.sizes:
            r = next(r for r in results if r["rois"] == n)
            cmd = [sys.executable, __file__, "_loader", str(n), "--work", str(args.work)] + \
                (["--no-s1"] if not r["s1"] else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r.setdefault("loader_fresh", []).append(json.loads(out.splitlines()[-1]))
    for r in results:
        runs = r.get("loader_fresh", [])[-args.repeat:]
        if runs:
            r["loader_fresh"] = runs
            r["loader_fresh_ms"] = statistics.median(x["ms_per_sample"] for x in runs)
            print(f"  {r['rois']} ROIs: {[round(x['ms_per_sample'], 3) for x in runs]} ms per "
                  "sample", flush=True)
    args.json.write_text(json.dumps(results, indent=1))


# --- the table ----------------------------------------------------------------------------------

def _per(res: dict, key: str, by: str, scale: float = 1e3) -> float:
    v = res.get(key)
    return float("nan") if v is None or not res.get(by) else v / res[by] * scale


ROWS = [  # (label, function of one size's results, unit)
    ("ROIs", lambda r: r["rois"], ""),
    ("patch locations", lambda r: r["patches"], ""),
    ("GeoTIFFs", lambda r: r["files"], ""),
    ("discovery (list + parse), s", lambda r: r["phases"].get("discover"), "s"),
    ("  per 1000 files, ms", lambda r: _per({"x": r["phases"].get("discover"), **r}, "x", "files",
                                            1e6), "ms"),
    ("planning (1 header / patch), s", lambda r: r["phases"].get("plan"), "s"),
    ("  per patch, ms", lambda r: _per({"x": r["phases"].get("plan"), **r}, "x", "patches"), "ms"),
    ("begin, s", lambda r: r["phases"].get("begin"), "s"),
    ("journal reads, s", lambda r: r["phases"].get("journal"), "s"),
    ("run (dask tasks), s", lambda r: r["phases"].get("run"), "s"),
    ("finalise, s", lambda r: r["phases"].get("finalize"), "s"),
    ("conversion wall, s", lambda r: r["convert_s"], "s"),
    ("  wall per file, ms", lambda r: _per(r, "convert_s", "files"), "ms"),
    ("  CPU per file (workers + client), ms",
     lambda r: _per({"x": r["worker_cpu_s"] + r["client_cpu_s"], **r}, "x", "files"), "ms"),
    ("  client CPU per file, ms", lambda r: _per(r, "client_cpu_s", "files"), "ms"),
    ("  steady state (10-90 % of tasks), wall per file, ms",
     lambda r: 1e3 * r["patches"] / r["files"] / r["steady_patches_per_s"], "ms"),
    ("tasks submitted", lambda r: r["submitted"], ""),
    ("  submission, total s", lambda r: r["submit_s"], "s"),
    ("  pickled task, bytes", lambda r: r["task_bytes"], ""),
    ("  scattered job, bytes", lambda r: r["scattered_bytes"], ""),
    ("peak RSS client, MB", lambda r: r["client_rss_mb"], ""),
    ("peak RSS per worker, MB", lambda r: max(r["worker_rss_mb"]), ""),
    ("open_cube, s", lambda r: r["open_s"], "s"),
    ("open_cube, files opened", lambda r: r["open_files"], ""),
    ("open_cube, reads (requests)", lambda r: r["open_requests"], ""),
    ("s2cube info (own process), s", lambda r: r["info_s"], "s"),
    ("cloudiness(by=region), s", lambda r: r["cloudiness_s"], "s"),
    ("sample_plan, train split, s", lambda r: r["plan_s"], "s"),
    ("  samples", lambda r: r["plan_samples"], ""),
    ("  per sample, µs", lambda r: _per(r, "plan_s", "plan_samples", 1e6), "µs"),
    ("loader set-up, s", lambda r: r["loader_setup_s"], "s"),
    ("loader first batch (32), s", lambda r: r["first_batch_s"], "s"),
    ("loader epoch, samples/s", lambda r: r["epoch_samples_per_s"], ""),
    ("  per sample, ms", lambda r: 1e3 / r["epoch_samples_per_s"], "ms"),
    ("  reads per sample", lambda r: r["epoch_requests_per_sample"], ""),
    ("loader epoch in its own process, per sample, ms", lambda r: r["loader_fresh_ms"], "ms"),
    ("validate, s", lambda r: r.get("validate_s"), "s"),
    ("  per file, ms", lambda r: _per(r, "validate_s", "validate_files"), "ms"),
    ("verify, s", lambda r: r.get("verify_s"), "s"),
    ("  per chunk, ms", lambda r: _per(r, "verify_s", "verify_chunks"), "ms"),
]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}"


def print_table(results: list[dict]) -> None:
    results = sorted(results, key=lambda r: r["rois"])
    head = "| step | " + " | ".join(f"{r['rois']} ROIs{'' if r['s1'] else ' (S2 only)'}"
                                    for r in results) + " | growth |"
    print(head)
    print("|" + "---|" * (len(results) + 2))
    for label, fn, _ in ROWS:
        vals = []
        for r in results:
            try:
                vals.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                vals.append(None)
        growth = "-"
        if label.startswith("  per") or "per file" in label or "per sample" in label:
            ok = [v for v in vals if isinstance(v, float | int) and v == v]
            if len(ok) >= 2 and ok[0]:
                growth = f"{ok[-1] / ok[0]:.2f}×"
        print(f"| {label} | " + " | ".join(_fmt(v) for v in vals) + f" | {growth} |")


# --- on paper: the real archive ------------------------------------------------------------------

#: The real archive (archive.md sec. 4) and figures measured by the other benchmarks (BENCHMARKS.md)
REAL = {
    "s2_files": 480_270, "s1_files": 480_270, "patches": 16_009, "s2_bytes": 820e9,
    "s1_bytes": 506e9,
    "convert_bytes_per_core_s": 166e6,   # bench_convert io: conversion without clouds, 1 core
    "fast_frames_per_core_s": 4.75,      # bench_clouds: s2cloudless model, compiled kernel
    "reference_frames_per_core_s": 0.58,  # bench_clouds: s2cloudless itself
    "rule_s_per_frame": 0.011,           # bench_clouds: rule-based cloud/shadow detector
    "two_worker_efficiency": 1.73 / 2,   # bench_convert scaling: 2 workers vs 1
    "s2_ratio": 0.306, "s1_ratio": 0.382,  # bench_convert ratio: cube bytes / GeoTIFF bytes
    "loader_samples_per_s_2_threads": 131.1,  # bench_loader: make_loader in-process, float32
    "s3_requests_per_sample": 3057 / 1000,    # bench_s3 retry: requests per loader sample
}
#: S3 Standard, us-east-1, as published on aws.amazon.com/s3/pricing (USD)
PRICE = {"put_list_per_1000": 0.005, "get_per_1000": 0.0004, "gb_month": 0.023}


def estimate(results: list[dict]) -> None:
    """Print the on-paper estimate of the real archive from measured per-file costs."""
    big = max(results, key=lambda r: r["rois"])
    files = REAL["s2_files"] + REAL["s1_files"]
    io_cpu = (REAL["s2_bytes"] + REAL["s1_bytes"]) / REAL["convert_bytes_per_core_s"]
    fast = REAL["s2_files"] / REAL["fast_frames_per_core_s"] + REAL["s2_files"] * REAL[
        "rule_s_per_frame"]
    reference = REAL["s2_files"] / REAL["reference_frames_per_core_s"] + REAL["s2_files"] * REAL[
        "rule_s_per_frame"]
    # client side, serial: what the rehearsal measured at its largest size, scaled per file
    grows = sum(big["phases"].get(k, 0) for k in ("discover", "plan", "journal", "finalize"))
    serial = big["phases"].get("begin", 0) + grows * files / big["files"]
    print(f"serial client work (discover, plan, begin, journal, finalise) scaled from "
          f"{big['rois']} ROIs: {serial:.0f} s")
    print("| conversion | CPU-hours | 16 workers | 64 workers | 256 workers |")
    print("|---|---|---|---|---|")
    eff = REAL["two_worker_efficiency"]
    for label, cpu in (("without cloud detection", io_cpu),
                       ("with cloud detection (fast kernel, the default)", io_cpu + fast),
                       ("with s2cloudless itself (the reference)", io_cpu + reference)):
        walls = [(serial + cpu / (n * eff)) / 60 for n in (16, 64, 256)]
        print(f"| {label} | {cpu / 3600:.1f} | " + " | ".join(f"{w:.0f} min" for w in walls)
              + " |")
    cube = (REAL["s2_bytes"] * REAL["s2_ratio"] + REAL["s1_bytes"] * REAL["s1_ratio"])
    masks = REAL["s2_files"] * 256 * 256 * 2
    objects = 4 * REAL["patches"] + REAL["patches"] + 40
    print(f"cube: s2 + s1 {cube / 1e9:.0f} GB, + cloud_prob/cloud_mask at most {masks / 1e9:.0f} "
          f"GB uncompressed; {objects:,} objects")
    lists = math.ceil(files / 1000) + math.ceil(REAL["patches"] / 1000) * 2
    gets = files + REAL["patches"] + 2 * REAL["patches"]
    puts = 4 * REAL["patches"] + REAL["patches"] + 60
    cost = (lists + puts) * PRICE["put_list_per_1000"] / 1000 + gets * PRICE["get_per_1000"] / 1000
    print(f"one conversion on S3: {lists:,} LIST + {puts:,} PUT + {gets:,} GET = ${cost:.2f} in "
          f"requests; storage ${PRICE['gb_month'] * (cube + masks) / 1e9:.0f} per month at most")
    train = big.get("plan_samples", 0) * (REAL["patches"] / big["patches"])
    per = REAL["s3_requests_per_sample"]
    first = train * (per + 3)  # + one shard index per variable per patch, once per process
    print(f"one training epoch (~{train:,.0f} train samples): {train * per:,.0f} GET "
          f"(${train * per * PRICE['get_per_1000'] / 1000:.3f}); the first epoch of each "
          f"process also reads the shard indexes: {first:,.0f} GET "
          f"(${first * PRICE['get_per_1000'] / 1000:.3f})")


# --- S3: the same on a loopback SeaweedFS server -------------------------------------------------

def _upload(server, folder: Path, bucket: str, prefix: str, threads: int = 8,
            skip=None) -> int:
    """Upload every file below ``folder`` to ``s3://bucket/prefix/``, ``threads`` at a time
    (but those ``skip(path)`` is true of)."""
    from concurrent.futures import ThreadPoolExecutor

    client = server.client("admin")
    files = [p for p in folder.rglob("*") if p.is_file() and not (skip and skip(p))]

    def put(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))
    return len(files)


def _kinds(requests: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for method, path in requests:
        kind = "LIST" if method == "GET" and ("list-type" in path or "delimiter" in path
                                              or path.rstrip("/").count("/") <= 1) else method
        out[kind] = out.get(kind, 0) + 1
    return out


def measure_s3(archive: Path, work: Path, big: int, s1: bool = True, n_rois: int = 1) -> dict:
    """Requests on S3: listing the uploaded archive (LIST pages), converting its first
    ``n_rois`` ROIs (per file), opening the ``big``-ROI cube, and the loader over it (per
    sample); every request counted at a loopback proxy."""
    from _servers import FaultyS3Proxy, SeaweedServer
    from dask.distributed import Client

    import s2cube
    from s2cube import schema
    from s2cube.io import storage
    from s2cube.torch import make_loader
    from s2cube_conversion import Selection, convert
    from s2cube_conversion.discover import LIST_THREADS, discover, list_files
    from s2cube_conversion.run import local_cluster

    rois = subset(n_rois) or list(schema.ROIS)
    res: dict = {"rois": rois, "cube_rois": big, "s1": s1}
    with SeaweedServer() as server:
        server.client("admin").create_bucket(Bucket="scale")
        t = time.perf_counter()
        res["archive_objects"] = 0
        for roi in rois:
            rel = f"{schema.ROIS[roi].collection}/{schema.ROIS[roi].roi_id}"
            res["archive_objects"] += _upload(server, archive / rel, "scale", f"archive/{rel}",
                                              skip=None if s1 else (lambda p: "S1" in p.parts))
        res["upload_archive_s"] = time.perf_counter() - t
        print(f"  uploaded {res['archive_objects']} files in {res['upload_archive_s']:.0f} s",
              flush=True)
        with FaultyS3Proxy(server.endpoint_url) as proxy:
            opts = {**server.storage_options(), "endpoint_url": proxy.url}
            # discovery of the whole uploaded archive, what `convert` of everything lists:
            # one listing after the other (as before), then the folders 16 at a time
            loc = storage.parse_location("s3://scale/archive", opts)
            for label, threads in (("list_sequential", 1), ("list", LIST_THREADS)):
                storage._FS_CACHE.clear()  # no listing served from s3fs's cache
                proxy.reset()
                t = time.perf_counter()
                n_files = len(list_files(loc, threads=threads))
                res[label] = {"seconds": time.perf_counter() - t, "keys": n_files,
                              "requests": _kinds(proxy.requests)}
                print(f"  S3 listing, {threads} at a time: {res[label]}", flush=True)
            proxy.reset()
            t = time.perf_counter()
            inv = discover(loc, s1=s1)
            res["discover"] = {"seconds": time.perf_counter() - t, "files": len(inv.files),
                               "requests": _kinds(proxy.requests)}
            print(f"  S3 discovery: {res['discover']}", flush=True)
            with local_cluster(2, 1) as cluster, Client(cluster) as client:
                proxy.reset()
                report = convert("s3://scale/archive", f"s3://scale/cube-s3-{n_rois}.zarr",
                                 selection=Selection(rois=tuple(rois)), storage_options=opts,
                                 client=client, s1=s1)
            res["convert"] = {"seconds": report.seconds, "phases": report.timings,
                              "patches": report.patches, "problems": len(report.problems),
                              "requests": _kinds(proxy.requests),
                              "total": len(proxy.requests)}
        print(f"  S3 convert {len(rois)} ROIs: {res['convert']}", flush=True)
        t = time.perf_counter()
        res["cube_objects"] = _upload(server, work / f"cube-{big}.zarr", "scale",
                                      f"cube-{big}.zarr")
        res["upload_cube_s"] = time.perf_counter() - t
        url = f"s3://scale/cube-{big}.zarr"
        with FaultyS3Proxy(server.endpoint_url) as proxy:
            opts = {**server.storage_options(), "endpoint_url": proxy.url}
            s2cube.open_cube(url, storage_options=opts)  # imports, not counted
            storage._resolve.cache_clear()
            storage._FS_CACHE.clear()
            proxy.reset()
            t = time.perf_counter()
            s2cube.open_cube(url, storage_options=opts)
            res["open_s"] = time.perf_counter() - t
            res["open_requests"] = list(proxy.requests)
            proxy.reset()
            t = time.perf_counter()
            loader = make_loader(url, storage_options=opts, split="train", batch_size=32,
                                 num_workers=0, threads=2, sampler="random", pin_memory=False,
                                 s1=s1)
            res["loader_setup_s"] = time.perf_counter() - t
            res["loader_setup_requests"] = len(proxy.requests)
            proxy.reset()
            it = iter(loader)
            t = time.perf_counter()
            n = len(next(it)["pdx"])
            res["first_batch_s"] = time.perf_counter() - t
            res["first_batch_requests"] = len(proxy.requests)
            proxy.reset()
            t = time.perf_counter()
            seen = 0
            for _, batch in zip(range(30), it):
                seen += len(batch["pdx"])
            res["loader_samples"] = seen
            res["loader_samples_per_s"] = seen / (time.perf_counter() - t)
            res["loader_requests_per_sample"] = len(proxy.requests) / max(seen, 1)
            res["first_batch_samples"] = n
    return res


def measure_s3_listing(archive: Path, n_rois: int, latencies: list[float],
                       s1: bool = True) -> dict:
    """Listing the first ``n_rois`` ROIs' files uploaded to S3, one listing after the other
    and the folders 16 at a time, side by side, with each request delayed by each of
    ``latencies`` at the proxy (a remote store's round trip, emulated on loopback)."""
    from _servers import FaultyS3Proxy, SeaweedServer

    from s2cube import schema
    from s2cube.io import storage
    from s2cube_conversion.discover import LIST_THREADS, list_files

    rois = subset(n_rois) or list(schema.ROIS)
    res: dict = {"rois": rois, "s1": s1, "runs": []}
    with SeaweedServer() as server:
        server.client("admin").create_bucket(Bucket="scale")
        t = time.perf_counter()
        res["archive_objects"] = sum(
            _upload(server, archive / f"{schema.ROIS[r].collection}/{schema.ROIS[r].roi_id}",
                    "scale", f"archive/{schema.ROIS[r].collection}/{schema.ROIS[r].roi_id}",
                    skip=None if s1 else (lambda p: "S1" in p.parts)) for r in rois)
        res["upload_archive_s"] = time.perf_counter() - t
        with FaultyS3Proxy(server.endpoint_url) as proxy:
            loc = storage.parse_location("s3://scale/archive",
                                         {**server.storage_options(), "endpoint_url": proxy.url})
            for latency in latencies:
                proxy.latency = latency
                for threads in (1, LIST_THREADS):
                    storage._FS_CACHE.clear()  # no listing served from s3fs's cache
                    proxy.reset()
                    t = time.perf_counter()
                    keys = len(list_files(loc, threads=threads))
                    run = {"latency_s": latency, "threads": threads, "keys": keys,
                           "seconds": time.perf_counter() - t,
                           "requests": _kinds(proxy.requests)}
                    res["runs"].append(run)
                    print(f"  {run}", flush=True)
    return res


# --- commands -----------------------------------------------------------------------------------

def cmd_synth(args) -> None:
    from s2cube_conversion.synth_full import synthesize_full_archive

    t = time.perf_counter()
    grid = tuple(int(v) for v in args.grid.split("x")) if args.grid else None
    out = synthesize_full_archive(args.root, patch_size=args.patch_size, s1=not args.no_s1,
                                  workers=args.workers, grid=grid, n_slots=args.slots,
                                  progress=lambda d, n: print(f"\r  {d}/{n} ROIs", end="",
                                                              flush=True))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nsynth: {out.files} files ({out.written} written, {out.kept} kept), "
          f"{out.patches} patch locations, {out.bytes_written / 1e6:.0f} MB written, "
          f"{time.perf_counter() - t:.0f} s; peak RSS {_rusage()[1]} MB (this process), "
          f"{kids.ru_maxrss // 1024} MB (largest writer process), CPU of the writers "
          f"{kids.ru_utime + kids.ru_stime:.0f} s")


def cmd_run(args) -> None:
    results = _load(args.json)
    for n in args.sizes:
        s1 = not (args.no_s1_at and n >= args.no_s1_at)
        checks = not (args.no_validate_at and n >= args.no_validate_at)
        print(f"size {n}: S1 {'yes' if s1 else 'no'}, validate {'yes' if checks else 'no'}",
              flush=True)
        out = args.work / f"size-{n}.json"
        cmd = [sys.executable, __file__, "_size", str(n), "--root", str(args.root), "--work",
               str(args.work), "--out", str(out)] + (["--no-s1"] if not s1 else []) + \
            (["--no-validate"] if not checks else []) + \
            (["--profile", args.profile] if args.profile else [])
        subprocess.run(cmd, check=True)
        res = json.loads(out.read_text())
        results = [r for r in results if r["rois"] != n] + [res]
        args.json.write_text(json.dumps(results, indent=1))
    print_table(results)


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="all",
                        choices=["all", "synth", "run", "loader", "table", "estimate", "s3", "s3-list",
                                 "_size", "_loader"])
    parser.add_argument("size", nargs="?", type=int)
    parser.add_argument("--root", type=Path, default=ROOT / "archive")
    parser.add_argument("--work", type=Path, default=ROOT / "work")
    parser.add_argument("--json", type=Path, default=ROOT / "scale.json")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--grid", help="ROWSxCOLS for every ROI (a quick trial), not real-like")
    parser.add_argument("--slots", type=int, default=30)
    parser.add_argument("--no-s1", action="store_true")
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--latency", type=lambda v: [float(x) for x in v.split(",")],
                        default=[0.0, 0.03], help="s3-list: seconds added per request")
    parser.add_argument("--repeat", type=int, default=3, help="loader: runs per size")
    parser.add_argument("--s3-rois", type=int, default=1,
                        help="s3: upload and convert this many ROIs (1, 5, 13 or 53)")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        default=[1, 5, 13, 53])
    parser.add_argument("--no-s1-at", type=int, help="convert S2 only from this many ROIs on")
    parser.add_argument("--no-validate-at", type=int,
                        help="skip validate (every file read again) from this many ROIs on")
    parser.add_argument("--profile", choices=["steps", "all"],
                        help="cProfile dumps of the client side of each step after the "
                             "conversion (steps), or of the conversion too (all)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores (nproc)", flush=True)
    if args.command == "_size":
        res = measure_size(args.size, args.root, args.work, not args.no_s1,
                           not args.no_validate, args.profile)
        args.out.write_text(json.dumps(res, indent=1))
        return
    if args.command == "_loader":
        print(json.dumps(loader_epoch(args.work / f"cube-{args.size}.zarr", not args.no_s1)))
        return
    if args.command == "loader":
        cmd_loader(args)
    if args.command in ("all", "synth"):
        cmd_synth(args)
    if args.command in ("all", "run"):
        cmd_run(args)
    if args.command == "table":
        print_table(_load(args.json))
    if args.command == "s3":
        res = measure_s3(args.root, args.work, max(args.sizes), s1=not args.no_s1,
                         n_rois=args.s3_rois)
        (args.work / "s3.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
    if args.command == "s3-list":
        res = measure_s3_listing(args.root, args.s3_rois, args.latency, s1=not args.no_s1)
        (args.work / "s3-list.json").write_text(json.dumps(res, indent=1))
    if args.command in ("all", "table", "estimate"):
        estimate(_load(args.json))


if __name__ == "__main__":
    main()
