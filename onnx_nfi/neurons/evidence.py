"""Which live units have too little evidence for their indexes to mean anything (docs/method.md §14).

A unit that fired on one of its top images, or whose strongest response is a sliver of what its
layer's units reach, still gets an NF and indexes; but they are computed from a few near-zero
crops and land at the extremes (a colour index of 201.8 from one activation of 0.001), where every
ranking would put them first. Such a unit is flagged *weak* with the reason in one line; rankings
leave it out unless asked to include it. Dead units (never fired) are not weak: they are dead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A live unit needs at least this many top images with a positive activation (fewer when the run's
#: top-N, or its number of images, is smaller: a unit that fired on every image it could is not short
#: of evidence).
MIN_ACTIVE_TOP = 5
#: ... and a largest activation of at least this fraction of the median largest activation of its
#: layer's live units.
MIN_MAX_FRACTION = 0.05


@dataclass(frozen=True)
class Evidence:
    """Per unit: flagged weak, and why (None where not weak)."""

    weak: np.ndarray  # bool [n]
    reason: np.ndarray  # object [n]: str or None


def weak_units(
    layer: np.ndarray, max_activation: np.ndarray, active_top: np.ndarray, dead: np.ndarray, capacity: int
) -> Evidence:
    """The weak flags of a model's units from their layer, largest activation, number of top images
    with activation > 0 and dead flag (arrays of one length), and how many top images a unit could
    have (the run's ``min(top_n, images seen)``)."""
    layer = np.asarray(layer).astype(str)
    best = np.asarray(max_activation, np.float64)
    active = np.asarray(active_top, np.int64)
    dead = np.asarray(dead, bool)
    needed = min(MIN_ACTIVE_TOP, max(int(capacity), 1))
    median = np.full(best.shape, np.nan)
    for name in np.unique(layer):
        live = (layer == name) & ~dead
        if live.any():
            median[layer == name] = np.median(best[live])
    few = ~dead & (active < needed)
    faint = ~dead & (median > 0) & (best < MIN_MAX_FRACTION * median)
    reason = np.full(best.shape, None, dtype=object)
    for k in np.flatnonzero(few | faint):
        parts = []
        if few[k]:
            parts.append(f"active on {active[k]} of its top images (fewer than {needed})")
        if faint[k]:
            parts.append(
                f"largest activation {best[k]:.3g} is {100 * best[k] / median[k]:.1f} % of its layer's median "
                f"unit maximum {median[k]:.3g} (below {100 * MIN_MAX_FRACTION:g} %)"
            )
        reason[k] = "; ".join(parts)
    return Evidence(few | faint, reason)
