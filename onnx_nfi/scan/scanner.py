"""The batched scan: images -> instrumented model -> per-layer TopN and Moments.

Only ``[B, C]`` max/argmax arrays (and, for a layer with a pre-activation rule, the tie-break
key) come back from the runtime per layer; they update the streaming states and are dropped, so memory stays flat however many images are scanned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.loader import Batch, iter_batches
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.progress import StageProgress
from onnx_nfi.scan.finite import check_batch
from onnx_nfi.scan.rule import Ran, RuleRunner
from onnx_nfi.scan.topn import Moments, TopN
from onnx_nfi.signals import signals_wait

#: Images whose per-layer outputs are merged into the top-N in one update (per-update work is
#: 49 small compiled calls for Lite0 plus concatenations; the held outputs are ~0.3 MB an image).
_STATS_EVERY = 128



@dataclass(frozen=True)
class ScannedImage:
    """A readable image as scanned: id, absolute path, content hash, label."""

    image_id: int
    path: Path
    sha256: str
    label: str | None


@dataclass
class LayerStats:
    """Streaming results for one layer."""

    layer: Layer
    topn: TopN
    moments: Moments


@dataclass
class ScanResult:
    """Everything the scan learnt; probe scores are ``[P, C]`` per layer, NaN where a probe was not seen."""

    stats: dict[str, LayerStats]
    images: list[ScannedImage]
    skipped: list[tuple[Path, str]]
    provider: str
    seconds: float
    probe_scores: dict[str, np.ndarray] = field(default_factory=dict)


class ScanCheckpoint(Protocol):
    """Where a long scan saves its progress (``onnx_nfi.pipeline.checkpoint.Checkpointer``)."""

    def due(self, images: int) -> bool:
        """Whether a save is due after ``images`` images of this scan."""

    def save(self, partial: ScanResult, next_position: int) -> None:
        """Keep ``partial`` (ids are file positions); scanning resumes at file ``next_position``."""


@dataclass(frozen=True)
class ScanRequest:
    """What to scan: the model's ``layers`` over ``files`` (the first at list position
    ``first_position``), keeping ``top_n`` images per neuron and the scores on the probe images
    ``probe_sha256``; ``predict_labels``: label images by the model's top-1 class (``class_names``)."""

    model: LoadedModel
    layers: Sequence[Layer]
    pre: Preprocessing
    files: Sequence[ImageFile]
    first_position: int = 0
    top_n: int = 100
    batch_size: int = 32
    provider: str = "auto"
    predict_labels: bool = False
    class_names: Sequence[str] | None = None
    probe_sha256: Sequence[str] = ()

    def run(
        self, progress: StageProgress | None = None, resume: ScanResult | None = None,
        checkpoint: ScanCheckpoint | None = None, *, renumber: bool = True,
    ) -> ScanResult:
        """Scan the files once, keeping per-neuron top-N, moments and scores on the probe images.

        While scanning, an image's id is its position in the whole image list, so a resumed run
        (``resume``: the partial result saved by ``checkpoint``) or a shard ranks images exactly as
        one run over the list would; ``renumber`` turns the positions into ids among readable images
        at the end (shards keep positions until they are merged). On Ctrl-C the checkpoint gets the
        state of the last finished batch.
        """
        model, predict_labels = self.model, self.predict_labels
        batch_size = model.batch(self.batch_size)
        if predict_labels and model.input.batch == 1:
            batch_size = 1  # the exporter fixed batch 1 in the head (e.g. Reshape([1, -1])), which predictions need
        runner = RuleRunner(model, self.layers, self.provider, keep_model_outputs=predict_labels)
        state = Scanning(self, runner, progress, checkpoint, resume)
        files, pre = self.files, self.pre
        # Inference of batch k runs (GIL released) while batch k-1's statistics are updated, so the
        # runtime never waits on numpy; one worker keeps batches in order.
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="nfi-infer") as infer:
                pending: tuple[Batch, Future[Ran]] | None = None
                for batch in iter_batches(files, pre, batch_size, on_skip=state.skip):
                    running = infer.submit(runner.run, batch.tensor)
                    if pending is not None:
                        state.absorb(pending[0], pending[1].result())
                    pending = (batch, running)
                if pending is not None:
                    state.absorb(pending[0], pending[1].result())
        except KeyboardInterrupt:
            state.save()
            raise
        result = state.result()
        return renumbered(result) if renumber else result


def scan(
    model: LoadedModel,
    layers: Sequence[Layer],
    pre: Preprocessing,
    files: Sequence[ImageFile],
    *,
    top_n: int = 100,
    batch_size: int = 32,
    provider: str = "auto",
    predict_labels: bool = False,
    class_names: Sequence[str] | None = None,
    probe_sha256: Sequence[str] = (),
    progress: StageProgress | None = None,
) -> ScanResult:
    """A whole scan of ``files`` in one call, ids among the readable images (``ScanRequest.run``)."""
    request = ScanRequest(model, layers, pre, files, 0, top_n, batch_size, provider, predict_labels, class_names,
                          probe_sha256)
    return request.run(progress)


class Scanning:
    """The scan's state between batches: statistics, images seen, files skipped, outputs not yet absorbed."""

    def __init__(
        self, request: ScanRequest, runner: RuleRunner, progress: StageProgress | None,
        checkpoint: ScanCheckpoint | None, resume: ScanResult | None,
    ) -> None:
        layers, top_n, probe_sha256, files = request.layers, request.top_n, request.probe_sha256, request.files
        self.runner, self.outputs, self.first_position = runner, runner.outputs, request.first_position
        self.progress, self.checkpoint = progress, checkpoint
        self.predict_labels = request.predict_labels
        self.class_names = request.class_names if request.predict_labels else None
        self.stats = {
            layer.tensor: LayerStats(layer, TopN.empty(layer.channels, top_n), Moments.empty(layer.channels))
            for layer in layers
        }
        self.probe_index = {sha: i for i, sha in enumerate(probe_sha256)}
        self.probe_scores = {
            layer.tensor: np.full((len(self.probe_index), layer.channels), np.nan, np.float32) for layer in layers
        }
        self.images: list[ScannedImage] = []
        self.skipped: list[tuple[Path, str]] = []
        self.earlier = 0.0  # seconds of the scan before a resume
        if resume is not None:
            self.stats = {t: LayerStats(s.layer, resume.stats[t].topn, resume.stats[t].moments) for t, s in self.stats.items()}
            if self.probe_index:
                self.probe_scores = {t: resume.probe_scores[t].copy() for t in self.probe_scores}
            self.images, self.skipped, self.earlier = list(resume.images), list(resume.skipped), resume.seconds
        self.files = files
        self._positions: dict[Path, int] | None = None
        self.total = len(self.images) + len(self.skipped) + len(files)
        # (ids, outputs, images) of batches run but not yet in the statistics
        self.held: list[tuple[np.ndarray, dict[str, np.ndarray], list[ScannedImage]]] = []
        outputs = self.outputs
        self.kept_names = (*outputs.max.values(), *outputs.argmax.values(), *outputs.key.values())
        self.done = 0
        self.started = time.perf_counter()
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress(len(self.images) + sum(len(i) for i, _, _ in self.held) + len(self.skipped), self.total)

    def skip(self, path: Path, reason: str) -> None:
        """An unreadable file (reported by the loader)."""
        self.skipped.append((path, reason))

    def absorb(self, batch: Batch, ran: Ran) -> None:
        """Take one batch's outputs: probe scores now, statistics every ``_STATS_EVERY`` images."""
        result = self.runner.exact(batch.tensor, ran, {t: st.topn for t, st in self.stats.items()})
        labels = self.labels(batch, result)
        for tensor, st in self.stats.items():  # refused at the batch where they appear, not after the scan
            check_batch(st.layer, result[self.outputs.max[tensor]])
        self.take_probe_scores(batch, result)
        ids = batch.positions + self.first_position
        scanned = [ScannedImage(int(i), Path(f.path), sha, label)
                   for i, f, sha, label in zip(ids, batch.files, batch.sha256, labels)]
        # one step: a signal lands before or after it, and the images join ``images`` with the statistics
        self.held.append((ids, {name: result[name] for name in self.kept_names}, scanned))
        self.done += len(batch.ids)
        full = sum(len(i) for i, _, _ in self.held) >= _STATS_EVERY
        if full:
            self.update_stats()
        if full:  # after the batch is wholly taken: a Ctrl-C while a session is built leaves a whole state
            self.runner.consider({t: st.topn for t, st in self.stats.items()})
        self.report()
        if self.checkpoint is not None and self.checkpoint.due(self.done):
            self.save()

    def take_probe_scores(self, batch: Batch, result: dict[str, np.ndarray]) -> None:
        for row, sha in enumerate(batch.sha256):
            if sha in self.probe_index:
                for tensor in self.stats:
                    self.probe_scores[tensor][self.probe_index[sha]] = result[self.outputs.max[tensor]][row]

    def labels(self, batch: Batch, result: dict[str, np.ndarray]) -> list[str | None]:
        """The files' labels, or the model's top-1 class with ``--labels predicted``."""
        if not self.predict_labels:
            return [f.label for f in batch.files]
        top1 = result[self.outputs.model_outputs[0]].reshape(len(batch.ids), -1).argmax(axis=1)
        names = self.class_names
        return [names[k] if names and k < len(names) else str(int(k)) for k in top1]

    def update_stats(self) -> None:
        """Merge the held batches into every layer's top-N and moments, and list their images."""
        held, outputs = self.held, self.outputs
        ids = np.concatenate([i for i, _, _ in held])
        with signals_wait():  # every layer takes the held batches and ``images`` lists them, or none of this
            for tensor, st in self.stats.items():  # happens: the saved list is exactly what the statistics hold
                scores = np.concatenate([r[outputs.max[tensor]] for _, r, _ in held])
                flat = np.concatenate([r[outputs.argmax[tensor]] for _, r, _ in held])
                key = outputs.key.get(tensor)
                keys = np.concatenate([r[key] for _, r, _ in held]) if key else None
                st.topn.update(ids, scores, flat // st.layer.width, flat % st.layer.width, keys)
                st.moments.update(scores)
            self.images.extend(img for _, _, batch_images in held for img in batch_images)
            held.clear()

    def result(self) -> ScanResult:
        """Everything absorbed so far (ids are file positions)."""
        if self.held:
            self.update_stats()
        seconds = self.earlier + time.perf_counter() - self.started
        return ScanResult(self.stats, self.images, self.skipped, self.runner.provider, seconds, self.probe_scores)

    def save(self) -> None:
        """Hand the checkpoint the state after the last absorbed batch (skips reported ahead of it are redone)."""
        if self.checkpoint is None:
            return
        partial = self.result()
        resume_at = self.images[-1].image_id + 1 if self.images else self.first_position
        kept = [(p, r) for p, r in self.skipped if self.position(p) < resume_at]
        self.checkpoint.save(replace(partial, skipped=kept), max(resume_at, self.first_position))

    def position(self, path: Path) -> int:
        """A file's list position; -1 for one of an earlier run (a resumed scan's skips)."""
        if self._positions is None:  # only a save needs it: built then, not per batch
            self._positions = {Path(f.path): self.first_position + k for k, f in enumerate(self.files)}
        return self._positions.get(Path(path), -1)


def renumbered(result: ScanResult) -> ScanResult:
    """Ids as positions among the readable images (those of one plain run) instead of list positions.

    The map is monotone, so every ranking and tie stays as it was; only the ``ids`` of each
    ``TopN`` change (its other fields, whatever they are, travel as they are).
    """
    positions = np.array([img.image_id for img in result.images], np.int64)
    order = np.argsort(positions, kind="stable")
    positions = positions[order]

    def dense(ids: np.ndarray) -> np.ndarray:
        return np.where(ids >= 0, np.searchsorted(positions, ids), ids).astype(ids.dtype)

    stats = {t: LayerStats(s.layer, replace(s.topn, ids=dense(s.topn.ids)), s.moments) for t, s in result.stats.items()}
    images = [replace(result.images[k], image_id=rank) for rank, k in enumerate(order)]
    return replace(result, stats=stats, images=images)
