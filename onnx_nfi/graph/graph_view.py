"""One read-only index of a graph for layer discovery: who consumes a tensor, who produces it, which
tensors are constants, and the value of a small constant however the exporter wrote it."""

from __future__ import annotations

import functools
from collections import defaultdict

import numpy as np
import onnx

from onnx_nfi.graph.node_values import constants

#: Ops that pass a constant's values through unchanged (only the shape or the type may change):
#: exporters put biases and scalars behind them (``Unsqueeze(bias)`` before an ``Add``).
_VALUE_KEEPING = {"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Expand"}
#: Names of the nodes loading appends to read branch convs (channel_slices.py): they are not the
#: model's, so they read no tensor as far as chains and activations are concerned.
BRANCH_PREFIX = "onnx_nfi_branch"


class GraphView:
    """Consumers, producers and constants of a graph (nodes are in topological order)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producers: dict[str, onnx.NodeProto] = {}
        self.index: dict[int, int] = {}  # id(node) -> position; the node objects are those of ``nodes``
        self.nodes = list(graph.node)
        for i, node in enumerate(self.nodes):
            self.index[id(node)] = i
            for name in node.input:
                if name and not node.name.startswith(BRANCH_PREFIX):
                    self.consumers[name].append(node)
            for name in node.output:
                self.producers[name] = node
        self.outputs = {o.name for o in graph.output}
        self.values = constants(graph)
        external = {t.name for t in graph.initializer}
        self.constant: set[str] = external | set(self.values)
        for node in self.nodes:  # a node that reads only constants computes one (no random ops in CNN exports)
            if node.input and all(i in self.constant for i in node.input if i) and not node.op_type.startswith("Random"):
                self.constant.update(node.output)

    def value(self, name: str) -> np.ndarray | None:
        """A constant's values, through value-keeping ops; None when computed otherwise or external."""
        return self._value(name)

    @functools.lru_cache(maxsize=None)  # noqa: B019 (a view lives as long as one discovery)
    def _value(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        node = self.producers.get(name)
        if node is None or node.op_type not in _VALUE_KEEPING:
            return None
        return self._value(node.input[0])

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, else None."""
        value = self.value(name)
        return float(np.asarray(value).ravel()[0]) if value is not None and np.asarray(value).size == 1 else None
