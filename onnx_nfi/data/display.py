"""The top images as the network saw them (display images), decoded on demand within a memory budget.

NFs and the selectivity indexes read the union of all neurons' top images, which on a large image
set is most of the set: held all at once (150 kB each at 224 px) it made memory grow with the
number of images. Every reader goes through the ids in ascending order, so images are decoded a
block at a time, in parallel, ahead of the reader, and the oldest are dropped past the budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from onnx_nfi.data.images import ImageFile
from onnx_nfi.data.loader import iter_decoded
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ImageError

#: Decoded images kept at most, in bytes (~3,400 images at 224 px).
BUDGET_BYTES = 512 * 2**20
#: Images decoded together when a reader asks for one that is not kept.
BLOCK = 256


class DisplayImages(Mapping[int, np.ndarray]):
    """``image id -> uint8 [H, W, 3]`` display image, for the given ids, decoded lazily."""

    def __init__(
        self, paths: Mapping[int, Path], pre: Preprocessing, budget_bytes: int = BUDGET_BYTES, block: int = BLOCK
    ) -> None:
        self.ids = sorted(paths)
        self._block = block
        self._paths = dict(paths)
        self._pre = pre
        self._position = {image_id: k for k, image_id in enumerate(self.ids)}
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # readers on several threads decode each block once
        height, width = pre.input_size
        #: how many images the budget holds
        self.capacity = max(2 * block, budget_bytes // (height * width * 3))
        #: how many a reader may need at once (NFs take a chunk for several passes): half, so a
        #: chunk stays decoded while the next block is read
        self.chunk = self.capacity // 2

    def __getitem__(self, image_id: int) -> np.ndarray:
        if image_id not in self._position:
            raise KeyError(image_id)
        with self._lock:
            image = self._kept.get(image_id)
            if image is None:
                self._decode_from(self._position[image_id])
                image = self._kept[image_id]
        return image

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def kept(self) -> int:
        """How many decoded images are held now (for tests and diagnostics)."""
        return len(self._kept)

    def _decode_from(self, k: int) -> None:
        ids = [i for i in self.ids[k : k + self._block] if i not in self._kept]
        files = [ImageFile(self._paths[i], None) for i in ids]
        for image_id, decoded in zip(ids, iter_decoded(files, self._pre)):
            if decoded.image is None:
                raise ImageError(
                    f"image {decoded.file.path} changed or vanished since the scan ({decoded.error}); analyse again"
                )
            self._kept[image_id] = decoded.image
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)
