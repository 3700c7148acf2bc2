"""What a user does after `pip install s2cube[all]`, run by .ci/wheel-smoke from outside the
repository, in a fresh virtual environment that holds the wheel and nothing of the checkout.

    python wheel_smoke.py CUBE ARCHIVE
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

import s2cube

cube, archive = Path(sys.argv[1]), Path(sys.argv[2])
venv = Path(sys.prefix).resolve()

# the installed package, not the checkout
assert Path(s2cube.__file__).resolve().is_relative_to(venv), s2cube.__file__
assert (Path(s2cube.__file__).parent / "py.typed").is_file(), "py.typed missing"
for absent in ("s2cube.testing", "servers", "tests", "benchmarks", "conversion"):
    try:
        __import__(absent)
    except ImportError:
        continue
    raise AssertionError(f"{absent} is importable from the installed wheel")
from s2cube_conversion._realpixels import load_dn  # packaged real pixels  # noqa: E402

assert load_dn().dtype == np.uint16

# open_cube, the backend, and plain zarr (no s2cube needed)
ds = s2cube.open_cube(cube)
same = xr.open_dataset(cube, engine="s2cube", chunks={})
plain = xr.open_zarr(cube)
assert ds.s2.dtype == np.uint16 and ds.sizes == same.sizes
name = str(ds.roi.values[0])
frame = dict(roi=name, time=0)
np.testing.assert_array_equal(ds.s2.sel(frame).values, plain.s2.sel(frame).values)

# the accessor
cloudiness = ds.s2cube.cloudiness(by="region").compute()
assert float(cloudiness.mean_coverage.min()) >= 0
one = ds.s2cube.roi(name)
assert one.rio.crs is not None, "roi() gives a CRS"
ndvi = one.s2cube.ndvi().isel(time=0).compute()
assert np.isfinite(ndvi.values).any()
look = ds.s2cube.quicklook(name, 0)
assert look.to_png()[:4] == b"\x89PNG"
plan = ds.s2cube.sample_plan(sampler="fixed", n_input_samples=3, min_cov=0.01)
assert len(plan) > 0
scores = ds.s2cube.evaluate(ds.s2cube.baseline(plan, "mosaic"), plan)
assert np.isfinite(scores.overall["rmse"])

# PyTorch
import torch  # noqa: E402

from s2cube.torch import SEN12MSCRTS, make_loader  # noqa: E402

assert torch.version.cuda is None, f"a CUDA torch was installed: {torch.__version__}"
data = SEN12MSCRTS(cube, split="all", sampler="fixed", n_input_samples=3)
sample = data[0]
assert sample["input"]["S2"][0].shape[0] == 13
loader = make_loader(cube, split="all", sampler="random", n_input_samples=3, batch_size=2,
                     crop=16, num_workers=0, seed=0)
with warnings.catch_warnings():
    warnings.simplefilter("error")
    batch = next(iter(loader))
assert batch["input"]["S2"].shape[:3] == (2, 3, 13), batch["input"]["S2"].shape
print(f"wheel smoke: s2cube {s2cube.__version__} from {Path(s2cube.__file__).parent}: "
      f"open_cube, backend, accessor, plans, evaluate, SEN12MSCRTS ({len(data)} samples), "
      f"make_loader: ok")
