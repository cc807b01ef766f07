"""Search verbs: the probe set, the three vectors per neuron, FAISS in step with DuckDB, similar, match, remove.

DuckDB is the truth; the FAISS indexes beside it (``<db>.faiss/<kind>.index``) are a cache that is
brought in step after every commit (``sync_indexes``) and checked again before every search. Each
index file has a companion ``<kind>.ids.npy`` (the sorted neuron ids it holds), written after the
index, so a crash between the database commit and the index save, or between the two files, is
seen as a disagreement and repaired. Searches are also restricted to neuron ids that DuckDB holds
now, so a replaced or removed neuron (ids are never reused) is never served.

The probe set (ALGORITHMS.md §8) belongs to the database: the first analysis picks it (up to
``probe_size`` images evenly spaced over its sorted image list, identified by content hash), or
``onnx-nfi probe DIR`` sets it. Every later model is scored on exactly those images, in its own scan
where they are among its images, else in an extra pass over their stored paths.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from onnx_nfi.data.images import ImageFile, list_images
from onnx_nfi.errors import ImageError, NfiError, NotFoundError, StoreError
from onnx_nfi.neurons import similarity
from onnx_nfi.neurons.matching import best_matches, layer_similarity, one_to_one
from onnx_nfi.store.duckdb_store import DEFAULT_DB, Store
from onnx_nfi.store.schema import INDEX_COLUMNS, VECTOR_TABLES, response_vectors_sql

if TYPE_CHECKING:
    from onnx_nfi.data.preprocess import Preprocessing
    from onnx_nfi.graph.layers import Layer
    from onnx_nfi.graph.load import LoadedModel
    from onnx_nfi.scan.scanner import ScanResult
    from onnx_nfi.store.vector_index import VectorIndex

#: progress(phase, done, total), as in ``onnx_nfi.api``; this module reports phase "probe".
Progress = Callable[[str, int, int], None]

_MISSING_REASON = {
    "response": "dead or constant on the probe set, or analysed before the database had one",
    "nf": "dead, or analysed with --no-nf",
    "indexes": "dead, or analysed with --indexes none",
}


class SearchError(NfiError):
    """A search, match or probe request cannot be carried out as asked."""


@dataclass(frozen=True)
class ProbeSet:
    """The database's probe images in probe order: content hashes, where they were found, stored yet."""

    sha256: tuple[str, ...]
    paths: tuple[Path, ...]
    stored: bool

    def __len__(self) -> int:
        return len(self.sha256)


@dataclass(frozen=True)
class Neuron:
    """A neuron as search results show it; ``score`` is its similarity to the query (1 for the query)."""

    model: str
    layer: str
    alias: str
    unit: int
    neuron_id: int
    score: float
    top_class: str | None
    indexes: dict[str, float | None]
    nf: np.ndarray | None  # H x W x 3, 0-255; None for dead or no NF

    @property
    def name(self) -> str:
        """``MODEL:ALIAS:UNIT``, the form ``similar`` accepts."""
        return f"{self.model}:{self.alias}:{self.unit}"


@dataclass(frozen=True)
class SimilarResult:
    """The query neuron and its nearest neighbours, best first."""

    query: Neuron
    by: str
    hits: tuple[Neuron, ...]


@dataclass(frozen=True)
class LayerBest:
    """For one layer of A: the layer of B that explains it best, and how well."""

    layer: str
    alias: str
    neurons: int  # neurons with a response vector
    best_layer: str | None
    best_alias: str | None
    mean_best: float  # NaN when the layer has no vectors
    mean_one_to_one: float


@dataclass(frozen=True)
class MatchResult:
    """``match``: the heat map of mean best correlation (A layers x B layers, depth order) and a summary."""

    model_a: str
    model_b: str
    aliases_a: tuple[str, ...]
    aliases_b: tuple[str, ...]
    heat: np.ndarray  # float32 [La, Lb]; NaN where a layer has no response vectors
    layers: tuple[LayerBest, ...]
    mean_best: float  # over all neurons of A, best over all of B
    best_rows: int
    one_to_one_rows: int
    picture: Path | None


@dataclass(frozen=True)
class RemoveSummary:
    """What ``remove`` deleted."""

    model: str
    neurons: int


@dataclass(frozen=True)
class ProbeSummary:
    """What ``set_probe`` did."""

    images: int
    changed: bool
    recomputed: tuple[str, ...]


# ---- probe set -------------------------------------------------------------------------------


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def choose_probe(files: Sequence[ImageFile], size: int, *, check_decodable: bool = False) -> ProbeSet:
    """Up to ``size`` of ``files`` evenly spaced over the (sorted) list, hashed, duplicates dropped.

    Evenly spaced rather than the first ``size``: a sorted ImageFolder lists class by class, and the
    probe set should span every class. ``check_decodable`` also drops files OpenCV cannot decode
    (during an analysis the scan itself finds those).
    """
    n, m = len(files), min(max(size, 0), len(files))
    chosen: dict[str, Path] = {}
    for i in range(m):
        path = Path(files[(i * n) // m].path)
        digest = _sha256(path)
        if digest is None or digest in chosen:
            continue
        if check_decodable and cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) is None:
            continue
        chosen[digest] = path
    return ProbeSet(tuple(chosen), tuple(chosen.values()), stored=False)


def read_probe(store: Store) -> ProbeSet | None:
    """The probe set stored in the database, or None."""
    rows = store.con.execute("SELECT sha256, path FROM probe_images ORDER BY probe_index").fetchall()
    if not rows:
        return None
    return ProbeSet(tuple(r[0] for r in rows), tuple(Path(r[1]) for r in rows), stored=True)


def probe_for_analysis(db: str | Path, files: Sequence[ImageFile], size: int) -> ProbeSet:
    """The probe set an analysis into ``db`` must score: the stored one, else chosen from ``files``."""
    if Path(db).exists():
        with Store.open(db) as store:
            stored = read_probe(store)
        if stored is not None:
            return stored
    return choose_probe(files, size)


def complete_probe_scores(
    probe: ProbeSet,
    result: ScanResult,
    model: LoadedModel,
    pre: Preprocessing,
    layers: Sequence[Layer],
    *,
    batch_size: int = 32,
    provider: str = "auto",
    progress: Progress | None = None,
) -> tuple[ProbeSet, dict[str, np.ndarray]]:
    """Probe scores ``[P, C]`` per layer with no gap, and the probe set they belong to.

    A new probe set keeps only the images the scan could read. A stored one must be scored
    whole: its images missing from this image set are scanned in an extra pass from their stored
    paths, and one that vanished or changed is an error (the profiles of different models must
    cover the same images to be comparable).
    """
    if not len(probe) or not result.probe_scores:
        return probe, {}
    scores = {tensor: s.copy() for tensor, s in result.probe_scores.items()}
    missing = np.isnan(next(iter(scores.values()))).any(axis=1)
    if not probe.stored:
        keep = np.flatnonzero(~missing)
        kept = ProbeSet(tuple(probe.sha256[i] for i in keep), tuple(probe.paths[i] for i in keep), stored=False)
        return kept, {tensor: s[keep] for tensor, s in scores.items()}
    if missing.any():
        extra = _probe_pass(model, pre, layers, probe, np.flatnonzero(missing), batch_size, provider, progress)
        for tensor, s in scores.items():
            s[missing] = extra[tensor]
    return probe, scores


def _probe_pass(
    model: LoadedModel,
    pre: Preprocessing,
    layers: Sequence[Layer],
    probe: ProbeSet,
    rows: np.ndarray,
    batch_size: int,
    provider: str,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    """Scores of probe images ``rows`` (read from their stored paths): ``[len(rows), C]`` per layer."""
    from onnx_nfi.scan.scanner import scan

    files = [ImageFile(probe.paths[i], None) for i in rows]
    result = scan(
        model, list(layers), pre, files, top_n=1, batch_size=batch_size, provider=provider,
        probe_sha256=[probe.sha256[i] for i in rows],
        progress=(lambda d, t: progress("probe", d, t)) if progress else None,
    )
    scores = result.probe_scores
    lost = np.isnan(next(iter(scores.values()))).any(axis=1) if scores else np.ones(len(rows), bool)
    if lost.any():
        i = int(rows[np.flatnonzero(lost)[0]])
        raise ImageError(
            f"probe image {probe.paths[i]} (sha256 {probe.sha256[i][:12]}…) and {int(lost.sum()) - 1} more vanished or "
            "changed since the database's probe set was chosen; restore them, include them in the image folder, or "
            "set a new probe set with 'onnx-nfi probe DIR --force'"
        )
    return scores


def _save_probe(store: Store, probe: ProbeSet) -> None:
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


# ---- vectors in DuckDB -------------------------------------------------------------------------


def _has_table(store: Store, table: str) -> bool:
    return bool(store.con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()[0])


def _insert_vectors(store: Store, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Store the non-zero vectors of ``ids`` (a zero vector means: nothing to compare)."""
    keep = similarity.has_vector(vectors)
    if not keep.any():
        return
    if kind == "response":
        store.con.execute(response_vectors_sql(vectors.shape[1]))
    column = np.empty(int(keep.sum()), dtype=object)
    for k, row in enumerate(vectors[keep]):
        column[k] = row
    store.insert(VECTOR_TABLES[kind], {"neuron_id": ids[keep].astype(np.int64), "vector": column})


def _prune_orphans(store: Store) -> None:
    """Drop vectors whose neuron no longer exists (the model was replaced or removed)."""
    for table in VECTOR_TABLES.values():
        if _has_table(store, table):
            store.con.execute(f"DELETE FROM {table} WHERE neuron_id NOT IN (SELECT neuron_id FROM neurons)")


def store_vectors(
    store: Store, model: str, probe: ProbeSet, probe_scores: dict[str, np.ndarray], nfs: dict[str, np.ndarray]
) -> None:
    """Inside the analysis transaction, after the model's neurons and indexes are written: record a
    new probe set, drop the vectors and matches of the model's replaced neurons, store the new vectors."""
    _save_probe(store, probe)
    _prune_orphans(store)
    store.con.execute("DELETE FROM neuron_matches WHERE model_a = ? OR model_b = ?", [model, model])
    ids = _ids_by_layer(store, model)
    for kind, per_layer, make in (
        ("response", probe_scores, similarity.response_vectors),
        ("nf", nfs, similarity.nf_embeddings),
    ):
        for tensor, values in per_layer.items():
            if tensor in ids:
                _insert_vectors(store, kind, ids[tensor], make(values))
    store_index_vectors(store, model)


def store_index_vectors(store: Store, model: str) -> None:
    """(Re)write the index vectors of ``model`` from its index columns (after indexes are (re)computed)."""
    raw = store.con.execute(
        f"SELECT neuron_id, {', '.join(INDEX_COLUMNS)} FROM neurons WHERE model = ? ORDER BY neuron_id", [model]
    ).fetchnumpy()
    cols = {c: np.ma.filled(np.ma.asarray(v).astype(np.float64), np.nan) for c, v in raw.items() if c != "neuron_id"}
    cols["neuron_id"] = np.asarray(raw["neuron_id"], np.int64)
    store.con.execute(
        "DELETE FROM index_vectors WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [model]
    )
    _insert_vectors(store, "indexes", cols["neuron_id"], similarity.index_vectors({c: cols[c] for c in INDEX_COLUMNS}))


def _ids_by_layer(store: Store, model: str) -> dict[str, np.ndarray]:
    """Neuron ids of each layer of ``model``, indexed by unit."""
    cols = store.columns("SELECT layer, unit, neuron_id FROM neurons WHERE model = ? ORDER BY layer, unit", [model])
    out: dict[str, np.ndarray] = {}
    for layer in np.unique(cols["layer"]):
        mask = cols["layer"] == layer
        ids = np.full(int(cols["unit"][mask].max()) + 1, -1, np.int64)
        ids[cols["unit"][mask]] = cols["neuron_id"][mask]
        out[str(layer)] = ids
    return out


def _read_vectors(store: Store, table: str, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors [n, d]) of ``table`` sorted by id; only ``ids`` when given."""
    if ids is None:
        cols = store.con.execute(f"SELECT neuron_id, vector FROM {table} ORDER BY neuron_id").fetchnumpy()
    else:
        wanted = {"neuron_id": np.asarray(ids, np.int64)}  # noqa: F841  (DuckDB scans the local by name)
        cols = store.con.execute(
            f"SELECT t.neuron_id, t.vector FROM {table} t JOIN wanted w USING (neuron_id) ORDER BY t.neuron_id"
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, ids)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_index(path: Path, ids_path: Path) -> tuple[VectorIndex | None, np.ndarray | None]:
    from onnx_nfi.store.vector_index import VectorIndex

    if not path.exists() or not ids_path.exists():
        return None, None
    try:
        return VectorIndex.load(path), np.load(ids_path, allow_pickle=False)
    except (StoreError, OSError, ValueError):
        return None, None  # unreadable: rebuilt from the database


def _in_step(store: Store, db: Path, kind: str) -> VectorIndex | None:
    """The index of ``kind`` holding exactly the database's vectors (None when there are none).

    Brought in step incrementally when its id list is trustworthy, else rebuilt; saved when it
    changed (atomically; a read-only folder just means it is rebuilt in memory next time too).
    """
    from onnx_nfi.store.vector_index import VectorIndex

    table, folder = VECTOR_TABLES[kind], index_dir(db)
    path, ids_path = folder / f"{kind}.index", folder / f"{kind}.ids.npy"
    db_ids = (
        np.sort(np.asarray(store.columns(f"SELECT neuron_id FROM {table}")["neuron_id"], np.int64))
        if _has_table(store, table) else np.empty(0, np.int64)
    )
    if not len(db_ids):
        for p in (ids_path, path):
            p.unlink(missing_ok=True)
        return None
    dim = int(store.con.execute(f"SELECT len(vector) FROM {table} LIMIT 1").fetchone()[0])
    index, held = _load_index(path, ids_path)
    if index is not None and index.dim != dim:  # the probe set was replaced
        index = None
    if index is not None and held is not None and np.array_equal(held, db_ids) and len(index) == len(held):
        return index
    index = _updated(store, table, index, held, db_ids)
    if index is None:
        index = VectorIndex.build(*_read_vectors(store, table))
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
            new_ids, vectors = _read_vectors(store, table, new)
            if vectors.shape[1] != index.dim:
                return None
            index.add(new_ids, vectors)
    except ValueError:  # ids already there: the id list was older than the index
        return None
    return index if len(index) == len(db_ids) else None


def sync_indexes(db: str | Path = DEFAULT_DB) -> dict[str, int]:
    """Bring every FAISS index beside ``db`` in step with its vector table; returns vectors per kind."""
    with Store.open(db, read_only=True) as store:
        return {kind: len(index) if (index := _in_step(store, Path(db), kind)) is not None else 0 for kind in VECTOR_TABLES}


# ---- similar -----------------------------------------------------------------------------------


def parse_neuron(text: str) -> tuple[str, str, int]:
    """``MODEL:LAYER:UNIT`` -> (model, layer, unit); LAYER may itself contain ':' (tensor names)."""
    parts = text.split(":")
    unit = parts[-1].strip()
    if len(parts) < 3 or not parts[0] or not ":".join(parts[1:-1]) or not unit.isdigit():
        raise SearchError(f"bad neuron {text!r}; write MODEL:LAYER:UNIT, e.g. lite0:conv3:12 (LAYER: alias or tensor name)")
    return parts[0], ":".join(parts[1:-1]), int(unit)


def _check_kind(by: str) -> str:
    if by not in similarity.KINDS:
        raise SearchError(f"unknown vector {by!r}; use --by {', --by '.join(similarity.KINDS)}")
    return by


_NEURON_SQL = (
    "SELECT n.model, n.layer, l.alias, n.unit, n.neuron_id, n.top_class, n.nf, n.nf_height, n.nf_width, "
    + ", ".join(f"n.{c}" for c in INDEX_COLUMNS)
    + " FROM neurons n JOIN layers l USING (model, layer)"
)


def _neuron(row: dict[str, Any], score: float) -> Neuron:
    nf = None
    if row["nf"] is not None and row["nf_height"]:
        nf = np.asarray(row["nf"], np.float32).reshape(int(row["nf_height"]), int(row["nf_width"]), 3)
    return Neuron(
        model=row["model"], layer=row["layer"], alias=row["alias"], unit=int(row["unit"]),
        neuron_id=int(row["neuron_id"]), score=float(score), top_class=row["top_class"],
        indexes={c: (None if row[c] is None or (isinstance(row[c], float) and math.isnan(row[c])) else float(row[c]))
                 for c in INDEX_COLUMNS},
        nf=nf,
    )


def similar(
    db: str | Path,
    query: str,
    *,
    by: str = "response",
    k: int = 10,
    models: Sequence[str] = (),
    layers: Sequence[str] = (),
    other_models: bool = False,
) -> SimilarResult:
    """The ``k`` neurons whose ``by`` vector has the largest inner product with the query neuron's.

    ``query`` is ``MODEL:LAYER:UNIT`` (LAYER: tensor name or alias); the query itself is never a
    hit. ``models`` / ``layers`` (names, aliases or globs) restrict the candidates, and
    ``other_models`` leaves out the query's own model.
    """
    return similar_many(db, [query], by=by, k=k, models=models, layers=layers, other_models=other_models)[0]


def similar_many(
    db: str | Path,
    queries: Sequence[str],
    *,
    by: str = "response",
    k: int = 10,
    models: Sequence[str] = (),
    layers: Sequence[str] = (),
    other_models: bool = False,
) -> list[SimilarResult]:
    """:func:`similar` for many queries at once: one database visit and one batched search."""
    _check_kind(by)
    if k < 1:
        raise SearchError(f"-k must be at least 1, got {k}")
    parsed = [parse_neuron(q) for q in queries]
    table = VECTOR_TABLES[by]
    with Store.open(db, read_only=True) as store:
        known = set(store.models())
        unknown = [m for m in models if m not in known]
        if unknown:
            raise NotFoundError(f"model {unknown[0]!r} is not in {db} (models: {', '.join(sorted(known))})")
        neurons = _NeuronTable(store)
        qids = np.array([neurons.resolve(store, *q) for q in parsed], np.int64)
        found, qvecs = _read_vectors(store, table, np.unique(qids)) if _has_table(store, table) else (np.empty(0, np.int64), None)
        missing = np.setdiff1d(qids, found)
        if len(missing):
            name = neurons.name(int(missing[0]))
            raise SearchError(f"neuron {name} has no {by} vector ({_MISSING_REASON[by]}); try another --by")
        vectors = qvecs[np.searchsorted(found, qids)]
        index = _in_step(store, Path(db), by)
        hit_lists: list[list[tuple[int, float]]] = [[] for _ in parsed]
        for model in sorted({m for m, _, _ in parsed}) if other_models else [None]:
            rows = [i for i, (m, _, _) in enumerate(parsed) if model is None or m == model]
            allowed = neurons.candidates(models, layers, model)
            if index is None or not len(allowed):
                continue
            scores, ids = index.search(vectors[rows], k + 1, allowed_ids=allowed)  # +1: the query itself may come back
            for row, s_row, i_row in zip(rows, scores, ids):
                hit_lists[row] = [(int(i), float(s)) for s, i in zip(s_row, i_row) if i >= 0 and i != qids[row]][:k]
        wanted = sorted(set(qids.tolist()) | {i for hits in hit_lists for i, _ in hits})
        by_id = {int(r["neuron_id"]): r for r in store.rows(_NEURON_SQL + " WHERE n.neuron_id IN (SELECT unnest(?::BIGINT[]))", [wanted])}
    template = {i: _neuron(row, 1.0) for i, row in by_id.items()}  # each NF decoded once, however many hits share it
    return [
        SimilarResult(
            query=template[int(qid)], by=by,
            hits=tuple(replace(template[i], score=score) for i, score in hits if i in template),
        )
        for qid, hits in zip(qids, hit_lists)
    ]


class _NeuronTable:
    """Every neuron's id, model, layer, alias and unit, read once: resolves queries, filters candidates.

    Candidates come from here, i.e. from DuckDB as it is now, so a neuron that was replaced or
    removed cannot be returned even by an index that was not yet brought in step.
    """

    def __init__(self, store: Store) -> None:
        cols = store.columns(
            "SELECT n.neuron_id, n.model, n.layer, l.alias, n.unit FROM neurons n JOIN layers l USING (model, layer)"
        )
        self.ids = np.asarray(cols["neuron_id"], np.int64)
        self.model, self.layer, self.alias = cols["model"].astype(str), cols["layer"].astype(str), cols["alias"].astype(str)
        self.unit = np.asarray(cols["unit"], np.int64)
        self._by_name = {(m, l, int(u)): int(i) for m, l, u, i in zip(self.model, self.layer, self.unit, self.ids)}
        self._by_id = {int(i): k for k, i in enumerate(self.ids)}
        self._layers = {(r["model"], r["layer"]): r for r in store.rows("SELECT model, layer, alias, channels FROM layers")}
        self._layers.update({(r["model"], r["alias"]): r for r in self._layers.copy().values()})

    def resolve(self, store: Store, model: str, layer: str, unit: int) -> int:
        """The neuron id of ``model:layer:unit`` (layer by tensor name or alias); NotFoundError says why not."""
        row = self._layers.get((model, layer)) or store.resolve_layer(model, layer)  # raises the right error
        if not 0 <= unit < int(row["channels"]):
            raise NotFoundError(
                f"unit {unit} is not in layer {row['alias']} of {model!r}; it has units 0-{int(row['channels']) - 1}"
            )
        return self._by_name[(model, row["layer"], unit)]

    def name(self, neuron_id: int) -> str:
        k = self._by_id[neuron_id]
        return f"{self.model[k]}:{self.alias[k]}:{self.unit[k]}"

    def candidates(self, models: Sequence[str], layers: Sequence[str], not_model: str | None) -> np.ndarray:
        """Ids allowed as hits: in ``models`` and ``layers`` (globs) when given, not of ``not_model``."""
        keep = np.ones(len(self.ids), bool)
        if models:
            keep &= np.isin(self.model, list(models))
        if not_model is not None:
            keep &= self.model != not_model
        if layers:
            keep &= np.array(
                [any(fnmatch.fnmatchcase(t, p) or fnmatch.fnmatchcase(a, p) for p in layers) for t, a in zip(self.layer, self.alias)],
                bool,
            )
        return self.ids[keep]


# ---- match -------------------------------------------------------------------------------------


def _profiles(store: Store, model: str) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The model's layers (depth order) and, per layer with any, (units, response vectors)."""
    layer_rows = store.layer_rows(model)
    if not _has_table(store, "response_vectors"):
        return layer_rows, {}
    cols = store.con.execute(
        "SELECT n.layer, n.unit, r.vector FROM neurons n JOIN response_vectors r USING (neuron_id) "
        "WHERE n.model = ? ORDER BY n.layer, n.unit", [model]
    ).fetchnumpy()
    blocks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in layer_rows:
        mask = cols["layer"] == row["layer"]
        if mask.any():
            blocks[row["layer"]] = (np.asarray(cols["unit"][mask], np.int32), np.stack(cols["vector"][mask]).astype(np.float32))
    return layer_rows, blocks


def match(db: str | Path, model_a: str, model_b: str, out_png: str | Path | None = None) -> MatchResult:
    """Convergent-learning matching of ``model_a`` against ``model_b`` by response profiles.

    Stores in ``neuron_matches`` (replacing earlier rows of this ordered pair): for every neuron of
    A with a profile, its best-correlated neuron over all of B's layers (``one_to_one`` false), and
    for every pair of layers the one-to-one assignment maximising total correlation (``one_to_one``
    true). ``out_png`` gets the heat map of mean best correlation, layer by layer.
    """
    if out_png is not None:
        _check_png(Path(out_png))  # before the work, not after
    with Store.open(db) as store:
        store.model_row(model_a), store.model_row(model_b)  # NotFoundError names the models there are
        rows_a, blocks_a = _profiles(store, model_a)
        rows_b, blocks_b = _profiles(store, model_b)
        for name, blocks in ((model_a, blocks_a), (model_b, blocks_b)):
            if not blocks:
                raise SearchError(
                    f"model {name!r} has no response vectors (analysed before the database had a probe set, or all "
                    "neurons dead); analyse it again"
                )
        heat, layer_best, frame = _match_layers(model_a, model_b, rows_a, rows_b, blocks_a, blocks_b)
        all_a = np.concatenate([v for _, v in blocks_a.values()])
        all_b = np.concatenate([v for _, v in blocks_b.values()])
        where_b = [(layer, int(u)) for layer, (units, _) in blocks_b.items() for u in units]
        where_a = [(layer, int(u)) for layer, (units, _) in blocks_a.items() for u in units]
        best_idx, best_score = best_matches(all_a, all_b)
        best = {
            "model_a": np.full(len(where_a), model_a, dtype=object),
            "layer_a": np.array([w[0] for w in where_a], dtype=object),
            "unit_a": np.array([w[1] for w in where_a], np.int32),
            "model_b": np.full(len(where_a), model_b, dtype=object),
            "layer_b": np.array([where_b[i][0] for i in best_idx], dtype=object),
            "unit_b": np.array([where_b[i][1] for i in best_idx], np.int32),
            "score": best_score.astype(np.float32),
            "one_to_one": np.zeros(len(where_a), bool),
        }
        with store.transaction():
            store.con.execute("DELETE FROM neuron_matches WHERE model_a = ? AND model_b = ?", [model_a, model_b])
            store.insert("neuron_matches", best)
            if len(frame["unit_a"]):
                store.insert("neuron_matches", frame)
    aliases_a = tuple(r["alias"] for r in rows_a)
    aliases_b = tuple(r["alias"] for r in rows_b)
    picture = _heatmap(Path(out_png), heat, aliases_a, aliases_b, model_a, model_b) if out_png is not None else None
    return MatchResult(
        model_a, model_b, aliases_a, aliases_b, heat, tuple(layer_best), float(best_score.mean()),
        len(where_a), len(frame["unit_a"]), picture,
    )


def _match_layers(
    model_a: str,
    model_b: str,
    rows_a: list[dict[str, Any]],
    rows_b: list[dict[str, Any]],
    blocks_a: dict[str, tuple[np.ndarray, np.ndarray]],
    blocks_b: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, list[LayerBest], dict[str, np.ndarray]]:
    """Heat map, per-layer summary and the one-to-one rows of every layer pair."""
    names_a, names_b, sub = layer_similarity({k: v for k, (_, v) in blocks_a.items()}, {k: v for k, (_, v) in blocks_b.items()})
    pos_a = {r["layer"]: i for i, r in enumerate(rows_a)}
    pos_b = {r["layer"]: j for j, r in enumerate(rows_b)}
    heat = np.full((len(rows_a), len(rows_b)), np.nan, np.float32)
    heat[np.ix_([pos_a[n] for n in names_a], [pos_b[n] for n in names_b])] = sub
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("layer_a", "unit_a", "layer_b", "unit_b", "score")}
    pair_mean: dict[tuple[str, str], float] = {}
    for la, (units_a, va) in blocks_a.items():
        for lb, (units_b, vb) in blocks_b.items():
            ia, ib, score = one_to_one(va, vb)
            pair_mean[(la, lb)] = float(score.mean())
            parts["layer_a"].append(np.full(len(ia), la, dtype=object))
            parts["unit_a"].append(units_a[ia])
            parts["layer_b"].append(np.full(len(ia), lb, dtype=object))
            parts["unit_b"].append(units_b[ib])
            parts["score"].append(score)
    frame = {c: np.concatenate(v) for c, v in parts.items()}
    n = len(frame["unit_a"])
    frame = {
        "model_a": np.full(n, model_a, dtype=object), **{c: frame[c] for c in ("layer_a", "unit_a")},
        "model_b": np.full(n, model_b, dtype=object), **{c: frame[c] for c in ("layer_b", "unit_b")},
        "score": frame["score"].astype(np.float32), "one_to_one": np.ones(n, bool),
    }
    summary = []
    for i, row in enumerate(rows_a):
        valid = np.isfinite(heat[i])
        j = int(np.nanargmax(heat[i])) if valid.any() else None
        best_b = rows_b[j]["layer"] if j is not None else None
        summary.append(LayerBest(
            layer=row["layer"], alias=row["alias"], neurons=len(blocks_a.get(row["layer"], ((), ()))[0]),
            best_layer=best_b, best_alias=rows_b[j]["alias"] if j is not None else None,
            mean_best=float(heat[i, j]) if j is not None else math.nan,
            mean_one_to_one=pair_mean.get((row["layer"], best_b), math.nan) if best_b else math.nan,
        ))
    return heat, summary, frame


def _check_png(path: Path) -> None:
    from onnx_nfi.report.pictures import OutputError

    if path.suffix.lower() != ".png":
        raise OutputError(f"pictures are written as PNG; name the output file *.png (got {path.name})")
    if not path.parent.exists():
        raise OutputError(f"folder {path.parent} does not exist; create it first or choose another -o")


def _heatmap(
    path: Path, heat: np.ndarray, aliases_a: Sequence[str], aliases_b: Sequence[str], model_a: str, model_b: str
) -> Path:
    """Mean best correlation, A's layers (rows) against B's (columns), in depth order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from onnx_nfi.report.pictures import write_png

    la, lb = heat.shape
    fig = Figure(figsize=(min(3 + 0.22 * lb, 24), min(2.5 + 0.22 * la, 24)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(heat), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(lb), list(aliases_b), rotation=90, fontsize=7)
    ax.set_yticks(range(la), list(aliases_a), fontsize=7)
    ax.set_xlabel(f"{model_b} layer")
    ax.set_ylabel(f"{model_a} layer")
    ax.set_title(f"Mean best correlation of {model_a} neurons in {model_b} layers", fontsize=10)
    fig.colorbar(image, ax=ax, label="mean best correlation (Pearson, probe set)")
    fig.tight_layout()
    canvas.draw()
    return write_png(path, np.asarray(canvas.buffer_rgba())[:, :, :3].copy())


# ---- remove and probe --------------------------------------------------------------------------


def remove(db: str | Path, model: str) -> RemoveSummary:
    """Delete every row of ``model`` (neurons, vectors, matches, runs, …) in one transaction, then
    drop its vectors from the FAISS indexes."""
    with Store.open(db) as store:
        store.model_row(model)
        neurons = int(store.con.execute("SELECT count(*) FROM neurons WHERE model = ?", [model]).fetchone()[0])
        with store.transaction():
            for table in VECTOR_TABLES.values():
                if _has_table(store, table):
                    store.con.execute(
                        f"DELETE FROM {table} WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [model]
                    )
            store.con.execute("DELETE FROM neuron_matches WHERE model_a = ? OR model_b = ?", [model, model])
            store.con.execute("DELETE FROM skipped_images WHERE run_id IN (SELECT run_id FROM runs WHERE model = ?)", [model])
            store.con.execute("DELETE FROM runs WHERE model = ?", [model])
            store.delete_model(model)
    sync_indexes(db)
    return RemoveSummary(model, neurons)


def set_probe(
    db: str | Path,
    images_dir: str | Path,
    *,
    size: int = 1024,
    force: bool = False,
    batch_size: int = 32,
    provider: str = "auto",
    progress: Progress | None = None,
) -> ProbeSummary:
    """Make up to ``size`` images of ``images_dir`` (evenly spaced, decodable) the database's probe set.

    **Decision**: with models already in the database the probe set changes only with ``force``,
    and then every model's response profiles are recomputed from its ONNX file (which must be
    unchanged, checked by hash) over the new probe images, so all profiles stay comparable.
    Everything is written in one transaction after all models are scored.
    """
    if size < 1:
        raise SearchError(f"the probe set needs at least one image, got --size {size}")
    probe = choose_probe(list_images(images_dir, "none").files, size, check_decodable=True)
    if not len(probe):
        raise ImageError(f"no decodable image in {images_dir}; the probe set needs real images")
    with Store.open(db) as store:
        current = read_probe(store)
        if current is not None and current.sha256 == probe.sha256:
            return ProbeSummary(len(current), changed=False, recomputed=())
        models = store.models()
        if models and not force:
            raise SearchError(
                f"{db} already holds {len(models)} model(s) ({', '.join(models)}) scored on "
                f"{'its current probe set' if current else 'no probe set'}; pass --force to replace it and recompute "
                "their response profiles from their ONNX files"
            )
        work = [(m, store.model_row(m), [r["layer"] for r in store.layer_rows(m)]) for m in models]
    vectors = {m: _rescore(m, row, layer_names, probe, batch_size, provider, progress) for m, row, layer_names in work}
    with Store.open(db) as store, store.transaction():
        store.con.execute("DELETE FROM probe_images")
        store.con.execute("DROP TABLE IF EXISTS response_vectors")
        store.con.execute("DELETE FROM neuron_matches")
        _save_probe(store, ProbeSet(probe.sha256, probe.paths, stored=False))
        for m, per_layer in vectors.items():
            ids = _ids_by_layer(store, m)
            for tensor, scores in per_layer.items():
                _insert_vectors(store, "response", ids[tensor], similarity.response_vectors(scores))
    sync_indexes(db)
    return ProbeSummary(len(probe), changed=True, recomputed=tuple(vectors))


def _rescore(
    model: str, row: dict[str, Any], layer_names: list[str], probe: ProbeSet, batch_size: int, provider: str,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    """Probe scores of a stored model, from its ONNX file and stored preprocessing."""
    from onnx_nfi.api import reopen_model
    from onnx_nfi.graph.layers import find_conv_layers

    lm, pre = reopen_model(model, row)
    layers = [layer for layer in find_conv_layers(lm) if layer.tensor in set(layer_names)]
    return _probe_pass(lm, pre, layers, probe, np.arange(len(probe)), batch_size, provider, progress)
