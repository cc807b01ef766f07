"""Neuron Features: activation-weighted means of each neuron's top-N receptive-field crops (§4).

Crops are cut from the display images (resized/cropped RGB, 0-255) at each top-N location.
Out-of-image pixels do not count; where the valid weight is below 10 % of the total the pixel is
mid-grey 127. The canvas is the RF size centre-cropped to the input size.

**Deviation, recorded as ``nf_max_size``**: a canvas larger than ``nf_max_size`` pixels is
computed on images scaled down by ``nf_max_size / canvas`` (area interpolation), with crop
positions rounded to the scaled grid. Deep layers' canvases are the whole 224×224 image; at full
size Lite0's NFs would take ~9 GB in the database and minutes of CPU per few hundred images,
while a person looks at them at thumbnail size anyway. ``nf_max_size = 0`` computes the exact
full-size NF. Layers whose canvas fits are always exact.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.scan.topn import TopN

T = TypeVar("T")

GREY = 127.0
MIN_VALID_WEIGHT = 0.1
#: float32 crops per work item: small enough to stay in the core's cache between the gather and
#: the matrix product (a cache-missing gather made NFs as slow as the scan), large enough that
#: Python's per-chunk overhead is noise.
_CHUNK_BYTES = 8 * 2**20


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


def scaled(image: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """The image crops are cut from (the display image, or its area-scaled copy)."""
    if geometry.scale == 1.0:
        return image
    return cv2.resize(image, geometry.image_size[::-1], interpolation=cv2.INTER_AREA)


class _ScaledCache:
    """Scaled copies of display images for the most recent image size.

    Consecutive layers of a block usually share a scale, and re-scaling every top image for
    every layer cost as much as the crops themselves. Only one size is kept (memory stays at one
    scaled set), and entries are keyed by the source array's identity, held weakly, so a new or
    freed image is never confused with an old one.
    """

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None
        self.entries: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    def use(self, geometry: CropGeometry) -> None:
        """Start a layer (before its threads): another image size drops the kept set."""
        if self.size != geometry.image_size:
            self.size, self.entries = geometry.image_size, {}

    def get(self, image: np.ndarray, geometry: CropGeometry) -> np.ndarray:
        if geometry.scale == 1.0:
            return image
        hit = self.entries.get(id(image))
        if hit is not None and hit[0]() is image:
            return hit[1]
        out = scaled(image, geometry)
        self.entries[id(image)] = (weakref.ref(image), out)
        return out


_SCALED = _ScaledCache()


def compute_threads() -> int:
    """Worker threads for NF crops: ``ONNX_NFI_THREADS`` (as for onnxruntime), else every core.

    numpy's fancy indexing, dtype conversion and matmul release the GIL, so threads scale.
    """
    env = os.environ.get("ONNX_NFI_THREADS")
    return max(1, int(env)) if env else max(1, os.cpu_count() or 1)


def neuron_features(
    topn: TopN, images: Mapping[int, np.ndarray], geometry: CropGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """NFs ``float32 [C, cy, cx, 3]`` (RGB 0-255) and a ``bool [C]`` mask of neurons that have one (not dead).

    ``images`` maps image id -> display image (uint8 [H, W, 3]); every id in ``topn`` must be
    there. Crops are strided views into one zero-padded uint8 stack of the layer's top images, so
    cutting a crop is a block copy (a quarter of the bytes of float32); the weighted sum is a
    batched matrix product over cache-sized chunks of units, spread over threads. Out-of-image
    pixels are zero in the padding, so they add nothing to the numerator, and the valid weight
    is separable (rows × columns), so the denominator is a small product too.
    """
    channels, n = topn.scores.shape
    cy, cx = geometry.canvas
    hs, ws = geometry.image_size
    weights = np.where((topn.scores > 0) & (topn.ids >= 0), topn.scores, 0).astype(np.float64)
    total = weights.sum(axis=1)
    alive = total > 0
    weights = (weights / np.where(alive, total, 1)[:, None]).astype(np.float32)  # normalised: sums stay <= 255
    nfs = np.full((channels, cy, cx, 3), np.nan, np.float32)
    if not alive.any():
        return nfs, alive
    live = weights > 0
    used = np.unique(topn.ids[live])
    sy, sx = geometry.starts(topn.ys, topn.xs)
    pad_y = int(max(0, -sy[live].min(), sy[live].max() + cy - hs))
    pad_x = int(max(0, -sx[live].min(), sx[live].max() + cx - ws))
    stack = np.zeros((used.size, hs + 2 * pad_y, ws + 2 * pad_x, 3), np.uint8)
    sources = [images[int(image_id)] for image_id in used]

    def fill(k: int) -> None:
        stack[k, pad_y : pad_y + hs, pad_x : pad_x + ws] = _SCALED.get(sources[k], geometry)

    su, sh, sw, sc = stack.strides
    windows = np.lib.stride_tricks.as_strided(
        stack,
        shape=(used.size, stack.shape[1] - cy + 1, stack.shape[2] - cx + 1, cy, cx, 3),
        strides=(su, sh, sw, sh, sw, sc),
        writeable=False,
    )
    slot = np.clip(np.searchsorted(used, topn.ids), 0, used.size - 1)  # weight-0 entries: any slot
    ty, tx = np.clip(sy + pad_y, 0, stack.shape[1] - cy), np.clip(sx + pad_x, 0, stack.shape[2] - cx)

    def chunk(units: np.ndarray) -> None:
        w = weights[units]  # [u, n]
        crops = windows[slot[units], ty[units], tx[units]].reshape(units.size, n, -1).astype(np.float32)
        num = np.matmul(w[:, None, :], crops).reshape(units.size, cy, cx, 3)
        valid_y, valid_x = _inside(sy[units], cy, hs), _inside(sx[units], cx, ws)  # [u, n, cy], [u, n, cx]
        den = np.matmul((valid_y * w[..., None]).transpose(0, 2, 1), valid_x.astype(np.float32))
        ok = den >= MIN_VALID_WEIGHT
        nfs[units] = np.where(ok[..., None], num / np.where(ok, den, 1)[..., None], GREY)

    step = max(1, _CHUNK_BYTES // (n * cy * cx * 3 * 4))
    live_units = np.flatnonzero(alive)
    chunks = [live_units[lo : lo + step] for lo in range(0, live_units.size, step)]
    _SCALED.use(geometry)
    _run(fill, range(used.size))
    _run(chunk, chunks)  # chunks write disjoint rows of ``nfs``
    return nfs, alive


def _inside(starts: np.ndarray, size: int, limit: int) -> np.ndarray:
    """``[..., size]`` mask of the crop pixels along one axis that fall inside ``[0, limit)``."""
    pos = starts[..., None] + np.arange(size)
    return (pos >= 0) & (pos < limit)


def _run(task: Callable[[T], None], items: Iterable[T]) -> None:
    """``task`` on every item, over ``compute_threads()`` threads (inline when there is one)."""
    threads = compute_threads()
    if threads == 1:
        for item in items:
            task(item)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="nfi-nf") as pool:
        list(pool.map(task, items))
