"""Reads behind neuron search: every neuron's name (id, model, layer, alias, unit), every layer's
unit count, a model's neuron ids, and the full records (NF, top class, indexes) of chosen neurons.

A search resolves names and filters candidates on these, i.e. on DuckDB as it is now, so a neuron
replaced or removed since the vector index was built is never returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnx_nfi.names import INDEX_COLUMNS
from onnx_nfi.store.duckdb_store import Store


def neuron_names(store: Store) -> dict[str, np.ndarray]:
    """Every neuron as ``neuron_id``, ``model``, ``layer``, ``alias``, ``unit`` and ``has_nf`` (an NF is stored) columns."""
    return store.columns(
        "SELECT n.neuron_id, n.model, n.layer, l.alias, n.unit, n.nf IS NOT NULL AS has_nf "
        "FROM neurons n JOIN layers l USING (model, layer)"
    )


def layer_channels(store: Store) -> list[dict[str, Any]]:
    """Every layer's ``model``, ``layer``, ``alias`` and ``channels`` (its unit count)."""
    return store.rows("SELECT model, layer, alias, channels FROM layers")


def model_neuron_ids(store: Store, model: str) -> np.ndarray:
    """The neuron ids of ``model`` (int64)."""
    return np.asarray(store.columns("SELECT neuron_id FROM neurons WHERE model = ?", [model])["neuron_id"], np.int64)


def search_records(store: Store, neuron_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The neurons ``neuron_ids`` as a search shows them: name, ``neuron_id``, ``top_class``, the
    stored NF (``nf``, ``nf_height``, ``nf_width``) and every index column (None where NULL)."""
    return store.rows(
        "SELECT n.model, n.layer, l.alias, n.unit, n.neuron_id, n.top_class, n.nf, n.nf_height, n.nf_width, "
        + ", ".join(f"n.{c}" for c in INDEX_COLUMNS)
        + " FROM neurons n JOIN layers l USING (model, layer) WHERE n.neuron_id IN (SELECT unnest(?::BIGINT[]))",
        [list(neuron_ids)],
    )
