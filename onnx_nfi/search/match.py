"""``match``: best and one-to-one neuron matches between two models, and the layer heat map's values."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.errors import SearchError, StateError
from onnx_nfi.neurons.matching import best_matches, layer_similarity, one_to_one
from onnx_nfi.progress import Progress, phase
from onnx_nfi.search.kept_matches import keep_matches, load_matches
from onnx_nfi.search.records import LayerBest, MatchResult
from onnx_nfi.store.duckdb_store import Frame, Store, lock_wait
from onnx_nfi.store.unwritten import kept_path, write_or_keep
from onnx_nfi.store.vectors import read_probe

Blocks = dict[str, tuple[np.ndarray, np.ndarray]]


def _profiles(db: str | Path, model_a: str, model_b: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Blocks, Blocks, dict[str, str]]:
    """Both models' layers (depth order), response profiles and content hashes, read and the database closed."""
    with Store.open(db, read_only=True) as store:
        hashes = {m: store.model_row(m)["sha256"] for m in (model_a, model_b)}  # NotFoundError names the models there are
        blocks = {m: store.response_profiles(m) for m in (model_a, model_b)}
        for name, found in blocks.items():
            if not found:
                raise SearchError(_no_profiles(store, name))
        return store.layer_rows(model_a), store.layer_rows(model_b), blocks[model_a], blocks[model_b], hashes


def _no_profiles(store: Store, model: str) -> str:
    """Why ``model`` has no response profiles, and what to run."""
    if not store.live_neurons(model):
        return f"model {model!r} has no response profiles: every neuron of it is dead; match two other models"
    probe = read_probe(store)
    if probe is None:
        return (f"model {model!r} has no response profiles: {store.path} has no probe set (the images every model "
                f"is scored on); set one with 'onnx-nfi probe DIR --force --db {store.path}'")
    folder = os.path.commonpath([str(p.parent) for p in probe.paths])
    return (f"model {model!r} has no response profiles: it was imported from a database with another probe set, and "
            f"'import' leaves them out then; score every model on this database's probe set with 'onnx-nfi probe "
            f"{folder} --size {len(probe)} --force --db {store.path}'")


def match(
    db: str | Path, model_a: str, model_b: str, *, lock_timeout: float = 0.0, progress: Progress | None = None,
    saved: str | Path | None = None,
) -> MatchResult:
    """Convergent-learning matching of ``model_a`` against ``model_b`` by response profiles.

    Stores in ``neuron_matches`` (replacing earlier rows of this ordered pair): for every neuron of
    A with a profile, its best-correlated neuron over all of B's layers (``one_to_one`` false), and
    for every pair of layers the one-to-one assignment maximising total correlation (``one_to_one``
    true). ``onnx_nfi.report.render.match_png`` draws the result's heat map. The profiles are read
    and the database closed before the work; the write waits up to ``lock_timeout`` s for a database
    another process holds and, if it cannot happen, the matches are kept in a file that ``saved``
    writes later.
    """
    if saved is not None:
        return _write_saved(db, Path(saved), model_a, model_b, lock_timeout, progress)
    with lock_wait(lock_timeout):
        rows_a, rows_b, blocks_a, blocks_b, hashes = _profiles(db, model_a, model_b)
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
    result = MatchResult(
        model_a, model_b, tuple(r["alias"] for r in rows_a), tuple(r["alias"] for r in rows_b), heat, tuple(layer_best),
        float(best_score.mean()), len(where_a), len(frame["unit_a"]),
    )
    path = kept_path(db, f"{model_a}.{model_b}.matches")
    write_or_keep(
        lambda: _replace(db, result, (best, frame)), lambda to: keep_matches(to, result, hashes, (best, frame)),
        what=f"the matches of {model_a} in {model_b}", db=db, path=path,
        command=f"onnx-nfi match {model_a} {model_b} --db {db} --saved {path}", lock_timeout=lock_timeout,
        progress=progress,
    )
    return result


def _replace(db: str | Path, result: MatchResult, frames: tuple[Frame, ...]) -> None:
    with Store.open(db) as store:
        store.replace_matches(result.model_a, result.model_b, frames)


def _write_saved(
    db: str | Path, path: Path, model_a: str, model_b: str, lock_timeout: float, progress: Progress | None,
) -> MatchResult:
    """Write the matches an earlier ``match`` kept because its write could not happen."""
    result, hashes, frames = load_matches(path)
    with lock_wait(lock_timeout, phase(progress, "lock")), Store.open(db) as store:
        stored = {m: store.model_row(m)["sha256"] for m in (model_a, model_b)}
        if (result.model_a, result.model_b) != (model_a, model_b) or stored != hashes:
            raise StateError(f"{path} holds matches of other models (or other versions of them) than {model_a} in "
                             f"{model_b} as stored now; run the match command again without --saved")
        store.replace_matches(model_a, model_b, frames)
    path.unlink(missing_ok=True)
    return result


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
