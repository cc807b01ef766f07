"""Every neuron's index columns as one matrix: what ``similar --by indexes`` standardises and searches."""

from __future__ import annotations

import numpy as np

from onnx_nfi.names import INDEX_COLUMNS
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.evidence import strong_only


def index_table(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neuron ids [n], index values [n, len(INDEX_COLUMNS)] float64 with NaN for NULL, weak flags [n])
    of every neuron with at least one index value, sorted by id."""
    cols = store._con.execute(
        f"SELECT neuron_id, NOT ({strong_only(store)}) AS weak, "
        + ", ".join(f"CAST({c} AS DOUBLE) AS {c}" for c in INDEX_COLUMNS)
        + f" FROM neurons WHERE coalesce({', '.join(INDEX_COLUMNS)}) IS NOT NULL ORDER BY neuron_id"
    ).fetchnumpy()
    values = np.stack(
        [np.ma.filled(np.ma.asarray(cols[c], np.float64), np.nan) for c in INDEX_COLUMNS], axis=1
    ) if len(cols["neuron_id"]) else np.zeros((0, len(INDEX_COLUMNS)))
    return np.asarray(cols["neuron_id"], np.int64), values, np.asarray(cols["weak"], bool)
