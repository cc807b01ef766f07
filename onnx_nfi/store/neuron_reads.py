"""Reads behind a neuron's card and a layer's NF grid: one neuron's row, its top images, a layer's
units ranked by a column, a column's values per layer, and the columns a ranking may name.

Every read goes through ``neurons_with_relevance`` (relevance columns rank like index columns) and
keeps NULLs: a column read as numpy comes back masked where NULL, a row holds None.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.evidence import strong_only, weak_reason_sql
from onnx_nfi.store.relevance import neurons_with_relevance


def neuron_row(store: Store, model: str, layer: str, unit: int) -> dict[str, Any] | None:
    """Every column of one neuron (layer: tensor name); None when there is no such unit."""
    rows = store.rows(
        f"SELECT * FROM {neurons_with_relevance(store)} WHERE model = ? AND layer = ? AND unit = ?", [model, layer, unit]
    )
    return rows[0] if rows else None


def top_image_rows(store: Store, model: str, layer: str, unit: int, top: int) -> list[dict[str, Any]]:
    """A neuron's first ``top`` top images by rank: ``rank``, ``image_id``, ``y``, ``x``, ``activation``
    and the image's ``path``, ``label``, ``sha256``."""
    return store.rows(
        "SELECT t.rank, t.image_id, t.y, t.x, t.activation, i.path, i.label, i.sha256 FROM top_activations t "
        "JOIN images i ON i.model = t.model AND i.image_id = t.image_id "
        "WHERE t.model = ? AND t.layer = ? AND t.unit = ? ORDER BY t.rank LIMIT ?",
        [model, layer, unit, top],
    )


def _ranked_where(store: Store, column: str | None, only_valued: bool, include_weak: bool) -> tuple[str, str]:
    """(WHERE clause of a layer's units, the condition that keeps the rankable ones): a ranking by a
    column leaves weak units out unless ``include_weak``."""
    where = f"WHERE model = ? AND layer = ?{f' AND {column} IS NOT NULL' if only_valued and column else ''}"
    keep = strong_only(store) if column and not include_weak else "true"
    return where, keep


def ranked_counts(
    store: Store, model: str, layer: str, column: str | None, *, only_valued: bool, include_weak: bool
) -> tuple[int, int]:
    """(units a ranking by ``column`` keeps, units it leaves out as weak) of one layer."""
    where, keep = _ranked_where(store, column, only_valued, include_weak)
    rows = store.rows(
        f"SELECT count(*) FILTER (WHERE {keep}) AS kept, count(*) AS every FROM {neurons_with_relevance(store)} {where}",
        [model, layer],
    )
    return int(rows[0]["kept"]), int(rows[0]["every"]) - int(rows[0]["kept"])


def ranked_nfs(
    store: Store,
    model: str,
    layer: str,
    column: str | None,
    *,
    descending: bool,
    only_valued: bool,
    include_weak: bool,
    start: int,
    count: int,
) -> dict[str, np.ndarray]:
    """``count`` units of one layer from ``start`` in the order of ``column`` (None: unit; NULLs last,
    ties by unit): ``unit``, ``nf``, ``nf_height``, ``nf_width``, ``saturated_top`` (NULL when dead),
    ``weak`` (the reason, NULL when not weak) and ``value`` when ranked by a column (masked where NULL)."""
    where, keep = _ranked_where(store, column, only_valued, include_weak)
    sql = (
        "SELECT unit, nf, nf_height, nf_width, CASE WHEN NOT dead THEN saturated_top END AS saturated_top, "
        f"{weak_reason_sql(store)} AS weak"
        f"{', ' + column + ' AS value' if column else ''} FROM {neurons_with_relevance(store)} "
        f"{where} AND {keep} ORDER BY {column or 'unit'} {'DESC' if descending else 'ASC'} NULLS LAST, unit"
        f" LIMIT {max(0, int(count))} OFFSET {int(start)}"
    )
    return store._con.execute(sql, [model, layer]).fetchnumpy()  # masked arrays keep NULLs


def values_by_layer(store: Store, model: str, column: str) -> dict[str, np.ndarray]:
    """The model's non-NULL values of ``column`` as ``layer`` and ``v`` (float64) arrays."""
    return store.columns(
        f"SELECT layer, CAST({column} AS DOUBLE) AS v FROM {neurons_with_relevance(store)} "
        f"WHERE model = ? AND {column} IS NOT NULL",
        [model],
    )


def neuron_column_types(store: Store) -> dict[str, str]:
    """Column name -> DuckDB type of the neuron rows a ranking reads (relevance columns included)."""
    return {r["column_name"]: r["column_type"] for r in store.rows(f"DESCRIBE {neurons_with_relevance(store)}")}
