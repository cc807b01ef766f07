"""The top images as the network saw them (display images), decoded for one chunk of top images.

NFs and the selectivity indexes read the union of all neurons' top images, which on a large image
set is most of the set: held all at once (150 kB each at 224 px) it made memory grow with the
number of images, and so did a cache of them sized by a memory budget (its working set reached the
budget only on large sets). The NF and index passes therefore work through the top images in
chunks of a fixed number of images (``onnx_nfi.pipeline.features``) and decode each chunk here,
in parallel, when it is needed; the chunk is dropped before the next one is read.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnx_nfi.config import DEFAULT_MAX_PIXELS
from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.limits import header_size
from onnx_nfi.data.loader import Decoded, decode_bytes, iter_decoded
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ImageError
from onnx_nfi.files import read_regular


def decode_display(
    paths: Mapping[int, Path], pre: Preprocessing, sha256: Mapping[int, str] | None = None
) -> dict[int, np.ndarray]:
    """``image id -> uint8 [H, W, 3]`` display image of every path; an image that no longer decodes,
    or whose content is no longer the one scanned (``sha256``: the hashes recorded by the scan), is
    an error naming it: NFs and indexes of other pixels than the scan ranked would be wrong."""
    ids = sorted(paths)
    out = {}
    for image_id, decoded in zip(ids, iter_decoded([ImageFile(paths[i], None) for i in ids], pre)):
        _check_same(decoded, (sha256 or {}).get(image_id))
        out[image_id] = decoded.image
    return out


def display_image(
    path: Path, pre: Preprocessing, sha256: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """One image as the network saw it (resized, cropped RGB), read as the scan reads images: a
    regular file only (never blocking), at most ``max_pixels`` pixels by its header, decode errors
    as one line; with ``sha256``, it must still be the image scanned."""
    try:
        data = read_regular(path)
    except OSError as exc:
        raise ImageError(f"top image {path} cannot be read any more ({exc.strerror or exc}); put it back "
                         "(images that moved: pass --image-root with their new folder) or analyse again") from None
    size = header_size(io.BytesIO(data))
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(f"image {path} has {size[1]}x{size[0]} pixels now, above the {max_pixels / 1e6:.4g} MP limit: "
                         "it changed since the scan; put the original back or analyse again")
    decoded = decode_bytes(ImageFile(path, None), data, pre)
    _check_same(decoded, sha256)
    return decoded.image


def _check_same(decoded: Decoded, sha256: str | None) -> None:
    """Refuse an image that no longer decodes, or whose bytes are not those the scan hashed."""
    if decoded.image is None:
        raise ImageError(
            f"image {decoded.file.path} changed or vanished since the scan ({decoded.error}); put it back "
            "(images that moved: pass --image-root with their new folder) or analyse again"
        )
    if sha256 is not None and decoded.sha256 != sha256:
        raise ImageError(
            f"image {decoded.file.path} changed since the scan (its SHA-256 is not the one stored); put the "
            "original back or analyse again"
        )
