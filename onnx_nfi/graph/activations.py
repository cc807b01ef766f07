"""Activations as exporters write them: one fused node, or a small subgraph that spells one out.

Exporters write the same activation in several forms. PyTorch below opset 20 and tf2onnx write
GELU as ``0.5·x·(1 + Erf(x/√2))`` or its tanh approximation; Paddle2ONNX and older exporters
write hard-swish as ``x·Clip(x + 3, 0, 6)/6``; ReLU6 appears as ``Min(Max(x, 0), 6)``. Layer
discovery (layers.py) must read a layer after its activation whatever the form, and the saturation
rule (docs/method.md §2) must know which activation it is.

A spelled-out activation is found by its shape, then named by what it computes: from the layer's
tensor ``x`` the largest subgraph of element-wise nodes with scalar constants that ``x`` enters
and only one tensor leaves is evaluated on sample values, and compared with each entry of
``PATTERNS`` (its reference function on the same values). The order and grouping of the nodes, and
``x/√2`` against ``x·0.7071``, do not matter; a subgraph that computes something else is no match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from scipy import special

from onnx_nfi.graph.graph_view import GraphView
from onnx_nfi.graph.node_values import attributes

#: Activations that are one node, read after that node.
FUSED = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "HardSwish", "Gelu", "Softplus",
    "Tanh", "Mish", "ThresholdedRelu", "Softsign",
}
#: Gates: ``x·g(x)`` is SiLU/Swish or hard-swish; alone (a squeeze-excitation gate) ``g`` is read.
GATES = {"Sigmoid", "HardSigmoid"}


@dataclass(frozen=True)
class Activation:
    """A recognised activation after the layer's tensor."""

    output: str  # the tensor after it: the layer's tensor
    chain: tuple[str, ...]  # what ``layers`` appends to the op chain
    acts_as: str  # the fused op it equals, for the saturation rule (a ``Gelu`` written with ``Erf``: ``Gelu``)
    node: onnx.NodeProto | None  # the node whose parameters decide the saturation rule; None: spelled out


@dataclass(frozen=True)
class Pattern:
    """One spelled-out activation: the name ``layers`` shows, the fused op it equals, the ops its
    subgraph must contain, and its reference function."""

    label: str
    acts_as: str
    needs: frozenset[str]
    reference: Callable[[np.ndarray], np.ndarray]


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


PATTERNS: tuple[Pattern, ...] = (
    Pattern("Gelu(Erf)", "Gelu", frozenset({"Erf"}), lambda x: 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))),
    Pattern(
        "Gelu(tanh)", "Gelu", frozenset({"Tanh"}),
        lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    ),
    Pattern("HardSwish(decomposed)", "HardSwish", frozenset(), lambda x: x * _relu6(x + 3.0) / 6.0),
    Pattern("HardSigmoid(decomposed)", "HardSigmoid", frozenset(), lambda x: _relu6(x + 3.0) / 6.0),
    Pattern("Silu(decomposed)", "Silu", frozenset(), lambda x: x * special.expit(x)),
    Pattern("Mish(decomposed)", "Mish", frozenset(), lambda x: x * np.tanh(_softplus(x))),
    Pattern("Relu6(Min/Max)", "Clip", frozenset(), _relu6),
    Pattern("Relu(decomposed)", "Relu", frozenset(), lambda x: np.maximum(x, 0.0)),
)

#: Sample values an activation is compared on: both signs, the kinks of ReLU6/hard-swish, saturation.
SAMPLES = np.concatenate([np.linspace(-9.0, 9.0, 721), [-3.0, 0.0, 3.0, 6.0]])

_MAX_NODES = 12


def _clip(args: list, node: onnx.NodeProto) -> np.ndarray:
    """Clip with its bounds as inputs (opset 11+) or attributes (before)."""
    lo, hi = (args + [None, None])[1:3] if len(args) > 1 else (attributes(node).get("min"), attributes(node).get("max"))
    return np.clip(args[0], -np.inf if lo is None else lo, np.inf if hi is None else hi)


def _hard_sigmoid(args: list, node: onnx.NodeProto) -> np.ndarray:
    attrs = attributes(node)
    return np.clip(attrs.get("alpha", 0.2) * args[0] + attrs.get("beta", 0.5), 0.0, 1.0)


#: Element-wise ops a spelled-out activation is made of, as numpy functions of their inputs.
_NUMPY: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Min": np.minimum, "Max": np.maximum, "Erf": special.erf, "Tanh": np.tanh, "Sigmoid": special.expit,
    "Relu": lambda x: np.maximum(x, 0.0), "Softplus": _softplus, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
    "Neg": np.negative, "Abs": np.abs, "Reciprocal": np.reciprocal, "Identity": lambda x: x,
}
_WITH_NODE = {"Clip": _clip, "HardSigmoid": _hard_sigmoid}


def find_activation(x: str, view: GraphView) -> Activation | None:
    """The activation that ``x`` enters, in any of the forms above, or None."""
    users = view.consumers.get(x, [])
    if x in view.outputs:
        return None
    if len(users) == 1 and users[0].input[0] == x and users[0].op_type in FUSED | GATES:
        return Activation(users[0].output[0], (users[0].op_type,), users[0].op_type, users[0])
    gates = [u for u in users if u.op_type in GATES]
    muls = [u for u in users if u.op_type == "Mul"]
    if len(users) == 2 and len(gates) == 1 and len(muls) == 1 and set(muls[0].input) == {x, gates[0].output[0]}:
        gate = gates[0]  # x·Sigmoid(x) (SiLU/Swish), x·HardSigmoid(x) (hard-swish, Paddle)
        return Activation(muls[0].output[0], (gate.op_type, "Mul"), gate.op_type, gate)
    return spelled_out(x, view)


def spelled_out(x: str, view: GraphView) -> Activation | None:
    """The largest closed element-wise subgraph from ``x`` (at most ``_MAX_NODES``) that computes one of ``PATTERNS``."""
    nodes: list[onnx.NodeProto] = []
    tensors = {x}
    found = None
    while len(nodes) < _MAX_NODES:
        node = _next_node(tensors, nodes, view)
        if node is None:
            break
        nodes.append(node)
        tensors.add(node.output[0])
        exit_ = node.output[0]
        inner = tensors - {exit_}
        taken = {id(n) for n in nodes}
        if any(t in view.outputs or any(id(u) not in taken for u in view.consumers.get(t, [])) for t in inner):
            continue  # a tensor inside still leaves the subgraph: not closed yet
        ops = {n.op_type for n in nodes}
        values = evaluate(nodes, x, SAMPLES, view)
        for pattern in PATTERNS:
            if pattern.needs <= ops and np.allclose(values, pattern.reference(SAMPLES), rtol=1e-4, atol=1e-5):
                found = Activation(exit_, (pattern.label,), pattern.acts_as, None)
                break
    return found  # the largest match: ``Min(Max(x, 0), 6)`` is ReLU6, not the ReLU inside it


def _next_node(tensors: set[str], taken: list[onnx.NodeProto], view: GraphView) -> onnx.NodeProto | None:
    """The first (graph order) element-wise node reading the subgraph whose other inputs are scalar constants."""
    candidates = []
    ids = {id(n) for n in taken}
    for tensor in tensors:
        for user in view.consumers.get(tensor, []):
            if id(user) in ids or user.op_type not in _NUMPY.keys() | _WITH_NODE.keys() or len(user.output) != 1:
                continue
            others = [i for i in user.input if i and i not in tensors]
            if all(view.scalar(i) is not None for i in others):
                candidates.append(user)
    return min(candidates, key=lambda n: view.index[id(n)], default=None)


def evaluate(nodes: list[onnx.NodeProto], x: str, samples: np.ndarray, view: GraphView) -> np.ndarray:
    """The subgraph's output for ``x = samples`` (float64; nodes in graph order)."""
    values: dict[str, np.ndarray] = {x: samples}

    def arg(name: str) -> np.ndarray | None:
        if not name:
            return None
        return values[name] if name in values else np.float64(view.scalar(name))

    with np.errstate(all="ignore"):
        for node in nodes:
            args = [arg(i) for i in node.input]
            if node.op_type in _WITH_NODE:
                out = _WITH_NODE[node.op_type](args, node)
            elif node.op_type in ("Min", "Max"):
                out = args[0]
                for other in args[1:]:
                    out = _NUMPY[node.op_type](out, other)
            else:
                out = _NUMPY[node.op_type](*args)
            values[node.output[0]] = np.asarray(out, dtype=np.float64)
    return values[nodes[-1].output[0]]
