"""The chain that follows a conv up to and including its activation (docs/method.md §1).

From a tensor, a chain takes batch/instance normalisation and bias/scale arithmetic by constants
(however the constant is written: behind ``Identity``/``Reshape``/``Unsqueeze``), each the only
reader of the tensor before it, and stops after the first activation (activations.py) or where
neither follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_nfi.graph.activations import Activation, find_activation
from onnx_nfi.graph.graph_view import GraphView

NORM_OPS = {"BatchNormalization", "InstanceNormalization"}
AFFINE_OPS = {"Add", "Sub", "Mul", "Div"}


@dataclass(frozen=True)
class Chain:
    """Where a chain ends (``tensor``), its ops, and its activation with the tensor entering it."""

    tensor: str
    ops: tuple[str, ...]
    activation: Activation | None = None
    entering: str | None = None  # the tensor the activation reads (the pre-activation map)


def follow_chain(start: str, ops: tuple[str, ...], view: GraphView) -> Chain:
    """The chain from ``start`` (whose own ops are ``ops``)."""
    tensor, chain = start, list(ops)
    while True:
        act = find_activation(tensor, view)
        if act is not None:
            return Chain(act.output, (*chain, *act.chain), act, tensor)
        users = view.consumers.get(tensor, [])
        if len(users) != 1 or tensor in view.outputs:
            return Chain(tensor, tuple(chain))
        user = users[0]
        if user.op_type in NORM_OPS and user.input[0] == tensor:
            tensor, chain = user.output[0], chain + [user.op_type]
        elif user.op_type in AFFINE_OPS and _other_is_constant(user, tensor, view):
            tensor, chain = user.output[0], chain + [user.op_type]
        else:
            return Chain(tensor, tuple(chain))


def _other_is_constant(node, tensor: str, view: GraphView) -> bool:  # noqa: ANN001 (a NodeProto)
    others = [i for i in node.input if i != tensor]
    return len(others) == 1 and others[0] in view.constant
