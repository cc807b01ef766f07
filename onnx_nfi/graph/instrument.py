"""Append per-channel spatial reductions to a model, so only ``batch × channels`` leave the runtime.

For each selected layer tensor ``A`` of shape ``[N, C, H, W]`` the instrumented graph outputs
``max_{y,x} A`` and the first row-major ``argmax`` (ALGORITHMS.md §1) as two ``[N, C]`` tensors.
Full maps never cross into Python during the scan, which is what keeps it near inference speed.
Nodes that no requested output needs (the classifier head, usually) are pruned, unless the model's
own outputs are kept (``--labels predicted``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import BATCH_DIM, LoadedModel

_PREFIX = "nfi__"


@dataclass(frozen=True)
class Outputs:
    """Names of the instrumented outputs: per layer tensor, its max and argmax outputs."""

    max: dict[str, str]
    argmax: dict[str, str]
    model_outputs: tuple[str, ...]


def instrument(
    model: LoadedModel, layers: list[Layer], *, keep_model_outputs: bool = False
) -> tuple[onnx.ModelProto, Outputs]:
    """A copy of the model whose outputs are the layers' per-channel max and argmax (and optionally its own)."""
    proto = onnx.ModelProto.FromString(model.proto.SerializeToString())
    graph = proto.graph
    opset = model.opset
    model_outputs = tuple(o.name for o in graph.output) if keep_model_outputs else ()
    kept_outputs = [o for o in graph.output if o.name in model_outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    maxes: dict[str, str] = {}
    argmaxes: dict[str, str] = {}
    for i, layer in enumerate(layers):
        base = f"{_PREFIX}{i}"
        flat, shape_name = f"{base}_flat", f"{base}_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, layer.channels, -1], dtype=np.int64), shape_name))
        graph.node.append(helper.make_node("Reshape", [layer.tensor, shape_name], [flat], name=f"{base}_reshape"))
        max_raw = f"{base}_max_raw"
        if opset >= 18:
            axes_name = f"{base}_axes"
            graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axes_name))
            graph.node.append(helper.make_node("ReduceMax", [flat, axes_name], [max_raw], keepdims=0, name=f"{base}_rmax"))
        else:
            graph.node.append(helper.make_node("ReduceMax", [flat], [max_raw], axes=[2], keepdims=0, name=f"{base}_rmax"))
        max_out, arg_out = f"{base}_max", f"{base}_argmax"
        graph.node.append(helper.make_node("Cast", [max_raw], [max_out], to=TensorProto.FLOAT, name=f"{base}_cast"))
        graph.node.append(helper.make_node("ArgMax", [flat], [arg_out], axis=2, keepdims=0, name=f"{base}_argmax"))
        graph.output.append(helper.make_tensor_value_info(max_out, TensorProto.FLOAT, [BATCH_DIM, layer.channels]))
        graph.output.append(helper.make_tensor_value_info(arg_out, TensorProto.INT64, [BATCH_DIM, layer.channels]))
        maxes[layer.tensor], argmaxes[layer.tensor] = max_out, arg_out
    _prune(graph)
    return proto, Outputs(maxes, argmaxes, model_outputs)


def with_outputs(model: LoadedModel, tensors: list[str]) -> onnx.ModelProto:
    """A pruned copy of the model whose outputs are exactly the named tensors (full maps)."""
    proto = onnx.ModelProto.FromString(model.proto.SerializeToString())
    graph = proto.graph
    infos = {vi.name: vi for vi in list(graph.value_info) + list(graph.output)}
    del graph.output[:]
    for name in tensors:
        info = infos.get(name)
        graph.output.append(info if info is not None else helper.make_empty_tensor_value_info(name))
    _prune(graph)
    return proto


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names implicitly
                for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
                    needed.update(i for i in sub.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [vi for vi in graph.value_info if vi.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    # exporters that list weights as graph inputs (torch's keep_initializers_as_inputs, opset <= 9)
    # would otherwise leave the pruned weights as inputs the runtime demands to be fed
    inputs = [i for i in graph.input if i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)
