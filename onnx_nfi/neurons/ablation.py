"""Relevance of a layer's channels by ablation, many ablations per run of the downstream graph.

The tensors that cross the cut (``graph.cut``) are computed once for the N images; each ablation
of channel ``c`` on image ``i`` is one row of a downstream batch: image ``i``'s cached tensors,
with channel ``c`` of the layer tensor replaced by its fill (0, or its mean map over the images).
Rows are (image, channel) pairs taken in chunks of ``pairs_per_run``, so memory is one chunk of
tiled copies whatever the number of channels. A pair whose channel already equals its fill on
that image (a channel that never fires, ablated to 0) cannot change the output: it is not run and
counts as no drop and no flip. Formulas: docs/method.md, "Relevance by ablation".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onnx_nfi.progress import StageProgress

#: ``run(feeds)``: the class scores ``[B, K]`` of the downstream graph for a batch of crossing tensors.
RunDownstream = Callable[[dict[str, np.ndarray]], np.ndarray]
#: Classes reported per neuron as hurt most.
TOP_CLASSES = 3
#: Bytes of tiled downstream input one run may hold (the chunk size follows from a pair's bytes): small
#: enough that a run's intermediate maps stay in cache (Lite0 conv6: 126 CPU ms a neuron at 8 pairs a run,
#: 178 at 800), large enough that a deep layer's tiny runs are not dominated by per-run overhead.
PAIR_BUDGET_BYTES = 16 * 2**20


@dataclass(frozen=True)
class LayerRelevance:
    """Per channel: mean drop of the target probability, share of images whose top-1 changes, and the
    classes hurt most (``top_classes[c]``: class indices, ``top_drops[c]``: their mean drops; -1 / NaN pad)."""

    prob_drop: np.ndarray  # float64 [C]
    flip_rate: np.ndarray  # float64 [C]
    top_classes: np.ndarray  # int64 [C, TOP_CLASSES]
    top_drops: np.ndarray  # float64 [C, TOP_CLASSES]
    pairs_run: int  # (image, channel) pairs actually run (the others equal their fill)


def probabilities(scores: np.ndarray, from_softmax: bool) -> np.ndarray:
    """Class probabilities ``[B, K]`` from the output: as they are after a Softmax, else softmax(scores)."""
    scores = scores.reshape(scores.shape[0], -1).astype(np.float64)
    if from_softmax:
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def channel_fill(layer: np.ndarray, mode: str) -> np.ndarray:
    """What an ablated channel becomes, per channel ``[C, ...]``: zeros, or its mean map over the images."""
    if mode == "mean":
        return layer.mean(axis=0, dtype=np.float64).astype(layer.dtype)
    return np.zeros(layer.shape[1:], layer.dtype)


def pairs_per_run(cache: Mapping[str, np.ndarray], budget: int = PAIR_BUDGET_BYTES) -> int:
    """How many (image, channel) rows one downstream run takes: the byte budget over one row's bytes."""
    row = sum(a[0].nbytes for a in cache.values())
    return max(1, budget // max(row, 1))


def ablate_layer(
    run: RunDownstream, cache: Mapping[str, np.ndarray], layer: str, fill: np.ndarray, targets: np.ndarray,
    base: np.ndarray, from_softmax: bool, *, chunk: int, progress: StageProgress | None = None,
) -> LayerRelevance:
    """Relevance of every channel of ``layer`` (``cache[layer]``: ``[N, C, ...]``) for images with
    target classes ``targets`` ``[N]`` and unablated probabilities ``base`` ``[N, K]``."""
    values = cache[layer]
    n, channels = values.shape[:2]
    flat = values.reshape(n, channels, -1)
    changed = ~np.all(flat == fill.reshape(1, channels, -1), axis=2)  # [N, C]: pairs that can change the output
    images, units = np.nonzero(changed.T)[::-1]  # channel-major, so a channel's rows are adjacent
    drop = np.zeros((n, channels))
    flips = np.zeros((n, channels), bool)
    top1 = base.argmax(axis=1)
    for lo in range(0, images.size, chunk):
        i, c = images[lo : lo + chunk], units[lo : lo + chunk]
        feeds = {name: array[i] for name, array in cache.items()}  # fancy indexing copies: the cache stays intact
        feeds[layer][np.arange(i.size), c] = fill[c]
        probs = probabilities(run(feeds), from_softmax)
        drop[i, c] = base[i, targets[i]] - probs[np.arange(i.size), targets[i]]
        flips[i, c] = probs.argmax(axis=1) != top1[i]
        if progress is not None:
            progress(min(lo + chunk, images.size), images.size)
    top_classes, top_drops = _classes_hurt(drop, targets)
    return LayerRelevance(drop.mean(axis=0), flips.mean(axis=0), top_classes, top_drops, int(images.size))


def _classes_hurt(drop: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the ``TOP_CLASSES`` target classes with the largest mean drop over their images."""
    present = np.unique(targets)
    per_class = np.stack([drop[targets == k].mean(axis=0) for k in present], axis=1)  # [C, classes present]
    order = np.argsort(-per_class, axis=1, kind="stable")[:, :TOP_CLASSES]
    k = order.shape[1]
    top_classes = np.full((drop.shape[1], TOP_CLASSES), -1, np.int64)
    top_drops = np.full((drop.shape[1], TOP_CLASSES), np.nan)
    top_classes[:, :k] = present[order]
    top_drops[:, :k] = np.take_along_axis(per_class, order, axis=1)
    return top_classes, top_drops
