"""The tables that describe one model's analysis, read for comparison between runs.

Interrupted, resumed, sharded and merged runs must end with the same tables as one uninterrupted
run. Run ids, timestamps and neuron ids (database bookkeeping) are left out. The moment columns
(mean, std, active fraction) are compared to 1e-9 relative: a resumed or merged run adds the same
float64 values grouped differently (Chan's formula per batch group), which changes the last bits;
everything else, NF arrays and indexes included, must be equal exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb

#: table -> columns that identify and describe the analysis
TABLES = {
    "models": "model, sha256, input_height, input_width, layout, preprocessing, opset, n_layers",
    "images": "model, image_id, path, sha256, label, label_source",
    "layers": "*",
    "neurons": "* EXCLUDE (neuron_id)",
    "top_activations": "*",
    "class_frequencies": "*",
}
#: float64 moments whose summation grouping differs between a single run and a resumed/merged one
MOMENTS = ("mean_activation", "std_activation", "active_fraction")


def analysis_tables(db: Path, model: str) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every analysis table's rows of ``model``, in a fixed order."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table, columns in TABLES.items():
            cur = con.execute(f"SELECT {columns} FROM {table} WHERE model = ? ORDER BY ALL", [model])
            out[table] = ([d[0] for d in cur.description], cur.fetchall())
        cur = con.execute(
            "SELECT s.path, s.reason FROM skipped_images s JOIN runs r USING (run_id) WHERE r.model = ? ORDER BY ALL",
            [model],
        )
        out["skipped_images"] = (["path", "reason"], cur.fetchall())
        return out
    finally:
        con.close()


def assert_same_analysis(db: Path, reference: Path, model: str) -> None:
    """The analysis of ``model`` in ``db`` equals the one in ``reference`` (see the module docstring)."""
    got, want = analysis_tables(db, model), analysis_tables(reference, model)
    for table, (columns, rows) in want.items():
        assert got[table][0] == columns, table
        assert len(got[table][1]) == len(rows), f"{table}: {len(got[table][1])} rows, expected {len(rows)}"
        if table != "skipped_images":
            assert rows, f"{table} of the reference is empty: nothing would be compared"
        for got_row, want_row in zip(got[table][1], rows):
            for column, g, w in zip(columns, got_row, want_row):
                if column in MOMENTS and g is not None and w is not None:
                    assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12), (table, column, want_row[:3], g, w)
                else:
                    assert g == w, (table, column, want_row[:3], g, w)
