"""``onnx-nfi similar``: the neurons nearest to one neuron, and their picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from onnx_nfi import search
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.report import pictures, render


def similar(
    neuron: str, *, db: str | Path = DEFAULT_DB, by: str = "response", k: int = 10, models: Sequence[str] = (),
    layers: Sequence[str] = (), other_models: bool = False, picture: str | Path | None = None,
    include_weak: bool = False,
) -> search.SimilarResult:
    """``onnx-nfi similar``: the ``k`` neurons nearest to ``neuron`` (``MODEL:LAYER:UNIT``) by ``by``
    (``response``, ``nf`` or ``indexes``), among ``models`` and ``layers``; ``picture`` gets the query's
    NF beside theirs (checked before the search); weak units are hits only with ``include_weak``."""
    if picture is not None:
        pictures.check_png(picture)
    result = search.similar(db, neuron, by=by, k=k, models=models, layers=layers, other_models=other_models,
                            include_weak=include_weak)
    if picture is not None:
        render.similar_png(result, picture)
    return result
