"""One picture per layer holding all its NFs (a sprite), for the static layer page.

A layer page of 1,280 units would otherwise ask for 1,280 files, six at a time; with the sprite
it asks for one. Every tile shows its cell through a window: the sprite is drawn at the scale that
fits one NF into the tile's box (centred, aspect kept, pixelated) and shifted so that the unit's
cell lies in the window. The sizes go into CSS variables, once per grid (``grid_style``) and two
numbers per tile (``cell_style``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from onnx_nfi.errors import ReportError

#: Side of a tile's NF box on the layer page, CSS pixels (style.css's ``.tile img``).
TILE_PX = 64


@dataclass(frozen=True)
class Sprite:
    """Where each unit's NF lies in its layer's sprite: cells of ``cell`` (height, width) pixels, ``cols`` a row."""

    cols: int
    rows: int
    cell: tuple[int, int]
    cells: Mapping[int, tuple[int, int]]  # unit -> (column, row)

    def grid_style(self, box: int = TILE_PX) -> str:
        """The grid's CSS variables: the sprite's and one cell's drawn sizes, and the box's margins."""
        h, w = self.cell
        k = box / max(h, w)
        return (f"--sw:{self.cols * w * k:.3f}px;--sh:{self.rows * h * k:.3f}px;--cw:{w * k:.3f}px;--ch:{h * k:.3f}px;"
                f"--mx:{(box - w * k) / 2:.3f}px;--my:{(box - h * k) / 2:.3f}px")

    def cell_style(self, unit: int) -> str:
        """A tile's CSS variables: its cell's column and row."""
        c, r = self.cells[unit]
        return f"--c:{c};--r:{r}"


def layer_sprite(pngs: Mapping[int, bytes]) -> tuple[Sprite, bytes] | None:
    """The sprite (PNG bytes) of a layer's NF PNGs by unit, in unit order, about as wide as high; None without NFs.

    NFs of one layer share their size; a smaller one (none is expected) sits in the top-left of its cell.
    """
    if not pngs:
        return None
    images = {u: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) for u, png in sorted(pngs.items())}
    h = max(img.shape[0] for img in images.values())
    w = max(img.shape[1] for img in images.values())
    cols = max(1, math.ceil(math.sqrt(len(images) * h / w)))
    rows = math.ceil(len(images) / cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    cells = {}
    for k, (unit, img) in enumerate(images.items()):
        c, r = k % cols, k // cols
        sheet[r * h : r * h + img.shape[0], c * w : c * w + img.shape[1]] = img
        cells[unit] = (c, r)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:
        raise ReportError("cannot encode a layer's NF sprite as PNG")
    return Sprite(cols, rows, (h, w), cells), buf.tobytes()
