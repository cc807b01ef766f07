"""Response profiles and convergent-learning matching, checked against numpy and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnx_nfi.neurons.matching import best_matches, layer_similarity, one_to_one, profile_vectors


def test_profile_inner_product_is_pearson_correlation() -> None:
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, 3.0, size=(12, 40)) + rng.normal(0, 1, size=(12, 1)) * 10
    profiles = profile_vectors(scores)
    assert profiles.dtype == np.float32 and profiles.shape == (12, 40)
    np.testing.assert_allclose(profiles @ profiles.T, np.corrcoef(scores), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(profiles, axis=1), 1.0, atol=1e-6)


def test_constant_rows_become_zero_vectors_not_nan() -> None:
    # 123.456 x 5 leaves a rounding residue of 3e-14 after centring: still a constant row
    scores = np.array([[0.0] * 5, [3.5] * 5, [123.456] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]], dtype=np.float64)
    profiles = profile_vectors(scores)
    assert np.isfinite(profiles).all()
    np.testing.assert_array_equal(profiles[:3], 0.0)
    np.testing.assert_allclose(profiles[3], np.array([-2, -1, 0, 1, 2]) / np.sqrt(10), rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        profile_vectors(np.array([[1.0, np.nan]]))


def permuted_noisy_pair(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profiles of n units, and of the same units in shuffled order with noise added."""
    rng = np.random.default_rng(seed)
    scores = rng.gamma(1.5, 1.0, size=(n, p))
    perm = rng.permutation(n)
    noisy = scores[perm] + rng.normal(0, 0.3, size=(n, p))
    return profile_vectors(scores), profile_vectors(noisy), perm


def test_matching_recovers_a_permutation() -> None:
    a, b, perm = permuted_noisy_pair(64, 200, 1)
    want = np.argsort(perm)  # unit i of a is unit want[i] of b
    best_idx, best_score = best_matches(a, b)
    np.testing.assert_array_equal(best_idx, want)
    idx_a, idx_b, score = one_to_one(a, b)
    np.testing.assert_array_equal(idx_a, np.arange(64))
    np.testing.assert_array_equal(idx_b, want)
    np.testing.assert_allclose(score, np.sum(a * b[want], axis=1), rtol=1e-5)
    np.testing.assert_allclose(best_score, score, rtol=1e-6)
    assert score.min() > 0.8


def test_one_to_one_maximises_total_correlation_on_rectangles() -> None:
    rng = np.random.default_rng(2)
    a = profile_vectors(rng.normal(size=(4, 30)))
    b = profile_vectors(rng.normal(size=(6, 30)))
    corr = a @ b.T
    best_total = max(sum(corr[i, j] for i, j in enumerate(cols)) for cols in itertools.permutations(range(6), 4))
    idx_a, idx_b, score = one_to_one(a, b)
    assert len(set(idx_b)) == 4
    np.testing.assert_allclose(score.sum(), best_total, rtol=1e-6)
    idx_b2, idx_a2, _ = one_to_one(b, a)  # taller than wide: every unit of the smaller set is used
    assert sorted(idx_a2) == [0, 1, 2, 3] and len(idx_b2) == 4


def test_layer_similarity_is_mean_best_correlation() -> None:
    a, b, _ = permuted_noisy_pair(32, 100, 3)
    rng = np.random.default_rng(4)
    other = profile_vectors(rng.normal(size=(20, 100)))
    layers_a, layers_b, matrix = layer_similarity({"conv1": a, "conv2": other}, {"c1": b, "c2": other})
    assert layers_a == ["conv1", "conv2"] and layers_b == ["c1", "c2"] and matrix.dtype == np.float32
    brute = [[np.mean([max(x @ y for y in ys) for x in xs]) for ys in (b, other)] for xs in (a, other)]
    np.testing.assert_allclose(matrix, brute, rtol=1e-5)
    assert matrix[0, 0] > 0.8 and matrix[0, 0] > matrix[0, 1]  # the same units match their layer
    assert matrix[1, 1] == pytest.approx(1.0, abs=1e-6)


def test_mismatched_probe_sets_are_rejected() -> None:
    with pytest.raises(ValueError, match="same p probe images"):
        best_matches(np.zeros((3, 10), np.float32), np.zeros((3, 11), np.float32))
    with pytest.raises(ValueError, match="empty"):
        one_to_one(np.zeros((0, 10), np.float32), np.zeros((3, 10), np.float32))
