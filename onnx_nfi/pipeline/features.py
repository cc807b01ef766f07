"""From top-N states to Neuron Features and selectivity indexes (analysis and ``index`` share this).

Both passes read the top images, which on a large set are most of the set, so they work through
them in chunks of ``CHUNK_IMAGES`` images in ascending id order: a chunk is decoded, gives its NF
crop sums (``neurons.nf.chunk_sums``) or its index responses (``neurons.indexes.chunk_responses``),
and is dropped. Memory is then one chunk of display images plus the outputs, whatever the number
of images. Chunks are independent of each other, so they may run anywhere: here one after the
other (``local_chunks``), or as Ray tasks (``pipeline.distributed.RayChunks``); either way a
``Fold`` combines their outputs in chunk order, so the result is the same bit for bit.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.display import decode_display
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.model_layers import LayerInfo
from onnx_nfi.neurons.indexes import (
    IndexLayer,
    IndexResult,
    Responses,
    Sessions,
    chunk_responses,
    chunk_steps,
    image_passes,
    indexes_from,
)
from onnx_nfi.neurons.nf import NfPlan, add_sums, chunk_sums, crop_geometry, finish_features, plan_features, zero_sums
from onnx_nfi.progress import Progress, count_steps, phase
from onnx_nfi.scan.topn import TopN

#: Top images per chunk of the NF and index passes: 512 display images are 75 MB at 224 px, and
#: already a 1,000-image set has two chunks, so the passes' memory is the same from there on.
CHUNK_IMAGES = 512


def top_image_ids(topns: Iterable[TopN]) -> np.ndarray:
    """The union of all neurons' top images that enter NFs and indexes (positive score), ascending."""
    return np.unique(np.concatenate([t.ids[(t.scores > 0) & (t.ids >= 0)] for t in topns] or [np.zeros(0, np.int64)]))


@dataclass(frozen=True)
class FeatureWork:
    """Everything the NF and index passes need, in one picklable value (a Ray run puts it in the
    object store once; each task names its chunk)."""

    lm: LoadedModel
    pre: Preprocessing
    infos: tuple[LayerInfo, ...]
    topns: Mapping[str, TopN]
    paths: Mapping[int, Path]  # top image id -> file, for the top images only
    labels: Mapping[int, str | None]  # top image id -> label
    config: AnalyzeConfig
    chunk_images: int = CHUNK_IMAGES
    #: tells a worker process whether the passes' state it keeps belongs to this work
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: top image id -> content hash the scan recorded: an image read again must still be that one
    sha256: Mapping[int, str] = field(default_factory=dict)
    #: images per label over all images analysed (the base rates of concept labels)
    label_counts: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls, lm: LoadedModel, pre: Preprocessing, infos: Iterable[LayerInfo], topns: Mapping[str, TopN],
        paths: Mapping[int, Path], labels: Mapping[int, str | None], config: AnalyzeConfig,
        chunk_images: int = CHUNK_IMAGES, sha256: Mapping[int, str] | None = None,
    ) -> FeatureWork:
        """The work of ``infos``' layers, keeping of ``paths``, ``labels`` and ``sha256`` only the top images."""
        ids = [int(i) for i in top_image_ids(topns.values())]
        hashes = {i: sha256[i] for i in ids if i in sha256} if sha256 else {}
        counts = Counter(label for label in labels.values() if label is not None)
        return cls(lm, pre, tuple(infos), dict(topns), {i: paths[i] for i in ids}, {i: labels.get(i) for i in ids},
                   config, chunk_images, sha256=hashes, label_counts=dict(counts))

    def chunks(self) -> list[np.ndarray]:
        """The top image ids, ``chunk_images`` at a time."""
        ids = np.array(sorted(self.paths), np.int64)
        return [ids[lo : lo + self.chunk_images] for lo in range(0, ids.size, self.chunk_images)]

    def index_layers(self) -> list[IndexLayer]:
        return [IndexLayer(i.layer, i.rf, self.topns[i.layer.tensor]) for i in self.infos]

    def nf_plans(self) -> list[NfPlan]:
        return plan_features([
            (self.topns[i.layer.tensor], crop_geometry(i.rf, self.pre.input_size, self.config.nf_max_size))
            for i in self.infos
        ])


class ChunkWorker:
    """Runs chunks of one ``FeatureWork``, keeping what the chunks share (NF plans, sessions)."""

    def __init__(self, work: FeatureWork) -> None:
        self.work = work
        self._plans: list[NfPlan] | None = None
        self._sessions = Sessions(work.lm, work.config.provider)

    @property
    def plans(self) -> list[NfPlan]:
        """The NF plans of every layer, made on first use (the driver's finish uses the same ones)."""
        if self._plans is None:
            self._plans = self.work.nf_plans()
        return self._plans

    def steps(self, kind: str) -> int:
        """Progress steps of one chunk: its decoding, then each layer (``nf``) or index pass (``index``)."""
        return 1 + (len(self.plans) if kind == "nf" else chunk_steps(self.work.index_layers(), self.work.config))

    def run(self, kind: str, chunk: np.ndarray, step: Callable[[], None] | None = None) -> ChunkOutput:
        """``nf``: the chunk's crop sums per layer; ``index``: its index responses; ``step`` after each of ``steps``."""
        w = self.work
        images = decode_display({int(i): w.paths[int(i)] for i in chunk}, w.pre, w.sha256)
        if step is not None:
            step()
        if kind == "nf":
            return chunk_sums(self.plans, images, chunk, step)
        return chunk_responses(self._sessions, w.pre, w.index_layers(), images, chunk, w.config, step)


#: What a pass's chunks give: NF crop sums per layer (``nf``) or index responses (``index``).
ChunkOutput = list[np.ndarray] | Responses


class Fold:
    """One pass's chunk outputs combined in chunk order, wherever the chunks ran: NF crop sums added
    (float32, from zero), index responses taken in. One fixed order of additions is what makes a
    chunked or distributed pass equal the plain one bit for bit."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value: ChunkOutput | None = None

    def add(self, part: ChunkOutput) -> None:
        """Take in the next chunk's output."""
        if self.kind == "nf":
            if self.value is None:
                self.value = [np.zeros_like(s) for s in part]
            add_sums(self.value, part)
        else:
            if self.value is None:
                self.value = Responses()
            self.value.add(part)

    def result(self) -> ChunkOutput | None:
        """The combined outputs; None when there was no chunk."""
        return self.value


#: ``run_chunks(work, kind, chunks, progress)``: the outputs of ``ChunkWorker.run`` for every chunk,
#: combined in chunk order by a ``Fold``.
RunChunks = Callable[[FeatureWork, str, list[np.ndarray], Progress | None], ChunkOutput | None]


def local_chunks(work: FeatureWork, kind: str, chunks: list[np.ndarray], progress: Progress | None) -> ChunkOutput | None:
    """The chunks one after the other in this process; progress per layer (or index pass) of each chunk."""
    worker, fold = chunk_worker(work), Fold(kind)
    step = count_steps(phase(progress, kind), len(chunks) * worker.steps(kind)) if chunks else None
    for chunk in chunks:
        fold.add(worker.run(kind, chunk, step))
    return fold.result()


_kept: dict[str, ChunkWorker] = {}


def chunk_worker(work: FeatureWork) -> ChunkWorker:
    """This process's worker for ``work``: made once, reused by its next chunks (and passes); a
    worker of earlier work is dropped."""
    if work.token not in _kept:
        _kept.clear()
        _kept[work.token] = ChunkWorker(work)
    return _kept[work.token]


def release_worker(work: FeatureWork) -> None:
    """Drop this process's worker for ``work`` (its sessions) once both passes are done."""
    _kept.pop(work.token, None)


@dataclass(frozen=True)
class Features:
    """NFs by layer tensor, the index result, and each pass's wall time."""

    nfs: dict[str, np.ndarray]
    indexes: IndexResult | None
    nf_seconds: float
    index_seconds: float


def compute_features(work: FeatureWork, progress: Progress | None, run_chunks: RunChunks = local_chunks) -> Features:
    """The NFs (when ``config.nf``) and the configured indexes of ``work``, chunk by chunk through
    ``run_chunks``, each pass combined in chunk order."""
    config, chunks = work.config, work.chunks()
    started = time.perf_counter()
    nfs: dict[str, np.ndarray] = {}
    try:
        if config.nf:
            plans = chunk_worker(work).plans  # a local pass's chunks use these too
            totals = run_chunks(work, "nf", chunks, progress)
            totals = zero_sums(plans) if totals is None else totals
            nfs = {info.layer.tensor: nf for info, (nf, _) in zip(work.infos, finish_features(plans, totals))}
            del totals
        t_index = time.perf_counter()
        result = None
        if config.indexes:
            responses = run_chunks(work, "index", chunks, progress) if image_passes(config) else None
            result = indexes_from(work.index_layers(), responses or Responses(), work.labels, config, work.label_counts)
    finally:  # the sessions and top-N it holds go with the work, also when a pass fails
        release_worker(work)
    return Features(nfs, result, t_index - started, time.perf_counter() - t_index)
