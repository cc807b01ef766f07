"""Pictures of a query (the image with its box, then each top neuron's NF beside its response map)
and of a where-map (one neuron's map over an image, its colour scale, the field of its maximum).

Maps are drawn at the network's input resolution, nearest-neighbour: input pixel ``(py, px)`` shows
map cell ``(floor(py·H/Hin), floor(px·W/Win))``, coloured with viridis from ``vmin`` to ``vmax``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib import colormaps

from onnx_nfi.errors import OutputError
from onnx_nfi.refs import NeuronRef
from onnx_nfi.report.pictures import Picture, Tile, fit, grid
from onnx_nfi.search.query import QueryModel, Seen, field_window
from onnx_nfi.store.neuron_ref import missing_neuron

#: The box and receptive-field outlines: pure red, a colour viridis never takes.
OUTLINE_RGB = (255, 0, 0)
#: Smallest side of a where-map's tiles: smaller inputs are enlarged (nearest, integer factor).
WHERE_SIDE = 256
#: Share of the heat in the overlay of a where-map (the rest is the image).
OVERLAY_ALPHA = 0.6


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB picture encoded as PNG in memory (``serve`` sends it without a file)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise OutputError("could not encode the picture as PNG")
    return data.tobytes()


def upsample(values: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """A map ``[H, W]`` at input resolution, each input pixel taking the cell it falls in."""
    h, w = values.shape
    rows = np.arange(input_hw[0]) * h // input_hw[0]
    cols = np.arange(input_hw[1]) * w // input_hw[1]
    return values[rows[:, None], cols[None, :]]


def heat(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Values coloured with viridis (256 levels) from ``vmin`` to ``vmax``: RGB uint8."""
    lut = (colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    scaled = (values - vmin) / max(vmax - vmin, 1e-12)
    return lut[np.clip(np.round(scaled * 255), 0, 255).astype(np.int64)]


def outlined(rgb: np.ndarray, box: tuple[float, float, float, float] | None) -> np.ndarray:
    """A copy of ``rgb`` with ``box`` (``x0, y0, x1, y1``, pixel edges) drawn as a 1-px red frame."""
    out = rgb.copy()
    if box is not None:
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])) - 1, int(np.ceil(box[3])) - 1
        cv2.rectangle(out, (x0, y0), (max(x0, x1), max(y0, y1)), OUTLINE_RGB, 1)
    return out


def scale_bar(height: int, vmin: float, vmax: float) -> Tile:
    """The colour scale: viridis from ``vmax`` (top) to ``vmin`` (bottom), labelled with both."""
    column = np.linspace(vmax, vmin, height)[:, None].repeat(24, axis=1)
    return Tile(heat(column, vmin, vmax), ("colour scale", f"top {vmax:.4g}", f"bottom {vmin:.4g}"))


def where_picture(
    display: np.ndarray, values: np.ndarray, vmin: float, vmax: float, window: tuple[int, int, int, int],
    title: str, caption: str,
) -> Picture:
    """A where-map: the overlay (image and heat, the maximum's field outlined), the heat alone and
    its colour scale; ``boxes`` are those three tiles'. ``window``: ``(x0, y0, x1, y1)`` input pixels."""
    hw = display.shape[:2]
    coloured = heat(upsample(values, hw), vmin, vmax)
    overlay = (OVERLAY_ALPHA * coloured + (1 - OVERLAY_ALPHA) * display).round().astype(np.uint8)
    cell = max(hw) * max(1, WHERE_SIDE // max(hw))  # small inputs enlarged by an integer factor
    tiles = [
        Tile(outlined(overlay, window), ("over the image", "field of the maximum in red")),
        Tile(coloured, ("activation map", f"max {float(values.max()):.4g}")),
        scale_bar(hw[0], vmin, vmax),
    ]
    return grid(tiles, title, caption, cell=cell)


@dataclass(frozen=True)
class Shown:
    """One neuron of a query picture: its NF (None: not stored), its response map coloured at the
    input's resolution, the receptive field of its response (``x0, y0, x1, y1`` input pixels), captions."""

    nf: np.ndarray | None
    coloured: np.ndarray
    window: tuple[int, int, int, int]
    lines: tuple[str, ...]


def query_picture(display: np.ndarray, box: tuple[float, float, float, float] | None, neurons: Sequence[Shown],
                  title: str, caption: str, side: int = 112) -> Picture:
    """The query image (its box in red), then per neuron a 2×2 tile: its NF and response map above,
    the map over the image (the response's field in red) and the image inside that field below."""
    gap = 4
    tiles = [Tile(fit(outlined(display, box), 2 * side + gap), ("query image", "box in red" if box else "whole image"))]
    for n in neurons:
        nf = fit(n.nf, side) if n.nf is not None else np.full((side, side, 3), 127, np.uint8)
        overlay = (OVERLAY_ALPHA * n.coloured + (1 - OVERLAY_ALPHA) * display).round().astype(np.uint8)
        x0, y0, x1, y1 = n.window
        cells = [nf, fit(n.coloured, side), fit(outlined(overlay, n.window), side), fit(display[y0:y1, x0:x1], side)]
        cells = [_square(c, side) for c in cells]
        column = np.full((side, gap, 3), 255, np.uint8)
        rows = [np.hstack([cells[0], column, cells[1]]), np.hstack([cells[2], column, cells[3]])]
        tiles.append(Tile(np.vstack([rows[0], np.full((gap, 2 * side + gap, 3), 255, np.uint8), rows[1]]), n.lines))
    return grid(tiles, title, caption, cell=2 * side + gap)


def _square(rgb: np.ndarray, side: int) -> np.ndarray:
    """``rgb`` centred on a white ``side``×``side`` square (an NF or map smaller than the cell)."""
    out = np.full((side, side, 3), 255, np.uint8)
    h, w = min(rgb.shape[0], side), min(rgb.shape[1], side)
    y, x = (side - h) // 2, (side - w) // 2
    out[y : y + h, x : x + w] = rgb[:h, :w]
    return out


@dataclass(frozen=True)
class WhereDrawn:
    """A where-map in memory: the neuron, its largest response and cell, the colour range, the picture."""

    neuron: str
    response: float
    cell: tuple[int, int]
    vmin: float
    vmax: float
    image: np.ndarray
    boxes: tuple[tuple[int, int, int, int], ...]


def draw_where(engine: QueryModel, seen: Seen, layer: str, unit: int, name: str) -> WhereDrawn:
    """Unit ``unit`` of ``layer``'s map on the seen image, coloured from min(0, map) to the larger of
    its maximum and the neuron's stored top-1 score (a weak response looks weak)."""
    item = engine.layer(layer)
    if not 0 <= unit < item.layer.channels:
        raise missing_neuron(NeuronRef(engine.model, item.layer.alias, unit),
                             {"alias": item.layer.alias, "channels": item.layer.channels})
    values = seen.maps[item.layer.tensor][unit]
    y, x = np.unravel_index(int(values.argmax()), values.shape)
    top1 = float(item.scores.top1[unit])
    vmin = min(0.0, float(values.min()))
    vmax = max(float(values.max()), top1 if np.isfinite(top1) else vmin, vmin + 1e-6)
    y0, x0, y1, x1 = field_window(item.rf, int(y), int(x), engine.pre.input_size)
    neuron = str(NeuronRef(engine.model, item.layer.alias, unit))
    picture = where_picture(
        seen.display, values, vmin, vmax, (x0, y0, x1, y1), f"{neuron} on {name}",
        f"largest response {float(values.max()):.4g} at cell ({y}, {x}); stored top-1 {top1:.4g}",
    )
    return WhereDrawn(neuron, float(values.max()), (int(y), int(x)), vmin, vmax, picture.image, picture.boxes)
