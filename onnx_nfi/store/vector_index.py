"""Nearest-neighbour search over unit vectors (response profiles, NF embeddings, index vectors).

Every vector is L2-normalised by its producer, so the inner product is the cosine (and, for
mean-centred response profiles, the Pearson correlation). The index picks its structure from
the number of vectors:

- up to ``exact_limit`` vectors: exact search, ``IndexIDMap2(IndexFlatIP)``. Exact is cheap at
  this size and needs no training, and it supports removal and ID selectors natively.
- above: an exhaustive 4-bit product-quantisation *fast scan* over all vectors, whose top
  ``k * refine_factor(n)`` candidates are re-ranked with the exact float32 vectors.

Why not IVF or HNSW: both rely on neighbours being much closer than the rest of the data. For
1M random unit vectors in 256-d the true top-10 have cosine ~0.3 while the bulk is 0 +- 0.06,
and on this 2-core machine IVF1024 needed 30 % of the lists for recall@10 0.68 (26 ms) and HNSW32
reached 0.51 at efSearch 512 already at 200k vectors. A quantised scan of every vector does not
depend on that structure: 64-byte codes (PQ128x4fs at d=256) estimate each inner product with an
error of ~0.02, so the true neighbours always land among a few hundred candidates, and the exact
re-rank restores exact scores. Measured numbers: benchmarks/README.md.

HNSW's inability to remove vectors therefore does not arise; the fast-scan index removes
vectors in place (compacting, order preserved), so the float32 re-rank store is compacted the
same way and positions stay aligned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from onnx_nfi.errors import StoreError
from onnx_nfi.files import atomic_write

_FORMAT_VERSION = 1
# Below this many queries per call, faiss runs on one thread: a single query cannot be split
# across threads by these indexes, and OpenMP fan-out/join alone cost 3-4x the latency
# (measured 3.3 ms with 1 thread vs 12 ms with 2 for one PQ128x4fs query over 1M vectors).
# PQ training (many tiny k-means) is also single-threaded: on 2 busy cores OpenMP barriers
# turned its 1.2 s into 7-31 s.
_PARALLEL_MIN_QUERIES = 16
# Training the 16-centroid sub-quantisers needs few points (faiss uses 256 per centroid).
_PQ_TRAIN_SAMPLE = 65_536
_QUERY_CHUNK = 256


@dataclass(frozen=True)
class IndexPlan:
    """The index structure chosen for ``n`` vectors of dimension ``d``."""

    kind: str
    pq_m: int  # sub-quantisers of the fast-scan index; 0 for exact search


def plan_for(n: int, d: int, exact_limit: int) -> IndexPlan:
    """Choose exact search up to ``exact_limit`` vectors, a refined PQ fast scan above.

    Two dimensions per 4-bit sub-quantiser (2 bits per dimension) is the coarsest code that kept
    the re-rank cheap: with four dimensions per sub-quantiser (PQ64x4fs) recall@10 at 1M random
    256-d vectors stayed at 0.70 even with 500 candidates. Odd ``d`` falls back to one dimension
    per sub-quantiser.
    """
    if n <= exact_limit:
        return IndexPlan(kind="flat", pq_m=0)
    pq_m = d // 2 if d % 2 == 0 else d
    return IndexPlan(kind=f"pq{pq_m}x4fs+refine", pq_m=pq_m)


def refine_factor(n: int) -> int:
    """Candidates re-ranked per requested neighbour, growing slowly with ``n``.

    More vectors means more of them whose quantised score beats a true neighbour's, so the
    candidate list must grow; measured with 10 candidates per neighbour x 20, recall@10 fell
    only from 0.978 to 0.957 between 200k and 1M random vectors, hence logarithmic growth,
    set so that 1M gets 50 (recall 0.99). Candidates are cheap (one 1 KB row each at d=256)
    next to the scan of all codes.
    """
    return int(np.clip(math.ceil(10 * math.log2(max(n, 1) / 32_000)), 20, 100))


@contextmanager
def _faiss_threads(parallel: bool) -> Iterator[None]:
    """Use the caller's faiss thread count, or one thread, and restore the count after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(before if parallel else 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _gpu_available() -> bool:
    """True only with a faiss GPU build and a visible GPU (never on faiss-cpu)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row of ``scores``, best first, padded with (-inf, -1)."""
    q, m = scores.shape
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    kk = min(k, m)
    if kk == 0:
        return out_s, out_i
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < m else np.tile(np.arange(m), (q, 1))
    part_s = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    out_s[:, :kk] = np.take_along_axis(part_s, order, axis=1)
    out_i[:, :kk] = np.take_along_axis(part, order, axis=1)
    return out_s, out_i


def _ids_of(table: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Ids ``table[best]`` with the -1 padding of :func:`_top_k` kept (``table`` may be empty)."""
    if len(table) == 0:
        return np.full_like(best, -1)
    return np.where(best >= 0, table[np.maximum(best, 0)], -1)


class _Positions:
    """Maps external ids to row positions (sorted lookup, O(log n) per id)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def find(self, query_ids: np.ndarray) -> np.ndarray:
        """Positions of those ``query_ids`` that are present (absent ids are skipped)."""
        if len(self.sorted) == 0:
            return np.empty(0, dtype=np.int64)
        at = np.searchsorted(self.sorted, query_ids)
        at_clipped = np.minimum(at, len(self.sorted) - 1)
        hit = (at < len(self.sorted)) & (self.sorted[at_clipped] == query_ids)
        return self.order[at_clipped[hit]]


class _FlatBackend:
    """Exact inner-product search; faiss keeps the vectors and the id map."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.flat = faiss.IndexFlatIP(vectors.shape[1])
        self.index = faiss.IndexIDMap2(self.flat)
        self.index.add_with_ids(vectors, ids)
        self._gpu: tuple[object, faiss.Index] | None = None

    @property
    def kind(self) -> str:
        return "flat"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)

    def find(self, ids: np.ndarray) -> np.ndarray:
        return _Positions(self.ids()).find(ids)

    def vectors(self) -> np.ndarray:
        return self.flat.reconstruct_n(0, self.flat.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None and _gpu_available():
            return self._search_gpu(queries, k)
        if allowed is None:
            return self.index.search(queries, k)
        selector = faiss.IDSelectorBatch(allowed)
        return self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search on the GPU; a copy of the flat vectors is made once and kept until changed."""
        if self._gpu is None:
            resources = faiss.StandardGpuResources()
            self._gpu = (resources, faiss.index_cpu_to_gpu(resources, 0, self.flat))
        scores, positions = self._gpu[1].search(queries, k)
        return scores, _ids_of(self.ids(), positions)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(vectors, ids)
        self._gpu = None

    def remove(self, ids: np.ndarray) -> int:
        self._gpu = None
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


class _RefinedPQBackend:
    """PQ fast scan over row positions, re-ranked with the exact vectors kept here."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, pq: faiss.Index, trained_n: int) -> None:
        self.pq = pq
        self._ids = ids
        self._vectors = vectors
        self._positions = _Positions(ids)
        self.trained_n = trained_n

    @classmethod
    def train(cls, ids: np.ndarray, vectors: np.ndarray, plan: IndexPlan, seed: int) -> _RefinedPQBackend:
        n, d = vectors.shape
        pq = faiss.IndexPQFastScan(d, plan.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, _PQ_TRAIN_SAMPLE), replace=False)
        with _faiss_threads(parallel=False):
            pq.train(vectors[np.sort(sample)])
        pq.add(vectors)
        return cls(ids, vectors, pq, trained_n=n)

    @property
    def kind(self) -> str:
        return f"pq{self.pq.M}x4fs+refine"

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids

    def find(self, ids: np.ndarray) -> np.ndarray:
        return self._positions.find(ids)

    def vectors(self) -> np.ndarray:
        return self._vectors

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._ids)
        mask = None
        oversample = 1
        if allowed is not None:
            positions = self._positions.find(allowed)
            if len(positions) <= max(k * refine_factor(n), n // 16):
                # Faiss fast scan takes no ID selector, so allowed ids are found among
                # oversampled candidates. A small allowed set is cheaper, and exact, to scan
                # directly: its float32 rows (4 bytes a dimension) weigh less than the codes of
                # the whole index (0.25 bytes a dimension) below n/16 rows.
                return self._search_subset(queries, k, np.sort(positions))
            mask = np.zeros(n, dtype=bool)
            mask[positions] = True
            oversample = math.ceil(n / len(positions))
        n_candidates = min(n, k * refine_factor(n) * oversample)
        _, candidates = self.pq.search(queries, n_candidates)
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, cand) in enumerate(zip(queries, candidates)):
            cand = cand[cand >= 0]
            if mask is not None:
                cand = cand[mask[cand]]
            scores, best = _top_k((self._vectors[cand] @ query)[None, :], k)
            out_s[row] = scores[0]
            out_i[row] = _ids_of(self._ids[cand], best[0])
        return out_s, out_i

    def _search_subset(self, queries: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        subset = self._vectors[positions]
        out_s, out_i = [], []
        for start in range(0, len(queries), _QUERY_CHUNK):
            scores, best = _top_k(queries[start : start + _QUERY_CHUNK] @ subset.T, k)
            out_s.append(scores)
            out_i.append(_ids_of(self._ids[positions], best))
        return np.vstack(out_s), np.vstack(out_i)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.pq.add(vectors)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])
        self._positions = _Positions(self._ids)

    def remove(self, ids: np.ndarray) -> int:
        positions = np.sort(self._positions.find(ids))
        if len(positions) == 0:
            return 0
        self.pq.remove_ids(faiss.IDSelectorBatch(positions))
        self._ids = np.delete(self._ids, positions)
        self._vectors = np.delete(self._vectors, positions, axis=0)
        self._positions = _Positions(self._ids)
        return len(positions)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pq": faiss.serialize_index(self.pq), "trained_n": np.int64(self.trained_n)}


_Backend = _FlatBackend | _RefinedPQBackend


def _check_ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _check_vectors(vectors: np.ndarray, n: int, d: int | None) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n or (d is not None and vectors.shape[1] != d):
        want = f"[{n}, {d if d is not None else 'd'}]"
        raise ValueError(f"vectors must have shape {want}, got {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    return vectors


class VectorIndex:
    """Ids and unit vectors, searchable by inner product; structure chosen by size.

    Build with :meth:`build` or :meth:`load`. The index owns copies of its vectors, so the
    caller may reuse its arrays.
    """

    def __init__(self, backend: _Backend, dim: int, *, exact_limit: int, seed: int) -> None:
        self._backend = backend
        self._dim = dim
        self._exact_limit = exact_limit
        self._seed = seed

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, *, exact_limit: int = 100_000, seed: int = 0) -> VectorIndex:
        """Index ``vectors`` (float32 [n, d], unit rows) under unique int64 ``ids``."""
        ids = _check_ids(ids)
        vectors = _check_vectors(vectors, len(ids), None)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        plan = plan_for(len(ids), vectors.shape[1], exact_limit)
        if plan.pq_m:  # the PQ backend keeps this array for re-ranking; faiss's flat index copies
            vectors = vectors.copy()
        backend = cls._make_backend(plan, ids.copy(), vectors, seed)
        return cls(backend, vectors.shape[1], exact_limit=exact_limit, seed=seed)

    @staticmethod
    def _make_backend(plan: IndexPlan, ids: np.ndarray, vectors: np.ndarray, seed: int) -> _Backend:
        if plan.pq_m == 0:
            return _FlatBackend(ids, vectors)
        return _RefinedPQBackend.train(ids, vectors, plan, seed)

    @property
    def kind(self) -> str:
        """``"flat"`` for exact search, else the approximate structure, e.g. ``"pq128x4fs+refine"``."""
        return self._backend.kind

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    def __len__(self) -> int:
        return self._backend.ntotal

    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products per query: (scores float32 [q, k], ids int64 [q, k]).

        Rows are best first; missing results are padded with score -inf and id -1.
        ``allowed_ids`` restricts the results to those ids (unknown ids are ignored).
        """
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"queries must have shape [q, {self._dim}], got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = None if allowed_ids is None else np.unique(_check_ids(allowed_ids))
        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return _top_k(np.empty((len(queries), 0), dtype=np.float32), k)
        with _faiss_threads(parallel=len(queries) >= _PARALLEL_MIN_QUERIES):
            scores, ids = self._backend.search(queries, k, allowed)
        scores = np.asarray(scores, dtype=np.float32)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add new vectors; re-plans (and retrains) when the size leaves the current plan.

        Crossing ``exact_limit`` switches to the approximate structure; an approximate index
        that has doubled since its quantiser was trained is retrained, so codebooks follow the
        data the store has added since.
        """
        ids = _check_ids(ids)
        vectors = _check_vectors(vectors, len(ids), self._dim)
        if len(np.unique(ids)) != len(ids) or len(self._backend.find(ids)):
            raise ValueError("ids to add must be unique and not already in the index")
        n_after = len(self) + len(ids)
        plan = plan_for(n_after, self._dim, self._exact_limit)
        backend = self._backend
        stale = plan.kind != backend.kind or (
            isinstance(backend, _RefinedPQBackend) and n_after > 2 * backend.trained_n
        )
        if stale:
            all_ids = np.concatenate([backend.ids(), ids])
            all_vectors = np.concatenate([backend.vectors(), vectors])
            self._backend = self._make_backend(plan, all_ids, all_vectors, self._seed)
        else:
            backend.add(ids, vectors)  # both backends copy what they keep

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors of ``ids`` (unknown ids are ignored); returns how many were removed.

        An approximate index that shrinks to ``exact_limit`` or below becomes exact again.
        """
        ids = np.unique(_check_ids(ids))
        removed = self._backend.remove(ids)
        if plan_for(len(self), self._dim, self._exact_limit).kind != self.kind:
            self._backend = _FlatBackend(self._backend.ids(), self._backend.vectors())
        return removed

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically (a temporary file in the same folder, then rename)."""
        path = Path(path)
        arrays = {
            "format_version": np.int64(_FORMAT_VERSION),
            "dim": np.int64(self._dim),
            "exact_limit": np.int64(self._exact_limit),
            "seed": np.int64(self._seed),
            "ids": self._backend.ids(),
            "vectors": self._backend.vectors(),
            **self._backend.arrays(),
        }
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """Read an index written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            version = int(arrays["format_version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"format version {version}, expected {_FORMAT_VERSION}")
            ids, vectors = arrays["ids"], arrays["vectors"]
            dim, exact_limit, seed = int(arrays["dim"]), int(arrays["exact_limit"]), int(arrays["seed"])
            if ids.ndim != 1 or vectors.shape != (len(ids), dim):
                raise ValueError(f"ids {ids.shape} and vectors {vectors.shape} do not match dimension {dim}")
            if "pq" in arrays:
                pq = faiss.deserialize_index(arrays["pq"])
                backend: _Backend = _RefinedPQBackend(ids, vectors, pq, int(arrays["trained_n"]))
            else:
                backend = _FlatBackend(ids, vectors)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise StoreError(
                f"Cannot read the vector index {path}: {exc}. Delete it so that it is rebuilt from the database."
            ) from exc
        return cls(backend, dim, exact_limit=exact_limit, seed=seed)
