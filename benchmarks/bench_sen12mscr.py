"""SEN12MS-CR figures: the loaders vs the reference on GeoTIFFs, and the conversion of this layout.

    .venv/bin/python benchmarks/bench_sen12mscr.py [loader] [ratio] [io] [shards]
        [--scenes 2] [--grid 3x3] [--patch 256] [--reference-samples 8] [--repeat 3] [--json out]

- loader: the drop-in ``s2cube.torch.SEN12MSCR`` and the batched path (``make_loader``,
          in-process, batches of 8) against the reference loader run on the SEN12MS-CR
          GeoTIFFs (``tests/cr_reference.py``: a line-by-line port of UnCRtainTS ``SEN12MSCR``,
          which reads the three GeoTIFFs and runs s2cloudless on the cloudy image of every
          sample), ``cloud_masks="s2cloudless_mask"``, ``rescale_method="default"``. The same
          samples (its first ``--reference-samples``, checked equal: masks, coverage, arrays)
          in one run; our paths then over every sample, best of ``--repeat``. 2 threads each
          (LightGBM's default on this machine, our reader's ``threads=2``), page cache warm.
          The archive: ``s2cube_conversion.cr_synth`` (real L1C pixels, overlapping patches).
- ratio:  the cube's bytes / the GeoTIFFs' bytes on real pixels: 96-px crops of the 5 real
          scenes (no tiling repeats) as cloud-free and cloudy S2 (and synthetic float32 S1),
          converted without cloud detection.
- io:     conversion without cloud detection vs the limit "read the same GeoTIFFs with
          rasterio + encode the same bytes with the same codec, nothing else", one core each
          (1 dask worker), interleaved, best of ``--repeat``.
- shards: object sizes of the pixel variables at 256 px per patch for 32 and 64 patches per
          shard (the compressed bytes per patch of the ``io`` cube, times the shard length).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the reference loader's port lives with the tests


def _du(path: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


def _cluster(n: int):
    from dask.distributed import Client

    from s2cube_conversion.run import local_cluster

    cluster = local_cluster(n, 1)
    return cluster, Client(cluster)


# --- loader ----------------------------------------------------------------------------------

def bench_loader(tmp: Path, args) -> dict:
    from cr_reference import ReferenceSEN12MSCR

    from s2cube.torch import SEN12MSCR, make_loader
    from s2cube_conversion import convert
    from s2cube_conversion.cr_synth import synthesize_cr_archive

    rows, cols = (int(v) for v in args.grid.split("x"))
    scenes = ("ROIs1868_summer_73", "ROIs2017_winter_8", "ROIs1970_fall_65", "ROIs1158_spring_106")
    m = synthesize_cr_archive(tmp / "loader", scenes=scenes[:args.scenes], grid=(rows, cols),
                              patch_size=args.patch, seed=0, gaps=1, unpaired=0, blank=0)
    cube = tmp / "loader.zarr"
    report = convert(m.root, cube, n_workers=1)
    assert report.ok, report.problems
    k = args.reference_samples
    ref = ReferenceSEN12MSCR(m.root, split="all")
    ours = SEN12MSCR(str(cube), split="all", split_mode="reference", root=str(m.root),
                     threads=args.threads)
    n = len(ours)
    assert len(ref) == n
    # the same samples: the reference's first k, checked equal, timed in one run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref[0]  # s2cloudless's model loaded, files in the page cache
        t = time.perf_counter()
        want = [ref[i] for i in range(k)]
        t_ref = (time.perf_counter() - t) / k
    got = [ours[i] for i in range(k)]
    for a, b in zip(want, got):
        for part in ("input", "target"):
            for key, v in a[part].items():
                w = b[part][key]
                same = np.array_equal(v, w) and v.dtype == w.dtype if isinstance(v, np.ndarray) \
                    else v == w
                assert same, (part, key)
    drop, batched = [], []
    for _ in range(args.repeat):  # interleaved: the machine is noisy
        t = time.perf_counter()
        for i in range(n):
            ours[i]
        drop.append((time.perf_counter() - t) / n)
        loader = make_loader(str(cube), split="all", batch_size=8, threads=args.threads,
                             shuffle=False)
        t = time.perf_counter()
        count = sum(len(b["pdx"]) for b in loader)
        batched.append((time.perf_counter() - t) / count)
    # the drop-in on the very same k samples
    t = time.perf_counter()
    for i in range(k):
        ours[i]
    t_drop_k = (time.perf_counter() - t) / k
    return {"samples": n, "reference_samples": k, "patch": args.patch, "threads": args.threads,
            "reference_ms": 1e3 * t_ref, "dropin_ms_same_samples": 1e3 * t_drop_k,
            "dropin_ms": 1e3 * min(drop), "batched_ms": 1e3 * min(batched),
            "dropin_speedup": t_ref / min(drop), "batched_speedup": t_ref / min(batched),
            "outputs_equal": True}


# --- ratio -----------------------------------------------------------------------------------

def real_pixel_cr_archive(root: Path, patch: int = 96, n: int = 20) -> int:
    """``n`` patches whose S2 are distinct crops of the real scenes: clear ones (scenes 2-4)
    as the cloud-free image, cloudy ones (0-1) as the cloudy image; synthetic float32 S1."""
    import rasterio
    from rasterio.transform import from_origin

    from s2cube import sen12mscr as cr
    from s2cube_conversion._realpixels import load_dn

    scenes = load_dn()  # uint16 (5, 13, 101, 100)
    rng = np.random.default_rng(0)
    offsets = [(y, x) for y in range(101 - patch + 1) for x in range(100 - patch + 1)]
    for k in range(n):
        y, x = offsets[(7 * k) % len(offsets)]
        images = {"s2": scenes[2 + k % 3, :, y:y + patch, x:x + patch],
                  "s2_cloudy": scenes[k % 2, :, y:y + patch, x:x + patch]}
        field = rng.gamma(4.0, 0.25, (2, patch, patch))
        s1 = (10 * np.log10(field) + np.array([-11.0, -18.0])[:, None, None]).astype(np.float32)
        s1[:, :3, :5] = np.nan
        images["s1"] = s1
        transform = from_origin(465180 + k * patch * 5, 5080260, 10, 10)  # overlapping
        for mod, arr in images.items():
            path = root / cr.relpath("ROIs1970_fall_71", mod, 100 + k)
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", width=patch, height=patch,
                               count=arr.shape[0], dtype=arr.dtype, crs="EPSG:32633",
                               transform=transform) as dst:
                dst.write(arr)
    return n


def bench_ratio(tmp: Path, args) -> dict:
    from s2cube_conversion import convert

    archive, cube = tmp / "real", tmp / "real.zarr"
    n = real_pixel_cr_archive(archive)
    convert(archive, cube, clouds=False, n_workers=1)
    out = {"patches": n, "patch": 96}
    for var in ("s2", "s2_cloudy", "s1"):
        tif, stored = _du(archive, f"*_{var}/*/*.tif"), _du(cube / var)
        out.update({f"{var}_tif_bytes": tif, f"{var}_cube_bytes": stored,
                    f"{var}_ratio": stored / tif})
    return out


# --- io and shards -----------------------------------------------------------------------------

def read_encode_limit(archive: Path) -> float:
    """Seconds to read every GeoTIFF with rasterio and encode it with the cube's codec."""
    import rasterio
    from numcodecs import Blosc

    blosc = {m: Blosc(cname="zstd", clevel=1,
                      shuffle=Blosc.SHUFFLE if m == "s1" else Blosc.BITSHUFFLE)
             for m in ("s1", "s2", "s2_cloudy")}
    files = sorted(archive.glob("*/*/*.tif"))
    start = time.perf_counter()
    for f in files:
        mod = f.parent.name.rsplit("_", 1)[0]
        with rasterio.open(f) as src:
            arr = src.read()
        blosc[mod].encode(np.ascontiguousarray(arr))
    return time.perf_counter() - start


def _io_archive(tmp: Path, patch: int) -> Path:
    from s2cube_conversion.cr_synth import synthesize_cr_archive

    root = tmp / "io"
    if not root.exists():
        synthesize_cr_archive(root, scenes=("ROIs1868_summer_73", "ROIs2017_winter_8"),
                              grid=(3, 3), patch_size=patch, seed=1, gaps=0, unpaired=0, blank=0)
    return root


def bench_io(tmp: Path, args) -> dict:
    from s2cube_conversion import convert

    archive = _io_archive(tmp, args.patch)
    files = list(archive.glob("*/*/*.tif"))
    nbytes = sum(f.stat().st_size for f in files)
    read_encode_limit(archive)  # warm the page cache for both
    cluster, client = _cluster(1)
    try:
        convert(archive, tmp / "io-warm.zarr", clouds=False, client=client)
        ours, limit = [], []
        for i in range(args.repeat):
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


def bench_shards(tmp: Path, args) -> dict:
    import xarray as xr

    from s2cube_conversion import convert

    archive = _io_archive(tmp, args.patch)
    cube = tmp / "shards.zarr"
    if not cube.exists():
        convert(archive, cube, n_workers=1)  # with cloud detection: real mask bytes
    n = int((xr.open_zarr(cube).scene.values >= 0).sum())
    out = {"patch": args.patch, "patches": n}
    for var in ("s2", "s2_cloudy", "s1", "cloud_mask", "cloud_prob"):
        per = _du(cube / var) / n
        out[f"{var}_kb_per_patch"] = per / 1e3
        for s in (32, 64):
            out[f"{var}_mb_per_shard_{s}"] = per * s / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["loader", "ratio", "io", "shards"])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--grid", default="3x3")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-samples", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    print("$ .venv/bin/python benchmarks/bench_sen12mscr.py " + " ".join(sys.argv[1:]), flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="s2cube-bench-cr-") as tmp:
        for part in args.parts:
            t = time.perf_counter()
            results[part] = globals()[f"bench_{part}"](Path(tmp), args)
            results[part]["bench_seconds"] = time.perf_counter() - t
            print(f"## {part}\n" + "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else
                                            f"- {k}: {v}" for k, v in results[part].items()),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
