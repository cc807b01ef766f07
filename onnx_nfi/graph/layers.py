"""Find the conv layers of an ONNX graph (docs/method.md §1).

A conv layer is a ``Conv`` node plus the chain that directly follows it (chains.py):
BatchNormalization, constant bias/scale arithmetic, and one activation in any form an exporter
writes it (activations.py). The layer's tensor is the end of that chain, which is what exporters
from PyTorch, Keras (tf2onnx) and Paddle produce for "conv + bn + act". A conv whose activation
comes after a channel ``Concat`` is read on its channels of that activation (channel_slices.py).

A layer also records the tensor that enters its activation when the activation rises where its
input is positive (docs/method.md §2): saturating units (ReLU6 at 6) are then ranked and located
by how strongly the pre-activation drives them instead of by file order.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from dataclasses import dataclass

import onnx

from onnx_nfi.errors import LayerError, ModelError
from onnx_nfi.graph.activations import FUSED, GATES, Activation, find_activation
from onnx_nfi.graph.chains import follow_chain
from onnx_nfi.graph.channel_slices import branch_read
from onnx_nfi.graph.graph_view import GraphView
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.node_values import attributes
from onnx_nfi.graph.proto import shape_table

#: Activations whose largest output sits where their largest input does whenever that input is
#: positive: non-decreasing everywhere, or negative below 0 and rising above it (SiLU, GELU,
#: HardSwish, Mish). Parameters that could break it (a negative slope) are checked per node.
_RISING = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "HardSwish", "Gelu", "Softplus", "Tanh",
    "Mish", "ThresholdedRelu", "Softsign", "Sigmoid", "HardSigmoid", "Silu",
}
#: Of those, the piecewise-linear ones: float rounding is monotone too, so ``f(max pre)`` equals
#: ``max f(pre)`` bit for bit and the layer's own map need not be read to score it.
_PIECEWISE_LINEAR = {"Relu", "Clip", "LeakyRelu", "PRelu", "ThresholdedRelu"}


@dataclass(frozen=True)
class Layer:
    """One conv layer: its stable name (tensor), readable alias, op chain and output shape."""

    tensor: str
    alias: str
    op_chain: tuple[str, ...]
    depth: int  # 1-based position among the model's conv layers, in graph order
    channels: int
    height: int
    width: int
    conv_node: str
    #: The tensor entering the activation (conv/BN output) when the activation rises where positive:
    #: the scan locates each image's maximum and breaks score ties on this map. None: no such activation.
    pre_activation: str | None = None
    #: ``activation(max of pre_activation)`` is exactly the layer's per-image score (piecewise-linear
    #: activations), so the scan applies the activation to the reduced maximum instead of reading the map.
    score_from_pre: bool = False

    @property
    def op_type(self) -> str:
        """The chain as one string, e.g. ``Conv>BatchNormalization>Relu``."""
        return ">".join(self.op_chain)


def find_conv_layers(model: LoadedModel) -> list[Layer]:
    """All conv layers of the model in graph order, with aliases ``conv1``, ``conv2``, …"""
    graph = model.proto.graph
    view = GraphView(graph)
    shapes = _shapes(model.proto)
    table = shape_table(graph)
    layers: list[Layer] = []
    unknown: list[onnx.NodeProto] = []
    for node in view.nodes:
        if node.op_type != "Conv":
            continue
        chain = follow_chain(node.output[0], ("Conv",), view)
        tensor, ops, act, entering = chain.tensor, chain.ops, chain.activation, chain.entering
        branch = branch_read(chain, view, table)
        if branch is not None and branch.tensor in view.producers:  # read on its channels after the activation
            tensor, act, entering = branch.tensor, branch.after.activation, branch.entering
            ops = (*ops, "Concat", *branch.after.ops, "Slice")
        shape = shapes.get(tensor)
        if shape is None or len(shape) != 4:
            if len(table.get(node.input[0]) or ()) == 4:
                unknown.append(node)
            continue  # not a 2-D conv (1-D/3-D convs are not image layers), or sizes unknown
        _, c, h, w = shape
        rises = act is not None and _rises(act, view)
        layers.append(
            Layer(
                tensor=tensor,
                alias=f"conv{len(layers) + 1}",
                op_chain=ops,
                depth=len(layers) + 1,
                channels=int(c),
                height=int(h),
                width=int(w),
                conv_node=node.name,
                pre_activation=entering if rises else None,
                score_from_pre=rises and act.node is not None and branch is None and ops[-1] in _PIECEWISE_LINEAR,
            )
        )
    if not layers:
        raise ModelError(_no_layer_reason(model, unknown))
    return layers


def _no_layer_reason(model: LoadedModel, unknown: list[onnx.NodeProto]) -> str:
    """Why no layer was found: no 2-D conv at all, or convs whose sizes shape inference could not know."""
    if not unknown:
        return f"{model.path} has no 2-D conv layer; onnx-nfi analyses convolutional networks"
    first = unknown[0].name or unknown[0].output[0]
    return (
        f"{model.path}: the output sizes of its {len(unknown)} 2-D conv nodes cannot be inferred (first: {first}; "
        "a size or padding computed at run time from the input's shape); if the input size is dynamic pass "
        "--input-size H,W, else export the model again with torch.onnx.export(..., dynamo=True) or "
        "with constant shapes"
    )


def unread_activations(model: LoadedModel, layers: list[Layer]) -> str | None:
    """A warning when layers end at a tensor that feeds an activation they did not take in (read
    before it): which activations and how many layers; None when every layer takes its own."""
    view = GraphView(model.proto.graph)
    missed: dict[str, int] = defaultdict(int)
    for layer in layers:
        for user in view.consumers.get(layer.tensor, []):
            joined = user.op_type in ("Concat", "Split")  # the activation comes after a join or a split of channels
            acts = [find_activation(out, view) for out in user.output] if joined else []
            act = next((a for a in acts if a is not None), None)
            if user.op_type in FUSED | GATES or user.op_type == "Erf":
                missed[user.op_type] += 1
            elif act is not None:
                missed[f"{user.op_type}>{'>'.join(act.chain)}"] += 1
    if not missed:
        return None
    what = ", ".join(f"{op} ({n})" for op, n in sorted(missed.items()))
    return (
        f"{sum(missed.values())} layer(s) end at a tensor that also feeds an activation they do not include, and are "
        f"read before it: {what} (docs/method.md §1)"
    )


def _rises(act: Activation, view: GraphView) -> bool:
    """The activation's largest output is where its largest positive input is (see ``_RISING``).

    A spelled-out activation is the fused op it equals (``acts_as``; its constants were matched
    exactly). For a gate the activation is ``x·g(x)``: Sigmoid always qualifies, HardSigmoid when
    its slope and offset are non-negative. Slopes below zero (LeakyRelu, PRelu, Elu, Selu's scale, a
    negative ThresholdedRelu threshold) make a function that falls somewhere, which keeps today's rule.
    """
    node = act.node
    if node is None or node.op_type not in _RISING:
        return node is None and act.acts_as in _RISING
    attrs = attributes(node)
    if node.op_type == "PRelu":
        slope = view.value(node.input[1])  # None when stored as external data: the rule is not applied
        return slope is not None and bool((slope >= 0).all())
    defaults = {"LeakyRelu": ("alpha", 0.01), "Elu": ("alpha", 1.0), "Selu": ("gamma", 1.0507),
                "ThresholdedRelu": ("alpha", 1.0), "HardSigmoid": ("alpha", 0.2)}
    if node.op_type in defaults:
        key, default = defaults[node.op_type]
        if attrs.get(key, default) < 0 or (node.op_type == "Selu" and attrs.get("alpha", 1.67) < 0):
            return False
    return not (node.op_type == "HardSigmoid" and attrs.get("beta", 0.5) < 0)


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes from shape inference; a dynamic batch counts as 0, other unknowns drop the tensor."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in shape_table(proto.graph).items():
        values = [0 if d is None and i == 0 else d for i, d in enumerate(dims)]
        if dims and all(v is not None for v in values):
            shapes[name] = tuple(values)  # type: ignore[arg-type]
    return shapes


def select_layers(layers: list[Layer], patterns: list[str] | None) -> list[Layer]:
    """Layers matching any alias/tensor name or glob in ``patterns`` (all when empty), in graph order."""
    if not patterns:
        return list(layers)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [
            layer.tensor
            for layer in layers
            if fnmatch.fnmatchcase(layer.alias, pattern) or fnmatch.fnmatchcase(layer.tensor, pattern)
        ]
        if not hits:
            raise LayerError(
                f"no layer matches {pattern!r}; list the layers with 'onnx-nfi layers MODEL.onnx'"
            )
        chosen.update(hits)
    return [layer for layer in layers if layer.tensor in chosen]
