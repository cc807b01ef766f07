"""Image size limits checked from the file header, before any pixel is decoded.

A 33000×33000 PNG is 3 MB on disk and 3 GB decoded (OpenCV refuses it with an exception above
2^30 pixels, and costs gigabytes below that), so one such file must not abort or swamp a run: its
size is read from the header (Pillow reads only the header on ``Image.open``) and the file is
skipped with a reason above the limit (``--max-pixels``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from onnx_nfi.config import DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_MAX_PIXELS", "header_size", "too_large"]


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the image header, or None when Pillow does not know the format (the
    decoder then reports the file as it finds it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: we judge the size ourselves
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: the message holds the size
        return _size_from_bomb_message(str(exc))
    except (OSError, ValueError, SyntaxError):  # not a format Pillow reads (or not an image): the decoder decides
        return None
    return int(height), int(width)


def _size_from_bomb_message(message: str) -> tuple[int, int] | None:
    """Pillow says ``Image size (N pixels) exceeds limit``; the pixel count is all we need."""
    digits = message.split("(", 1)[-1].split(" ", 1)[0]
    return (int(digits), 1) if digits.isdigit() else (1 << 31, 1)


def too_large(path: Path, max_pixels: int) -> str | None:
    """The reason to skip ``path`` when its header says it has more than ``max_pixels`` pixels."""
    size = header_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    pixels = size[0] * size[1]
    shape = f"{size[1]}x{size[0]}, " if size[1] > 1 else ""
    return (
        f"image too large ({shape}{pixels / 1e6:.0f} MP, above the {max_pixels / 1e6:g} MP limit); "
        "shrink it or raise --max-pixels"
    )
