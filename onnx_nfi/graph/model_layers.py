"""A model's conv layers with their analytic receptive fields: what ``onnx-nfi layers`` lists and
every later stage (scan, NFs, indexes, the stored ``layers`` table) reads."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from onnx_nfi.graph.layers import Layer, find_conv_layers, select_layers, unread_activations
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.graph.rf_walk import receptive_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerInfo:
    """A conv layer with its receptive field."""

    layer: Layer
    rf: ReceptiveField


def model_layers(lm: LoadedModel, patterns: Iterable[str] = ()) -> list[LayerInfo]:
    """The model's conv layers (optionally selected by alias, tensor name or glob) with their receptive fields."""
    found = find_conv_layers(lm)
    warning = unread_activations(lm, found)
    if warning:
        log.warning(warning)
    layers = select_layers(found, list(patterns))
    rfs = receptive_fields(
        lm.proto, lm.input.name, (lm.input.height, lm.input.width), lm.input.layout, [layer.tensor for layer in layers]
    )
    return [LayerInfo(layer, rfs[layer.tensor]) for layer in layers]
