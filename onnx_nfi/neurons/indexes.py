"""Selectivity indexes of every neuron: the extra forward passes and the formulas, wired (§5-7).

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
from onnx_nfi.neurons.class_selectivity import class_selectivity
from onnx_nfi.neurons.color import Window, color_selectivity, grey_region, to_grey
from onnx_nfi.neurons.color_names import TERMS, entry_shares, neuron_distributions, summed_areas, top_colors
from onnx_nfi.neurons.concepts import ConceptSpace, concept_labels
from onnx_nfi.neurons.transforms import (
    ANGLES,
    AXES,
    mirror_region,
    orientation_index,
    rotate_region,
    shape_index,
    shuffle_region,
    symmetry_index,
)
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
    """``a'`` per layer tensor: ``grey`` ``[C, N]`` (whole-image pass) and ``region`` ``[V, C, N]``
    (one row per region variant); ``names``: colour-term shares ``[11, C, N]``; NaN where not (yet)
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


#: Indexes computed from the top lists and the labels alone, without a forward pass.
LABEL_INDEXES = ("class", "concepts")


def image_passes(config: AnalyzeConfig) -> bool:
    """Whether the configured indexes need forward passes over the top images (all but class and concepts do)."""
    return any(kind not in LABEL_INDEXES for kind in config.indexes)


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
    (``images`` holds the chunk's display images); ``step_done`` is called after each of the
    :func:`chunk_steps` passes (a progress bar that moves within a chunk)."""
    step = step_done or (lambda: None)
    batch_size = sessions.model.batch(max(1, config.batch_size // 2))
    out = Responses({item.layer.tensor: {} for item in layers})
    if "color" in config.indexes and config.color_mode == "image":
        runner = sessions.whole([item.layer.tensor for item in layers])
        grey = whole_image_responses(runner, pre, layers, images, chunk, to_grey, batch_size)
        for tensor, values in grey.items():
            out.by_layer[tensor]["grey"] = values
        step()
    if "color_names" in config.indexes:
        runner = sessions.whole([item.layer.tensor for item in layers])
        for tensor, values in color_name_responses(runner, pre, layers, images, chunk, batch_size).items():
            out.by_layer[tensor]["names"] = values
        step()
    variants = [v for _, vs in _region_kinds(config) for v in vs]
    for item in layers if variants else ():
        runner = sessions.region(item.layer.tensor)
        key = (config.seed, zlib.crc32(item.layer.tensor.encode()))
        out.by_layer[item.layer.tensor]["region"] = region_responses(
            runner, pre, item, images, chunk, variants, batch_size, key
        )
        step()
    return out


def chunk_steps(layers: Sequence[IndexLayer], config: AnalyzeConfig) -> int:
    """How many passes :func:`chunk_responses` makes per chunk (its ``step_done`` calls)."""
    whole = ("color" in config.indexes and config.color_mode == "image") + ("color_names" in config.indexes)
    return whole + (len(layers) if any(vs for _, vs in _region_kinds(config)) else 0)


def indexes_from(
    layers: Sequence[IndexLayer], responses: Responses, labels: Mapping[int, str | None], config: AnalyzeConfig,
    label_counts: Mapping[str, int] | None = None,
) -> IndexResult:
    """The configured indexes of every layer from the combined responses of all chunks and the labels
    (of the top images; ``label_counts``: images per label over all images analysed, for concepts)."""
    result = IndexResult({item.layer.tensor: {} for item in layers})
    if "class" in config.indexes:
        _class_columns(layers, labels, config.rho, config.population_threshold, result)
    if "concepts" in config.indexes:
        _concept_columns(layers, labels, label_counts or {}, result)
    kinds = _region_kinds(config)
    for item in layers:
        a, cols = item.topn.scores, result.columns[item.layer.tensor]
        got = responses.by_layer.get(item.layer.tensor, {})
        if "color" in config.indexes and config.color_mode == "image":
            cols["color_selectivity"] = color_selectivity(a, got.get("grey", np.full(a.shape, np.nan, np.float32)))
        if "color_names" in config.indexes:
            names = neuron_distributions(a, got.get("names", np.full((TERMS, *a.shape), np.nan, np.float32)))
            cols["top_color"], cols["top_color_share"] = top_colors(names)
            result.color_names[item.layer.tensor] = names
        region = got.get("region", np.full((sum(len(vs) for _, vs in kinds), *a.shape), np.nan, np.float32))
        k = 0
        for kind, vs in kinds:
            part = region[k : k + len(vs)]  # [V, C, N]
            k += len(vs)
            if kind == "color":
                cols["color_selectivity"] = color_selectivity(a, part[0])
            elif kind == "orientation":
                per_angle, mean = orientation_index(a, part.transpose(1, 0, 2))
                cols["orientation_selectivity"], cols["orientation_by_angle"] = mean, _lists(per_angle)
            elif kind == "symmetry":
                per_axis, mean = symmetry_index(a, part.transpose(1, 0, 2))
                cols["symmetry_selectivity"], cols["symmetry_by_axis"] = mean, _lists(per_axis)
            else:
                cols["shape_selectivity"] = shape_index(a, part[0])
    return result


def _region_kinds(config: AnalyzeConfig) -> list[tuple[str, list[Variant]]]:
    """The region passes the configured indexes need, each with its transforms, in a fixed order."""
    kinds: list[tuple[str, list[Variant]]] = []
    if "color" in config.indexes and config.color_mode != "image":
        kinds.append(("color", [lambda img, win, key: grey_region(img, win)]))
    if "orientation" in config.indexes:
        kinds.append(("orientation", [_rotation(a) for a in ANGLES]))
    if "symmetry" in config.indexes:
        kinds.append(("symmetry", [_mirror(a) for a in AXES]))
    if "shape" in config.indexes:
        kinds.append(("shape", [lambda img, win, key: shuffle_region(img, win, np.random.default_rng(key))]))
    return kinds


def _rotation(angle: int) -> Variant:
    return lambda img, win, key: rotate_region(img, win, angle)


def _mirror(axis: int) -> Variant:
    return lambda img, win, key: mirror_region(img, win, axis)


def _lists(values: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array as an object column of lists (NULL for all-NaN rows, i.e. dead neurons)."""
    out = np.empty(values.shape[0], dtype=object)
    for i, row in enumerate(values):
        out[i] = None if np.isnan(row).all() else row.astype(np.float64)
    return out


def _label_codes(labels: Mapping[int, str | None], names: Sequence[str]) -> Callable[[TopN], np.ndarray]:
    """``codes(topn)``: each top entry's label as its position in ``names`` (-1: unlabelled or empty)."""
    code = {name: k for k, name in enumerate(names)}
    max_id = max(labels, default=0) + 1
    codes_by_id = np.full(max_id + 1, -1, np.int64)
    for image_id, label in labels.items():
        if label is not None and label in code:
            codes_by_id[image_id] = code[label]
    return lambda topn: np.where(topn.ids >= 0, codes_by_id[np.clip(topn.ids, 0, max_id)], -1)


def _concept_columns(
    layers: Sequence[IndexLayer], labels: Mapping[int, str | None], label_counts: Mapping[str, int], result: IndexResult
) -> None:
    """``neurons.concept``/``concept_p`` and the ``concept_labels`` rows of every layer (none unlabelled)."""
    counts = {name: n for name, n in label_counts.items() if n > 0}
    if not counts:
        result.notes = (*result.notes, "concepts: the images carry no labels, so no neuron has a concept label "
                        "(label them with --labels folder or csv:FILE)")
        return
    space = ConceptSpace.of(counts)
    codes = _label_codes(labels, space.labels)
    names = np.array([c.name for c in space.concepts], dtype=object)
    wnids = np.array([c.wnid for c in space.concepts], dtype=object)
    depths = np.array([c.depth for c in space.concepts], np.int32)
    for item in layers:
        found = concept_labels(item.topn.scores, codes(item.topn), space)
        result.columns[item.layer.tensor].update({
            "concept": np.where(found.label >= 0, names[np.clip(found.label, 0, None)], None), "concept_p": found.label_p,
        })
        r = found.rows
        result.concepts[item.layer.tensor] = {
            "unit": r.unit.astype(np.int32), "concept": names[r.concept], "wnid": wnids[r.concept],
            "depth": depths[r.concept], "share": r.share, "top_count": r.top_count.astype(np.int32),
            "labelled_top": r.labelled_top.astype(np.int32), "base_rate": r.base_rate, "enrichment": r.enrichment,
            "p_value": r.p_value, "p_holm": r.p_holm,
        }


def _class_columns(
    layers: Sequence[IndexLayer], labels: Mapping[int, str | None], rho: float, threshold: float, result: IndexResult
) -> None:
    names = sorted({v for v in labels.values() if v is not None})
    if not names:
        return  # no labels: the columns stay NULL
    codes = _label_codes(labels, names)
    names_arr = np.array(names, dtype=object)
    for item in layers:
        cs = class_selectivity(item.topn.scores, codes(item.topn), rho, threshold)
        cols = result.columns[item.layer.tensor]
        cols["class_selectivity"] = cs.index
        cols["top_class"] = np.where(cs.top_class >= 0, names_arr[np.clip(cs.top_class, 0, None)], None)
        cols["top_class_frequency"] = cs.top_class_frequency
        cols["population_code"] = np.where(cs.n_images > 0, cs.population_code, np.nan)
        d = cs.distribution
        result.class_frequencies[item.layer.tensor] = (d.unit, names_arr[d.label], d.frequency)


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
