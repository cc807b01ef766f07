"""``match``: best and one-to-one neuron matches between two models, and the layer heat map's values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.errors import SearchError
from onnx_nfi.neurons.matching import best_matches, layer_similarity, one_to_one
from onnx_nfi.search.records import LayerBest, MatchResult
from onnx_nfi.store.duckdb_store import Store


def _profiles(store: Store, model: str) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The model's layers (depth order) and, per layer with any, (units, response vectors)."""
    layer_rows = store.layer_rows(model)
    if not store.has_table("response_vectors"):
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


def match(db: str | Path, model_a: str, model_b: str) -> MatchResult:
    """Convergent-learning matching of ``model_a`` against ``model_b`` by response profiles.

    Stores in ``neuron_matches`` (replacing earlier rows of this ordered pair): for every neuron of
    A with a profile, its best-correlated neuron over all of B's layers (``one_to_one`` false), and
    for every pair of layers the one-to-one assignment maximising total correlation (``one_to_one``
    true). ``onnx_nfi.report.render.match_png`` draws the result's heat map.
    """
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
    return MatchResult(
        model_a, model_b, aliases_a, aliases_b, heat, tuple(layer_best), float(best_score.mean()),
        len(where_a), len(frame["unit_a"]),
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
