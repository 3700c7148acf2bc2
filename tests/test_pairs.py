"""Published pair files import as plain data; anything else is refused without running it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from s2cube.plans import pairs
from s2cube.plans import rules as sampling


def s2_name(roi: str, slot: int, pid: int) -> str:
    collection, rid = roi.split("_")
    return (f"{collection}/{rid}/S2/{slot}/"
            f"s2_{collection}_{rid}_ImgNo_{slot}_2018-01-0{slot % 9 + 1}_patch_{pid}.tif")


def test_toolbox_pairs_import_as_explicit_slots(tmp_path):
    data = {0: {"input": [0, 4, 7], "target": np.int64(12)},
            1: {"input": [np.int64(1), 2, 3], "target": 29}}
    path = tmp_path / "3_test_s2cloudless_mask.npy"
    np.save(path, data, allow_pickle=True)
    pf = pairs.load_pair_file(path)
    assert pf.kind == "pairs" and len(pf) == 2
    plan = pairs.slots_from_pairs(pf, 2, n_input_samples=3)
    assert plan.inputs.tolist() == [[0, 4, 7], [1, 2, 3]]
    assert plan.target.tolist() == [12, 29] and plan.match.all()
    with pytest.raises(pairs.PairFileError, match="n_input_samples"):
        pairs.slots_from_pairs(pf, 2, n_input_samples=2)


def test_generic_coverage_file_with_torch_tensors_imports_without_torch_code(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    cov = rng.random((3, 30)).astype(np.float32)
    cov[:, 5] = 0.0
    data = {i: {"coverage": [torch.tensor([v]) for v in cov[i]],  # as a DataLoader collates them
                "paths": {"S2": [s2_name("ROIs1868_73", t, 171 + i) for t in range(30)]}}
            for i in range(3)}
    path = tmp_path / "generic_3_test_all_s2cloudless_mask.npy"
    np.save(path, data, allow_pickle=True)
    pf = pairs.load_pair_file(path)
    assert pf.kind == "coverage"
    got = np.array([pf.entries[i]["coverage"] for i in range(3)])
    assert np.array_equal(got, cov.astype(np.float64))  # .item() of float32 tensors, exactly
    plan = pairs.slots_from_pairs(pf, 3, n_input_samples=3, sampler="fixed")
    want = sampling.fixed(got, 3)
    assert np.array_equal(plan.inputs, want.inputs) and np.array_equal(plan.target, want.target)
    pairs.check_paths(pf, [("ROIs1868_73", 171 + i) for i in range(3)])
    with pytest.raises(pairs.PairFileError, match="entry 1 names ROIs1868_73 patch 172"):
        pairs.check_paths(pf, [("ROIs1868_73", 171), ("ROIs1868_73", 999), ("ROIs1868_73", 173)])


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_file_naming_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "generic_3_test_all_s2cloudless_mask.npy"
    np.save(path, {0: {"coverage": [0.0] * 30, "paths": _Evil(str(marker))}}, allow_pickle=True)
    with pytest.raises(pairs.UnsafePairFileError, match=r"posix\.mkdir.*trust=True"):
        pairs.load_pair_file(path)
    assert not marker.exists()
    raw = tmp_path / "raw.npy"  # a bare pickle stream behind a valid header, protocol 2
    with open(raw, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(_Evil(str(marker)), fh, protocol=2)
    with pytest.raises(pairs.UnsafePairFileError):
        pairs.load_pair_file(raw)
    assert not marker.exists()


def test_trust_flag_reads_with_numpy_and_bad_files_are_named(tmp_path):
    path = tmp_path / "mine.npy"
    np.save(path, {0: {"input": [0, 1], "target": 2}}, allow_pickle=True)
    assert pairs.load_pair_file(path, trust=True).entries[0]["input"] == [0, 1]
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(pairs.PairFileError, match="not a non-empty dict"):
        pairs.load_pair_file(tmp_path / "plain.npy")
    np.save(tmp_path / "gaps.npy", {0: {"input": [0], "target": 1}, 5: {"input": [0], "target": 1}},
            allow_pickle=True)
    with pytest.raises(pairs.PairFileError, match="without gaps"):
        pairs.load_pair_file(tmp_path / "gaps.npy")
    with pytest.raises(pairs.PairFileError, match="does not exist"):
        pairs.load_pair_file(tmp_path / "nope.npy")


def test_directory_lookup_and_epoch_sensitive_entries(tmp_path):
    data = {k: {"input": [k % 30, 1, 2], "target": 3} for k in range(4)}  # 2 epochs x 2 samples
    np.save(tmp_path / "3_val_s2cloudless_mask.npy", data, allow_pickle=True)
    found = pairs.find_pair_file(tmp_path, 3, "val", "all", "s2cloudless_mask")
    assert found.name == "3_val_s2cloudless_mask.npy"
    pf = pairs.load_pair_file(found)
    assert pairs.slots_from_pairs(pf, 2, epoch=1).inputs[:, 0].tolist() == [2, 3]
    assert pairs.slots_from_pairs(pf, 2, epoch=2).inputs[:, 0].tolist() == [0, 1]
    with pytest.raises(pairs.PairFileError, match="generic_3_test_all"):
        pairs.find_pair_file(tmp_path, 3, "test", "all", "s2cloudless_mask")
