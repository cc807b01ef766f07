"""Append per-channel spatial reductions to a model, so only ``batch × channels`` leave the runtime.

For each selected layer tensor ``A`` of shape ``[N, C, H, W]`` the instrumented graph outputs
``max_{y,x} A`` and the first row-major ``argmax`` (docs/method.md §1) as two ``[N, C]`` tensors.
For a layer whose activation rises where positive (``Layer.pre_activation``, docs/method.md §2) the
argmax is taken on the activation's input ``P`` instead, and a third ``[N, C]`` output, ``max P``,
breaks ties between equal scores. Its score is then ``f(max P)`` for a piecewise-linear ``f``
(the activation node applied to the reduced maximum: equal to ``max f(P)`` bit for bit, and the
layer's own map is never read again), else ``GlobalMaxPool(A)``.
Full maps never cross into Python during the scan, which is what keeps it near inference speed.
Nodes that no requested output needs (the classifier head, usually) are pruned, unless the model's
own outputs are kept (``--labels predicted``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.proto import BATCH_DIM, copy_model, exposing, prune_unused
from onnx_nfi.graph.node_values import constants

_PREFIX = "nfi__"


@dataclass(frozen=True)
class Outputs:
    """Names of the instrumented outputs: per layer tensor, its max (score) and argmax outputs."""

    max: dict[str, str]
    argmax: dict[str, str]
    model_outputs: tuple[str, ...]
    #: per layer tensor with a pre-activation rule: its ``max P`` output (the tie-break key)
    key: dict[str, str]


def instrument(
    model: LoadedModel, layers: list[Layer], *, keep_model_outputs: bool = False
) -> tuple[onnx.ModelProto, Outputs]:
    """A copy of the model whose outputs are the layers' per-channel max and argmax (and optionally its own)."""
    proto = copy_model(model.proto)
    graph = proto.graph
    opset = model.opset
    model_outputs = tuple(o.name for o in graph.output) if keep_model_outputs else ()
    kept_outputs = [o for o in graph.output if o.name in model_outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    maxes: dict[str, str] = {}
    argmaxes: dict[str, str] = {}
    keys: dict[str, str] = {}
    reduce = _row_first_reduction if opset >= 11 else _flat_reduction
    producers = {o: n for n in graph.node for o in n.output}

    def output(name: str, dtype: int, channels: int) -> None:
        graph.output.append(helper.make_tensor_value_info(name, dtype, [BATCH_DIM, channels]))

    for i, layer in enumerate(layers):
        base = f"{_PREFIX}{i}"
        located = layer.pre_activation or layer.tensor
        nodes, inits, max_raw, arg_out = reduce(located, layer, base, opset)
        max_out = f"{base}_max"
        if layer.pre_activation is None:
            nodes.append(_cast(max_raw, max_out, base))
        else:
            keys[layer.tensor] = f"{base}_key"
            nodes.append(_cast(max_raw, keys[layer.tensor], f"{base}_key"))
            score_nodes, score_inits = (
                _activation_of_max(producers[layer.tensor], max_raw, max_out, layer, base)
                if layer.score_from_pre
                else _global_max(layer, max_out, base)
            )
            nodes += score_nodes
            inits += score_inits
            output(keys[layer.tensor], TensorProto.FLOAT, layer.channels)
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        output(max_out, TensorProto.FLOAT, layer.channels)
        output(arg_out, TensorProto.INT64, layer.channels)
        maxes[layer.tensor], argmaxes[layer.tensor] = max_out, arg_out
    _fuse_activations_again(graph, [layer for layer in layers if layer.pre_activation is not None])
    prune_unused(graph)
    return proto, Outputs(maxes, argmaxes, model_outputs, keys)


Reduction = tuple[list[onnx.NodeProto], list[onnx.TensorProto], str, str]


def _const(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _reduce_max(data: str, out: str, axes: list[int], base: str, opset: int) -> Reduction:
    """``ReduceMax`` without keepdims, in the form of the model's opset (axes an input from 18)."""
    if opset >= 18:
        return [helper.make_node("ReduceMax", [data, f"{base}_axes"], [out], keepdims=0, name=f"{base}_rmax")], [
            _const(f"{base}_axes", axes)
        ], out, ""
    return [helper.make_node("ReduceMax", [data], [out], axes=axes, keepdims=0, name=f"{base}_rmax")], [], out, ""


#: Activations onnxruntime fuses into a convolution but cannot run alone on its blocked (NCHWc) layout.
_FUSED_ONLY = {"Clip", "LeakyRelu"}


def _fuse_activations_again(graph: onnx.GraphProto, layers: list[Layer]) -> None:
    """Put an identity depthwise 1×1 convolution in front of each layer's Clip/LeakyRelu.

    Reading the pre-activation map stops onnxruntime from fusing the activation into its conv;
    alone, a Clip runs on the plain layout, so the map is converted out of the blocked layout and
    back for the next conv (a fifth slower scan of Lite0). A conv with weights 1.0 and no bias
    returns its input bit for bit (``x·1 + 0``) and takes the activation fused again, in the
    blocked layout, at the cost of one pass over the map. Only float32 maps, the type of the
    weights it adds.
    """
    float_maps = {vi.name for vi in graph.value_info if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    chosen = {
        layer.tensor: layer for layer in layers if layer.op_chain[-1] in _FUSED_ONLY and layer.pre_activation in float_maps
    }
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        layer = chosen.get(node.output[0]) if node.output else None
        if layer is not None and node.op_type == layer.op_chain[-1] and node.input[0] == layer.pre_activation:
            identity = f"{_PREFIX}identity_{len(nodes)}"
            graph.initializer.append(
                numpy_helper.from_array(np.ones((layer.channels, 1, 1, 1), np.float32), f"{identity}_w")
            )
            nodes.append(helper.make_node(
                "Conv", [node.input[0], f"{identity}_w"], [identity], group=layer.channels, kernel_shape=[1, 1], name=identity
            ))
            node.input[0] = identity
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _cast(data: str, out: str, base: str) -> onnx.NodeProto:
    """float32, whatever the model computes in (the scan's arrays are float32)."""
    return helper.make_node("Cast", [data], [out], to=TensorProto.FLOAT, name=f"{base}_cast")


def _activation_of_max(
    activation: onnx.NodeProto, max_raw: str, out: str, layer: Layer, base: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The score ``f(max P)``: a copy of the layer's activation node applied to the ``[N, C]`` maximum.

    The maximum is shaped ``[N, C, 1, 1]`` first, so per-channel parameters (a PRelu slope of
    shape ``[C, 1, 1]``) broadcast as they do on the map.
    """
    node = onnx.NodeProto()
    node.CopyFrom(activation)
    node.input[0], node.output[0], node.name = f"{base}_max4", f"{base}_fmax4", f"{base}_activation"
    nodes = [
        helper.make_node("Reshape", [max_raw, f"{base}_shape4"], [f"{base}_max4"], name=f"{base}_max4"),
        node,
        helper.make_node("Reshape", [f"{base}_fmax4", f"{base}_cshape"], [f"{base}_fmax"], name=f"{base}_fmax"),
        _cast(f"{base}_fmax", out, base),
    ]
    return nodes, [_const(f"{base}_shape4", [-1, layer.channels, 1, 1]), _const(f"{base}_cshape", [-1, layer.channels])]


def _global_max(layer: Layer, out: str, base: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The score ``max A`` of the layer's own map, where ``f(max P)`` could differ from it by rounding."""
    nodes = [
        helper.make_node("GlobalMaxPool", [layer.tensor], [f"{base}_gmax"], name=f"{base}_gmax"),
        helper.make_node("Reshape", [f"{base}_gmax", f"{base}_gshape"], [f"{base}_gmax2"], name=f"{base}_gmax2"),
        _cast(f"{base}_gmax2", out, base),
    ]
    return nodes, [_const(f"{base}_gshape", [-1, layer.channels])]


def _row_first_reduction(tensor: str, layer: Layer, base: str, opset: int) -> Reduction:
    """Max and first row-major argmax through the per-row maxima.

    ``rows = ReduceMax(A, last axis)``; the max is the max of the rows, the first row holding it
    is ``ArgMax(rows)``, and only that row (W values per channel, one ``Gather`` of contiguous
    rows) is searched for the column. The first maximum of the first row that has one is the first
    maximum in row-major order. ``tensor`` is the layer's map or its pre-activation (same shape);
    the maximum is returned in the model's own type. An ``ArgMax`` over each flattened map cost
    more than the whole convolution stack of a depthwise-separable net. The gather needs the map
    out of onnxruntime's blocked (NCHWc) layout, so the runtime converts it once; the row maxima
    read that converted map along its contiguous last axis (a ``MaxPool`` of kernel 1×W on the
    blocked layout, used before, cost 1.6× as much: benchmarks/README.md, scan_ops.py).
    """
    h, w, c = layer.height, layer.width, layer.channels

    def name(part: str) -> str:
        return f"{base}_{part}"

    row_nodes, inits, _, _ = _reduce_max(tensor, name("rows"), [3], name("row"), opset)
    nodes, max_inits, max_raw, _ = _reduce_max(name("rows"), name("max_raw"), [2], base, opset)
    inits += max_inits
    nodes = [
        *row_nodes,
        *nodes,
        # y: first row holding the max, one per (image, channel), flattened to N*C
        helper.make_node("ArgMax", [name("rows")], [name("y_nc")], axis=2, keepdims=0, name=name("argmax_y")),
        helper.make_node("Reshape", [name("y_nc"), name("minus1")], [name("y")], name=name("y_flat")),
        # that row's index among the N*C*H rows of the map: (n*C + c)*H + y
        helper.make_node("Size", [name("y")], [name("nc")], name=name("size")),
        helper.make_node("Range", [name("zero"), name("nc"), name("one")], [name("channel")], name=name("range")),
        helper.make_node("Mul", [name("channel"), name("height")], [name("row0")], name=name("row0")),
        helper.make_node("Add", [name("row0"), name("y")], [name("row_index")], name=name("row_index")),
        helper.make_node("Reshape", [tensor, name("row_shape")], [name("map_rows")], name=name("map_rows")),
        helper.make_node("Gather", [name("map_rows"), name("row_index")], [name("row")], axis=0, name=name("gather")),
        helper.make_node("ArgMax", [name("row")], [name("x")], axis=1, keepdims=0, name=name("argmax_x")),
        helper.make_node("Mul", [name("y"), name("width")], [name("yw")], name=name("yw")),
        helper.make_node("Add", [name("yw"), name("x")], [name("flat")], name=name("flat")),
        helper.make_node("Reshape", [name("flat"), name("shape")], [name("argmax")], name=name("reshape")),
    ]
    inits += [
        _const(name("minus1"), [-1]),
        numpy_helper.from_array(np.array(0, np.int64), name("zero")),
        numpy_helper.from_array(np.array(1, np.int64), name("one")),
        _const(name("height"), [h]),
        _const(name("width"), [w]),
        _const(name("row_shape"), [-1, w]),
        _const(name("shape"), [-1, c]),
    ]
    return nodes, inits, max_raw, name("argmax")


def _flat_reduction(tensor: str, layer: Layer, base: str, opset: int) -> Reduction:
    """Max and first argmax over the flattened map (opsets before 11 have no GatherElements)."""
    flat, out_arg = f"{base}_flat", f"{base}_argmax"
    nodes, inits, max_raw, _ = _reduce_max(flat, f"{base}_max_raw", [2], base, opset)
    nodes = [
        helper.make_node("Reshape", [tensor, f"{base}_flat_shape"], [flat], name=f"{base}_reshape"),
        *nodes,
        helper.make_node("ArgMax", [flat], [out_arg], axis=2, keepdims=0, name=f"{base}_argmax"),
    ]
    return nodes, [*inits, _const(f"{base}_flat_shape", [0, layer.channels, -1])], max_raw, out_arg


def flat_bounds(model: LoadedModel, layer: Layer) -> tuple[float, float] | None:
    """``(lo, hi)`` of a ReLU or Clip layer's activation, outside which it is flat (None for another
    activation, or bounds that are computed in the graph or stored outside it)."""
    node = next((n for n in model.proto.graph.node if layer.tensor in n.output), None)
    if node is None or node.op_type not in ("Relu", "Clip") or node.op_type != layer.op_chain[-1]:
        return None
    if node.op_type == "Relu":
        return 0.0, math.inf
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bounds = [attrs.get("min", -math.inf), attrs.get("max", math.inf)]  # opset < 11: attributes
    values = constants(model.proto.graph, set(node.input[1:3]))
    for k, name in enumerate(node.input[1:3]):
        if name:
            value = values.get(name)
            if value is None or value.size != 1:
                return None
            bounds[k] = float(value.reshape(()))
    return float(bounds[0]), float(bounds[1])


def with_outputs(model: LoadedModel, tensors: list[str]) -> onnx.ModelProto:
    """A pruned copy of the model whose outputs are exactly the named tensors (full maps)."""
    proto = exposing(copy_model(model.proto), tensors)
    prune_unused(proto.graph)
    return proto
