"""Ask a stored model about a new image: which of its neurons fire on it (or on a box of it), and
how strongly compared with their top images (docs/method.md §12).

``QueryModel`` is made once per model: it reopens the analysed ONNX file (checked against the
stored hash), reads each layer's stored top-N scores, and keeps one inference session whose outputs
are the chosen layers' full maps; each question is then one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.errors import ConfigError, NotFoundError
from onnx_nfi.graph.instrument import with_outputs
from onnx_nfi.graph.layers import Layer, find_conv_layers, select_layers
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.graph.session import Runner
from onnx_nfi.neurons.region import Box, box_cells, region_max, standing
from onnx_nfi.refs import NeuronRef
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.model_file import reopen_model
from onnx_nfi.store.neuron_scores import StoredScores, stored_scores
from onnx_nfi.store.results import stored_rf


@dataclass(frozen=True)
class QueryLayer:
    """A stored layer as a query reads it: its conv layer, receptive field and stored scores."""

    layer: Layer
    rf: ReceptiveField
    scores: StoredScores


@dataclass(frozen=True)
class Hit:
    """One neuron's answer. ``cell``: the map cell of the response; ``window``: its receptive field
    in the original image's pixels, ``(x0, y0, x1, y1)``."""

    model: str
    alias: str
    layer: str
    unit: int
    response: float
    relative: float
    percentile: float
    rank: int
    cell: tuple[int, int]
    window: tuple[float, float, float, float]

    @property
    def neuron(self) -> str:
        """``MODEL:ALIAS:UNIT``, spelt as every message spells a neuron."""
        return str(NeuronRef(self.model, self.alias, self.unit))

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` object (and a row of the batch table)."""
        return {
            "neuron": self.neuron, "response": self.response, "relative": self.relative,
            "percentile": self.percentile, "rank": self.rank,
            "location": {"cell": list(self.cell), "window": [round(v, 1) for v in self.window]},
        }


@dataclass(frozen=True)
class Seen:
    """One forward pass: the image as the network saw it, its maps, and the original image's frame."""

    display: np.ndarray  # RGB uint8 at the input size
    maps: dict[str, np.ndarray]  # per layer tensor, float32 [C, H, W]
    original_hw: tuple[int, int]
    frame: tuple[float, float, float, float]  # Preprocessing.input_frame of the original

    def to_input(self, box: Box) -> Box:
        """A box of the original image in the network's input pixels."""
        sy, sx, oy, ox = self.frame
        return box[0] * sx - ox, box[1] * sy - oy, box[2] * sx - ox, box[3] * sy - oy

    def to_original(self, box: Box) -> Box:
        sy, sx, oy, ox = self.frame
        return (box[0] + ox) / sx, (box[1] + oy) / sy, (box[2] + ox) / sx, (box[3] + oy) / sy


def check_box(box: Box | None, hw: tuple[int, int]) -> None:
    """A box must have an inside, and some of it on the image."""
    if box is None:
        return
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(f"--box {x0:g},{y0:g},{x1:g},{y1:g} is empty; write X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1")
    if x1 <= 0 or y1 <= 0 or x0 >= hw[1] or y0 >= hw[0]:
        raise ConfigError(f"--box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {hw[1]}x{hw[0]} image; "
                          "give it in the image's pixels")


class QueryModel:
    """A stored model ready for questions; make one per model and keep it (its session is the cost)."""

    def __init__(
        self, store: Store, model: str, *, model_file: str | Path | None = None, layers: Sequence[str] = (),
        provider: str = "auto",
    ) -> None:
        row = store.model_row(model)
        rows = {r["layer"]: r for r in store.layer_rows(model)}
        self.model = model
        self.loaded, self.pre = reopen_model(model, row, model_file)
        chosen = select_layers([x for x in find_conv_layers(self.loaded) if x.tensor in rows], list(layers))
        self.layers = {
            x.tensor: QueryLayer(x, stored_rf(rows[x.tensor]), stored_scores(store, model, x.tensor, x.channels))
            for x in chosen
        }
        self.runner = Runner(with_outputs(self.loaded, list(self.layers)), provider)

    def layer(self, name: str) -> QueryLayer:
        """A chosen layer by alias or tensor name."""
        for item in self.layers.values():
            if name in (item.layer.alias, item.layer.tensor):
                return item
        raise NotFoundError(f"layer {name!r} is not among the layers of {self.model!r} asked about")

    def see(self, bgr: np.ndarray) -> Seen:
        """One forward pass over a decoded (BGR) image, preprocessed as in the analysis."""
        display = self.pre.to_display(bgr)
        outputs = self.runner.run(self.pre.to_tensor(display[None]))
        maps = {tensor: np.asarray(outputs[tensor][0], np.float32) for tensor in self.layers}
        hw = (int(bgr.shape[0]), int(bgr.shape[1]))
        return Seen(display, maps, hw, self.pre.input_frame(hw))

    def ask(self, seen: Seen, box: Box | None = None, k: int = 20, per_layer: bool = False) -> list[Hit]:
        """The neurons ranked by ``relative`` (response / stored top-1), best first: the first ``k``
        overall, or per layer. Dead neurons and those whose top-1 is not positive are left out."""
        inner = seen.to_input(box) if box is not None else None
        answers = [self._layer_answer(item, seen, inner) for item in self.layers.values()]
        if per_layer:
            return [hit for answer in answers for hit in answer.hits(_best(answer.relative, k), seen)]
        relative = np.concatenate([a.relative for a in answers])
        starts = np.cumsum([0] + [a.relative.size for a in answers])
        chosen = _best(relative, k)
        layer_of = np.searchsorted(starts, chosen, side="right") - 1
        return [answers[i].hits(np.array([c - starts[i]]), seen)[0] for c, i in zip(chosen, layer_of)]

    def _layer_answer(self, item: QueryLayer, seen: Seen, box: Box | None) -> _LayerAnswer:
        """Every neuron's response, relative value and standing in one layer (arrays: cheap for
        the 21,008 neurons of Lite0; records are made only for the neurons shown)."""
        maps = seen.maps[item.layer.tensor]
        values, ys, xs = region_max(maps, box_cells(item.rf, maps.shape[1:], box))
        top1 = item.scores.top1
        live = ~item.scores.dead & (np.nan_to_num(top1) > 0)
        relative = np.where(live, values / np.where(live, top1, 1.0), -np.inf)
        rank, percentile = standing(values, item.scores.top)
        return _LayerAnswer(self, item, values, relative, percentile, rank, ys, xs)


@dataclass(frozen=True)
class _LayerAnswer:
    """One layer's answer as arrays over its units (``relative`` −inf where a neuron is left out)."""

    engine: QueryModel
    item: QueryLayer
    values: np.ndarray
    relative: np.ndarray
    percentile: np.ndarray
    rank: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    def hits(self, units: np.ndarray, seen: Seen) -> list[Hit]:
        layer, hw = self.item.layer, self.engine.pre.input_size
        out = []
        for unit in units.tolist():
            y, x = int(self.ys[unit]), int(self.xs[unit])
            y0, x0, y1, x1 = field_window(self.item.rf, y, x, hw)
            out.append(Hit(
                self.engine.model, layer.alias, layer.tensor, unit, float(self.values[unit]), float(self.relative[unit]),
                float(self.percentile[unit]), int(self.rank[unit]), (y, x), seen.to_original((x0, y0, x1, y1)),
            ))
        return out


def _best(relative: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest finite ``relative``, best first; ties in index order (layer order,
    then unit)."""
    order = np.argsort(-relative, kind="stable")[:k]
    return order[np.isfinite(relative[order])]


def field_window(rf: ReceptiveField, y: int, x: int, input_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The receptive field of cell ``(y, x)`` inside the input image (the whole image for a global field)."""
    if rf.is_global:
        return 0, 0, input_hw[0], input_hw[1]
    y0, x0, y1, x1 = rf.window(y, x)
    return max(y0, 0), max(x0, 0), min(y1, input_hw[0]), min(x1, input_hw[1])
