"""Small edits of ONNX protos that several graph stages make: one form each.

Loading fixes the input size, the receptive-field walk and probe re-size the input, the scan and the
index passes expose inner tensors as outputs, layer discovery and the walk read shape tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

from onnx_nfi.errors import ModelError

#: Batch dimension name written into derived models.
BATCH_DIM = "batch"


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy to edit (protos are mutable and shared by every stage)."""
    return onnx.ModelProto.FromString(model.SerializeToString())


def with_input_size(
    model: onnx.ModelProto, input_name: str, layout: str, hw: tuple[int, int], batch: int | str = BATCH_DIM
) -> onnx.ModelProto:
    """A copy whose image input has ``batch`` (a size or a symbolic name) and the given H, W (a size
    of 0 stays as it is), without the shapes saved with the model: they hold the export's input
    size, not ours, and shape inference recomputes them."""
    model = copy_model(model)
    value = next((v for v in model.graph.input if v.name == input_name), None)
    if value is None:
        names = ", ".join(v.name for v in model.graph.input)
        raise ModelError(f"the model has no input {input_name!r}; its inputs are: {names}")
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"input {input_name!r} has rank {len(dims)}; an image input of rank 4 ({layout}) is needed")
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    dims[0].Clear()
    if isinstance(batch, str):
        dims[0].dim_param = batch
    else:
        dims[0].dim_value = batch
    for axis, size in ((h_axis, hw[0]), (w_axis, hw[1])):
        if size > 0:
            dims[axis].Clear()
            dims[axis].dim_value = size
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    return model


def exposing(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """The model (edited in place) with ``tensors``, and only them, as outputs, typed by shape
    inference; a graph input asked for is passed through an Identity (ONNX forbids an input that
    is also an output)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    graph_inputs = {v.name for v in model.graph.input}
    del model.graph.output[:]
    for name in tensors:
        out_name = name
        if name in graph_inputs:
            out_name = f"{name}__exposed"
            model.graph.node.append(helper.make_node("Identity", [name], [out_name]))
        model.graph.output.append(helper.make_tensor_value_info(out_name, types.get(name, onnx.TensorProto.FLOAT), None))
    return model


def shape_table(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    """Every tensor's shape known to the graph (inputs, inferred values, outputs, weights); None for
    an unknown or symbolic dimension."""
    shapes: dict[str, list[int | None]] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = value.type.tensor_type
        if t.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def prune_unused(graph: onnx.GraphProto) -> None:
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
