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

from pathlib import Path

import faiss
import numpy as np

from onnx_nfi.errors import StoreError
from onnx_nfi.files import atomic_write
from onnx_nfi.store.vector_backends import (
    Backend,
    FlatBackend,
    IndexPlan,
    PARALLEL_MIN_QUERIES,
    RefinedPQBackend,
    check_ids,
    check_vectors,
    faiss_threads,
    plan_for,
    top_k,
)

_FORMAT_VERSION = 1


class VectorIndex:
    """Ids and unit vectors, searchable by inner product; structure chosen by size.

    Build with :meth:`build` or :meth:`load`. The index owns copies of its vectors, so the
    caller may reuse its arrays.
    """

    def __init__(self, backend: Backend, dim: int, *, exact_limit: int, seed: int) -> None:
        self._backend = backend
        self._dim = dim
        self._exact_limit = exact_limit
        self._seed = seed

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, *, exact_limit: int = 100_000, seed: int = 0) -> VectorIndex:
        """Index ``vectors`` (float32 [n, d], unit rows) under unique int64 ``ids``."""
        ids = check_ids(ids)
        vectors = check_vectors(vectors, len(ids), None)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        plan = plan_for(len(ids), vectors.shape[1], exact_limit)
        if plan.pq_m:  # the PQ backend keeps this array for re-ranking; faiss's flat index copies
            vectors = vectors.copy()
        backend = cls._make_backend(plan, ids.copy(), vectors, seed)
        return cls(backend, vectors.shape[1], exact_limit=exact_limit, seed=seed)

    @staticmethod
    def _make_backend(plan: IndexPlan, ids: np.ndarray, vectors: np.ndarray, seed: int) -> Backend:
        if plan.pq_m == 0:
            return FlatBackend(ids, vectors)
        return RefinedPQBackend.train(ids, vectors, plan, seed)

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
        allowed = None if allowed_ids is None else np.unique(check_ids(allowed_ids))
        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return top_k(np.empty((len(queries), 0), dtype=np.float32), k)
        with faiss_threads(parallel=len(queries) >= PARALLEL_MIN_QUERIES):
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
        ids = check_ids(ids)
        vectors = check_vectors(vectors, len(ids), self._dim)
        if len(np.unique(ids)) != len(ids) or len(self._backend.find(ids)):
            raise ValueError("ids to add must be unique and not already in the index")
        n_after = len(self) + len(ids)
        plan = plan_for(n_after, self._dim, self._exact_limit)
        backend = self._backend
        stale = plan.kind != backend.kind or (
            isinstance(backend, RefinedPQBackend) and n_after > 2 * backend.trained_n
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
        ids = np.unique(check_ids(ids))
        removed = self._backend.remove(ids)
        if plan_for(len(self), self._dim, self._exact_limit).kind != self.kind:
            self._backend = FlatBackend(self._backend.ids(), self._backend.vectors())
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
                backend: Backend = RefinedPQBackend(ids, vectors, pq, int(arrays["trained_n"]))
            else:
                backend = FlatBackend(ids, vectors)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise StoreError(
                f"Cannot read the vector index {path}: {exc}. Delete it so that it is rebuilt from the database."
            ) from exc
        return cls(backend, dim, exact_limit=exact_limit, seed=seed)
