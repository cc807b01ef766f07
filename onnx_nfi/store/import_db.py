"""``onnx-nfi import``: copy models analysed in another database into this one, in one transaction.

Analyses made on different machines (or shards merged on a cluster) end up in one file. Neuron
and run ids are fresh ids of this database (ids are never reused), the search vectors follow
their neurons, and the FAISS indexes are brought in step after the commit. Response profiles are
comparable only over the same probe images: they are copied when both databases share the probe
set (or this one has none yet, and takes the other's); otherwise they are left out and the
summary says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onnx_nfi.errors import StoreError
from onnx_nfi.store.duckdb_store import NEURON_TABLES, Store
from onnx_nfi.store.evidence import write_evidence
from onnx_nfi.store.nf_storage import FLOAT_TO_STORED
from onnx_nfi.store.relevance import import_relevance
from onnx_nfi.store.schema import response_vectors_sql
from onnx_nfi.store.vectors import read_probe, save_probe, sync_after_commit

#: Tables copied as they are, by model.
_PLAIN = ("images", "layers", "top_activations", "class_frequencies")
#: Search-vector tables keyed by neuron id (response vectors are handled with the probe set; colour
#: names, also keyed by neuron id, are copied when the other database has them).
_VECTORS = ("nf_vectors", "index_vectors")


@dataclass(frozen=True)
class ImportSummary:
    """What ``import_models`` copied."""

    models: tuple[str, ...]
    neurons: int
    responses: bool  # whether response profiles came along (same probe set)
    warnings: tuple[str, ...] = ()


def import_models(db: str | Path, other: str | Path, models: Sequence[str] = ()) -> ImportSummary:
    """Copy ``models`` (default: all) of database ``other`` into ``db``; a name present in both is refused."""
    other = Path(other)
    with Store.open(other, read_only=True) as src:
        names = list(models) or src.models()
        for m in names:
            src.model_row(m)  # NotFoundError names what is there
        theirs = read_probe(src)
        has_responses = src.has_table("response_vectors")
    if Path(db).resolve() == other.resolve():
        raise StoreError(f"{other} is the database itself; import another file")
    with Store.open(db) as store:
        clash = sorted(set(names) & set(store.models()))
        if clash:
            raise StoreError(
                f"{db} already holds {', '.join(clash)}; remove it first (onnx-nfi remove NAME) or import other models"
            )
        ours = read_probe(store)
        responses = has_responses and theirs is not None and (ours is None or ours.sha256 == theirs.sha256)
        quoted = other.resolve().as_posix().replace("'", "''")
        store._con.execute(f"ATTACH '{quoted}' AS src (READ_ONLY)")
        try:
            with store.transaction():
                if responses and ours is None and theirs is not None:
                    save_probe(store, theirs)
                    store._con.execute(response_vectors_sql(len(theirs)))
                neurons = sum(_copy_model(store, m, responses) for m in names)
                for m in names:
                    write_evidence(store, m)  # flags by this version's rule, also for a source without them
        finally:
            store._con.execute("DETACH src")
    return ImportSummary(tuple(names), neurons, responses, sync_after_commit(db))


def _copy_model(store: Store, model: str, responses: bool) -> int:
    """One model's rows from ``src`` with fresh neuron and run ids (inside the caller's transaction)."""
    con = store._con
    count = int(con.execute("SELECT count(*) FROM src.neurons WHERE model = ?", [model]).fetchone()[0])
    first = store.reserve_ids("neurons", "neuron_id", count)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE idmap AS SELECT neuron_id AS old, ? + row_number() OVER (ORDER BY neuron_id) - 1 "
        "AS new FROM src.neurons WHERE model = ?", [first, model],
    )
    runs = int(con.execute("SELECT count(*) FROM src.runs WHERE model = ?", [model]).fetchone()[0])
    first_run = store.reserve_ids("runs", "run_id", max(runs, 1))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE runmap AS SELECT run_id AS old, ? + row_number() OVER (ORDER BY run_id) - 1 "
        "AS new FROM src.runs WHERE model = ?", [first_run, model],
    )
    con.execute(
        "INSERT INTO models BY NAME SELECT m.* REPLACE (coalesce(r.new, ?) AS run_id) FROM src.models m "
        "LEFT JOIN runmap r ON r.old = m.run_id WHERE m.model = ?", [first_run, model],
    )
    for table in _PLAIN:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM src.{table} WHERE model = ?", [model])
    con.execute(
        # an older database holds float NFs: they arrive as the bytes this one stores
        f"INSERT INTO neurons BY NAME SELECT n.* REPLACE (i.new AS neuron_id, {FLOAT_TO_STORED.format(column='n.nf')} AS nf) "
        "FROM src.neurons n JOIN idmap i ON i.old = n.neuron_id",
    )
    con.execute("INSERT INTO runs BY NAME SELECT r.* REPLACE (m.new AS run_id) FROM src.runs r JOIN runmap m ON m.old = r.run_id")
    con.execute(
        "INSERT INTO skipped_images BY NAME SELECT s.* REPLACE (m.new AS run_id) FROM src.skipped_images s "
        "JOIN runmap m ON m.old = s.run_id",
    )
    present = {row[0] for row in con.execute(  # an older database may lack the newer per-neuron tables
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src'"
    ).fetchall()}
    kept = tuple(t for t in NEURON_TABLES if t in present)
    for table in (*_VECTORS, *kept, *(("response_vectors",) if responses else ())):
        con.execute(
            f"INSERT INTO {table} BY NAME SELECT v.* REPLACE (i.new AS neuron_id) FROM src.{table} v "
            "JOIN idmap i ON i.old = v.neuron_id",
        )
    import_relevance(store)
    return count
