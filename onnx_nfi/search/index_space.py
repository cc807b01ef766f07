"""``similar --by indexes``: neurons compared by their selectivity indexes, each standardised over the database.

The indexes live on different scales (colour selectivity spreads over a few tenths, class
selectivity over most of 0-1, orientation beyond 1), and a unit-length 2-vector (a neuron with
two indexes) has only a direction: 33 neurons scored 1.0000 against one query. So each index is
turned into a z-score over the database's neurons that are not weak (docs/method.md §8, §14):
``z = (value − mean) / std``, a NULL index at the mean (0), and neurons are compared by the
Euclidean distance of their z-vectors, magnitude kept. The score is minus that distance: 0 is
the same indexes, and larger is closer, as for the other vectors.
"""

from __future__ import annotations

import numpy as np

from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.index_values import index_table


def standardised(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` [n, d] (NaN: missing) as z-scores per column, mean and standard deviation taken over
    the finite values of the ``reference`` rows; missing values and constant columns give 0."""
    out = np.zeros(values.shape, np.float64)
    for k in range(values.shape[1]):
        column = values[:, k]
        known = column[reference & np.isfinite(column)]
        if known.size < 2 or not np.std(known) > 0:
            continue
        z = (column - known.mean()) / np.std(known)
        out[:, k] = np.where(np.isfinite(z), z, 0.0)
    return out


class IndexSpace:
    """The standardised index vectors of every neuron with an index, searched exactly (5 numbers per
    neuron: a brute-force distance costs less than keeping an index in step)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids, self.vectors = ids, vectors

    @classmethod
    def read(cls, store: Store) -> IndexSpace:
        """The database's neurons, standardised over those that are not weak."""
        ids, values, weak = index_table(store)
        return cls(ids, standardised(values, ~weak))

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The standardised vectors of ``ids`` (each must have an index value)."""
        return self.vectors[np.searchsorted(self.ids, ids)]

    def search(self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest allowed neurons per query: (minus distances [q, k], ids [q, k]), padded
        with -inf and -1 like a vector index; equal distances in id order."""
        keep = np.isin(self.ids, allowed_ids)
        ids, vectors = self.ids[keep], self.vectors[keep]
        scores = np.full((len(queries), k), -np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        for row, query in enumerate(queries):
            distance = np.sqrt(((vectors - query) ** 2).sum(axis=1))
            order = np.lexsort((ids, distance))[:k]
            scores[row, : len(order)], found[row, : len(order)] = -distance[order], ids[order]
        return scores, found
