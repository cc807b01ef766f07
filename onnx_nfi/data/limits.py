"""Image size limits checked from the file header, before any pixel is decoded.

A 33000×33000 PNG is 3 MB on disk and 3 GB decoded (OpenCV refuses it with an exception above
2^30 pixels, and costs gigabytes below that), so one such file must not abort or swamp a run: its
size is read from the header (Pillow reads only the header on ``Image.open``) and the file is
skipped with a reason above the limit (``--max-pixels``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

from onnx_nfi.config import DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_MAX_PIXELS", "header_size", "too_large"]

#: Pillow's limit is a module global: the header reads that lift it take turns.
_PILLOW_LIMIT = threading.Lock()


def header_size(path: Path | BinaryIO) -> tuple[int, int] | None:
    """(height, width) from the image header (of a file, or of bytes in memory), or None when Pillow does not know the format (the
    decoder then reports the file as it finds it)."""
    from PIL import Image

    with _PILLOW_LIMIT:  # Pillow's own bomb limit would refuse before telling the size: we judge it
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, ValueError, SyntaxError):  # not a format Pillow reads (or not an image): the decoder decides
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return int(height), int(width)


def too_large(path: Path, max_pixels: int) -> str | None:
    """The reason to skip ``path`` when its header says it has more than ``max_pixels`` pixels."""
    size = header_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    return (
        f"image too large ({size[1]}x{size[0]}, {size[0] * size[1] / 1e6:.4g} MP, above the {max_pixels / 1e6:.4g} MP "
        "limit); shrink it or raise --max-pixels"
    )
