"""Converter figures, each measured side by side in one run on this machine.

    .venv/bin/python benchmarks/bench_convert.py [ratio] [io] [scaling] [memory] [--json out.json]

- ratio:   the cube's ``s2`` bytes / the S2 GeoTIFFs' bytes on patches cut from the real
           L1C pixels (shipped with s2cube_conversion), and the same for ``s1`` on synthetic S1.
- io:      conversion without cloud detection vs the limit "read the same GeoTIFFs with
           rasterio + encode the same bytes with the same codec, nothing else", one core each.
- scaling: conversion with cloud detection on 1 vs 2 single-threaded dask workers.
- memory:  peak RSS per worker converting an archive of 1x and 4x the size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _cluster(n_workers: int):
    from dask.distributed import Client

    from s2cube_conversion.run import local_cluster

    cluster = local_cluster(n_workers, 1)
    return cluster, Client(cluster)


def _du(path: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


# --- ratio ---------------------------------------------------------------------------------

def real_pixel_archive(root: Path, patch: int = 96, grid: int = 2) -> None:
    """An archive whose S2 frames are distinct crops of the real scenes (no tiling repeats)."""
    import rasterio
    from rasterio.transform import from_origin

    from s2cube_conversion._realpixels import load_dn

    scenes = load_dn()  # uint16 (5, 13, 101, 100)
    rng = np.random.default_rng(0)
    offsets = [(y, x) for y in range(101 - patch + 1) for x in range(100 - patch + 1)]
    for r in range(grid):
        for c in range(grid):
            pid = 200 + 16 * r + c
            t_origin = from_origin(465180 + c * patch * 10, 5080260 - r * patch * 10, 10, 10)
            for t in range(30):
                s, (y, x) = t % 5, offsets[(t // 5 + 7 * (r * grid + c)) % len(offsets)]
                s2 = scenes[s, :, y:y + patch, x:x + patch]
                field = rng.gamma(4.0, 0.25, (2, patch, patch))
                s1 = (10 * np.log10(field) + np.array([-11.0, -18.0])[:, None, None])
                s1 = s1.astype(np.float32).astype(np.float64)
                s1[:, :3, :5] = np.nan
                date = np.datetime64("2018-01-02") + 12 * t
                for mod, arr in (("s2", s2), ("s1", s1)):
                    d = root / "ROIs1970" / "71" / mod.upper() / str(t)
                    d.mkdir(parents=True, exist_ok=True)
                    day = date + (0 if mod == "s2" else 3)
                    name = f"{mod}_ROIs1970_71_ImgNo_{t}_{day}_patch_{pid}.tif"
                    with rasterio.open(d / name, "w", driver="GTiff", width=patch, height=patch,
                                       count=arr.shape[0], dtype=arr.dtype, crs="EPSG:32633",
                                       transform=t_origin) as dst:
                        dst.write(arr)


def bench_ratio(tmp: Path) -> dict:
    from s2cube_conversion import convert

    archive, cube = tmp / "real", tmp / "real.zarr"
    real_pixel_archive(archive)
    convert(archive, cube, clouds=False, n_workers=1)
    s2_tif, s1_tif = _du(archive, "*/*/S2/*/*.tif"), _du(archive, "*/*/S1/*/*.tif")
    s2_cube, s1_cube = _du(cube / "s2"), _du(cube / "s1")
    return {"s2_tif_bytes": s2_tif, "s2_cube_bytes": s2_cube, "s2_ratio": s2_cube / s2_tif,
            "s1_tif_bytes": s1_tif, "s1_cube_bytes": s1_cube, "s1_ratio": s1_cube / s1_tif,
            "patch": 96, "frames": 120}


# --- io ------------------------------------------------------------------------------------

def read_encode_limit(archive: Path) -> float:
    """Seconds to read every GeoTIFF with rasterio and encode it with the cube's codec."""
    import rasterio
    from numcodecs import Blosc

    # the same codec and settings as s2cube_conversion.write.pixel_codecs
    blosc = {m: Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE if m == "s2" else Blosc.SHUFFLE)
             for m in ("s2", "s1")}
    files = sorted(archive.glob("*/*/S*/*/*.tif"))
    start = time.perf_counter()
    for f in files:
        mod = f.name[:2]
        with rasterio.open(f) as src:
            arr = src.read()
        if mod == "s1":
            arr = arr.astype(np.float32)
        blosc[mod].encode(np.ascontiguousarray(arr))
    return time.perf_counter() - start


def bench_io(tmp: Path, patch: int = 256) -> dict:
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    archive = tmp / "io"
    synthesize_archive(archive, rois=("ROIs1868_73",), grid=(2, 2), patch_size=patch, seed=1)
    files = list(archive.glob("*/*/S*/*/*.tif"))
    nbytes = sum(f.stat().st_size for f in files)
    read_encode_limit(archive)  # warm the page cache for both
    cluster, client = _cluster(1)
    try:
        convert(archive, tmp / "warm.zarr", clouds=False, client=client)
        ours, limit = [], []
        for i in range(3):  # interleaved: the machine is noisy
            t = time.perf_counter()
            convert(archive, tmp / f"io{i}.zarr", clouds=False, client=client)
            ours.append(time.perf_counter() - t)
            limit.append(read_encode_limit(archive))
    finally:
        client.close()
        cluster.close()
    o, lim = min(ours), min(limit)
    return {"files": len(files), "mb": nbytes / 1e6, "ours_s": o, "limit_s": lim,
            "ours_mb_s": nbytes / 1e6 / o, "limit_mb_s": nbytes / 1e6 / lim, "fraction": lim / o}


# --- scaling -------------------------------------------------------------------------------

def bench_scaling(tmp: Path, patch: int = 128) -> dict:
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    archive, warm = tmp / "scale", tmp / "scale-warm"
    synthesize_archive(archive, rois=("ROIs1868_73",), grid=(4, 4), patch_size=patch, seed=2)
    synthesize_archive(warm, rois=("ROIs1868_73",), grid=(1, 2), patch_size=patch, n_slots=2, seed=3)
    out = {}
    for n in (1, 2):
        cluster, client = _cluster(n)
        try:
            convert(warm, tmp / f"warm{n}.zarr", client=client)  # model loaded in each worker
            t = time.perf_counter()
            convert(archive, tmp / f"scale{n}.zarr", client=client)
            out[f"workers_{n}_s"] = time.perf_counter() - t
        finally:
            client.close()
            cluster.close()
    out["speedup"] = out["workers_1_s"] / out["workers_2_s"]
    out["patches"], out["frames"] = 16, 16 * 30
    # the hardware limit, measured in the same run: the same pure-CPU work in 1 and 2 processes
    one, two = _cpu_loop_seconds(1), _cpu_loop_seconds(2)
    out["hardware_speedup"] = 2 * one / two
    out["efficiency_vs_hardware"] = out["speedup"] / out["hardware_speedup"]
    return out


_LOOP = "x = 0\nfor i in range(15_000_000):\n    x += i * i\n"


def _cpu_loop_seconds(n: int) -> float:
    """Wall time of ``n`` processes each running the same CPU-bound loop at once."""
    import subprocess

    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _LOOP]) for _ in range(n)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t


# --- memory --------------------------------------------------------------------------------

class _PeakRSS:
    """Poll the RSS of the dask worker processes; keep the peak of each."""

    def __init__(self, pids: list[int]):
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peak = {p: 0 for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for p in self.procs:
                try:
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss)
                except Exception:  # the process may be gone
                    pass
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_memory(tmp: Path, patch: int = 256) -> dict:
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    out = {}
    for scale, grid in (("1x", (2, 2)), ("4x", (4, 4))):
        archive = tmp / f"mem{scale}"
        synthesize_archive(archive, rois=("ROIs1868_73",), grid=grid, patch_size=patch, seed=4)
        cluster, client = _cluster(2)
        try:
            pids = list(client.run(os.getpid).values())
            with _PeakRSS(pids) as rss:
                convert(archive, tmp / f"mem{scale}.zarr", client=client)
            out[f"peak_mb_{scale}"] = max(rss.peak.values()) / 1e6
            out[f"archive_mb_{scale}"] = _du(archive) / 1e6
        finally:
            client.close()
            cluster.close()
        shutil.rmtree(archive)
    out["growth"] = out["peak_mb_4x"] / out["peak_mb_1x"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["ratio", "io", "scaling", "memory"])
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="s2cube-bench-") as tmp:
        for part in args.parts:
            t = time.perf_counter()
            results[part] = globals()[f"bench_{part}"](Path(tmp))
            results[part]["bench_seconds"] = time.perf_counter() - t
            print(f"## {part}\n" + "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else
                                            f"- {k}: {v}" for k, v in results[part].items()),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
