"""PyTorch access to the cube: the reference loader's dataset, and a batched fast path.

This is the only module of s2cube that imports torch.

- :class:`SEN12MSCRTS` is a drop-in for the reference loader (UnCRtainTS'
  ``data/dataLoader.py``): the same options and the same dict per sample (``archive.md``
  sec. 6), in the same sample order, built from the stored coverage and masks (no cloud
  detection at read time) and reading only the frames a sample uses.
- :func:`make_loader` streams stacked ``(B, T, C, H, W)`` batches (seq2point or seq2seq),
  sharded by distributed rank and DataLoader worker with :class:`ShardedSampler`
  (complete and disjoint in every epoch, deterministic for a seed and an epoch), decoded in
  threads by :class:`s2cube.training.batches.SampleReader`, with pinned memory and an optional
  prefetch to a device.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from s2cube import schema, sen12mscr
from s2cube.errors import S2CubeError
from s2cube.io.view import source_of
from s2cube.plans import rules as sampling
from s2cube.training import batches as _samples

if TYPE_CHECKING:
    from s2cube.training.crsamples import CrSampleSet

logger = logging.getLogger(__name__)

__all__ = ["SEN12MSCR", "SEN12MSCRTS", "CubeLoader", "DevicePrefetcher", "ShardedSampler", "make_loader"]


# --- the drop-in dataset -----------------------------------------------------------------------

class SEN12MSCRTS(Dataset):
    """The reference loader of SEN12MS-CR-TS, reading from a cube.

    Parameters
    ----------
    cube
        A Dataset from :func:`s2cube.open_cube` (any selection of its ROIs, slots, bands and
        whole patches, read as it is) or the path or URL of a cube.
    split, region, cloud_masks, sample_type, sampler, n_input_samples, rescale_method,
    min_cov, max_cov, import_data_path
        As the reference loader (``archive.md`` sec. 6). ``import_data_path`` takes either
        published pair format (a file, or a directory holding the published names), read
        without running pickled code (see :mod:`s2cube.plans.pairs`).
        ``rescale_method=None`` returns raw S2 DN as int32 (:data:`s2cube.torch.RAW_S2_DTYPE`: torch
        cannot reduce uint16 tensors) and raw S1 dB as float32. All are checked here,
        before anything is read.
    stable_sort
        The fixed sampler takes the earliest of tied least-cloudy slots (the reference's
        non-stable ``np.argsort`` when False, for parity).
    subset
        Slot range of ``sampler="fixedsubset"``.
    seed
        Seed of the random sampler (with :meth:`set_epoch`, a plan per epoch).
    root
        Prefix of the returned ``S1 path``/``S2 path`` (relative archive paths when None).
    threads
        Decoding threads per process.
    trust
        Read pair files with ``np.load(allow_pickle=True)`` (only files you made).

    Each item is the reference's dict: NumPy float32 arrays, ``S1 TD``/``S2 TD`` as days
    since 2014-04-03 (-1 for a missing file), ``coord`` as ``[left, bottom, right, top]``,
    ``coverage`` from the cube (the reference's mean of each mask), ``coverage bin``.
    """

    def __init__(self, cube: Any, split: str = "all", region: str = "all",
                 cloud_masks: str = "s2cloudless_mask", sample_type: str = "cloudy_cloudfree",
                 sampler: str = "fixed", n_input_samples: int = 3,
                 rescale_method: str = "default", min_cov: float = 0.0, max_cov: float = 1.0,
                 import_data_path: Any = None, *, stable_sort: bool = False,
                 subset: tuple[int, int] = (0, schema.N_SLOTS), seed: int = 0,
                 root: str | None = None, threads: int = 2, trust: bool = False,
                 storage_options: dict | None = None) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
            raise ValueError(f"threads={threads!r} must be an integer of at least 1")
        start_stop = tuple(subset)
        if len(start_stop) != 2:
            raise ValueError(f"subset={subset!r} must be a slot range (start, stop)")
        opts = _samples.SampleOptions(split, region, cloud_masks, sample_type, sampler,
                                      int(n_input_samples), rescale_method, float(min_cov),
                                      float(max_cov), stable_sort, start_stop, int(seed))
        self.samples = _samples.SampleSet(cube, opts, import_data_path=import_data_path,
                                          trust=trust, storage_options=storage_options)
        self.root = root
        self.epoch = 0
        self.reader = _samples.SampleReader(self.samples.view, detector=cloud_masks,
                                            rescale_method=rescale_method, threads=threads,
                                            alloc=_raw_as_int32)
        if sampler == "random" and split in ("val", "test"):
            logger.warning("the random sampler on the %s split draws other slots every epoch",
                           split)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (the random sampler and multi-epoch pair files depend on it)."""
        self.epoch = int(epoch)

    def incr_epoch_count(self) -> None:
        """The reference's name for moving to the next epoch."""
        self.epoch += 1

    @property
    def choice(self) -> sampling.SlotChoice:
        """This epoch's slots of every sample (inputs and target), without reading pixels."""
        return self.samples.choice(self.epoch)

    def __getitem__(self, pdx: int) -> dict:
        pdx = int(pdx)
        n = len(self)
        if not -n <= pdx < n:
            raise IndexError(f"sample {pdx} is out of range for {n} samples")
        pdx %= n
        plan = self.choice
        ix = self.samples.index
        slots = plan.slots[pdx]
        frames = self.reader.read(ix.roi[pdx:pdx + 1], ix.row[pdx:pdx + 1], ix.col[pdx:pdx + 1],
                                  slots[None, :])
        part = self._part(pdx, frames, list(range(len(slots))), slots)
        if plan.target[pdx] < 0:
            return part
        k = plan.inputs.shape[1]
        inputs = self._part(pdx, frames, list(range(k)), slots[:k])
        target = self._part(pdx, frames, [k], slots[k:])
        labels = self.samples.view.time
        inputs["idx"] = [int(labels[t]) for t in slots[:k]]
        target["idx"] = int(labels[slots[k]])
        return {"input": inputs, "target": target, "coverage bin": bool(plan.match[pdx])}

    def _part(self, pdx: int, frames: dict, ks: list[int], slots: np.ndarray) -> dict:
        s = self.samples
        coord = s.coord(pdx)
        out = {
            "S1": [frames["S1"][0, k] for k in ks] if "S1" in frames else [],
            "S2": [frames["S2"][0, k] for k in ks],
            "masks": [frames["masks"][0, k] for k in ks],
            "coverage": [s.coverage[pdx, t] for t in slots],
            "S1 TD": [int(s.s1_td[pdx, t]) for t in slots],
            "S2 TD": [int(s.s2_td[pdx, t]) for t in slots],
            "S1 path": [s.path(pdx, "s1", int(t), self.root) for t in slots],
            "S2 path": [s.path(pdx, "s2", int(t), self.root) for t in slots],
            "coord": [list(coord) for _ in slots],
        }
        return out


class SEN12MSCR(Dataset):
    """The reference loader of SEN12MS-CR (UnCRtainTS' ``SEN12MSCR``), reading from a cube
    written from a SEN12MS-CR archive (``cube_kind = "sen12ms-cr"``).

    The same samples in the same order (collections, scenes and patch numbers in natural
    order; patches without all three files dropped), the same dict: ``input`` with ``S1``
    (2, H, W), ``S2`` (the cloudy image, 13, H, W), ``masks`` (H, W), ``coverage`` (the mask's
    mean, float32), ``S1 path``, ``S2 path`` (the cloudy file) and ``coord``
    (``[left, bottom, right, top]`` of the S2 file); ``target`` with ``S2``, ``S2 path`` and
    ``coord``; float32 arrays preprocessed as the reference does (``rescale_method``). The
    masks and coverage are the stored ones (computed on the raw cloudy DN at conversion);
    ``cloud_masks=None`` gives ``masks`` and ``coverage`` None (the reference fails there).

    ``split_mode``: ``"exact"`` (default) matches scenes exactly; ``"reference"`` reproduces
    the reference's substring membership (its train split then also holds 6 test and 3 val
    scenes: ``s2cube.sen12mscr.split_moves("reference")``), to compare with published numbers;
    ``"combined"`` gives the scenes that are SEN12MS-CR-TS ROIs that ROI's split, for training
    on both data sets without sharing ground across splits. ``root`` prefixes the returned
    paths (relative archive paths when None). ``region`` is ``"all"`` only, as in the
    reference; ``sample_type`` ``"pretrain"`` only.
    """

    def __init__(self, cube: Any, split: str = "all", region: str = "all",
                 cloud_masks: str | None = "s2cloudless_mask", sample_type: str = "pretrain",
                 rescale_method: str | None = "default", *, split_mode: str = "exact",
                 root: str | None = None, threads: int = 2,
                 storage_options: dict | None = None) -> None:
        from s2cube.training import crsamples

        if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
            raise ValueError(f"threads={threads!r} must be an integer of at least 1")
        opts = crsamples.CrOptions(split, region, cloud_masks, sample_type, rescale_method,
                                   split_mode)
        self.data = crsamples.CrDataset(cube, opts, root=root, threads=int(threads),
                                        storage_options=storage_options)
        self.samples = self.data.samples

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, pdx: int) -> dict:
        return self.data[pdx]


def _cr_loader(ds: Any, *, split: str, split_mode: str, cloud_masks: str | None,
               rescale_method: str | None, batch_size: int, shuffle: bool, drop_last: bool,
               seed: int, rank: int | None, world_size: int | None, num_workers: int,
               threads: int, crop: int | None, s1: bool, pin_memory: bool | None,
               device: Any, prefetch_factor: int | None, multiprocessing_context: str | None,
               persistent_workers: bool, reuse_buffers: bool | None) -> CubeLoader:
    """:func:`make_loader` for a SEN12MS-CR cube: ``{"input": {"S1", "S2", "masks",
    "coverage"}, "target": {"S2"}, "pdx", "scene", "patch_id", "patch"}`` of (B, C, H, W)."""
    from s2cube.training import crsamples

    opts = crsamples.CrOptions(split, "all", cloud_masks, "pretrain", rescale_method, split_mode,
                               int(seed))
    samples = crsamples.CrSampleSet(ds, opts, s1=s1)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if reuse_buffers is None:
        reuse_buffers = pin_memory
    ring = (prefetch_factor or 2) + 2 if reuse_buffers and num_workers > 0 else 0
    shard = ShardedSampler(len(samples), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                           world_size=world_size, drop_last=drop_last)
    maker = crsamples.CrBatchMaker(samples, crop=crop, threads=threads, alloc=SharedAlloc(ring))
    return CubeLoader(BatchStream(maker, shard), num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor,
                      multiprocessing_context=multiprocessing_context, device=device,
                      persistent_workers=persistent_workers)


# --- sharding by rank and worker ------------------------------------------------------------

def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedSampler:
    """Batches of sample indices for one rank and one DataLoader worker.

    Every epoch, a permutation of ``range(n)`` (the identity without ``shuffle``) drawn from
    ``(seed, epoch)`` is dealt to ranks (``perm[rank::world_size]``), cut into batches, and the
    batches are dealt to workers (batch ``k`` to worker ``k % num_workers``), so over all
    ranks and workers each sample appears exactly once. Ranks may differ by one sample;
    ``drop_last=True`` drops the last partial batch and evens the ranks out (losing at most
    ``world_size - 1 + batch_size - 1`` samples), which DDP needs to keep ranks in step.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        r, w = _dist_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in 0..world_size-1={self.world_size - 1}")
        self.n, self.batch_size = int(n), int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self._epoch = 0
        self._shared = None  # a shared-memory int once persistent workers exist

    @property
    def epoch(self) -> int:
        return int(self._shared.value) if self._shared is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order (call it before iterating, on every rank)."""
        self._epoch = int(epoch)
        if self._shared is not None:
            self._shared.value = self._epoch

    def share_epoch(self, context) -> None:
        """Keep the epoch in shared memory so persistent workers see :meth:`set_epoch`."""
        if self._shared is None:
            ctx = multiprocessing.get_context(context) if isinstance(context, str | None) \
                else context
            self._shared = ctx.RawValue("q", self._epoch)

    def rank_indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in order."""
        order = (sampling.epoch_rng(self.seed, self.epoch).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.drop_last:
            order = order[: self.n - self.n % self.world_size]
        return order[self.rank::self.world_size]

    def batches(self, worker: int = 0, num_workers: int = 1) -> list[np.ndarray]:
        """This rank's batches for DataLoader worker ``worker`` of ``num_workers``."""
        idx = self.rank_indices()
        n_full = len(idx) // self.batch_size
        cuts = [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n_full)]
        if not self.drop_last and len(idx) % self.batch_size:
            cuts.append(idx[n_full * self.batch_size:])
        return cuts[worker::num_workers]

    def __len__(self) -> int:
        """Batches of this rank per epoch."""
        return len(self.batches())


# --- the batched fast path -------------------------------------------------------------------

def _new_shared(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A NumPy view of a new tensor whose storage is created in shared memory (no copy later)."""
    tdtype = _TORCH_DTYPES[np.dtype(dtype)]
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
        # the stubs' set_ wants a stride; torch takes the contiguous one when it is left out
        t = torch.empty(0, dtype=tdtype).set_(storage, 0, shape)  # type: ignore[call-overload]
    except (AttributeError, RuntimeError):  # private API moved: share after allocating
        t = torch.empty(shape, dtype=tdtype).share_memory_()
    return t.numpy()


class SharedAlloc:
    """Output arrays of a DataLoader worker, in shared memory (sent without a copy).

    Fresh shared memory costs page faults and zeroing for every batch (more than decoding
    it). With ``ring`` > 0 each worker cycles through ``ring`` buffers per array shape
    instead: a batch's tensors are then overwritten ``ring`` batches of that worker later,
    which is safe when batches are pinned or moved to a device as they arrive (the
    DataLoader asks a worker for a new batch only after handing out an earlier one), or
    when the training loop keeps no batch longer than one step. In the main process
    (``num_workers=0``) it returns None: the reader's pool, which never reuses a live array.
    Raw S2 DN (asked for as uint16) get int32 arrays everywhere (:data:`RAW_S2_DTYPE`).
    """

    def __init__(self, ring: int = 0) -> None:
        self.ring = int(ring)
        self._slots: dict[tuple, list[np.ndarray]] = {}
        self._turn: dict[tuple, int] = {}

    def __getstate__(self) -> dict:
        return {"ring": self.ring, "_slots": {}, "_turn": {}}

    def __call__(self, shape: tuple[int, ...], dtype) -> np.ndarray | None:
        if get_worker_info() is None:
            return _raw_as_int32(shape, dtype)
        dtype = _torch_dtype(dtype)
        if self.ring <= 0:
            return _new_shared(shape, dtype)
        key = (tuple(shape), np.dtype(dtype).str)
        slots = self._slots.setdefault(key, [])
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        if len(slots) < self.ring:
            slots.append(_new_shared(shape, dtype))
            return slots[-1]
        return slots[turn % self.ring]


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.uint16): torch.uint16,
                 np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}

#: the dtype of raw S2 DN (``rescale_method=None``) in tensors: torch has few uint16
#: kernels (no ``max``, ``sum`` or ``mean``), and int32 holds every DN exactly
RAW_S2_DTYPE = np.dtype(np.int32)


def _torch_dtype(dtype) -> np.dtype:
    """The dtype a tensor gets for frames stored as ``dtype`` (uint16 DN: :data:`RAW_S2_DTYPE`)."""
    dtype = np.dtype(dtype)
    return RAW_S2_DTYPE if dtype == np.uint16 else dtype


def _raw_as_int32(shape: tuple[int, ...], dtype) -> np.ndarray | None:
    """``alloc`` of the readers in the main process: raw S2 DN into int32, the rest pooled."""
    return np.empty(shape, RAW_S2_DTYPE) if np.dtype(dtype) == np.uint16 else None


class BatchSource(Protocol):
    """What :class:`BatchStream` reads batches with: a :class:`~s2cube.training.batches.BatchMaker`
    or a :class:`~s2cube.training.crsamples.CrBatchMaker`."""

    @property
    def samples(self) -> _samples.SampleSet | CrSampleSet: ...

    def read_batch(self, ids: np.ndarray, epoch: int = 0) -> dict: ...


class BatchStream(IterableDataset):
    """Yields this worker's batches of this rank (see :func:`make_loader`)."""

    def __init__(self, maker: BatchSource, sampler: ShardedSampler) -> None:
        self.maker, self.sampler = maker, sampler
        self.samples = maker.samples

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for ids in self.sampler.batches(wid, nw):
            yield self.read_batch(ids)

    def read_batch(self, ids: np.ndarray) -> dict:
        """The batch of samples ``ids`` (this epoch) as a dict of tensors."""
        return _tensors(self.maker.read_batch(ids, self.sampler.epoch))


def _tensors(batch: dict) -> dict:
    """Arrays as tensors; text (the provenance's ROI names) as a list of str."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = _tensors(v)
        elif isinstance(v, np.ndarray) and v.dtype.kind in "USO":
            out[k] = [str(x) for x in v.tolist()]
        else:
            out[k] = _as_tensor(v)
    return out


def _as_tensor(v: np.ndarray) -> torch.Tensor:
    """A tensor of ``v``; a view of the tensor ``v`` was carved from, if any (keeps shared memory)."""
    root = v
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    if isinstance(root, torch.Tensor) and v.size and _TORCH_DTYPES.get(v.dtype) == root.dtype:
        item = v.itemsize
        offset = (v.__array_interface__["data"][0] - root.data_ptr()) // item
        strides = tuple(s // item for s in v.strides)
        return torch.as_strided(root, v.shape, strides, offset + root.storage_offset())
    try:
        return torch.from_numpy(v)  # strided views too: no copy
    except (ValueError, TypeError):
        return torch.from_numpy(np.ascontiguousarray(v))


class DevicePrefetcher:
    """Moves batches to ``device`` one step ahead (on a side CUDA stream when on CUDA)."""

    def __init__(self, batches, device: str | torch.device) -> None:
        self.batches = batches
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _move(self, batch):
        if isinstance(batch, dict):
            return {k: self._move(v) for k, v in batch.items()}
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        return batch

    def _record(self, batch) -> None:
        if isinstance(batch, dict):
            for v in batch.values():
                self._record(v)
        elif isinstance(batch, torch.Tensor) and self.stream is not None:
            batch.record_stream(torch.cuda.current_stream(self.device))

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        nxt = self._next(it)
        while nxt is not None:
            cur = nxt
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
                self._record(cur)
            nxt = self._next(it)
            yield cur

    def _next(self, it):
        try:
            batch = next(it)
        except StopIteration:
            return None
        if self.stream is None:
            return self._move(batch)
        with torch.cuda.stream(self.stream):
            return self._move(batch)


_GUARD = ("if the script makes or iterates the loader outside `if __name__ == \"__main__\":`, "
          "each worker runs that code again and dies; move it under that guard (or into a "
          "function called from there)")


def _reimported_main() -> str | None:
    """The main script, when this call comes from its top level run again in a new process.

    A process started by ``spawn`` or ``forkserver`` (DataLoader workers of an object-store
    cube, with CUDA, on macOS and Windows) first runs the main script as ``__mp_main__``.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            return str(frame.f_globals.get("__file__") or "the main script")
        frame = frame.f_back
    return None


def _check_loader_options(mode: str, batch_size: Any, num_workers: Any, threads: Any,
                          prefetch_factor: Any, multiprocessing_context: Any, device: Any,
                          cloudy_threshold: Any) -> None:
    """Refuse :func:`make_loader` options that would fail later, naming the value at fault."""
    if mode not in _samples.MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(_samples.MODES)}")
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer of at least {low}")
    if prefetch_factor is not None:
        if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int | np.integer) \
                or prefetch_factor < 1:
            raise ValueError(f"prefetch_factor={prefetch_factor!r} must be an integer of at least 1")
        if num_workers == 0:
            raise ValueError(f"prefetch_factor={prefetch_factor} applies to worker processes; "
                             "set num_workers > 0 or leave prefetch_factor out")
    methods = multiprocessing.get_all_start_methods()
    if isinstance(multiprocessing_context, str) and multiprocessing_context not in methods:
        raise ValueError(f"multiprocessing_context={multiprocessing_context!r} is not one of "
                         f"{', '.join(methods)} (the start methods of this platform)")
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device={device!r} is not a torch device ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available here; use device=None "
                             "(batches stay on the CPU) or 'cpu'")
    if not 0.0 <= float(cloudy_threshold) <= 1.0:
        raise ValueError(f"cloudy_threshold={cloudy_threshold} must be between 0 and 1")


def default_context(num_workers: int, local: bool = True) -> str | None:
    """``fork`` for a local cube on Linux without CUDA initialised, else ``forkserver``.

    The readers open their files and clients lazily in each worker, so forking is safe for
    them; but an object-store cube's metadata were read in this process through obstore,
    whose runtime does not survive a ``fork`` (the workers would hang), and CUDA does not
    either. ``spawn`` where ``forkserver`` does not exist.
    """
    if num_workers == 0:
        return None
    methods = multiprocessing.get_all_start_methods()
    if local and "fork" in methods and os.name == "posix" and not torch.cuda.is_initialized():
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class CubeLoader:
    """Iterable of batches for one rank: a DataLoader over :class:`BatchStream` (+ prefetch).

    Call :meth:`set_epoch` before each epoch (on every rank) for a new order and new draws.
    """

    def __init__(self, stream: BatchStream, *, num_workers: int, pin_memory: bool,
                 prefetch_factor: int | None, multiprocessing_context: str | None,
                 device: str | torch.device | None, persistent_workers: bool = True) -> None:
        self.stream = stream
        self.sampler = stream.sampler
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        local = stream.samples.view.source.loc.is_local
        self.context = multiprocessing_context or default_context(self.num_workers, local)
        self.device = device
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self._loader: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` (order, sampler draws, crops) for the next iteration."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def dataloader(self) -> DataLoader:
        """The DataLoader (persistent workers: started once, they follow :meth:`set_epoch`)."""
        if self._loader is not None:
            return self._loader
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw["prefetch_factor"] = self.prefetch_factor or 2
            kw["multiprocessing_context"] = self.context
            kw["persistent_workers"] = self.persistent_workers
            if self.persistent_workers:
                self.sampler.share_epoch(self.context)
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, **kw)
        if self.persistent_workers:
            self._loader = loader
        return loader

    def __iter__(self) -> Iterator[dict]:
        batches = self.dataloader()
        if self.device is None:
            return self._explained(iter(batches))
        return self._explained(iter(DevicePrefetcher(batches, self.device)))

    def _explained(self, batches: Iterator[dict]) -> Iterator[dict]:
        """``batches``, with the likeliest cause added to a worker's unexpected exit."""
        try:
            yield from batches
        except RuntimeError as exc:
            if "exited unexpectedly" not in str(exc) or self.context == "fork":
                raise
            raise RuntimeError(f"{exc}. The workers start with {self.context!r}, which imports "
                               f"the main script in each of them first: {_GUARD}. The workers' "
                               "own errors are printed above.") from exc


def make_loader(
    cube: Any,
    *,
    split: str = "train",
    region: str = "all",
    cloud_masks: str = "s2cloudless_mask",
    mode: str = "seq2point",
    sampler: str = "random",
    n_input_samples: int = 3,
    min_cov: float = 0.0,
    max_cov: float = 1.0,
    rescale_method: str | None = "default",
    import_data_path: Any = None,
    batch_size: int = 8,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    threads: int = 2,
    crop: int | None = None,
    window: int | None = None,
    cloudy_threshold: float = sampling.CLOUDY_FRACTION,
    gap_probability: float = 0.0,
    s1: bool = True,
    pin_memory: bool | None = None,
    device: str | torch.device | None = None,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | None = None,
    persistent_workers: bool = True,
    reuse_buffers: bool | None = None,
    storage_options: dict | None = None,
    trust: bool = False,
    split_mode: str = "exact",
) -> CubeLoader:
    """Stacked batches of a split, sharded by rank and worker.

    ``mode="seq2point"`` yields ``{"input": {...}, "target": {...}, "coverage bin", "pdx"}``
    where each part holds ``S2`` (B, T, 13, H, W), ``S1`` (B, T, 2, H, W), ``masks``
    (B, T, H, W), ``coverage``, ``S1 TD``, ``S2 TD``, ``idx`` (B, T) (T = n for the
    input, 1 for the target), chosen by the reference ``sampler`` (``random`` draws anew each
    epoch). ``mode="seq2seq"`` yields a whole series (or a random ``window`` of it) per
    sample: ``S2``, ``S1``, ``masks``, ``coverage``, dates, ``idx``, ``valid`` and ``cloudy``
    (coverage >= ``cloudy_threshold``, 0.4 in the public seq2seq protocol), plus
    ``gap_masks`` when ``gap_probability`` > 0: real masks of cloudy frames of the same ROI
    pasted on clear frames as synthetic gaps.

    ``crop`` cuts a random ``crop x crop`` window per sample (the same for all its frames);
    chunks are whole patches, so it reads one chunk per frame all the same.
    ``rescale_method=None`` returns raw S2 DN as int32 tensors (:data:`s2cube.torch.RAW_S2_DTYPE`:
    every DN exactly, and torch reduces them, which it cannot do for uint16) and S1 dB as
    float32, to scale on the GPU.
    Every option is checked when the loader is made, before any read.

    Call it under ``if __name__ == "__main__":`` in a script when ``num_workers`` > 0 and
    the workers do not fork (a cube on an object store, CUDA in use, macOS, Windows): each
    worker then starts by importing the script, and code outside that guard would run
    again in every worker.
    ``pin_memory`` defaults to CUDA being available; ``device`` moves batches there one step
    ahead. Workers use ``multiprocessing_context`` (default: :func:`default_context`) and
    stay alive across epochs (``persistent_workers``; they read the epoch from shared memory).
    ``reuse_buffers`` lets workers recycle their shared-memory batch buffers (see
    :class:`SharedAlloc`; default: when memory is pinned, where it is always safe); with it,
    clone whatever part of a batch you keep beyond the next few steps.

    On a SEN12MS-CR cube (``cube_kind = "sen12ms-cr"``) each sample is one patch:
    ``{"input": {"S1", "S2", "masks", "coverage"}, "target": {"S2"}, "pdx", "scene",
    "patch_id", "patch"}`` with (B, C, H, W) arrays; ``split_mode`` chooses its splits
    (``"exact"``, ``"reference"``, ``"combined"``: see :class:`SEN12MSCR`), and the
    time-series options do not apply.

    Raises
    ------
    ValueError
        An option is out of its range (the message names it), before anything is read.
    SelectionError
        The cube (or Dataset) holds no sample of ``split`` and ``region``.
    S2CubeError
        Called from the top level of a script that a new worker process is importing
        (see above: the ``if __name__ == "__main__":`` guard).
    """
    script = _reimported_main()
    if script is not None:  # a worker importing the script: say why, rather than die later
        raise S2CubeError(f"make_loader was called while a new worker process imported "
                          f"{script} again: {_GUARD}")
    _check_loader_options(mode, batch_size, num_workers, threads, prefetch_factor,
                          multiprocessing_context, device, cloudy_threshold)
    cube = source_of(cube, storage_options)  # opened once; a Dataset stays as it is
    if sen12mscr.is_cr(cube):  # a SEN12MS-CR cube: one cloudy image and its target per sample
        ts_only = {"mode": mode != "seq2point", "region": region != "all", "window": window,
                   "gap_probability": gap_probability, "import_data_path": import_data_path}
        if any(ts_only.values()):
            raise ValueError(f"{[k for k, v in ts_only.items() if v]}: options of time-series "
                             "cubes; a SEN12MS-CR cube has no series (sampler, n_input_samples "
                             "and min/max_cov do not apply either)")
        return _cr_loader(cube, split=split, split_mode=split_mode, cloud_masks=cloud_masks,
                          rescale_method=rescale_method, batch_size=batch_size, shuffle=shuffle,
                          drop_last=drop_last, seed=seed, rank=rank, world_size=world_size,
                          num_workers=num_workers, threads=threads, crop=crop, s1=s1,
                          pin_memory=pin_memory, device=device, prefetch_factor=prefetch_factor,
                          multiprocessing_context=multiprocessing_context,
                          persistent_workers=persistent_workers, reuse_buffers=reuse_buffers)
    if split_mode != "exact":
        raise ValueError(f"split_mode={split_mode!r} is an option of SEN12MS-CR cubes; "
                         "SEN12MS-CR-TS splits are the official ROI lists")
    opts = _samples.SampleOptions(split, region, cloud_masks, "cloudy_cloudfree", sampler,
                                  int(n_input_samples), rescale_method, float(min_cov),
                                  float(max_cov), seed=int(seed))
    samples = _samples.SampleSet(cube, opts, import_data_path=import_data_path, trust=trust,
                                 storage_options=storage_options)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if reuse_buffers is None:
        reuse_buffers = pin_memory
    ring = (prefetch_factor or 2) + 2 if reuse_buffers and num_workers > 0 else 0
    shard = ShardedSampler(len(samples), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                           world_size=world_size, drop_last=drop_last)
    maker = _samples.BatchMaker(samples, mode=mode, crop=crop, window=window,
                                cloudy_threshold=cloudy_threshold,
                                gap_probability=gap_probability, threads=threads, s1=s1,
                                alloc=SharedAlloc(ring))
    stream = BatchStream(maker, shard)
    return CubeLoader(stream, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor, multiprocessing_context=multiprocessing_context,
                      device=device, persistent_workers=persistent_workers)


def batch_count(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches of rank 0 per epoch for ``n`` samples (for schedulers)."""
    per_rank = n // world_size if drop_last else math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
