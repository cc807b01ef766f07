"""The picture verbs: ``onnx-nfi nf`` (``nf --grid``: ``grid``), ``top``, ``card`` and ``summary``.

Each is a thin call into ``onnx_nfi.report.render``, which reads the database and draws; here a
neuron is named as in every other verb (``MODEL:LAYER:UNIT``) and ``db`` is keyword-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onnx_nfi.names import DEFAULT_DB, INDEX_COLUMNS, parse_neuron
from onnx_nfi.report import render
from onnx_nfi.report.render import PER_PAGE, Drawn


def nf(neuron: str, output: str | Path, *, db: render.Database = DEFAULT_DB, scale: int | None = None) -> Drawn:
    """``onnx-nfi nf``: one neuron's NF (``MODEL:LAYER:UNIT``), enlarged ``scale`` times (default: to
    at least 256 px), under a title naming it and its indexes, written to ``output``."""
    model, layer, unit = parse_neuron(neuron)
    return render.nf_png(model, layer, unit, output, db=db, scale=scale)


def grid(
    model: str, layer: str, output: str | Path, *, db: render.Database = DEFAULT_DB, order_by: str = "unit",
    descending: bool | None = None, limit: int | None = None, page: int = 1, per_page: int | None = None,
    include_weak: bool = False,
) -> Drawn:
    """``onnx-nfi nf MODEL:LAYER --grid``: page ``page`` of a layer's NFs in a labelled grid (``per_page``
    a page, default 256), by unit or by any neurons column (``order_by``; weak units left out of a column's
    order unless ``include_weak``), the first ``limit`` only when given."""
    return render.grid_png(
        model, layer, output, db=db, order_by=order_by, descending=descending, limit=limit, page=page,
        per_page=per_page or PER_PAGE, include_weak=include_weak,
    )


def top(
    model: str, layer: str, by: str, output: str | Path, *, db: render.Database = DEFAULT_DB, k: int = 16,
    lowest: bool = False, include_weak: bool = False,
) -> Drawn:
    """``onnx-nfi top``: the NFs of a layer's ``k`` highest (``lowest``: lowest) neurons by column ``by``
    (weak units left out unless ``include_weak``)."""
    return render.top_png(model, layer, by, output, db=db, k=k, lowest=lowest, include_weak=include_weak)


def card(
    neuron: str, output: str | Path, *, db: render.Database = DEFAULT_DB, top: int = 20,
    image_root: str | Path | None = None,
) -> Drawn:
    """``onnx-nfi card``: a neuron's (``MODEL:LAYER:UNIT``) NF beside its ``top`` image crops with rank,
    a/a1 and label (``image_root``: where images stored relative to their root are now)."""
    model, layer, unit = parse_neuron(neuron)
    return render.card_png(model, layer, unit, output, db=db, top=top, image_root=image_root)


@dataclass(frozen=True)
class SummaryPicture:
    """What ``summary`` drew, and the index columns it left out (no model has a value for them)."""

    path: Path
    missing: tuple[str, ...] = ()


def summary(
    output: str | Path, models: Sequence[str] = (), indexes: Sequence[str] = INDEX_COLUMNS, *,
    db: render.Database = DEFAULT_DB, names: bool = False,
) -> SummaryPicture:
    """``onnx-nfi summary``: each index column's per-layer distribution against relative depth, ``models``
    (default all) overlaid; ``names``: instead the share of live neurons with each top colour and with a
    concept label, per layer, one panel per model."""
    if names:
        return SummaryPicture(render.names_png(models, output, db=db))
    path, missing = render.summary_png(models, indexes, output, db=db)
    return SummaryPicture(path, tuple(missing))
