"""Import the published pair files of SEN12MS-CR-TS safely.

Two formats exist, both NumPy ``.npy`` files holding a pickled dict keyed by sample ``pdx``:

- the toolbox's ``<n>_<split>_<detector>.npy``: ``{pdx: {'input': [slots], 'target': slot, ...}}``
  (explicit input/target slots);
- UnCRtainTS' ``generic_<n>_<split>_<region>_<detector>.npy``:
  ``{pdx: {'coverage': [30 values], 'paths': {'S1': [...], 'S2': [...]}}}`` (per-sample
  coverage, from which a sampler picks the slots).

Values were often saved straight from a PyTorch ``DataLoader`` (batch size 1), so they may be
torch tensors of one element. ``np.load(allow_pickle=True)`` would run whatever the pickle
names; :func:`load_pair_file` instead unpickles with an allow-list (dict, list, tuple, str,
numbers, NumPy arrays and scalars, and torch CPU tensors rebuilt as NumPy arrays without
importing torch) and refuses anything else with :class:`UnsafePairFileError`. ``trust=True``
falls back to ``np.load(allow_pickle=True)`` for files you made yourself.
"""

from __future__ import annotations

import ast
import collections
import io
import logging
import os
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2cube import schema
from s2cube.errors import S2CubeError
from s2cube.plans.rules import SlotChoice, choose_slots

logger = logging.getLogger(__name__)

__all__ = [
    "PairFile",
    "PairFileError",
    "UnsafePairFileError",
    "check_paths",
    "find_pair_file",
    "load_pair_file",
    "slots_from_pairs",
]


class PairFileError(S2CubeError, ValueError):
    """A pair file cannot be read or does not fit the cube's samples."""


class UnsafePairFileError(PairFileError):
    """A pair file's pickle names something other than plain data; it was not run."""


# --- a restricted unpickler -------------------------------------------------------------------

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
             "int": int, "float": float, "complex": complex, "str": str, "bytes": bytes,
             "bytearray": bytearray, "bool": bool, "slice": slice}
_TORCH_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePairFileError(f"pickle asks to encode text as {encoding!r}; only latin-1 "
                                  "(how pickles store bytes) is allowed")
    return text.encode("latin-1")


def _numpy_global(name: str):
    # where pickles of ndarrays name their constructors: numpy._core from NumPy 2, numpy.core before
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    allowed = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    return allowed.get(name)


class _Storage:
    """A torch storage's dtype marker (the inner pickle names ``torch.FloatStorage`` etc.)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = np.dtype(dtype)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickle plain data only: refuse every global that is not on the allow-list."""

    def __init__(self, file, where: str) -> None:
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        found = None
        if module in _NUMPY_MODULES:
            found = _numpy_global(name)
        elif module == "numpy" and name in ("ndarray", "dtype"):
            found = getattr(np, name)
        elif module == "numpy.dtypes" and name.endswith("DType"):
            found = getattr(np.dtypes, name, None)
        elif module in ("builtins", "__builtin__"):
            found = _BUILTINS.get(name)
        elif module == "collections" and name == "OrderedDict":
            found = collections.OrderedDict
        elif module == "_codecs" and name == "encode":
            found = _latin1_encode
        elif module == "torch._utils" and name == "_rebuild_tensor_v2":
            found = _rebuild_tensor
        elif module == "torch.storage" and name == "_load_from_bytes":
            found = _load_torch_storage
        if found is None:
            raise UnsafePairFileError(
                f"{self.where}: the pickle names {module}.{name}, which is not plain data; it was "
                "not run. Use a pair file from the official download, or pass trust=True if you "
                "made this file yourself and trust its contents")
        return found


class _StorageUnpickler(_SafeUnpickler):
    """The inner pickle of a legacy ``torch.save`` of one storage (persistent ids name storages)."""

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _TORCH_DTYPES:
            return _Storage(_TORCH_DTYPES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _Storage)):
            raise UnsafePairFileError(f"{self.where}: unexpected torch persistent id {pid!r}")
        return ("storage", pid[1].dtype, str(pid[2]), int(pid[4]))


def _load_torch_storage(data: bytes) -> np.ndarray:
    """A torch CPU storage from its legacy ``torch.save`` bytes, as a flat NumPy array."""
    f = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        _StorageUnpickler(f, "torch storage").load()
    ref = _StorageUnpickler(f, "torch storage").load()
    keys = _StorageUnpickler(f, "torch storage").load()
    if not (isinstance(ref, tuple) and ref[:1] == ("storage",)) or keys != [ref[2]]:
        raise UnsafePairFileError("a torch storage in the pair file has an unknown layout")
    (numel,) = struct.unpack("<q", f.read(8))
    dtype = ref[1]
    raw = f.read(numel * dtype.itemsize)
    if numel != ref[3] or len(raw) != numel * dtype.itemsize:
        raise PairFileError("a torch storage in the pair file is truncated")
    return np.frombuffer(raw, dtype=dtype).copy()


def _rebuild_tensor(storage, offset, size, stride, *_args) -> np.ndarray:
    """A torch tensor as the NumPy array it views (``torch._utils._rebuild_tensor_v2``)."""
    if not isinstance(storage, np.ndarray):
        raise UnsafePairFileError("a tensor in the pair file has no plain storage")
    item = storage.itemsize
    flat = storage[int(offset):]
    shape = tuple(int(s) for s in size)
    strides = tuple(int(s) * item for s in stride)
    if shape and flat.size == 0:
        raise PairFileError("a tensor in the pair file points outside its storage")
    return np.lib.stride_tricks.as_strided(flat, shape, strides).copy()


def _read_npy(path: Path) -> Any:
    """The object held by a ``.npy`` file, unpickled by :class:`_SafeUnpickler`."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
        except ValueError as exc:
            raise PairFileError(f"{path} is not a NumPy .npy file ({exc})") from None
        header = fh.read(2 if version == (1, 0) else 4)
        (length,) = struct.unpack("<H" if version == (1, 0) else "<I", header)
        meta = ast.literal_eval(fh.read(length).decode("latin1"))
        if np.dtype(meta["descr"]) != np.dtype(object):
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        try:
            return _SafeUnpickler(fh, str(path)).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
            raise PairFileError(f"{path} is not a readable pickle ({exc})") from None


# --- the pair file ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PairFile:
    """A pair file: ``kind`` is ``"pairs"`` (explicit slots) or ``"coverage"`` (per sample)."""

    path: str
    kind: str
    entries: Mapping[int, Mapping[str, Any]]

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, pdx: int, n_samples: int, epoch: int = 0) -> Mapping[str, Any]:
        """The entry of sample ``pdx`` at ``epoch``: key ``(epoch * n_samples + pdx) % len``.

        Files made for several epochs hold ``n_epochs * n_samples`` entries (the reference's
        epoch-sensitive index).
        """
        key = (int(epoch) * int(n_samples) + int(pdx)) % len(self.entries)
        return self.entries[key]


def _first(value: Any) -> Any:
    """A one-element list/array/tensor as its element (``tensor([3]).item()``)."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise PairFileError(f"expected a single value, found {value!r}")
    return arr.reshape(-1)[0].item()


def _as_slots(value: Any) -> list[int]:
    items = value if isinstance(value, list | tuple) else np.asarray(value).reshape(-1).tolist()
    return [int(_first(v)) for v in items]


def _normalize(path: Path, data: Any) -> PairFile:
    if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
        data = data.item()
    if not isinstance(data, Mapping) or not data:
        raise PairFileError(f"{path} holds {type(data).__name__}, not a non-empty dict keyed by "
                            "sample index; is it a SEN12MS-CR-TS pair file?")
    try:
        keys = sorted(int(k) for k in data)
    except (TypeError, ValueError):
        raise PairFileError(f"{path}: keys must be sample indices (integers)") from None
    if keys != list(range(len(keys))):
        raise PairFileError(f"{path}: sample indices are not 0..{len(keys) - 1} without gaps")
    entries: dict[int, dict[str, Any]] = {}
    kinds = set()
    for k, v in data.items():
        if not isinstance(v, Mapping):
            raise PairFileError(f"{path}: entry {k} is {type(v).__name__}, not a dict")
        if "input" in v and "target" in v:
            kinds.add("pairs")
            entries[int(k)] = {"input": _as_slots(v["input"]), "target": int(_first(v["target"])),
                               "paths": v.get("paths")}
        elif "coverage" in v:
            kinds.add("coverage")
            cov = [float(_first(c)) for c in v["coverage"]]
            entries[int(k)] = {"coverage": cov, "paths": v.get("paths")}
        else:
            raise PairFileError(f"{path}: entry {k} has keys {sorted(v)}; expected 'input' and "
                                "'target' (pairs) or 'coverage' (per-sample coverage)")
    if len(kinds) != 1:
        raise PairFileError(f"{path} mixes explicit pairs and coverages; use one kind per file")
    return PairFile(str(path), kinds.pop(), entries)


def load_pair_file(path: str | os.PathLike, *, trust: bool = False) -> PairFile:
    """Read a published pair file without running pickled code.

    Parameters
    ----------
    path
        A ``.npy`` pair file of either published format.
    trust
        Use ``np.load(allow_pickle=True)``, which runs any code the file names (only for
        files you made yourself).

    Raises
    ------
    UnsafePairFileError
        The pickle names something that is not plain data (nothing of it was run).
    PairFileError
        The file is not a pair file of a known format.
    """
    p = Path(path)
    if not p.is_file():
        raise PairFileError(f"pair file {p} does not exist")
    data = np.load(p, allow_pickle=True) if trust else _read_npy(p)
    pairs = _normalize(p, data)
    logger.info("imported %d %s entries from %s", len(pairs), pairs.kind, p)
    return pairs


def find_pair_file(path: str | os.PathLike, n: int, split: str, region: str,
                   detector: str | None) -> Path:
    """The file to import: ``path`` itself, or in a directory the published name.

    A directory is searched for UnCRtainTS' ``generic_<n>_<split>_<region>_<detector>.npy``,
    then the toolbox's ``<n>_<split>_<detector>.npy``.
    """
    p = Path(path)
    if not p.is_dir():
        return p
    names = [f"generic_{n}_{split}_{region}_{detector}.npy", f"{n}_{split}_{detector}.npy"]
    for name in names:
        if (p / name).is_file():
            return p / name
    raise PairFileError(f"{p} holds none of {', '.join(names)}; download the pair files for "
                        f"n_input_samples={n}, split={split!r}, region={region!r}, "
                        f"cloud_masks={detector!r}, or pass the file's path")


def slots_from_pairs(
    pairs: PairFile,
    n_samples: int,
    *,
    epoch: int = 0,
    sample_type: str = "cloudy_cloudfree",
    sampler: str = "fixed",
    n_input_samples: int = 3,
    min_cov: float = 0.0,
    max_cov: float = 1.0,
    stable: bool = False,
    subset: tuple[int, int] = (0, schema.N_SLOTS),
    seed: int = 0,
) -> SlotChoice:
    """The plan of ``n_samples`` samples from a pair file (explicit slots, or coverage + sampler).

    Coverage files give Python floats, so the fixed sampler sorts float64 values exactly as
    the reference does after ``stats.item()``.
    """
    entries = [pairs.entry(i, n_samples, epoch) for i in range(n_samples)]
    if pairs.kind == "coverage" or sample_type == "generic":
        if pairs.kind != "coverage":
            return choose_slots(np.zeros((n_samples, schema.N_SLOTS)), sample_type="generic")
        cov = np.array([e["coverage"] for e in entries], dtype=np.float64)
        return choose_slots(cov, sample_type=sample_type, sampler=sampler,
                         n_input_samples=n_input_samples, min_cov=min_cov, max_cov=max_cov,
                         stable=stable, subset=subset, seed=seed, epoch=epoch)
    lengths = {len(e["input"]) for e in entries}
    if lengths != {n_input_samples}:
        raise PairFileError(f"{pairs.path} holds {sorted(lengths)} inputs per sample, "
                            f"n_input_samples is {n_input_samples}; pass the matching file")
    inputs = np.array([e["input"] for e in entries], dtype=np.int64).reshape(n_samples, -1)
    target = np.array([e["target"] for e in entries], dtype=np.int64)
    if ((inputs < 0) | (inputs >= schema.N_SLOTS)).any() or ((target < 0) | (target >= schema.N_SLOTS)).any():
        raise PairFileError(f"{pairs.path} names slots outside 0..{schema.N_SLOTS - 1}")
    return SlotChoice(inputs, target, np.ones(n_samples, bool))


_FILE = re.compile(r"s[12]_(ROIs\d{4})_(\d+)_ImgNo_(\d+)_\d{4}-\d{2}-\d{2}_patch_(\d+)\.tif$")


def _names(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _names(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _names(v)


def check_paths(pairs: PairFile, expected: list[tuple[str, int]], limit: int = 5) -> None:
    """Check that the file's recorded paths name the cube's samples, in order.

    ``expected[pdx]`` is the cube's ``(roi label, patch id)`` of sample ``pdx``. Entries
    without paths are not checked.

    Raises
    ------
    PairFileError
        Naming the first samples whose file names point at another patch (the file was made
        for another split, region or archive).
    """
    bad = []
    if len(pairs) % max(len(expected), 1) != 0:
        bad.append(f"the file has {len(pairs)} entries, the cube's selection {len(expected)} "
                   "samples (not a whole number of epochs)")
    for key, entry in pairs.entries.items():
        if bad and len(bad) >= limit:
            break
        want = expected[key % len(expected)] if expected else None
        for name in _names(entry.get("paths")):
            m = _FILE.search(name.replace("\\", "/"))
            if m is None:
                continue
            got = (schema.roi_name(m.group(1), int(m.group(2))), int(m.group(4)))
            if got != want:
                bad.append(f"entry {key} names {got[0]} patch {got[1]}, the cube's sample "
                           f"{key % len(expected)} is {want[0]} patch {want[1]}" if want else
                           f"entry {key} has no sample in the cube")
            break
    if bad:
        raise PairFileError(f"{pairs.path} does not fit this cube's samples: " + "; ".join(bad)
                            + ". Use the file made for this split, region and n_input_samples")
