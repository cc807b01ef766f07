"""What the neuron browser's pages read: one model's counts, one layer's unit columns, top images,
classes, matches and NFs, as typed readers so ``report/site`` holds no SQL.

Column readers keep NULLs: a numpy column with a NULL comes back as a masked array (the pages
show "no value" there, never a zero). Reads are per layer, never per neuron.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.evidence import weak_reason_sql
from onnx_nfi.store.relevance import neurons_with_relevance


def masked_columns(store: Store, sql: str, params: list[Any]) -> dict[str, np.ndarray]:
    """Query columns as numpy arrays; NULLs stay masked (``Store.columns`` drops the mask)."""
    return store._con.execute(sql, params).fetchnumpy()


def _in_list(column: str, values: Sequence[Any] | None, kind: str) -> tuple[str, list[Any]]:
    """An ``AND column IN (...)`` filter and its parameter, nothing when ``values`` is None."""
    if values is None:
        return "", []
    return f" AND {column} IN (SELECT unnest(?::{kind}[]))", [list(values)]


def model_counts(store: Store, model: str) -> tuple[int, int, int]:
    """(neurons, dead neurons, images) of ``model``."""
    counts = store.rows(
        "SELECT count(*) AS neurons, count(*) FILTER (WHERE dead) AS dead FROM neurons WHERE model = ?", [model]
    )[0]
    images = store.rows("SELECT count(*) AS n FROM images WHERE model = ?", [model])[0]["n"]
    return int(counts["neurons"]), int(counts["dead"]), int(images)


def run_summary(store: Store, run_id: Any) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` as the index page shows it ({} when there is none)."""
    runs = store.rows(
        "SELECT run_id, kind, started_at, finished_at, images_seen, images_skipped, top_n, provider FROM runs "
        "WHERE run_id = ?", [run_id]
    )
    return runs[0] if runs else {}


def fingerprint_parts(store: Store, model: str) -> dict[str, Any]:
    """What changes when ``model``'s pages must be rebuilt besides its ``models`` row: its neuron count
    and last id (``n``, ``last``), its last run (``last_run``), the probe set (``probe``) and its
    stored matches (``matches``)."""
    return store.rows(
        "SELECT count(*) AS n, coalesce(max(neuron_id), -1) AS last, "
        "(SELECT coalesce(max(run_id), -1) FROM runs WHERE model = ?) AS last_run, "
        "(SELECT count(*) || ':' || coalesce(sum(hash(sha256)), 0) FROM probe_images) AS probe, "
        "(SELECT count(*) || ':' || coalesce(sum(hash(model_a, layer_a, unit_a, model_b, layer_b, unit_b, score)), 0) "
        " FROM neuron_matches WHERE model_a = ? OR model_b = ?) AS matches "
        "FROM neurons WHERE model = ?", [model, model, model, model],
    )[0]


def layers_with_summary(store: Store, model: str, indexes: Sequence[str]) -> list[dict[str, Any]]:
    """``model``'s ``layers`` rows in depth order with the neuron and dead counts and the
    ``INDEX_median`` / ``INDEX_p90`` of each of ``indexes`` from ``layer_summary``."""
    summary_columns = ", ".join(f"s.{c}_median, s.{c}_p90" for c in indexes)
    return store.rows(
        f"SELECT l.*, s.neurons, s.dead, {summary_columns} FROM layers l "
        "JOIN layer_summary s USING (model, layer) WHERE l.model = ? ORDER BY l.depth", [model]
    )


def layer_unit_columns(store: Store, model: str, layer: str, numeric: Sequence[str]) -> dict[str, np.ndarray]:
    """One layer's units in unit order: ``unit, neuron_id, dead, has_nf, top_class, weak`` (the weak
    reason, NULL where not weak) and each of ``numeric`` as DOUBLE (relevance columns included),
    NULLs masked."""
    return masked_columns(
        store,
        f"SELECT unit, neuron_id, dead, nf IS NOT NULL AS has_nf, top_class, {weak_reason_sql(store)} AS weak, "
        + ", ".join(f"CAST({c} AS DOUBLE) AS {c}" for c in numeric)
        + f" FROM {neurons_with_relevance(store)} WHERE model = ? AND layer = ? ORDER BY unit",
        [model, layer],
    )


def layer_top_images(
    store: Store, model: str, layer: str, top: int, units: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Each unit's (or ``units``') ``top`` best images: ``unit, rank, image_id, y, x, activation, path,
    label`` by unit and rank, NULLs masked."""
    where, extra = _in_list("t.unit", units, "INTEGER")
    return masked_columns(
        store,
        "SELECT t.unit, t.rank, t.image_id, t.y, t.x, t.activation, i.path, i.label FROM top_activations t "
        "JOIN images i ON i.model = t.model AND i.image_id = t.image_id "
        f"WHERE t.model = ? AND t.layer = ? AND t.rank <= ?{where} ORDER BY t.unit, t.rank",
        [model, layer, top, *extra],
    )


def layer_class_frequencies(
    store: Store, model: str, layer: str, units: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """``unit, label, frequency`` of each unit's classes with a non-zero share, most frequent first."""
    where, extra = _in_list("unit", units, "INTEGER")
    return masked_columns(
        store,
        f"SELECT unit, label, frequency FROM class_frequencies WHERE model = ? AND layer = ?{where} AND frequency > 0 "
        "ORDER BY unit, frequency DESC, label",
        [model, layer, *extra],
    )


def layer_match_rows(
    store: Store, model: str, layer: str, models: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    """Each unit's ``neuron_matches`` partners (either side) among ``models`` as ``unit, neuron_id,
    score, one_to_one``: best matches first, then the strongest one-to-one pairs, ``limit`` at most."""
    return store.rows(
        "SELECT * FROM (SELECT m.unit_a AS unit, n.neuron_id, m.score, m.one_to_one FROM neuron_matches m "
        "JOIN neurons n ON n.model = m.model_b AND n.layer = m.layer_b AND n.unit = m.unit_b "
        "WHERE m.model_a = ? AND m.layer_a = ? AND m.model_b IN (SELECT unnest(?::VARCHAR[])) "
        "UNION ALL "
        "SELECT m.unit_b AS unit, n.neuron_id, m.score, m.one_to_one FROM neuron_matches m "
        "JOIN neurons n ON n.model = m.model_a AND n.layer = m.layer_a AND n.unit = m.unit_a "
        "WHERE m.model_b = ? AND m.layer_b = ? AND m.model_a IN (SELECT unnest(?::VARCHAR[]))) "
        "QUALIFY row_number() OVER (PARTITION BY unit ORDER BY one_to_one, score DESC) <= ? ORDER BY unit, one_to_one, score DESC",
        [model, layer, list(models), model, layer, list(models), limit],
    )


def top_image_paths(
    store: Store, model: str, top: int, image_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """``image_id, path`` of ``model``'s images among some unit's ``top`` best (or among ``image_ids``)."""
    where, extra = _in_list("image_id", image_ids, "BIGINT")
    return store.rows(
        "SELECT image_id, path FROM images WHERE model = ? AND image_id IN "
        f"(SELECT DISTINCT image_id FROM top_activations WHERE model = ? AND rank <= ?){where} ORDER BY image_id",
        [model, model, top, *extra],
    )


def layer_nfs(store: Store, model: str, layer: str, units: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """``unit, nf, nf_height, nf_width`` of a layer's stored NFs (or of ``units``)."""
    where, extra = _in_list("unit", units, "INTEGER")
    return masked_columns(
        store,
        f"SELECT unit, nf, nf_height, nf_width FROM neurons WHERE model = ? AND layer = ? AND nf IS NOT NULL{where}",
        [model, layer, *extra],
    )
