"""A model's analysis results in DuckDB: written in one transaction, read back for ``index``.

Every write names its columns, so the schema can gain columns without breaking a writer; the
caller hands over one :class:`AnalysisRecord` and either all of it is committed or nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.config import AnalyzeConfig, IndexConfig
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.model_layers import LayerInfo
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.neurons.indexes import IndexResult
from onnx_nfi.scan.scanner import ScanResult
from onnx_nfi.scan.topn import TopN
from onnx_nfi.signals import hold_signals
from onnx_nfi.store.color_names import write_color_names
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.evidence import write_evidence
from onnx_nfi.store.nf_storage import encode, rounded
from onnx_nfi.store.vectors import ProbeSet, store_index_vectors, store_vectors


@dataclass
class AnalysisRecord:
    """Everything one analysis computed, on its way into the database in one transaction."""

    name: str
    model: LoadedModel
    pre: Preprocessing
    infos: list[LayerInfo]
    scan: ScanResult
    skipped: list[tuple[Path, str]]
    label_source: str
    config: AnalyzeConfig
    probe: ProbeSet
    probe_scores: dict[str, np.ndarray]
    nfs: dict[str, np.ndarray]
    indexes: IndexResult | None
    started: dt.datetime
    finished: dt.datetime


#: Steps ``write_analysis`` reports: old rows deleted, rows inserted, indexes, vectors, commit.
WRITE_STEPS = 5


def write_analysis(db: str | Path, record: AnalysisRecord, step: Callable[[], None] | None = None) -> tuple[int, int]:
    """Replace the model's rows in one transaction; returns (run id, dead neurons); ``step`` is
    called after each of the ``WRITE_STEPS`` parts of the write (a progress bar that moves).

    A database this call created is deleted again when the write fails, so a failure never leaves
    an empty or half-made file behind.
    """
    created = not Path(db).exists()
    nfs = {layer: rounded(nf) for layer, nf in record.nfs.items()}  # rows and NF vectors show what is stored
    done = step or (lambda: None)
    try:
        hold_signals()  # from here the write runs whole: a Ctrl-C waits for the commit (see SignalHold)
        with Store.open(db) as store, store.transaction():
            run_id = store.reserve_ids("runs", "run_id", 1)
            store.delete_model(record.name)
            done()
            _insert_rows(store, record, run_id, nfs)
            write_evidence(store, record.name)
            done()
            if record.indexes is not None:
                write_indexes(store, record.name, record.indexes)
            done()
            store_vectors(store, record.name, record.probe, record.probe_scores, nfs)
            done()
            dead = int(store._con.execute(
                "SELECT count(*) FROM neurons WHERE model = ? AND dead", [record.name]
            ).fetchone()[0])
    except BaseException:
        if created:
            Path(db).unlink(missing_ok=True)
            Path(f"{db}.wal").unlink(missing_ok=True)
        raise
    done()
    return run_id, dead


def write_index_run(db: str | Path, model: str, result: IndexResult, config: IndexConfig, started: dt.datetime) -> int:
    """Replace a stored model's index columns, class frequencies and index vectors in one transaction,
    with a ``runs`` row of kind ``index`` whose params say which indexes, rho and colour mode made them."""
    with Store.open(db) as store, store.transaction():
        write_indexes(store, model, result)
        write_evidence(store, model)  # a database from before the flags gains them here
        store_index_vectors(store, model)
        run_id = store.reserve_ids("runs", "run_id", 1)
        store.insert("runs", {
            "run_id": np.array([run_id], np.int32), "model": _repeat(model, 1), "kind": _repeat("index", 1),
            "started_at": np.array([started], "datetime64[us]"),
            "finished_at": np.array([dt.datetime.now()], "datetime64[us]"),
            "provider": _repeat(config.provider, 1), "params": _repeat(config.to_json(), 1),
        })
    return run_id


def write_indexes(store: Store, name: str, result: IndexResult) -> None:
    """Store index columns, class frequencies, colour names and concept labels of a model (inside the caller's
    transaction)."""
    for layer, columns in result.columns.items():
        if not columns:
            continue
        units = len(next(iter(columns.values())))
        store.update_neurons(name, {
            "layer": np.full(units, layer, dtype=object), "unit": np.arange(units, dtype=np.int32), **columns,
        })
    if result.class_frequencies:
        store._con.execute("DELETE FROM class_frequencies WHERE model = ?", [name])
    for layer, (units, labels, freqs) in result.class_frequencies.items():
        store.insert("class_frequencies", {
            "model": _repeat(name, units.size), "layer": _repeat(layer, units.size),
            "unit": units.astype(np.int32), "label": labels.astype(object), "frequency": freqs,
        })
    if result.color_names:
        write_color_names(store, name, result.color_names)
    if result.concepts:
        store._con.execute(
            "DELETE FROM concept_labels WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [name]
        )
    for layer, rows in result.concepts.items():
        frame = {"layer": _repeat(layer, rows["unit"].size), **rows}  # noqa: F841  (read by the SQL below)
        store._con.execute(
            "INSERT INTO concept_labels SELECT n.neuron_id, f.concept, f.wnid, f.depth, f.share, f.top_count, "
            "f.labelled_top, f.base_rate, f.enrichment, f.p_value, f.p_holm FROM frame f JOIN neurons n "
            "ON n.model = ? AND n.layer = f.layer AND n.unit = f.unit ORDER BY n.neuron_id, f.p_value, f.concept",
            [name],
        )


def _repeat(value: object, n: int) -> np.ndarray:
    """A column of ``n`` copies of one value (the model or layer name of every row)."""
    return np.full(n, value, dtype=object)


def _insert_rows(store: Store, record: AnalysisRecord, run_id: int, nfs: dict[str, np.ndarray]) -> None:
    """Insert the model's rows (inside the caller's transaction), with ``nfs`` as rounded for storage."""
    name, lm, pre, infos, result = record.name, record.model, record.pre, record.infos, record.scan
    store.insert("models", {
        "model": _repeat(name, 1), "path": _repeat(str(lm.path), 1), "sha256": _repeat(lm.sha256, 1),
        "input_height": np.array([pre.input_size[0]], np.int32), "input_width": np.array([pre.input_size[1]], np.int32),
        "layout": _repeat(pre.layout, 1), "preprocessing": _repeat(pre.to_json(), 1),
        "opset": np.array([lm.opset], np.int32), "n_layers": np.array([len(infos)], np.int32),
        "run_id": np.array([run_id], np.int32), "analyzed_at": np.array([record.finished], "datetime64[us]"),
    })
    imgs = result.images
    store.insert("images", {
        "model": _repeat(name, len(imgs)),
        "image_id": np.array([i.image_id for i in imgs], np.int64),
        "path": np.array([str(i.path) for i in imgs], dtype=object),
        "sha256": np.array([i.sha256 for i in imgs], dtype=object),
        "label": np.array([i.label for i in imgs], dtype=object),
        "label_source": _repeat(record.label_source, len(imgs)),
    })
    _insert_layers(store, name, infos)
    next_id = store.reserve_ids("neurons", "neuron_id", sum(i.layer.channels for i in infos))
    for info in infos:
        _insert_neurons(store, name, info, result, nfs.get(info.layer.tensor), next_id)
        next_id += info.layer.channels
    store.insert("runs", {
        "run_id": np.array([run_id], np.int32), "model": _repeat(name, 1), "kind": _repeat("analyze", 1),
        "started_at": np.array([record.started], "datetime64[us]"),
        "finished_at": np.array([record.finished], "datetime64[us]"),
        "images_seen": np.array([len(imgs)], np.int64), "images_skipped": np.array([len(record.skipped)], np.int64),
        "top_n": np.array([record.config.top_n], np.int32), "provider": _repeat(result.provider, 1),
        "params": _repeat(record.config.to_json(), 1),
    })
    if record.skipped:
        store.insert("skipped_images", {
            "run_id": np.full(len(record.skipped), run_id, np.int32),
            "path": np.array([str(p) for p, _ in record.skipped], dtype=object),
            "reason": np.array([r for _, r in record.skipped], dtype=object),
        })


def _insert_layers(store: Store, name: str, infos: list[LayerInfo]) -> None:
    depths = [i.layer.depth for i in infos]
    lo, hi = min(depths), max(depths)
    store.insert("layers", {
        "model": _repeat(name, len(infos)),
        "layer": np.array([i.layer.tensor for i in infos], dtype=object),
        "alias": np.array([i.layer.alias for i in infos], dtype=object),
        "op_type": np.array([i.layer.op_type for i in infos], dtype=object),
        "depth": np.array(depths, np.int32),
        "relative_depth": np.array([(d - lo) / (hi - lo) if hi > lo else 0.0 for d in depths]),
        "channels": np.array([i.layer.channels for i in infos], np.int32),
        "height": np.array([i.layer.height for i in infos], np.int32),
        "width": np.array([i.layer.width for i in infos], np.int32),
        **{
            f"rf_{part}_{axis}": np.array([getattr(i.rf, part)[k] for i in infos], np.int32)
            for part in ("size", "stride", "offset")
            for k, axis in enumerate("yx")
        },
        "rf_global": np.array([i.rf.is_global for i in infos]),
    })


def _insert_neurons(
    store: Store, name: str, info: LayerInfo, result: ScanResult, nf: np.ndarray | None, first_id: int
) -> None:
    """One layer's ``neurons`` and ``top_activations`` rows."""
    layer, st = info.layer, result.stats[info.layer.tensor]
    c, top = layer.channels, st.topn
    best = top.scores[:, 0]
    nf_col = encode(nf) if nf is not None else np.empty(c, dtype=object)
    has_nf = np.array([v is not None for v in nf_col], bool)
    nf_h, nf_w = nf.shape[1:3] if nf is not None else (0, 0)
    store.insert("neurons", {
        "model": _repeat(name, c),
        "layer": _repeat(layer.tensor, c),
        "unit": np.arange(c, dtype=np.int32),
        "neuron_id": np.arange(first_id, first_id + c, dtype=np.int64),
        "max_activation": best.astype(np.float32),
        "mean_activation": st.moments.mean,
        "std_activation": st.moments.std,
        "active_fraction": st.moments.active_fraction,
        "dead": best <= 0,
        "saturated_top": top.saturated_top().astype(np.int32),
        "nf": nf_col,
        "nf_height": np.where(has_nf, nf_h, np.nan),
        "nf_width": np.where(has_nf, nf_w, np.nan),
    })
    filled = top.ids >= 0
    units, ranks = np.nonzero(filled)
    store.insert("top_activations", {
        "model": _repeat(name, units.size),
        "layer": _repeat(layer.tensor, units.size),
        "unit": units.astype(np.int32),
        "rank": (ranks + 1).astype(np.int32),
        "image_id": top.ids[filled],
        "y": top.ys[filled],
        "x": top.xs[filled],
        "activation": top.scores[filled],
        "pre_activation": top.keys[filled] if layer.pre_activation else np.full(units.size, np.nan, np.float32),
    })


def stored_topn(store: Store, model: str, layer: str, channels: int) -> TopN:
    """A layer's top-N state rebuilt from ``top_activations``."""
    cols = store.columns(
        "SELECT unit, rank, image_id, y, x, activation, coalesce(pre_activation, activation) AS tiebreak "
        "FROM top_activations WHERE model = ? AND layer = ?",
        [model, layer],
    )
    n = int(cols["rank"].max()) if cols["rank"].size else 1
    top = TopN.empty(channels, n)
    u, r = cols["unit"].astype(np.int64), cols["rank"].astype(np.int64) - 1
    top.scores[u, r], top.ids[u, r] = cols["activation"], cols["image_id"]
    top.ys[u, r], top.xs[u, r], top.keys[u, r] = cols["y"], cols["x"], cols["tiebreak"]
    return top


def stored_rf(row: dict[str, Any]) -> ReceptiveField:
    """A ``layers`` row's receptive field."""
    return ReceptiveField(
        size=(row["rf_size_y"], row["rf_size_x"]),
        stride=(row["rf_stride_y"], row["rf_stride_x"]),
        offset=(row["rf_offset_y"], row["rf_offset_x"]),
        is_global=bool(row["rf_global"]),
    )
