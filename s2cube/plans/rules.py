"""The reference loader's sampling rules, in NumPy on coverage series (no I/O).

A :class:`SlotChoice` says, for every sample ``pdx`` of a :class:`PatchIndex`, which
positions of its series are its inputs and its target. It is made from the samples'
coverage without reading a single pixel; the plan tables of :mod:`s2cube.plans.table`
name the same choices by label, and the loader resolves them into reads (TorchGeo style:
samplers build an index, datasets resolve it).

The rules follow ``archive.md`` sec. 6:

- **sample order**: ROIs in the reference order (``schema.ROIS``) filtered by split and
  region, inside an ROI patches by ascending patch id;
- **fixed**: target ``np.argsort(coverage)[0]`` (NumPy's default, non-stable sort, called
  exactly so for parity; ``stable=True`` takes the earliest of tied slots), inputs the first
  ``n`` slots with ``min_cov <= coverage <= max_cov``, else the first ``n`` slots other than
  the target (``coverage bin`` False); ``coverage bin`` is also False when the target's
  coverage exceeds 1e-3;
- **random**: a uniformly drawn slot with coverage < 1e-3 (argmin if none) as target, the
  middle one of the windows of ``n + 1`` consecutive slots holding it as inputs; seeded by
  a NumPy ``Generator`` (never the global RNG), so a seed and an epoch give one choice;
- **fixedsubset**: the fixed rule on a slot range, falling back to the whole series when
  it does not match (the reference's version crashes; this is what it intends).

Missing frames (``coverage`` NaN, the file was absent) never become a target or an input
of the fixed rules; the reference has no such frames (it silently shifts the series).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s2cube import schema

logger = logging.getLogger(__name__)

#: a target with coverage above this is not "cloud-free" (the reference's ``clear_tresh``)
CLEAR_THRESHOLD = 1e-3
SAMPLERS = ("fixed", "random", "fixedsubset")
SAMPLE_TYPES = ("cloudy_cloudfree", "generic")


@dataclass(frozen=True)
class PatchIndex:
    """The reference sample order: entry ``pdx`` is one patch location of the cube.

    ``roi``, ``row`` and ``col`` are positions on the cube's dims; ``roi_names`` are the
    cube's ``roi`` labels (all of them, so ``roi_names[roi[pdx]]`` is the sample's ROI).
    """

    roi: np.ndarray
    row: np.ndarray
    col: np.ndarray
    patch_id: np.ndarray
    roi_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.roi.size)

    def roi_name(self, pdx: int) -> str:
        """The ROI label of sample ``pdx``."""
        return self.roi_names[int(self.roi[pdx])]


def patch_index(
    patch_id: np.ndarray,
    roi_names: Sequence[str],
    split: str | None = "all",
    region: str | None = "all",
) -> PatchIndex:
    """Patch locations of ``split``/``region`` in the reference sample order.

    Parameters
    ----------
    patch_id
        The cube's ``patch_id`` (roi, row, col), -1 where there is no patch.
    roi_names
        The cube's ``roi`` labels, in the order of ``patch_id``'s first dim.
    split, region
        As the reference loader takes them (``all``/``train``/``val``/``test``; ``all`` or a
        region of ``schema.REGIONS``).
    """
    patch_id = np.asarray(patch_id)
    names = [str(n) for n in roi_names]
    if patch_id.ndim != 3 or patch_id.shape[0] != len(names):
        raise ValueError(f"patch_id has shape {patch_id.shape}; expected (roi, row, col) with "
                         f"{len(names)} ROIs")
    where = {n: i for i, n in enumerate(names)}
    parts: list[tuple[np.ndarray, ...]] = []
    for info in schema.select_rois(split, region):
        i = where.get(info.name)
        if i is None:
            continue
        rows, cols = np.nonzero(patch_id[i] >= 0)
        pids = patch_id[i, rows, cols]
        order = np.argsort(pids, kind="stable")
        parts.append((np.full(rows.size, i), rows[order], cols[order], pids[order]))
    if not parts:
        empty = np.zeros(0, np.int64)
        return PatchIndex(empty, empty, empty, empty.astype(np.int32), tuple(names))
    roi, row, col, pid = (np.concatenate(p) for p in zip(*parts))
    return PatchIndex(roi.astype(np.int64), row.astype(np.int64), col.astype(np.int64),
                      pid.astype(np.int32), tuple(names))


def sample_coverage(coverage: np.ndarray, index: PatchIndex, detector: str | int) -> np.ndarray:
    """The (N, 30) coverage of every sample of ``index`` for one detector (stored dtype)."""
    d = schema.DETECTORS.index(detector) if isinstance(detector, str) else int(detector)
    cov = np.asarray(coverage)
    return np.ascontiguousarray(cov[index.roi, :, index.row, index.col, d])


def apply_blank_rule(coverage: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """Coverage 1 for blank (all-zero) frames, the UnCRtainTS rule (a no-op on converted cubes)."""
    out = np.array(coverage, copy=True)
    out[np.asarray(blank, bool)] = 1
    return out


@dataclass(frozen=True)
class SlotChoice:
    """Which slots each sample uses.

    ``inputs`` is (N, n) slots, ``target`` (N,) (-1 for ``generic``), ``match`` (N,) the
    reference's ``coverage bin``.
    """

    inputs: np.ndarray
    target: np.ndarray
    match: np.ndarray

    def __len__(self) -> int:
        return int(self.target.size)

    @property
    def slots(self) -> np.ndarray:
        """(N, n + 1) slots read per sample: the inputs then the target (inputs only if generic)."""
        if (self.target < 0).all():
            return self.inputs
        return np.concatenate([self.inputs, self.target[:, None]], axis=1)


def _check_n(n: int, n_slots: int) -> int:
    n = int(n)
    if not 1 <= n < n_slots:
        raise ValueError(f"n_input_samples={n} must be between 1 and {n_slots - 1}")
    return n


def fixed_one(
    coverage: np.ndarray, n: int, min_cov: float = 0.0, max_cov: float = 1.0,
    stable: bool = False,
) -> tuple[list[int], int, bool]:
    """The fixed rule on one series (the reference's ``fixed_sampler``, line for line in effect).

    ``coverage`` keeps its dtype: float32 for the stored coverage (as the reference's
    ``np.mean`` of float32 masks), float64 for imported Python floats. The default sort is
    NumPy's non-stable one, as the reference calls it; ``stable=True`` takes the earliest slot
    among ties at the minimum. Missing frames (NaN) sort last and are never inputs.
    """
    cov = np.asarray(coverage)
    order = np.argsort(cov, kind="stable") if stable else np.argsort(cov)
    target = int(order[0])
    inside = (cov >= min_cov) & (cov <= max_cov)
    inputs = [int(t) for t in np.flatnonzero(inside)[:n]]
    match = len(inputs) >= n
    if not match:
        present = ~np.isnan(cov) if cov.dtype.kind == "f" else np.ones(cov.shape, bool)
        inputs = [t for t in range(cov.size) if t != target and present[t]][:n]
    if not cov[target] <= CLEAR_THRESHOLD:
        match = False
    return inputs, target, bool(match)


def fixed(
    coverage: np.ndarray, n: int, min_cov: float = 0.0, max_cov: float = 1.0,
    stable: bool = False,
) -> SlotChoice:
    """The fixed (evaluation) sampler on (N, T) coverage; see :func:`fixed_one`."""
    cov = np.asarray(coverage)
    n = _check_n(n, cov.shape[1])
    inside = (cov >= min_cov) & (cov <= max_cov)
    if stable:
        target = np.argsort(cov, axis=1, kind="stable")[:, 0]
    else:  # one call per row, exactly the reference's call on a 1-D array of its dtype
        target = np.array([np.argsort(c)[0] for c in cov], dtype=np.int64).reshape(-1)
    counts = inside.sum(axis=1)
    inputs = np.zeros((cov.shape[0], n), np.int64)
    match = counts >= n
    rank = np.cumsum(inside, axis=1)
    for k in range(n):  # the (k+1)-th slot inside the range
        inputs[:, k] = np.argmax(inside & (rank == k + 1), axis=1)
    for i in np.flatnonzero(~match):
        present = ~np.isnan(cov[i]) if cov.dtype.kind == "f" else np.ones(cov.shape[1], bool)
        fallback = [t for t in range(cov.shape[1]) if t != target[i] and present[t]][:n]
        if len(fallback) < n:
            raise ValueError(f"sample {i} has only {len(fallback) + 1} frames; the sampler "
                             f"needs n_input_samples + 1 = {n + 1}")
        inputs[i] = fallback
    tcov = cov[np.arange(cov.shape[0]), target]
    match &= tcov <= CLEAR_THRESHOLD
    return SlotChoice(inputs, target, match)


def fixedsubset(
    coverage: np.ndarray, n: int, min_cov: float = 0.0, max_cov: float = 1.0,
    slots: tuple[int, int] = (0, schema.N_SLOTS), stable: bool = False,
) -> SlotChoice:
    """The fixed rule on slots ``slots[0] <= t < slots[1]``, else on the whole series.

    A sample takes the subset's result when it matches (enough inputs within
    ``[min_cov, max_cov]`` and a target with coverage <= 1e-3), and the whole series'
    fixed result otherwise, as the reference's ``fixedsubset_sampler`` intends.
    """
    cov = np.asarray(coverage)
    start, stop = int(slots[0]), int(slots[1])
    if not 0 <= start < stop <= cov.shape[1] or stop - start < n + 1:
        raise ValueError(f"slots={slots} must be a range inside 0..{cov.shape[1]} holding at "
                         f"least n_input_samples + 1 = {n + 1} slots")
    sub = fixed(cov[:, start:stop], n, min_cov, max_cov, stable)
    full = fixed(cov, n, min_cov, max_cov, stable)
    keep = sub.match
    inputs = np.where(keep[:, None], sub.inputs + start, full.inputs)
    target = np.where(keep, sub.target + start, full.target)
    return SlotChoice(inputs, target, keep | full.match)


def random_window(target: int, n: int, n_slots: int = schema.N_SLOTS) -> list[int]:
    """The inputs of the random sampler around ``target``: the middle window, minus the target."""
    first, last = max(0, target - n), min(target, n_slots - n - 1)
    starts = list(range(first, last + 1))
    s = starts[len(starts) // 2]
    return [t for t in range(s, s + n + 1) if t != target]


def random(coverage: np.ndarray, n: int, rng: np.random.Generator | int) -> SlotChoice:
    """The random (training) sampler on (N, T) coverage, drawn from ``rng``.

    ``rng`` is a ``numpy.random.Generator`` or a seed; pass ``epoch_rng(seed, epoch)`` for a
    choice that differs per epoch and is the same in every process.
    """
    cov = np.asarray(coverage, dtype=np.float64)
    n = _check_n(n, cov.shape[1])
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    clear = cov < CLEAR_THRESHOLD
    counts = clear.sum(axis=1)
    pick = np.floor(gen.random(cov.shape[0]) * np.maximum(counts, 1)).astype(np.int64)
    rank = np.cumsum(clear, axis=1)
    drawn = np.argmax(clear & (rank == (pick + 1)[:, None]), axis=1)
    fallback = np.array([np.nanargmin(c) if not np.isnan(c).all() else 0 for c in cov],
                        dtype=np.int64).reshape(-1)
    target = np.where(counts > 0, drawn, fallback)
    inputs = np.array([random_window(int(t), n, cov.shape[1]) for t in target],
                      dtype=np.int64).reshape(-1, n)
    return SlotChoice(inputs, target, np.ones(cov.shape[0], bool))


def generic(n_samples: int, n_slots: int = schema.N_SLOTS) -> SlotChoice:
    """The ``generic`` sample type: the whole series, no target."""
    inputs = np.tile(np.arange(n_slots, dtype=np.int64), (n_samples, 1))
    return SlotChoice(inputs, np.full(n_samples, -1, np.int64), np.ones(n_samples, bool))


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch: the same ``(seed, epoch)`` gives the same draws everywhere."""
    return np.random.default_rng([int(seed), int(epoch)])


def choose_slots(
    coverage: np.ndarray,
    *,
    sample_type: str = "cloudy_cloudfree",
    sampler: str = "fixed",
    n_input_samples: int = 3,
    min_cov: float = 0.0,
    max_cov: float = 1.0,
    stable: bool = False,
    subset: tuple[int, int] = (0, schema.N_SLOTS),
    seed: int = 0,
    epoch: int = 0,
) -> SlotChoice:
    """The slots of every sample from its (N, T) coverage, by the reference's options."""
    if sample_type not in SAMPLE_TYPES:
        raise ValueError(f"sample_type {sample_type!r} is not one of {', '.join(SAMPLE_TYPES)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if not 0.0 <= min_cov <= max_cov <= 1.0:
        raise ValueError(f"min_cov={min_cov}, max_cov={max_cov}: need 0 <= min_cov <= max_cov <= 1")
    cov = np.asarray(coverage)
    if cov.ndim != 2:
        raise ValueError(f"coverage has shape {cov.shape}; expected (samples, slots)")
    if sample_type == "generic":
        return generic(cov.shape[0], cov.shape[1])
    if sampler == "random":
        return random(cov, n_input_samples, epoch_rng(seed, epoch))
    if sampler == "fixedsubset":
        return fixedsubset(cov, n_input_samples, min_cov, max_cov, subset, stable)
    return fixed(cov, n_input_samples, min_cov, max_cov, stable)


# --- seq2seq -------------------------------------------------------------------------------

#: a frame is cloudy when at least this fraction of its pixels is masked (U-TILISE protocol)
CLOUDY_FRACTION = 0.4


def cloudy_frames(coverage: np.ndarray, threshold: float = CLOUDY_FRACTION) -> np.ndarray:
    """Cloudy/clear label per frame: ``coverage >= threshold`` (missing frames count as cloudy)."""
    cov = np.asarray(coverage, dtype=np.float64)
    return ~(cov < threshold)


def series_windows(
    n_samples: int, length: int, rng: np.random.Generator | None,
    n_slots: int = schema.N_SLOTS,
) -> np.ndarray:
    """(N, length) slots of a window per sample: random starts from ``rng``, else slot 0."""
    if not 1 <= length <= n_slots:
        raise ValueError(f"window length {length} must be between 1 and {n_slots}")
    if rng is None:
        starts = np.zeros(n_samples, np.int64)
    else:
        starts = rng.integers(0, n_slots - length + 1, size=n_samples)
    return starts[:, None] + np.arange(length)[None, :]


@dataclass(frozen=True)
class GapPlan:
    """Synthetic gaps: for each (sample, frame), the real mask to paste, or -1 for none.

    ``row``, ``col``, ``slot`` index the cube (within the sample's own ROI).
    """

    row: np.ndarray
    col: np.ndarray
    slot: np.ndarray

    @property
    def any(self) -> np.ndarray:
        return self.slot >= 0


def gap_plan(
    slots: np.ndarray,
    index: PatchIndex,
    roi_coverage: dict[int, np.ndarray],
    rng: np.random.Generator,
    probability: float,
    threshold: float = CLOUDY_FRACTION,
    frame_cloudy: np.ndarray | None = None,
) -> GapPlan:
    """Draw real cloud masks of the same ROI to paste on clear frames as synthetic gaps.

    Parameters
    ----------
    slots
        (N, L) slots of each sample's series.
    index
        The samples' patch locations.
    roi_coverage
        Per cube ROI position, that ROI's (time, row, col) coverage of the chosen detector.
    rng
        The epoch's generator.
    probability
        Chance that a clear frame gets a gap.
    frame_cloudy
        (N, L) labels; frames already cloudy never get a gap.
    """
    shape = np.asarray(slots).shape
    row = np.full(shape, -1, np.int64)
    col = np.full(shape, -1, np.int64)
    slot = np.full(shape, -1, np.int64)
    if probability <= 0:
        return GapPlan(row, col, slot)
    draw = rng.random(shape) < probability
    if frame_cloudy is not None:
        draw &= ~np.asarray(frame_cloudy, bool)
    donors = {i: np.argwhere(np.asarray(c, np.float64) >= threshold)
              for i, c in roi_coverage.items()}
    for i, k in zip(*np.nonzero(draw)):
        pool = donors.get(int(index.roi[i]))
        if pool is None or len(pool) == 0:
            continue
        t, r, c = pool[rng.integers(0, len(pool))]
        row[i, k], col[i, k], slot[i, k] = r, c, t
    return GapPlan(row, col, slot)
