"""Cloud detection throughput: s2cloudless once per frame (the reference) vs the converter's engines.

Frames are 256² cuts of the real Sentinel-2 scenes shipped with s2cube_conversion (tiled and
mirrored from 101×100; real cloud blended over real land for partial cover). Every method runs
on the same frames with the same thread count, and its masks and coverages are compared pixel by
pixel with the reference's. A second table shows where the fast path's time goes.

    .venv/bin/python benchmarks/bench_clouds.py [--frames 4] [--size 256] [--threads 1]
        [--repeat 2] [--methods reference,fast,onnx,lightgbm] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from s2cube import schema
from s2cube_conversion import _treemodel, clouds
from s2cube_conversion._realpixels import load_dn


def make_frames(n: int, size: int) -> np.ndarray:
    """(n, 13, size, size) uint16: cloudy, clear and blended frames from the real scenes."""
    dn = load_dn().transpose(0, 2, 3, 1).astype(np.float32)  # (5, 101, 100, 13)

    def tile(img: np.ndarray) -> np.ndarray:
        while img.shape[0] < size or img.shape[1] < size:
            img = np.concatenate([img, img[::-1]], 0)
            img = np.concatenate([img, img[:, ::-1]], 1)
        return img[:size, :size]

    tiles = [tile(dn[s]) for s in range(5)]
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        cloudy, clear = tiles[i % 2], tiles[2 + i % 3]
        if i % 4 == 0:
            frames.append(cloudy)
        elif i % 4 == 1:
            frames.append(clear)
        else:
            fx, fy, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6)
            w = np.clip(0.5 + 0.8 * np.sin(2 * np.pi * fx * xx + phase)
                        * np.cos(2 * np.pi * fy * yy), 0, 1)[..., None]
            frames.append(np.rint(w * cloudy + (1 - w) * clear))
    return np.moveaxis(np.stack(frames), -1, 1).astype(np.uint16)


def prepare(method: str, frames: np.ndarray, threads: int) -> dict:
    """Build the detector's engine (or load it from the cache): the first-use cost."""
    started = time.perf_counter()
    det = clouds.CloudDetector(method, threads=threads)
    engine = det.engine
    det(frames[:1, :, :16, :16])  # s2cloudless/scipy/cv2 imports and model load
    name = "s2cloudless per frame" if engine is None else engine.name
    return {"method": method, "engine": name, "prepare_s": time.perf_counter() - started,
            "seconds": [], "detector": det}


def timed_run(run: dict, frames: np.ndarray) -> clouds.CloudResult:
    t0 = time.perf_counter()
    result = run["detector"](frames)
    run["seconds"].append(time.perf_counter() - t0)
    return result


def compare(result: clouds.CloudResult, ref: clouds.CloudResult) -> dict:
    same = (result.flags & schema.FLAG_S2CLOUDLESS) == (ref.flags & schema.FLAG_S2CLOUDLESS)
    diff = np.abs(result.coverage.astype(np.float64) - ref.coverage.astype(np.float64)).max(axis=0)
    return {"mask_agreement_pct": 100 * float(same.mean()),
            "prob_equal_pct": 100 * float((result.prob == ref.prob).mean()),
            "flags_equal_pct": 100 * float((result.flags == ref.flags).mean()),
            "max_coverage_diff": dict(zip(schema.DETECTORS, map(float, diff)))}


def breakdown(frames: np.ndarray, threads: int) -> dict:
    """Milliseconds per frame of each step of the fast path (and of the literal medfilt2d)."""
    det = clouds.CloudDetector("fast", threads=threads)
    dn = np.minimum(frames, 10000)
    imgs = [f.astype(np.float32) for f in dn]
    steps = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        steps[name] = 1000 * (time.perf_counter() - t0) / len(frames)
        return out

    timed("clip + blank rule", lambda: [clouds.is_blank(f.astype(np.float32)) for f in dn])
    prob = timed(f"model ({det.engine.name}, all frames in one call)",
                 lambda: det.engine.predict_frames(dn))
    timed("s2cloudless average_over + dilation (cv2)",
          lambda: clouds._s2cloudless().get_mask_from_prob(prob))
    timed("map: threshold + gaussian_filter + mean", lambda: [clouds.map_coverage(p) for p in prob])
    timed("rule-based cloud", lambda: [clouds.rule_cloud(i) for i in imgs])
    timed("rule-based shadow (majority count)", lambda: [clouds.rule_shadow(i) for i in imgs])
    timed("rule-based shadow, literal medfilt2d (reference only)",
          lambda: [clouds.rule_shadow(i, literal=True) for i in imgs])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per method (best kept)")
    parser.add_argument("--methods", default="reference,fast,onnx,lightgbm")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if "reference" not in methods:
        methods.insert(0, "reference")
    frames = make_frames(args.frames, args.size)
    cache = _treemodel.cache_dir()
    cached = sorted(p.name.split("-")[0] for p in cache.iterdir() if not p.name.endswith(".tmp"))
    clouds.reference_detect(frames[:1, :, :16, :16])  # imports and model load, not first-use cost
    runs = [prepare(m, frames, args.threads) for m in methods]
    results = {}
    for _ in range(args.repeat):  # interleaved, best of: the machine is shared
        for r in runs:
            results[r["method"]] = timed_run(r, frames)
    ref = runs[0]
    for r in runs:
        del r["detector"]
        r["frames_per_s"] = len(frames) / min(r["seconds"])
        if r is not ref:
            r.update(compare(results[r["method"]], results["reference"]))
    steps = breakdown(frames, args.threads)

    print(f"Cloud detection, {args.frames} frames of {args.size}², {args.threads} thread(s), "
          f"best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {platform.processor() or ''}")
    print(f"cache: {cache} (held before this run: {', '.join(cached) or 'nothing'})\n")
    head = ("| method | engine | first use s | frames/s | speed-up | s2cloudless mask agree % "
            "| prob equal % | max Δ coverage (mask / map / rule) |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in runs:
        cov = r.get("max_coverage_diff")
        cov_s = " / ".join(f"{cov[d]:.1e}" for d in schema.DETECTORS) if cov else "(reference)"
        print(f"| {r['method']} | {r['engine']} | {r['prepare_s']:.2f} | {r['frames_per_s']:.2f} "
              f"| {r['frames_per_s'] / ref['frames_per_s']:.1f}× "
              f"| {r.get('mask_agreement_pct', 100):.3f} | {r.get('prob_equal_pct', 100):.2f} "
              f"| {cov_s} |")
    print("\n| fast-path step | ms/frame |\n|---|---|")
    for name, ms in steps.items():
        print(f"| {name} | {ms:.1f} |")
    print("\ncommand: .venv/bin/python benchmarks/bench_clouds.py " + " ".join(sys.argv[1:]))
    if args.json_path:
        out = {"frames": args.frames, "size": args.size, "threads": args.threads,
               "cpus": os.cpu_count(), "runs": runs, "fast_path_ms_per_frame": steps}
        Path(args.json_path).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
