"""``onnx-nfi remove``: a whole model out of the database (every table that holds its rows, its
vectors and matches included), in one transaction, then out of the FAISS indexes beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnx_nfi.names import VECTOR_TABLES
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.vectors import sync_after_commit


@dataclass(frozen=True)
class RemoveSummary:
    """What ``remove`` deleted."""

    model: str
    neurons: int
    warnings: tuple[str, ...] = ()


def remove(db: str | Path, model: str) -> RemoveSummary:
    """Delete every row of ``model`` (neurons, vectors, matches, runs, …) in one transaction, then
    drop its vectors from the FAISS indexes."""
    with Store.open(db) as store:
        store.model_row(model)
        neurons = int(store._con.execute("SELECT count(*) FROM neurons WHERE model = ?", [model]).fetchone()[0])
        with store.transaction():
            for table in VECTOR_TABLES.values():
                if store.has_table(table):
                    store._con.execute(
                        f"DELETE FROM {table} WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [model]
                    )
            store._con.execute("DELETE FROM neuron_matches WHERE model_a = ? OR model_b = ?", [model, model])
            store._con.execute("DELETE FROM skipped_images WHERE run_id IN (SELECT run_id FROM runs WHERE model = ?)", [model])
            store._con.execute("DELETE FROM runs WHERE model = ?", [model])
            store.delete_model(model)
    return RemoveSummary(model, neurons, sync_after_commit(db))
