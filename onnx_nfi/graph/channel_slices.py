"""Branch convs whose activation comes after a channel ``Concat`` (docs/method.md §1, "Concat").

MixNet's mixed kernels and Inception-style blocks concatenate several convs' outputs along the
channels and normalise and activate the concatenation. Each conv's layer is read after that
activation, on the channels it contributed: loading appends a ``Slice`` of the activation's output
(and one of its input, the pre-activation map of docs/method.md §2) per branch conv, so the scan
reads a tensor that exists in the graph. The slices feed nothing; runs that do not read them
prune them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_nfi.graph.chains import Chain, follow_chain
from onnx_nfi.graph.graph_view import BRANCH_PREFIX, GraphView
from onnx_nfi.graph.proto import shape_table
from onnx_nfi.graph.node_values import attr

_PREFIX = BRANCH_PREFIX


@dataclass(frozen=True)
class BranchRead:
    """A branch conv's channels ``[start, stop)`` of an activated concatenation."""

    after: Chain  # the concatenation's chain, ending after its activation
    start: int
    stop: int

    @property
    def tensor(self) -> str:
        """The slice of the activation's output that is the branch's layer tensor."""
        return f"{self.after.tensor}__channels_{self.start}_{self.stop}"

    @property
    def entering(self) -> str | None:
        """The slice of the activation's input (None: the activation has no pre-activation rule)."""
        return None if self.after.entering is None else f"{self.after.entering}__channels_{self.start}_{self.stop}"


def branch_read(chain: Chain, view: GraphView, shapes: dict[str, list[int | None]]) -> BranchRead | None:
    """For a conv chain that ends, without activation, in a channel ``Concat`` followed by one: its slice."""
    users = view.consumers.get(chain.tensor, [])
    if chain.activation is not None or len(users) != 1 or users[0].op_type != "Concat" or chain.tensor in view.outputs:
        return None
    concat = users[0]
    rank = len(shapes.get(concat.output[0]) or ())
    if rank != 4 or int(attr(concat, "axis")) % rank != 1 or list(concat.input).count(chain.tensor) != 1:
        return None
    after = follow_chain(concat.output[0], (), view)
    if after.activation is None:
        return None
    sizes = [(shapes.get(name) or [None, None])[1] for name in concat.input]
    if any(size is None for size in sizes):
        return None
    k = list(concat.input).index(chain.tensor)
    start = int(sum(sizes[:k]))  # type: ignore[arg-type]
    return BranchRead(after, start, start + int(sizes[k]))  # type: ignore[arg-type]


def add_branch_slices(proto: onnx.ModelProto) -> bool:
    """Append the slices of every branch conv (``proto`` shape-inferred; edited in place); whether any was added."""
    graph = proto.graph
    view = GraphView(graph)
    shapes = shape_table(graph)
    reads = []
    for node in view.nodes:
        if node.op_type == "Conv":
            read = branch_read(follow_chain(node.output[0], ("Conv",), view), view, shapes)
            if read is not None and read.tensor not in view.producers:
                reads.append(read)
    names = {t.name for t in graph.initializer}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)

    def const(name: str, value: int) -> None:
        if name not in names:
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
            names.add(name)

    for read in reads:
        bounds = f"{_PREFIX}_{read.start}_{read.stop}"
        const(f"{bounds}_starts", read.start)
        const(f"{bounds}_ends", read.stop)
        const(f"{_PREFIX}_axis", 1)
        pairs = [(read.after.tensor, read.tensor), (read.after.entering, read.entering)]
        for source, out in pairs:
            if source is not None and out is not None:
                graph.node.append(
                    helper.make_node("Slice", [source, f"{bounds}_starts", f"{bounds}_ends", f"{_PREFIX}_axis"], [out], name=f"{_PREFIX}:{out}")
                    if opset >= 10 else  # before opset 10 the bounds are attributes
                    helper.make_node("Slice", [source], [out], name=f"{_PREFIX}:{out}", starts=[read.start], ends=[read.stop], axes=[1])
                )
    return bool(reads)
