"""What a graph's nodes hold as plain values: constants (initializers and ``Constant`` node
outputs) and node attributes. Every graph stage reads them here, in one way, so an exporter's
``value_float`` Constant or an attribute form is understood everywhere or nowhere."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


def constants(graph: onnx.GraphProto, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs by name (only those in ``names`` when given: converting every
    weight of a large model to NumPy to read two scalars is wasted work)."""
    # weights kept as external data are never needed here (pads, scales and shapes are small, inline)
    consts = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.data_location != onnx.TensorProto.EXTERNAL and (names is None or init.name in names)
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and (names is None or node.output[0] in names):
            attr = node.attribute[0]
            value = onnx.helper.get_attribute_value(attr)
            consts[node.output[0]] = numpy_helper.to_array(value) if attr.name == "value" else np.asarray(value)
    return consts


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Every attribute of ``node`` by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def attr(node: onnx.NodeProto, name: str) -> Any:
    """A node attribute's value, or None."""
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def str_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    """A string attribute, decoded, or ``default``."""
    value = attr(node, name)
    return default if value is None else value.decode()
