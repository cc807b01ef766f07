"""VectorIndex against brute-force numpy search, on random unit vectors (the hardest case)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnx_nfi.errors import StoreError
from onnx_nfi.store.vector_backends import plan_for, refine_factor
from onnx_nfi.store.vector_index import VectorIndex


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def assert_scores_exact(scores, found, ids, vectors, queries) -> None:
    """Every returned score is the exact inner product of the query with the returned id's vector."""
    row_of = {int(i): r for r, i in enumerate(ids)}
    for q, (s_row, f_row) in enumerate(zip(scores, found)):
        valid = f_row >= 0
        rows = [row_of[int(i)] for i in f_row[valid]]
        np.testing.assert_allclose(s_row[valid], vectors[rows] @ queries[q], rtol=1e-5, atol=1e-6)
        assert np.isneginf(s_row[~valid]).all()


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 vectors with sparse, shuffled ids and 50 queries."""
    ids = np.random.default_rng(1).permutation(10_000)[:3000].astype(np.int64) * 7 + 3
    return ids, unit_vectors(3000, 32, 0), unit_vectors(50, 32, 2)


def test_exact_index_equals_brute_force(small) -> None:
    ids, vectors, queries = small
    index = VectorIndex.build(ids, vectors)
    assert index.kind == "flat" and len(index) == 3000 and index.dim == 32
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(vectors, ids, queries, 10)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    # single query (one-thread path) gives the same answer
    np.testing.assert_array_equal(index.search(queries[:1], 10)[1], want_ids[:1])


def test_pads_when_fewer_results(small) -> None:
    ids, vectors, queries = small
    index = VectorIndex.build(ids[:5], vectors[:5])
    scores, found = index.search(queries[:3], 8)
    assert scores.shape == found.shape == (3, 8)
    assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert set(found[0, :5]) == set(ids[:5])
    empty = VectorIndex.build(np.empty(0, np.int64), np.empty((0, 32), np.float32))
    scores, found = empty.search(queries[:2], 3)
    assert (found == -1).all() and np.isneginf(scores).all() and len(empty) == 0


@pytest.mark.parametrize("exact_limit", [100_000, 1_000])
def test_allowed_ids_restrict_results(small, exact_limit: int) -> None:
    ids, vectors, queries = small
    index = VectorIndex.build(ids, vectors, exact_limit=exact_limit)
    rng = np.random.default_rng(3)
    for n_allowed in (7, 40, 2500):  # fewer than k, subset scan, oversampled candidates
        chosen = rng.choice(len(ids), n_allowed, replace=False)
        allowed = np.concatenate([ids[chosen], [-5, 10**12]])  # unknown ids are ignored
        scores, found = index.search(queries, 10, allowed_ids=allowed)
        _, want_ids = brute_force(vectors[chosen], ids[chosen], queries, 10)
        assert set(found[found >= 0]) <= set(ids[chosen])
        if n_allowed < 10:
            np.testing.assert_array_equal(found[:, :n_allowed], want_ids)
            assert (found[:, n_allowed:] == -1).all()
        elif exact_limit > len(ids) or n_allowed == 40:  # exact paths
            np.testing.assert_array_equal(found, want_ids)
        else:
            assert recall_at(found, want_ids) >= 0.95
        assert_scores_exact(scores, found, ids, vectors, queries)
    _, none = index.search(queries[:2], 4, allowed_ids=np.array([], np.int64))
    assert (none == -1).all()


@pytest.mark.parametrize("exact_limit", [100_000, 1_000])
def test_remove_then_search_never_returns_removed(small, exact_limit: int) -> None:
    ids, vectors, queries = small
    index = VectorIndex.build(ids, vectors, exact_limit=exact_limit)
    kind = index.kind
    gone = ids[::3]
    # the stored vectors themselves as queries: each would otherwise find itself first
    assert index.remove(np.concatenate([gone, [-1]])) == len(gone)
    assert len(index) == len(ids) - len(gone) and index.kind == kind
    _, found = index.search(np.vstack([vectors[::3][:40], queries]), 20)
    assert not set(found.ravel()) & set(gone)
    keep = np.ones(len(ids), bool)
    keep[::3] = False
    _, want = brute_force(vectors[keep], ids[keep], queries, 10)
    assert recall_at(index.search(queries, 10)[1], want) >= (1.0 if kind == "flat" else 0.95)


def test_add_replans_and_stays_searchable(small) -> None:
    ids, vectors, queries = small
    index = VectorIndex.build(ids[:800], vectors[:800], exact_limit=1_000)
    assert index.kind == "flat"
    index.add(ids[800:2000], vectors[800:2000])  # crosses exact_limit: becomes approximate
    assert index.kind == "pq16x4fs+refine" and len(index) == 2000
    index.add(ids[2000:], vectors[2000:])
    assert len(index) == 3000
    _, want = brute_force(vectors, ids, queries, 10)
    assert recall_at(index.search(queries, 10)[1], want) >= 0.95
    with pytest.raises(ValueError, match="already in the index"):
        index.add(ids[:1], vectors[:1])
    index.remove(ids[:2500])  # back to exact below the limit
    assert index.kind == "flat" and len(index) == 500
    np.testing.assert_array_equal(index.search(queries, 5)[1], brute_force(vectors[2500:], ids[2500:], queries, 5)[1])


@pytest.mark.parametrize("exact_limit", [100_000, 1_000])
def test_save_load_round_trip(small, tmp_path: Path, exact_limit: int) -> None:
    ids, vectors, queries = small
    index = VectorIndex.build(ids, vectors, exact_limit=exact_limit)
    index.remove(ids[:10])
    path = tmp_path / "neurons.faiss.npz"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    loaded = VectorIndex.load(path)
    assert (loaded.kind, len(loaded), loaded.dim) == (index.kind, len(index), index.dim)
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    loaded.add(ids[:10], vectors[:10])  # the loaded index keeps its settings and stays editable
    assert len(loaded) == len(ids)


def test_load_rejects_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not an index")
    with pytest.raises(StoreError, match="rebuilt from the database"):
        VectorIndex.load(path)


def test_bad_input_is_rejected(small) -> None:
    ids, vectors, queries = small
    with pytest.raises(ValueError, match="unique"):
        VectorIndex.build(np.zeros(3, np.int64), vectors[:3])
    with pytest.raises(ValueError, match="shape"):
        VectorIndex.build(ids[:3], vectors[:4])
    index = VectorIndex.build(ids, vectors)
    with pytest.raises(ValueError, match="queries"):
        index.search(queries[:, :8], 3)


def test_plan_is_a_function_of_size() -> None:
    assert plan_for(100_000, 256, 100_000).kind == "flat"
    assert plan_for(100_001, 256, 100_000).kind == "pq128x4fs+refine"
    assert plan_for(200_000, 255, 100_000).pq_m == 255
    assert refine_factor(1_000_000) == 50 and refine_factor(1_000) == 20 and refine_factor(10**9) == 100


@pytest.mark.slow
def test_approximate_index_recall_at_200k() -> None:
    """200k random 256-d vectors, forced onto the approximate path: recall@10 >= 0.95."""
    n, d = 200_000, 256
    vectors = unit_vectors(n, d, 10)
    ids = np.arange(n, dtype=np.int64) * 2
    rng = np.random.default_rng(11)
    near = vectors[rng.choice(n, 100, replace=False)] + 0.3 * unit_vectors(100, d, 12)
    queries = np.vstack([near / np.linalg.norm(near, axis=1, keepdims=True), unit_vectors(100, d, 13)])
    index = VectorIndex.build(ids, vectors, exact_limit=50_000)
    assert index.kind == "pq128x4fs+refine"
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(vectors, ids, queries, 10)
    assert recall_at(found, want_ids) >= 0.95
    hit = found == want_ids  # where the neighbour agrees, so does its (exactly re-ranked) score
    np.testing.assert_allclose(scores[hit], want_scores[hit], rtol=1e-5, atol=1e-6)
