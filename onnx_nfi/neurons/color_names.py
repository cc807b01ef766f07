"""Each neuron's colour names: how its activation on its top images falls on the 11 colour terms (§9).

For a top entry (image ``j``, location ``p_j``) the neuron's map on the image, negatives set to 0,
is brought to image resolution by letting each map cell cover its stride block (a block of one
stride, centred on the cell's receptive-field centre), and restricted to the receptive-field
window at ``p_j`` clipped to the image; the entry's share of term ``n`` is the mean membership to
``n`` under those weights. A neuron's distribution is the ``a_j``-weighted mean of its entries'.

The weighted sums are exact: a block cut by the window is a rectangle of pixels, whose membership
sums come from the image's summed-area table in four reads, so an entry costs one pass over the
map cells under its window (compiled; ``_weighted_terms``), whatever the window's size in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from onnx_nfi.graph.receptive_field import ReceptiveField, clipped_windows
from onnx_nfi.jit import compiled
from onnx_nfi.neurons.color_naming import COLOR_TERMS, color_memberships

#: Colour terms stored per neuron (``color_names``) have at least this share.
STORED_SHARE = 0.01
TERMS = len(COLOR_TERMS)


def summed_areas(images: np.ndarray) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 -> ``[B, H + 1, W + 1, 11]`` float64 summed-area tables of the memberships:
    ``S[b, y, x] = Σ μ`` over rows ``< y`` and columns ``< x``."""
    rgb = np.asarray(images, np.uint8)
    # photos repeat their colours (half of a 224 px batch's pixels do): each distinct one is named once
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    distinct, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    colours = np.stack([distinct >> 16, (distinct >> 8) & 255, distinct & 255], axis=1).astype(np.uint8)
    out = np.zeros((rgb.shape[0], rgb.shape[1] + 1, rgb.shape[2] + 1, TERMS))
    _summed(color_memberships(colours), inverse.reshape(rgb.shape[:3]), out)
    return out


@compiled(boundscheck=False)
def _summed(table: np.ndarray, colour: np.ndarray, out: np.ndarray) -> None:
    """``out[b, y+1, x+1] = table[colour[b, y, x]]`` + the sums above and to the left, in one pass."""
    for b in range(colour.shape[0]):
        for y in range(colour.shape[1]):
            for x in range(colour.shape[2]):
                row = table[colour[b, y, x]]
                for n in range(table.shape[1]):
                    out[b, y + 1, x + 1, n] = row[n] + out[b, y, x + 1, n] + out[b, y + 1, x, n] - out[b, y, x, n]


def cell_edges(rf: ReceptiveField, cells: int, extent: int, axis: int) -> np.ndarray:
    """``cells + 1`` pixel edges along one axis: map cell ``u`` covers ``[e[u], e[u+1])``, clipped to
    the image. Blocks are one stride long and centred on the cells' receptive-field centres; a
    global field (no stride) spreads the cells evenly over the image."""
    stride = rf.stride[axis]
    if rf.is_global or stride == 0:
        edges = [math.floor(u * extent / cells) for u in range(cells + 1)]
    else:
        start = rf.offset[axis] + (rf.size[axis] - stride) / 2
        edges = [math.floor(start + u * stride) for u in range(cells + 1)]
    return np.clip(np.asarray(edges, np.int64), 0, extent)


def entry_shares(
    areas: np.ndarray, maps: np.ndarray, rows: np.ndarray, units: np.ndarray, ys: np.ndarray, xs: np.ndarray,
    rf: ReceptiveField,
) -> np.ndarray:
    """Each entry's term shares ``[E, 11]`` (NaN where its weights sum to 0): entry ``e`` is unit
    ``units[e]`` of image ``rows[e]`` (of ``areas`` and ``maps`` ``[B, C, Hm, Wm]``) at ``(ys, xs)``."""
    height, width = areas.shape[1] - 1, areas.shape[2] - 1
    edge_y = cell_edges(rf, maps.shape[2], height, 0)
    edge_x = cell_edges(rf, maps.shape[3], width, 1)
    win_y, win_x = clipped_windows(rf, (height, width), maps.shape[2:])  # per map row / column
    window = np.stack([win_y[ys, 0], win_x[xs, 0], win_y[ys, 1], win_x[xs, 1]], axis=1)
    # the map cells whose blocks meet the window: a contiguous range per axis
    cells = np.stack([
        np.searchsorted(edge_y[1:], window[:, 0], side="right"),
        np.searchsorted(edge_y[:-1], window[:, 2], side="left"),
        np.searchsorted(edge_x[1:], window[:, 1], side="right"),
        np.searchsorted(edge_x[:-1], window[:, 3], side="left"),
    ], axis=1)
    out = np.empty((ys.size, TERMS))
    _weighted_terms(areas, np.ascontiguousarray(maps, np.float32), rows.astype(np.int64), units.astype(np.int64),
                    window, cells, edge_y, edge_x, out)
    return out


@compiled(boundscheck=False)
def _weighted_terms(
    areas: np.ndarray, maps: np.ndarray, rows: np.ndarray, units: np.ndarray, window: np.ndarray,
    cells: np.ndarray, edge_y: np.ndarray, edge_x: np.ndarray, out: np.ndarray,
) -> None:
    terms = areas.shape[3]
    acc = np.zeros(terms)
    for e in range(rows.shape[0]):
        b, c = rows[e], units[e]
        acc[:] = 0.0
        total = 0.0
        for u in range(cells[e, 0], cells[e, 1]):
            y0, y1 = max(edge_y[u], window[e, 0]), min(edge_y[u + 1], window[e, 2])
            if y1 <= y0:
                continue
            for v in range(cells[e, 2], cells[e, 3]):
                w = maps[b, c, u, v]
                x0, x1 = max(edge_x[v], window[e, 1]), min(edge_x[v + 1], window[e, 3])
                if w <= 0 or x1 <= x0:
                    continue  # negative activations weigh nothing
                total += w * (y1 - y0) * (x1 - x0)
                for n in range(terms):
                    rect = areas[b, y1, x1, n] - areas[b, y0, x1, n] - areas[b, y1, x0, n] + areas[b, y0, x0, n]
                    acc[n] += w * rect
        for n in range(terms):
            out[e, n] = acc[n] / total if total > 0 else np.nan


def neuron_distributions(activations: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Per neuron the ``a_j``-weighted mean of its entries' shares: ``[C, N]`` activations and
    ``[11, C, N]`` entry shares -> ``[C, 11]``; entries with ``a_j <= 0`` or no share count for
    nothing, and a neuron with none is NaN (dead)."""
    a = np.asarray(activations, np.float64)
    used = (a > 0) & ~np.isnan(shares).any(axis=0)
    weights = np.where(used, a, 0.0)
    total = weights.sum(axis=1)
    summed = np.einsum("cn,tcn->ct", weights, np.where(used[None], shares, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, summed / total[:, None], np.nan)


def top_colors(distributions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top colour term (object, None for dead neurons), its share) of ``[C, 11]`` distributions."""
    alive = ~np.isnan(distributions).any(axis=1)
    best = np.argmax(np.where(alive[:, None], distributions, -1.0), axis=1)
    names = np.array(COLOR_TERMS, dtype=object)[best]
    share = np.take_along_axis(distributions, best[:, None], axis=1)[:, 0]
    return np.where(alive, names, None), np.where(alive, share, np.nan)


def stored_names(distributions: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer the (unit, term, share) rows worth storing: every term with share >= ``STORED_SHARE``."""
    out = {}
    for layer, dist in distributions.items():
        units, terms = np.nonzero(np.nan_to_num(dist, nan=0.0) >= STORED_SHARE)
        out[layer] = (units.astype(np.int32), np.array(COLOR_TERMS, dtype=object)[terms], dist[units, terms])
    return out

