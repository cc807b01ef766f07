"""The two search structures behind ``VectorIndex`` (see its module for why these two): exact
inner-product search, and a 4-bit fast-scan product quantisation re-ranked with exact vectors.
Each backend keeps ids and vectors aligned through adds and removals."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np


# Below this many queries per call, faiss runs on one thread: a single query cannot be split
# across threads by these indexes, and OpenMP fan-out/join alone cost 3-4x the latency
# (measured 3.3 ms with 1 thread vs 12 ms with 2 for one PQ128x4fs query over 1M vectors).
# PQ training (many tiny k-means) is also single-threaded: on 2 busy cores OpenMP barriers
# turned its 1.2 s into 7-31 s.
PARALLEL_MIN_QUERIES = 16
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
def faiss_threads(parallel: bool) -> Iterator[None]:
    """Use the caller's faiss thread count, or one thread, and restore the count after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(before if parallel else 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def gpu_available() -> bool:
    """True only with a faiss GPU build and a visible GPU (never on faiss-cpu)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
    """Ids ``table[best]`` with the -1 padding of :func:`top_k` kept (``table`` may be empty)."""
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


class FlatBackend:
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
        if allowed is None and gpu_available():
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


class RefinedPQBackend:
    """PQ fast scan over row positions, re-ranked with the exact vectors kept here."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, pq: faiss.Index, trained_n: int) -> None:
        self.pq = pq
        self._ids = ids
        self._vectors = vectors
        self._positions = _Positions(ids)
        self.trained_n = trained_n

    @classmethod
    def train(cls, ids: np.ndarray, vectors: np.ndarray, plan: IndexPlan, seed: int) -> RefinedPQBackend:
        n, d = vectors.shape
        pq = faiss.IndexPQFastScan(d, plan.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, _PQ_TRAIN_SAMPLE), replace=False)
        with faiss_threads(parallel=False):
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
            scores, best = top_k((self._vectors[cand] @ query)[None, :], k)
            out_s[row] = scores[0]
            out_i[row] = _ids_of(self._ids[cand], best[0])
        return out_s, out_i

    def _search_subset(self, queries: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        subset = self._vectors[positions]
        out_s, out_i = [], []
        for start in range(0, len(queries), _QUERY_CHUNK):
            scores, best = top_k(queries[start : start + _QUERY_CHUNK] @ subset.T, k)
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


Backend = FlatBackend | RefinedPQBackend


def check_ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64, copy=False)


def check_vectors(vectors: np.ndarray, n: int, d: int | None) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n or (d is not None and vectors.shape[1] != d):
        want = f"[{n}, {d if d is not None else 'd'}]"
        raise ValueError(f"vectors must have shape {want}, got {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    return vectors
