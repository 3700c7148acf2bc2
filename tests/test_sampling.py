"""The reference sampling rules, checked against literal transcriptions of archive.md sec. 6."""

from __future__ import annotations

import numpy as np
import pytest

from s2cube.plans import rules as sampling

T = 30


def reference_fixed(coverage, n, min_cov=0.0, max_cov=1.0):
    """archive.md sec. 6, the fixed rule, as written there (one series, a Python list)."""
    target = np.argsort(coverage)[0]
    inputs = [t for t in range(30) if min_cov <= coverage[t] <= max_cov][:n]
    if len(inputs) < n:
        inputs = [t for t in range(30) if t != target][:n]
        match = False
    else:
        match = True
    if coverage[target] > 1e-3:
        match = False
    return inputs, int(target), match


def reference_window(target, n):
    windows = np.lib.stride_tricks.sliding_window_view(np.arange(30), n + 1)
    holding = [w for w in windows if target in w]
    return [int(t) for t in holding[len(holding) // 2] if t != target]


def tied_coverage(n_samples: int, seed: int = 0) -> np.ndarray:
    """float32 coverage full of ties (0 for clear, 1 for blank), as stored by the converter."""
    rng = np.random.default_rng(seed)
    cov = rng.choice(np.array([0.0, 0.0, 0.0, 1.0, 0.2, 0.55, 0.0005, 0.9], np.float32),
                     size=(n_samples, T))
    cov[::7] = 0.3  # some series have no clear frame at all
    return cov.astype(np.float32)


def test_sample_order_follows_reference_rois_and_patch_ids():
    names = ["ROIs2017_8", "ROIs1868_73"]  # cube order differs from the reference order
    pid = np.full((2, 2, 3), -1, np.int32)
    pid[0] = [[40, 41, 42], [24, 25, -1]]
    pid[1] = [[205, 171, 172], [187, 188, 189]]
    index = sampling.patch_index(pid, names)
    assert [index.roi_name(i) for i in range(len(index))] == ["ROIs1868_73"] * 6 + ["ROIs2017_8"] * 5
    assert index.patch_id.tolist() == [171, 172, 187, 188, 189, 205, 24, 25, 40, 41, 42]
    assert (pid[index.roi, index.row, index.col] == index.patch_id).all()
    test = sampling.patch_index(pid, names, split="test")
    assert {index.roi_names[i] for i in test.roi} == {"ROIs1868_73"}
    africa = sampling.patch_index(pid, names, split="all", region="africa")
    assert africa.patch_id.tolist() == [24, 25, 40, 41, 42]
    assert len(sampling.patch_index(pid, names, split="val")) == 0
    with pytest.raises(ValueError, match="split"):
        sampling.patch_index(pid, names, split="training")


def test_fixed_is_the_reference_rule_exactly_with_ties():
    cov = tied_coverage(400)
    for n, lo, hi in [(3, 0.0, 1.0), (3, 0.1, 0.6), (2, 0.5, 1.0), (5, 0.95, 1.0)]:
        plan = sampling.fixed(cov, n, lo, hi)
        for i, row in enumerate(cov):
            want = reference_fixed(list(row), n, lo, hi)  # a list of np.float32, like the reference
            assert (plan.inputs[i].tolist(), int(plan.target[i]), bool(plan.match[i])) == want
            assert sampling.fixed_one(row, n, lo, hi) == want


def test_fixed_defaults_take_the_first_slots_and_target_may_be_an_input():
    cov = np.full((1, T), 0.5, np.float32)
    cov[0, 1] = 0.0
    plan = sampling.fixed(cov, 3)
    assert plan.inputs.tolist() == [[0, 1, 2]]
    assert plan.target.tolist() == [1]
    assert plan.match.tolist() == [True]


def test_stable_option_takes_the_earliest_tied_slot():
    cov = tied_coverage(200, seed=3)
    plan = sampling.fixed(cov, 3, stable=True)
    for i, row in enumerate(cov):
        assert plan.target[i] == np.flatnonzero(row == row.min())[0]
    # NumPy's default sort does not always return the earliest tie: why parity needs it
    assert (sampling.fixed(cov, 3).target != plan.target).any()


def test_coverage_bin_false_when_inputs_miss_the_range_or_target_is_cloudy():
    cov = np.full((2, T), 0.9, np.float32)
    cov[0, [4, 9, 20]] = 0.3  # 3 inputs in [0.2, 0.5]
    cov[0, 12] = 0.0  # a clear target
    cov[1, 12] = 0.01  # no clear target
    cov[1, [4, 9]] = 0.3  # only 2 inputs in range
    plan = sampling.fixed(cov, 3, 0.2, 0.5)
    assert plan.inputs[0].tolist() == [4, 9, 20] and plan.target[0] == 12 and plan.match[0]
    assert plan.inputs[1].tolist() == [0, 1, 2] and plan.target[1] == 12 and not plan.match[1]


def test_missing_frames_are_never_chosen_by_fixed():
    cov = np.full((1, T), 0.5, np.float32)
    cov[0, [0, 2]] = np.nan
    cov[0, 5] = 0.0
    plan = sampling.fixed(cov, 3, 0.9, 1.0)  # no input in range: fallback
    assert plan.inputs.tolist() == [[1, 3, 4]]
    assert plan.target.tolist() == [5]


def test_random_is_seeded_picks_clear_targets_and_the_middle_window():
    cov = tied_coverage(300, seed=5)
    a = sampling.choose_slots(cov, sampler="random", n_input_samples=3, seed=11, epoch=0)
    b = sampling.choose_slots(cov, sampler="random", n_input_samples=3, seed=11, epoch=0)
    c = sampling.choose_slots(cov, sampler="random", n_input_samples=3, seed=11, epoch=1)
    assert np.array_equal(a.target, b.target) and np.array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.target, c.target)
    for i, row in enumerate(cov.astype(np.float64)):
        clear = np.flatnonzero(row < 1e-3)
        t = int(a.target[i])
        assert t in clear if clear.size else t == int(np.argmin(row))
        assert a.inputs[i].tolist() == reference_window(t, 3)
    assert a.match.all()


def test_random_draws_every_clear_slot_uniformly():
    cov = np.full((6000, T), 0.5)
    cov[:, [3, 17, 29]] = 0.0
    plan = sampling.random(cov, 2, np.random.default_rng(0))
    counts = np.bincount(plan.target, minlength=T)[[3, 17, 29]]
    assert set(np.unique(plan.target)) == {3, 17, 29}
    assert np.all(np.abs(counts / 6000 - 1 / 3) < 0.03)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_random_window_matches_sliding_windows_at_every_target(n):
    for t in range(T):
        assert sampling.random_window(t, n) == reference_window(t, n)


def test_fixedsubset_restricts_the_range_and_falls_back_to_the_whole_series():
    cov = np.full((2, T), 0.5, np.float32)
    cov[0, 12] = 0.0  # sample 0 matches inside slots 10..20
    cov[1, 25] = 0.0  # sample 1's only clear frame is outside: falls back to fixed
    plan = sampling.fixedsubset(cov, 3, 0.0, 1.0, slots=(10, 20))
    assert plan.inputs[0].tolist() == [10, 11, 12] and plan.target[0] == 12 and plan.match[0]
    full = sampling.fixed(cov, 3)
    assert plan.inputs[1].tolist() == full.inputs[1].tolist() and plan.target[1] == 25
    same = sampling.choose_slots(tied_coverage(50), sampler="fixedsubset")
    ref = sampling.choose_slots(tied_coverage(50), sampler="fixed")
    assert np.array_equal(same.inputs, ref.inputs) and np.array_equal(same.target, ref.target)


def test_generic_plan_is_the_whole_series_and_options_are_checked():
    plan = sampling.choose_slots(tied_coverage(4), sample_type="generic")
    assert plan.inputs.shape == (4, T) and (plan.target == -1).all()
    assert plan.slots.shape == (4, T)
    with pytest.raises(ValueError, match="sampler"):
        sampling.choose_slots(tied_coverage(4), sampler="best")
    with pytest.raises(ValueError, match="min_cov"):
        sampling.choose_slots(tied_coverage(4), min_cov=0.8, max_cov=0.2)
    with pytest.raises(ValueError, match="n_input_samples"):
        sampling.choose_slots(tied_coverage(4), n_input_samples=30)


def test_blank_rule_and_seq2seq_labels():
    cov = np.array([[0.0, 0.39, 0.4, np.nan]], np.float32)
    assert sampling.cloudy_frames(cov).tolist() == [[False, False, True, True]]
    blank = np.array([[True, False, False, False]])
    assert sampling.apply_blank_rule(cov, blank)[0, 0] == 1.0


def test_gap_plan_pastes_real_cloudy_masks_of_the_same_roi_on_clear_frames_only():
    pid = np.arange(2 * 2 * 2, dtype=np.int32).reshape(2, 2, 2)
    index = sampling.patch_index(pid, ["ROIs1868_73", "ROIs2017_8"])
    cov = np.zeros((2, T, 2, 2), np.float32)
    cov[0, 5, 1, 1] = 0.8  # ROI 0's only cloudy frame
    cov[1, 7, 0, 0] = 0.6  # ROI 1's only cloudy frame
    slots = sampling.series_windows(len(index), 10, np.random.default_rng(0))
    labels = np.zeros(slots.shape, bool)
    labels[:, 0] = True
    gaps = sampling.gap_plan(slots, index, {0: cov[0], 1: cov[1]}, np.random.default_rng(1), 0.5,
                             frame_cloudy=labels)
    assert gaps.any.sum() > 0 and not gaps.any[:, 0].any()
    for i, k in zip(*np.nonzero(gaps.any)):
        src = (gaps.slot[i, k], gaps.row[i, k], gaps.col[i, k])
        assert src == ((5, 1, 1) if index.roi[i] == 0 else (7, 0, 0))
