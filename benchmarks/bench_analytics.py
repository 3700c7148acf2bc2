"""Benchmark the lazy analytics of issue 3 against what the cube's bytes allow.

Figures (printed as a markdown table, with the command that made them):

1. cloudiness statistics of the whole cube read <= 1 % of its stored bytes (counted by
   a store wrapper);
2. a temporal median composite over one ROI vs two *decode limits*, each in as many
   processes as dask workers (1 and 2): reading and decompressing the same chunks with
   zarr and nothing else, and the stricter raw decompression of the same chunks' bytes
   (numcodecs on bytes read with ``pread``, no zarr); each on a LocalCluster with dask's
   default worker environment and with ``MALLOC_TRIM_THRESHOLD_`` unset (``--with-generic``
   also times the same analyses through xarray's graph instead of direct reads);
3. ``evaluate`` on N seq2point samples vs the decode limits of the chunks it reads (targets,
   input masks and a prediction cube written to disk first);
4. metric values vs a straightforward NumPy implementation of the reference formulas
   (literal 11x11 window SSIM, per-pixel SAM, ...), on random and on real pixels.

Small by default (a synthetic archive of 2 ROIs x 7x8 patches of 32 px, converted once and
cached in --workdir); ``--cube`` measures an existing cube instead.

    .venv/bin/python benchmarks/bench_analytics.py
    .venv/bin/python benchmarks/bench_analytics.py --grid 8x8 --patch-size 64 --samples 100
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
#: dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers unless this is null (see README)
TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


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


# --- 1. cloudiness bytes ------------------------------------------------------------------------

def bench_cloudiness(cube: Path) -> dict:
    import dask
    from zarr.storage import LocalStore

    import s2cube
    from s2cube.io.open import counting_store

    store, counter = counting_store(LocalStore(str(cube), read_only=True))
    ds = s2cube.open_cube(store)
    with dask.config.set(scheduler="threads"):
        for by in ("roi", "region", "split", "month", ("region", "month")):
            ds.s2cube.cloudiness(by=by).compute()
    total = stored_bytes(cube)
    return {"read": counter.bytes, "total": total, "share": counter.bytes / total,
            "arrays": sorted(counter.by_array)}


# --- decode limit: zarr straight, in n processes ---------------------------------------------------

def _read_chunks(args) -> int:
    """Read ``(array, selection)`` items with zarr alone; return the decoded bytes."""
    path, items = args
    import zarr

    arrays: dict = {}
    total = 0
    for name, sel in items:
        if name not in arrays:
            arrays[name] = zarr.open_array(f"{path}/{name}", mode="r")
        total += arrays[name][sel].nbytes
    return total


def decode_limit(pool: cf.ProcessPoolExecutor, n: int, jobs: list, repeat: int) -> tuple[float, int]:
    """Seconds to read ``jobs`` (list of (store path, name, selection)) split over n processes."""
    by_path: dict[str, list] = {}
    for path, name, sel in jobs:
        by_path.setdefault(path, []).append((name, sel))
    parts = []
    for path, items in by_path.items():
        for k in range(n):
            parts.append((path, items[k::n]))
    nbytes = 0

    def run():
        nonlocal nbytes
        nbytes = sum(pool.map(_read_chunks, parts))

    return best_of(run, repeat), nbytes


def _decode_raw(args) -> int:
    """Decompress frames and chunks from their bytes (numcodecs, one thread); decoded bytes.

    ``("frames", cube, var, roi, row, col, slots)`` through the loader's ``ChunkReader``
    (shard index, ``pread``, decompression into a reused buffer); ``("chunk", folder,
    layout, slices)`` one chunk of an unsharded array. The strict limit: no zarr, no dask.
    """
    from s2cube.direct import Frames, LocalChunks

    total = 0
    for job in args:
        if job[0] == "frames":
            _, cube, var, roi, row, col, slots = job
            frames = Frames(cube, cube, {}, threads=1)  # one thread, as each dask worker has
            total += frames.read(var, roi, row, col, slots, reuse=True).nbytes
        else:
            _, folder, layout, slices = job
            total += LocalChunks(folder, layout).read(slices).nbytes
    return total


def raw_limit(pool: cf.ProcessPoolExecutor, n: int, jobs: list, repeat: int) -> float:
    """Seconds to decompress ``jobs`` (see :func:`_decode_raw`) split over n processes."""
    parts = [jobs[k::n] for k in range(n)]
    return best_of(lambda: sum(pool.map(_decode_raw, parts)), repeat)


# --- 2. composite ---------------------------------------------------------------------------

def composite_jobs(ds, cube: Path, roi: str) -> list:
    p = ds.attrs["patch_size"]
    i = list(ds.roi.values).index(roi)
    pid = ds.patch_id.values[i]
    jobs = []
    for r, c in zip(*np.nonzero(pid >= 0)):
        ys, xs = slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)
        jobs.append((str(cube), "s2", (i, slice(None), slice(None), ys, xs)))
        jobs.append((str(cube), "cloud_mask", (i, slice(None), ys, xs)))
    return jobs


def composite_raw_jobs(ds, cube: Path, roi: str) -> list:
    i = list(ds.roi.values).index(roi)
    slots = list(range(ds.sizes["time"]))
    return [("frames", str(cube), var, i, int(r), int(c), slots)
            for r, c in zip(*np.nonzero(ds.patch_id.values[i] >= 0)) for var in ("s2", "cloud_mask")]


# --- 3. evaluate -----------------------------------------------------------------------------

def write_predictions(ds, plan, path: Path):
    import xarray as xr

    if not (path / "zarr.json").exists():
        pred = ds.s2cube.baseline(plan, "mosaic")
        pred.to_dataset(name="prediction").drop_vars(
            [c for c in pred.coords if c not in ("roi", "band", "y", "x")]).to_zarr(
            path, mode="w", zarr_format=3, consolidated=False)
    return xr.open_zarr(path, chunks={}, consolidated=False)["prediction"]


def evaluate_jobs(ds, plan, cube: Path, pred_path: Path, pred_rois: list[str]) -> list:
    p = ds.attrs["patch_size"]
    jobs = []
    for s in plan.itertuples():
        ys, xs = slice(s.row * p, (s.row + 1) * p), slice(s.col * p, (s.col + 1) * p)
        jobs.append((str(cube), "s2", (s.roi_index, int(s.target), slice(None), ys, xs)))
        for t in s.inputs:
            jobs.append((str(cube), "cloud_mask", (s.roi_index, int(t), ys, xs)))
        jobs.append((str(pred_path), "prediction", (pred_rois.index(s.roi), slice(None), ys, xs)))
    return jobs


def evaluate_raw_jobs(plan, cube: Path, pred_path: Path, pred_rois: list[str]) -> list:
    import json

    from s2cube.io.reader import parse_layout

    folder = pred_path / "prediction"
    layout = parse_layout("prediction", json.loads((folder / "zarr.json").read_text()), cube=False)
    p = layout.chunk[-1]
    jobs = []
    for s in plan.itertuples():
        jobs.append(("frames", str(cube), "s2", s.roi_index, s.row, s.col, [int(s.target)]))
        jobs.append(("frames", str(cube), "cloud_mask", s.roi_index, s.row, s.col,
                     [int(t) for t in s.inputs]))
        jobs.append(("chunk", str(folder), layout, (
            slice(pred_rois.index(s.roi), pred_rois.index(s.roi) + 1), slice(0, layout.chunk[1]),
            slice(s.row * p, (s.row + 1) * p), slice(s.col * p, (s.col + 1) * p))))
    return jobs


# --- compute alone: the same work on arrays already in memory, one process ------------------

def composite_compute(ds, cube: Path, roi: str) -> float:
    """Seconds of the composite's NumPy work alone (the chunks read beforehand)."""
    import zarr

    from s2cube.analysis.baselines import _composite_block
    from s2cube.analysis.stats import valid_frames

    p = ds.attrs["patch_size"]
    i = list(ds.roi.values).index(roi)
    s2, cm = (zarr.open_array(f"{cube}/{n}", mode="r") for n in ("s2", "cloud_mask"))
    frames = valid_frames(ds).values[i]
    blocks = []
    for r, c in zip(*np.nonzero(ds.patch_id.values[i] >= 0)):
        ys, xs = slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)
        blocks.append((s2[i, :, :, ys, xs][None], cm[i, :, ys, xs][None],
                       frames[:, r, c][None, :, None, None]))
    t0 = time.perf_counter()
    for b in blocks:
        _composite_block(*b, detector="s2cloudless_mask")
    return time.perf_counter() - t0


def evaluate_compute(ds, plan, cube: Path, pred_path: Path, pred_rois: list[str]) -> float:
    """Seconds of evaluate's NumPy work alone (the chunks read beforehand)."""
    import zarr

    from s2cube.analysis.baselines import _score_block

    p = ds.attrs["patch_size"]
    s2, cm = (zarr.open_array(f"{cube}/{n}", mode="r") for n in ("s2", "cloud_mask"))
    pred = zarr.open_array(f"{pred_path}/prediction", mode="r")
    items = []
    for s in plan.itertuples():
        ys, xs = slice(s.row * p, (s.row + 1) * p), slice(s.col * p, (s.col + 1) * p)
        items.append((s2[s.roi_index, int(s.target), :, ys, xs][None, None],
                      [cm[s.roi_index, int(t), ys, xs][None, None] for t in s.inputs],
                      pred[pred_rois.index(s.roi), :, ys, xs][None]))
    t0 = time.perf_counter()
    for target, masks, prediction in items:
        _score_block("s2cloudless_mask", target, masks, prediction)
    return time.perf_counter() - t0


# --- 4. metrics vs straightforward NumPy ----------------------------------------------------------

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

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        t = rng.random((13, 64, 64))
        cases.append((np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1), t,
                      rng.random((3, 64, 64)) > 0.6, "random"))
    from s2cube_conversion._realpixels import load_scenes

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
    parser.add_argument("--with-generic", action="store_true",
                        help="also time the analyses through xarray's graph (no direct reads)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    grid = tuple(int(v) for v in args.grid.lower().split("x"))
    workers = [int(w) for w in args.workers.split(",")]
    cube = Path(args.cube) if args.cube else make_cube(workdir, grid, args.patch_size, max(workers))

    import dask
    from dask.distributed import Client, LocalCluster

    import s2cube

    rows: list[tuple[str, str, str, str]] = []
    cloud = bench_cloudiness(cube)
    rows.append(("cloudiness (roi, region, split, month, region x month): bytes read",
                 f"{cloud['read'] / 1e3:.0f} kB of {cloud['total'] / 1e6:.1f} MB = "
                 f"{100 * cloud['share']:.2f} %", "<= 1 %", _ok(cloud["share"] <= 0.01)))

    inner = s2cube.open_cube(cube)
    shards = s2cube.open_cube(cube, chunks="shard")
    counts = (inner.patch_id >= 0).sum(("row", "col")).values
    roi = str(inner.roi.values[int(np.argmax(counts))])
    comp_jobs = composite_jobs(inner, cube, roi)
    plan = inner.s2cube.sample_plan(split="all", n_input_samples=3).head(args.samples)
    pred = write_predictions(inner, plan, workdir / f"pred-{cube.name}")
    pred_rois = [str(r) for r in pred.roi.values]
    eval_jobs = evaluate_jobs(inner, plan, cube, workdir / f"pred-{cube.name}", pred_rois)
    c_comp = composite_compute(inner, cube, roi)
    c_eval = evaluate_compute(inner, plan, cube, workdir / f"pred-{cube.name}", pred_rois)
    comp_raw = composite_raw_jobs(inner, cube, roi)
    eval_raw = evaluate_raw_jobs(plan, cube, workdir / f"pred-{cube.name}", pred_rois)
    envs = {"dask's default worker env": {},
            "MALLOC_TRIM_THRESHOLD_ unset": {TRIM_KEY: None}}
    for n in workers:
        with cf.ProcessPoolExecutor(n) as pool:
            list(pool.map(_read_chunks, [(str(cube), [])] * n))  # start the processes
            for env, config in envs.items():
                with dask.config.set(config), \
                        LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                     dashboard_address=None, host="127.0.0.1") as cluster, \
                        Client(cluster):
                    limit, nbytes = decode_limit(pool, n, comp_jobs, args.repeat)
                    raw = raw_limit(pool, n, comp_raw, args.repeat)
                    layouts = [("direct reads", shards)] + (
                        [("xarray graph, shard chunks", shards.drop_encoding())]
                        if args.with_generic and env == next(iter(envs)) else [])
                    for label, ds in layouts:
                        comp = ds.s2cube.sel_roi([roi]).s2cube.composite()
                        comp.isel(y=slice(0, 1), x=slice(0, 1)).compute()  # warm the workers
                        t = best_of(lambda c=comp: c.compute(), args.repeat)
                        rows.append(_row(f"composite of {roi} ({label}), {n} worker(s), {env}",
                                         t, limit, raw, nbytes, c_comp / n))
                    limit, nbytes = decode_limit(pool, n, eval_jobs, args.repeat)
                    raw = raw_limit(pool, n, eval_raw, args.repeat)
                    layouts = [("direct reads", inner)] + (
                        [("xarray graph", inner.drop_encoding())]
                        if args.with_generic and env == next(iter(envs)) else [])
                    for label, ds in layouts:
                        t = best_of(lambda d=ds: d.s2cube.evaluate(pred, plan), args.repeat)
                        rows.append(_row(f"evaluate {len(plan)} seq2point samples ({label}), "
                                         f"{n} worker(s), {env}", t, limit, raw, nbytes, c_eval / n))
    metric = bench_metrics()
    for kind, worst in metric["worst"].items():
        n_cases = metric["cases"][kind]
        rows.append((f"metrics vs plain NumPy, {kind} pixels ({n_cases} image pairs)",
                     f"max |diff| {worst:.1e}" if n_cases else "skipped (no real pixels)",
                     "<= 1e-6", _ok(worst <= 1e-6) if n_cases else "-"))

    p = inner.attrs["patch_size"]
    print(f"\ncube: {cube} ({inner.sizes['roi']} ROIs, {int(counts.sum())} patches of {p} px, "
          f"{stored_bytes(cube) / 1e6:.1f} MB); machine: {os.cpu_count()} cores\n")
    print("| figure | measured | target | ok (vs zarr / vs raw) |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ncommand: .venv/bin/python benchmarks/bench_analytics.py "
          f"{' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}".rstrip())


def _row(what: str, t: float, limit: float, raw: float, nbytes: int, compute: float) -> tuple:
    """Measured time vs zarr's decode, vs raw decompression, and vs raw + the work alone."""
    return (what, f"{t:.2f} s; zarr decode {limit:.2f} s ({nbytes / limit / 1e6:.0f} MB/s) = "
                  f"**{100 * limit / t:.0f} %**; raw decompression {raw:.2f} s = "
                  f"**{100 * raw / t:.0f} %**; raw + the arithmetic alone {raw + compute:.2f} s = "
                  f"{100 * (raw + compute) / t:.0f} %", ">= 50 % of decode",
            f"{_ok(limit / t >= 0.5)} / {_ok(raw / t >= 0.5)}")


def _ok(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    main()
