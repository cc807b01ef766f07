"""Receptive fields that differ by channel: the branches of a channel ``Concat`` (docs/method.md §3).

The walk (rf_walk.py) gives every tensor one window state, the union over its channels. After a
``Concat`` of branches with different kernels (MixNet's mixed convs, Inception blocks) that union is
the widest branch's, while a later ``Split``/``Slice`` of the channels (the next mixed conv's
groups, or a branch's layer slice, channel_slices.py) carries one branch's channels only. So the
walk also keeps, per tensor, the channel ranges of each branch with their own states, carries them
through element-wise nodes (batch norm, activations, ``x·σ(x)``), and gives a ``Split`` part or a
channel ``Slice`` the join of the ranges it takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnx_nfi.graph.node_values import attr
from onnx_nfi.graph.receptive_field import Local, State
from onnx_nfi.graph.rf_nodes import join

Part = tuple[int, int, State]  # channels [start, stop) and their state


@dataclass(frozen=True)
class Parts:
    """Branch channel ranges of a tensor along its channel ``axis``."""

    axis: int
    ranges: tuple[Part, ...]

    def bounds(self) -> tuple[tuple[int, int], ...]:
        return tuple((a, b) for a, b, _ in self.ranges)

    def pick(self, start: int, stop: int) -> tuple[State, Parts]:
        """The state of channels ``[start, stop)`` and their own parts (renumbered from 0)."""
        taken = [(max(a, start) - start, min(b, stop) - start, s) for a, b, s in self.ranges if a < stop and b > start]
        return join([s for _, _, s in taken]), Parts(self.axis, tuple(taken))


class ChannelParts:
    """The branch ranges of every tensor the walk has passed, and how nodes change them."""

    def __init__(self, shapes: dict[str, list[int | None]], consts: dict):  # noqa: ANN001 (name -> ndarray)
        self.shapes, self.consts = shapes, consts
        self.parts: dict[str, Parts] = {}

    def update(self, node: onnx.NodeProto, ins: list[State], outs: list[State], pointwise: bool) -> list[State]:
        """Record the parts of ``node``'s outputs; a channel ``Split``/``Slice`` gets its branch's state."""
        if node.op_type == "Concat":
            self._concat(node, ins)
        elif node.op_type in ("Split", "Slice"):
            return self._select(node, outs)
        elif pointwise:
            self._pointwise(node, ins)
        return outs

    def _rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def _concat(self, node: onnx.NodeProto, ins: list[State]) -> None:
        rank = self._rank(node.output[0])
        if rank is None:
            return
        axis = int(attr(node, "axis")) % rank
        ranges: list[Part] = []
        first = 0
        for name, state in zip(node.input, ins):
            size = (self.shapes.get(name) or [None] * rank)[axis]
            if size is None or (isinstance(state, Local) and axis in state.axes):
                return
            own = self.parts.get(name)
            pieces = own.ranges if own is not None and own.axis == axis else ((0, size, state),)
            ranges += [(first + a, first + b, s) for a, b, s in pieces]
            first += size
        if len({id(s) for _, _, s in ranges}) > 1:
            self.parts[node.output[0]] = Parts(axis, tuple(ranges))

    def _pointwise(self, node: onnx.NodeProto, ins: list[State]) -> None:
        """Element-wise node: parts survive when every local input has the same ranges on the same axis."""
        rank = self._rank(node.output[0])
        mine = [(self.parts.get(n), s) for n, s in zip(node.input, ins) if isinstance(s, Local)]
        if not mine or rank is None or any(p is None for p, _ in mine):
            return
        first = mine[0][0]
        if any(p.axis != first.axis or p.bounds() != first.bounds() for p, _ in mine) or any(
            self._rank(n) != rank for n, s in zip(node.input, ins) if isinstance(s, Local)
        ):
            return
        others = [s for s in ins if not isinstance(s, Local)]
        ranges = tuple(
            (a, b, join([p.ranges[k][2] for p, _ in mine] + others)) for k, (a, b) in enumerate(first.bounds())
        )
        for out in node.output:
            self.parts[out] = Parts(first.axis, ranges)

    def _select(self, node: onnx.NodeProto, outs: list[State]) -> list[State]:
        parts = self.parts.get(node.input[0])
        if parts is None:
            return outs
        rank = self._rank(node.input[0]) or 4
        spans = self._split_spans(node, parts, rank) if node.op_type == "Split" else self._slice_span(node, parts, rank)
        if spans is None:
            return outs
        picked = []
        for name, (start, stop) in zip(node.output, spans):
            state, sub = parts.pick(start, stop)
            self.parts[name] = sub
            picked.append(state)
        return picked

    def _ints(self, node: onnx.NodeProto, key: str, index: int) -> list[int] | None:
        value = attr(node, key)
        if value is None and index < len(node.input) and node.input[index] in self.consts:
            value = self.consts[node.input[index]].ravel().tolist()
        return None if value is None else [int(v) for v in value]

    def _split_spans(self, node: onnx.NodeProto, parts: Parts, rank: int) -> list[tuple[int, int]] | None:
        if int(attr(node, "axis") or 0) % rank != parts.axis:
            return None
        total = parts.ranges[-1][1]
        sizes = self._ints(node, "split", 1)
        if not sizes:
            step = -(-total // len(node.output))
            sizes = [min(step, total - step * i) for i in range(len(node.output))]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [(a, a + s) for a, s in zip(starts, sizes)]

    def _slice_span(self, node: onnx.NodeProto, parts: Parts, rank: int) -> list[tuple[int, int]] | None:
        starts, ends = self._ints(node, "starts", 1), self._ints(node, "ends", 2)
        axes = self._ints(node, "axes", 3) or list(range(len(starts or [])))
        steps = self._ints(node, "steps", 4) or [1] * len(axes)
        if starts is None or ends is None or [a % rank for a in axes] != [parts.axis] or steps != [1]:
            return None
        first, last, _ = slice(starts[0], ends[0]).indices(parts.ranges[-1][1])
        return [(first, last)]
