"""Response profiles and the matching of neurons across models (convergent learning).

Li, Yosinski, Clune, Lipson and Hopcroft, "Convergent learning: do different neural networks
learn the same representations?" (ICLR 2016) compare two networks unit by unit through the
correlation of their activations over the same images. Here a unit's *response profile* is its
score over a fixed probe set of images (docs/method.md §8), mean-centred and L2-normalised, so
the inner product of two profiles is their Pearson correlation and a matrix product gives every
pair at once. Li et al.'s two matchings follow: the *best* (one-to-many, "semi") match of every
unit, and the *one-to-one* match that maximises the total correlation (the assignment problem).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

# Rows of ``a`` per block when correlating, so an [n_a, n_b] float32 matrix never has to exist
# whole for large layers (4096 x 100k floats = 1.6 GB would; 1024 rows cap it at 400 MB).
_ROW_CHUNK = 1024
# A row whose spread is below float32 resolution of its own values has no measurable
# variation: its profile is the zero vector (correlation 0 with everything), never NaN.
_RELATIVE_STD_FLOOR = float(np.finfo(np.float32).eps)


def profile_vectors(scores: np.ndarray) -> np.ndarray:
    """Response profiles: each row of ``scores`` [n_units, p] mean-centred and L2-normalised.

    This is the one definition of a response profile in onnx-nfi; the inner product of two
    profiles is the Pearson correlation of the two units' scores over the ``p`` probe images.
    Rows without variation (dead or constant units) become all-zero vectors.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D array [n_units, p], got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    centred = scores - scores.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    p = max(scores.shape[1], 1)
    scale = np.abs(scores).max(axis=1, initial=0.0)
    varies = norms > _RELATIVE_STD_FLOOR * np.sqrt(p) * scale
    profiles = np.zeros_like(centred)
    profiles[varies] = centred[varies] / norms[varies, None]
    return profiles.astype(np.float32)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"profiles must be [n, p] arrays over the same p probe images, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"cannot match an empty set of profiles, got {a.shape} and {b.shape}")
    return a, b


def best_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every unit of ``a``, the unit of ``b`` it correlates with most, and that correlation.

    Returns (best_idx int64 [n_a], best_score float32 [n_a]); several units of ``a`` may share a
    match (Li et al.'s semi-matching). Ties go to the lowest index of ``b``.
    """
    a, b = _check_pair(a, b)
    best_idx = np.empty(len(a), dtype=np.int64)
    best_score = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), _ROW_CHUNK):
        corr = a[start : start + _ROW_CHUNK] @ b.T
        best_idx[start : start + _ROW_CHUNK] = corr.argmax(axis=1)
        best_score[start : start + _ROW_CHUNK] = corr.max(axis=1)
    return best_idx, best_score


def one_to_one(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one pairing of units of ``a`` and ``b`` with the largest total correlation.

    Returns (idx_a, idx_b, score), each [min(n_a, n_b)], sorted by ``idx_a``: the exact
    solution of the (rectangular) assignment problem, so the unmatched units of the larger set
    are those that fit least.
    """
    a, b = _check_pair(a, b)
    corr = a @ b.T
    idx_a, idx_b = linear_sum_assignment(corr, maximize=True)
    return idx_a.astype(np.int64), idx_b.astype(np.int64), corr[idx_a, idx_b].astype(np.float32)


def layer_similarity(
    blocks_a: Mapping[str, np.ndarray], blocks_b: Mapping[str, np.ndarray]
) -> tuple[list[str], list[str], np.ndarray]:
    """Mean best correlation of each layer of A with each layer of B.

    ``blocks_a`` and ``blocks_b`` map layer names to profile matrices. Entry [i, j] of the
    float32 matrix is the mean over the units of A's layer i of their best correlation in B's
    layer j; it is not symmetric (a small layer can be well explained by a large one and not
    the reverse). Rows and columns follow the mappings' order.
    """
    layers_a, layers_b = list(blocks_a), list(blocks_b)
    matrix = np.zeros((len(layers_a), len(layers_b)), dtype=np.float32)
    for i, name_a in enumerate(layers_a):
        for j, name_b in enumerate(layers_b):
            _, scores = best_matches(blocks_a[name_a], blocks_b[name_b])
            matrix[i, j] = scores.mean()
    return layers_a, layers_b, matrix
