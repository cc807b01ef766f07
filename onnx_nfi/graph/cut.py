"""Cut a classifier in two at a layer tensor, so the part below the cut runs once per image.

Ablating one channel of a layer changes only what the layer feeds: the graph above the layer (the
upstream part) gives the same values whatever is ablated. ``cut_at`` splits the model into an
upstream graph, whose outputs are every tensor that crosses the cut, and a downstream graph, whose
inputs are those tensors and whose output is the model's class scores. A tensor crosses the cut when
a node downstream of the layer reads it and it depends on the image: the layer tensor itself, and
the tensors that skip connections carry past it (a residual ``Add`` of MobileNetV2 or Lite0 reads
the block's input). Values that do not depend on the image (``Constant`` nodes, shapes of weights)
are recomputed downstream, so every downstream input has the image batch as its first axis and may
be tiled along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnx_nfi.errors import LayerError, ModelError
from onnx_nfi.graph.instrument import with_outputs
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.proto import copy_model, prune_unused, shape_table

#: Ops that pass class scores through unchanged in value: a Softmax behind them still gives probabilities.
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Identity"})


@dataclass(frozen=True)
class Cut:
    """A model cut at ``layer``: ``upstream`` maps the image to the ``crossing`` tensors (the layer
    first), ``downstream`` maps them to the class scores ``output``."""

    layer: str
    crossing: tuple[str, ...]
    upstream: onnx.ModelProto
    downstream: onnx.ModelProto
    output: str


def class_output(model: LoadedModel) -> str:
    """The model's class-score output (its first, ``[N, K]``), or a one-line refusal."""
    if not model.has_class_head:
        out = model.proto.graph.output[0].name
        raise ModelError(
            f"{model.path.name} has no class-score output (its output {out!r} is not [N, classes]); relevance "
            "measures class probabilities, so it needs a classifier"
        )
    return model.proto.graph.output[0].name


def outputs_probabilities(model: LoadedModel) -> bool:
    """Whether the class scores come out of a ``Softmax`` (through reshapes only); other scores
    (logits, log-probabilities) are turned into probabilities by a softmax over the classes."""
    producers = {o: n for n in model.proto.graph.node for o in n.output}
    node = producers.get(class_output(model))
    while node is not None and node.op_type in _RESHAPES:
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "Softmax"


def cut_at(model: LoadedModel, layer: str) -> Cut:
    """The upstream and downstream graphs of ``model`` at tensor ``layer`` (see the module doc)."""
    graph, output = model.proto.graph, class_output(model)
    below = _descendants(graph, layer)
    if output not in below:
        raise LayerError(f"layer {layer!r} does not reach the class output {output!r}; its channels cannot change it")
    image_dependent = _descendants(graph, model.input.name)
    crossing = [layer]
    for node in graph.node:
        if _is_below(node, below, layer):
            crossing += [i for i in node.input if i and i in image_dependent and i not in below and i not in crossing]
    _check_batch_axis(graph, crossing, layer)
    return Cut(layer, tuple(crossing), with_outputs(model, crossing), _downstream(model, crossing, below, output), output)


def _descendants(graph: onnx.GraphProto, source: str) -> set[str]:
    """``source`` and every tensor computed from it (nodes are in topological order)."""
    found = {source}
    for node in graph.node:
        if any(i in found for i in node.input):
            found.update(o for o in node.output if o)
    return found


def _check_batch_axis(graph: onnx.GraphProto, crossing: list[str], layer: str) -> None:
    """Refuse a cut crossed by a tensor without the image batch as first axis (a shape computed from
    an upstream tensor): the downstream graph could not be fed many ablations at once."""
    shapes = shape_table(graph)
    for name in crossing:
        shape = shapes.get(name)
        if not shape or shape[0] is not None:
            raise LayerError(
                f"cannot cut the model at {layer!r}: tensor {name!r} crosses the cut without a batch axis "
                f"(shape {shape}); choose another layer with --layers"
            )


def _is_below(node: onnx.NodeProto, below: set[str], layer: str) -> bool:
    """Whether ``node`` runs below the cut: it computes from the layer tensor (not the layer tensor itself)."""
    return layer not in node.output and any(o in below for o in node.output)


def _downstream(model: LoadedModel, crossing: list[str], below: set[str], output: str) -> onnx.ModelProto:
    """The model from the crossing tensors (inputs) to ``output``: nodes below the cut, plus the
    image-independent nodes they read."""
    proto, layer = copy_model(model.proto), crossing[0]
    graph = proto.graph
    types = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    image_dependent = _descendants(graph, model.input.name)
    kept = [n for n in graph.node if _is_below(n, below, layer) or not any(o in image_dependent for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name == output]
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.input[:]
    graph.input.extend(types[name] for name in crossing)
    prune_unused(graph)
    del graph.input[:]  # pruning keeps the inputs read; the layer must stay the first even when unread
    graph.input.extend(types[name] for name in crossing)
    return proto
