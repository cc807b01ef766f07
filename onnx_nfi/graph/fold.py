"""Constant folding of computed shapes and pads, before shape inference (docs/method.md §1).

The classic PyTorch exporter (``torch.onnx.export(dynamo=False)``) writes the pads of an ``F.pad``
as a small program over constants (``ConstantOfShape → Concat → Reshape → Slice → Transpose →
Reshape → Cast``), and size arithmetic as ``Shape → Gather → …`` chains. ONNX shape inference does
not run those programs, so the ``Pad`` in front of each conv, and every conv after it, keep unknown
sizes and the model would list no layer. Here every integer (or boolean) tensor computed only
from constants, and from the static dimensions of ``Shape`` outputs, is evaluated once with the
ONNX reference evaluator and stored as an initializer. Float tensors of more than ``_SMALL`` values
are folded only when computed from sizes (timm's ``Conv2dSame`` pads use ``ceil(H / s)``): weights
arithmetic is the runtime's to round. The batch dimension is never folded (it stays dynamic); a ``Gather``/``Slice`` that keeps
only the static dimensions of a ``Shape`` is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_nfi.graph.node_values import attr, constants
from onnx_nfi.graph.proto import shape_table
from onnx_nfi.graph.rf_nodes import inferred

#: Ops a fold may run: pure functions of their inputs (no randomness, no subgraphs).
_FOLDABLE = {
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Floor", "Ceil", "Max", "Min", "Mod", "Cast", "Concat", "Reshape",
    "Slice", "Gather", "Transpose", "Squeeze", "Unsqueeze", "ConstantOfShape", "Range", "Equal", "Where",
    "Less", "Greater", "Not", "And", "Or", "Identity", "Expand", "Tile", "Shape", "Size", "ReduceProd",
    "ReduceSum", "Sqrt", "Pow", "Flatten", "Clip", "Round", "Sign",
}
#: Most rounds of folding and shape inference: each round's sizes let the next fold the pads of the
#: convs after them (a TF-"same" port computes every pad from the size of the tensor before it).
_MAX_ROUNDS = 500
#: Float tensors up to this many values are folded whatever they come from (pad values, scalars).
_SMALL = 8


#: Stands for an unknown dimension (the batch) inside a ``Shape`` output that ``Gather``/``Slice`` may drop.
_UNKNOWN = -(2**62)


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` (edited in place) with its computed integer tensors, and float tensors computed from
    static sizes (``ceil(H / s)`` of TF-"same" padding), replaced by initializers."""
    for _ in range(_MAX_ROUNDS):
        if not _fold_once(proto):
            break
    return proto


def _fold_once(proto: onnx.ModelProto) -> bool:
    """One round: fold what the sizes known now allow; whether anything was folded."""
    graph = proto.graph
    shapes = shape_table(inferred(proto).graph)
    values = constants(graph)
    partial: dict[str, np.ndarray] = {}  # Shape outputs (and parts of them) holding an unknown dimension
    from_shape: set[str] = set()  # tensors computed from sizes, where float arithmetic is size arithmetic
    opsets = list(proto.opset_import)
    folded: set[str] = set()
    for node in graph.node:
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE:
            continue
        if node.op_type in ("Shape", "Size"):
            outs = _shape_value(node, shapes)
        elif node.input and node.input[0] in partial and node.op_type in ("Gather", "Slice"):
            outs = _run(node, {**values, node.input[0]: partial[node.input[0]]}, opsets)
        else:
            outs = _run(node, values, opsets)
        sized = node.op_type in ("Shape", "Size") or any(i in from_shape for i in node.input)
        if outs is None or (not sized and any(np.issubdtype(o.dtype, np.floating) and o.size > _SMALL for o in outs)):
            continue
        for name, out in zip(node.output, outs):
            from_shape.update([name] if sized else [])
            if out.dtype == np.int64 and (out == _UNKNOWN).any():
                partial[name] = out
            else:
                values[name] = out
                folded.add(name)
    if folded:
        _replace(graph, folded, values)
    return bool(folded)


def _shape_value(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> list[np.ndarray] | None:
    """``Shape``/``Size`` of a tensor of known rank; an unknown dimension is ``_UNKNOWN``."""
    dims = shapes.get(node.input[0])
    if dims is None:
        return None
    if node.op_type == "Size":
        return None if None in dims else [np.array(int(np.prod(dims)), np.int64)]
    start, end = attr(node, "start") or 0, attr(node, "end")
    part = dims[start:end] if end is not None else dims[start:]
    return [np.array([_UNKNOWN if d is None else d for d in part], np.int64)]


def _run(node: onnx.NodeProto, values: dict[str, np.ndarray], opsets: list) -> list[np.ndarray] | None:  # noqa: ANN001
    """The node's outputs when every input is known, by the ONNX reference evaluator; None otherwise."""
    if not node.input or any(i and i not in values for i in node.input):
        return None
    inputs = [i for i in node.input if i]
    model = helper.make_model(
        helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(values[i].dtype), None) for i in inputs],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
        ),
        opset_imports=opsets,
    )
    try:
        outs = ReferenceEvaluator(model).run(None, {i: values[i] for i in inputs})
    except Exception:  # an op the evaluator does not know, or inputs it refuses: leave the node to the runtime
        return None
    return [np.asarray(o) for o in outs]


def _replace(graph: onnx.GraphProto, folded: set[str], values: dict[str, np.ndarray]) -> None:
    """Drop the folded nodes and give the tensors still read (by a node or as an output) as initializers."""
    kept = [n for n in graph.node if not (n.output and all(o in folded or not o for o in n.output))]
    read = {i for n in kept for i in _reads(n)} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Shape" or n.output[0] in read]  # all its readers folded
    present = {t.name for t in graph.initializer}
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in sorted(folded & read - present))
    del graph.node[:]
    graph.node.extend(kept)


def _reads(node: onnx.NodeProto) -> list[str]:
    """The names a node reads, with those its subgraphs (If/Loop bodies) read from the outer graph."""
    names = list(node.input)
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            names += [i for n in sub.node for i in _reads(n)]
    return names
