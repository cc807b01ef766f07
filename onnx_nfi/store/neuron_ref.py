"""A neuron reference resolved to its stored layer, with the one error text for a neuron that is not there."""

from __future__ import annotations

from typing import Any

from onnx_nfi.errors import NotFoundError
from onnx_nfi.refs import NeuronRef
from onnx_nfi.store.duckdb_store import Store


def check_unit(ref: NeuronRef, layer_row: dict[str, Any]) -> None:
    """Refuse a unit outside the layer ``layer_row`` (a ``layers`` row): the error every command prints."""
    if not 0 <= ref.unit < int(layer_row["channels"]):
        raise missing_neuron(ref, layer_row)


def missing_neuron(ref: NeuronRef, layer_row: dict[str, Any]) -> NotFoundError:
    """The error of a neuron that is not stored: it names the neuron and the layer's units."""
    named = NeuronRef(ref.model, layer_row["alias"], ref.unit)
    return NotFoundError(
        f"neuron {named} does not exist; layer {layer_row['alias']} of {ref.model!r} has units 0-{int(layer_row['channels']) - 1}"
    )


def resolve_neuron(store: Store, ref: NeuronRef) -> dict[str, Any]:
    """The ``layers`` row of ``ref``'s layer (alias or tensor name) once the model, the layer and the
    unit are known to exist; NotFoundError names what is missing."""
    row = store.resolve_layer(ref.model, ref.layer)
    check_unit(ref, row)
    return row
