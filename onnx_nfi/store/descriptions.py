"""Reads behind neuron descriptions and word search: each neuron's top colour and concept label with
the statistics of that label, the qualifying concept rows and the colour names of all neurons.

A description needs the label's share and enrichment, which live in ``concept_labels``; the row is
the one whose corrected p-value is the label's (two synsets may share a display name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onnx_nfi.names import INDEX_COLUMNS
from onnx_nfi.store.duckdb_store import Store

#: The columns of a described neuron (``neuron_descriptions``).
_DESCRIBED = (
    "SELECT n.model, n.layer, l.alias, n.unit, n.neuron_id, n.dead, n.top_color, n.top_color_share, n.concept, "
    "n.concept_p, c.share AS concept_share, c.enrichment AS concept_enrichment, c.top_count AS concept_count, "
    "n.top_class, n.top_class_frequency, " + ", ".join(f"n.{c}" for c in INDEX_COLUMNS) + " "
    "FROM neurons n JOIN layers l USING (model, layer) LEFT JOIN concept_labels c "
    "ON c.neuron_id = n.neuron_id AND c.concept = n.concept AND c.p_holm = n.concept_p "
)


def neuron_description(store: Store, model: str, layer: str, unit: int) -> dict[str, Any] | None:
    """One neuron's description columns (layer: tensor name or alias); None when no such unit."""
    rows = store.rows(_DESCRIBED + "WHERE n.model = ? AND (n.layer = ? OR l.alias = ?) AND n.unit = ?",
                      [model, layer, layer, unit])
    return rows[0] if rows else None


def described_neurons(store: Store, models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every neuron with a top colour or a concept label (of ``models``, default all), by model, depth, unit."""
    where = "WHERE (n.top_color IS NOT NULL OR n.concept IS NOT NULL)"
    if models:
        where += " AND n.model IN (SELECT unnest(?::VARCHAR[]))"
    return store.rows(_DESCRIBED + where + " ORDER BY n.model, l.depth, n.unit", [list(models)] if models else [])


def layer_descriptions(store: Store, model: str, layer: str) -> list[dict[str, Any]]:
    """The description columns of every neuron of a layer (tensor name), by unit; none before concepts exist."""
    if not store.has_table("concept_labels"):
        return []
    return store.rows(_DESCRIBED + "WHERE n.model = ? AND n.layer = ? ORDER BY n.unit", [model, layer])


def descriptions_of(store: Store, neuron_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The description columns of the given neurons, by neuron id."""
    rows = store.rows(_DESCRIBED + "WHERE n.neuron_id IN (SELECT unnest(?::BIGINT[]))", [[int(i) for i in neuron_ids]])
    return {int(r["neuron_id"]): r for r in rows}


def qualifying_concepts(store: Store, max_p: float, min_share: float) -> list[dict[str, Any]]:
    """Concept rows that would label their neuron (corrected p < ``max_p``, share >= ``min_share``), with
    the neuron's model, layer and alias."""
    return store.rows(
        "SELECT n.neuron_id, n.model, n.layer, l.alias, n.unit, c.concept, c.wnid, c.share, c.p_holm "
        "FROM concept_labels c JOIN neurons n USING (neuron_id) JOIN layers l USING (model, layer) "
        "WHERE c.p_holm < ? AND c.share >= ? ORDER BY c.neuron_id, c.concept",
        [max_p, min_share],
    )


def neuron_colors(store: Store, colors: Sequence[str], min_share: float) -> list[dict[str, Any]]:
    """``color_names`` rows of the given colour terms with share >= ``min_share``, with the neuron's names."""
    return store.rows(
        "SELECT n.neuron_id, n.model, n.layer, l.alias, n.unit, c.color, c.share "
        "FROM color_names c JOIN neurons n USING (neuron_id) JOIN layers l USING (model, layer) "
        "WHERE c.color IN (SELECT unnest(?::VARCHAR[])) AND c.share >= ? ORDER BY c.neuron_id",
        [list(colors), min_share],
    )


def concept_names(store: Store) -> list[str]:
    """Every concept name stored (the terms a misspelt search word is compared with)."""
    return [r["concept"] for r in store.rows("SELECT DISTINCT concept FROM concept_labels ORDER BY concept")]
