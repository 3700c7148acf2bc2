"""Seq2seq: the series baselines and internal learning on one series plan, and its CPU cost.

Two tables, on synthetic cubes made from the real Sentinel-2 pixels (the packaged scenes,
converted by the real converter with cloud detection; S1 is synthetic, tied to the land
cover — see ``conversion/synth.py``):

1. **Metrics per method** on the same series plan (the U-TILISE protocol: cloudy >= 40 %,
   >= 5 clear frames, 3 gaps per series from real masks of the same ROI; scored on the
   gapped, cloud-free pixels): nearest, linear, median (``series_baseline`` +
   ``evaluate_series``) and internal learning (``s2cube.models.fit_plan``, default options).
   No target: the figures are what they are on this data.
2. **Internal learning on CPU**: seconds per series at 64² and at 256² patches (30 frames,
   13 bands), split into reading the series from the cube and fitting, and the share of
   reading.

    .venv/bin/python benchmarks/bench_seq2seq.py                     # the defaults below
    .venv/bin/python benchmarks/bench_seq2seq.py --series 4 --timing-series 1
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROIS = ("ROIs1868_73", "ROIs2017_8")


def make_cube(workdir: Path, rois: tuple[str, ...], grid: tuple[int, int], patch: int,
              workers: int) -> Path:
    """Synthesize (real pixels) and convert an archive once; reuse it on later runs."""
    import shutil

    import s2cube
    from s2cube.errors import S2CubeError
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    tag = f"{len(rois)}roi-{grid[0]}x{grid[1]}-p{patch}"
    cube = workdir / f"cube-{tag}.zarr"
    try:
        s2cube.open_cube(cube)  # a finished cube: reuse it
        return cube
    except (S2CubeError, FileNotFoundError):
        pass
    archive = workdir / f"archive-{tag}"
    done = archive / ".complete"
    if not done.exists():
        shutil.rmtree(archive, ignore_errors=True)
        synthesize_archive(archive, rois=rois, grid=grid, patch_size=patch, seed=11)
        done.touch()
    report = convert(archive, cube, n_workers=workers)  # resumes an interrupted conversion
    if not report.ok:
        raise RuntimeError(f"conversion reported problems: {report.problems}")
    return cube


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows``."""
    def fmt(v):
        if isinstance(v, float):
            return "inf" if np.isinf(v) else f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def metrics_per_method(cube: Path, n_series: int, steps: int | None) -> tuple[str, str]:
    """Table 1: every method on one plan; and the plan's description."""
    import dask

    import s2cube
    from s2cube import models

    ds = s2cube.open_cube(cube)
    plan = ds.s2cube.series_plan(split="all", seed=0, n_series=n_series)
    rows = []
    with dask.config.set(scheduler="threads"):
        for method in ("nearest", "linear", "median"):
            t = time.perf_counter()
            ev = ds.s2cube.evaluate_series(ds.s2cube.series_baseline(plan, method), plan)
            rows.append({"method": method, "frames": int(ev.frames["rmse"].count()),
                         **ev.overall.to_dict(), "s/series": (time.perf_counter() - t) / len(plan)})
        overrides = {} if steps is None else {"max_steps": steps}
        t = time.perf_counter()
        run = models.fit_plan(ds, plan, **overrides)
        ev = run.evaluation
        rows.append({"method": "internal learning", "frames": int(ev.frames["rmse"].count()),
                     **ev.overall.to_dict(), "s/series": (time.perf_counter() - t) / len(plan)})
    desc = (f"{len(plan)} series of {ds.attrs['patch_size']}² px x 30 frames x 13 bands "
            f"({', '.join(sorted(set(plan['roi'])))}), {int(plan['gaps'].map(len).sum())} gapped "
            f"frames; internal learning: {run.options}; steps per series "
            f"{run.fits['steps'].tolist()} (best {run.fits['best_step'].tolist()})")
    cols = ["method", "frames", "rmse", "mae", "psnr", "ssim", "sam_deg", "s/series"]
    return table(rows, cols), desc


def timing(cube: Path, n_series: int, steps: int | None) -> dict:
    """Internal learning on CPU: per series, reading and fitting."""
    import torch

    import s2cube
    from s2cube import models

    ds = s2cube.open_cube(cube)
    plan = ds.s2cube.series_plan(split="all", seed=1, n_series=n_series)
    overrides = {"device": "cpu"} if steps is None else {"device": "cpu", "max_steps": steps}
    reads, fits, stepped = [], [], []
    for k in range(len(plan)):
        r = models.fit_series(ds, plan, k, **overrides)
        reads.append(r.read_seconds)
        fits.append(r.fit_seconds)
        stepped.append(r.steps)
    total = np.add(reads, fits)
    return {"patch": f"{ds.attrs['patch_size']}²", "series": len(plan),
            "s/series": float(total.mean()), "read s": float(np.mean(reads)),
            "fit s": float(np.mean(fits)), "steps": float(np.mean(stepped)),
            "ms/step": float(1000 * np.sum(fits) / np.sum(stepped)),
            "read share %": float(100 * np.sum(reads) / total.sum()),
            "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "output" /
                                             "bench_seq2seq"))
    ap.add_argument("--series", type=int, default=8, help="series of the metrics table")
    ap.add_argument("--timing-series", type=int, default=2, help="series timed per patch size")
    ap.add_argument("--steps", type=int, default=None, help="max_steps (default: FitOptions')")
    ap.add_argument("--workers", type=int, default=2, help="conversion workers")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    import logging

    logging.basicConfig(level=logging.WARNING)
    small = make_cube(work, ROIS, (3, 3), 64, args.workers)
    large = make_cube(work, ROIS[:1], (2, 2), 256, args.workers)
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores; torch threads as set by torch")
    metrics, desc = metrics_per_method(small, args.series, args.steps)
    print("\n## Metrics per method (same series plan)\n")
    print(desc + "\n")
    print(metrics)
    rows = [timing(small, args.timing_series, args.steps),
            timing(large, args.timing_series, args.steps)]
    print("\n## Internal learning on CPU\n")
    print(table(rows, ["patch", "series", "s/series", "read s", "fit s", "steps", "ms/step",
                       "read share %", "threads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
