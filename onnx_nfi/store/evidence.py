"""The weak-evidence flags in DuckDB: written beside the neuron rows, read by every ranking.

The rule is ``neurons.evidence`` (docs/method.md §14); here are its inputs (each unit's largest
activation and how many of its stored top images are active) and the filters readers use. A
database written before the flags existed has no ``weak`` column when opened read-only: nothing
is flagged there until ``analyze`` or ``index`` writes the model again.
"""

from __future__ import annotations

import numpy as np

from onnx_nfi.neurons.evidence import weak_units
from onnx_nfi.store.duckdb_store import Store


def write_evidence(store: Store, model: str) -> int:
    """(Re)compute and store the weak flags of ``model``'s units (inside the caller's transaction);
    returns how many are weak."""
    cols = store.columns(
        "SELECT n.layer, n.unit, n.max_activation, coalesce(n.dead, false) AS dead, "
        "count(t.rank) FILTER (WHERE t.activation > 0) AS active_top, count(t.rank) AS top_count "
        "FROM neurons n LEFT JOIN top_activations t USING (model, layer, unit) WHERE n.model = ? "
        "GROUP BY n.layer, n.unit, n.max_activation, n.dead ORDER BY n.layer, n.unit",
        [model],
    )
    if not len(cols["unit"]):
        return 0
    run = store.rows(
        "SELECT least(r.top_n, r.images_seen) AS capacity FROM models m JOIN runs r USING (run_id) WHERE m.model = ?",
        [model],
    )
    capacity = run[0]["capacity"] if run and run[0]["capacity"] is not None else int(cols["top_count"].max())
    flags = weak_units(cols["layer"], cols["max_activation"], cols["active_top"], cols["dead"], capacity)
    store.update_neurons(model, {
        "layer": np.asarray(cols["layer"], dtype=object), "unit": np.asarray(cols["unit"], np.int32),
        "weak": flags.weak, "weak_reason": flags.reason,
    })
    return int(flags.weak.sum())


def has_flags(store: Store) -> bool:
    """Whether the database has the ``weak`` column (one opened read-only from before it may not)."""
    return bool(store._con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'neurons' AND column_name = 'weak'"
    ).fetchone()[0])


def strong_only(store: Store) -> str:
    """A WHERE condition on ``neurons`` columns that keeps the units that are not weak."""
    return "NOT coalesce(weak, false)" if has_flags(store) else "true"


def weak_reason_sql(store: Store) -> str:
    """A SELECT expression for a unit's weak reason (NULL where not weak, or not flagged)."""
    return "CASE WHEN weak THEN weak_reason END" if has_flags(store) else "CAST(NULL AS VARCHAR)"


def weak_ids(store: Store) -> np.ndarray:
    """The neuron ids flagged weak, sorted (searches leave them out)."""
    if not has_flags(store):
        return np.empty(0, np.int64)
    ids = store.columns("SELECT neuron_id FROM neurons WHERE weak ORDER BY neuron_id")["neuron_id"]
    return np.asarray(ids, np.int64)
