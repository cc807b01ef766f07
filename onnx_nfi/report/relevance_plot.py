"""Relevance against selectivity, layer by layer: do the neurons a layer's index calls selective matter?

One scatter panel per layer with stored relevance: a ``neurons`` column (class selectivity by
default) on x, ``prob_drop`` on y, and the Spearman rank correlation of the two in the panel's title
(ranks, because drops are heavy-tailed: most neurons change little, a few a lot).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from onnx_nfi.errors import NotFoundError
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.report import pictures
from onnx_nfi.report.queries import check_column
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.relevance import LayerPoints, relevance_points

#: Panels a row.
COLUMNS = 4


def relevance_png(
    model: str, output: str | Path, *, db: str | Path = DEFAULT_DB, against: str = "class_selectivity"
) -> Path:
    """``prob_drop`` against ``against`` for every layer of ``model`` with stored relevance."""
    pictures.check_png(output)
    with Store.open(db, read_only=True) as store:
        store.model_row(model)
        column = check_column(store, against, "--against", numeric=True)
        layers = relevance_points(store, model, column)
    if not layers:
        raise NotFoundError(f"no relevance stored for {model}; measure it with: onnx-nfi relevance {model}")
    rows = math.ceil(len(layers) / COLUMNS)
    cols = min(COLUMNS, len(layers))
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.5), dpi=pictures.DPI)
    FigureCanvasAgg(fig)
    for k, layer in enumerate(layers):
        _panel(fig.add_subplot(rows, cols, k + 1), layer, column)
    fig.suptitle(f"{model}: drop of the target probability when a neuron is ablated, against {column}", fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return pictures.write_png(output, image)


def _panel(ax, layer: LayerPoints, column: str) -> None:  # type: ignore[no-untyped-def]
    """One layer's scatter, titled with its Spearman correlation."""
    keep = np.isfinite(layer.other) & np.isfinite(layer.prob_drop)
    x, y = layer.other[keep], layer.prob_drop[keep]
    rho = spearmanr(x, y).statistic if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
    ax.scatter(x, y, s=6, alpha=0.5, linewidths=0)
    ax.set_title(f"{layer.alias} (depth {layer.relative_depth:.2f}): Spearman {rho:.2f}, n={x.size}", fontsize=8)
    ax.set_xlabel(column.replace("_", " "), fontsize=8)
    ax.set_ylabel("prob_drop", fontsize=8)
    ax.tick_params(labelsize=7)
