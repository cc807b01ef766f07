"""Selectivity indexes of every neuron: the extra forward passes, and the formulas run over them (§5-7).

Each index is declared once in ``names.INDEXES``; its ``Measure`` (``neurons/measures.py`` for the
built-in ones) says which passes it needs and holds its formula. This module runs the passes the
configured indexes' measures ask for, and then their formulas.

Two kinds of pass read each neuron's activation ``a'_j`` at its stored location ``p_j``:

* **whole-image** (colour, default ``color_mode="image"``): every top image of every neuron is
  greyed once and run once, with all layers' maps as outputs. Exact when the receptive field is
  exact, because ``a'_j`` depends only on pixels inside the window (§5).
* **region** (colour with ``color_mode="region"``, orientation, symmetry, shape): only the RF
  window of image ``j`` is transformed, so the modified image depends on (image, location). Each
  distinct (image, location) of a layer is transformed once and serves every neuron of the layer
  that has it in its top-N; these images are batched across neurons.

Colour names (§9) take a third, whole-image pass of the top images as they are: the maps weigh
the images' colour-term memberships (``neurons.color_names``).

All are responses per (neuron, top entry), so the passes run over chunks of top images
(``chunk_responses``), anywhere, and the chunks' responses combine exactly (``Responses.add``);
the formulas then run once over the combined responses (``indexes_from``). The class index and the
concept labels need no image and no pass: only the top lists and the labels.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.instrument import with_outputs
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.graph.session import Runner
from onnx_nfi.names import INDEXES
from onnx_nfi.neurons.color import Window
from onnx_nfi.neurons.color_names import TERMS, entry_shares, summed_areas
from onnx_nfi.scan.topn import TopN

#: A region transform: (image, window, key) -> transformed copy; ``key`` (seed, layer, image id,
#: y, x) seeds the shuffle, so its permutation does not depend on which chunk or process made it.
Variant = Callable[[np.ndarray, Window, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class IndexLayer:
    """What the index passes need of one layer."""

    layer: Layer
    rf: ReceptiveField
    topn: TopN


@dataclass
class IndexResult:
    """Per layer tensor, neuron columns (arrays over units); plus class-frequency triples, the
    colour-term distributions ``[C, 11]`` (``color_names``), the ``concept_labels`` rows (columns by
    name, ``unit`` among them) and notes for the summary."""

    columns: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    class_frequencies: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    color_names: dict[str, np.ndarray] = field(default_factory=dict)
    concepts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass
class Responses:
    """``a'`` per layer tensor and index name, ``[rows, C, N]``: one row per region variant (or the
    grey whole-image pass of colour), the 11 colour-term shares of colour names; NaN where not (yet)
    computed."""

    by_layer: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add(self, part: Responses) -> None:
        """Take in another chunk's responses: each (neuron, entry) is computed by exactly one chunk."""
        for tensor, kinds in part.by_layer.items():
            mine = self.by_layer.setdefault(tensor, {})
            for kind, values in kinds.items():
                if kind not in mine:
                    mine[kind] = np.full(values.shape, np.nan, np.float32)
                np.copyto(mine[kind], values, where=~np.isnan(values))


class Sessions:
    """The index passes' inference sessions, made on first use and kept for the next chunks: the
    whole-image one (every layer's maps) and the last layer's region one (a session per layer is
    too much memory to keep for all layers of a large model)."""

    def __init__(self, model: LoadedModel, provider: str) -> None:
        self.model, self.provider = model, provider
        self._whole: Runner | None = None
        self._region: tuple[str, Runner] | None = None

    def whole(self, tensors: list[str]) -> Runner:
        if self._whole is None:
            self._whole = Runner(with_outputs(self.model, tensors), self.provider)
        return self._whole

    def region(self, tensor: str) -> Runner:
        if self._region is None or self._region[0] != tensor:
            self._region = None  # the previous layer's session goes before the next one is made
            self._region = (tensor, Runner(with_outputs(self.model, [tensor]), self.provider))
        return self._region[1]


#: A whole-image pass: (runner with every layer's map as an output, preprocessing, layers, the chunk's
#: display images, the chunk's image ids, batch size) -> per layer tensor the responses ``[rows, C, N]``
#: of the entries whose image is in the chunk (NaN elsewhere).
WholePass = Callable[
    [Runner, Preprocessing, Sequence[IndexLayer], Mapping[int, np.ndarray], np.ndarray, int], dict[str, np.ndarray]
]


@dataclass(frozen=True)
class MeasureInput:
    """What an index's formula reads: the layers, the responses of its own passes (all chunks
    combined, under its name), the labels of the top images (``label_counts``: images per label over
    all images analysed) and the configuration; and the result it fills."""

    name: str
    layers: Sequence[IndexLayer]
    responses: Responses
    labels: Mapping[int, str | None]
    label_counts: Mapping[str, int]
    config: AnalyzeConfig
    result: IndexResult

    def responses_of(self, item: IndexLayer, rows: int) -> np.ndarray:
        """This index's responses ``[rows, C, N]`` in one layer (NaN where none were computed)."""
        got = self.responses.by_layer.get(item.layer.tensor, {}).get(self.name)
        return got if got is not None else np.full((rows, *item.topn.scores.shape), np.nan, np.float32)


def _no_whole_pass(config: AnalyzeConfig) -> WholePass | None:
    return None


def _no_variants(config: AnalyzeConfig) -> Sequence[Variant]:
    return ()


@dataclass(frozen=True)
class Measure:
    """How one index is computed (its declaration, ``names.IndexSpec``, names it in ``compute``): the
    whole-image pass it needs under a configuration, the region variants it needs (transforms of the
    RF window, one response row each; all indexes' variants share one pass per layer), and the
    formula that fills its columns from the combined responses. Under one configuration an index has
    a whole-image pass or region variants, not both: its responses are kept under its name."""

    formula: Callable[[MeasureInput], None]
    whole: Callable[[AnalyzeConfig], WholePass | None] = _no_whole_pass
    region: Callable[[AnalyzeConfig], Sequence[Variant]] = _no_variants


def measure(name: str) -> Measure:
    """The measure of a declared index, imported from its ``compute`` (``module:attribute``)."""
    module, _, attribute = INDEXES[name].compute.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _measures(config: AnalyzeConfig) -> list[tuple[str, Measure]]:
    """The configured indexes' measures, in canonical order."""
    return [(name, measure(name)) for name in config.indexes]


def image_passes(config: AnalyzeConfig) -> bool:
    """Whether the configured indexes need forward passes over the top images (class and concepts do not)."""
    return any(m.whole(config) is not None or m.region(config) for _, m in _measures(config))


def transformed(transform: Callable[[np.ndarray], np.ndarray]) -> WholePass:
    """The whole-image pass that reads each entry's activation after ``transform`` of its whole image (one row)."""

    def run(runner: Runner, pre: Preprocessing, layers: Sequence[IndexLayer], images: Mapping[int, np.ndarray],
            chunk: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        found = whole_image_responses(runner, pre, layers, images, chunk, transform, batch_size)
        return {tensor: values[None] for tensor, values in found.items()}

    return run


def chunk_responses(
    sessions: Sessions,
    pre: Preprocessing,
    layers: Sequence[IndexLayer],
    images: Mapping[int, np.ndarray],
    chunk: np.ndarray,
    config: AnalyzeConfig,
    step_done: Callable[[], None] | None = None,
) -> Responses:
    """The forward passes of the configured indexes for the top entries whose image is in ``chunk``
    (``images`` holds the chunk's display images), each index's responses under its name;
    ``step_done`` is called after each of the :func:`chunk_steps` passes (a progress bar that moves
    within a chunk)."""
    step = step_done or (lambda: None)
    batch_size = sessions.model.batch(max(1, config.batch_size // 2))
    out = Responses({item.layer.tensor: {} for item in layers})
    measures = _measures(config)
    for name, m in measures:
        whole = m.whole(config)
        if whole is not None:
            runner = sessions.whole([item.layer.tensor for item in layers])
            for tensor, values in whole(runner, pre, layers, images, chunk, batch_size).items():
                out.by_layer[tensor][name] = values
            step()
    regions = [(name, list(vs)) for name, m in measures if (vs := m.region(config))]
    variants = [v for _, vs in regions for v in vs]
    for item in layers if variants else ():
        runner = sessions.region(item.layer.tensor)
        key = (config.seed, zlib.crc32(item.layer.tensor.encode()))
        rows = region_responses(runner, pre, item, images, chunk, variants, batch_size, key)
        k = 0
        for name, vs in regions:
            out.by_layer[item.layer.tensor][name] = rows[k : k + len(vs)]
            k += len(vs)
        step()
    return out


def chunk_steps(layers: Sequence[IndexLayer], config: AnalyzeConfig) -> int:
    """How many passes :func:`chunk_responses` makes per chunk (its ``step_done`` calls)."""
    measures = _measures(config)
    whole = sum(m.whole(config) is not None for _, m in measures)
    return whole + (len(layers) if any(m.region(config) for _, m in measures) else 0)


def indexes_from(
    layers: Sequence[IndexLayer], responses: Responses, labels: Mapping[int, str | None], config: AnalyzeConfig,
    label_counts: Mapping[str, int] | None = None,
) -> IndexResult:
    """The configured indexes of every layer from the combined responses of all chunks and the labels
    (of the top images; ``label_counts``: images per label over all images analysed, for concepts)."""
    result = IndexResult({item.layer.tensor: {} for item in layers})
    for name, m in _measures(config):
        m.formula(MeasureInput(name, layers, responses, labels, label_counts or {}, config, result))
    return result


def _entries(topn: TopN, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit, rank) of every top-N entry with a positive score (only those enter the indexes) whose
    image is in ``chunk``."""
    return np.nonzero((topn.scores > 0) & (topn.ids >= 0) & np.isin(topn.ids, chunk))


def _entries_by_image(layers: Sequence[IndexLayer], chunk: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
    """Per layer, (image id, unit, rank, y, x) of its entries in ``chunk``, ordered by image id: a
    batch of consecutive ids is then one slice."""
    by_image = {}
    for item in layers:
        units, ranks = _entries(item.topn, chunk)
        order = np.argsort(item.topn.ids[units, ranks], kind="stable")
        units, ranks = units[order], ranks[order]
        by_image[item.layer.tensor] = (item.topn.ids[units, ranks], units, ranks, item.topn.ys[units, ranks], item.topn.xs[units, ranks])
    return by_image


def _whole_image_batches(
    runner: Runner, pre: Preprocessing, images: Mapping[int, np.ndarray], ids: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray], batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """(image ids, display images, every layer's maps) of ``ids``' images, transformed, a batch at a time."""
    for lo in range(0, ids.size, batch_size):
        batch_ids = ids[lo : lo + batch_size]
        batch = np.stack([images[int(i)] for i in batch_ids])
        yield batch_ids, batch, runner.run(pre.to_tensor(transform(batch)))


def _batch_slice(entries: tuple[np.ndarray, ...], batch_ids: np.ndarray) -> tuple[np.ndarray, slice]:
    """The batch rows of the entries whose image is in ``batch_ids``, and where they are in ``entries``."""
    image_ids = entries[0]
    a = np.searchsorted(image_ids, batch_ids[0], side="left")
    b = np.searchsorted(image_ids, batch_ids[-1], side="right")
    return np.searchsorted(batch_ids, image_ids[a:b]), slice(a, b)


def whole_image_responses(
    runner: Runner,
    pre: Preprocessing,
    layers: Sequence[IndexLayer],
    images: Mapping[int, np.ndarray],
    chunk: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
) -> dict[str, np.ndarray]:
    """``a'`` ``[C, N]`` per layer after transforming each whole top image of ``chunk`` once (NaN
    elsewhere); ``runner`` has every layer's map as an output."""
    out = {item.layer.tensor: np.full(item.topn.scores.shape, np.nan, np.float32) for item in layers}
    by_image = _entries_by_image(layers, chunk)
    ids = np.unique(np.concatenate([v[0] for v in by_image.values()]))
    for batch_ids, _, maps in _whole_image_batches(runner, pre, images, ids, transform, batch_size):
        for item in layers:
            _, units, ranks, ys, xs = by_image[item.layer.tensor]
            rows, part = _batch_slice(by_image[item.layer.tensor], batch_ids)
            u = units[part]
            out[item.layer.tensor][u, ranks[part]] = maps[item.layer.tensor][rows, u, ys[part], xs[part]]
    return out


def color_name_responses(
    runner: Runner,
    pre: Preprocessing,
    layers: Sequence[IndexLayer],
    images: Mapping[int, np.ndarray],
    chunk: np.ndarray,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Per layer the colour-term shares ``[11, C, N]`` of the entries whose image is in ``chunk``
    (NaN elsewhere), from one pass of each (unchanged) top image with every layer's map as output."""
    out = {item.layer.tensor: np.full((TERMS, *item.topn.scores.shape), np.nan, np.float32) for item in layers}
    by_image = _entries_by_image(layers, chunk)
    ids = np.unique(np.concatenate([v[0] for v in by_image.values()]))
    for batch_ids, batch, maps in _whole_image_batches(runner, pre, images, ids, lambda x: x, batch_size):
        areas = summed_areas(batch)
        for item in layers:
            _, units, ranks, ys, xs = by_image[item.layer.tensor]
            rows, part = _batch_slice(by_image[item.layer.tensor], batch_ids)
            shares = entry_shares(areas, maps[item.layer.tensor], rows, units[part], ys[part], xs[part], item.rf)
            out[item.layer.tensor][:, units[part], ranks[part]] = shares.T
    return out


def region_responses(
    runner: Runner,
    pre: Preprocessing,
    item: IndexLayer,
    images: Mapping[int, np.ndarray],
    chunk: np.ndarray,
    variants: Sequence[Variant],
    batch_size: int,
    key: tuple[int, ...],
) -> np.ndarray:
    """``a'`` ``[V, C, N]``: for each variant, the activation after transforming only the RF window,
    for the entries whose image is in ``chunk`` (NaN elsewhere); ``runner`` outputs the layer's map.

    Each distinct (image, y, x) among those entries is transformed once per variant; every neuron
    whose entry shares it reads its own channel from the same forward pass. ``key`` + (image, y, x)
    is what a variant may draw its randomness from.
    """
    topn = item.topn
    units, ranks = _entries(topn, chunk)
    out = np.full((len(variants), *topn.scores.shape), np.nan, np.float32)
    keys = np.stack([topn.ids[units, ranks], topn.ys[units, ranks], topn.xs[units, ranks]], axis=1)
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1])
    jobs = [(k, v) for k in range(len(distinct)) for v in range(len(variants))]
    for lo in range(0, len(jobs), batch_size):
        batch_jobs = jobs[lo : lo + batch_size]
        batch = []
        for k, v in batch_jobs:
            image_id, y, x = (int(t) for t in distinct[k])
            window = item.rf.window(y, x) if not item.rf.is_global else (0, 0, *pre.input_size)
            batch.append(variants[v](images[image_id], window, (*key, image_id, y, x)))
        maps = runner.run(pre.to_tensor(np.stack(batch)))[item.layer.tensor]
        for row, (k, v) in enumerate(batch_jobs):
            u, r = units[members[k]], ranks[members[k]]
            out[v, u, r] = maps[row, u, topn.ys[u, r], topn.xs[u, r]]
    return out
