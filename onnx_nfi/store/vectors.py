"""The three vectors per neuron and the probe set in DuckDB, and the FAISS indexes kept in step.

DuckDB is the truth; the FAISS indexes beside it (``<db>.faiss/<kind>.index``) are a cache that is
brought in step after every commit (``sync_indexes``) and checked again before every search. Each
index file has a companion ``<kind>.ids.npy`` (the sorted neuron ids it holds), written after the
index, so a crash between the database commit and the index save, or between the two files, is
seen as a disagreement and repaired. Searches are also restricted to neuron ids that DuckDB holds
now, so a replaced or removed neuron (ids are never reused) is never served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnx_nfi.errors import NfiError, StoreError
from onnx_nfi.files import atomic_write, sweep_orphans
from onnx_nfi.names import INDEX_COLUMNS, VECTOR_TABLES
from onnx_nfi.neurons import similarity
from onnx_nfi.store.duckdb_store import DEFAULT_DB, Store, lock_wait
from onnx_nfi.store.schema import response_vectors_sql

if TYPE_CHECKING:
    from onnx_nfi.store.vector_index import VectorIndex


@dataclass(frozen=True)
class ProbeSet:
    """The database's probe images in probe order: content hashes, where they were found, stored yet."""

    sha256: tuple[str, ...]
    paths: tuple[Path, ...]
    stored: bool

    def __len__(self) -> int:
        return len(self.sha256)


def insert_vectors(store: Store, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Store the non-zero vectors of ``ids`` (a zero vector means: nothing to compare)."""
    keep = similarity.has_vector(vectors)
    if not keep.any():
        return
    if kind == "response":
        store._con.execute(response_vectors_sql(vectors.shape[1]))
    column = np.empty(int(keep.sum()), dtype=object)
    for k, row in enumerate(vectors[keep]):
        column[k] = row
    store.insert(VECTOR_TABLES[kind], {"neuron_id": ids[keep].astype(np.int64), "vector": column})


def _prune_orphans(store: Store) -> None:
    """Drop vectors whose neuron no longer exists (the model was replaced or removed)."""
    for table in VECTOR_TABLES.values():
        if store.has_table(table):
            store._con.execute(f"DELETE FROM {table} WHERE neuron_id NOT IN (SELECT neuron_id FROM neurons)")


def store_vectors(
    store: Store, model: str, probe: ProbeSet, probe_scores: dict[str, np.ndarray], nfs: dict[str, np.ndarray]
) -> None:
    """Inside the analysis transaction, after the model's neurons and indexes are written: record a
    new probe set, drop the vectors and matches of the model's replaced neurons, store the new vectors."""
    save_probe(store, probe)
    _prune_orphans(store)
    store._con.execute("DELETE FROM neuron_matches WHERE model_a = ? OR model_b = ?", [model, model])
    ids = ids_by_layer(store, model)
    for kind, per_layer, make in (
        ("response", probe_scores, similarity.response_vectors),
        ("nf", nfs, similarity.nf_embeddings),
    ):
        for tensor, values in per_layer.items():
            if tensor in ids:
                insert_vectors(store, kind, ids[tensor], make(values))
    store_index_vectors(store, model)


def store_index_vectors(store: Store, model: str) -> None:
    """(Re)write the index vectors of ``model`` from its index columns (after indexes are (re)computed)."""
    raw = store._con.execute(
        f"SELECT neuron_id, {', '.join(INDEX_COLUMNS)} FROM neurons WHERE model = ? ORDER BY neuron_id", [model]
    ).fetchnumpy()
    cols = {c: np.ma.filled(np.ma.asarray(v).astype(np.float64), np.nan) for c, v in raw.items() if c != "neuron_id"}
    cols["neuron_id"] = np.asarray(raw["neuron_id"], np.int64)
    store._con.execute(
        "DELETE FROM index_vectors WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [model]
    )
    insert_vectors(store, "indexes", cols["neuron_id"], similarity.index_vectors({c: cols[c] for c in INDEX_COLUMNS}))


def ids_by_layer(store: Store, model: str) -> dict[str, np.ndarray]:
    """Neuron ids of each layer of ``model``, indexed by unit."""
    cols = store.columns("SELECT layer, unit, neuron_id FROM neurons WHERE model = ? ORDER BY layer, unit", [model])
    out: dict[str, np.ndarray] = {}
    for layer in np.unique(cols["layer"]):
        mask = cols["layer"] == layer
        ids = np.full(int(cols["unit"][mask].max()) + 1, -1, np.int64)
        ids[cols["unit"][mask]] = cols["neuron_id"][mask]
        out[str(layer)] = ids
    return out


def read_vectors(store: Store, table: str, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors [n, d]) of ``table`` sorted by id; only ``ids`` when given."""
    if ids is None:
        cols = store._con.execute(f"SELECT neuron_id, vector FROM {table} ORDER BY neuron_id").fetchnumpy()
    else:
        cols = store._con.execute(  # a list parameter, not a scan of a Python local: serve's connection has those off
            f"SELECT t.neuron_id, t.vector FROM {table} t WHERE t.neuron_id IN (SELECT unnest(?::BIGINT[])) "
            "ORDER BY t.neuron_id", [np.asarray(ids, np.int64).tolist()]
        ).fetchnumpy()
    found = np.asarray(cols["neuron_id"], np.int64)
    if not len(found):
        return found, np.zeros((0, 0), np.float32)
    return found, np.stack(cols["vector"]).astype(np.float32, copy=False)


# ---- FAISS indexes -----------------------------------------------------------------------------


def index_dir(db: str | Path) -> Path:
    """The folder of the database's FAISS indexes."""
    return Path(f"{db}.faiss")


def _save_ids(path: Path, ids: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, ids)


def _load_index(path: Path, ids_path: Path) -> tuple[VectorIndex | None, np.ndarray | None]:
    from onnx_nfi.store.vector_index import VectorIndex

    if not path.exists() or not ids_path.exists():
        return None, None
    try:
        return VectorIndex.load(path), np.load(ids_path, allow_pickle=False)
    except (StoreError, OSError, ValueError):
        return None, None  # unreadable: rebuilt from the database


def in_step(store: Store, db: Path, kind: str) -> VectorIndex | None:
    """The index of ``kind`` holding exactly the database's vectors (None when there are none).

    Brought in step incrementally when its id list is trustworthy, else rebuilt; saved when it
    changed (atomically; a read-only folder just means it is rebuilt in memory next time too).
    """
    from onnx_nfi.store.vector_index import VectorIndex

    table, folder = VECTOR_TABLES[kind], index_dir(db)
    path, ids_path = folder / f"{kind}.index", folder / f"{kind}.ids.npy"
    try:
        sweep_orphans(folder)  # temporaries of a save that was killed
    except OSError:
        pass  # a read-only folder: nothing this process could clean
    db_ids = (
        np.sort(np.asarray(store.columns(f"SELECT neuron_id FROM {table}")["neuron_id"], np.int64))
        if store.has_table(table) else np.empty(0, np.int64)
    )
    if not len(db_ids):
        for p in (ids_path, path):
            p.unlink(missing_ok=True)
        return None
    dim = int(store._con.execute(f"SELECT len(vector) FROM {table} LIMIT 1").fetchone()[0])
    index, held = _load_index(path, ids_path)
    if index is not None and index.dim != dim:  # the probe set was replaced
        index = None
    if index is not None and held is not None and np.array_equal(held, db_ids) and len(index) == len(held):
        return index
    index = _updated(store, table, index, held, db_ids)
    if index is None:
        index = VectorIndex.build(*read_vectors(store, table))
    try:
        folder.mkdir(exist_ok=True)
        index.save(path)
        _save_ids(ids_path, db_ids)
    except OSError:
        pass
    return index


def _updated(
    store: Store, table: str, index: VectorIndex | None, held: np.ndarray | None, db_ids: np.ndarray
) -> VectorIndex | None:
    """``index`` with removed ids dropped and new ones added, or None when it cannot be trusted."""
    if index is None or held is None or len(index) != len(held):
        return None
    gone, new = np.setdiff1d(held, db_ids), np.setdiff1d(db_ids, held)
    try:
        if index.remove(gone) != len(gone):
            return None
        if len(new):
            new_ids, vectors = read_vectors(store, table, new)
            if vectors.shape[1] != index.dim:
                return None
            index.add(new_ids, vectors)
    except ValueError:  # ids already there: the id list was older than the index
        return None
    return index if len(index) == len(db_ids) else None


def sync_indexes(db: str | Path = DEFAULT_DB) -> dict[str, int]:
    """Bring every FAISS index beside ``db`` in step with its vector table; returns vectors per kind."""
    with Store.open(db, read_only=True) as store:
        return {kind: len(index) if (index := in_step(store, Path(db), kind)) is not None else 0 for kind in VECTOR_TABLES}


def sync_after_commit(
    db: str | Path, lock_timeout: float = 0.0, on_wait: Callable[[int, int], None] | None = None
) -> tuple[str, ...]:
    """``sync_indexes`` once a change is committed, waiting up to ``lock_timeout`` s for another
    process's lock. Its failure is a warning (returned), not an error: the change stands, and the
    next search brings the indexes in step, so a command must not report it as failed."""
    try:
        with lock_wait(lock_timeout, on_wait):
            sync_indexes(db)
    except NfiError as exc:
        return (f"the search indexes are not in step yet ({exc}); the next search brings them in step",)
    return ()


def save_probe(store: Store, probe: ProbeSet) -> None:
    """Record a new probe set; a stored one must still be the database's (inside a transaction)."""
    current = read_probe(store)
    if current is not None:
        if current.sha256 != probe.sha256:
            raise StoreError("the database's probe set changed during this analysis; analyse again")
        return
    if len(probe):
        store.insert("probe_images", {
            "probe_index": np.arange(len(probe), dtype=np.int32),
            "sha256": np.array(probe.sha256, dtype=object),
            "path": np.array([str(p) for p in probe.paths], dtype=object),
        })


def replace_probe_set(store: Store, probe: ProbeSet, vectors: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Make ``probe`` the database's probe set with ``vectors`` (model -> layer -> response vectors
    ``[C, P]``) as every model's response profiles, in one transaction; the matches, computed over
    the old profiles, are dropped."""
    with store.transaction():
        store._con.execute("DELETE FROM probe_images")
        store._con.execute("DROP TABLE IF EXISTS response_vectors")
        store._con.execute("DELETE FROM neuron_matches")
        save_probe(store, ProbeSet(probe.sha256, probe.paths, stored=False))
        for model, per_layer in vectors.items():
            ids = ids_by_layer(store, model)
            for tensor, values in per_layer.items():
                insert_vectors(store, "response", ids[tensor], values)


def read_probe(store: Store) -> ProbeSet | None:
    """The probe set stored in the database, or None."""
    rows = store._con.execute("SELECT sha256, path FROM probe_images ORDER BY probe_index").fetchall()
    if not rows:
        return None
    return ProbeSet(tuple(r[0] for r in rows), tuple(Path(r[1]) for r in rows), stored=True)
