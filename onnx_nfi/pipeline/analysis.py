"""One analysis as stages: plan (validate everything), scan (or a shard of it, resumable), finish
(probe scores, NFs, indexes, one database write). ``analyze``, ``analyze --shard`` and ``merge``
are these stages in different orders.

The scan state is saved to a state file on a schedule and when the scan ends, so a crash or
Ctrl-C loses at most one interval, and a finished analysis whose database write fails (locked
database, full disk) or is interrupted while waiting for the database is kept there and can be
written later; once the write has begun, a signal waits for its commit (``SignalHold``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.images import ImageSet, list_images, parse_label_option, read_class_names, relative_to_root
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ConfigError, ImageError, Interrupted, NfiError, ResultsNotWritten, StateError
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.model_layers import LayerInfo, model_layers
from onnx_nfi.graph.session import using_threads
from onnx_nfi.names import check_model_name
from onnx_nfi.pipeline import probe as probes
from onnx_nfi.pipeline.caveats import caveats
from onnx_nfi.pipeline.checkpoint import Checkpointer
from onnx_nfi.pipeline.features import FeatureWork, RunChunks, compute_features, local_chunks
from onnx_nfi.pipeline.finite import check_finite
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.pipeline.run_header import RunHeader, Shard, run_header
from onnx_nfi.pipeline.shards import merge_command
from onnx_nfi.pipeline.state_file import StateFile
from onnx_nfi.progress import Progress, StageProgress, count_steps, phase
from onnx_nfi.scan.scanner import ScanRequest, ScanResult, renumbered
from onnx_nfi.signals import SignalHold
from onnx_nfi.store.duckdb_store import check_writable, lock_wait
from onnx_nfi.store.results import WRITE_STEPS, AnalysisRecord, write_analysis
from onnx_nfi.store.vectors import ProbeSet, sync_after_commit

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """A validated analysis, before any long work: the run (``header``: model, options, images,
    shard, probe set, as every state of it records them) and what it loaded to check them."""

    header: RunHeader
    lm: LoadedModel
    pre: Preprocessing
    infos: list[LayerInfo]
    imageset: ImageSet
    class_names: list[str] | None

    @property
    def name(self) -> str:
        """The model's name in the database."""
        return self.header.name

    @property
    def config(self) -> AnalyzeConfig:
        """The analysis options (the batch size as the model allows it)."""
        return self.header.config

    @property
    def shard(self) -> Shard:
        """The part of the image list this plan scans."""
        return self.header.shard

    @property
    def probe(self) -> ProbeSet:
        """The probe images the scan scores."""
        return self.header.probe

    @property
    def layers(self) -> dict[str, Any]:
        """The analysed layers by tensor name."""
        return {i.layer.tensor: i.layer for i in self.infos}

    @property
    def paths(self) -> list[Path]:
        """Image paths by position in the image list."""
        return [Path(f.path) for f in self.imageset.files]

    def scan(
        self, start: int, end: int, progress: StageProgress | None, resume: ScanResult | None = None,
        checkpoint: Checkpointer | None = None,
    ) -> ScanResult:
        """Scan list positions ``start``..``end`` as this plan asks (ids: list positions): the one place
        an analysis, a shard, a resume and a cluster's shard task call the scanner."""
        request = ScanRequest(
            self.lm, list(self.layers.values()), self.pre, self.imageset.files[start:end], start, self.config.top_n,
            self.config.batch_size, self.config.provider, self.imageset.label_source == "predicted",
            self.class_names, self.probe.sha256,
        )
        with using_threads(self.config.threads):
            return request.run(progress, resume, checkpoint, renumber=False)

    def with_probe(self, probe: ProbeSet) -> Plan:
        """This plan scoring the probe images a saved scan was made with (a resume), so the saved
        scores and the probe list of every state it saves agree."""
        return replace(self, header=self.header.with_probe(probe))


@dataclass(frozen=True)
class Finished:
    """What ``finish`` wrote and how long its parts took."""

    record: AnalysisRecord
    run_id: int
    dead: int
    nf_seconds: float
    index_seconds: float
    warnings: tuple[str, ...]


def plan(
    model_path: str | Path, images: str | Path, db: str | Path | None, name: str | None, config: AnalyzeConfig,
    shard: Shard | None = None, probe: ProbeSet | None = None,
) -> Plan:
    """Check the model, layers, images, labels and database (``None``: a shard, which writes none);
    ``probe``: the probe set already chosen for this run (a Ray worker's shard, a merge), else chosen here."""
    shard = shard or Shard()
    lm, pre = open_model(model_path, config.preprocess, config.input_size, config.input)
    config = replace(config, batch_size=lm.batch(config.batch_size))  # stored with the run as it ran
    infos = model_layers(lm, config.layers)
    imageset = list_images(images, config.labels, config.max_pixels)
    label_kind, label_arg = parse_label_option(config.labels)
    class_names = read_class_names(label_arg) if label_kind == "predicted" and label_arg else None
    if label_kind == "predicted" and not lm.has_class_head:
        raise ConfigError(
            "--labels predicted needs a model whose output is class scores [N, classes]; this one has none: "
            "use --labels folder, csv:FILE or none"
        )
    if db is not None:
        check_writable(db)
    name = name or Path(model_path).stem
    check_model_name(name)
    # every shard scores the same probe images (chosen from the list); a database's own set is met at the write
    if probe is None:
        probe = probes.probe_for_analysis(db, imageset.files, config.probe_size) if shard.count == 1 and db else \
            probes.choose_probe(imageset.files, config.probe_size)
    return Plan(run_header(name, lm, pre, config, imageset, shard, probe), lm, pre, infos, imageset, class_names)


def scan_part(
    p: Plan, state: Path, *, resume: bool, progress: Progress | None = None,
) -> tuple[ScanResult, Plan]:
    """Scan the plan's shard of the image list (ids: list positions), saving its state to ``state``;
    with ``resume``, continue from the state there. Returns the finished scan and the plan it belongs
    to (a resumed run keeps scoring the probe images it started with)."""
    start, end = p.shard.bounds(len(p.imageset.files))
    partial, file = None, StateFile(state)
    if resume:
        partial, saved = file.resumable(p.header, p.layers, p.paths)
        p = p.with_probe(saved.run.probe)
        if saved.complete:
            return partial, p
        start = saved.next_position
    checkpoint = Checkpointer(file, p.header, p.config.settings)
    result = p.scan(start, end, phase(progress, "scan"), partial, checkpoint)
    file.mark_complete(p.header, result)
    return result, p


def finish(
    p: Plan, scanned: ScanResult, db: str | Path, state: Path, *, progress: Progress | None = None,
    started: dt.datetime | None = None, image_root: str | Path | None = None, run_chunks: RunChunks = local_chunks,
) -> Finished:
    """Probe scores, NFs and indexes of a finished scan (ids: list positions), written to ``db`` in one
    transaction; ``image_root`` stores image paths relative to it; ``run_chunks`` runs the NF and index
    passes' chunks (here, or on a cluster). If the write fails, the scan is saved to ``state`` and
    ResultsNotWritten names the command that writes it later."""
    started = started or dt.datetime.now()
    result = renumbered(scanned)
    if not result.images:
        reasons = "; ".join(sorted({r for _, r in result.skipped}))
        raise ImageError(f"no readable image in {p.imageset.root} ({reasons}); check the files")
    check_finite(result.stats)
    with _kept_on_failure(p, scanned, db, state, image_root), lock_wait(p.config.lock_timeout, phase(progress, "lock")):
        probe, scores = _probe_scores_for(db, p, result)  # the scan is done: its work waits for a busy database
    with using_threads(p.config.threads):
        probe, probe_scores = probes.complete_probe_scores(
            probe, replace(result, probe_scores=scores), p.lm, p.pre, list(p.layers.values()),
            batch_size=p.config.batch_size, provider=p.config.provider, progress=progress,
        )
    topns = {tensor: st.topn for tensor, st in result.stats.items()}
    work = FeatureWork.of(
        p.lm, p.pre, p.infos, topns,
        {i.image_id: Path(i.path) for i in result.images}, {i.image_id: i.label for i in result.images}, p.config,
        sha256={i.image_id: i.sha256 for i in result.images},
    )
    with using_threads(p.config.threads):  # a cluster's tasks use their layout's
        features = compute_features(work, progress, run_chunks)
    if image_root is not None:
        result = replace(result, images=[replace(i, path=relative_to_root(i.path, image_root)) for i in result.images])
    record = AnalysisRecord(
        p.name, p.lm, p.pre, p.infos, result, [*p.imageset.rejected, *result.skipped], p.imageset.label_source,
        p.config, probe, probe_scores, features.nfs, features.indexes, started, dt.datetime.now(),
    )
    steps = count_steps(phase(progress, "write"), WRITE_STEPS)
    with _kept_on_failure(p, scanned, db, state, image_root), lock_wait(p.config.lock_timeout, phase(progress, "lock")):
        run_id, dead = write_analysis(db, record, steps)  # finished work waits for a busy database
    warnings = (
        *p.lm.notices, *p.imageset.warnings, *p.pre.warnings(),
        *probes.probe_warnings(probe, len(p.imageset.files), p.config.probe_size),
        *caveats(topns.values(), features.indexes),
    )
    return Finished(record, run_id, dead, features.nf_seconds, features.index_seconds, warnings)


def write(
    p: Plan, scanned: ScanResult, db: str | Path, state: Path, summarise: Callable[[Finished], T], *,
    progress: Progress | None = None, started: dt.datetime | None = None, image_root: str | Path | None = None,
    remove_state: bool = False, run_chunks: RunChunks = local_chunks,
) -> T:
    """``finish`` (its chunks run by ``run_chunks``), then the state file removed (``remove_state``: it was this run's checkpoint), FAISS
    brought in step and ``summarise(finished)``. From the start of the database write on, Ctrl-C and
    SIGTERM wait until all of this is done (seconds), then stop the command with an Interrupted saying
    that the results were written: the commit and the FAISS files are never cut. Before it (and while
    it waits for another process's lock) they stop it at once, and ``finish`` says what it kept."""
    done, in_step = None, False
    try:
        with SignalHold() as hold:
            done = finish(
                p, scanned, db, state, progress=progress, started=started, image_root=image_root, run_chunks=run_chunks
            )
            if remove_state:
                state.unlink(missing_ok=True)
            late = sync_after_commit(db, p.config.lock_timeout, phase(progress, "lock"))  # FAISS follows DuckDB
            in_step = not late
            done = replace(done, warnings=(*done.warnings, *late))
            summary = summarise(done)
        hold.deliver()
    except KeyboardInterrupt as exc:
        if done is None:  # before the write: ``finish`` said what it kept
            raise
        raise Interrupted.written(exc, p.name, Path(db).resolve(), done.run_id, in_step) from None
    return summary


def save_finished(p: Plan, scanned: ScanResult, state: Path) -> None:
    """Save a finished scan of the whole list to ``state`` (for ``merge``, or ``--resume``); a signal
    waits for the file to be whole."""
    StateFile(state).mark_complete(p.header, scanned)


@contextmanager
def _kept_on_failure(
    p: Plan, scanned: ScanResult, db: str | Path, state: Path, image_root: str | Path | None
) -> Iterator[None]:
    """Around each database access of ``finish``: if the database cannot be opened or written (locked
    until the lock wait gives up, disk full at commit), save the finished scan to ``state`` and raise
    ResultsNotWritten with the command that writes it later (it recomputes NFs and indexes, which are
    deterministic and take a fraction of the scan); a Ctrl-C or SIGTERM, as an Interrupted saying so."""
    try:
        yield
    except (NfiError, duckdb.Error, OSError, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc).strip().splitlines()[0]
        try:
            save_finished(p, scanned, state)
        except StateError as saving:  # e.g. the disk that refused the commit refuses the state too
            raise StateError(f"the analysis of {p.name} finished but could not be written to {db} ({reason}), "
                             f"and {saving}") from None
        command = merge_command(state, db, image_root)
        message = (
            f"the analysis of {p.name} finished but could not be written to {db} ({reason}); it is saved in "
            f"{state}: write it with '{command}'"
        )
        if isinstance(exc, KeyboardInterrupt):  # before the transaction began (from then on signals wait for it)
            raise Interrupted.of(exc, f"Interrupted; {message}.") from None
        raise ResultsNotWritten(message, str(state), command) from None


def _probe_scores_for(db: str | Path, p: Plan, result: ScanResult) -> tuple[ProbeSet, dict[str, np.ndarray]]:
    """The probe set the write must score (the database's, if it has one by now) and the scan's scores
    lined up with it (NaN rows for images the scan did not score, scored in an extra pass)."""
    probe = probes.probe_for_analysis(db, (), p.config.probe_size) if Path(db).exists() else p.probe
    if not len(probe):
        probe = p.probe
    row = {sha: k for k, sha in enumerate(p.probe.sha256)}
    take = np.array([row.get(sha, -1) for sha in probe.sha256], np.int64)
    scores = {}
    for tensor, s in result.probe_scores.items():
        aligned = np.full((len(take), s.shape[1]), np.nan, np.float32)
        aligned[take >= 0] = s[take[take >= 0]]
        scores[tensor] = aligned
    return probe, scores
