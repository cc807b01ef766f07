"""The three search vectors of a neuron (docs/method.md §8), each a unit vector or all zeros.

Response profiles and NF embeddings are L2-normalised so that one inner product compares two
neurons: for response profiles it is the Pearson correlation over the probe set, for NF embeddings
the correlation of the two (resized) pictures. Index vectors keep their magnitude (see
:func:`index_vectors`). A neuron
with nothing to compare (dead, constant, no NF, no index) gets the zero vector, which callers do
not store or search: a zero vector would score 0 against everything and only add noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from onnx_nfi.neurons.matching import profile_vectors
from onnx_nfi.names import INDEX_COLUMNS

#: NF embedding: NFs (any RF size) are resampled to this common side, RGB.
NF_SIDE = 16
NF_DIM = NF_SIDE * NF_SIDE * 3
#: Index vector components, in order.
INDEX_DIM = len(INDEX_COLUMNS)
#: The index vector is centred on this value so that "selective" (1) and "not selective" (0) point
#: in opposite directions; an unmeasured (NULL) index sits at the centre and contributes nothing.
INDEX_CENTRE = 0.5


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows mean-centred and L2-normalised; rows without variation (or non-finite) become zero."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=1, keepdims=True)
    return _normalised(centred)


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    scale = np.abs(x).max(axis=1, initial=0.0)
    ok = np.isfinite(norms) & (norms > np.finfo(np.float32).eps * np.sqrt(max(x.shape[1], 1)) * scale) & (norms > 0)
    out = np.zeros(x.shape, np.float32)
    out[ok] = (x[ok] / norms[ok, None]).astype(np.float32)
    return out


def response_vectors(probe_scores: np.ndarray) -> np.ndarray:
    """Response profiles ``[C, P]`` from one layer's probe scores ``[P, C]`` (matching.profile_vectors)."""
    return profile_vectors(np.asarray(probe_scores).T)


def nf_embeddings(nfs: np.ndarray) -> np.ndarray:
    """NF embeddings ``[C, 768]`` from one layer's NFs ``[C, H, W, 3]`` (NaN NF = dead -> zeros).

    Each NF is resized to 16x16 with area averaging (``cv2.INTER_AREA``: a box filter when
    shrinking, so large receptive fields are summarised, not aliased), then its 768 values are
    mean-centred and L2-normalised, so brightness and contrast do not count, only the pattern.
    """
    nfs = np.asarray(nfs, dtype=np.float32)
    out = np.zeros((len(nfs), NF_DIM), np.float64)
    valid = ~np.isnan(nfs).any(axis=(1, 2, 3)) if nfs.size else np.zeros(len(nfs), bool)
    for u in np.flatnonzero(valid):
        out[u] = cv2.resize(nfs[u], (NF_SIDE, NF_SIDE), interpolation=cv2.INTER_AREA).reshape(-1)
    vectors = _unit_rows(out)
    vectors[~valid] = 0.0
    return vectors


def index_vectors(columns: Mapping[str, Sequence[float | None] | np.ndarray]) -> np.ndarray:
    """Index vectors ``[n, 5]`` from the ``neurons`` index columns (``INDEX_COLUMNS`` order).

    Component k is ``index_k - 0.5`` (0 for NULL/NaN), not normalised: the magnitude says how far
    from "half selective" a neuron is, and a unit-length vector of two indexes would leave only a
    direction (many neurons tied at 1.0). Centring by a constant (not by the vector's own mean)
    keeps the meaning of each axis. A neuron without any index (dead) gets the zero vector.
    ``similar --by indexes`` does not search these: it standardises each index over the database
    (``search/index_space.py``).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    raw = np.zeros((n, INDEX_DIM), np.float64)
    for k, name in enumerate(INDEX_COLUMNS):
        if name in columns:
            values = np.array([np.nan if v is None else v for v in columns[name]], dtype=np.float64)
            raw[:, k] = np.where(np.isfinite(values), values - INDEX_CENTRE, 0.0)
    return raw.astype(np.float32)


def has_vector(vectors: np.ndarray) -> np.ndarray:
    """Rows that are real (non-zero) vectors: the ones worth storing and searching."""
    return np.any(vectors != 0, axis=1)
