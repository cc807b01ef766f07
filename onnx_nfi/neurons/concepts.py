"""Concept labels with significance (docs/method.md, Concept labels), vectorised over a layer.

A neuron's top images carry labels; each label brings its concepts (``wordnet.WordNet.concepts``:
the label's synset and every hypernym). Per neuron and concept K over its labelled top images with
``a_j > 0``: the activation share ``f_K``, the count ``k_K`` among ``n'`` such images, the base rate
``pi_K`` over all labelled images analysed, the enrichment ``f_K / pi_K`` and the hypergeometric tail
``P(X >= k_K)`` of ``n'`` draws from them, Holm-corrected over the concepts tested for the neuron.
The label is the deepest concept with corrected p < 0.01 and ``f_K >= 0.5`` (ties: larger ``f_K``).

As in ``class_selectivity``, nothing is ``[U, concepts]``: entries are grouped into (unit, label)
pairs first (at most N a unit), and only those pairs are expanded into their concepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_nfi.neurons.class_selectivity import TOLERANCE
from onnx_nfi.neurons.wordnet import Concept, wordnet

#: A concept labels a neuron when its Holm-corrected p-value is below this ...
LABEL_P = 0.01
#: ... and it holds at least this share of the neuron's activation over its labelled top images.
LABEL_SHARE = 0.5
#: ``concept_labels`` keeps the rows whose uncorrected p-value is below this.
STORED_P = 0.05


@dataclass(frozen=True)
class ConceptSpace:
    """The concepts of a run's labels: ``concepts[k]``, the concept codes of each label code, and the
    base rate of every concept over all labelled images analysed."""

    labels: tuple[str, ...]
    concepts: tuple[Concept, ...]
    of_label: tuple[np.ndarray, ...]  # concept codes (int64) of each label code
    positives: np.ndarray  # int64 [K]: labelled images analysed that have concept k
    total: int  # labelled images analysed

    @classmethod
    def of(cls, label_counts: Mapping[str, int]) -> ConceptSpace:
        """From the number of analysed images of each label (its concepts read from WordNet)."""
        labels = tuple(sorted(label_counts))
        code: dict[tuple[str, str | None], int] = {}
        concepts: list[Concept] = []
        of_label = []
        for label in labels:
            codes = []
            for c in wordnet().concepts(label):
                key = (c.wnid or c.name, c.wnid)
                if key not in code:
                    code[key] = len(concepts)
                    concepts.append(c)
                codes.append(code[key])
            of_label.append(np.array(codes, np.int64))
        positives = np.zeros(len(concepts), np.int64)
        for label, codes in zip(labels, of_label):
            positives[codes] += int(label_counts[label])
        return cls(labels, tuple(concepts), tuple(of_label), positives, int(sum(label_counts.values())))


@dataclass(frozen=True)
class ConceptRows:
    """Per (unit, concept) tested, with p < ``STORED_P``: the statistics, one array each."""

    unit: np.ndarray
    concept: np.ndarray  # concept codes into ``ConceptSpace.concepts``
    share: np.ndarray
    top_count: np.ndarray
    labelled_top: np.ndarray
    base_rate: np.ndarray
    enrichment: np.ndarray
    p_value: np.ndarray
    p_holm: np.ndarray


@dataclass(frozen=True)
class ConceptLabels:
    """A layer's concept statistics: the stored rows, and per unit its label (code, -1 = none) and its
    corrected p-value (NaN without a label)."""

    rows: ConceptRows
    label: np.ndarray
    label_p: np.ndarray


def concept_labels(activations: np.ndarray, label_codes: np.ndarray, space: ConceptSpace) -> ConceptLabels:
    """The statistics of every concept of every neuron's labelled top images (``label_codes``: codes
    into ``space.labels``, -1 = unlabelled; columns in top-N order)."""
    a = np.asarray(activations, np.float64)
    n_units = a.shape[0]
    unit, rank = np.nonzero((a > 0) & (label_codes >= 0))
    weight, lab = a[unit, rank], label_codes[unit, rank]
    n_top = np.bincount(unit, minlength=n_units)
    totals = np.bincount(unit, weights=weight, minlength=n_units)
    # (unit, label) pairs, then each pair expanded into its label's concepts
    pairs, inverse = np.unique(unit * len(space.labels) + lab, return_inverse=True)
    pair_weight = np.bincount(inverse.reshape(-1), weights=weight)
    pair_count = np.bincount(inverse.reshape(-1))
    pair_unit, pair_label = pairs // len(space.labels), pairs % len(space.labels)
    lengths = np.array([c.size for c in space.of_label], np.int64)
    flat = np.concatenate(space.of_label)
    sizes = lengths[pair_label]
    e_unit = np.repeat(pair_unit, sizes)
    position = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    e_concept = flat[np.repeat(np.cumsum(lengths)[pair_label] - sizes, sizes) + position]
    keys, e_inverse = np.unique(e_unit * len(space.concepts) + e_concept, return_inverse=True)
    r_unit, r_concept = keys // len(space.concepts), keys % len(space.concepts)
    share = np.bincount(e_inverse.reshape(-1), weights=np.repeat(pair_weight, sizes)) / totals[r_unit]
    count = np.bincount(e_inverse.reshape(-1), weights=np.repeat(pair_count, sizes)).astype(np.int64)
    base = space.positives[r_concept] / space.total
    p = _tail(count, space.positives[r_concept], n_top[r_unit], space.total)
    p_holm = holm(r_unit, p)
    label, label_p = _labels(n_units, r_unit, r_concept, share, p_holm, space.concepts)
    keep = p < STORED_P
    rows = ConceptRows(
        r_unit[keep], r_concept[keep], share[keep], count[keep], n_top[r_unit][keep], base[keep],
        share[keep] / base[keep], p[keep], p_holm[keep],
    )
    return ConceptLabels(rows, label, label_p)


def _tail(k: np.ndarray, positives: np.ndarray, draws: np.ndarray, total: int) -> np.ndarray:
    """``P(X >= k)`` for X hypergeometric (``draws`` from ``total`` with ``positives`` successes), each
    distinct (k, positives, draws) computed once: a layer repeats few of them (draws <= N)."""
    from scipy.stats import hypergeom

    span = int(draws.max(initial=0)) + 1  # k <= draws < span, positives <= total
    _, first, inverse = np.unique((k * (total + 1) + positives) * span + draws, return_index=True, return_inverse=True)
    return hypergeom.sf(k[first] - 1, total, positives[first], draws[first])[inverse.reshape(-1)]


def holm(group: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Holm's step-down correction of ``p`` within each group (``group`` sorted ascending): the i-th
    smallest of m p-values becomes ``max_{j <= i} min(1, (m - j) p_(j))`` (0-based j)."""
    order = np.lexsort((p, group))
    g, ps = group[order], p[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, g.size])
    position = np.arange(g.size) - np.repeat(starts, sizes)
    scaled = np.minimum(1.0, (np.repeat(sizes, sizes) - position) * ps)
    out = np.empty_like(p)
    for lo, n in zip(starts, sizes):  # running maximum within each group
        scaled[lo : lo + n] = np.maximum.accumulate(scaled[lo : lo + n])
    out[order] = scaled
    return out


def _labels(
    n_units: int, unit: np.ndarray, concept: np.ndarray, share: np.ndarray, p_holm: np.ndarray,
    concepts: Sequence[Concept],
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the deepest qualifying concept (ties: larger share, then name) and its corrected p."""
    label, label_p = np.full(n_units, -1, np.int64), np.full(n_units, np.nan)
    best: dict[int, tuple[tuple[int, float, str], int]] = {}
    for i in np.flatnonzero((p_holm < LABEL_P) & (share >= LABEL_SHARE - TOLERANCE)):
        c = concepts[int(concept[i])]
        key = (-c.depth, -float(share[i]), c.name)
        if int(unit[i]) not in best or key < best[int(unit[i])][0]:
            best[int(unit[i])] = (key, int(i))
    for u, (_, i) in best.items():
        label[u], label_p[u] = concept[i], p_holm[i]
    return label, label_p
