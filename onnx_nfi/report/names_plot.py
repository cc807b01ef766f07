"""How colours and concepts are represented through the layers: one panel per model, per layer the
share of live neurons with each top colour (stacked bars, drawn in the colour they name) and the
share with a concept label (a line), against relative depth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from onnx_nfi.neurons.color_naming import COLOR_TERMS
from onnx_nfi.report.pictures import DPI, Picture, figure_pixels
from onnx_nfi.store.color_names import LayerNames

#: How each colour term is drawn.
TERM_RGB = {
    "red": (0.85, 0.1, 0.1), "orange": (1.0, 0.55, 0.0), "brown": (0.5, 0.3, 0.12), "yellow": (0.98, 0.88, 0.1),
    "green": (0.15, 0.6, 0.2), "blue": (0.15, 0.3, 0.85), "purple": (0.5, 0.15, 0.6), "pink": (0.98, 0.65, 0.78),
    "black": (0.08, 0.08, 0.08), "grey": (0.55, 0.55, 0.55), "white": (0.97, 0.97, 0.97),
}


def names_by_depth_plot(layers: Sequence[LayerNames], title: str = "") -> Picture:
    """One panel per model (in the order of ``layers``): stacked top-colour shares of each layer's
    live neurons and, as a line, the share with a concept label, against relative depth."""
    models = list(dict.fromkeys(x.model for x in layers))
    if not models:
        raise ValueError("names_by_depth_plot needs at least one layer")
    fig = Figure(figsize=(10, 2.6 * len(models) + 1.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        _panel(ax, [x for x in layers if x.model == model and x.live > 0], model)
    axes[-1].set_xlabel("relative depth (first conv layer = 0, last = 1)", fontsize=9)
    handles = [Patch(facecolor=TERM_RGB[t], edgecolor="0.4", lw=0.4, label=t) for t in COLOR_TERMS]
    handles.append(Line2D([], [], color="black", lw=1.6, marker="o", ms=3, label="with a concept label"))
    fig.legend(handles=handles, loc="outside lower center", ncol=12, fontsize=9, frameon=False,
               handlelength=1.2, columnspacing=1.0)
    fig.suptitle(title or "Top colour of each layer's live neurons (stacked shares) and share with a concept label",
                 x=0.01, ha="left", fontsize=12)
    return Picture(figure_pixels(fig))


def _panel(ax, layers: Sequence[LayerNames], model: str) -> None:  # type: ignore[no-untyped-def]
    """One model: a stacked bar per layer at its relative depth, the concept line over it."""
    ax.set_title(model, fontsize=11, loc="left")
    ax.set_xlim(-0.04, 1.04)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of live neurons", fontsize=9)
    ax.grid(axis="y", alpha=0.3, lw=0.5)
    ax.set_facecolor("#e8edf3")  # white bars stay visible
    named = [x for x in layers if x.top_colors]
    if not named:
        ax.text(0.5, 0.5, "no colour names computed (onnx-nfi index MODEL --indexes color_names)",
                transform=ax.transAxes, ha="center", fontsize=9, color="0.35")
    else:
        depth = np.array([x.relative_depth for x in named])
        gaps = np.diff(np.unique(depth))
        width = 0.8 * (gaps.min() if gaps.size else 0.05)
        bottom = np.zeros(depth.size)
        for term in COLOR_TERMS:
            share = np.array([x.top_colors.get(term, 0) / x.live for x in named])
            ax.bar(depth, share, width, bottom=bottom, color=TERM_RGB[term], edgecolor="0.4", linewidth=0.2)
            bottom += share
    if any(x.concepts for x in layers):
        ax.plot([x.relative_depth for x in layers], [x.concepts / x.live for x in layers], color="black", lw=1.6,
                marker="o", ms=3)
