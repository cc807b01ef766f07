"""The verbs of onnx-nfi, each a Python twin of one command; the only place where stages are wired.

model -> instrumented graph -> batched scan -> top-N state -> NF / indexes -> DuckDB (+ FAISS)
Each verb validates all user input before any long work, and writes the database in one
transaction at the end, so a failure never leaves a half-written model behind. Verbs never print:
long ones take a ``progress(phase, done, total)`` callback. A verb that uses a database takes it as
the keyword ``db``. The verbs of runs and the database are here; the pictures (``pictures``), the
browser (``site``), ``similar`` (``neighbours``), ``relevance`` (``ablation``) and ``demo`` have
modules of their own. ``__all__`` is ``onnx_nfi.names.API_NAMES``, which the package lists too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from onnx_nfi import search
from onnx_nfi.api.ablation import relevance
from onnx_nfi.api.demo import DemoResult, demo
from onnx_nfi.api.neighbours import similar
from onnx_nfi.api.pictures import Drawn, SummaryPicture, card, grid, nf, summary, top
from onnx_nfi.api.site import ReportSummary, Serving, build_report, serve
from onnx_nfi.config import AnalyzeConfig, IndexConfig
from onnx_nfi.data.images import relative_to_root
from onnx_nfi.errors import ConfigError, Interrupted
from onnx_nfi.graph.model_layers import LayerInfo, model_layers
from onnx_nfi.graph.receptive_field import clipped_windows
from onnx_nfi.graph.rf_probe import measure_windows, outside_windows
from onnx_nfi.graph.session import check_runtime_install
from onnx_nfi.names import API_NAMES, DEFAULT_DB
from onnx_nfi.neurons.color_naming import color_memberships
from onnx_nfi.pipeline import analysis
from onnx_nfi.pipeline import probe as probes
from onnx_nfi.pipeline import query as asking
from onnx_nfi.pipeline.interruption import interruption
from onnx_nfi.pipeline.run_header import Shard, parse_shard
from onnx_nfi.pipeline.shards import check_shards, merge_command, merge_states
from onnx_nfi.pipeline.state_file import StateFile, resume_or_start
from onnx_nfi.pipeline.features import local_chunks
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.pipeline.reindex import reindex
from onnx_nfi.pipeline.run_lock import run_lock
from onnx_nfi.pipeline.relevance import RelevanceSummary
from onnx_nfi.progress import Progress
from onnx_nfi.report import pictures, render
from onnx_nfi.search.describe import Description
from onnx_nfi.search.describe import describe as describe_neuron
from onnx_nfi.search.find import FindResult
from onnx_nfi.search.find import find as find_neurons
from onnx_nfi.store.compact import CompactSummary
from onnx_nfi.store.compact import compact as compact_db
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.import_db import ImportSummary, import_models
from onnx_nfi.store.model_removal import RemoveSummary
from onnx_nfi.store.model_removal import remove as remove_model
from onnx_nfi.store.vectors import sync_after_commit

#: ``onnx-nfi query`` (an image, or a folder into a table) and ``onnx-nfi where``: a new image put to
#: a stored model (``onnx_nfi.pipeline.query``).
query, query_folder, where = asking.query, asking.query_folder, asking.where
QueryResult, QueryTable, WhereResult = asking.QueryResult, asking.QueryTable, asking.WhereResult


__all__ = list(API_NAMES)  # the package lists the same names without importing this module

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
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerListing(Sequence[LayerInfo]):
    """What ``layers`` found: the layers (the sequence itself) and what the user should hear about
    the model, as ``analyze`` says it (a dynamic input size filled in, convs left out, batch 1 inside)."""

    items: tuple[LayerInfo, ...]
    notices: tuple[str, ...] = ()

    def __getitem__(self, k):  # type: ignore[no-untyped-def]  # an index or a slice, as a tuple's
        return self.items[k]

    def __len__(self) -> int:
        return len(self.items)


def layers(
    model_path: str | Path, patterns: Iterable[str] = (), preprocess: str | None = None,
    input_size: tuple[int, int] | None = None, input_name: str | None = None,
) -> LayerListing:
    """``onnx-nfi layers``: conv layers, aliases, op chains, shapes and receptive fields."""
    lm, _ = open_model(model_path, preprocess, input_size, input_name)
    return LayerListing(tuple(model_layers(lm, patterns)), lm.notices)


@dataclass(frozen=True)
class RFVerification:
    """``layers --verify-rf``: layers whose measured windows reach outside the analytic field (wrong
    analytic RFs), and layers whose measured (effective) windows are only smaller (the weights')."""

    mismatches: dict[str, list[str]]
    effective_smaller: tuple[str, ...]


def verify_receptive_fields(
    model_path: str | Path, preprocess: str | None = None, input_size: tuple[int, int] | None = None,
    input_name: str | None = None,
) -> RFVerification:
    """Analytic (theoretical) vs empirically probed (effective) receptive field of every layer."""
    lm, _ = open_model(model_path, preprocess, input_size, input_name)
    infos = model_layers(lm)
    hw = (lm.input.height, lm.input.width)
    # one pass (every row and column moved once, H + W images): a pixel the pass misses can only make
    # a window look smaller, never wider, so a wrong field is still caught; the tests of the walk use four
    measured = measure_windows(lm.proto, lm.input.name, hw, lm.input.layout, [i.layer.tensor for i in infos], passes=1)
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
    resume: bool = False,
    checkpoint: str | Path | None = None,
    shard: str | None = None,
    ray: str | None = None,
    image_root: str | Path | None = None,
) -> AnalysisSummary | ShardSummary:
    """Scan ``images`` with ``model_path`` and store every selected layer's neurons in ``db``.

    The scan state is saved to ``checkpoint`` (default ``DB.NAME.state``) as it goes; ``resume``
    continues from it. It is removed once the results are committed. ``shard`` (``i/n``) scans only
    part ``i`` of ``n`` of the image list into a state file for ``merge`` (default
    ``DB.NAME.shard-i-of-n.state``), writes no database and returns a ``ShardSummary``. ``ray`` (an
    address, or ``local``) runs the scan as shard tasks and the NF and index passes as chunk tasks on
    a Ray cluster (``pipeline/distributed.py``).
    ``image_root`` stores image paths relative to it, so the database can move with the images.
    """
    started = dt.datetime.now()
    check_runtime_install()
    if shard is not None:
        if ray is not None:
            raise ConfigError("--shard scans one part on this machine; --ray splits the whole run itself: give one of them")
        if image_root is not None:
            raise ConfigError("a shard writes no database: give --image-root to 'onnx-nfi merge', which writes it")
        return _scan_shard(model_path, images, parse_shard(shard), db, name, config, progress, resume, checkpoint)
    if ray is not None and resume:
        raise ConfigError("--resume continues a run on one machine; a --ray run retries failed tasks itself")
    p = analysis.plan(model_path, images, db, name, config)
    if image_root is not None:
        relative_to_root(p.imageset.root, image_root)
    state = Path(checkpoint) if checkpoint else state_path(p.name, db=db)
    StateFile(state).check_writable()
    with run_lock(state):
        return _analyze_plan(p, db, state, resume, ray, image_root, progress, started)


def _analyze_plan(
    p: analysis.Plan, db: str | Path, state: Path, resume: bool, ray: str | None, image_root: str | Path | None,
    progress: Progress | None, started: dt.datetime,
) -> AnalysisSummary:
    """``analyze`` once planned, holding the run lock of ``state``."""
    resume, notes = resume_or_start(state, resume)
    run_chunks = local_chunks
    try:
        if ray is not None:
            from onnx_nfi.pipeline.distributed import RayChunks, distributed_scan

            scanned = distributed_scan(p, ray, progress)
            analysis.save_finished(p, scanned, state)  # the cluster's scan survives a stop in the later passes
            run_chunks = RayChunks(ray)
        else:
            scanned, p = analysis.scan_part(p, state, resume=resume, progress=progress)
        return analysis.write(
            p, scanned, db, state, lambda done: _summary(db, done, scanned.seconds, started, notes), progress=progress,
            started=started, image_root=image_root, remove_state=True, run_chunks=run_chunks,
        )
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say what the state file holds
        hint = merge_command(state, db, image_root) if ray is not None else None
        raise interruption(exc, p.header, state, db, merge_hint=hint) from None


def state_path(name: str, shard: Shard | None = None, *, db: str | Path = DEFAULT_DB) -> Path:
    """Where a run keeps its scan state unless told: beside the database, named by model (and shard)."""
    suffix = f".shard-{shard.index}-of-{shard.count}" if shard and shard.count > 1 else ""
    return Path(f"{db}.{name}{suffix}.state")


@dataclass(frozen=True)
class ShardSummary:
    """What ``analyze(shard=...)`` scanned and where its state is."""

    model: str
    shard: str
    state: Path
    images_seen: int
    images_skipped: int
    seconds: float
    warnings: tuple[str, ...] = ()  # what the user should know about the run (the CLI prints them)


def _scan_shard(
    model_path: str | Path, images: str | Path, part: Shard, db: str | Path, name: str | None,
    config: AnalyzeConfig, progress: Progress | None, resume: bool, checkpoint: str | Path | None,
) -> ShardSummary:
    """``analyze --shard i/n``: the part's scan state, for ``merge``."""
    p = analysis.plan(model_path, images, None, name, config, part)
    state = Path(checkpoint) if checkpoint else state_path(p.name, part, db=db)
    StateFile(state).check_writable()
    with run_lock(state):
        resume, notes = resume_or_start(state, resume)
        try:
            scanned, _ = analysis.scan_part(p, state, resume=resume, progress=progress)
        except KeyboardInterrupt as exc:
            raise interruption(exc, p.header, state, None) from None
    return ShardSummary(
        p.name, str(part), state.resolve(), len(scanned.images), len(scanned.skipped), scanned.seconds, notes
    )


def merge(
    states: Sequence[str | Path],
    *,
    db: str | Path = DEFAULT_DB,
    progress: Progress | None = None,
    image_root: str | Path | None = None,
) -> AnalysisSummary:
    """``onnx-nfi merge``: combine the state files of shards 1..n (or one finished run's) into the result
    of one run over the whole image list, then compute NFs and indexes and write ``db`` (image paths
    relative to ``image_root`` when given). Shard states are kept; a finished run's state (one that a
    failed or stopped write left) is removed once written."""
    started = dt.datetime.now()
    check_runtime_install()
    paths = [Path(s) for s in states]
    run = check_shards(paths)
    p = analysis.plan(run.model_path, run.image_root, db, run.name, run.config, probe=run.probe)
    StateFile(paths[0]).check_same_run(replace(run, shard=Shard()), p.header)
    if image_root is not None:
        relative_to_root(p.imageset.root, image_root)
    whole_run = run.shard.count == 1
    state = paths[0] if whole_run else state_path(p.name, db=db)
    try:
        with run_lock(state):
            scanned = merge_states(paths, p.layers, p.paths)
            return analysis.write(
                p, scanned, db, state, lambda done: _summary(db, done, scanned.seconds, started),
                progress=progress, started=started, image_root=image_root, remove_state=whole_run,
            )
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted) and str(exc):  # the write's own account of what it kept
            raise
        raise Interrupted.of(exc, f"Interrupted; nothing was written to {db}; the state files are unchanged.") from None


def _summary(
    db: str | Path, done: analysis.Finished, scan_seconds: float, started: dt.datetime, notes: tuple[str, ...] = ()
) -> AnalysisSummary:
    record = done.record
    return AnalysisSummary(
        model=record.name, db=Path(db).resolve(), run_id=done.run_id, images_seen=len(record.scan.images),
        images_skipped=len(record.skipped), layers=len(record.infos),
        neurons=sum(i.layer.channels for i in record.infos), dead=done.dead, provider=record.scan.provider,
        label_source=record.label_source, preprocessing=record.pre.name, scan_seconds=scan_seconds,
        nf_seconds=done.nf_seconds, index_seconds=done.index_seconds,
        total_seconds=(dt.datetime.now() - started).total_seconds(),  # the write included
        warnings=(*notes, *done.warnings), skipped=tuple(record.skipped),
    )


def index(
    model: str,
    *,
    db: str | Path = DEFAULT_DB,
    config: IndexConfig = IndexConfig(),
    progress: Progress | None = None,
    image_root: str | Path | None = None,
    saved: str | Path | None = None,
) -> IndexSummary:
    """(Re)compute selectivity indexes of a model already in the database, without a new scan
    (``image_root``: where images stored relative to their root are now). The write waits up to
    ``config.lock_timeout`` for a locked database; if it cannot happen the indexes are saved and
    ResultsNotWritten names the command that writes them: ``saved``, that file (nothing is computed)."""
    started = dt.datetime.now()
    if not config.indexes and saved is None:
        raise ConfigError("index recomputes the indexes named by --indexes; name at least one (e.g. --indexes color,class)")
    done = reindex(model, db, config, progress, image_root, saved, started)
    return IndexSummary(
        model, done.config.indexes, done.layers, done.neurons, (dt.datetime.now() - started).total_seconds(),
        (*done.notes, *sync_after_commit(db)),
    )


def describe(neuron: str, *, db: str | Path = DEFAULT_DB) -> Description:
    """``onnx-nfi describe``: a neuron's (MODEL:LAYER:UNIT) top colour and concept label in words, and indexes."""
    return describe_neuron(db, neuron)


def find(
    words: str, *, db: str | Path = DEFAULT_DB, models: Sequence[str] = (), layers: Sequence[str] = (), k: int = 20,
) -> FindResult:
    """``onnx-nfi find``: the ``k`` neurons (of ``models``, ``layers``) whose colour names and concept labels
    match every word (``red dog``), best evidence first."""
    return find_neurons(db, words, models=models, layers=layers, k=k)


def sql(query: str, *, db: str | Path = DEFAULT_DB, write: bool = False) -> tuple[list[str], list[tuple]]:
    """Run SQL on the database (read-only unless ``write``); returns column names and rows."""
    with Store.open(db, read_only=not write) as store:
        return store.query(query)


def export_parquet(query: str, target: str | Path, *, db: str | Path = DEFAULT_DB) -> Path:
    """Write a query's result to a Parquet file (DuckDB's own writer)."""
    with Store.open(db, read_only=True) as store:
        return store.export_parquet(query, target)


def set_probe(
    images_dir: str | Path | None,
    *,
    db: str | Path = DEFAULT_DB,
    size: int = AnalyzeConfig.probe_size,
    force: bool = False,
    batch_size: int = AnalyzeConfig.batch_size,
    provider: str = AnalyzeConfig.provider,
    progress: Progress | None = None,
    lock_timeout: float = AnalyzeConfig.lock_timeout,
    saved: str | Path | None = None,
) -> ProbeSummary:
    """``onnx-nfi probe``: make up to ``size`` images of ``images_dir`` the database's probe set (the
    write of the recomputed profiles waits up to ``lock_timeout`` s for a locked database; if it still
    cannot happen they are kept and ResultsNotWritten names the command that writes them: ``saved``)."""
    return probes.set_probe(
        db, images_dir, size=size, force=force, batch_size=batch_size, provider=provider, progress=progress,
        lock_timeout=lock_timeout, saved=saved,
    )


def import_db(other: str | Path, models: Sequence[str] = (), *, db: str | Path = DEFAULT_DB) -> ImportSummary:
    """``onnx-nfi import``: copy ``models`` (default all) analysed in database ``other`` into ``db``."""
    return import_models(db, other, models)


def remove(model: str, *, db: str | Path = DEFAULT_DB) -> RemoveSummary:
    """``onnx-nfi remove``: delete every row of ``model`` and its search vectors."""
    return remove_model(db, model)


def compact(*, db: str | Path = DEFAULT_DB) -> CompactSummary:
    """``onnx-nfi compact``: rewrite the database file without the space deleted rows left."""
    return compact_db(db)


def match(
    model_a: str, model_b: str, picture: str | Path | None = None, *, db: str | Path = DEFAULT_DB,
    lock_timeout: float = AnalyzeConfig.lock_timeout, saved: str | Path | None = None,
) -> search.MatchResult:
    """``onnx-nfi match``: match every neuron of ``model_a`` in ``model_b`` (stored in ``neuron_matches``);
    ``picture`` gets the heat map of mean best correlation, layer by layer (checked before the work). A
    database another process holds is waited for up to ``lock_timeout`` s; if the write still cannot
    happen the matches are kept and ResultsNotWritten names the command that writes them: ``saved``,
    that file (nothing is computed)."""
    if picture is not None:
        pictures.check_png(picture)
    result = search.match(db, model_a, model_b, lock_timeout=lock_timeout, saved=saved)
    if picture is None:
        return result
    return replace(result, picture=render.match_png(result, picture).path)

