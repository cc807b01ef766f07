"""The verbs of onnx-nfi, each a Python twin of one command; the only place where stages are wired.

model -> instrumented graph -> batched scan -> top-N state -> NF / indexes -> DuckDB (+ FAISS)
Each verb validates all user input before any long work, and writes the database in one
transaction at the end, so a failure never leaves a half-written model behind. Verbs never print:
long ones take a ``progress(phase, done, total)`` callback.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from onnx_nfi import search
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.display import DisplayImages
from onnx_nfi.data.images import list_images, parse_label_option, read_class_names
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ConfigError, ImageError
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.graph.model_layers import LayerInfo, model_layers
from onnx_nfi.graph.receptive_field import clipped_windows
from onnx_nfi.graph.rf_probe import measure_windows, outside_windows
from onnx_nfi.graph.session import check_runtime_install
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.neurons.indexes import IndexLayer
from onnx_nfi.pipeline import probe as probes
from onnx_nfi.pipeline.features import compute_nfs, selectivity_indexes, top_image_paths
from onnx_nfi.pipeline.finite import check_finite
from onnx_nfi.pipeline.models import open_model, reopen_model
from onnx_nfi.progress import Progress, phase
from onnx_nfi.report import pictures, render
from onnx_nfi.scan.scanner import scan
from onnx_nfi.scan.topn import TopN
from onnx_nfi.store.compact import CompactSummary
from onnx_nfi.store.compact import compact as compact_db
from onnx_nfi.store.duckdb_store import Store, check_writable, lock_wait
from onnx_nfi.store.results import AnalysisRecord, stored_rf, stored_topn, write_analysis, write_index_run
from onnx_nfi.store.vectors import RemoveSummary, sync_indexes
from onnx_nfi.store.vectors import remove as remove_model

#: ``onnx-nfi similar``: the neurons nearest to a ``MODEL:LAYER:UNIT`` (draw them with
#: ``onnx_nfi.report.render.similar_png``).
similar = search.similar

__all__ = [
    "AnalysisSummary", "CompactSummary", "DemoResult", "IndexSummary", "LayerInfo", "ProbeSummary", "RFVerification",
    "analyze", "compact", "demo", "export_parquet", "index", "layers", "match", "remove", "set_probe", "similar", "sql", "verify_receptive_fields",
]

ProbeSummary = probes.ProbeSummary


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
    warnings: tuple[str, ...] = ()  # what the user should know about the run (the CLI prints them)
    skipped: tuple[tuple[Path, str], ...] = ()  # every file not analysed, with its reason


@dataclass(frozen=True)
class IndexSummary:
    """What ``index`` recomputed."""

    model: str
    indexes: tuple[str, ...]
    layers: int
    neurons: int
    seconds: float


def layers(
    model_path: str | Path, patterns: Iterable[str] = (), preprocess: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> list[LayerInfo]:
    """``onnx-nfi layers``: conv layers, aliases, op chains, shapes and receptive fields."""
    lm, _ = open_model(model_path, preprocess, input_size)
    return model_layers(lm, patterns)


@dataclass(frozen=True)
class RFVerification:
    """``layers --verify-rf``: layers whose measured windows reach outside the analytic field (wrong
    analytic RFs), and layers whose measured (effective) windows are only smaller (the weights')."""

    mismatches: dict[str, list[str]]
    effective_smaller: tuple[str, ...]


def verify_receptive_fields(
    model_path: str | Path, preprocess: str | None = None, input_size: tuple[int, int] | None = None
) -> RFVerification:
    """Analytic (theoretical) vs empirically probed (effective) receptive field of every layer."""
    lm, _ = open_model(model_path, preprocess, input_size)
    infos = model_layers(lm)
    hw = (lm.input.height, lm.input.width)
    measured = measure_windows(lm.proto, lm.input.name, hw, lm.input.layout, [i.layer.tensor for i in infos])
    mismatches, smaller = {}, []
    for i in infos:
        analytic = clipped_windows(i.rf, hw, (i.layer.height, i.layer.width))
        problems, shrunk = outside_windows(analytic, measured[i.layer.tensor])
        if problems:
            mismatches[i.layer.alias] = problems
        elif shrunk:
            smaller.append(i.layer.alias)
    return RFVerification(mismatches, tuple(smaller))


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
    lm, pre = open_model(model_path, config.preprocess, config.input_size)
    if lm.batch_one_inside:
        config = replace(config, batch_size=1)
    infos = model_layers(lm, config.layers)
    imageset = list_images(images, config.labels, config.max_pixels)
    label_kind, label_arg = parse_label_option(config.labels)
    class_names = read_class_names(label_arg) if label_kind == "predicted" and label_arg else None
    if label_kind == "predicted" and not lm.has_class_head:
        raise ConfigError(
            "--labels predicted needs a model whose output is class scores [N, classes]; this one has none: "
            "use --labels folder, csv:FILE or none"
        )
    check_writable(db)
    name = name or Path(model_path).stem
    probe = probes.probe_for_analysis(db, imageset.files, config.probe_size)
    layer_list = [i.layer for i in infos]

    result = scan(
        lm, layer_list, pre, imageset.files, top_n=config.top_n, batch_size=config.batch_size,
        provider=config.provider, predict_labels=imageset.label_source == "predicted", class_names=class_names,
        probe_sha256=probe.sha256, progress=phase(progress, "scan"),
    )
    if not result.images:
        reasons = "; ".join(sorted({r for _, r in result.skipped}))
        raise ImageError(f"no readable image in {imageset.root} ({reasons}); check the files")
    check_finite(result.stats)
    probe, probe_scores = probes.complete_probe_scores(
        probe, result, lm, pre, layer_list, batch_size=config.batch_size, provider=config.provider, progress=progress,
    )

    t_nf = dt.datetime.now()
    topns = {tensor: st.topn for tensor, st in result.stats.items()}
    display = _display(topns.values(), {img.image_id: img.path for img in result.images}, pre,
                       config.nf or bool(config.indexes))
    nfs = compute_nfs(topns, infos, display, pre, config, progress) if config.nf else {}
    t_index = dt.datetime.now()
    index_result = selectivity_indexes(
        lm, pre, [IndexLayer(i.layer, i.rf, topns[i.layer.tensor]) for i in infos], display,
        {img.image_id: img.label for img in result.images}, config, progress,
    ) if config.indexes else None
    record = AnalysisRecord(
        name, lm, pre, infos, result, [*imageset.rejected, *result.skipped], imageset.label_source, config,
        probe, probe_scores, nfs, index_result, started, dt.datetime.now(),
    )
    with lock_wait(config.lock_timeout, phase(progress, "lock")):  # finished work waits for a busy database
        run_id, dead = write_analysis(db, record)
        sync_indexes(db)  # after the commit: FAISS follows DuckDB (and repairs itself if this is cut short)
    return AnalysisSummary(
        model=name, db=Path(db).resolve(), run_id=run_id, images_seen=len(result.images),
        images_skipped=len(record.skipped), layers=len(infos), neurons=sum(i.layer.channels for i in infos),
        dead=dead, provider=result.provider, label_source=imageset.label_source, preprocessing=pre.name,
        scan_seconds=result.seconds, nf_seconds=(t_index - t_nf).total_seconds(),
        index_seconds=(record.finished - t_index).total_seconds(),
        total_seconds=(record.finished - started).total_seconds(),
        warnings=(*lm.notices, *imageset.warnings, *pre.warnings(), *probes.probe_warnings(probe, len(imageset.files), config.probe_size)),
        skipped=tuple(record.skipped),
    )


def _display(topns: Iterable[TopN], paths: dict[int, Path], pre: Preprocessing, needed: bool) -> DisplayImages:
    """The top images as the network saw them, decoded on demand; none when nothing reads them."""
    return DisplayImages(top_image_paths(topns, paths) if needed else {}, pre)


def index(
    model: str,
    db: str | Path = DEFAULT_DB,
    *,
    config: AnalyzeConfig = AnalyzeConfig(),
    progress: Progress | None = None,
) -> IndexSummary:
    """(Re)compute selectivity indexes of a model already in the database, without a new scan."""
    started = dt.datetime.now()
    with Store.open(db, read_only=True) as store:
        row = store.model_row(model)
        layer_rows = store.layer_rows(model)
        topns = {r["layer"]: stored_topn(store, model, r["layer"], r["channels"]) for r in layer_rows}
        image_rows = store.rows("SELECT image_id, path, label FROM images WHERE model = ?", [model])
    lm, pre = reopen_model(model, row)
    by_tensor = {layer.tensor: layer for layer in find_conv_layers(lm)}
    items = [
        IndexLayer(by_tensor[r["layer"]], stored_rf(r), topns[r["layer"]]) for r in layer_rows if r["layer"] in by_tensor
    ]
    display = _display(topns.values(), {int(r["image_id"]): Path(r["path"]) for r in image_rows}, pre, True)
    labels = {int(r["image_id"]): r["label"] for r in image_rows}
    write_index_run(db, model, selectivity_indexes(lm, pre, items, display, labels, config, progress), config, started)
    sync_indexes(db)
    return IndexSummary(
        model, config.indexes, len(items), sum(i.layer.channels for i in items),
        (dt.datetime.now() - started).total_seconds(),
    )


def sql(query: str, db: str | Path = DEFAULT_DB, *, write: bool = False) -> tuple[list[str], list[tuple]]:
    """Run SQL on the database (read-only unless ``write``); returns column names and rows."""
    with Store.open(db, read_only=not write) as store:
        return store.query(query)


def export_parquet(query: str, target: str | Path, db: str | Path = DEFAULT_DB) -> Path:
    """Write a query's result to a Parquet file (DuckDB's own writer)."""
    with Store.open(db, read_only=True) as store:
        return store.export_parquet(query, target)


def set_probe(
    db: str | Path,
    images_dir: str | Path,
    *,
    size: int = AnalyzeConfig.probe_size,
    force: bool = False,
    batch_size: int = AnalyzeConfig.batch_size,
    provider: str = AnalyzeConfig.provider,
    progress: Progress | None = None,
) -> ProbeSummary:
    """``onnx-nfi probe``: make up to ``size`` images of ``images_dir`` the database's probe set."""
    return probes.set_probe(
        db, images_dir, size=size, force=force, batch_size=batch_size, provider=provider, progress=progress
    )


def remove(db: str | Path, model: str) -> RemoveSummary:
    """``onnx-nfi remove``: delete every row of ``model`` and its search vectors."""
    return remove_model(db, model)


def compact(db: str | Path = DEFAULT_DB) -> CompactSummary:
    """``onnx-nfi compact``: rewrite the database file without the space deleted rows left."""
    return compact_db(db)


def match(db: str | Path, model_a: str, model_b: str, picture: str | Path | None = None) -> search.MatchResult:
    """``onnx-nfi match``: match every neuron of ``model_a`` in ``model_b`` (stored in ``neuron_matches``);
    ``picture`` gets the heat map of mean best correlation, layer by layer (checked before the work)."""
    if picture is not None:
        pictures.check_png(picture)
    result = search.match(db, model_a, model_b)
    if picture is None:
        return result
    return replace(result, picture=render.match_png(result, picture))


#: The bundled models and the queries the demo prints.
BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"
DEMO_MODELS = ("efficientnet_lite0", "mobilenetv2_deepsort")
DEMO_QUERIES = (
    ("Most colour-selective neurons of Lite0's conv20",
     "SELECT unit, round(color_selectivity, 3) AS color, round(active_fraction, 2) AS active, top_class "
     "FROM neurons n JOIN layers l USING (model, layer) WHERE model = 'efficientnet_lite0' AND alias = 'conv20' "
     "AND active_fraction > 0.2 ORDER BY color_selectivity DESC LIMIT 5"),
    ("Colour and class selectivity by relative depth, both models",
     "SELECT model, alias, round(relative_depth, 2) AS depth, round(color_selectivity_median, 3) AS color, "
     "round(class_selectivity_median, 3) AS class FROM layer_summary WHERE alias IN ('conv1', 'conv10', 'conv25', "
     "'conv40', 'conv49', 'conv52') ORDER BY model, depth"),
)


@dataclass(frozen=True)
class DemoResult:
    """What ``demo`` made: the database, the analyses, the pictures, the model match and the browser."""

    db: Path
    images: Path
    pictures: tuple[Path, ...]
    analyses: tuple[AnalysisSummary, ...]
    match: search.MatchResult
    report: Path


def demo(
    output: str | Path = "demo-output",
    *,
    on_step: Callable[[str], Progress | None] | None = None,
    on_analysis: Callable[[AnalysisSummary], None] | None = None,
) -> DemoResult:
    """``onnx-nfi demo``: analyse the bundled models on the demo photos (built from installed packages)
    into ``output/nfi.duckdb``, draw the README's pictures into ``output/pictures`` and build the
    neuron browser into ``output/report``. Before each long step ``on_step(title)`` may return the
    progress callback for it; ``on_analysis(summary)`` is called after each analysis."""
    from onnx_nfi.data.demo_images import build_demo_images
    from onnx_nfi.report.site.build import build_report

    def step(title: str) -> Progress | None:
        return on_step(title) if on_step else None

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    images = build_demo_images(output / "images")
    db, folder = output / "nfi.duckdb", output / "pictures"
    folder.mkdir(exist_ok=True)
    analyses = []
    for model in DEMO_MODELS:
        progress = step(f"Analysing {model} on {images}")
        analyses.append(analyze(BUNDLED_MODELS / f"{model}.onnx", images, db=db, progress=progress))
        if on_analysis:
            on_analysis(analyses[-1])
    lite0 = DEMO_MODELS[0]
    drawn = [render.grid_png(lite0, layer, folder / f"lite0_{layer}_nfs.png", db, limit=64) for layer in ("conv1", "conv40")]
    drawn.append(render.card_png(lite0, "conv40", _most_class_selective(db, lite0, "conv40"), folder / "lite0_conv40_card.png", db))
    drawn.append(render.summary_png(list(DEMO_MODELS), ["color_selectivity", "class_selectivity"], folder / "selectivity.png", db)[0])
    matched = match(db, *DEMO_MODELS, picture=folder / "match.png")
    site = build_report(output / "report", db, progress=step(f"Building the neuron browser in {output / 'report'}"))
    return DemoResult(db, images, tuple(drawn), tuple(analyses), matched, site.output)


def _most_class_selective(db: Path, model: str, layer: str) -> int:
    """The unit whose top images are most dominated by one class: a good neuron card."""
    with Store.open(db, read_only=True) as store:
        rows = store.rows(
            "SELECT unit FROM neurons n JOIN layers l USING (model, layer) WHERE model = ? AND alias = ? AND NOT dead "
            "ORDER BY top_class_frequency DESC NULLS LAST, unit LIMIT 1",
            [model, layer],
        )
    return int(rows[0]["unit"])
