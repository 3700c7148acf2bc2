"""The rough edges a new user hit (issue 11, item 6), each as it behaves now.

The S3 ones (wrong secret, missing bucket, the ``__main__`` guard with an S3 cube) are in
``tests/s3/test_s3_rough_edges.py``; two conversions at once in
``tests/conversion/test_concurrent.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_reader import shared_cube  # noqa: E402

from s2cube import schema  # noqa: E402
from s2cube import torch as s2torch  # noqa: E402
from s2cube.errors import PlanError, SelectionError  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2cube.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    """A small cube written directly (2 ROIs: ROIs1868_73 test/asiaEast, ROIs2017_8 train/africa)."""
    return shared_cube(tmp_path_factory)


# --- rioxarray --------------------------------------------------------------------------------

def test_to_raster_of_a_whole_roi_says_what_to_write_and_the_readme_call_works(ds, tmp_path):
    import rasterio

    one = ds.s2cube.roi("ROIs1868_73")
    with pytest.raises(SelectionError, match=re.escape("one.s2.sel(time=4).rio.to_raster(")):
        one.rio.to_raster(tmp_path / "roi.tif")
    assert not (tmp_path / "roi.tif").exists()
    one.s2.sel(time=4).rio.to_raster(tmp_path / "roi_t4.tif")  # as the README shows
    frame = one.s2.sel(time=4)
    with rasterio.open(tmp_path / "roi_t4.tif") as f:
        assert (f.count, f.dtypes[0]) == (13, "uint16")
        assert f.crs.to_epsg() == one.rio.crs.to_epsg()
        assert tuple(f.transform)[:6] == tuple(one.rio.transform())[:6]
        np.testing.assert_array_equal(f.read(), frame.values)
    rgb = frame.sel(band=["B4", "B3", "B2"]).rio.reproject("EPSG:4326")
    assert rgb.rio.crs.to_epsg() == 4326
    flat = one[["cloud_prob"]].isel(time=4)  # a Dataset of (y, x) variables: rioxarray's own way
    flat.rio.to_raster(tmp_path / "prob.tif")
    with rasterio.open(tmp_path / "prob.tif") as f:
        assert f.count == 1


# --- the `if __name__ == "__main__":` guard -------------------------------------------------------

SCRIPT = """
from s2cube.torch import make_loader
{indent}loader = make_loader({cube!r}, split="all", sampler="fixed", num_workers=2, batch_size=4,
{indent}                     multiprocessing_context="forkserver")
{indent}print(sum(b["input"]["S2"].shape[0] for b in loader))
"""


def _script(tmp_path, cube, guarded: bool) -> Path:
    text = SCRIPT.format(indent="    " if guarded else "", cube=str(cube))
    if guarded:
        text = text.replace("\n    loader", '\nif __name__ == "__main__":\n    loader', 1)
    path = tmp_path / ("guarded.py" if guarded else "unguarded.py")
    path.write_text(text)
    return path


def test_a_loader_outside_the_main_guard_stops_with_an_error_that_says_so(cube, tmp_path):
    """Workers that do not fork import the script first (here forced: forkserver; the
    default for an S3 cube, see tests/s3/test_s3_rough_edges.py)."""
    run = subprocess.run([sys.executable, str(_script(tmp_path, cube, guarded=False))],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "make_loader was called while a new worker process imported" in run.stderr
    assert 'outside `if __name__ == "__main__":`' in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "exited unexpectedly" in last and "'forkserver'" in last and "__main__" in last
    good = subprocess.run([sys.executable, str(_script(tmp_path, cube, guarded=True))],
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr[-3000:]
    assert good.stdout.split() == ["11"]


# --- the command line ---------------------------------------------------------------------------

def test_validate_against_something_that_is_not_a_cube_exits_2_saying_so(tiny_archive, tmp_path):
    folder = tmp_path / "not-a-cube"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    for target, says in ((folder, "holds no Zarr v3 group"),
                         (tmp_path / "nowhere.zarr", "holds no Zarr v3 group")):
        run = cli("validate", tiny_archive, target, "--workers", "1")
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("error: ") and says in run.stderr
        assert "Traceback" not in run.stderr and "Compute Failed" not in run.stderr
        assert "patch" not in run.stderr  # no progress bar before the error


def test_progress_shows_the_last_state_once_and_nothing_before_an_error(tiny_archive, tmp_path):
    run = cli("convert", tiny_archive, tmp_path / "cube.zarr", "--workers", "1")
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("100%") == 1, run.stderr
    assert run.stderr.count("4/4") == 1
    failed = cli("convert", tmp_path / "nowhere", tmp_path / "c.zarr", "--workers", "1")
    assert failed.returncode == 2 and failed.stderr.startswith("error: ")
    assert "patch" not in failed.stderr.split("error:")[0]


# --- selections with no sample ----------------------------------------------------------------

@pytest.mark.parametrize("where", [{"split": "val"}, {"split": "all", "region": "europa"},
                                   {"split": "train", "region": "asiaEast"}])
def test_a_valid_split_or_region_the_cube_lacks_names_what_it_holds(cube, where):
    import s2cube

    held = ("ROIs1868_73", "ROIs2017_8")
    ds = s2cube.open_cube(cube)
    calls = {
        "sample_plan": lambda: ds.s2cube.sample_plan(**where),
        "make_loader": lambda: s2torch.make_loader(str(cube), **where),
        "SEN12MSCRTS": lambda: s2torch.SEN12MSCRTS(str(cube), **where),
        "batches": lambda: next(iter(ds.s2cube.batches(**where))),
    }
    for name, call in calls.items():
        with pytest.raises(SelectionError) as err:
            call()
        msg = str(err.value)
        assert all(r in msg for r in held), (name, msg)
        assert "np.str_" not in msg, (name, msg)


# --- options are checked when they are given -------------------------------------------------

SEN_BAD = [
    ({"n_input_samples": 40}, "n_input_samples=40"), ({"n_input_samples": 0}, "n_input_samples"),
    ({"split": "training"}, "split"), ({"region": "europe"}, "region"),
    ({"cloud_masks": None}, "cloud_masks"), ({"sample_type": "pairs"}, "sample_type"),
    ({"sampler": "fixed_subset"}, "sampler"), ({"min_cov": 0.5, "max_cov": 0.2}, "min_cov"),
    ({"rescale_method": "minmax"}, "rescale_method"), ({"threads": 0}, "threads=0"),
    ({"sampler": "fixedsubset", "subset": (5, 2)}, "subset=(5, 2)"),
    ({"sampler": "fixedsubset", "subset": (0, 40)}, "subset=(0, 40)"),
    ({"sampler": "fixedsubset", "subset": (0, 3), "n_input_samples": 3}, "subset=(0, 3)"),
]


@pytest.mark.parametrize("bad,says", SEN_BAD, ids=[str(b) for b, _ in SEN_BAD])
def test_sen12mscrts_refuses_a_bad_option_when_it_is_made(cube, bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        s2torch.SEN12MSCRTS(str(cube), **bad)


LOADER_BAD = [
    ({"n_input_samples": 40}, "n_input_samples=40"), ({"mode": "seq2many"}, "mode"),
    ({"batch_size": 0}, "batch_size=0"), ({"num_workers": -1}, "num_workers=-1"),
    ({"threads": 0}, "threads=0"), ({"crop": 0}, "crop=0"), ({"crop": 1000}, "crop=1000"),
    ({"window": 0, "mode": "seq2seq"}, "window=0"), ({"gap_probability": 2}, "gap_probability"),
    ({"cloudy_threshold": 1.5}, "cloudy_threshold"), ({"prefetch_factor": 0, "num_workers": 1},
                                                       "prefetch_factor=0"),
    ({"prefetch_factor": 2}, "prefetch_factor=2 applies to worker processes"),
    ({"multiprocessing_context": "fork-please"}, "multiprocessing_context"),
    ({"device": "not-a-device"}, "device"), ({"rank": 3, "world_size": 2}, "rank=3"),
    ({"split": "training"}, "split"), ({"sampler": "fixed_subset"}, "sampler"),
    ({"rescale_method": "minmax"}, "rescale_method"), ({"cloud_masks": "clouds"}, "cloud_masks"),
]


@pytest.mark.parametrize("bad,says", LOADER_BAD, ids=[str(b) for b, _ in LOADER_BAD])
def test_make_loader_refuses_a_bad_option_when_it_is_made(cube, bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        s2torch.make_loader(str(cube), **{"split": "all", **bad})


def test_make_loader_refuses_cuda_where_there_is_none(cube):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        s2torch.make_loader(str(cube), split="all", device="cuda")


# --- the README's evaluation example --------------------------------------------------------------

def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_readme_evaluation_example_runs_and_scores_no_target_among_its_inputs(ds):
    code = _readme_block("test.s2cube.evaluate(pred, plan)")
    lines = [ln.split("  #")[0].rstrip() for ln in code.splitlines()]
    env = {"ds": ds}
    # the small test cube: its train ROI is in africa (the README's example takes europa)
    exec("\n".join(lines).replace('"europa"', '"africa"'), env)
    plan, test = env["plan"], env["test"]
    assert len(plan) > 0
    assert all(int(t) not in [int(i) for i in ins] for ins, t in zip(plan["inputs"], plan["target"]))
    scores = test.s2cube.evaluate(env["pred"], plan).per_region
    assert np.isfinite(scores["psnr"].to_numpy(dtype=float)).all(), scores
    assert "batch" in env and env["batch"]["input"]["S2"].shape[2] == 4


# --- messages name values as plain strings -------------------------------------------------------

def test_errors_name_rois_and_slots_as_plain_strings(ds):
    plan = ds.s2cube.sample_plan(split="all", n_input_samples=3, min_cov=0.1)
    plan["roi"] = np.array([np.str_("ROIs1868_17")] * len(plan), dtype=object)
    for verb in (lambda: ds.s2cube.baseline(plan, "mosaic"),
                 lambda: ds.s2cube.evaluate(ds.s2.isel(time=0), plan)):
        with pytest.raises(PlanError) as err:
            verb()
        assert "['ROIs1868_17']" in str(err.value) and "np.str_" not in str(err.value)
    roi = np.str_("ROIs1868_73")
    with pytest.raises(SelectionError) as err:
        ds.s2cube.quicklook(roi, np.int64(99))
    assert "slot 99 is not" in str(err.value) and "np." not in str(err.value)
    with pytest.raises(KeyError) as err:
        schema.roi_info(np.str_("ROIs9999_1"))  # not an ROI of the archive
    assert "np.str_" not in str(err.value)


def test_quicklook_refuses_slot_minus_one(ds):
    with pytest.raises(SelectionError, match=r"slot -1 is not in this Dataset"):
        ds.s2cube.quicklook("ROIs1868_73", -1)
    with pytest.raises(SelectionError):
        ds.isel(time=[3, 17]).s2cube.quicklook("ROIs1868_73", 0)  # slot 0 is not held
    assert ds.isel(time=[3, 17]).s2cube.quicklook("ROIs1868_73", 17).to_png()[:4] == b"\x89PNG"


# --- raw DN in tensors torch can reduce ----------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
def test_raw_s2_batches_are_int32_tensors_torch_reduces(cube, num_workers):
    import s2cube

    loader = s2torch.make_loader(str(cube), split="all", sampler="fixed", batch_size=4,
                                 shuffle=False, rescale_method=None, num_workers=num_workers)
    ds = s2cube.open_cube(cube)
    p = ds.attrs["patch_size"]
    for b in loader:
        s2 = b["input"]["S2"]
        assert s2.dtype == torch.int32 and s2.dtype == getattr(torch, s2torch.RAW_S2_DTYPE.name)
        assert b["input"]["S1"].dtype == torch.float32
        assert int(s2.max()) <= 65535 and float(s2.float().mean()) > 0
        j, k = 0, 1
        roi, r, c = b["roi"][j], int(b["row"][j]), int(b["col"][j])
        t = int(b["input"]["idx"][j, k])
        want = ds.s2.sel(roi=roi, time=t).isel(y=slice(r * p, (r + 1) * p),
                                               x=slice(c * p, (c + 1) * p)).values
        np.testing.assert_array_equal(s2[j, k].numpy(), want.astype(np.int32))
        assert int(s2[j, k].max()) == int(want.max())


def test_raw_s2_of_the_dropin_collates_to_a_tensor_torch_reduces(cube):
    from torch.utils.data import DataLoader

    data = s2torch.SEN12MSCRTS(str(cube), split="all", rescale_method=None)
    assert data[0]["input"]["S2"][0].dtype == np.int32
    batch = next(iter(DataLoader(data, batch_size=3)))
    s2 = batch["input"]["S2"][0]
    assert s2.dtype == torch.int32 and int(s2.max()) > 0 and s2.sum() > 0


def test_script_run_of_the_guard_docs_is_in_the_readme():
    text = README.read_text()
    assert 'if __name__ == "__main__":' in text and "forkserver" in text
    assert "int32" in textwrap.dedent(s2torch.make_loader.__doc__)
