"""One image to ask the model about (``onnx-nfi query``, ``where``, the browser's upload form):
decoded in memory from its bytes, its size checked from the header before any pixel is decoded."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from onnx_nfi.data.limits import header_size
from onnx_nfi.data.png_chunks import imdecode
from onnx_nfi.errors import ImageError, ImageTooLargeError


def read_image(path: str | Path, max_pixels: int) -> np.ndarray:
    """The BGR pixels of the image file ``path``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path} ({exc.strerror or exc}); give an image file") from None
    return decode_image(data, path.name, max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The BGR pixels of an encoded image (``name`` only words the errors); refuses what is not an
    image and, from the header alone, one of more than ``max_pixels`` pixels (a decompression bomb)."""
    if not data:
        raise ImageError(f"{name} is empty; give a JPEG or PNG image")
    size = header_size(io.BytesIO(data))
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(
            f"{name} is too large ({size[1]}x{size[0]}, {size[0] * size[1] / 1e6:.4g} MP, above the "
            f"{max_pixels / 1e6:.4g} MP limit); shrink it or raise --max-pixels"
        )
    try:  # IMREAD_COLOR applies a JPEG's EXIF orientation, as the analysis's decoder does
        image = imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{name} is not a decodable image (corrupt, truncated or another format); give a JPEG or PNG")
    if image.shape[0] * image.shape[1] > max_pixels:  # a format whose header Pillow could not read
        raise ImageTooLargeError(f"{name} has more than {max_pixels / 1e6:.4g} MP; shrink it or raise --max-pixels")
    return image
