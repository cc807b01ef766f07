"""The batched scan: images -> instrumented model -> per-layer TopN and Moments.

Only ``[B, C]`` max/argmax arrays (and, for a layer with a pre-activation rule, the tie-break
key) come back from the runtime per layer; they update the streaming states and are dropped, so memory stays flat however many images are scanned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.loader import Batch, iter_batches
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.instrument import instrument
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.session import Runner
from onnx_nfi.progress import StageProgress
from onnx_nfi.scan.topn import Moments, TopN

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
    """Scan ``files`` once, keeping per-neuron top-N, moments and scores on the probe images."""
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
    started = time.perf_counter()
    done = 0
    if progress:
        progress(0, len(files))

    held: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []  # (ids, outputs) not yet in the statistics

    def update_stats() -> None:
        ids = np.concatenate([i for i, _ in held])
        for tensor, st in stats.items():
            scores = np.concatenate([r[outputs.max[tensor]] for _, r in held])
            flat = np.concatenate([r[outputs.argmax[tensor]] for _, r in held])
            key = outputs.key.get(tensor)
            keys = np.concatenate([r[key] for _, r in held]) if key else None
            st.topn.update(ids, scores, flat // st.layer.width, flat % st.layer.width, keys)
            st.moments.update(scores)
        held.clear()

    def absorb(batch: Batch, result: dict[str, np.ndarray]) -> None:
        nonlocal done
        labels = [f.label for f in batch.files]
        if predict_labels:
            logits = result[outputs.model_outputs[0]].reshape(len(batch.ids), -1)
            top1 = logits.argmax(axis=1)
            labels = [class_names[k] if class_names and k < len(class_names) else str(int(k)) for k in top1]
        for row, sha in enumerate(batch.sha256):
            if sha in probe_index:
                for tensor in stats:
                    probe_scores[tensor][probe_index[sha]] = result[outputs.max[tensor]][row]
        kept = (*outputs.max.values(), *outputs.argmax.values(), *outputs.key.values())
        held.append((batch.ids, {name: result[name] for name in kept}))
        if sum(len(i) for i, _ in held) >= _STATS_EVERY:
            update_stats()
        images.extend(
            ScannedImage(int(i), Path(f.path), sha, label)
            for i, f, sha, label in zip(batch.ids, batch.files, batch.sha256, labels)
        )
        done += len(batch.ids)
        if progress:
            progress(done + len(skipped), len(files))

    # Inference of batch k runs (GIL released) while batch k-1's statistics are updated, so the
    # runtime never waits on numpy; one worker keeps batches in order.
    with ThreadPoolExecutor(1, thread_name_prefix="nfi-infer") as infer:
        pending: tuple[Batch, Future[dict[str, np.ndarray]]] | None = None
        for batch in iter_batches(files, pre, batch_size, on_skip=lambda p, r: skipped.append((p, r))):
            running = infer.submit(runner.run, batch.tensor)
            if pending is not None:
                absorb(pending[0], pending[1].result())
            pending = (batch, running)
        if pending is not None:
            absorb(pending[0], pending[1].result())
    if held:
        update_stats()
    return ScanResult(stats, images, skipped, runner.provider, time.perf_counter() - started, probe_scores)
