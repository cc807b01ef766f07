"""The top images as the network saw them (display images), decoded for one chunk of top images.

NFs and the selectivity indexes read the union of all neurons' top images, which on a large image
set is most of the set: held all at once (150 kB each at 224 px) it made memory grow with the
number of images, and so did a cache of them sized by a memory budget (its working set reached the
budget only on large sets). The NF and index passes therefore work through the top images in
chunks of a fixed number of images (``onnx_nfi.pipeline.features``) and decode each chunk here,
in parallel, when it is needed; the chunk is dropped before the next one is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.loader import iter_decoded
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ImageError


def decode_display(paths: Mapping[int, Path], pre: Preprocessing) -> dict[int, np.ndarray]:
    """``image id -> uint8 [H, W, 3]`` display image of every path; an image that no longer decodes
    is an error (the scan read it, so it changed or vanished since)."""
    ids = sorted(paths)
    out = {}
    for image_id, decoded in zip(ids, iter_decoded([ImageFile(paths[i], None) for i in ids], pre)):
        if decoded.image is None:
            raise ImageError(
                f"image {decoded.file.path} changed or vanished since the scan ({decoded.error}); put it back "
                "(images that moved: pass --image-root with their new folder) or analyse again"
            )
        out[image_id] = decoded.image
    return out
