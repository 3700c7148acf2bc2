"""The drop-in dataset returns the reference dict; the fast path shards, crops and streams."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_reader import shared_cube  # noqa: E402

from s2cube import schema  # noqa: E402
from s2cube import torch as s2torch  # noqa: E402
from s2cube.plans import rules as sampling  # noqa: E402

REF_KEYS = {"S1", "S2", "masks", "coverage", "S1 TD", "S2 TD", "S1 path", "S2 path", "coord"}


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    return shared_cube(tmp_path_factory)


@pytest.fixture(scope="module")
def raw(cube):
    import zarr

    return {v: zarr.open_array(str(cube / v), mode="r")[...] for v in schema.PIXEL_VARIABLES}


def _frame(raw, var, i, t, r, c, p=16):
    return raw[var][i, t, ..., r * p:(r + 1) * p, c * p:(c + 1) * p]


def test_dropin_seq2point_dict_matches_the_reference_definition(cube, raw):
    ds = s2torch.SEN12MSCRTS(str(cube), split="all", n_input_samples=3)
    meta = ds.samples.view
    plan = sampling.fixed(ds.samples.coverage, 3)
    assert len(ds) == 11  # 6 + 5 patches (one hole), ROIs1868_73 first (reference order)
    for pdx in range(len(ds)):
        s = ds[pdx]
        assert set(s) == {"input", "target", "coverage bin"}
        assert set(s["input"]) == REF_KEYS | {"idx"} == set(s["target"])
        i, r, c = (int(a[pdx]) for a in (ds.samples.index.roi, ds.samples.index.row,
                                         ds.samples.index.col))
        slots = [*plan.inputs[pdx].tolist(), int(plan.target[pdx])]
        assert s["input"]["idx"] == slots[:3] and s["target"]["idx"] == slots[3]
        assert s["coverage bin"] == bool(plan.match[pdx])
        for part, ts in (("input", slots[:3]), ("target", slots[3:])):
            d = s[part]
            assert all(len(d[k]) == len(ts) for k in REF_KEYS)
            for k, t in enumerate(ts):
                s2 = d["S2"][k]
                assert s2.dtype == np.float32 and s2.shape == (13, 16, 16)
                want = np.clip(_frame(raw, "s2", i, t, r, c).astype(np.float32), 0, 10000) / 10000
                np.testing.assert_array_equal(s2, want)
                s1 = np.nan_to_num((np.clip(_frame(raw, "s1", i, t, r, c), -25, 0) + 25) / 25)
                np.testing.assert_array_equal(d["S1"][k], s1)
                assert 0 <= d["S1"][k].min() and d["S1"][k].max() <= 1
                missing = not meta.valid_s2[i, t, r, c] or meta.blank[i, t, r, c]
                bits = (_frame(raw, "cloud_mask", i, t, r, c) & 1) != 0
                np.testing.assert_array_equal(d["masks"][k], 1.0 if missing else bits)
                assert d["masks"][k].dtype == np.float32
                assert d["coverage"][k] == meta.coverage[i, t, r, c, 0] or missing
                date = meta.s2_date[i, t, r, c]
                assert d["S2 TD"][k] == (date - np.datetime64("2014-04-03")).astype(int)
                assert d["S1 TD"][k] == d["S2 TD"][k] - 3
                _a, _, x0, _, _e, y0 = meta.transform[i]
                assert d["coord"][k] == [x0 + c * 160, y0 - (r + 1) * 160, x0 + (c + 1) * 160,
                                         y0 - r * 160]
                pid = meta.patch_id[i, r, c]
                coll, rid = meta.roi_names[i].split("_")
                assert d["S2 path"][k] == (f"{coll}/{rid}/S2/{t}/s2_{coll}_{rid}_ImgNo_{t}_"
                                           f"{date}_patch_{pid}.tif")
                assert d["S1 path"][k].startswith(f"{coll}/{rid}/S1/{t}/s1_")


def test_dropin_generic_resnet_and_missing_frames(cube):
    ds = s2torch.SEN12MSCRTS(str(cube), split="test", sample_type="generic",
                             rescale_method="resnet", cloud_masks="cloud_cloudshadow_mask",
                             root="/data/SEN12MSCRTS")
    assert len(ds) == 6  # ROIs1868_73 is a test ROI, ROIs2017_8 a train ROI
    s = ds[1]  # ROIs1868_73 patch at row 0, col 1: slot 4 is missing
    assert set(s) == REF_KEYS and all(len(v) == 30 for v in s.values())
    s2 = np.stack(s["S2"])
    assert s2.dtype == np.float32 and s2.min() >= 0 and s2.max() <= 5 and s2.max() > 1
    s1 = np.stack(s["S1"])
    assert s1.min() >= 0 and s1.max() <= 2
    assert s["S2 path"][0].startswith("/data/SEN12MSCRTS/ROIs1868/73/S2/0/")
    assert s["S2 path"][4] == "" and s["S2 TD"][4] == -1  # the missing frame says so
    assert (s["masks"][4] == 1).all() and (s["S2"][4] == 0).all()


def test_dropin_random_sampler_is_seeded_per_epoch_and_fixed_stable_option(cube):
    ds = s2torch.SEN12MSCRTS(str(cube), sampler="random", seed=3)
    first = ds.choice
    ds.set_epoch(1)
    assert not np.array_equal(first.target, ds.choice.target)
    ds.set_epoch(0)
    assert np.array_equal(first.target, ds.choice.target)
    for pdx in range(len(ds)):
        t = int(first.target[pdx])
        cov = ds.samples.coverage[pdx]
        assert cov[t] < 1e-3 or t == int(np.nanargmin(cov))
    stable = s2torch.SEN12MSCRTS(str(cube), stable_sort=True)
    for pdx in range(len(stable)):
        cov = stable.samples.coverage[pdx]
        assert stable.choice.target[pdx] == np.flatnonzero(cov == np.nanmin(cov))[0]


def test_dropin_imports_both_pair_formats(cube, tmp_path):
    ds = s2torch.SEN12MSCRTS(str(cube), split="test")
    ix = ds.samples.index
    pairs_file = tmp_path / "2_test_s2cloudless_mask.npy"
    np.save(pairs_file, {k: {"input": [5, 6], "target": 7} for k in range(len(ds))},
            allow_pickle=True)
    explicit = s2torch.SEN12MSCRTS(str(cube), split="test", n_input_samples=2,
                                   import_data_path=tmp_path)
    s = explicit[2]
    assert s["input"]["idx"] == [5, 6] and s["target"]["idx"] == 7
    cov = np.zeros((len(ds), 30))
    cov[:, 9] = -1  # an imported coverage decides the target, not the cube's
    paths = [{"S2": [f"x/s2_ROIs1868_73_ImgNo_0_2018-01-01_patch_{int(ix.patch_id[k])}.tif"]}
             for k in range(len(ds))]
    np.save(tmp_path / "generic_3_test_all_s2cloudless_mask.npy",
            {k: {"coverage": list(cov[k]), "paths": paths[k]} for k in range(len(ds))},
            allow_pickle=True)
    imported = s2torch.SEN12MSCRTS(str(cube), split="test", import_data_path=tmp_path)
    assert imported[0]["target"]["idx"] == 9
    from s2cube.plans.pairs import PairFileError

    with pytest.raises(PairFileError, match="does not fit"):
        _mismatched(cube, tmp_path)


def _mismatched(cube, tmp_path):
    """A coverage file made for another selection: its paths name other patches."""
    bad = tmp_path / "bad.npy"
    np.save(bad, {k: {"coverage": [0.0] * 30,
                      "paths": {"S2": [f"s2_ROIs1970_20_ImgNo_0_2018-01-01_patch_{k}.tif"]}}
                  for k in range(6)}, allow_pickle=True)
    return s2torch.SEN12MSCRTS(str(cube), split="test", import_data_path=bad)


def test_options_are_checked_with_clear_messages(cube):
    with pytest.raises(ValueError, match="cloud_masks"):
        s2torch.SEN12MSCRTS(str(cube), cloud_masks=None)
    with pytest.raises(ValueError, match="sampler"):
        s2torch.SEN12MSCRTS(str(cube), sampler="fixed_subset")
    with pytest.raises(ValueError, match="rescale_method"):
        s2torch.SEN12MSCRTS(str(cube), rescale_method="minmax")
    with pytest.raises(IndexError):
        s2torch.SEN12MSCRTS(str(cube))[99]


@pytest.mark.parametrize("n,batch,world,workers,drop_last,shuffle", [
    (11, 4, 1, 1, False, True), (23, 3, 2, 2, False, True), (23, 3, 3, 2, True, True),
    (50, 7, 4, 3, False, False), (5, 8, 2, 4, False, True), (100, 1, 3, 3, True, False),
])
def test_sharding_by_rank_and_worker_is_complete_and_disjoint(n, batch, world, workers,
                                                              drop_last, shuffle):
    for epoch in (0, 1):
        seen = []
        per_rank = []
        for rank in range(world):
            s = s2torch.ShardedSampler(n, batch, shuffle=shuffle, seed=5, rank=rank,
                                       world_size=world, drop_last=drop_last)
            s.set_epoch(epoch)
            mine = [i for w in range(workers) for b in s.batches(w, workers) for i in b.tolist()]
            assert all(len(b) <= batch for w in range(workers) for b in s.batches(w, workers))
            per_rank.append(len(s))
            seen += mine
        assert len(seen) == len(set(seen))  # no sample twice
        if drop_last:
            assert len(set(per_rank)) == 1 and n - len(seen) < world + world * (batch - 1) + 1
        else:
            assert sorted(seen) == list(range(n))  # none lost
    a = s2torch.ShardedSampler(n, batch, seed=5, shuffle=True)
    b = s2torch.ShardedSampler(n, batch, seed=5, shuffle=True)
    assert [x.tolist() for x in a.batches()] == [x.tolist() for x in b.batches()]
    b.set_epoch(3)
    if n > 3:
        assert [x.tolist() for x in a.batches()] != [x.tolist() for x in b.batches()]


def _pdx_seen(cube, world, workers, **kw):
    seen = []
    for rank in range(world):
        loader = s2torch.make_loader(str(cube), split="all", batch_size=2, rank=rank,
                                     world_size=world, num_workers=workers, seed=1, **kw)
        loader.set_epoch(2)
        for b in loader:
            seen += b["pdx"].tolist()
    return seen


def test_dataloader_workers_times_ranks_read_every_sample_once(cube):
    seen = _pdx_seen(cube, world=2, workers=2, sampler="fixed")
    assert sorted(seen) == list(range(11))
    assert seen == _pdx_seen(cube, world=2, workers=2, sampler="fixed")  # deterministic


def test_persistent_workers_follow_set_epoch(cube):
    loader = s2torch.make_loader(str(cube), split="all", batch_size=3, num_workers=2, seed=4)
    orders, targets = [], []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        got = list(loader)
        orders.append([i for b in got for i in b["pdx"].tolist()])
        targets.append({i: int(t) for b in got
                        for i, t in zip(b["pdx"].tolist(), b["target"]["idx"][:, 0].tolist())})
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(11))
    assert targets[0] == targets[2] != targets[1]  # the random sampler draws per epoch
    fresh = s2torch.make_loader(str(cube), split="all", batch_size=3, num_workers=0, seed=4)
    fresh.set_epoch(1)
    assert [i for b in fresh for i in b["pdx"].tolist()] == orders[1]


def test_recycled_worker_buffers_give_the_same_batches_in_a_training_loop(cube):
    def sums(reuse):
        loader = s2torch.make_loader(str(cube), split="all", batch_size=2, num_workers=2,
                                     sampler="fixed", seed=3, reuse_buffers=reuse,
                                     prefetch_factor=1)
        out = {}
        for epoch in range(3):  # more batches than ring slots
            loader.set_epoch(epoch)
            for b in loader:  # a training loop: each batch used at once, then dropped
                for j, pdx in enumerate(b["pdx"].tolist()):
                    out[(epoch, pdx)] = (float(b["input"]["S2"][j].double().sum()),
                                         float(b["target"]["masks"][j].double().sum()))
        return out

    assert sums(True) == sums(False)


def test_spawn_context_workers_work(cube):
    seen = _pdx_seen(cube, world=1, workers=1, multiprocessing_context="spawn", sampler="fixed")
    assert sorted(seen) == list(range(11))


def test_seq2point_batches_equal_the_dropin_samples(cube):
    ds = s2torch.SEN12MSCRTS(str(cube), split="all", sampler="fixed")
    loader = s2torch.make_loader(str(cube), split="all", sampler="fixed", batch_size=4,
                                 shuffle=True, seed=2, device="cpu")
    n = 0
    for b in loader:
        assert b["input"]["S2"].shape[1:] == (3, 13, 16, 16)
        assert b["input"]["S1"].shape[1:] == (3, 2, 16, 16)
        assert b["input"]["masks"].shape[1:] == (3, 16, 16)
        assert b["target"]["S2"].shape[1:] == (1, 13, 16, 16)
        assert b["input"]["S2 TD"].dtype == torch.int64 and b["input"]["S2"].dtype == torch.float32
        for j, pdx in enumerate(b["pdx"].tolist()):
            s = ds[pdx]
            for part in ("input", "target"):
                for key in ("S2", "S1", "masks"):
                    np.testing.assert_array_equal(b[part][key][j].numpy(), np.stack(s[part][key]))
                assert b[part]["S2 TD"][j].tolist() == s[part]["S2 TD"]
                assert b[part]["coverage"][j].tolist() == [float(v) for v in s[part]["coverage"]]
            assert bool(b["coverage bin"][j]) == s["coverage bin"]
            n += 1
    assert n == len(ds) and len(loader) == 3


def test_crops_are_windows_of_the_full_frames_and_raw_mode(cube):
    full = s2torch.make_loader(str(cube), split="all", sampler="fixed", batch_size=11,
                               shuffle=False, rescale_method=None)
    crop = s2torch.make_loader(str(cube), split="all", sampler="fixed", batch_size=11,
                               shuffle=False, rescale_method=None, crop=8, seed=4)
    b, c = next(iter(full)), next(iter(crop))
    assert b["input"]["S2"].dtype == torch.int32  # raw DN: torch reduces int32, not uint16
    offsets = crop.stream.maker.draws(0)["offsets"]
    assert len({tuple(o) for o in offsets}) > 1
    for j in range(11):
        y, x = offsets[j]
        want = b["input"]["S2"][j][..., y:y + 8, x:x + 8]
        assert torch.equal(c["input"]["S2"][j], want)
        assert torch.equal(c["target"]["masks"][j], b["target"]["masks"][j][..., y:y + 8, x:x + 8])


def test_seq2seq_windows_labels_and_synthetic_gaps_from_the_same_roi(cube, raw):
    loader = s2torch.make_loader(str(cube), split="all", mode="seq2seq", window=12,
                                 gap_probability=0.5, batch_size=11, shuffle=False, seed=0)
    b = next(iter(loader))
    assert b["S2"].shape == (11, 12, 13, 16, 16) and b["gap_masks"].shape == (11, 12, 16, 16)
    idx = b["idx"].numpy()
    assert (np.diff(idx, axis=1) == 1).all() and len(set(idx[:, 0])) > 1
    assert torch.equal(b["cloudy"], b["coverage"] >= 0.4) or not b["valid"].all()
    ds = loader.stream.samples
    meta = ds.view
    gaps = b["gap_masks"].numpy()
    has_gap = gaps.reshape(11, 12, -1).any(axis=2)
    assert has_gap.any() and not (has_gap & b["cloudy"].numpy()).any()
    # every gap is the s2cloudless mask of a cloudy frame of the same ROI
    for j, k in zip(*np.nonzero(has_gap)):
        i = int(ds.index.roi[j])
        p = 16
        cands = [(t, r, c) for t in range(30) for r in range(2) for c in range(3)
                 if meta.coverage[i, t, r, c, 0] >= 0.4 and meta.valid_s2[i, t, r, c]
                 and not meta.blank[i, t, r, c]]
        masks = [(raw["cloud_mask"][i, t, r * p:(r + 1) * p, c * p:(c + 1) * p] & 1) != 0
                 for t, r, c in cands]
        assert any(np.array_equal(gaps[j, k], m) for m in masks)


def test_prefetcher_moves_batches_on_the_same_code_path(cube):
    loader = s2torch.make_loader(str(cube), split="all", batch_size=5, shuffle=False,
                                 sampler="fixed")
    plain = list(loader)
    moved = list(s2torch.DevicePrefetcher(loader.dataloader(), "cpu"))
    assert len(plain) == len(moved) == 3
    for a, b in zip(plain, moved):
        assert torch.equal(a["input"]["S2"], b["input"]["S2"])
        assert b["input"]["S2"].device.type == "cpu"


@pytest.fixture
def converted(request):
    """The shared converted cube (skipped until the converter's cloud detection is installed)."""
    pytest.importorskip("s2cube_conversion.clouds")
    return request.getfixturevalue("small_cube"), request.getfixturevalue("synthetic_archive")


def test_reader_reads_a_converted_cube_as_the_archive_geotiffs(converted):
    rasterio = pytest.importorskip("rasterio")
    small_cube, synthetic_archive = converted
    ds = s2torch.SEN12MSCRTS(str(small_cube), sample_type="generic", root=str(synthetic_archive))
    for pdx, t in itertools.product((0, len(ds) - 1), (0, 13, 29)):
        s = ds[pdx]
        with rasterio.open(s["S2 path"][t]) as f:
            s2, bounds = f.read().astype(np.float32), list(f.bounds)
        with rasterio.open(s["S1 path"][t]) as f:
            s1 = f.read().astype(np.float32)
        np.testing.assert_array_equal(s["S2"][t], np.nan_to_num(np.clip(s2, 0, 10000) / 10000))
        np.testing.assert_array_equal(s["S1"][t], np.nan_to_num((np.clip(s1, -25, 0) + 25) / 25))
        assert s["coord"][t] == bounds
    assert ds.samples.coverage.shape == (len(ds), 30) and ds.samples.view.patch_size == 32
