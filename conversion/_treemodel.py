"""Engines that evaluate s2cloudless's LightGBM model: a numba-compiled kernel, ONNX Runtime, LightGBM.

s2cloudless spends nearly all its time in LightGBM's ``predict`` (170 trees of 770 leaves,
10 features). Measured on one core of this project's 2-core machine for 256² frames
(``benchmarks/bench_clouds.py``): LightGBM ≈ 1.9 s/frame, ONNX Runtime ≈ 0.5 s/frame
(probabilities within 4e-7), tl2cgen-compiled C ≈ 0.26 s/frame (exact, but 4 minutes of gcc),
and the kernel here ≈ 0.2 s/frame, bit-identical to LightGBM (``benchmarks/bench_kernels.py``
compares it with the C kernel it replaces). numba compiles it for the host CPU in about a second
on first use and caches the machine code (see :mod:`s2cube.kernels.native`): no C compiler.

Why the kernel is exact and fast:

* The model's inputs are ``float32(DN) / 10000`` of integer DN in [0, 10000] and every split is
  ``x <= threshold`` (no categorical splits, missing type "None"). Each feature has at most 255
  distinct thresholds, so a per-feature lookup table maps a DN to the number of thresholds below
  its value (a uint8 "bin") and ``x <= t_k`` becomes ``bin <= k``: the same decision, no rounding.
* Trees are evaluated one at a time over a block of 1024 pixels (the tree stays in L1), 8 pixels
  interleaved, branch-free: a node is one 32-bit word and both children sit side by side; leaves
  point to themselves, so a fixed number of steps (checked every 4 levels) ends at every leaf.
* Leaf values are summed in tree order in double precision and passed through the same sigmoid
  as LightGBM (``1 / (1 + exp(-sigmoid * score))``, libm ``exp``), so the probabilities equal
  LightGBM's bit for bit; s2cloudless then casts them to float32, and so do we.

Everything expensive is cached on disk, keyed by the s2cloudless version and the model's hash
(see :func:`cache_dir`): the kernel's tables (``trees-*.npz``, ~1 s to build) and, only if that
route is used, the ONNX model (``model-*.onnx``, ~11–14 s of onnxmltools); numba caches the
compiled kernel itself. Files are written atomically, so concurrent workers are safe.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from s2cube.kernels import native

logger = logging.getLogger(__name__)

#: s2cloudless's model bands (B1, B2, B4, B5, B8, B8A, B9, B10, B11, B12) in the 13-band order.
MODEL_BAND_IDS = (0, 1, 3, 4, 7, 8, 9, 10, 11, 12)
MAX_DN = 10000
PIXELS_PER_CALL = 1 << 18  # pixels per predict call of the ONNX/LightGBM engines (4 frames of 256²)
_NFEAT = 16  # bytes per pixel in the kernel's bin array

class EngineUnavailable(native.NativeUnavailable):
    """An engine cannot run here (numba or another package missing, unsupported model)."""


# --- the model file and the cache -----------------------------------------------------------


@dataclass(frozen=True)
class ModelFile:
    """s2cloudless's LightGBM model as shipped in its package."""

    path: str
    sha256: str
    s2cloudless_version: str

    @property
    def key(self) -> str:
        return f"s2cloudless{self.s2cloudless_version}-{self.sha256[:16]}"


@lru_cache(maxsize=1)
def model_file() -> ModelFile:
    """Locate s2cloudless's model file and hash it."""
    from importlib.metadata import version

    from s2cloudless import S2PixelCloudDetector

    path = S2PixelCloudDetector(all_bands=True).model_filename
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return ModelFile(str(path), digest, version("s2cloudless"))


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The directory of cached engines: ``override``, ``$S2CUBE_CACHE_DIR``, or the user cache
    ``~/.cache/s2cube/clouds`` (see :func:`s2cube.kernels.native.cache_dir`)."""
    return native.cache_dir("clouds", override)


# --- LightGBM text model → kernel tables ----------------------------------------------------


@dataclass(frozen=True)
class Tables:
    """The forest in the kernel's layout, plus the DN → bin lookup table of each feature."""

    words: np.ndarray  # uint32, all trees' nodes
    values: np.ndarray  # float64, leaf value of each node (0 for split nodes)
    offsets: np.ndarray  # int32, first node of each tree
    depths: np.ndarray  # int32, deepest leaf of each tree (steps to reach every leaf)
    lut: np.ndarray  # uint8 (n_features, MAX_DN + 1)
    sigmoid: float


def _header_value(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
    raise EngineUnavailable(f"LightGBM model has no {name!r} line")


def parse_lightgbm(text: str) -> tuple[list[dict[str, np.ndarray]], float, int]:
    """Read the trees of a LightGBM text model; return ``(trees, sigmoid, n_features)``.

    Raises :class:`EngineUnavailable` for anything the kernel does not implement (multi-class,
    categorical or linear trees, missing-value handling other than "None").
    """
    head, _, rest = text.partition("\nTree=")
    objective = _header_value(head, "objective").split()
    if objective[0] != "binary" or _header_value(head, "num_class") != "1":
        raise EngineUnavailable(f"only binary LightGBM models are supported, not {objective}")
    sigmoid = float(next((o.split(":")[1] for o in objective if o.startswith("sigmoid:")), 1.0))
    n_features = int(_header_value(head, "max_feature_idx")) + 1
    body = rest.partition("\nend of trees")[0]
    trees = []
    for block in ("Tree=" + body).split("\nTree="):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("num_cat", "0") != "0" or fields.get("is_linear", "0") != "0":
            raise EngineUnavailable("categorical or linear LightGBM trees are not supported")
        tree = {"leaf_value": np.array(fields["leaf_value"].split(), np.float64)}
        if int(fields["num_leaves"]) > 1:
            decision = np.array(fields["decision_type"].split(), np.int64)
            if np.any(decision & 1) or np.any((decision >> 2) & 3):
                raise EngineUnavailable("categorical splits or missing-value types are not supported")
            for key, dtype in (("split_feature", np.int64), ("threshold", np.float64),
                               ("left_child", np.int64), ("right_child", np.int64)):
                tree[key] = np.array(fields[key].split(), dtype)
        trees.append(tree)
    return trees, sigmoid, n_features


def _tree_layout(tree: dict[str, np.ndarray], thr_bin: np.ndarray) -> tuple[np.ndarray, ...]:
    """One tree as (words, values, depth): children of split ``k`` go to slots ``2k+1, 2k+2``."""
    leaf = tree["leaf_value"]
    if leaf.size == 1:
        return np.array([(255 << 4) | (1 << 12)], np.uint32), leaf.copy(), 0
    n_split = leaf.size - 1
    size = 2 * n_split + 1
    pos_split = np.zeros(n_split, np.int64)  # split 0 is the root, at slot 0
    pos_leaf = np.full(leaf.size, -1, np.int64)
    for j, child in enumerate((tree["left_child"], tree["right_child"])):
        slot = 1 + 2 * np.arange(n_split) + j
        is_leaf = child < 0
        pos_leaf[~child[is_leaf]] = slot[is_leaf]
        pos_split[child[~is_leaf]] = slot[~is_leaf]
    if not np.array_equal(np.sort(np.concatenate([pos_split, pos_leaf])), np.arange(size)):
        raise EngineUnavailable("LightGBM tree is not a binary tree")
    words = np.zeros(size, np.uint32)
    words[pos_split] = (tree["split_feature"] | (thr_bin << 4)
                        | ((1 + 2 * np.arange(n_split)) << 16)).astype(np.uint32)
    words[pos_leaf] = ((255 << 4) | (1 << 12) | (pos_leaf << 16)).astype(np.uint32)
    values = np.zeros(size, np.float64)
    values[pos_leaf] = leaf
    depth, frontier = 0, np.array([0])
    while frontier.size:
        depth += 1
        kids = np.concatenate([tree["left_child"][frontier], tree["right_child"][frontier]])
        frontier = kids[kids >= 0]
        if depth > size:
            raise EngineUnavailable("LightGBM tree has a cycle")
    return words, values, depth


def build_tables(text: str) -> Tables:
    """Turn a LightGBM text model into the kernel's :class:`Tables`."""
    trees, sigmoid, n_features = parse_lightgbm(text)
    if n_features > _NFEAT:
        raise EngineUnavailable(f"the kernel handles up to {_NFEAT} features, not {n_features}")
    split = [t for t in trees if "threshold" in t]
    feats = np.concatenate([t["split_feature"] for t in split]) if split else np.zeros(0, int)
    thrs = np.concatenate([t["threshold"] for t in split]) if split else np.zeros(0)
    uniq = [np.unique(thrs[feats == f]) for f in range(n_features)]
    if max(len(u) for u in uniq) > 255:
        raise EngineUnavailable("a feature has more than 255 thresholds")
    if any(len(t["leaf_value"]) * 2 - 1 >= 1 << 16 for t in trees):
        raise EngineUnavailable("a tree has more than 32767 leaves")
    bins = np.zeros(thrs.size, np.int64)  # x <= t_k  ⟺  (number of thresholds < x) <= k
    for f in range(n_features):
        bins[feats == f] = np.searchsorted(uniq[f], thrs[feats == f])
    ends = np.cumsum([len(t.get("threshold", ())) for t in trees])
    parts = [_tree_layout(t, b) for t, b in zip(trees, np.split(bins, ends[:-1]))]
    sizes = [p[0].size for p in parts]
    # exactly the reference's features: float32 DN divided by 10000 in float32
    x = (np.arange(MAX_DN + 1).astype(np.float32) / 10000).astype(np.float64)
    lut = np.stack([np.searchsorted(u, x, side="left") for u in uniq]).astype(np.uint8)
    return Tables(
        words=np.concatenate([p[0] for p in parts]),
        values=np.concatenate([p[1] for p in parts]),
        offsets=np.cumsum([0, *sizes[:-1]]).astype(np.int32),
        depths=np.array([p[2] for p in parts], np.int32),
        lut=lut,
        sigmoid=sigmoid,
    )


def load_tables(cache: Path) -> Tables:
    """The kernel tables of s2cloudless's model, from the cache or built (and cached)."""
    model = model_file()
    path = cache / f"trees-{model.key}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return Tables(z["words"], z["values"], z["offsets"], z["depths"], z["lut"],
                              float(z["sigmoid"]))
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("rebuilding unreadable cache file %s (%s)", path, exc)
    tables = build_tables(Path(model.path).read_text())

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, words=tables.words, values=tables.values, offsets=tables.offsets,
                     depths=tables.depths, lut=tables.lut, sigmoid=tables.sigmoid)

    native.write_atomic(path, write)
    return tables


# --- the compiled kernel --------------------------------------------------------------------

LANES = 8  # pixels walked down a tree together (independent chains of loads)
CHECK = 4  # levels between two "all at a leaf?" checks
BLOCK = 1024  # pixels per block: their accumulators and bins stay in L1 with one tree
_U4, _U12, _U15, _U16, _U255 = (np.uint64(v) for v in (4, 12, 15, 16, 255))
_B0, _B1, _B2, _B3, _B4, _B5, _B6, _B7 = (np.uint64(lane * _NFEAT) for lane in range(LANES))


@native.jit
def _forest_kernel(bins: np.ndarray, words: np.ndarray, values: np.ndarray, offsets: np.ndarray,
                   depths: np.ndarray, sigmoid: float, prob: np.ndarray) -> None:  # pragma: no cover
    """LightGBM's probability of each pixel of ``bins`` (n·16,) uint8 into ``prob`` (n,) float32.

    The trees' nodes are ``words``/``values`` from ``offsets``; ``depths`` the steps to reach
    every leaf of each tree. A node word: bits 0-3 feature, 4-11 threshold bin, 12 leaf flag,
    16-31 left child; the right child is the next node, and one step from node ``k`` is
    ``left(k) + (bin[feature(k)] > threshold(k))``. A leaf points to itself with threshold bin
    255, so it never moves. Per block of pixels and tree: eight pixels step together (eight
    independent chains of dependent loads), with a check every four levels whether all are at
    a leaf; the rest one at a time. Leaf values are added in tree order in float64. Indices are
    unsigned (no negative-index wraparound in the compiled code) and each group of eight reads
    its bins at constant offsets from one pointer, which keeps the eight chains in registers.
    """
    n = prob.shape[0]
    nf = np.uint64(_NFEAT)
    acc = np.empty(BLOCK)
    for start in range(0, n, BLOCK):
        m = min(n - start, BLOCK)
        acc[:m] = 0.0
        for t in range(depths.shape[0]):
            node = words[offsets[t]:]
            leaf = values[offsets[t]:]
            depth = depths[t]
            i = 0
            while i + LANES <= m:
                x = bins[(start + i) * _NFEAT:(start + i + LANES) * _NFEAT]
                k0 = k1 = k2 = k3 = k4 = k5 = k6 = k7 = np.uint64(0)
                for _ in range(0, depth, CHECK):
                    for _ in range(CHECK):
                        q = np.uint64(node[k0])
                        k0 = (q >> _U16) + np.uint64(np.uint64(x[_B0 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k1])
                        k1 = (q >> _U16) + np.uint64(np.uint64(x[_B1 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k2])
                        k2 = (q >> _U16) + np.uint64(np.uint64(x[_B2 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k3])
                        k3 = (q >> _U16) + np.uint64(np.uint64(x[_B3 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k4])
                        k4 = (q >> _U16) + np.uint64(np.uint64(x[_B4 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k5])
                        k5 = (q >> _U16) + np.uint64(np.uint64(x[_B5 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k6])
                        k6 = (q >> _U16) + np.uint64(np.uint64(x[_B6 + (q & _U15)]) > ((q >> _U4) & _U255))
                        q = np.uint64(node[k7])
                        k7 = (q >> _U16) + np.uint64(np.uint64(x[_B7 + (q & _U15)]) > ((q >> _U4) & _U255))
                    at_leaf = (node[k0] & node[k1] & node[k2] & node[k3] & node[k4] & node[k5]
                               & node[k6] & node[k7])
                    if (np.uint64(at_leaf) >> _U12) & np.uint64(1):
                        break
                acc[i] += leaf[k0]
                acc[i + 1] += leaf[k1]
                acc[i + 2] += leaf[k2]
                acc[i + 3] += leaf[k3]
                acc[i + 4] += leaf[k4]
                acc[i + 5] += leaf[k5]
                acc[i + 6] += leaf[k6]
                acc[i + 7] += leaf[k7]
                i += LANES
            while i < m:
                base = np.uint64(start + i) * nf
                k = np.uint64(0)
                for _ in range(depth):
                    q = np.uint64(node[k])
                    k = (q >> _U16) + np.uint64(np.uint64(bins[base + (q & _U15)]) > ((q >> _U4) & _U255))
                acc[i] += leaf[k]
                i += 1
        for i in range(m):
            prob[start + i] = np.float32(1.0 / (1.0 + math.exp(-sigmoid * acc[i])))


class KernelEngine:
    """s2cloudless's model run by the numba kernel; bit-identical to LightGBM.

    Raises :class:`EngineUnavailable` where numba is not installed (the converter then uses
    ONNX Runtime, then LightGBM).
    """

    name = "numba-kernel"
    exact = True

    def __init__(self, cache: Path, threads: int) -> None:
        if not native.available():
            raise EngineUnavailable("numba is not installed (pip install numba)")
        self.tables = load_tables(cache)
        self.threads = threads

    def _run(self, bins: np.ndarray, out: np.ndarray) -> None:
        t = self.tables
        _forest_kernel(bins.reshape(-1), t.words, t.values, t.offsets, t.depths, t.sigmoid, out)

    def predict_frames(self, dn: np.ndarray) -> np.ndarray:
        """Probabilities (F, H, W) float32 of clipped DN frames (F, 13, H, W) uint16."""
        f, _, h, w = dn.shape
        bins = np.zeros((f, h, w, _NFEAT), np.uint8)
        for j, band in enumerate(MODEL_BAND_IDS):
            bins[..., j] = self.tables.lut[j][dn[:, band]]
        bins = bins.reshape(-1, _NFEAT)
        out = np.empty(bins.shape[0], np.float32)
        if self.threads == 1 or bins.shape[0] < 4096:
            self._run(bins, out)
        else:  # the kernel releases the GIL (nogil): one contiguous slice per thread
            edges = np.linspace(0, bins.shape[0], self.threads + 1).astype(int)
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(lambda a, b: self._run(bins[a:b], out[a:b]), edges[:-1], edges[1:]))
        return out.reshape(f, h, w)


# --- ONNX Runtime and LightGBM --------------------------------------------------------------


def _features(dn: np.ndarray) -> np.ndarray:
    """(F·H·W, 10) float32 features exactly as s2cloudless gets them: DN / 10000 in float32."""
    x = np.moveaxis(dn[:, list(MODEL_BAND_IDS)], 1, -1).astype(np.float32) / 10000
    return np.ascontiguousarray(x.reshape(-1, len(MODEL_BAND_IDS)))


def _in_chunks(predict, dn: np.ndarray) -> np.ndarray:
    f, _, h, w = dn.shape
    step = max(1, PIXELS_PER_CALL // (h * w))
    parts = [predict(_features(dn[i:i + step])) for i in range(0, f, step)]
    return np.concatenate(parts).astype(np.float32).reshape(f, h, w)


def onnx_model_bytes(cache: Path) -> bytes:
    """s2cloudless's model converted to ONNX by onnxmltools (cached: the conversion takes ~11 s)."""
    model = model_file()
    path = cache / f"model-{model.key}.onnx"
    if path.exists():
        return path.read_bytes()
    try:
        import lightgbm
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError as exc:
        raise EngineUnavailable(f"ONNX conversion needs onnxmltools ({exc})") from exc
    logger.info("converting s2cloudless's model to ONNX (once, ~11 s)")
    booster = lightgbm.Booster(model_file=model.path)
    onnx = onnxmltools.convert_lightgbm(
        booster, initial_types=[("input", FloatTensorType([None, len(MODEL_BAND_IDS)]))],
        zipmap=False)
    data = onnx.SerializeToString()
    native.write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
    return data


class OnnxEngine:
    """s2cloudless's model in ONNX Runtime, one intra-op and one inter-op thread per ``threads``."""

    name = "onnxruntime"
    exact = False  # probabilities within ~4e-7 of LightGBM's (float32 thresholds and sums)

    def __init__(self, cache: Path, threads: int, model_bytes: bytes | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineUnavailable(f"onnxruntime is not installed ({exc})") from exc
        self.model_bytes = model_bytes or onnx_model_bytes(cache)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # the converted graph's "label" output has a stale shape
        self.session = ort.InferenceSession(self.model_bytes, opts,
                                            providers=["CPUExecutionProvider"])

    def predict_frames(self, dn: np.ndarray) -> np.ndarray:
        return _in_chunks(lambda x: self.session.run(["probabilities"], {"input": x})[0][:, 1], dn)


class LightGBMEngine:
    """s2cloudless's own LightGBM booster, all frames batched, ``num_threads=threads``."""

    name = "lightgbm"
    exact = True

    def __init__(self, cache: Path, threads: int) -> None:
        import lightgbm

        self.booster = lightgbm.Booster(model_file=model_file().path)
        self.threads = threads

    def predict_frames(self, dn: np.ndarray) -> np.ndarray:
        return _in_chunks(lambda x: self.booster.predict(x, num_threads=self.threads), dn)


ENGINES = {"kernel": KernelEngine, "onnx": OnnxEngine, "lightgbm": LightGBMEngine}
_engines: dict[tuple, object] = {}
_lock = threading.Lock()


def get_engine(kind: str, threads: int, cache: str | os.PathLike | None = None,
               onnx_bytes: bytes | None = None):
    """One engine per process, kind, thread count and cache (built on first use)."""
    directory = cache_dir(cache)
    key = (kind, threads, str(directory))
    with _lock:
        if key not in _engines:
            if kind == "onnx":
                _engines[key] = OnnxEngine(directory, threads, onnx_bytes)
            else:
                _engines[key] = ENGINES[kind](directory, threads)
        return _engines[key]
