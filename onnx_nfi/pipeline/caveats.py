"""What the numbers of a finished analysis have to be read with, said in its summary rather than left
for the user to find: units whose top activations tie (their order and crops come from the
pre-activation or from image order, docs/method.md §2 "Saturating activations") and index values
outside [0, 1] (the colour and shape indexes are not clipped, §5 and §7 "Range")."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from onnx_nfi.names import INDEXES
from onnx_nfi.neurons.indexes import IndexResult
from onnx_nfi.scan.topn import TopN


def caveats(topns: Iterable[TopN], indexes: IndexResult | None) -> tuple[str, ...]:
    """The summary's warnings about tied top activations and out-of-range index values (none when
    there are neither), and the index passes' notes (concepts asked of unlabelled images). Counts are
    over live units, as ``layer_summary.saturated`` counts them."""
    return (*_tied(topns), *_out_of_range(indexes), *(indexes.notes if indexes is not None else ()))


def _tied(topns: Iterable[TopN]) -> tuple[str, ...]:
    """Live units with more than one top entry at their largest score, and those with all of them."""
    live = tied = whole = 0
    for top in topns:
        alive = top.scores[:, 0] > 0
        shared = top.saturated_top()
        ties = alive & (shared > 1)
        live, tied = live + int(alive.sum()), tied + int(ties.sum())
        whole += int((ties & (shared == (top.ids >= 0).sum(axis=1))).sum())
    if not tied:
        return ()
    return (
        f"{tied} of {live} live units have tied top activations, {whole} of them with every top image tied "
        "(neurons.saturated_top > 1; per layer: layer_summary.saturated): their ranking and crops come from the "
        "pre-activation where it differs, else from image order (docs/method.md §2, Saturating activations)",
    )


def _out_of_range(indexes: IndexResult | None) -> tuple[str, ...]:
    """Per selectivity index, the values below 0 and above 1 (undefined ones, NaN, are neither), with
    the section of docs/method.md that states its range."""
    if indexes is None:
        return ()
    out = []
    for spec in (s for s in INDEXES.values() if s.selectivity):
        column = spec.columns[0].name
        parts = [np.asarray(c[column], np.float64) for c in indexes.columns.values() if column in c]
        values = np.concatenate(parts) if parts else np.empty(0)
        below, above = int((values < 0).sum()), int((values > 1).sum())
        if below or above:
            out.append(
                f"{column} of {below + above} unit(s) is outside [0, 1] ({below} below 0, {above} above 1); it is not "
                f"clipped: see docs/method.md {spec.section}, Range"
            )
    return tuple(out)
