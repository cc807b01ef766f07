"""Selectivity indexes of every neuron: the extra forward passes and the formulas, wired (§5-7).

Two kinds of pass read each neuron's activation ``a'_j`` at its stored location ``p_j``:

* **whole-image** (colour, default ``color_mode="image"``): every top image of every neuron is
  greyed once and run once, with all layers' maps as outputs. Exact when the receptive field is
  exact, because ``a'_j`` depends only on pixels inside the window (§5).
* **region** (colour with ``color_mode="region"``, orientation, symmetry, shape): only the RF
  window of image ``j`` is transformed, so the modified image depends on (image, location). Each
  distinct (image, location) of a layer is transformed once and serves every neuron of the layer
  that has it in its top-N; these images are batched across neurons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.graph.instrument import with_outputs
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.graph.session import Runner
from onnx_nfi.neurons.class_selectivity import class_selectivity
from onnx_nfi.neurons.color import color_selectivity, grey_region, to_grey
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
from onnx_nfi.progress import StageProgress
from onnx_nfi.scan.topn import TopN

Variant = Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray]


@dataclass(frozen=True)
class IndexLayer:
    """What the index passes need of one layer."""

    layer: Layer
    rf: ReceptiveField
    topn: TopN


@dataclass
class IndexResult:
    """Per layer tensor, neuron columns (arrays over units); plus class-frequency triples."""

    columns: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    class_frequencies: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)


def compute_indexes(
    model: LoadedModel,
    pre: Preprocessing,
    layers: Sequence[IndexLayer],
    images: Mapping[int, np.ndarray],
    labels: Mapping[int, str | None],
    indexes: Sequence[str],
    *,
    color_mode: str = "image",
    rho: float = 1.0,
    population_threshold: float = 0.1,
    batch_size: int = 16,
    provider: str = "auto",
    seed: int = 0,
    progress: StageProgress | None = None,
) -> IndexResult:
    """The requested indexes for every layer; ``images`` are the display images of all top-N ids."""
    result = IndexResult({item.layer.tensor: {} for item in layers})
    if "class" in indexes:
        _class_columns(layers, labels, rho, population_threshold, result)
    region_kinds: list[tuple[str, list[Variant]]] = []
    if "color" in indexes:
        if color_mode == "image":
            grey = whole_image_responses(model, pre, layers, images, to_grey, batch_size, provider, progress)
            for item in layers:
                result.columns[item.layer.tensor]["color_selectivity"] = color_selectivity(item.topn.scores, grey[item.layer.tensor])
        else:
            region_kinds.append(("color", [grey_region]))
    if "orientation" in indexes:
        region_kinds.append(("orientation", [_rotation(a) for a in ANGLES]))
    if "symmetry" in indexes:
        region_kinds.append(("symmetry", [_mirror(a) for a in AXES]))
    if "shape" in indexes:
        rng = np.random.default_rng(seed)
        region_kinds.append(("shape", [lambda img, win: shuffle_region(img, win, rng)]))
    for item in layers if region_kinds else ():
        variants = [v for _, vs in region_kinds for v in vs]
        responses = region_responses(model, pre, item, images, variants, batch_size, provider)
        cols = result.columns[item.layer.tensor]
        k = 0
        for kind, vs in region_kinds:
            part = responses[k : k + len(vs)]  # [V, C, N]
            k += len(vs)
            a = item.topn.scores
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
        if progress:
            progress(layers.index(item) + 1, len(layers))
    return result


def _rotation(angle: int) -> Variant:
    return lambda img, win: rotate_region(img, win, angle)


def _mirror(axis: int) -> Variant:
    return lambda img, win: mirror_region(img, win, axis)


def _lists(values: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array as an object column of lists (NULL for all-NaN rows, i.e. dead neurons)."""
    out = np.empty(values.shape[0], dtype=object)
    for i, row in enumerate(values):
        out[i] = None if np.isnan(row).all() else row.astype(np.float64)
    return out


def _class_columns(
    layers: Sequence[IndexLayer], labels: Mapping[int, str | None], rho: float, threshold: float, result: IndexResult
) -> None:
    names = sorted({v for v in labels.values() if v is not None})
    if not names:
        return  # no labels: the columns stay NULL
    code = {name: k for k, name in enumerate(names)}
    max_id = max(labels) + 1
    codes_by_id = np.full(max_id + 1, -1, np.int64)
    for image_id, label in labels.items():
        if label is not None:
            codes_by_id[image_id] = code[label]
    names_arr = np.array(names, dtype=object)
    for item in layers:
        ids = item.topn.ids
        label_codes = np.where(ids >= 0, codes_by_id[np.clip(ids, 0, max_id)], -1)
        cs = class_selectivity(item.topn.scores, label_codes, rho, threshold)
        cols = result.columns[item.layer.tensor]
        cols["class_selectivity"] = cs.index
        cols["top_class"] = np.where(cs.top_class >= 0, names_arr[np.clip(cs.top_class, 0, None)], None)
        cols["top_class_frequency"] = cs.top_class_frequency
        cols["population_code"] = np.where(cs.n_images > 0, cs.population_code, np.nan)
        d = cs.distribution
        result.class_frequencies[item.layer.tensor] = (d.unit, names_arr[d.label], d.frequency)


def _entries(topn: TopN) -> tuple[np.ndarray, np.ndarray]:
    """(unit, rank) of every top-N entry with a positive score: only those enter the indexes."""
    return np.nonzero((topn.scores > 0) & (topn.ids >= 0))


def whole_image_responses(
    model: LoadedModel,
    pre: Preprocessing,
    layers: Sequence[IndexLayer],
    images: Mapping[int, np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    provider: str,
    progress: StageProgress | None = None,
) -> dict[str, np.ndarray]:
    """``a'`` ``[C, N]`` per layer after transforming each whole top image once (NaN where unused)."""
    runner = Runner(with_outputs(model, [item.layer.tensor for item in layers]), provider)
    out = {item.layer.tensor: np.full(item.topn.scores.shape, np.nan, np.float32) for item in layers}
    # per layer, its entries ordered by image id: a batch of consecutive ids is then one slice
    by_image = {}
    for item in layers:
        units, ranks = _entries(item.topn)
        order = np.argsort(item.topn.ids[units, ranks], kind="stable")
        units, ranks = units[order], ranks[order]
        by_image[item.layer.tensor] = (item.topn.ids[units, ranks], units, ranks, item.topn.ys[units, ranks], item.topn.xs[units, ranks])
    ids = np.unique(np.concatenate([v[0] for v in by_image.values()]))
    for lo in range(0, ids.size, batch_size):
        batch_ids = ids[lo : lo + batch_size]
        batch = transform(np.stack([images[int(i)] for i in batch_ids]))
        maps = runner.run(pre.to_tensor(batch))
        for item in layers:
            image_ids, units, ranks, ys, xs = by_image[item.layer.tensor]
            a = np.searchsorted(image_ids, batch_ids[0], side="left")
            b = np.searchsorted(image_ids, batch_ids[-1], side="right")
            rows = np.searchsorted(batch_ids, image_ids[a:b])
            u = units[a:b]
            out[item.layer.tensor][u, ranks[a:b]] = maps[item.layer.tensor][rows, u, ys[a:b], xs[a:b]]
        if progress:
            progress(min(lo + batch_size, ids.size), ids.size)
    return out


def region_responses(
    model: LoadedModel,
    pre: Preprocessing,
    item: IndexLayer,
    images: Mapping[int, np.ndarray],
    variants: Sequence[Variant],
    batch_size: int,
    provider: str,
) -> np.ndarray:
    """``a'`` ``[V, C, N]``: for each variant, the activation after transforming only the RF window.

    Each distinct (image, y, x) among the layer's top-N entries is transformed once per variant;
    every neuron whose entry shares it reads its own channel from the same forward pass.
    """
    runner = Runner(with_outputs(model, [item.layer.tensor]), provider)
    topn = item.topn
    units, ranks = _entries(topn)
    out = np.full((len(variants), *topn.scores.shape), np.nan, np.float32)
    keys = np.stack([topn.ids[units, ranks], topn.ys[units, ranks], topn.xs[units, ranks]], axis=1)
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1])
    jobs = [(k, v) for k in range(len(distinct)) for v in range(len(variants))]
    for lo in range(0, len(jobs), batch_size):
        chunk = jobs[lo : lo + batch_size]
        batch = []
        for k, v in chunk:
            image_id, y, x = (int(t) for t in distinct[k])
            window = item.rf.window(y, x) if not item.rf.is_global else (0, 0, *pre.input_size)
            batch.append(variants[v](images[image_id], window))
        maps = runner.run(pre.to_tensor(np.stack(batch)))[item.layer.tensor]
        for row, (k, v) in enumerate(chunk):
            u, r = units[members[k]], ranks[members[k]]
            out[v, u, r] = maps[row, u, topn.ys[u, r], topn.xs[u, r]]
    return out
