"""The pipeline verbs; the only place where stages are wired together.

model -> instrumented graph -> batched scan -> top-N state -> NF / indexes -> DuckDB (+ FAISS)
Each verb validates all user input before any long work, and writes the database in one
transaction at the end, so a failure never leaves a half-written model behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from onnx_nfi import search
from onnx_nfi.config import AnalyzeConfig, parse_indexes
from onnx_nfi.data.display import BUDGET_BYTES as DISPLAY_BUDGET_BYTES
from onnx_nfi.data.display import DisplayImages
from onnx_nfi.data.images import list_images, parse_label_option, read_class_names
from onnx_nfi.data.preprocess import Preprocessing, from_dict, resolve
from onnx_nfi.errors import ImageError, ModelError, StoreError
from onnx_nfi.graph.layers import Layer, find_conv_layers, select_layers
from onnx_nfi.graph.load import LoadedModel, file_sha256, load_model
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.graph.rf_probe import compare, probe_receptive_fields
from onnx_nfi.graph.rf_walk import receptive_fields
from onnx_nfi.graph.session import check_runtime_install
from onnx_nfi.neurons.indexes import IndexLayer, IndexResult, compute_indexes
from onnx_nfi.neurons.nf import crop_geometry, layers_features
from onnx_nfi.scan.scanner import ScanResult, scan
from onnx_nfi.scan.topn import TopN
from onnx_nfi.store.duckdb_store import DEFAULT_DB, Store, check_writable

#: progress(phase, done, total): phases are "scan", "nf", "index". The library never prints.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LayerInfo:
    """A conv layer with its receptive field, as listed by ``onnx-nfi layers``."""

    layer: Layer
    rf: ReceptiveField


@dataclass(frozen=True)
class AnalysisSummary:
    """What ``analyze`` did, for the closing summary."""

    model: str
    db: Path
    run_id: int
    images_seen: int
    images_skipped: int
    layers: int
    neurons: int
    dead: int
    provider: str
    label_source: str
    preprocessing: str
    scan_seconds: float
    nf_seconds: float
    index_seconds: float
    total_seconds: float


@dataclass
class Analysis:
    """Everything one ``analyze`` computed, on its way into the database in one transaction."""

    name: str
    model: LoadedModel
    pre: Preprocessing
    infos: list[LayerInfo]
    scan: ScanResult
    skipped: list[tuple[Path, str]]
    label_source: str
    config: AnalyzeConfig
    probe: search.ProbeSet
    probe_scores: dict[str, np.ndarray]
    nfs: dict[str, np.ndarray]
    indexes: IndexResult | None
    started: dt.datetime
    finished: dt.datetime


def open_model(model_path: str | Path, preprocess: str | None = None) -> tuple[LoadedModel, Preprocessing]:
    """Load a model and decide its preprocessing (dynamic input sizes take the preprocessing's size)."""
    model_path = Path(model_path)
    lm = load_model(model_path)
    spec = lm.input
    pre = resolve(preprocess, model_path, (spec.height, spec.width), spec.layout, spec.dtype)
    if spec.height == 0 or spec.width == 0:
        lm = load_model(model_path, pre.input_size)
    return lm, pre


def model_layers(lm: LoadedModel, patterns: Iterable[str] = ()) -> list[LayerInfo]:
    """The model's conv layers (optionally selected) with their analytic receptive fields."""
    layers = select_layers(find_conv_layers(lm), list(patterns))
    rfs = receptive_fields(lm.proto, lm.input.name, (lm.input.height, lm.input.width), lm.input.layout, [l.tensor for l in layers])
    return [LayerInfo(layer, rfs[layer.tensor]) for layer in layers]


def layers(model_path: str | Path, patterns: Iterable[str] = (), preprocess: str | None = None) -> list[LayerInfo]:
    """``onnx-nfi layers``: conv layers, aliases, op chains, shapes and receptive fields."""
    lm, _ = open_model(model_path, preprocess)
    return model_layers(lm, patterns)


def analyze(
    model_path: str | Path,
    images: str | Path,
    *,
    db: str | Path = DEFAULT_DB,
    name: str | None = None,
    config: AnalyzeConfig = AnalyzeConfig(),
    progress: Progress | None = None,
) -> AnalysisSummary:
    """Scan ``images`` with ``model_path`` and store every selected layer's neurons in ``db``."""
    started = dt.datetime.now()
    check_runtime_install()
    indexes = parse_indexes(config.indexes)
    lm, pre = open_model(model_path, config.preprocess)
    infos = model_layers(lm, config.layers)
    imageset = list_images(images, config.labels)
    label_kind, label_arg = parse_label_option(config.labels)
    class_names = read_class_names(label_arg) if label_kind == "predicted" and label_arg else None
    check_writable(db)
    name = name or Path(model_path).stem
    probe = search.probe_for_analysis(db, imageset.files, config.probe_size)

    scan_result = scan(
        lm,
        [i.layer for i in infos],
        pre,
        imageset.files,
        top_n=config.top_n,
        batch_size=config.batch_size,
        provider=config.provider,
        predict_labels=imageset.label_source == "predicted",
        class_names=class_names,
        probe_sha256=probe.sha256,
        progress=(lambda d, t: progress("scan", d, t)) if progress else None,
    )
    if not scan_result.images:
        reasons = "; ".join(sorted({r for _, r in scan_result.skipped}))
        raise ImageError(f"no readable image in {imageset.root} ({reasons}); check the files")
    probe, probe_scores = search.complete_probe_scores(
        probe, scan_result, lm, pre, [i.layer for i in infos], batch_size=config.batch_size, provider=config.provider,
        progress=progress,
    )

    t_nf = dt.datetime.now()
    images_needed = top_images(scan_result) if (config.nf or indexes) else {}
    display = load_display_images(images_needed, pre)
    nfs = compute_nfs(scan_result, infos, display, pre, config, progress, display.chunk) if config.nf else {}
    t_index = dt.datetime.now()
    index_result = _compute_indexes(
        lm, pre, [IndexLayer(i.layer, i.rf, scan_result.stats[i.layer.tensor].topn) for i in infos], display,
        {img.image_id: img.label for img in scan_result.images}, config, progress,
    ) if indexes else None
    analysis = Analysis(
        name, lm, pre, infos, scan_result, [*imageset.rejected, *scan_result.skipped], imageset.label_source, config,
        probe, probe_scores, nfs, index_result, started, dt.datetime.now(),
    )

    created = not Path(db).exists()
    try:
        run_id, dead = _store_analysis(db, analysis)
    except BaseException:
        if created:  # never leave an empty or half-made database behind
            Path(db).unlink(missing_ok=True)
            Path(f"{db}.wal").unlink(missing_ok=True)
        raise
    search.sync_indexes(db)  # after the commit: FAISS follows DuckDB (and repairs itself if this is cut short)
    return AnalysisSummary(
        model=name,
        db=Path(db).resolve(),
        run_id=run_id,
        images_seen=len(scan_result.images),
        images_skipped=len(scan_result.skipped) + len(imageset.rejected),
        layers=len(infos),
        neurons=sum(i.layer.channels for i in infos),
        dead=dead,
        provider=scan_result.provider,
        label_source=imageset.label_source,
        preprocessing=pre.name,
        scan_seconds=scan_result.seconds,
        nf_seconds=(t_index - t_nf).total_seconds(),
        index_seconds=(analysis.finished - t_index).total_seconds(),
        total_seconds=(analysis.finished - started).total_seconds(),
    )


def _store_analysis(db: str | Path, analysis: Analysis) -> tuple[int, int]:
    """Replace the model's rows in one transaction; returns (run id, dead neurons)."""
    name = analysis.name
    with Store.open(db) as store, store.transaction():
        run_id = store.reserve_ids("runs", "run_id", 1)
        store.delete_model(name)
        _write_analysis(store, analysis, run_id)
        if analysis.indexes is not None:
            write_indexes(store, name, analysis.indexes)
        search.store_vectors(store, name, analysis.probe, analysis.probe_scores, analysis.nfs)
        dead = int(store.con.execute("SELECT count(*) FROM neurons WHERE model = ? AND dead", [name]).fetchone()[0])
    return run_id, dead


def _compute_indexes(
    lm: LoadedModel,
    pre: Preprocessing,
    items: list[IndexLayer],
    display: Mapping[int, np.ndarray],
    labels: dict[int, str | None],
    config: AnalyzeConfig,
    progress: Progress | None,
) -> IndexResult:
    """The configured selectivity indexes (analysis and ``index`` share this)."""
    return compute_indexes(
        lm, pre, items, display, labels, parse_indexes(config.indexes),
        color_mode=config.color_mode, rho=config.rho, population_threshold=config.population_threshold,
        batch_size=max(1, config.batch_size // 2), provider=config.provider, seed=config.seed,
        progress=(lambda d, t: progress("index", d, t)) if progress else None,
    )


def load_display_images(
    paths: dict[int, Path], pre: Preprocessing, budget_bytes: int = DISPLAY_BUDGET_BYTES
) -> DisplayImages:
    """The given images as the network saw them before normalisation, decoded on demand (in parallel,
    in id order) and kept within ``budget_bytes``."""
    return DisplayImages(paths, pre, budget_bytes)


def top_images(result: ScanResult) -> dict[int, Path]:
    """Paths of the union of all neurons' top-N images: decoded once for NFs and indexes."""
    paths = {img.image_id: img.path for img in result.images}
    needed = np.unique(np.concatenate([st.topn.ids[st.topn.ids >= 0] for st in result.stats.values()]))
    return {int(i): paths[int(i)] for i in needed}


def compute_nfs(
    result: ScanResult,
    infos: list[LayerInfo],
    images: Mapping[int, np.ndarray],
    pre: Preprocessing,
    config: AnalyzeConfig,
    progress: Progress | None,
    max_images: int | None = None,
) -> dict[str, np.ndarray]:
    """NFs of every layer from the top images (id -> display image), ``max_images`` of them at a time."""
    jobs = [
        (result.stats[info.layer.tensor].topn, crop_geometry(info.rf, pre.input_size, config.nf_max_size))
        for info in infos
    ]
    on_progress = (lambda done, total: progress("nf", done, total)) if progress else None
    features = layers_features(jobs, images, on_progress, max_images)
    return {info.layer.tensor: nfs for info, (nfs, _) in zip(infos, features)}


def write_indexes(store: Store, name: str, result: IndexResult) -> None:
    """Store index columns and class frequencies of a model (inside the caller's transaction)."""
    for layer, columns in result.columns.items():
        if not columns:
            continue
        units = len(next(iter(columns.values())))
        store.update_neurons(name, {
            "layer": np.full(units, layer, dtype=object), "unit": np.arange(units, dtype=np.int32), **columns,
        })
    if result.class_frequencies:
        store.con.execute("DELETE FROM class_frequencies WHERE model = ?", [name])
    for layer, (units, labels, freqs) in result.class_frequencies.items():
        store.insert("class_frequencies", {
            "model": np.full(units.size, name, dtype=object), "layer": np.full(units.size, layer, dtype=object),
            "unit": units.astype(np.int32), "label": labels.astype(object), "frequency": freqs,
        })


def _write_analysis(store: Store, analysis: Analysis, run_id: int) -> None:
    """Insert the model's rows (inside the caller's transaction)."""
    name, lm, pre, infos, result = analysis.name, analysis.model, analysis.pre, analysis.infos, analysis.scan
    skipped, nfs, config = analysis.skipped, analysis.nfs, analysis.config
    n_neurons = sum(i.layer.channels for i in infos)
    first_id = store.reserve_ids("neurons", "neuron_id", n_neurons)
    store.con.execute(
        "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [name, str(lm.path), lm.sha256, pre.input_size[0], pre.input_size[1], pre.layout, pre.to_json(), lm.opset, len(infos), run_id, analysis.finished],
    )
    imgs = result.images
    store.insert("images", {
        "model": np.full(len(imgs), name, dtype=object),
        "image_id": np.array([i.image_id for i in imgs], np.int64),
        "path": np.array([str(i.path) for i in imgs], dtype=object),
        "sha256": np.array([i.sha256 for i in imgs], dtype=object),
        "label": np.array([i.label for i in imgs], dtype=object),
        "label_source": np.full(len(imgs), analysis.label_source, dtype=object),
    })
    depths = [i.layer.depth for i in infos]
    lo, hi = min(depths), max(depths)
    store.insert("layers", {
        "model": np.full(len(infos), name, dtype=object),
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
    next_id = first_id
    for info in infos:
        layer, st = info.layer, result.stats[info.layer.tensor]
        c = layer.channels
        top = st.topn
        best = top.scores[:, 0]
        nf = nfs.get(layer.tensor)
        nf_col = np.empty(c, dtype=object)
        has_nf = np.zeros(c, bool)
        if nf is not None:
            has_nf = ~np.isnan(nf).any(axis=(1, 2, 3))
            for u in np.flatnonzero(has_nf):
                nf_col[u] = nf[u].reshape(-1)
        nf_h, nf_w = nf.shape[1:3] if nf is not None else (0, 0)
        store.insert("neurons", {
            "model": np.full(c, name, dtype=object),
            "layer": np.full(c, layer.tensor, dtype=object),
            "unit": np.arange(c, dtype=np.int32),
            "neuron_id": np.arange(next_id, next_id + c, dtype=np.int64),
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
        next_id += c
        filled = top.ids >= 0
        units, ranks = np.nonzero(filled)
        store.insert("top_activations", {
            "model": np.full(units.size, name, dtype=object),
            "layer": np.full(units.size, layer.tensor, dtype=object),
            "unit": units.astype(np.int32),
            "rank": (ranks + 1).astype(np.int32),
            "image_id": top.ids[filled],
            "y": top.ys[filled],
            "x": top.xs[filled],
            "activation": top.scores[filled],
            "pre_activation": top.keys[filled] if layer.pre_activation else np.full(units.size, np.nan, np.float32),
        })
    store.con.execute(
        "INSERT INTO runs VALUES (?, ?, 'analyze', ?, ?, ?, ?, ?, ?, ?)",
        [run_id, name, analysis.started, analysis.finished, len(result.images), len(skipped), config.top_n, result.provider, config.to_json()],
    )
    if skipped:
        store.insert("skipped_images", {
            "run_id": np.full(len(skipped), run_id, np.int32),
            "path": np.array([str(p) for p, _ in skipped], dtype=object),
            "reason": np.array([r for _, r in skipped], dtype=object),
        })


def verify_receptive_fields(model_path: str | Path, preprocess: str | None = None) -> dict[str, list[str]]:
    """Analytic vs empirically probed receptive field per layer; only layers that differ are returned."""
    lm, _ = open_model(model_path, preprocess)
    infos = model_layers(lm)
    hw = (lm.input.height, lm.input.width)
    measured = probe_receptive_fields(lm.proto, lm.input.name, hw, lm.input.layout, [i.layer.tensor for i in infos])
    problems = {
        i.layer.alias: compare(i.rf, measured[i.layer.tensor], hw, (i.layer.height, i.layer.width)) for i in infos
    }
    return {alias: p for alias, p in problems.items() if p}


SQL_FORMATS = ("table", "csv", "json", "parquet")


def sql(query: str, db: str | Path = DEFAULT_DB, *, write: bool = False) -> tuple[list[str], list[tuple]]:
    """Run SQL on the database (read-only unless ``write``); returns column names and rows."""
    with Store.open(db, read_only=not write) as store:
        try:
            cur = store.con.execute(query)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            hint = " (the database is opened read-only; pass --write to modify it)" if "read-only" in first.lower() else ""
            raise StoreError(f"SQL error: {first}{hint}") from None
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()


def export_parquet(query: str, target: str | Path, db: str | Path = DEFAULT_DB) -> Path:
    """Write a query's result to a Parquet file (DuckDB's own writer)."""
    target = Path(target)
    with Store.open(db, read_only=True) as store:
        try:
            store.con.execute(f"COPY ({query}) TO '{target.as_posix()}' (FORMAT parquet)")
        except duckdb.Error as exc:
            raise StoreError(f"SQL error: {str(exc).strip().splitlines()[0]}") from None
    return target


@dataclass(frozen=True)
class IndexSummary:
    """What ``index`` recomputed."""

    model: str
    indexes: tuple[str, ...]
    layers: int
    neurons: int
    seconds: float


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


def index(
    model: str,
    db: str | Path = DEFAULT_DB,
    *,
    config: AnalyzeConfig = AnalyzeConfig(),
    progress: Progress | None = None,
) -> IndexSummary:
    """(Re)compute selectivity indexes of a model already in the database, without a new scan."""
    started = dt.datetime.now()
    indexes = parse_indexes(config.indexes)
    with Store.open(db, read_only=True) as store:
        row = store.model_row(model)
        layer_rows = store.layer_rows(model)
        topns = {r["layer"]: stored_topn(store, model, r["layer"], r["channels"]) for r in layer_rows}
        image_rows = store.rows("SELECT image_id, path, label FROM images WHERE model = ?", [model])
    lm, pre = reopen_model(model, row)
    by_tensor = {layer.tensor: layer for layer in find_conv_layers(lm)}
    items = [
        IndexLayer(by_tensor[r["layer"]], _stored_rf(r), topns[r["layer"]]) for r in layer_rows if r["layer"] in by_tensor
    ]
    paths = {int(r["image_id"]): Path(r["path"]) for r in image_rows}
    needed = np.unique(np.concatenate([t.ids[t.ids >= 0] for t in topns.values()]))
    display = load_display_images({int(i): paths[int(i)] for i in needed}, pre)
    result = _compute_indexes(lm, pre, items, display, {int(r["image_id"]): r["label"] for r in image_rows}, config, progress)
    with Store.open(db) as store, store.transaction():
        write_indexes(store, model, result)
        search.store_index_vectors(store, model)
    search.sync_indexes(db)
    return IndexSummary(
        model, indexes, len(items), sum(i.layer.channels for i in items), (dt.datetime.now() - started).total_seconds()
    )


def reopen_model(model: str, row: dict[str, Any]) -> tuple[LoadedModel, Preprocessing]:
    """The ONNX file and preprocessing of a stored model, refusing a file that moved or changed."""
    path = Path(row["path"])
    if not path.is_file():
        raise ModelError(f"model file {path} of {model!r} is gone; analyse it again from its new place, or remove it")
    if file_sha256(path) != row["sha256"]:
        raise ModelError(f"model file {path} changed since {model!r} was analysed; analyse it again, or remove it")
    pre = from_dict(row["preprocessing"], f"stored preprocessing of {model}")
    return load_model(path, pre.input_size), pre


def _stored_rf(row: dict[str, Any]) -> ReceptiveField:
    return ReceptiveField(
        size=(row["rf_size_y"], row["rf_size_x"]),
        stride=(row["rf_stride_y"], row["rf_stride_x"]),
        offset=(row["rf_offset_y"], row["rf_offset_x"]),
        is_global=bool(row["rf_global"]),
    )
