"""Class selectivity index (docs/method.md §6), vectorised over the neurons of a layer.

Each neuron has its own top-N list, so the input is a pair of ``[U, N]`` arrays: the scores of
each neuron's top-N images (column 0 = the highest-ranked image) and those images' label codes
(``-1`` = unlabelled). Only images that are labelled *and* have ``a_j > 0`` take part.

The per-neuron class sets are small (at most N classes) while the label space may be large
(1000 ImageNet classes), so the computation never builds a ``[U, n_labels]`` matrix: it groups
``(unit, label)`` pairs sparsely and pads each neuron's distinct classes into a ``[U, K]`` matrix
with ``K <= N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_nfi.errors import SelectivityOptionError

#: Tolerance for "cumulative frequency reaches rho", "f_c >= population threshold" and ties in
#: the top class: frequencies are ratios of float sums, so an exact comparison would make
#: e.g. ten classes of f = 0.1 miss rho = 1.0 by one ulp.
TOLERANCE = 1e-9


@dataclass(frozen=True, eq=False)
class ClassDistribution:
    """The activation-weighted class frequencies ``f_c`` of every neuron, as sparse triples.

    Row ``i`` says that neuron ``unit[i]`` gives frequency ``frequency[i]`` to label code
    ``label[i]``. Only classes with ``f_c > 0`` appear. Rows are sorted by unit, then by
    frequency (descending), exact ties broken by the rank of the class's first image in the
    top-N list.
    """

    unit: np.ndarray  # int64 [P]
    label: np.ndarray  # int64 [P]
    frequency: np.ndarray  # float64 [P]

    def of(self, unit: int) -> list[tuple[int, float]]:
        """``[(label, f_c), ...]`` of one neuron, most frequent first; empty when undefined."""
        rows = self.unit == unit
        return [(int(c), float(f)) for c, f in zip(self.label[rows], self.frequency[rows])]


@dataclass(frozen=True, eq=False)
class ClassSelectivity:
    """Class selectivity of ``U`` neurons; every array has one entry per neuron.

    ``index`` is NaN where undefined (dead neuron, or fewer than two labelled images with
    ``a_j > 0``). The distribution-based fields are defined as soon as one such image exists;
    where none does, ``top_class`` is -1, ``top_class_frequency`` NaN and ``population_code`` 0.
    """

    index: np.ndarray  # float64 [U], CSI_class = (N' - M) / (N' - 1)
    top_class: np.ndarray  # int64 [U], label code with the largest f_c
    top_class_frequency: np.ndarray  # float64 [U]
    population_code: np.ndarray  # int64 [U], #{c : f_c >= population_threshold}
    n_images: np.ndarray  # int64 [U], N' = labelled top-N images with a_j > 0
    n_classes: np.ndarray  # int64 [U], M = classes needed to reach rho (0 when N' = 0)
    distribution: ClassDistribution


def class_selectivity(
    activations: np.ndarray,
    labels: np.ndarray,
    rho: float = 1.0,
    population_threshold: float = 0.1,
) -> ClassSelectivity:
    """Compute CSI_class, the class distribution, top class and population code per neuron.

    ``activations[u, j]`` is the score of neuron ``u``'s ``j``-th top image and ``labels[u, j]``
    its label code (-1 = unlabelled). Columns must be in top-N rank order: a tie in the top
    class goes to the class whose first image ranks highest (appears first in the list), which
    keeps the result independent of how label codes happen to be numbered.
    """
    a = np.asarray(activations, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    if a.ndim != 2 or a.shape != lab.shape:
        raise ValueError(f"activations {a.shape} and labels {lab.shape} must both be [U, N]")
    _check_options(rho, population_threshold)
    n_units = a.shape[0]
    n_images, freq, code, present = _class_table(a, lab)

    # Top class: among classes within TOLERANCE of the maximum, the first to appear.
    best = freq.max(axis=1, keepdims=True)
    top_column = np.argmax(present & (freq >= best - TOLERANCE), axis=1)
    has_any = n_images > 0
    top_class = np.where(has_any, code[np.arange(n_units), top_column], -1)
    top_freq = np.where(has_any, best[:, 0], np.nan)

    # M: number of classes, sorted by f_c descending, until the cumulative sum reaches rho.
    sorted_freq = -np.sort(-freq, axis=1)
    cum_before = np.cumsum(sorted_freq, axis=1) - sorted_freq
    n_classes = np.sum(present & (cum_before < rho - TOLERANCE), axis=1).astype(np.int64)

    population = np.sum(present & (freq >= population_threshold - TOLERANCE), axis=1).astype(np.int64)

    with np.errstate(invalid="ignore", divide="ignore"):
        index = (n_images - n_classes) / (n_images - 1.0)
    index = np.where(n_images >= 2, index, np.nan)

    return ClassSelectivity(
        index=index,
        top_class=top_class.astype(np.int64),
        top_class_frequency=top_freq,
        population_code=population,
        n_images=n_images,
        n_classes=n_classes,
        distribution=_distribution(freq, code, present),
    )


def _check_options(rho: float, population_threshold: float) -> None:
    if not 0.0 < rho <= 1.0:
        raise SelectivityOptionError(f"rho must lie in (0, 1], got {rho}; use e.g. --rho 1.0")
    if not 0.0 < population_threshold <= 1.0:
        raise SelectivityOptionError(
            f"population threshold must lie in (0, 1], got {population_threshold}; use e.g. 0.1"
        )


def _class_table(a: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per unit: how many top images count (active and labelled), and its classes padded into
    ``[U, K]``: frequency ``f_c``, label code and presence, columns in order of first appearance
    (so a column's position is its class's rank in the top list)."""
    n_units = a.shape[0]
    # A dead neuron (max <= 0) has no a_j > 0, so the mask alone already leaves it out.
    valid = (a > 0) & (lab >= 0)
    unit_of, rank_of = np.nonzero(valid)  # row-major: by unit, then by rank
    weight = a[unit_of, rank_of]
    label_of = lab[unit_of, rank_of]

    n_images = np.bincount(unit_of, minlength=n_units).astype(np.int64)
    totals = np.bincount(unit_of, weights=weight, minlength=n_units)

    # Group (unit, label) pairs; return_index gives each pair's first row, i.e. its best rank.
    key = unit_of * (int(label_of.max(initial=0)) + 1) + label_of
    _, first_row, pair_of_row = np.unique(key, return_index=True, return_inverse=True)
    pair_weight = np.bincount(pair_of_row, weights=weight)
    # Order pairs by first appearance so a column's position is its class's rank in the list.
    order = np.argsort(first_row, kind="stable")
    pair_unit = unit_of[first_row[order]]
    pair_label = label_of[first_row[order]]
    pair_freq = pair_weight[order] / totals[pair_unit]

    classes_per_unit = np.bincount(pair_unit, minlength=n_units)
    width = max(int(classes_per_unit.max(initial=0)), 1)
    group_start = np.concatenate(([0], np.cumsum(classes_per_unit)[:-1]))
    column = np.arange(pair_unit.size) - group_start[pair_unit]
    freq = np.zeros((n_units, width))
    freq[pair_unit, column] = pair_freq
    code = np.full((n_units, width), -1, dtype=np.int64)
    code[pair_unit, column] = pair_label
    present = np.arange(width)[None, :] < classes_per_unit[:, None]
    return n_images, freq, code, present


def _distribution(freq: np.ndarray, code: np.ndarray, present: np.ndarray) -> ClassDistribution:
    """Flatten the padded ``[U, K]`` matrices into triples sorted as ``ClassDistribution`` says."""
    units, columns = np.nonzero(present)
    f = freq[units, columns]
    # lexsort: last key is primary. Columns are already in first-appearance order.
    order = np.lexsort((columns, -f, units))
    return ClassDistribution(
        unit=units[order].astype(np.int64),
        label=code[units[order], columns[order]],
        frequency=f[order],
    )
