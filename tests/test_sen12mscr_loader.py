"""The SEN12MS-CR drop-in gives the reference loader's samples, order, dict, preprocessing and
masks (against a line-by-line port of the reference run on the GeoTIFFs); the splits are
exact, or the reference's on request, or leak-free for the combined data sets; the batched
path shards by rank and worker and gives the drop-in's arrays."""

from __future__ import annotations

import itertools
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cr_reference import ReferenceSEN12MSCR  # noqa: E402

import s2cube  # noqa: E402
from s2cube import sen12mscr as cr  # noqa: E402
from s2cube.errors import ChunkError, SelectionError  # noqa: E402
from s2cube.torch import SEN12MSCR, SEN12MSCRTS, make_loader  # noqa: E402


@pytest.fixture(scope="module")
def ref_all(cr_archive):
    return ReferenceSEN12MSCR(cr_archive.root, split="all")


def _same(a, b, path: str = "") -> None:
    """Equal values and types, arrays of the same dtype and shape, recursively."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(b, a, err_msg=path)
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


@pytest.mark.parametrize("split", ["all", "train", "val", "test"])
def test_reference_membership_gives_the_references_samples_in_its_order(cr_archive, cr_cube, split):
    ref = ReferenceSEN12MSCR(cr_archive.root, split=split, cloud_masks=None)
    try:
        ours = SEN12MSCR(str(cr_cube), split=split, split_mode="reference", root=str(cr_archive.root))
    except SelectionError:
        assert len(ref) == 0  # the archive holds no scene of the split
        return
    assert len(ours) == len(ref) > 0
    for pdx, paths in enumerate(ref.paths):
        s = ours.samples
        assert [s.path(pdx, m, str(cr_archive.root)) for m in ("s1", "s2", "s2_cloudy")] == \
            [paths["S1"], paths["S2"], paths["S2_cloudy"]]


def test_the_samples_and_dicts_are_the_references(cr_archive, cr_cube, ref_all):
    ours = SEN12MSCR(str(cr_cube), split="all", split_mode="reference", root=str(cr_archive.root))
    assert len(ours) == len(ref_all) == 4 * (25 - 1) - 1  # 4 scenes, a gap each; not the unpaired
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference warns on its blank sample
        for pdx in range(len(ours)):
            _same(ref_all[pdx], ours[pdx], f"sample {pdx}")
    s = ours[0]
    assert s["input"]["S2"].shape == (13, 32, 32) and s["input"]["S1"].shape == (2, 32, 32)
    assert s["input"]["masks"].shape == (32, 32) and isinstance(s["input"]["coverage"], np.float32)


@pytest.mark.parametrize("cloud_masks, rescale", [("cloud_cloudshadow_mask", "resnet"),
                                                  ("s2cloudless_map", "default"),
                                                  (None, "default")])
def test_every_detector_and_rescaling_is_the_references(cr_archive, cr_cube, cloud_masks, rescale):
    ref = ReferenceSEN12MSCR(cr_archive.root, split="test",
                             cloud_masks=cloud_masks or "s2cloudless_mask", rescale_method=rescale)
    if cloud_masks is None:  # the reference itself fails: np.mean(None)
        with pytest.raises(TypeError):
            ReferenceSEN12MSCR(cr_archive.root, split="test", cloud_masks=None)[0]
    ours = SEN12MSCR(str(cr_cube), split="test", split_mode="reference", cloud_masks=cloud_masks,
                     rescale_method=rescale, root=str(cr_archive.root))
    assert len(ours) == len(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pdx in range(0, len(ours), 3):
            want, got = ref[pdx], ours[pdx]
            for part in ("input", "target"):
                for key in ("S2", "S2 path", "coord", *(("S1", "S1 path") if part == "input" else ())):
                    _same(want[part][key], got[part][key], f"{pdx}/{part}/{key}")
            if cloud_masks is None:  # the reference fails on np.mean(None); ours says None
                assert got["input"]["masks"] is None and got["input"]["coverage"] is None
            elif cloud_masks == "s2cloudless_map":  # rebuilt from the stored probability x 100:
                # a probability within 0.005 of the 0.5 cut may land on its other side
                diff = np.abs(got["input"]["masks"] - want["input"]["masks"])
                assert diff.mean() < 2e-3 and diff.max() < 0.05
                assert got["input"]["coverage"] == want["input"]["coverage"]  # stored exactly
            else:
                _same(want["input"]["masks"], got["input"]["masks"])
                _same(want["input"]["coverage"], got["input"]["coverage"])


def test_exact_splits_have_no_leak_and_the_reference_mode_lists_what_it_moves(cr_cube):
    moves = {m.scene: m for m in cr.split_moves("reference")}
    assert sorted(s for s, m in moves.items() if "test" in m.exact) == sorted(
        ["ROIs1158_spring_106", "ROIs1158_spring_123", "ROIs1158_spring_140", "ROIs1868_summer_73",
         "ROIs1868_summer_119", "ROIs1970_fall_139"])  # 6 of the 10 test scenes
    assert sorted(s for s, m in moves.items() if "val" in m.exact) == sorted(
        ["ROIs1158_spring_17", "ROIs1970_fall_65", "ROIs2017_winter_84"])  # 3 of the 10 val
    assert all("train" in m.other for m in moves.values())
    assert moves["ROIs1868_summer_73"].because == "substring of s1_7"

    def scenes(split, mode):
        return set(SEN12MSCR(str(cr_cube), split=split, split_mode=mode).samples.table().scene)

    exact = {s: scenes(s, "exact") for s in ("train", "test")}  # the fixture has no val scene
    assert exact["test"] == {"ROIs1868_summer_73"}
    assert exact["train"] == {"ROIs1868_summer_7", "ROIs1868_summer_100", "ROIs2017_winter_8"}
    assert not exact["train"] & exact["test"]
    assert scenes("train", "reference") == exact["train"] | {"ROIs1868_summer_73"}  # the leak
    assert scenes("test", "reference") == exact["test"]


def test_the_combined_split_shares_no_ground_with_the_time_series_evaluation(cr_cube, small_cube):
    combined = {s: set(SEN12MSCR(str(cr_cube), split=s, split_mode="combined").samples.table().scene)
                for s in ("train", "test")}
    assert cr.CR_TS_TEST_IN_TRAIN not in combined["train"]  # the reference's note, applied
    assert combined["test"] == {"ROIs1868_summer_73", "ROIs1868_summer_100"}
    assert cr.scene_splits("ROIs2017_winter_130", "combined") == {"train"}  # a CR-TS train ROI
    ts, mono = s2cube.open_cube(small_cube), s2cube.open_cube(cr_cube)
    for mode, leaks in (("combined", False), ("reference", True)):
        pairs = ts.s2cube.sel_split("test").s2cube.pair(
            mono.s2cube.sel_split("train", split_mode=mode))
        assert (len(pairs) > 0) is leaks, mode


def test_selections_and_errors(cr_cube, small_cube):
    ds = s2cube.open_cube(cr_cube)
    rgb = SEN12MSCR(ds.sel(band=["B4", "B3", "B2"], polarization=["VH"]), split="test")
    full = SEN12MSCR(ds, split="test")
    a, b = rgb[2], full[2]
    np.testing.assert_array_equal(a["input"]["S2"], b["input"]["S2"][[3, 2, 1]])
    np.testing.assert_array_equal(a["input"]["S1"], b["input"]["S1"][[1]])
    scene = ds.s2cube.sel_split("train").isel(patch=slice(0, 10))
    assert len(SEN12MSCR(scene, split="all")) == 10
    with pytest.raises(SelectionError, match="cuts the patches"):
        SEN12MSCR(ds.isel(y=slice(0, 16)))
    with pytest.raises(SelectionError, match="no sample of split='val'"):
        SEN12MSCR(ds, split="val")
    with pytest.raises(ValueError, match="no regions"):
        SEN12MSCR(ds, region="europa")
    with pytest.raises(ValueError, match="split_mode"):
        SEN12MSCR(ds, split_mode="fuzzy")
    with pytest.raises(SelectionError, match="SEN12MS-CR cube"):
        SEN12MSCRTS(str(cr_cube))
    with pytest.raises(SelectionError, match="not a SEN12MS-CR cube"):
        SEN12MSCR(str(small_cube))


def test_a_damaged_chunk_names_its_scene_and_patch(cr_cube, tmp_path):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(cr_cube, damaged)
    shard = damaged / "s2_cloudy" / "c" / "3" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(raw)
    ds = SEN12MSCR(str(damaged), split="train")
    with pytest.raises(ChunkError, match=r"s2_cloudy of patch ROIs2017_winter_8 p\d+ fails"):
        for pdx in range(len(ds) - 1, -1, -1):
            ds[pdx]


# --- the batched path ----------------------------------------------------------------------------

def test_batches_are_the_dropins_arrays_and_shard_by_rank_and_worker(cr_cube):
    drop = SEN12MSCR(str(cr_cube), split="train")
    n = len(drop)
    seen = []
    for rank in range(2):
        loader = make_loader(str(cr_cube), split="train", batch_size=5, num_workers=2, threads=1,
                             rank=rank, world_size=2, seed=4)
        loader.set_epoch(1)
        for batch in loader:
            assert batch["input"]["S2"].shape[1:] == (13, 32, 32)
            assert isinstance(batch["scene"], list)
            for j, pdx in enumerate(batch["pdx"].tolist()):
                seen.append(pdx)
                want = drop[pdx]
                np.testing.assert_array_equal(batch["input"]["S2"][j].numpy(), want["input"]["S2"])
                np.testing.assert_array_equal(batch["input"]["S1"][j].numpy(), want["input"]["S1"])
                np.testing.assert_array_equal(batch["input"]["masks"][j].numpy(),
                                              want["input"]["masks"])
                np.testing.assert_array_equal(batch["target"]["S2"][j].numpy(),
                                              want["target"]["S2"])
                assert batch["input"]["coverage"][j].item() == want["input"]["coverage"]
                assert batch["scene"][j] == drop.samples.scene(pdx)
    assert sorted(seen) == list(range(n))  # every sample once over ranks and workers


def test_accessor_batches_crop_and_raw_values(cr_cube):
    ds = s2cube.open_cube(cr_cube)
    drop = SEN12MSCR(ds, split="all")
    got = list(ds.s2cube.batches(split="all", batch_size=16, crop=8, seed=2, epoch=3))
    loader = make_loader(ds, split="all", batch_size=16, crop=8, seed=2)
    loader.set_epoch(3)
    for a, b in itertools.zip_longest(got, loader):
        np.testing.assert_array_equal(a["pdx"], b["pdx"].numpy())
        np.testing.assert_array_equal(a["input"]["S2"], b["input"]["S2"].numpy())
        assert a["input"]["S2"].shape[-2:] == (8, 8)
        for j, pdx in enumerate(a["pdx"][:3]):
            whole = drop[int(pdx)]["input"]["S2"]
            hits = [(y, x) for y in range(25) for x in range(25)
                    if np.array_equal(whole[:, y:y + 8, x:x + 8], a["input"]["S2"][j])]
            assert hits  # a window of the sample's own patch
    raw = next(ds.s2cube.batches(split="all", batch_size=4, rescale_method=None, shuffle=False))
    assert raw["input"]["S2"].dtype == np.uint16
    np.testing.assert_array_equal(raw["target"]["S2"][0],
                                  ds.s2.isel(patch=int(raw["patch"][0])).values)
    with pytest.raises(ValueError, match="options of time-series cubes"):
        make_loader(ds, mode="seq2seq")
    with pytest.raises(ValueError, match="not options of SEN12MS-CR batches"):
        next(ds.s2cube.batches(n_input_samples=3))
