"""Neuron Features: activation-weighted means of each neuron's top-N receptive-field crops (§4).

Crops are cut from the display images (resized/cropped RGB, 0-255) at each top-N location.
Out-of-image pixels do not count; where the valid weight is below 10 % of the total the pixel is
mid-grey 127. The canvas is the RF size centre-cropped to the input size.

**Deviation, recorded as ``nf_max_size``**: a canvas larger than ``nf_max_size`` pixels is
computed on images scaled down by ``nf_max_size / canvas`` (area interpolation), with crop
positions rounded to the scaled grid. Deep layers' canvases are the whole 224×224 image; at full
size Lite0's NFs would take ~2.6 GB in the database (a byte a value; 10 GB as floats) and minutes
of CPU per few hundred images, while a person looks at them at thumbnail size anyway.
``nf_max_size = 0`` computes the exact full-size NF. Layers whose canvas fits are always exact.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.graph.session import session_threads
from onnx_nfi.neurons.nf_kernel import add_weighted_crops
from onnx_nfi.scan.topn import TopN

T = TypeVar("T")

GREY = 127.0
MIN_VALID_WEIGHT = 0.1
#: Relative allowance on that threshold for rounding: equal weights (a saturated ReLU6 neuron's
#: top-N are often all 6.0) put the valid weight exactly on 10 %, which counts as not below.
_THRESHOLD = MIN_VALID_WEIGHT * (1 - 1e-5)


@dataclass(frozen=True)
class CropGeometry:
    """Where a neuron's crop lies for an output location, in (possibly scaled) image pixels."""

    canvas: tuple[int, int]  # NF (crop) size (y, x)
    image_size: tuple[int, int]  # size of the image the crops are cut from
    scale: float  # image scale factor; 1.0 = exact full resolution
    stride: tuple[float, float]
    first: tuple[float, float]  # crop start of output index 0 at full resolution
    is_global: bool

    def starts(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-left crop corners for output locations, in the crop image's pixels."""
        if self.is_global:
            return np.zeros_like(ys), np.zeros_like(xs)
        # strides/offsets are Fractions after upsampling: floor, as ReceptiveField.window does
        ty = np.floor(ys * float(self.stride[0]) + float(self.first[0]))
        tx = np.floor(xs * float(self.stride[1]) + float(self.first[1]))
        if self.scale != 1.0:
            ty, tx = np.round(ty * self.scale), np.round(tx * self.scale)
        return ty.astype(np.int64), tx.astype(np.int64)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """NF values (float 0-255) as 8-bit pixels, rounded half up as image tools do, and clipped: what
    every picture shows and what the database stores (``store/nf_storage.py``)."""
    return np.clip(np.floor(np.asarray(values, np.float64) + 0.5), 0, 255).astype(np.uint8)


def crop_geometry(rf: ReceptiveField, input_hw: tuple[int, int], max_size: int = 0) -> CropGeometry:
    """The canvas of a layer: RF size centre-cropped to the input, scaled to ``max_size`` when set."""
    h, w = input_hw
    if rf.is_global:
        canvas, first = (h, w), (0, 0)
    else:
        canvas = (min(rf.size[0], h), min(rf.size[1], w))
        first = (rf.offset[0] + (rf.size[0] - canvas[0]) // 2, rf.offset[1] + (rf.size[1] - canvas[1]) // 2)
    scale = 1.0
    if max_size and max(canvas) > max_size:
        scale = max_size / max(canvas)
        canvas = (max(1, round(canvas[0] * scale)), max(1, round(canvas[1] * scale)))
    image_size = (round(h * scale), round(w * scale)) if scale != 1.0 else (h, w)
    return CropGeometry(canvas, image_size, scale, tuple(rf.stride), first, rf.is_global)  # type: ignore[arg-type]


def scale_into(image: np.ndarray, geometry: CropGeometry, out: np.ndarray) -> None:
    """Write the image crops are cut from into ``out``: the display image, or its area-scaled copy."""
    if geometry.scale == 1.0:
        out[...] = image
    else:  # OpenCV writes straight into ``out``, no temporary
        cv2.resize(image, geometry.image_size[::-1], dst=out, interpolation=cv2.INTER_AREA)


def compute_threads() -> int:
    """Worker threads for NF crops: the run's thread count (``RunSettings.threads``, as for
    onnxruntime), else every core. They run the compiled crop sums and the image scaling (OpenCV
    releases the GIL)."""
    return session_threads() or max(1, os.cpu_count() or 1)


@dataclass
class NfPlan:
    """One layer's weights, crop corners and top images."""

    topn: TopN
    geometry: CropGeometry
    weights: np.ndarray  # float32 [C, N], each live row sums to 1
    alive: np.ndarray  # bool [C]
    sy: np.ndarray  # crop corners in the crop image [C, N]
    sx: np.ndarray
    used: np.ndarray  # image ids with positive weight

    @classmethod
    def of(cls, topn: TopN, geometry: CropGeometry) -> NfPlan:
        weights = np.where((topn.scores > 0) & (topn.ids >= 0), topn.scores, 0).astype(np.float64)
        total = weights.sum(axis=1)
        alive = total > 0
        weights = (weights / np.where(alive, total, 1)[:, None]).astype(np.float32)  # sums stay <= 255
        sy, sx = geometry.starts(topn.ys, topn.xs)
        return cls(topn, geometry, weights, alive, sy, sx, np.unique(topn.ids[weights > 0]))


class _Stack:
    """The crop images of a group of layers (display images, scaled when the canvas is), in one uint8 array."""

    def __init__(self, ids: np.ndarray, images: Mapping[int, np.ndarray], geometry: CropGeometry,
                 pool: ThreadPoolExecutor | None) -> None:
        self.array = np.empty((ids.size, *geometry.image_size, 3), np.uint8)
        self._slot = np.full(int(ids.max(initial=0)) + 1, -1, np.int64)  # image id -> stack position
        self._slot[ids] = np.arange(ids.size)
        sources = [images[int(i)] for i in ids]  # here, not in the pool: a lazy mapping decodes in order

        def fill(lo: int) -> None:  # a run of images per task: per-task overhead was a tenth of the scaling
            for k in range(lo, min(lo + 16, ids.size)):
                scale_into(sources[k], geometry, self.array[k])

        _run(fill, range(0, ids.size, 16), pool)

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """Stack positions of image ids, -1 for ids not in the stack (and for -1, an empty rank)."""
        inside = (ids >= 0) & (ids < self._slot.size)
        return np.where(inside, self._slot[np.where(inside, ids, 0)], -1)


def plan_features(layers: Sequence[tuple[TopN, CropGeometry]]) -> list[NfPlan]:
    """Each layer's weights and crop corners: computed once, shared by every chunk of top images."""
    return [NfPlan.of(topn, geometry) for topn, geometry in layers]


def chunk_sums(
    plans: Sequence[NfPlan], images: Mapping[int, np.ndarray], chunk: np.ndarray,
    layer_done: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """Per layer ``float32 [C, cy, cx, 3]``: the weighted crops of the entries whose image is in ``chunk``.

    An NF is a sum over crops, so the sums of disjoint chunks of top images add up to the NF's
    numerator: a chunk can be summed anywhere (another process, another node) and only its sums
    travel. Each chunk starts from zero, and the chunks' sums are added in chunk order
    (``add_sums``), so the result is the same bit for bit wherever the chunks ran. ``images``
    holds at least the chunk's images. Within a chunk, consecutive layers whose crops come from
    images of one size share one stack, so each image is scaled once per size, not once per layer.
    ``layer_done`` is called once per layer (a progress bar that moves within a chunk).
    """
    sums = zero_sums(plans)
    threads = compute_threads()
    with ThreadPoolExecutor(threads, thread_name_prefix="nfi-nf") if threads > 1 else _no_pool() as pool:
        for group in _same_size_runs(list(plans)):
            ids = np.intersect1d(np.concatenate([plans[k].used for k in group]), chunk)
            stack = _Stack(ids, images, plans[group[0]].geometry, pool) if ids.size else None
            for k in group:
                if stack is not None:
                    _add_layer_crops(plans[k], stack, sums[k], threads)
                if layer_done is not None:
                    layer_done()
    return sums


def zero_sums(plans: Sequence[NfPlan]) -> list[np.ndarray]:
    """Per layer a zero ``float32 [C, cy, cx, 3]``: the start of a crop sum."""
    return [np.zeros((p.weights.shape[0], *p.geometry.canvas, 3), np.float32) for p in plans]


def add_sums(total: list[np.ndarray], part: Sequence[np.ndarray]) -> None:
    """Add one chunk's ``chunk_sums`` to the running ``total`` (in place)."""
    for t, p in zip(total, part):
        t += p


def finish_features(plans: Sequence[NfPlan], sums: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """NFs and alive masks from the summed crops of every chunk: each pixel divided by its valid
    weight, mid-grey where that is below 10 %, NaN for dead neurons."""
    out = []
    for plan, total in zip(plans, sums):
        den = _valid_weight(plan)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            nf = np.where(den >= _THRESHOLD, total / den, np.float32(GREY)).astype(np.float32)
        nf[~plan.alive] = np.nan
        out.append((nf, plan.alive))
    return out


def _same_size_runs(plans: list[NfPlan]) -> list[list[int]]:
    """Indices of runs of consecutive layers whose crops come from images of one size."""
    runs: list[list[int]] = []
    for k, plan in enumerate(plans):
        if runs and plans[runs[-1][0]].geometry.image_size == plan.geometry.image_size:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _add_layer_crops(plan: NfPlan, stack: _Stack, out: np.ndarray, threads: int) -> None:
    """Add to ``out`` the weighted crops of the layer's entries whose image is in the stack."""
    live = np.flatnonzero(plan.alive)
    if live.size == 0:
        return
    slot = stack.slots(plan.topn.ids[live])
    weights = np.where(slot >= 0, plan.weights[live], 0)  # entries whose image is in another chunk: not here
    add_weighted_crops(stack.array, np.maximum(slot, 0), plan.sy[live], plan.sx[live], weights, out, live, threads)


def _valid_weight(plan: NfPlan) -> np.ndarray:
    """``[C, cy, cx]``: per NF pixel, the summed weight of the crops that have that pixel inside the image.

    A crop's inside part depends only on its output location and is a rectangle, rows × columns;
    so the valid weight is ``rows.T @ (weight per location) @ columns``: two small products per
    unit whatever N is, instead of an indicator per crop and pixel.
    """
    topn, geometry = plan.topn, plan.geometry
    channels = topn.scores.shape[0]
    (cy, cx), (hs, ws) = geometry.canvas, geometry.image_size
    h, w = int(topn.ys.max(initial=0)) + 1, int(topn.xs.max(initial=0)) + 1
    sy, sx = geometry.starts(np.arange(h), np.arange(w))
    rows = ((sy[:, None] + np.arange(cy) >= 0) & (sy[:, None] + np.arange(cy) < hs)).astype(np.float32)  # [h, cy]
    cols = ((sx[:, None] + np.arange(cx) >= 0) & (sx[:, None] + np.arange(cx) < ws)).astype(np.float32)  # [w, cx]
    cells = (np.arange(channels)[:, None] * h + topn.ys) * w + topn.xs
    per_location = np.bincount(cells.ravel(), plan.weights.ravel(), channels * h * w).astype(np.float32)
    return rows.T @ (per_location.reshape(channels, h, w) @ cols)


def _run(task: Callable[[T], None], items: Iterable[T], pool: ThreadPoolExecutor | None) -> None:
    """``task`` on every item, over the pool's threads (inline without a pool)."""
    if pool is None:
        for item in items:
            task(item)
        return
    list(pool.map(task, items))


@contextlib.contextmanager
def _no_pool() -> Iterator[None]:
    """Stands in for the thread pool when one thread is configured."""
    yield None
