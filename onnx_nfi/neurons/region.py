"""A neuron's response to one image, or to a region of it (docs/method.md §12).

A map cell belongs to a region when the centre of its receptive field lies inside the region's box
(both in the network's input pixels); the response is the neuron's largest value over those cells.
The stored top-N scores then say how the response compares with the images the neuron was analysed on.
"""

from __future__ import annotations

import numpy as np

from onnx_nfi.graph.receptive_field import ReceptiveField

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixel-edge coordinates


def cell_centres(rf: ReceptiveField, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per map row and column, the centre of its (unclipped) receptive field in input pixel-edge
    coordinates: ``floor(i·stride + offset) + size/2``."""
    centres = []
    for axis in (0, 1):
        starts = np.floor(np.arange(out_hw[axis]) * float(rf.stride[axis]) + float(rf.offset[axis]))
        centres.append(starts + rf.size[axis] / 2)
    return centres[0], centres[1]


def box_cells(rf: ReceptiveField, out_hw: tuple[int, int], box: Box | None) -> np.ndarray:
    """``bool [H, W]``: the cells whose receptive-field centre lies in ``box`` (``x0 ≤ cx ≤ x1`` and
    ``y0 ≤ cy ≤ y1``). Every cell without a box, and for a layer with a global field (each of its
    cells sees the whole image). A box between centres takes the one cell nearest its centre."""
    if box is None or rf.is_global:
        return np.ones(out_hw, bool)
    cy, cx = cell_centres(rf, out_hw)
    x0, y0, x1, y1 = box
    inside = ((cy >= y0) & (cy <= y1))[:, None] & ((cx >= x0) & (cx <= x1))[None, :]
    if inside.any():
        return inside
    nearest = np.zeros(out_hw, bool)
    nearest[np.argmin(np.abs(cy - (y0 + y1) / 2)), np.argmin(np.abs(cx - (x0 + x1) / 2))] = True
    return nearest


def region_max(maps: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel of ``maps`` ``[C, H, W]``: the largest value over ``cells`` and the first (row-major)
    cell holding it, as ``(values [C], ys [C], xs [C])``. ``cells`` is a rectangle of rows and
    columns (``box_cells``), so the maps are sliced, never copied."""
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    sub = maps[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    c, h, w = sub.shape
    flat = sub.reshape(c, h * w) if sub.flags.c_contiguous else np.ascontiguousarray(sub).reshape(c, h * w)
    where = flat.argmax(axis=1)
    return flat[np.arange(c), where].astype(np.float32), where // w + rows[0], where % w + cols[0]


def standing(response: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each response falls among its neuron's stored top-N scores ``[C, N]`` (NaN: no entry):
    ``rank``, the place it would take (1: above the top-1; N + 1: below the N-th), and
    ``percentile``, 100 × the share of stored scores it reaches (> 0: it would enter the top-N)."""
    stored = ~np.isnan(top)
    reached = (np.nan_to_num(top, nan=np.inf) <= response[:, None]).sum(axis=1)
    count = np.maximum(stored.sum(axis=1), 1)
    rank = stored.sum(axis=1) - reached + 1
    return rank.astype(np.int64), (100.0 * reached / count).astype(np.float64)
