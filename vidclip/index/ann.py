"""The FAISS layer of an index folder: which index suits a collection (``choose_index``), and ``AnnIndex``, a
FAISS index of unit vectors searched by inner product (cosine), saved atomically and loaded only once its
checksum and header say it is the file ``index.json`` describes. FAISS is imported on first use."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from vidclip.fileio import atomic_path

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf_pq")
# No "ivf_flat": on 100k clustered 512-d vectors IVF1024,Flat did as well as HNSW (recall@10 0.995 at nprobe 8,
# 0.1 ms, built in 9 s against 14 s), but gaussian clusters are IVF's best case, and its centroids, trained on
# the first vectors, go stale as a collection grows by incremental adds; HNSW has no training to lose. Under a
# memory budget, IVF-PQ is the kind that saves memory.

# Exact search while a query scans at most 2**25 floats (65,536 vectors at 512-d). One query runs on one
# thread in FAISS; measured on this 2-core machine (512-d, p50 of 200 queries): 0.7 ms at 10k vectors,
# 4.7 ms at 50k, 11-12 ms at 100k, 192 ms at 1M. The bound keeps exact search near 6 ms, under the 10 ms goal.
FLAT_MAX_FLOATS = 2**25
# When the caller gives no budget: HNSW32 costs 4*D + 272 bytes a vector (2,320 at 512-d), so 8 GiB holds
# 3.7M vectors of 512-d; above that, IVF-PQ. A constant, so the same collection gets the same index anywhere.
DEFAULT_MEMORY_BUDGET = 8 * 2**30
# HNSW at 1M clustered 512-d vectors, M=32, efConstruction=40 (built in 150-230 s on 2 cores): recall@10 0.94
# at efSearch 64, 0.97-0.985 at 128 (0.4 ms a query), 0.988 at 256 (0.7 ms). 128 up to 2M vectors, 256 beyond.
HNSW_M, HNSW_MIN_M, HNSW_EF_CONSTRUCTION = 32, 16, 40
# k-means wants about 39 training points per centroid (FAISS warns below); more than 64 buys little and
# costs training time, which dominates building an IVF index on 2 cores (nlist**2 * D work).
MIN_POINTS_PER_CENTROID, TRAIN_POINTS_PER_CENTROID = 39, 64
ID_BYTES = 8  # an IVF list stores an int64 id beside each code
# IVF-PQ codes lose the ranking among close neighbours (recall@10 0.64 with 16-byte codes of 64-d vectors);
# re-scoring 10x the candidates exactly from the stored vectors (``search(..., vectors=)``) brought it to 1.0.
PQ_REFINE = 10

_PARAMS: dict[str, dict[str, tuple[int, int]]] = {  # kind -> param -> (min, max)
    "flat": {},
    "hnsw": {"M": (4, 256), "efConstruction": (1, 1 << 16), "efSearch": (1, 1 << 16)},
    "ivf_pq": {
        "nlist": (1, 1 << 20),
        "m": (1, 4096),
        "nbits": (4, 16),
        "nprobe": (1, 1 << 20),
        "refine": (1, 1000),
    },
}
# FAISS's four-character header of each kind's file: checked before FAISS parses it.
_HEADERS = {"flat": (b"IxFI", b"IxF2"), "hnsw": (b"IHNf",), "ivf_pq": (b"IvPQ", b"IwPQ")}


class AnnFileError(ValueError):
    """A FAISS index file that is missing, corrupted or not the index ``index.json`` describes; the message
    is one line naming the file and the reason."""


@dataclass(frozen=True)
class AnnSpec:
    """What to build: an index ``kind`` (one of ``INDEX_TYPES`` but "auto") and its ``params``, search-time
    ones included (HNSW ``efSearch``, IVF ``nprobe``). Recorded in ``index.json`` with :meth:`to_json`."""

    kind: str
    params: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _PARAMS:
            raise ValueError(f"unknown index kind {self.kind!r} (expected one of {', '.join(_PARAMS)})")
        if not isinstance(self.params, dict):
            raise ValueError(f"{self.kind} index params must be a mapping, got {type(self.params).__name__}")
        wanted = _PARAMS[self.kind]
        if set(self.params) != set(wanted):
            missing, extra = sorted(set(wanted) - set(self.params)), sorted(set(self.params) - set(wanted))
            raise ValueError(f"{self.kind} index params: missing {missing}, unknown {extra}")
        for name, (low, high) in wanted.items():
            value = self.params[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"{self.kind} index param {name}={value!r} is not an integer in [{low}, {high}]"
                )
        object.__setattr__(self, "params", dict(self.params))  # a copy: the caller's dict may change

    def factory(self) -> str:
        """The FAISS ``index_factory`` string, e.g. ``"Flat"``, ``"HNSW32,Flat"``, ``"IVF1024,PQ64x8"``."""
        p = self.params
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{p['M']},Flat"
        return f"IVF{p['nlist']},PQ{p['m']}x{p['nbits']}"

    def bytes_per_vector(self, dim: int) -> float:
        """Estimated index memory per vector (the list and graph overheads included, centroids not)."""
        p = self.params
        if self.kind == "flat":
            return 4.0 * dim
        if self.kind == "hnsw":  # 2*M level-0 links of 4 bytes, upper levels ~1/M of that, level bookkeeping
            return 4.0 * dim + 8 * p["M"] * (1 + 1 / p["M"]) + 8
        return math.ceil(p["m"] * p["nbits"] / 8) + ID_BYTES

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params), "factory": self.factory()}

    @classmethod
    def from_json(cls, data: Any) -> AnnSpec:
        """The spec ``to_json`` wrote; ValueError naming what is wrong otherwise."""
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"an index spec must be a mapping with a 'kind', got {data!r:.100}")
        spec = cls(data["kind"], data.get("params", {}))
        if "factory" in data and data["factory"] != spec.factory():
            raise ValueError(
                f"index spec factory {data['factory']!r} does not match its params ({spec.factory()})"
            )
        return spec


def choose_index(
    num_vectors: int, dim: int, *, index_type: str = "auto", memory_budget_bytes: int | None = None
) -> AnnSpec:
    """The index for ``num_vectors`` unit vectors of ``dim`` dims: exact ``flat`` while one query scans at
    most ``FLAT_MAX_FLOATS`` floats; ``hnsw`` (M=32, else 16) while it fits the memory budget; else
    ``ivf_pq`` with the largest code that fits. Any other ``index_type`` forces that kind, with parameters
    derived from the size. Raises ValueError when nothing fits or the collection is too small to train on.

    IVF-PQ trades recall for memory: measured recall@10 on 200k clustered 512-d vectors, 0.59 with 64-byte
    codes, 0.79 with 128, 0.93 with 256 (nprobe beyond 16 adds nothing). Its ``refine`` param is how many
    candidates per result :meth:`AnnIndex.search` re-scores exactly when given the stored vectors.
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r} (expected one of {', '.join(INDEX_TYPES)})")
    if isinstance(num_vectors, bool) or not isinstance(num_vectors, Integral) or num_vectors < 0:
        raise ValueError(f"num_vectors must be a non-negative integer, got {num_vectors!r}")
    if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    num_vectors, dim = int(num_vectors), int(dim)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget_bytes is None else memory_budget_bytes
    n = max(num_vectors, 1)
    if index_type == "flat":
        return AnnSpec("flat", {})
    if index_type == "hnsw":
        return _hnsw(n, HNSW_M)
    if index_type == "ivf_pq":
        return _ivf_pq(n, dim, None if memory_budget_bytes is None else budget)
    if n * dim <= FLAT_MAX_FLOATS and 4 * dim * n <= budget:
        return AnnSpec("flat", {})
    for m in (HNSW_M, HNSW_MIN_M):
        if (spec := _hnsw(n, m)).bytes_per_vector(dim) * n <= budget:
            return spec
    return _ivf_pq(n, dim, budget)


def _hnsw(n: int, m: int) -> AnnSpec:
    ef_search = 128 if n <= 2_000_000 else 256
    return AnnSpec("hnsw", {"M": m, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef_search})


def _ivf_pq(n: int, dim: int, budget: int | None) -> AnnSpec:
    """IVF-PQ: nlist ~ sqrt(n) (a power of two, at most n/39 so k-means has its points); codes of ``m``
    sub-vectors of at least 4 dims, the most that fit ``budget`` (all of them when there is none)."""
    # 8-bit codes need 39*256 training points; a smaller collection gets fewer bits (down to 4).
    nbits = min(8, int(math.log2(n / MIN_POINTS_PER_CENTROID))) if n >= MIN_POINTS_PER_CENTROID else 0
    if nbits < 4:
        raise ValueError(f"ivf_pq needs at least {MIN_POINTS_PER_CENTROID * 16} vectors to train on, got {n}")
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    nlist = max(1, min(nlist, n // MIN_POINTS_PER_CENTROID, 65_536))
    nprobe = min(nlist, max(8, min(64, nlist // 32)))
    centroids = 4.0 * dim * nlist
    for m in sorted((m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= 4), reverse=True) or [1]:
        spec = AnnSpec(
            "ivf_pq", {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "refine": PQ_REFINE}
        )
        if budget is None or spec.bytes_per_vector(dim) * n + centroids <= budget:
            return spec
    raise ValueError(
        f"no index of {n} vectors of {dim} dims fits in {budget} bytes (the smallest, {spec.factory()}, needs "
        f"{spec.bytes_per_vector(dim) * n + centroids:.0f})"
    )


def needs_rebuild(
    spec: AnnSpec,
    new_total: int,
    dim: int,
    *,
    index_type: str = "auto",
    memory_budget_bytes: int | None = None,
) -> bool:
    """Whether a collection grown (or shrunk) to ``new_total`` vectors should get another kind of index than
    ``spec``, or an IVF index 4x the lists (its lists grew 16x longer, and slower to scan); the store then
    rebuilds it from the stored embeddings."""
    chosen = choose_index(new_total, dim, index_type=index_type, memory_budget_bytes=memory_budget_bytes)
    if chosen.kind == spec.kind == "ivf_pq":
        return chosen.params["nlist"] >= 4 * spec.params["nlist"]
    return chosen.kind != spec.kind


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "vidclip's index needs FAISS: pip install faiss-cpu (or faiss-gpu on a GPU machine)"
        ) from err
    return faiss


def _check_vectors(vectors: Any, dim: int, what: str, *, unit: bool) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, dim) array, or ValueError naming the problem."""
    array = np.asarray(vectors)
    if array.ndim == 1 and what == "queries":
        array = array[None]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must be (n, {dim}) float32, got shape {array.shape}")
    if array.dtype != np.float32:
        raise ValueError(f"{what} must be float32, got {array.dtype}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{what} must be finite: row {bad} holds NaN or infinity")
    if unit and len(array):
        norms = np.linalg.norm(array, axis=1)
        off = np.flatnonzero(np.abs(norms - 1) > 1e-3)
        if len(off):
            raise ValueError(
                f"{what} must have unit L2 norm (cosine search): row {int(off[0])} has norm {norms[off[0]]:.4f}"
            )
    return np.ascontiguousarray(array)


class AnnIndex:
    """A FAISS index of unit vectors searched by inner product, with the :class:`AnnSpec` it was built from.
    The CPU index is the one saved; searches run on the GPUs when FAISS has some and the kind allows."""

    def __init__(self, index: Any, spec: AnnSpec) -> None:
        self._index, self.spec = index, spec
        self._gpu: Any = None  # a GPU copy for searching, made on first search, dropped on add
        self._apply_search_params(index)

    @classmethod
    def create(cls, spec: AnnSpec, dim: int) -> AnnIndex:
        """An empty index of ``spec`` for ``dim``-dim vectors (IVF-PQ: ``m`` must divide ``dim``)."""
        if spec.kind == "ivf_pq" and dim % spec.params["m"]:
            raise ValueError(f"ivf_pq: m={spec.params['m']} sub-vectors do not divide dim {dim}")
        faiss = _faiss()
        index = faiss.index_factory(dim, spec.factory(), faiss.METRIC_INNER_PRODUCT)
        if spec.kind == "hnsw":
            index.hnsw.efConstruction = spec.params["efConstruction"]
        elif spec.kind == "ivf_pq":
            index.do_polysemous_training = (
                False  # codes for Hamming pre-filters, unused here: 4x the training
            )
        return cls(index, spec)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def _apply_search_params(self, index: Any) -> None:
        faiss = _faiss()
        if self.spec.kind == "hnsw":
            index.hnsw.efSearch = self.spec.params["efSearch"]
        elif self.spec.kind == "ivf_pq":
            faiss.extract_index_ivf(index).nprobe = self.spec.params["nprobe"]

    def train_if_needed(self, sample: Any, *, seed: int = 0) -> None:
        """Train an IVF index on up to ``64 * nlist`` rows of ``sample`` (unit vectors, chosen at random with
        ``seed``); nothing for flat and HNSW, or once trained. ValueError when ``sample`` has too few rows."""
        if self.is_trained:
            return
        p = self.spec.params
        need = MIN_POINTS_PER_CENTROID * max(p["nlist"], 2 ** p["nbits"])
        if len(sample) < need:
            raise ValueError(
                f"{self.spec.factory()} needs at least {need} training vectors ({MIN_POINTS_PER_CENTROID} per "
                f"centroid), got {len(sample)}: choose_index({len(sample)}, {self.dim}) picks one that fits"
            )
        limit = TRAIN_POINTS_PER_CENTROID * max(p["nlist"], 2 ** p["nbits"])
        if len(sample) > limit:
            sample = sample[np.sort(np.random.default_rng(seed).choice(len(sample), limit, replace=False))]
        self._index.train(_check_vectors(sample, self.dim, "training vectors", unit=True))

    def add(self, vectors: Any) -> None:
        """Append ``vectors`` (n, dim) float32 of unit norm; their ids continue from ``ntotal``."""
        vectors = _check_vectors(vectors, self.dim, "vectors", unit=True)
        if not self.is_trained:
            raise ValueError(
                f"{self.spec.factory()} must be trained (train_if_needed) before vectors are added"
            )
        if len(vectors):
            self._index.add(vectors)
            self._gpu = None

    def search(self, queries: Any, k: int, *, vectors: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each of ``queries`` (q, dim): scores (q, k) float32 (inner products,
        best first) and ids (q, k) int64; where fewer than ``k`` are found, ids are -1 and scores -inf.

        ``vectors`` (ntotal, dim), the vectors added in order (a memory map will do), lets a lossy kind
        (IVF-PQ) fetch ``refine * k`` candidates and re-score them exactly; the others ignore it."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries, k = _check_vectors(queries, self.dim, "queries", unit=False), int(k)
        refine = self.spec.params["refine"] if self.spec.kind == "ivf_pq" and vectors is not None else 1
        if refine > 1 and len(vectors) != self.ntotal:
            raise ValueError(f"vectors to re-score with has {len(vectors)} rows, the index {self.ntotal}")
        scores, ids = self._searcher(k * refine).search(queries, k * refine)
        scores, ids = np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        if refine > 1:
            scores, ids = _rescore(queries, ids, vectors, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _searcher(self, k: int) -> Any:
        """The GPU copy where FAISS has GPUs and the kind runs there (flat, IVF; k within the GPU's 2048),
        made on first use; else the CPU index."""
        if self.spec.kind == "hnsw" or k > 2048 or not self.ntotal:
            return self._index
        if self._gpu is None:
            self._gpu = self._index
            faiss = _faiss()
            if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
                try:
                    options = faiss.GpuMultipleClonerOptions()
                    # IVF-PQ with many sub-quantizers needs float16 lookup tables; flat stays exact float32
                    options.useFloat16 = self.spec.kind == "ivf_pq"
                    gpu = faiss.index_cpu_to_all_gpus(self._index, co=options)
                    if self.spec.kind == "ivf_pq":
                        faiss.GpuParameterSpace().set_index_parameter(
                            gpu, "nprobe", self.spec.params["nprobe"]
                        )
                    self._gpu = gpu
                except (RuntimeError, AttributeError) as err:  # a kind or size the GPU index lacks
                    logging.getLogger(__name__).warning(f"searching {self.spec.factory()} on the CPU: {err}")
        return self._gpu

    def save(self, path: str | os.PathLike) -> str:
        """Write the index to ``path`` atomically (a temporary file beside it, synced, then renamed); returns
        the SHA-256 of the file written, for ``index.json``."""
        faiss = _faiss()
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))
            digest = sha256_of(tmp)
        return digest

    @classmethod
    def load(cls, path: str | os.PathLike, spec: AnnSpec, *, expected_sha256: str | None = None) -> AnnIndex:
        """The index saved at ``path``, checked against ``expected_sha256`` (when given) before FAISS reads
        it, and against ``spec`` after; AnnFileError naming the file and the reason otherwise."""
        path = Path(path)
        if not path.is_file():
            raise AnnFileError(f"{path}: missing FAISS index file")
        if expected_sha256 is not None and sha256_of(path) != expected_sha256.lower():
            raise AnnFileError(
                f"{path}: corrupted: checksum mismatch (the file is not the one index.json lists)"
            )
        with open(path, "rb") as f:
            header = f.read(4)
        if header not in _HEADERS[spec.kind]:
            raise AnnFileError(f"{path}: not a FAISS {spec.kind} index (header {header!r})")
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, MemoryError) as err:
            said = " ".join(str(err).split()).rpartition("failed: ")[2]  # FAISS's text after its C++ location
            raise AnnFileError(
                f"{path}: not a readable FAISS index (truncated or corrupted: {said[:120]})"
            ) from None
        found = _describe(index)
        if found != spec.factory() or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise AnnFileError(
                f"{path}: holds {found} (metric {index.metric_type}), index.json says {spec.factory()}"
            )
        return cls(index, spec)


def _rescore(
    queries: np.ndarray, candidates: np.ndarray, vectors: Any, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's ``candidates`` (q, c) by exact inner product with ``vectors``."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates, strict=True)):
        found = np.sort(found[found >= 0])  # in file order: a memory map reads forward
        exact = np.asarray(vectors[found], dtype=np.float32) @ query
        best = np.lexsort((found, -exact))[:k]
        scores[row, : len(best)], ids[row, : len(best)] = exact[best], found[best]
    return scores, ids


def _describe(index: Any) -> str:
    """The factory string of a loaded index, to compare with the spec's."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexHNSWFlat):
        return f"HNSW{index.hnsw.nb_neighbors(1)},Flat"
    if isinstance(index, faiss.IndexIVFPQ):
        return f"IVF{index.nlist},PQ{index.pq.M}x{index.pq.nbits}"
    if isinstance(index, faiss.IndexFlat):
        return "Flat"
    return type(index).__name__


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of the file at ``path``, hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` inner products of ``queries`` (q, d) against ``vectors`` (n, d), in blocks of
    ``chunk`` rows: (scores (q, k) float32, ids (q, k) int64), -1 / -inf past n. The truth recall is measured on."""
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), 0), -1, dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start : start + chunk], dtype=np.float32)
        scores = queries @ block.T  # (q, chunk)
        top = min(k, scores.shape[1])
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]  # by score, then id: a stable answer on ties
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    pad = k - best_s.shape[1]
    if pad > 0:
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return best_s.astype(np.float32), best_i.astype(np.int64)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """The fraction of the true neighbours (ids >= 0 in ``true_ids`` (q, k)) that ``found_ids`` (q, k') holds
    in the same row, over all queries: recall@k when both have k columns."""
    found_ids, true_ids = np.atleast_2d(found_ids), np.atleast_2d(true_ids)
    if len(found_ids) != len(true_ids):
        raise ValueError(f"found_ids has {len(found_ids)} rows, true_ids {len(true_ids)}")
    hits = total = 0
    for found, true in zip(found_ids, true_ids, strict=True):
        true = true[true >= 0]
        hits += np.isin(true, found[found >= 0]).sum()
        total += len(true)
    return float(hits / total) if total else 1.0
