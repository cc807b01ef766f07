"""Relevance by ablation in DuckDB: one row per neuron (the latest measurement) and its classes hurt most.

``relevance(neuron_id, images, target, mode, prob_drop, flip_rate, run_id)`` and
``relevance_classes(neuron_id, rank, class_index, class_name, prob_drop)``, keyed by
``neurons.neuron_id``: a model analysed again gets fresh ids, and rows of ids that no longer
exist are dropped with the model's other per-neuron rows. Each layer is written in its own
transaction together with a ``runs`` row of kind ``relevance``, so a stopped run keeps the layers
it finished.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.neurons.ablation import LayerRelevance
from onnx_nfi.store.duckdb_store import NEURON_RUN_TABLES, Store

#: ``relevance`` columns other than the key, as SQL readers and pictures name them.
RELEVANCE_COLUMNS = ("prob_drop", "flip_rate")


@dataclass(frozen=True)
class RelevanceRun:
    """How one layer's relevance was measured: the run's ``runs.params`` and its rows' columns."""

    images: int
    target: str
    mode: str
    provider: str
    params: dict[str, Any]
    started: dt.datetime


@dataclass(frozen=True)
class NeuronRelevance:
    """One neuron's stored relevance, as a card or neuron page shows it."""

    images: int
    target: str
    mode: str
    prob_drop: float
    flip_rate: float
    classes: tuple[tuple[str, float], ...]  # (class name or index, mean drop), most hurt first


def write_layer_relevance(
    db: str | Path, model: str, layer: str, result: LayerRelevance, run: RelevanceRun,
    class_names: Sequence[str] | None,
) -> int:
    """Replace the relevance rows of one layer's neurons, with a ``runs`` row; returns its id."""
    with Store.open(db) as store, store.transaction():
        ids = store.columns("SELECT unit, neuron_id FROM neurons WHERE model = ? AND layer = ? ORDER BY unit", [model, layer])
        neuron_ids = np.asarray(ids["neuron_id"], np.int64)[np.argsort(ids["unit"])]
        for table in NEURON_RUN_TABLES:
            store._con.execute(
                f"DELETE FROM {table} WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ? AND layer = ?)",
                [model, layer],
            )
        run_id = store.reserve_ids("runs", "run_id", 1)
        n = neuron_ids.size
        store.insert("relevance", {
            "neuron_id": neuron_ids, "images": np.full(n, run.images, np.int32), "target": np.full(n, run.target, object),
            "mode": np.full(n, run.mode, object), "prob_drop": result.prob_drop[:n], "flip_rate": result.flip_rate[:n],
            "run_id": np.full(n, run_id, np.int32),
        })
        rank = np.tile(np.arange(1, result.top_classes.shape[1] + 1, dtype=np.int32), n)
        classes = result.top_classes[:n].reshape(-1)
        keep = classes >= 0
        store.insert("relevance_classes", {
            "neuron_id": np.repeat(neuron_ids, result.top_classes.shape[1])[keep], "rank": rank[keep],
            "class_index": classes[keep].astype(np.int32),
            "class_name": np.array([class_names[k] if class_names and k < len(class_names) else None for k in classes[keep]], object),
            "prob_drop": result.top_drops[:n].reshape(-1)[keep],
        })
        store.insert("runs", {
            "run_id": np.array([run_id], np.int32), "model": np.array([model], object), "kind": np.array(["relevance"], object),
            "started_at": np.array([run.started], "datetime64[us]"), "finished_at": np.array([dt.datetime.now()], "datetime64[us]"),
            "images_seen": np.array([run.images], np.int64), "provider": np.array([run.provider], object),
            "params": np.array([json.dumps({**run.params, "layer": layer})], object),
        })
    return run_id


def neuron_relevance(store: Store, neuron_id: int) -> NeuronRelevance | None:
    """The stored relevance of one neuron, or None when none was measured."""
    if not store.has_table("relevance"):
        return None
    rows = store.rows("SELECT images, target, mode, prob_drop, flip_rate FROM relevance WHERE neuron_id = ?", [neuron_id])
    if not rows:
        return None
    classes = store.rows(
        "SELECT coalesce(class_name, CAST(class_index AS VARCHAR)) AS name, prob_drop FROM relevance_classes "
        "WHERE neuron_id = ? ORDER BY rank", [neuron_id],
    )
    r = rows[0]
    return NeuronRelevance(int(r["images"]), r["target"], r["mode"], float(r["prob_drop"]), float(r["flip_rate"]),
                           tuple((c["name"], float(c["prob_drop"])) for c in classes))


def neurons_with_relevance(store: Store) -> str:
    """The FROM clause of neuron readers: ``neurons`` with the relevance columns joined where stored
    (a database opened read-only from before relevance existed has no such table)."""
    if store.has_table("relevance"):
        return f"(SELECT n.*, {', '.join('r.' + c for c in RELEVANCE_COLUMNS)} FROM neurons n LEFT JOIN relevance r USING (neuron_id))"
    return "neurons"


@dataclass(frozen=True)
class LayerPoints:
    """One layer's neurons with relevance: ``prob_drop`` against another ``neurons`` column (NaN: NULL)."""

    alias: str
    relative_depth: float
    other: np.ndarray
    prob_drop: np.ndarray


def relevance_points(store: Store, model: str, column: str) -> list[LayerPoints]:
    """Per layer of ``model`` with stored relevance, in depth order: ``column`` (a checked ``neurons``
    column) and ``prob_drop`` of each of its neurons."""
    cols = store.columns(
        f"SELECT l.alias, l.relative_depth, CAST(n.{column} AS DOUBLE) AS other, r.prob_drop FROM relevance r "
        "JOIN neurons n USING (neuron_id) JOIN layers l USING (model, layer) WHERE n.model = ? ORDER BY l.depth, n.unit",
        [model],
    )
    other = np.ma.filled(np.ma.asarray(cols["other"]).astype(np.float64), np.nan)
    aliases = list(dict.fromkeys(cols["alias"].tolist()))
    return [
        LayerPoints(a, float(cols["relative_depth"][cols["alias"] == a][0]), other[cols["alias"] == a],
                    np.asarray(cols["prob_drop"], np.float64)[cols["alias"] == a])
        for a in aliases
    ]


def import_relevance(store: Store) -> None:
    """Inside ``import``'s copy of one model (its ``idmap`` and ``runmap`` of fresh neuron and run ids
    made): the relevance rows of the database attached as ``src``, if it has any."""
    has = store._con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'src' AND table_name = 'relevance'"
    ).fetchone()[0]
    if not has:
        return
    store._con.execute(
        "INSERT INTO relevance BY NAME SELECT v.* REPLACE (i.new AS neuron_id, m.new AS run_id) FROM src.relevance v "
        "JOIN idmap i ON i.old = v.neuron_id LEFT JOIN runmap m ON m.old = v.run_id"
    )
    store._con.execute(
        "INSERT INTO relevance_classes BY NAME SELECT v.* REPLACE (i.new AS neuron_id) FROM src.relevance_classes v "
        "JOIN idmap i ON i.old = v.neuron_id"
    )


def measured_layers(store: Store, model: str, images: str, target: str, mode: str) -> set[str]:
    """Layer tensors of ``model`` whose stored relevance was measured on ``images`` (a folder, or
    ``probe``) with ``target`` and ``mode``: what a resumed run leaves out."""
    rows = store.rows(
        "SELECT DISTINCT n.layer FROM relevance r JOIN neurons n USING (neuron_id) JOIN runs u ON u.run_id = r.run_id "
        "WHERE n.model = ? AND u.params ->> 'images' = ? AND r.target = ? AND r.mode = ?", [model, images, target, mode],
    )
    return {r["layer"] for r in rows}
