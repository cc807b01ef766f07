"""PNG pictures of neurons: one NF, labelled NF grids, neuron cards, selectivity by depth, heat maps.

Pure rendering: numpy arrays and small records in, an RGB ``uint8`` image out (``write_png``
saves it). Tiles are composed pixel by pixel in numpy, so each lands in a known box (returned with
the picture; the tests read the PNG back there) and an enlarged NF keeps its stored values exactly
(nearest-neighbour, integer factor). Text is rasterised with matplotlib's FreeType fonts and
blended into the margins; matplotlib's ``Figure`` on the Agg canvas (no GUI backend, no pyplot
state) draws only the summary plots and heat maps. docs/method.md §4 allows scaling one layer's NFs
to a common size for display; NFs are never resampled otherwise. Every picture is sized to what it
draws: grids have as many rows as their tiles fill, titles wrap instead of widening the page, and
captions are never cut.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps, font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font, LoadFlags
from matplotlib.lines import Line2D

from onnx_nfi.errors import OutputError
from onnx_nfi.neurons.nf import to_uint8

DPI = 100
PT_PER_PX = 72 / DPI
BACKGROUND = 255
DEAD_FILL = 127
DEAD_CROSS = 70
#: Default longest side of an enlarged single NF.
NF_MIN_SIDE = 256
#: Narrowest text column of a picture: a title wraps at this width rather than stretching the
#: page past its tiles, and a picture of one or two tiles is not narrower than its title needs.
MIN_TEXT_WIDTH = 320
CAPTION_PX = 12
LINE_PX = 16
MARGIN = 12
GAP = 8
TITLE_PX = 16
#: Heat-map cells in inches (at DPI 100: 24 px, room for 9-pt tick labels, one per row and column).
HEAT_CELL_IN = 0.24
HEAT_LABEL_PT = 9
#: The mark on each row's best cell of a heat map: pure red, a colour viridis never takes.
MARK_RGB = (255, 0, 0)


Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, in picture pixels


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: an RGB image (0-255, any size) or ``None`` for a crossed grey tile."""

    image: np.ndarray | None
    caption: tuple[str, ...] = ()


@dataclass(frozen=True)
class Picture:
    """A rendered picture and where each tile's pixels are (in the order the tiles were given)."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Series:
    """One model's values of one index, per layer, in depth order."""

    model: str
    relative_depth: np.ndarray  # float [L]
    values: tuple[np.ndarray, ...]  # per layer, finite values only


@dataclass(frozen=True)
class Panel:
    """One index's panel of the summary: every model's per-layer distributions."""

    index: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class _Text:
    x: float
    y: float  # top of the text, picture pixels
    text: str
    size: int = CAPTION_PX
    bold: bool = False
    ha: str = "center"


def enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor: each pixel becomes a factor×factor block."""
    return np.repeat(np.repeat(to_uint8(rgb), factor, axis=0), factor, axis=1)


def fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """An image scaled to fit a ``side``×``side`` cell: small ones enlarged by an integer factor
    (exact pixels), larger ones reduced by area averaging (keeps fine detail readable)."""
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return enlarge(rgb, side // max(h, w))
    k = side / max(h, w)
    return cv2.resize(to_uint8(rgb), (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def nf_picture(nf: np.ndarray, header: Sequence[str] = (), scale: int | None = None) -> Picture:
    """One NF enlarged for viewing (by ``scale``, or by the smallest factor reaching ``NF_MIN_SIDE`` px)
    under its ``header`` lines (the first in bold): a file that says which neuron it shows."""
    factor = scale or max(1, math.ceil(NF_MIN_SIDE / max(nf.shape[:2])))
    image = enlarge(nf, factor)
    widest = max([_text_width(h, TITLE_PX if k == 0 else CAPTION_PX + 1, k == 0) for k, h in enumerate(header)], default=0)
    body = max(image.shape[1], MIN_TEXT_WIDTH, min(widest, 2 * MIN_TEXT_WIDTH))  # a title on one line if it can
    top, texts = _header(header, body)
    page = np.full((top + image.shape[0] + MARGIN, body + 2 * MARGIN, 3), BACKGROUND, np.uint8)
    x0 = MARGIN + (body - image.shape[1]) // 2
    page[top : top + image.shape[0], x0 : x0 + image.shape[1]] = image
    return Picture(_draw_text(page, texts), ((top, x0, top + image.shape[0], x0 + image.shape[1]),))


def balanced_columns(n: int) -> int:
    """Columns for ``n`` tiles: about square, choosing among up to 1.5x as many columns the count
    that leaves the fewest empty cells in the last row (5 tiles: one row, not 3 + 2)."""
    base = max(1, math.ceil(math.sqrt(n)))
    candidates = range(base, max(base, min(n, math.ceil(base * 1.5))) + 1)
    return min(candidates, key=lambda c: (math.ceil(n / c) * c - n, c))


def grid(tiles: Sequence[Tile], title: str = "", caption: str = "", *, cell: int = 96) -> Picture:
    """Tiles in a grid, each fitted into a ``cell`` px square with its caption lines under it.

    The page is as wide as the tiles (or ``MIN_TEXT_WIDTH``); the title (bold) and the
    ``caption`` line under it wrap to that width, so a long title never leaves half the page empty.
    """
    canvas, boxes, texts = _grid_canvas(tiles, cell, balanced_columns(len(tiles)))
    body = max(canvas.shape[1], MIN_TEXT_WIDTH)
    top, header = _header([line for line in (title, caption) if line], body)
    page = np.full((top + canvas.shape[0] + MARGIN, body + 2 * MARGIN, 3), BACKGROUND, np.uint8)
    left = MARGIN + (body - canvas.shape[1]) // 2
    page[top : top + canvas.shape[0], left : left + canvas.shape[1]] = canvas
    texts = [_Text(t.x + left, t.y + top, t.text, t.size, t.bold, t.ha) for t in texts]
    return Picture(_draw_text(page, [*header, *texts]), tuple(_shift(b, top, left) for b in boxes))


def card(
    nf: np.ndarray | None,
    crops: Sequence[Tile],
    header: Sequence[str],
    *,
    nf_side: int = 256,
    cell: int = 120,
    columns: int = 5,
) -> Picture:
    """A neuron card (Rafegas et al., figure 1): the NF large beside its top crops.

    ``boxes`` holds the NF's box first, then the crops' boxes in order. A dead unit (``nf`` None)
    gets the crossed grey tile in the NF's place.
    """
    nf_img = _dead_tile(nf_side) if nf is None else fit(nf, nf_side)
    crops_canvas, crop_boxes, crop_texts = _grid_canvas(crops, cell, min(columns, max(1, len(crops))))
    left_w = max(nf_side, nf_img.shape[1])
    body_h = max(nf_img.shape[0] + GAP + LINE_PX, crops_canvas.shape[0])
    body_w = left_w + 3 * GAP + crops_canvas.shape[1]
    header_h, texts = _header(header, body_w)
    page = np.full((header_h + body_h + MARGIN, body_w + 2 * MARGIN, 3), BACKGROUND, np.uint8)
    y0, x0 = header_h, MARGIN + (left_w - nf_img.shape[1]) // 2
    page[y0 : y0 + nf_img.shape[0], x0 : x0 + nf_img.shape[1]] = nf_img
    cx = MARGIN + left_w + 3 * GAP
    page[y0 : y0 + crops_canvas.shape[0], cx : cx + crops_canvas.shape[1]] = crops_canvas
    texts.append(_Text(MARGIN + left_w / 2, y0 + nf_img.shape[0] + GAP // 2, "neuron feature" if nf is not None else "dead: no neuron feature", CAPTION_PX))
    texts += [_Text(t.x + cx, t.y + y0, t.text, t.size, t.bold, t.ha) for t in crop_texts]
    boxes = ((y0, x0, y0 + nf_img.shape[0], x0 + nf_img.shape[1]), *(_shift(b, y0, cx) for b in crop_boxes))
    return Picture(_draw_text(page, texts), boxes)


def selectivity_plot(panels: Sequence[Panel], title: str = "", footnote: str = "") -> Picture:
    """Per-layer distributions of each index against relative depth, one panel per index.

    Each model gets one colour: the median per layer as a line, the 25-75 % band shaded, and
    every neuron as a faint jittered dot, as in the paper's per-layer figures.
    """
    if not panels:
        raise ValueError("selectivity_plot needs at least one panel")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(5.2 * columns, 3.8 * rows + 0.9), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    models = sorted({s.model for p in panels for s in p.series})
    colours = {m: colormaps["tab10"](k % 10) for k, m in enumerate(models)}
    rng = np.random.default_rng(0)
    for ax, panel in zip(axes.flat, panels):
        for s in panel.series:
            _plot_series(ax, s, colours[s.model], rng)
        ax.axhline(0, color="0.6", lw=0.6, zorder=0)
        ax.set_title(panel.index.replace("_", " "), fontsize=12)
        ax.set_xlabel("relative depth (first conv layer = 0, last = 1)", fontsize=9)
        ax.set_ylabel("index value", fontsize=9)
        ax.set_xlim(-0.04, 1.04)
        ax.grid(alpha=0.3, lw=0.5)
        _robust_ylim(ax, np.concatenate([v for s in panel.series for v in s.values]))
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=colours[m], lw=2, label=m) for m in models]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(models), 5), fontsize=10, frameon=False)
    fig.suptitle(  # the title (and the footnote under it) own the top, the legend the bottom: they never meet
        (title or "Selectivity by depth: per-layer median, 25-75 % band, one dot per neuron") + (f"\n{footnote}" if footnote else ""),
        x=0.01,
        ha="left",
        fontsize=12,
    )
    return Picture(figure_pixels(fig))


def heat_map(
    heat: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    labels: tuple[str, str, str],
    title: str,
    marks: Sequence[tuple[int, int]] = (),
) -> Picture:
    """A matrix in [0, 1] with every row and column labelled, and a red dot on each ``(row, column)``
    of ``marks`` (e.g. each row's best column). ``labels``: row axis, column axis, colour bar.

    Cells are ``HEAT_CELL_IN`` square whatever the size, so the 9-pt labels never overlap; the box
    returned is the matrix's area in picture pixels (cell ``(i, j)`` is the ``i``-th of ``len(rows)``
    equal bands down it and the ``j``-th across).
    """
    la, lb = heat.shape
    fig = Figure(figsize=(4.2 + HEAT_CELL_IN * lb, 3.2 + HEAT_CELL_IN * la), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(heat), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if marks:
        ys, xs = zip(*marks)
        ax.scatter(xs, ys, s=30, color=np.array(MARK_RGB) / 255, edgecolors="white", linewidths=1)
    ax.set_xticks(range(lb), list(columns), rotation=90, fontsize=HEAT_LABEL_PT)
    ax.set_yticks(range(la), list(rows), fontsize=HEAT_LABEL_PT)
    ax.set_xlim(-0.5, lb - 0.5)
    ax.set_ylim(la - 0.5, -0.5)
    ax.set_xlabel(labels[1], fontsize=10)
    ax.set_ylabel(labels[0], fontsize=10)
    ax.set_title(title, fontsize=11, loc="left")
    fig.colorbar(image, ax=ax, label=labels[2])
    fig.tight_layout()
    pixels = figure_pixels(fig)
    extent = ax.get_window_extent()
    height = pixels.shape[0]
    box = (round(height - extent.y1), round(extent.x0), round(height - extent.y0), round(extent.x1))
    return Picture(pixels, (box,))


def check_png(path: str | Path) -> Path:
    """The path, if a PNG can be written there; checked before long work, not after it."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"pictures are written as PNG; name the output file *.png (got {path.name})")
    if not path.parent.exists():
        raise OutputError(f"folder {path.parent} does not exist; create it first or choose another -o")
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Save an RGB picture as PNG (lossless, so tests can read exact pixels back)."""
    path = check_png(path)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise OutputError(f"could not encode the picture for {path}")
    try:
        path.write_bytes(data.tobytes())
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return path


# ---- internals -------------------------------------------------------------------------------


def _grid_canvas(tiles: Sequence[Tile], cell: int, columns: int) -> tuple[np.ndarray, list[Box], list[_Text]]:
    """Tiles laid out row by row; each tile is centred in its cell, captions under it.

    A cell is as wide as its longest caption when that is wider than ``cell``: captions are
    written in full (a model name cut to ``mobilenetv2_d…`` names nothing).
    """
    lines = max((len(t.caption) for t in tiles), default=0)
    widest = max((_text_width(line, CAPTION_PX) for t in tiles for line in t.caption), default=0)
    inner_w = max(cell, widest)
    cell_h, cell_w = cell + (GAP // 2 + lines * LINE_PX if lines else 0) + GAP, inner_w + GAP
    rows = max(1, math.ceil(len(tiles) / columns))
    canvas = np.full((rows * cell_h - GAP, columns * cell_w - GAP, 3), BACKGROUND, np.uint8)
    boxes: list[Box] = []
    texts: list[_Text] = []
    for k, tile in enumerate(tiles):
        top, left = (k // columns) * cell_h, (k % columns) * cell_w
        img = _dead_tile(cell) if tile.image is None else fit(tile.image, cell)
        y0, x0 = top + (cell - img.shape[0]) // 2, left + (inner_w - img.shape[1]) // 2
        canvas[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
        boxes.append((y0, x0, y0 + img.shape[0], x0 + img.shape[1]))
        texts += [
            _Text(left + inner_w / 2, top + cell + GAP // 2 + n * LINE_PX, line, CAPTION_PX)
            for n, line in enumerate(tile.caption)
        ]
    return canvas, boxes, texts


def _header(lines: Sequence[str], width: int) -> tuple[int, list[_Text]]:
    """A picture's heading: the first line bold, the others plain, each wrapped to ``width`` px.

    Returns where the body starts and the texts (left-aligned at the margin).
    """
    if not lines:
        return MARGIN, []
    y, texts = MARGIN, list[_Text]()
    for piece in _wrap(lines[0], width, TITLE_PX, True):
        texts.append(_Text(MARGIN, y, piece, TITLE_PX, True, "left"))
        y += TITLE_PX + 4
    y += GAP - 4
    for line in lines[1:]:
        for piece in _wrap(line, width, CAPTION_PX + 1):
            texts.append(_Text(MARGIN, y, piece, CAPTION_PX + 1, False, "left"))
            y += LINE_PX + 2
    return y + GAP, texts


def _wrap(text: str, width: int, size: int, bold: bool = False) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px: at spaces, or inside a word longer than a line."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if _text_width(candidate, size, bold) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and _text_width(word, size, bold) > width:
            cut = len(word) - 1
            while cut > 1 and _text_width(word[:cut], size, bold) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return [*lines, line] if line else lines


def _dead_tile(side: int) -> np.ndarray:
    """A grey tile crossed out: the neuron never fired, so it has no NF."""
    tile = np.full((side, side, 3), DEAD_FILL, np.uint8)
    cv2.line(tile, (0, 0), (side - 1, side - 1), (DEAD_CROSS,) * 3, 2)
    cv2.line(tile, (0, side - 1), (side - 1, 0), (DEAD_CROSS,) * 3, 2)
    return tile


def _shift(box: Box, dy: int, dx: int) -> Box:
    return (box[0] + dy, box[1] + dx, box[2] + dy, box[3] + dx)


def _text_width(text: str, size: int, bold: bool = False) -> int:
    font = _set_text(text, size, bold)
    return math.ceil(font.get_width_height()[0] / 64)


@functools.lru_cache(maxsize=2)
def _font(bold: bool) -> FT2Font:
    """DejaVu Sans (ships with matplotlib, so text looks the same on every machine)."""
    return FT2Font(
        font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    )


def _set_text(text: str, size: int, bold: bool) -> FT2Font:
    font = _font(bold)
    font.set_size(size * PT_PER_PX, DPI)
    font.set_text(text, 0.0, flags=LoadFlags.FORCE_AUTOHINT)
    return font


def _draw_text(canvas: np.ndarray, texts: Sequence[_Text]) -> np.ndarray:
    """The canvas with anti-aliased black text blended in; other pixels stay exactly as they were.

    Glyphs are rasterised with FreeType (matplotlib's ``FT2Font``, as its Agg backend does) and
    blended in numpy: a matplotlib figure round trip would resample the whole canvas, which
    takes seconds for a 1,000-tile grid.
    """
    page = canvas.astype(np.float32)
    h, w = page.shape[:2]
    for t in texts:
        font = _set_text(t.text, t.size, t.bold)
        font.draw_glyphs_to_bitmap(antialiased=True)
        alpha = np.asarray(font.get_image(), np.float32) / 255
        bh, bw = alpha.shape
        ascent = font.ascender / font.units_per_EM * t.size
        y0 = round(t.y + ascent - (bh - font.get_descent() / 64))
        x0 = round(t.x - {"left": 0, "center": bw / 2, "right": bw}[t.ha])
        ya, yb, xa, xb = max(y0, 0), min(y0 + bh, h), max(x0, 0), min(x0 + bw, w)
        if ya < yb and xa < xb:
            a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
            page[ya:yb, xa:xb] *= 1 - a
    return np.rint(page).astype(np.uint8)


def figure_pixels(fig: Figure) -> np.ndarray:
    """A drawn matplotlib figure as an RGB uint8 image."""
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba())[:, :, :3]


def _robust_ylim(ax, values: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Y range covering [0, 1] and the central 99 % of values, so a few extreme neurons (the colour
    index is unbounded below) do not flatten everyone else; how many are left out is written."""
    if values.size == 0:
        return
    lo, hi = min(0.0, float(np.percentile(values, 0.5))), max(1.0, float(np.percentile(values, 99.5)))
    pad = 0.04 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)
    outside = int(((values < lo - pad) | (values > hi + pad)).sum())
    if outside:
        ax.text(
            0.01,
            0.01,
            f"{outside} of {values.size} values outside the shown range",
            transform=ax.transAxes,
            fontsize=8,
            color="0.35",
            va="bottom",
        )


def _plot_series(ax, s: Series, colour, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    """One model on one panel: dots, 25-75 % band and median line over its layers."""
    keep = [k for k, v in enumerate(s.values) if v.size]
    if not keep:
        return
    depth = s.relative_depth[keep]
    for d, v in zip(depth, (s.values[k] for k in keep)):
        ax.scatter(d + rng.uniform(-0.006, 0.006, v.size), v, s=3, color=colour, alpha=0.12, linewidths=0)
    q25, q50, q75 = np.array([np.percentile(s.values[k], [25, 50, 75]) for k in keep]).T
    ax.fill_between(depth, q25, q75, color=colour, alpha=0.22, linewidth=0)
    ax.plot(depth, q50, color=colour, lw=1.8, marker="o", ms=3)
