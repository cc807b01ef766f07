"""Find the conv layers of an ONNX graph (ALGORITHMS.md §1).

A conv layer is a ``Conv`` node plus the chain that directly follows it: BatchNormalization,
constant bias/scale arithmetic, and one activation (including the two-node forms ``x·Sigmoid(x)``
(SiLU/Swish) and ``x·HardSigmoid(x)``). The layer's tensor is the last node of that chain, which
is what exporters from PyTorch, Keras (tf2onnx) and Paddle produce for "conv + bn + act".
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from dataclasses import dataclass

import onnx

from onnx_nfi.errors import LayerError, ModelError
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.proto import shape_table

_NORM_OPS = {"BatchNormalization", "InstanceNormalization"}
_AFFINE_OPS = {"Add", "Sub", "Mul", "Div"}
_ACTIVATIONS = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "HardSwish", "Gelu", "Softplus",
    "Tanh", "Mish", "ThresholdedRelu", "Softsign",
}
_GATES = {"Sigmoid", "HardSigmoid"}


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

    @property
    def op_type(self) -> str:
        """The chain as one string, e.g. ``Conv>BatchNormalization>Relu``."""
        return ">".join(self.op_chain)


def find_conv_layers(model: LoadedModel) -> list[Layer]:
    """All conv layers of the model in graph order, with aliases ``conv1``, ``conv2``, …"""
    graph = model.proto.graph
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    shapes = _shapes(model.proto)
    layers: list[Layer] = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        tensor, chain = _follow_chain(node, consumers, constants)
        shape = shapes.get(tensor)
        if shape is None or len(shape) != 4:
            continue  # not a 2-D conv (1-D/3-D convs are not image layers)
        _, c, h, w = shape
        layers.append(
            Layer(
                tensor=tensor,
                alias=f"conv{len(layers) + 1}",
                op_chain=tuple(chain),
                depth=len(layers) + 1,
                channels=int(c),
                height=int(h),
                width=int(w),
                conv_node=node.name,
            )
        )
    if not layers:
        raise ModelError(f"{model.path} has no 2-D conv layer; onnx-nfi analyses convolutional networks")
    return layers


def _follow_chain(
    conv: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], constants: set[str]
) -> tuple[str, list[str]]:
    tensor, chain = conv.output[0], ["Conv"]
    while True:
        users = consumers.get(tensor, [])
        if len(users) == 1:
            user = users[0]
            if user.op_type in _NORM_OPS and user.input[0] == tensor:
                tensor, chain = user.output[0], chain + [user.op_type]
                continue
            if user.op_type in _AFFINE_OPS and _other_is_constant(user, tensor, constants):
                tensor, chain = user.output[0], chain + [user.op_type]
                continue
            if user.op_type in _ACTIVATIONS:
                return user.output[0], chain + [user.op_type]
            return tensor, chain
        gates = [u for u in users if u.op_type in _GATES]
        muls = [u for u in users if u.op_type == "Mul"]
        if len(users) == 2 and len(gates) == 1 and len(muls) == 1:  # x·Sigmoid(x), x·HardSigmoid(x)
            gate, mul = gates[0], muls[0]
            if set(mul.input) == {tensor, gate.output[0]}:
                return mul.output[0], chain + [gate.op_type, "Mul"]
        return tensor, chain


def _other_is_constant(node: onnx.NodeProto, tensor: str, constants: set[str]) -> bool:
    others = [i for i in node.input if i != tensor]
    return len(others) == 1 and others[0] in constants


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
