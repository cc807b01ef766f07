"""Neurons' colour names in DuckDB: the ``color_names`` rows written, and read back by depth.

``color_names(neuron_id, color, share)`` holds every colour term with share >= 0.01 of a neuron's
distribution (docs/method.md §9); ``neurons.top_color`` and ``top_color_share`` its largest, which
``write_indexes`` sets with the other index columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_nfi.neurons.color_names import stored_names
from onnx_nfi.store.duckdb_store import Store


def write_color_names(store: Store, model: str, distributions: Mapping[str, np.ndarray]) -> None:
    """Replace the ``color_names`` rows of ``model``'s neurons with those of ``distributions``
    (per layer ``[C, 11]``), inside the caller's transaction."""
    store._con.execute(
        "DELETE FROM color_names WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [model]
    )
    for layer, (units, terms, shares) in stored_names(distributions).items():
        layers = np.full(units.size, layer, dtype=object)
        frame = {"layer": layers, "unit": units, "color": terms, "share": shares}  # noqa: F841  (scanned by name)
        store._con.execute(
            "INSERT INTO color_names (neuron_id, color, share) SELECT n.neuron_id, f.color, f.share FROM frame f "
            "JOIN neurons n ON n.model = ? AND n.layer = f.layer AND n.unit = f.unit "
            "ORDER BY n.neuron_id, f.share DESC",
            [model],
        )


@dataclass(frozen=True)
class LayerNames:
    """One layer of a model: its relative depth, how many live neurons it has, how many of them have
    each top colour (term -> count) and how many a concept label."""

    model: str
    alias: str
    relative_depth: float
    live: int
    top_colors: dict[str, int]
    concepts: int


def names_by_depth(store: Store, models: Sequence[str]) -> list[LayerNames]:
    """Per layer of ``models`` (all when empty), in model and depth order, the counts of top colours
    and concept labels among its live neurons."""
    where, params = ("WHERE l.model IN (SELECT unnest(?))", [list(models)]) if models else ("", [])
    rows = store.rows(
        "SELECT l.model, l.alias, l.relative_depth, l.depth, count(*) FILTER (WHERE NOT n.dead) AS live, "
        "count(n.concept) FILTER (WHERE NOT n.dead) AS concepts, "
        "list(n.top_color) FILTER (WHERE NOT n.dead AND n.top_color IS NOT NULL) AS colors "
        f"FROM layers l JOIN neurons n USING (model, layer) {where} GROUP BY ALL ORDER BY l.model, l.depth",
        params,
    )
    out = []
    for r in rows:
        colors: dict[str, int] = {}
        for term in r["colors"] or ():
            colors[term] = colors.get(term, 0) + 1
        out.append(LayerNames(
            r["model"], r["alias"], float(r["relative_depth"]), int(r["live"]), colors, int(r["concepts"])
        ))
    return out
