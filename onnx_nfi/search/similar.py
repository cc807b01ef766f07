"""``similar``: nearest neurons of a neuron by response, NF or index vector."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.errors import NotFoundError, SearchError
from onnx_nfi.names import INDEX_COLUMNS, VECTOR_KINDS, VECTOR_TABLES, parse_neuron
from onnx_nfi.refs import NeuronRef
from onnx_nfi.search.index_space import IndexSpace
from onnx_nfi.search.records import MISSING_REASON, Neuron, SimilarResult
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.evidence import weak_ids
from onnx_nfi.store.neuron_ref import check_unit, resolve_neuron
from onnx_nfi.store.neuron_table import layer_channels, model_neuron_ids, neuron_names, search_records
from onnx_nfi.store.nf_storage import decode
from onnx_nfi.store.vectors import in_step, read_vectors


def _check_kind(by: str) -> str:
    if by not in VECTOR_KINDS:
        raise SearchError(f"unknown vector {by!r}; use --by {', --by '.join(VECTOR_KINDS)}")
    return by


def _neuron(row: dict[str, Any], score: float) -> Neuron:
    return Neuron(
        model=row["model"], layer=row["layer"], alias=row["alias"], unit=int(row["unit"]),
        neuron_id=int(row["neuron_id"]), score=float(score), top_class=row["top_class"],
        indexes={c: (None if row[c] is None or (isinstance(row[c], float) and math.isnan(row[c])) else float(row[c]))
                 for c in INDEX_COLUMNS},
        nf=decode(row["nf"], row["nf_height"], row["nf_width"]),
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
    include_weak: bool = False,
) -> SimilarResult:
    """The ``k`` neurons whose ``by`` vector has the largest inner product with the query neuron's
    (``indexes``: the smallest distance between index vectors standardised over the database).

    ``query`` is ``MODEL:LAYER:UNIT`` (LAYER: tensor name or alias); the query itself is never a
    hit. ``models`` / ``layers`` (names, aliases or globs) restrict the candidates, and
    ``other_models`` leaves out the query's own model; weak units (docs/method.md §14) are no hits
    unless ``include_weak``.
    """
    return similar_many(
        db, [query], by=by, k=k, models=models, layers=layers, other_models=other_models, include_weak=include_weak
    )[0]


def similar_many(
    db: str | Path,
    queries: Sequence[str],
    *,
    by: str = "response",
    k: int = 10,
    models: Sequence[str] = (),
    layers: Sequence[str] = (),
    other_models: bool = False,
    include_weak: bool = False,
) -> list[SimilarResult]:
    """:func:`similar` for many queries at once: one database visit and one batched search."""
    with Store.open(db, read_only=True) as store:
        return similar_in(store, Path(db), queries, by=by, k=k, models=models, layers=layers, other_models=other_models,
                          include_weak=include_weak)


def similar_in(
    store: Store,
    db: Path,
    queries: Sequence[str],
    *,
    by: str = "response",
    k: int = 10,
    models: Sequence[str] = (),
    layers: Sequence[str] = (),
    other_models: bool = False,
    include_weak: bool = False,
    kept: Searcher | None = None,
) -> list[SimilarResult]:
    """:func:`similar_many` through an open store (``serve`` uses its own read-only connection, and
    ``kept``: the neuron table and indexes of the database's current state, read once)."""
    _check_kind(by)
    if k < 1:
        raise SearchError(f"-k must be at least 1, got {k}")
    parsed = [parse_neuron(q) for q in queries]
    table = VECTOR_TABLES[by]
    _check_scope(set(store.models()), models, sorted({m for m, _, _ in parsed}), other_models, db)
    neurons = kept.neurons if kept is not None else _NeuronTable(store)
    qids = np.array([neurons.resolve(store, *q) for q in parsed], np.int64)
    found, qvecs = read_vectors(store, table, np.unique(qids)) if store.has_table(table) else (np.empty(0, np.int64), None)
    missing = np.setdiff1d(qids, found)
    if len(missing):
        name = neurons.name(int(missing[0]))
        raise SearchError(f"neuron {name} has no {by} vector ({MISSING_REASON[by]}); try another --by")
    vectors = qvecs[np.searchsorted(found, qids)]
    index = kept.index(store, by) if kept is not None else in_step(store, Path(db), by)  # the cache kept in step
    if by == "indexes":  # standardised per index over the database, compared by distance (search/index_space.py)
        index = IndexSpace.read(store)
        vectors = index.vectors_of(qids)
    hit_lists: list[list[tuple[int, float]]] = [[] for _ in parsed]
    for model in sorted({m for m, _, _ in parsed}) if other_models else [None]:
        rows = [i for i, (m, _, _) in enumerate(parsed) if model is None or m == model]
        allowed = neurons.candidates(models, layers, model)
        if not include_weak:
            allowed = np.setdiff1d(allowed, weak_ids(store), assume_unique=True)
        if index is None or not len(allowed):
            continue
        scores, ids = index.search(vectors[rows], k + 1, allowed_ids=allowed)  # +1: the query itself may come back
        for row, s_row, i_row in zip(rows, scores, ids):
            hit_lists[row] = [(int(i), float(s)) for s, i in zip(s_row, i_row) if i >= 0 and i != qids[row]][:k]
    wanted = sorted(set(qids.tolist()) | {i for hits in hit_lists for i, _ in hits})
    by_id = {int(r["neuron_id"]): r for r in search_records(store, wanted)}
    template = {i: _neuron(row, 1.0) for i, row in by_id.items()}  # each NF decoded once, however many hits share it
    return [
        SimilarResult(
            query=template[int(qid)], by=by,
            hits=tuple(replace(template[i], score=score) for i, score in hits if i in template),
        )
        for qid, hits in zip(qids, hit_lists)
    ]


def _check_scope(known: set[str], models: Sequence[str], own: list[str], other_models: bool, db: Path) -> None:
    """Refuse ``--models`` naming a model that is not there, and ``--other-models`` with no other model."""
    unknown = [m for m in models if m not in known]
    if unknown:
        raise NotFoundError(f"model {unknown[0]!r} is not in {db} (models: {', '.join(sorted(known))})")
    if other_models and not known - set(own):
        raise SearchError(
            f"--other-models: {db} holds no model but {', '.join(own)}; "
            "analyse or import another model to search across models"
        )


class Searcher:
    """What every search of one database state shares: the neuron table and the vector indexes
    (read once by a long-lived reader such as ``serve``, instead of once per query)."""

    def __init__(self, store: Store, db: Path) -> None:
        self.db = db
        self.neurons = _NeuronTable(store)
        self._indexes: dict[str, Any] = {}

    def index(self, store: Store, by: str) -> Any:
        """The ``by`` index in step with the database (None when it holds no such vectors)."""
        if by not in self._indexes:
            self._indexes[by] = in_step(store, self.db, by)
        return self._indexes[by]


class _NeuronTable:
    """Every neuron's id, model, layer, alias and unit, read once: resolves queries, filters candidates.

    Candidates come from here, i.e. from DuckDB as it is now, so a neuron that was replaced or
    removed cannot be returned even by an index that was not yet brought in step.
    """

    def __init__(self, store: Store) -> None:
        cols = neuron_names(store)
        self.ids = np.asarray(cols["neuron_id"], np.int64)
        self.model, self.layer, self.alias = cols["model"].astype(str), cols["layer"].astype(str), cols["alias"].astype(str)
        self.unit = np.asarray(cols["unit"], np.int64)
        self._by_name = {(m, l, int(u)): int(i) for m, l, u, i in zip(self.model, self.layer, self.unit, self.ids)}
        self._by_id = {int(i): k for k, i in enumerate(self.ids)}
        self._layers = {(r["model"], r["layer"]): r for r in layer_channels(store)}
        self._layers.update({(r["model"], r["alias"]): r for r in self._layers.copy().values()})

    def resolve(self, store: Store, model: str, layer: str, unit: int) -> int:
        """The neuron id of ``model:layer:unit`` (layer by tensor name or alias); NotFoundError says why not."""
        ref = NeuronRef(model, layer, unit)
        row = self._layers.get((model, layer))
        if row is None:
            row = resolve_neuron(store, ref)  # names the missing model, layer or unit
        check_unit(ref, row)
        return self._by_name[(model, row["layer"], unit)]

    def name(self, neuron_id: int) -> str:
        k = self._by_id[neuron_id]
        return str(NeuronRef(self.model[k], self.alias[k], int(self.unit[k])))

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


def nearest_by_model(
    store: Store, models: Sequence[str], *, by: str = "response", k: int = 10
) -> dict[int, tuple[list[tuple[int, float]], list[tuple[int, float]]]]:
    """For every neuron of ``models`` with a ``by`` vector: its ``k`` nearest in its own model and in the others.

    Result: neuron id -> (same-model hits, other-model hits), each (neuron id, score) best first.
    One index per model, searched with all queries at once (batched, no per-query id filter), so
    precomputing the neighbours of a whole database costs one pass per model pair. Weak neurons are
    queries but no hits.
    """
    from onnx_nfi.store.vector_index import VectorIndex

    _check_kind(by)
    table = VECTOR_TABLES[by]
    if not store.has_table(table):
        return {}
    owned: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for model in models:
        ids, vectors = read_vectors(store, table, model_neuron_ids(store, model))
        if len(ids):
            owned[model] = (ids, vectors)
    same: dict[int, list[tuple[int, float]]] = {}
    other: dict[int, list[tuple[int, float]]] = {}
    weak = weak_ids(store)  # asked about, never a neighbour (docs/method.md §14)
    for target, (target_ids, target_vectors) in owned.items():
        strong = ~np.isin(target_ids, weak)
        if not strong.any():
            continue
        index = VectorIndex.build(target_ids[strong], target_vectors[strong])
        for model, (ids, vectors) in owned.items():
            scores, hits = index.search(vectors, min(k + 1, len(index)))
            for qid, s_row, h_row in zip(ids.tolist(), scores.tolist(), hits.tolist()):
                found = [(h, s) for h, s in zip(h_row, s_row) if h >= 0 and h != qid]
                if model == target:
                    same[qid] = found[:k]
                else:
                    other[qid] = sorted(other.get(qid, []) + found, key=lambda hit: -hit[1])[:k]
    return {qid: (same.get(qid, []), other.get(qid, [])) for ids, _ in owned.values() for qid in ids.tolist()}
