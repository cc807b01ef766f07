"""Decode images in a background pool and hand out fixed-size batches in file order.

OpenCV releases the GIL while decoding and resizing, so a thread pool keeps the runtime fed
without extra processes. Futures are consumed in submission order, so image ids stay
deterministic however the threads interleave. Unreadable files are reported, never fatal.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.png_chunks import imdecode
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.files import NotARegularFile, read_regular
from onnx_nfi.signals import future_result

# Every unreadable file becomes a reason in the summary; OpenCV's own "[ WARN:0@…]" lines on
# stderr would only repeat it, raw, in the middle of the progress bars.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@dataclass(frozen=True)
class Decoded:
    """One file after decoding: the display image (None when unreadable) and why it failed."""

    file: ImageFile
    image: np.ndarray | None  # RGB uint8 [H, W, 3] at the input size
    sha256: str
    error: str | None
    tensor: np.ndarray | None = None  # the normalised model input [C, H, W] / [H, W, C], when asked for


@dataclass(frozen=True)
class Batch:
    """Consecutive readable images: ids are positions among readable images, from 0."""

    ids: np.ndarray  # int64 [B]
    positions: np.ndarray  # int64 [B]: each image's position in the file list (readable or not)
    tensor: np.ndarray  # the model's input batch, normalised in the decode threads
    files: tuple[ImageFile, ...]
    sha256: tuple[str, ...]


def decode(file: ImageFile, pre: Preprocessing, normalise: bool = False) -> Decoded:
    """Read, hash and preprocess one file (and normalise it: off the main thread); failures become a reason."""
    try:
        data = read_regular(file.path)  # never blocks: a FIFO swapped in mid-run is a reason, not a hang
    except NotARegularFile:
        return Decoded(file, None, "", "not a regular file (a FIFO, socket or device)")
    except OSError as exc:
        return Decoded(file, None, "", f"cannot read file ({exc.strerror or exc})")
    return decode_bytes(file, data, pre, normalise)


def decode_bytes(file: ImageFile, data: bytes, pre: Preprocessing, normalise: bool = False) -> Decoded:
    """Hash and preprocess the bytes ``data`` read from ``file``; failures become a reason."""
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Decoded(file, None, digest, "empty file")
    try:  # IMREAD_COLOR applies a JPEG's EXIF orientation: the image is seen upright
        image = imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. more pixels than OpenCV allows (a header the size check could not read)
        return Decoded(file, None, digest, f"cannot be decoded ({str(exc).strip().splitlines()[-1]})")
    if image is None:
        return Decoded(file, None, digest, "not a decodable image (corrupt, truncated or another format)")
    display = pre.to_display(image)
    return Decoded(file, display, digest, None, pre.to_tensor(display[None])[0] if normalise else None)


def default_workers() -> int:
    """Decoder threads: enough to hide decoding behind inference without starving it of cores."""
    return max(1, min(8, (os.cpu_count() or 2)))


def iter_decoded(
    files: Sequence[ImageFile],
    pre: Preprocessing,
    workers: int | None = None,
    prefetch: int = 64,
    normalise: bool = False,
) -> Iterator[Decoded]:
    """Decoded files in order, ``prefetch`` files ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="nfi-decode") as pool:
        pending: deque[Future[Decoded]] = deque()
        it = iter(files)
        for file in it:
            pending.append(pool.submit(decode, file, pre, normalise))
            if len(pending) >= prefetch:
                break
        while pending:
            result = future_result(pending.popleft())
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(decode, nxt, pre, normalise))
            yield result


def iter_batches(
    files: Sequence[ImageFile],
    pre: Preprocessing,
    batch_size: int,
    on_skip: Callable[[Path, str], None] | None = None,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Batches of readable images as model input; each unreadable file goes to ``on_skip(path, reason)``."""
    buf: list[Decoded] = []
    at: list[int] = []
    next_id = 0

    def flush() -> Batch:
        nonlocal next_id
        ids = np.arange(next_id, next_id + len(buf), dtype=np.int64)
        next_id += len(buf)
        tensor = np.stack([d.tensor for d in buf])
        batch = Batch(ids, np.array(at, np.int64), tensor, tuple(d.file for d in buf), tuple(d.sha256 for d in buf))
        buf.clear()
        at.clear()
        return batch

    items = iter_decoded(files, pre, workers, prefetch=max(2 * batch_size, 16), normalise=True)
    for position, item in enumerate(items):
        if item.image is None:
            if on_skip is not None:
                on_skip(item.file.path, item.error or "unreadable")
            continue
        buf.append(item)
        at.append(position)
        if len(buf) == batch_size:
            yield flush()
    if buf:
        yield flush()
