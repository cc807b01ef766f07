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
from onnx_nfi.graph.instrument import instrument
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.session import Runner
from onnx_nfi.progress import StageProgress
from onnx_nfi.scan.finite import check_batch
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
    resume: ScanResult | None = None,
    first_position: int = 0,
    checkpoint: ScanCheckpoint | None = None,
    renumber: bool = True,
) -> ScanResult:
    """Scan ``files`` once, keeping per-neuron top-N, moments and scores on the probe images.

    While scanning, an image's id is its position in the whole image list (``first_position`` is
    that of ``files[0]``), so a resumed run (``resume``: the partial result saved by
    ``checkpoint``) or a shard ranks images exactly as one run over the list would; ``renumber``
    turns the positions into ids among readable images at the end (shards keep positions until
    they are merged). On Ctrl-C the checkpoint gets the state of the last finished batch.
    """
    batch_size = model.batch(batch_size)
    if predict_labels and model.input.batch == 1:
        batch_size = 1  # the exporter fixed batch 1 in the head (e.g. Reshape([1, -1])), which predictions need
    proto, outputs = instrument(model, list(layers), keep_model_outputs=predict_labels)
    runner = Runner(proto, provider)
    stats = {
        layer.tensor: LayerStats(layer, TopN.empty(layer.channels, top_n), Moments.empty(layer.channels))
        for layer in layers
    }
    probe_index = {sha: i for i, sha in enumerate(probe_sha256)}
    probe_scores = {
        layer.tensor: np.full((len(probe_index), layer.channels), np.nan, np.float32) for layer in layers
    }
    images: list[ScannedImage] = []
    skipped: list[tuple[Path, str]] = []
    earlier = 0.0  # seconds of the scan before a resume
    if resume is not None:
        stats = {t: LayerStats(s.layer, resume.stats[t].topn, resume.stats[t].moments) for t, s in stats.items()}
        probe_scores = {t: resume.probe_scores[t].copy() for t in probe_scores} if probe_index else probe_scores
        images, skipped, earlier = list(resume.images), list(resume.skipped), resume.seconds
    position = {Path(f.path): first_position + k for k, f in enumerate(files)}
    total = len(images) + len(skipped) + len(files)
    started = time.perf_counter()
    done = 0
    if progress:
        progress(len(images) + len(skipped), total)

    # (ids, outputs, images) of batches run but not yet in the statistics
    held: list[tuple[np.ndarray, dict[str, np.ndarray], list[ScannedImage]]] = []

    def update_stats() -> None:
        ids = np.concatenate([i for i, _, _ in held])
        with signals_wait():  # every layer takes the held batches and ``images`` lists them, or none of this
            for tensor, st in stats.items():  # happens: the saved list is exactly what the statistics hold
                scores = np.concatenate([r[outputs.max[tensor]] for _, r, _ in held])
                flat = np.concatenate([r[outputs.argmax[tensor]] for _, r, _ in held])
                key = outputs.key.get(tensor)
                keys = np.concatenate([r[key] for _, r, _ in held]) if key else None
                st.topn.update(ids, scores, flat // st.layer.width, flat % st.layer.width, keys)
                st.moments.update(scores)
            images.extend(img for _, _, batch_images in held for img in batch_images)
            held.clear()

    def absorb(batch: Batch, result: dict[str, np.ndarray]) -> None:
        nonlocal done
        labels = [f.label for f in batch.files]
        if predict_labels:
            logits = result[outputs.model_outputs[0]].reshape(len(batch.ids), -1)
            top1 = logits.argmax(axis=1)
            labels = [class_names[k] if class_names and k < len(class_names) else str(int(k)) for k in top1]
        for tensor, st in stats.items():  # refused at the batch where they appear, not after the scan
            check_batch(st.layer, result[outputs.max[tensor]])
        for row, sha in enumerate(batch.sha256):
            if sha in probe_index:
                for tensor in stats:
                    probe_scores[tensor][probe_index[sha]] = result[outputs.max[tensor]][row]
        ids = np.array([position[Path(f.path)] for f in batch.files], np.int64)
        kept = (*outputs.max.values(), *outputs.argmax.values(), *outputs.key.values())
        scanned = [ScannedImage(int(i), Path(f.path), sha, label)
                   for i, f, sha, label in zip(ids, batch.files, batch.sha256, labels)]
        held.append((ids, {name: result[name] for name in kept}, scanned))  # one step: a signal is before or after
        done += len(batch.ids)
        if sum(len(i) for i, _, _ in held) >= _STATS_EVERY:
            update_stats()
        if progress:
            progress(len(images) + sum(len(i) for i, _, _ in held) + len(skipped), total)
        if checkpoint is not None and checkpoint.due(done):
            save()

    def save() -> None:
        """Hand the checkpoint the state after the last absorbed batch (skips reported ahead of it are redone)."""
        if checkpoint is None:
            return
        if held:
            update_stats()
        resume_at = images[-1].image_id + 1 if images else first_position
        kept = [(p, r) for p, r in skipped if position.get(Path(p), -1) < resume_at]
        checkpoint.save(
            ScanResult(stats, images, kept, runner.provider, earlier + time.perf_counter() - started, probe_scores),
            max(resume_at, first_position),
        )

    # Inference of batch k runs (GIL released) while batch k-1's statistics are updated, so the
    # runtime never waits on numpy; one worker keeps batches in order.
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="nfi-infer") as infer:
            pending: tuple[Batch, Future[dict[str, np.ndarray]]] | None = None
            for batch in iter_batches(files, pre, batch_size, on_skip=lambda p, r: skipped.append((p, r))):
                running = infer.submit(runner.run, batch.tensor)
                if pending is not None:
                    absorb(pending[0], pending[1].result())
                pending = (batch, running)
            if pending is not None:
                absorb(pending[0], pending[1].result())
    except KeyboardInterrupt:
        save()
        raise
    if held:
        update_stats()
    result = ScanResult(stats, images, skipped, runner.provider, earlier + time.perf_counter() - started, probe_scores)
    return renumbered(result) if renumber else result


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
