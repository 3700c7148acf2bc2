"""Benchmark analyses on ``open_cube`` against what the cube's bytes and the arithmetic allow.

Every analysis reads through the one read path (the xarray backend over s2cube's chunk
reader, checksums verified). For each workload, measured side by side in one run:

- **ours**: the accessor verb or the xarray expression, as a user writes it, on a
  ``dask.distributed`` LocalCluster of 1 and 2 single-threaded worker processes;
- **limit** ("raw + arithmetic"): the same chunks read, checksummed and decompressed by the
  chunk reader into reused buffers (no dask, no xarray), split over as many processes as
  workers, plus the same arithmetic on the arrays already in memory, in one process,
  divided by the worker count.

Workloads: the temporal median composite of one ROI; ``evaluate`` on N seq2point samples
(a prediction cube written to Zarr first; the limit reads each sample's target, input
masks and prediction); the NDVI mean per ROI and month; ``masked_reflectance().max("time")``.
Also: the bytes that cloudiness statistics read (<= 1 % of the cube), and the metrics
against a straightforward NumPy implementation of the reference formulas.

    .venv/bin/python benchmarks/bench_analytics.py                       # small, fast
    .venv/bin/python benchmarks/bench_analytics.py --grid 8x7 --patch-size 256 --samples 100
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROIS = ("ROIs1868_73", "ROIs2017_8")
DETECTOR = "s2cloudless_mask"
#: the worker environments compared: dask's default, and the one README recommends (large
#: allocations from the heap, kept for reuse: a patch series is ~50 MB, and dask's default
#: MALLOC_TRIM_THRESHOLD_ makes every one of them a fresh mmap, faulted in page by page)
ENVS = {"dask default env": {},
        "s2cube env": {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                       "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(1 << 28)}}


# --- setup ---------------------------------------------------------------------------------

def make_cube(workdir: Path, grid: tuple[int, int], patch: int, workers: int) -> Path:
    """Synthesize and convert an archive once; reuse it when the same options ran before."""
    cube = workdir / f"cube-{grid[0]}x{grid[1]}-p{patch}.zarr"
    if (cube / "zarr.json").exists():
        return cube
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    archive = workdir / f"archive-{grid[0]}x{grid[1]}-p{patch}"
    if not archive.exists():
        synthesize_archive(archive, rois=ROIS, grid=grid, patch_size=patch, seed=11)
    report = convert(archive, cube, n_workers=workers)
    if not report.ok:
        raise SystemExit(f"conversion reported problems: {list(report.problems.items())[:3]}")
    return cube


def stored_bytes(cube: Path) -> int:
    return sum(f.stat().st_size for f in cube.rglob("*") if f.is_file()
               and "_s2cube_journal" not in f.parts)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# --- the limit: the chunk reader alone, in n processes ----------------------------------------

def _read_frames(args) -> int:
    """Read ``(var, roi, row, col, slots)`` jobs with the chunk reader into reused buffers."""
    cube, jobs = args
    from s2cube.io.backend import open_source
    from s2cube.io.reader import ChunkReader, FrameRequest

    source = open_source(cube)[0]
    reader = ChunkReader(source.url, source.layouts, roi_names=source.roi_names, threads=1)
    bufs: dict = {}
    total = 0
    for var, roi, row, col, slots in jobs:
        lay = source.layouts[var]
        out = bufs.get((var, len(slots)))
        if out is None:
            out = bufs[(var, len(slots))] = np.empty((len(slots), *lay.frame_shape), lay.dtype)
        reader.read([FrameRequest.at(lay, roi, row, col, int(t), out[k])
                     for k, t in enumerate(slots)])
        total += out.nbytes
    return total


def _read_zarr(args) -> int:
    path, items = args
    import zarr

    arr = zarr.open_array(path, mode="r")
    return sum(arr[sel].nbytes for sel in items)


def read_limit(pool: cf.ProcessPoolExecutor, n: int, cube: Path, jobs: list, repeat: int,
               zarr_jobs: tuple[str, list] | None = None) -> float:
    """Seconds to read ``jobs`` (and plain-zarr ``zarr_jobs``) split over n processes."""
    parts = [(str(cube), jobs[k::n]) for k in range(n)]
    zparts = [(zarr_jobs[0], zarr_jobs[1][k::n]) for k in range(n)] if zarr_jobs else []

    def run():
        futures = [pool.submit(_read_frames, p) for p in parts]
        futures += [pool.submit(_read_zarr, p) for p in zparts]
        for f in futures:
            f.result()

    return best_of(run, repeat)


# --- workloads -----------------------------------------------------------------------------------

def _patches(ds, roi: str | None = None) -> list[tuple[int, int, int]]:
    rois = list(ds.roi.values)
    pid = ds.patch_id.values
    keep = range(len(rois)) if roi is None else [rois.index(roi)]
    return [(i, int(r), int(c)) for i in keep for r, c in zip(*np.nonzero(pid[i] >= 0))]


def _series_jobs(ds, cells, variables) -> list:
    slots = list(range(ds.sizes["time"]))
    return [(v, i, r, c, slots) for i, r, c in cells for v in variables]


#: how often the in-memory arithmetic of the limit is timed (the best counts, as for the runs)
ALONE_REPEAT = 3


def _per_patch_seconds(ds, cells, fn) -> float:
    """Seconds of ``fn(one patch series as an in-memory Dataset)`` over ``cells``: for each
    patch the best of :data:`ALONE_REPEAT` calls (on a shared machine the best is the cost)."""
    p = ds.attrs["patch_size"]
    total = 0.0
    for i, r, c in cells:
        one = ds.isel(roi=[i], y=slice(r * p, (r + 1) * p), x=slice(c * p, (c + 1) * p),
                      row=[r], col=[c]).load()
        total += best_of(lambda: fn(one), ALONE_REPEAT)  # noqa: B023 (called at once)
    return total


def write_predictions(ds, plan, path: Path):
    """The mosaic baseline of ``plan`` as a plain Zarr prediction cube (one chunk per patch)."""
    import xarray as xr

    p = ds.attrs["patch_size"]
    if not (path / "zarr.json").exists():
        pred = ds.s2cube.baseline(plan, "mosaic")
        keep = [c for c in pred.coords if c in ("roi", "band", "y", "x")]
        pred.drop_vars([c for c in pred.coords if c not in keep]).to_dataset(
            name="prediction").chunk({"roi": 1, "band": -1, "y": p, "x": p}).to_zarr(
            path, mode="w", zarr_format=3, consolidated=True)
    return xr.open_zarr(path)["prediction"]


def ndvi_monthly(ds):
    """The NDVI mean per ROI and month, as a user writes it."""
    import xarray as xr

    per_slot = ds.s2cube.ndvi().mean(("y", "x"))  # (roi, time); gaps are NaN (0 / 0)
    month = ds.s2_date.max(("row", "col")).dt.month
    months = xr.DataArray(np.arange(1, 13), dims="month", coords={"month": np.arange(1, 13)})
    return per_slot.where(month == months).mean("time")  # (roi, month)


def masked_max(ds):
    return ds.s2cube.masked_reflectance().max("time")


# --- cloudiness bytes and metric accuracy ---------------------------------------------------------

def bench_cloudiness(cube: Path) -> dict:
    import dask

    import s2cube
    from s2cube.io import reader

    ds = s2cube.open_cube(cube)
    with dask.config.set(scheduler="threads"), reader.counting() as stats:
        for by in ("roi", "region", "split", "month", ("region", "month")):
            ds.s2cube.cloudiness(by=by).compute()
    total = stored_bytes(cube)
    return {"read": stats.bytes, "total": total, "share": stats.bytes / total,
            "arrays": sorted(stats.by_array)}


def plain_metrics(pred: np.ndarray, target: np.ndarray, masks: np.ndarray) -> dict:
    """The reference formulas written out as directly as NumPy allows."""
    from numpy.lib.stride_tricks import sliding_window_view

    p, t = pred.astype(np.float64), target.astype(np.float64)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def conv(img):  # zero-padded 'same' 2-D correlation with the 11x11 window
        return np.einsum("...ijkl,kl->...ij", sliding_window_view(
            np.pad(img, [(0, 0), (5, 5), (5, 5)]), (11, 11), axis=(-2, -1)), window)

    mu1, mu2 = conv(t), conv(p)
    s1, s2, s12 = conv(t * t) - mu1**2, conv(p * p) - mu2**2, conv(t * p) - mu1 * mu2
    ssim = ((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4)) / ((mu1**2 + mu2**2 + 1e-4) * (s1 + s2 + 9e-4))
    rmse = np.sqrt(np.mean((t - p) ** 2))
    angle = np.arccos(np.clip((t * p).sum(0) / np.sqrt((t * t).sum(0)) / np.sqrt((p * p).sum(0)),
                              -1, 1))
    union = np.clip(masks.sum(0), 0, 1)
    cloudy, clear = np.broadcast_to(union == 1, t.shape), np.broadcast_to(union == 0, t.shape)
    return {"rmse": rmse, "mae": np.mean(np.abs(t - p)), "psnr": 20 * np.log10(1 / rmse),
            "ssim": ssim.mean(), "sam_deg": np.mean(angle) * 180 / np.pi, "sam_rad": np.mean(angle),
            "rmse_cloudy": np.sqrt(np.nanmean((t[cloudy] - p[cloudy]) ** 2)),
            "rmse_clear": np.sqrt(np.nanmean((t[clear] - p[clear]) ** 2)),
            "mae_cloudy": np.nanmean(np.abs(t[cloudy] - p[cloudy])),
            "mae_clear": np.nanmean(np.abs(t[clear] - p[clear]))}


def bench_metrics() -> dict:
    from s2cube.analysis import metrics as M
    from s2cube_conversion._realpixels import load_scenes

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        t = rng.random((13, 64, 64))
        cases.append((np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1), t,
                      rng.random((3, 64, 64)) > 0.6, "random"))
    scenes = np.clip(load_scenes().astype(np.float64), 0, 1)  # (5, 13, 101, 100), packaged
    for a, b in ((2, 3), (0, 4), (1, 2)):
        masks = np.stack([scenes[k, 1] > 0.2 for k in (0, 1, 4)])  # bright B2 as "cloud"
        cases.append((scenes[a], scenes[b], masks, "real"))
    worst = {"random": 0.0, "real": 0.0}
    for pred, target, masks, kind in cases:
        mine = M.image_metrics(pred, target, masks)
        plain = plain_metrics(pred, target, masks)
        for k, v in plain.items():
            worst[kind] = max(worst[kind], abs(mine[k] - float(v)))
    return {"worst": worst, "cases": {k: sum(c[3] == k for c in cases) for k in worst}}


# --- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/s2cube-bench-analytics")
    parser.add_argument("--cube", help="measure this cube instead of a synthetic one")
    parser.add_argument("--grid", default="7x8", help="patches per ROI of the synthetic cube")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="dask workers to measure with")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default="composite,evaluate,ndvi,masked_max",
                        help="workloads to time")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    grid = tuple(int(v) for v in args.grid.lower().split("x"))
    workers = [int(w) for w in args.workers.split(",")]
    cube = Path(args.cube) if args.cube else make_cube(workdir, grid, args.patch_size, max(workers))
    only = set(args.only.split(","))

    import dask
    from dask.distributed import Client, LocalCluster

    import s2cube
    from s2cube.analysis.baselines import _composite_block
    from s2cube.analysis.evaluate import _score
    from s2cube.analysis.stats import valid_frames

    rows: list[tuple[str, ...]] = []
    cloud = bench_cloudiness(cube)
    rows.append(("cloudiness (roi, region, split, month, region x month): bytes read",
                 f"{cloud['read'] / 1e3:.0f} kB of {cloud['total'] / 1e6:.1f} MB = "
                 f"{100 * cloud['share']:.3f} %", "<= 1 %", _ok(cloud["share"] <= 0.01)))

    ds = s2cube.open_cube(cube)
    p = ds.attrs["patch_size"]
    counts = (ds.patch_id >= 0).sum(("row", "col")).values
    roi = str(ds.roi.values[int(np.argmax(counts))])
    everything = _patches(ds)
    plan = ds.s2cube.sample_plan(split="all", n_input_samples=3).head(args.samples)
    pred = write_predictions(ds, plan, workdir / f"pred-{cube.name}")
    pred_path = str(workdir / f"pred-{cube.name}" / "prediction")
    pred_rois = [str(r) for r in pred.roi.values]
    rois = list(ds.roi.values)

    # what each workload reads (the limit's jobs) and its arithmetic on in-memory arrays
    workloads: dict[str, dict] = {}
    cells = _patches(ds, roi)
    if "composite" in only:
        frames = valid_frames(ds).values

        def composite_alone(one, fr=frames):
            i = rois.index(str(one.roi.values[0]))
            r, c = int(one.row.values[0]), int(one.col.values[0])
            _composite_block(one.s2.values, one.cloud_mask.values,
                             fr[i, :, r, c][None, :, None, None], DETECTOR)

        workloads["composite"] = {
            "what": f"composite of {roi} ({len(cells)} patch series)",
            "jobs": _series_jobs(ds, cells, ("s2", "cloud_mask")),
            "alone": _per_patch_seconds(ds, cells, composite_alone),
            "run": lambda: ds.s2cube.sel_roi([roi]).s2cube.composite().compute()}
    if "evaluate" in only:
        jobs, zjobs, items = [], [], []
        for s in plan.itertuples():
            i = rois.index(s.roi)
            jobs.append(("s2", i, s.row, s.col, [int(s.target)]))
            jobs.append(("cloud_mask", i, s.row, s.col, [int(t) for t in s.inputs]))
            zjobs.append((pred_rois.index(s.roi), slice(None), slice(s.row * p, s.row * p + p),
                          slice(s.col * p, s.col * p + p)))
        tgt = ds.s2.values if ds.s2.nbytes < 4e9 else None
        for s in plan.itertuples():
            i = rois.index(s.roi)
            ys, xs = slice(s.row * p, s.row * p + p), slice(s.col * p, s.col * p + p)
            target = (tgt[i, int(s.target), :, ys, xs] if tgt is not None else
                      ds.s2.isel(roi=i, time=int(s.target), y=ys, x=xs).values)
            masks = [ds.cloud_mask.isel(roi=i, time=int(t), y=ys, x=xs).values for t in s.inputs]
            items.append((target, np.stack(masks), pred.sel(roi=s.roi).isel(y=ys, x=xs).values))
        alone = sum(best_of(lambda item=item: _score(DETECTOR, *item), ALONE_REPEAT)
                    for item in items)
        workloads["evaluate"] = {
            "what": f"evaluate {len(plan)} seq2point samples", "jobs": jobs,
            "zarr": (pred_path, zjobs), "alone": alone,
            "run": lambda: ds.s2cube.evaluate(pred, plan)}
        del tgt, items
    if "ndvi" in only:
        workloads["ndvi"] = {
            "what": f"NDVI mean per ROI and month, {len(everything)} patch series",
            "jobs": _series_jobs(ds, everything, ("s2",)),
            "alone": _per_patch_seconds(ds, everything, lambda one: ndvi_monthly(one).values),
            "run": lambda: ndvi_monthly(ds).compute()}
    if "masked_max" in only:
        workloads["masked_max"] = {
            "what": f"masked_reflectance().max(\"time\") of {roi} ({len(cells)} patch series)",
            "jobs": _series_jobs(ds, cells, ("s2", "cloud_mask")),
            "alone": _per_patch_seconds(ds, cells, lambda one: masked_max(one).values),
            "run": lambda: masked_max(ds.s2cube.sel_roi([roi])).compute()}

    for n in workers:
        with cf.ProcessPoolExecutor(n) as pool:
            list(pool.map(_read_frames, [(str(cube), [])] * n))  # start the processes
            limits = {k: read_limit(pool, n, cube, w["jobs"], args.repeat, w.get("zarr"))
                      for k, w in workloads.items()}
        for env, config in ENVS.items():
            # dask's nanny sets these in this process before it spawns workers: start clean
            for var in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
                os.environ.pop(var, None)
            with dask.config.set(config), \
                    LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                 dashboard_address=None, host="127.0.0.1") as cluster, \
                    Client(cluster):
                for key, w in workloads.items():
                    w["run"]()  # warm the workers (imports, shard indexes of other runs)
                    t = best_of(w["run"], args.repeat)
                    limit = limits[key] + w["alone"] / n
                    rows.append((f"{w['what']}, {n} worker(s), {env}",
                                 f"{t:.2f} s; limit {limit:.2f} s (read {limits[key]:.2f} s + "
                                 f"arithmetic {w['alone'] / n:.2f} s) = **{100 * limit / t:.0f} %**",
                                 ">= 70 %", _ok(limit / t >= 0.7)))
    metric = bench_metrics()
    for kind, worst in metric["worst"].items():
        rows.append((f"metrics vs plain NumPy, {kind} pixels ({metric['cases'][kind]} image pairs)",
                     f"max |diff| {worst:.1e}", "<= 1e-6", _ok(worst <= 1e-6)))

    load = os.getloadavg()
    print(f"\ncube: {cube} ({ds.sizes['roi']} ROIs, {int(counts.sum())} patches of {p} px, "
          f"{stored_bytes(cube) / 1e6:.1f} MB); machine: {os.cpu_count()} cores; load "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print("| figure | measured | target | ok |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ncommand: .venv/bin/python benchmarks/bench_analytics.py "
          f"{' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}".rstrip())


def _ok(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    main()
