"""A neuron's class evidence as a reader should meet it: the top-class share first, the paper's index beside it.

The two numbers answer different questions and disagree most on sparse units: a unit with 88.6 %
of its top weight on "cat" can have a class selectivity of 0.739, because the paper's index with
ρ = 1 counts every other class of an active top image, however small its weight (docs/method.md §6).
Shown alone or side by side without a word, the index reads as "not class-selective"; so the card
and the neuron page lead with the share (and the concept label, where there is one) and say in
one sentence what each number measures.
"""

from __future__ import annotations

import math
from typing import Any

#: What the top-class share measures, in one sentence.
SHARE_MEANS = "share: the part of the activation weight of the labelled active top images that is on the top class"
#: What the paper's class selectivity index measures, in one sentence.
INDEX_MEANS = (
    "class selectivity (N'−M)/(N'−1): how few classes it takes to cover all active top images; "
    "every extra class lowers it, however small its weight"
)


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def class_evidence(
    top_class: str | None, share: float | None, index: float | None, concept: str | None = None
) -> tuple[str, ...]:
    """The lines to show: the top class with its share (and concept), then the index with what both
    measure; empty when the unit has no class evidence (no labels, dead, or not computed)."""
    if not top_class or not _given(share):
        return ()
    head = f"top class {top_class}: {100 * float(share):.1f} % of the top images' weight"
    if concept:
        head += f" · concept {concept}"
    if not _given(index):
        return head, SHARE_MEANS
    return head, f"class selectivity {float(index):.3f} (the paper's index)", f"{SHARE_MEANS}; {INDEX_MEANS}"
