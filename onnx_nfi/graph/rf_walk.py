"""Analytic receptive fields of the tensors of an ONNX graph (docs/method.md §3).

Per image axis a tensor's window of output index ``i`` is ``[i·j + o, i·j + o + r − 1]`` in input
pixels. The graph is walked once in node order with the concrete input size; every tensor carries,
per image axis, the jump ``j`` and two exact spans per output index (``AxisWindows``):

- the *unclipped* window, where taps on padding extend the window past the image as in §3; the
  receptive field ``(r, j, o)`` is its tightest linear cover. For conv/pool/pad/point-wise/join
  graphs the windows are linear and this is exactly the §3 recurrence. Nearest/linear ``Resize``,
  ``Upsample``, ``DepthToSpace`` and ``ConvTranspose`` repeat or interleave windows, which no
  linear form describes exactly; then the cover is the tightest one, ``j`` may be a ``Fraction``
  (``Resize ×2`` at input resolution gives ``j = 1/2``) and ``window()`` floors;
- the *seen* span: the input pixels that really influence the index. It differs from the clipped
  window at borders only: pixels a floor-rounded layer never reads (VGG-M's conv1 never reads row
  223 of a 224 image, so conv5's last windows stop at 214), dilation holes, reflect padding. The
  probe measures exactly this, so it is the strict test of the walk.

Channel ranges of the branches of a channel ``Concat`` keep their own windows (rf_channels.py).
Image axes are tracked through ``Transpose``/``Reshape``/``Squeeze``…, so NHWC models that
transpose to NCHW right after the input (tf2onnx) work.

**Decision — gates from global pooling (squeeze-excitation)**, docs/method.md §3: a tensor derived
from a global pooling of a local one is a *summary* that rescales channels; where it joins a local
tensor the join keeps the local window (not the union, which would make every layer after an SE
block global). The probe (rf_probe.py) holds summaries at their base-image values, so it measures
the same thing. Operations that mix positions at full strength (``Flatten``/``Gemm``/``MatMul`` of a
local tensor, a softmax over image axes) make the result global.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import onnx

from onnx_nfi.errors import ModelError
from onnx_nfi.graph.node_values import attr, constants, str_attr
from onnx_nfi.graph.proto import shape_table, with_input_size
from onnx_nfi.graph.rf_channels import ChannelParts
from onnx_nfi.graph.rf_nodes import globalise, inferred, join, resize_sources, same_axis
from onnx_nfi.graph.receptive_field import LAYOUTS, POOLED, STRONG, AxisWindows, GraphTrace, Local, ReceptiveField, State

log = logging.getLogger(__name__)


def receptive_fields(
    model: onnx.ModelProto,
    input_name: str,
    input_hw: tuple[int, int],
    layout: str,
    tensors: Sequence[str],
) -> dict[str, ReceptiveField]:
    """Analytic receptive field of each tensor in ``tensors`` for an input of size ``input_hw``.

    ``layout`` ("NCHW" or "NHWC") is the graph input's. Unknown ops are taken as point-wise and
    named in one logged warning.
    """
    trace = trace_graph(model, input_name, input_hw, layout)
    return {name: trace.receptive_field(name) for name in tensors}


def trace_graph(model: onnx.ModelProto, input_name: str, input_hw: tuple[int, int], layout: str) -> GraphTrace:
    """Walk the graph with a concrete input size and give every tensor its state."""
    return _Tracer(model, input_name, tuple(input_hw), layout).run()


_NO_DATA = {"Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike", "Constant"}
_POINTWISE = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "HardSwish", "HardSigmoid", "Sigmoid",
    "Tanh", "Gelu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Exp", "Log", "Sqrt", "Abs", "Neg",
    "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "IsNaN", "IsInf", "Cast",
    "CastLike", "Identity", "Dropout", "BatchNormalization", "LRN", "QuantizeLinear", "DequantizeLinear",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift", "Expand",
}
_WINDOW_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCES = {
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
}
_SOFTMAXES = {"Softmax", "LogSoftmax", "Hardmax"}


class _Tracer:
    def __init__(self, model: onnx.ModelProto, input_name: str, input_hw: tuple[int, int], layout: str):
        if layout not in LAYOUTS:
            raise ModelError(f"Unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
        self.input_name, self.input_hw, self.layout = input_name, input_hw, layout
        graph = inferred(with_input_size(model, input_name, layout, input_hw, batch=1)).graph
        self.graph = graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.shapes = shape_table(graph)
        self.consts = constants(graph)
        self.states: dict[str, State] = {}
        self.summaries: list[str] = []
        self.unknown: set[str] = set()
        self.channels = ChannelParts(self.shapes, self.consts)

    def run(self) -> GraphTrace:
        for value in self.graph.input:
            self.states[value.name] = None
        for init in self.graph.initializer:
            self.states[init.name] = None
        axes = (2, 3) if self.layout == "NCHW" else (1, 2)
        h, w = self.input_hw
        self.states[self.input_name] = Local(axes, AxisWindows.identity(h), AxisWindows.identity(w))
        for node in self.graph.node:
            ins = [self.states.get(name) if name else None for name in node.input]
            outs = self.channels.update(node, ins, self._node(node), node.op_type in _POINTWISE)
            for name, state in zip(node.output, outs):
                if name:
                    self.states[name] = state
        if self.unknown:
            unknown = ", ".join(sorted(self.unknown))
            log.warning("Receptive fields: ops taken as point-wise without knowing them: %s", unknown)
        return GraphTrace(dict(self.states), tuple(self.summaries), self.input_hw)

    # -- helpers
    def _rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def _dim(self, name: str, axis: int) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None or axis >= len(shape) else shape[axis]

    def _const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if index < len(node.input) and node.input[index]:
            return self.consts.get(node.input[index])
        return None

    def _const_ints(self, node: onnx.NodeProto, index: int) -> list[int] | None:
        const = self._const(node, index)
        return None if const is None else [int(v) for v in np.asarray(const).ravel()]

    def _ints(self, node: onnx.NodeProto, name: str, index: int | None) -> list[int] | None:
        """An int list given as attribute (old opsets) or as constant input ``index`` (new ones)."""
        value = attr(node, name)
        if value is None and index is not None:
            return self._const_ints(node, index)
        return None if value is None else list(value)

    def _node(self, node: onnx.NodeProto) -> list[State]:
        ins = [self.states.get(name) if name else None for name in node.input]
        n_out = len(node.output)
        op = node.op_type
        if op in _NO_DATA or all(state is None for state in ins):
            return [None] * n_out
        known = node.domain in ("", "ai.onnx")
        if known and op in _WINDOW_OPS | {"ConvTranspose", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"}:
            if not isinstance(ins[0], Local):
                return [join(ins)] * n_out
            return [self._spatial(node, ins[0])] * n_out
        if known and op in _GLOBAL_POOLS | _REDUCES:
            return [self._reduce(node, ins[0])] * n_out
        if known and op in {"Flatten", "Gemm"}:
            return [globalise(join(ins))] * n_out
        if known and op == "MatMul":
            return [self._matmul(node, ins)]
        if known and op in _SOFTMAXES:
            return [self._softmax(node, ins[0])]
        if known and op in {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Gather", "Concat", "Tile"}:
            return [self._move_axes(node, ins)] * n_out
        if known and op in {"Pad", "Slice"}:
            return [self._crop(node, ins)]
        if known and op == "Split":
            return self._split(node, ins[0])
        if not (known and op in _POINTWISE):
            self.unknown.add(op if known else f"{node.domain}.{op}")
        return [self._join_aligned(node, ins)] * n_out

    # -- joins
    def _join_aligned(self, node: onnx.NodeProto, ins: list[State]) -> State:
        """Point-wise op or join: align ranks as numpy broadcasting does, then join."""
        out_rank = self._rank(node.output[0])
        aligned: list[State] = []
        for name, state in zip(node.input, ins):
            if isinstance(state, Local) and out_rank is not None and self._rank(name) is not None:
                lift = out_rank - self._rank(name)
                state = state.with_axes((state.axes[0] + lift, state.axes[1] + lift))
            aligned.append(state)
        return join(aligned)

    # -- conv, pools, resize
    def _spatial(self, node: onnx.NodeProto, state: Local) -> State:
        op = node.op_type
        out_name = node.output[0]
        if op in ("DepthToSpace", "SpaceToDepth"):
            b = int(attr(node, "blocksize"))
            spatial = [2, 3]
        else:
            rank = self._rank(node.input[0]) or 4
            spatial = list(range(2, rank))
        if not set(state.axes) <= set(spatial):
            raise ModelError(
                f"{op} node {node.name!r} works on axes {spatial} but the image rows/columns are on axes "
                f"{list(state.axes)}; check the layout argument (the model's input is not {self.layout})."
            )

        def update(tensor_axis: int, cover: AxisWindows) -> AxisWindows:
            k_idx = spatial.index(tensor_axis)
            n_in = cover.n
            n_out = self._dim(out_name, tensor_axis)
            if op == "SpaceToDepth":
                return cover.window_op(b, b, 1, 0, n_out or n_in // b)
            if op == "DepthToSpace":
                m = [i // b for i in range(n_in * b)]
                return cover.index_map(m, m)
            if op in ("Resize", "Upsample"):
                return cover.index_map(*self._resize_map(node, tensor_axis, n_in, n_out))
            return self._window(node, k_idx, cover, n_out)

        return state.map_axes(update)

    def _window(self, node: onnx.NodeProto, k_idx: int, cover: AxisWindows, n_out: int | None) -> AxisWindows:
        nd = None
        kernel = attr(node, "kernel_shape")
        if kernel is None:  # Conv/ConvTranspose: from the weight's shape
            w_shape = self.shapes.get(node.input[1])
            if w_shape is None or any(v is None for v in w_shape[2:]):
                raise ModelError(f"Cannot read the kernel size of {node.op_type} node {node.name!r}.")
            kernel = w_shape[2:]
        nd = len(kernel)
        k = int(kernel[k_idx])
        s = int((attr(node, "strides") or [1] * nd)[k_idx])
        d = int((attr(node, "dilations") or [1] * nd)[k_idx])
        pads = attr(node, "pads") or [0] * (2 * nd)
        pb, pe = int(pads[k_idx]), int(pads[k_idx + nd])
        auto_pad = attr(node, "auto_pad") or "NOTSET"
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        span = (k - 1) * d + 1
        n = cover.n
        if node.op_type == "ConvTranspose":
            out_pad = int((attr(node, "output_padding") or [0] * nd)[k_idx])
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                total = max(s * (n - 1) + out_pad + span - n * s, 0)
                pb = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2  # ONNX spec wording
            elif auto_pad == "VALID":
                pb = pe = 0
            n_out = n_out or s * (n - 1) + out_pad + span - pb - pe
            # output y sits on inputs x with y = x·s − pb + t·d, t = 0…k−1 (none: bias only)
            rows = [[(y + pb - t * d) // s for t in range(k) if (y + pb - t * d) % s == 0] for y in range(n_out)]
            width = max(len(xs) for xs in rows) or 1
            taps = np.array([(xs or [(y + pb) // s]) * width for y, xs in enumerate(rows)])[:, :width]
            hit = np.array([bool(xs) for xs in rows])[:, None]
            reads = np.where(hit & (taps >= 0) & (taps < n), taps, -1)
            return cover.gather(taps, reads, cover.j / s)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((math.ceil(n / s) - 1) * s + span - n, 0)
            pb = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pe = total - pb
        elif auto_pad == "VALID":
            pb = pe = 0
        if n_out is None:
            rounding = math.ceil if attr(node, "ceil_mode") else math.floor
            n_out = rounding((n + pb + pe - span) / s) + 1
        return cover.window_op(k, s, d, pb, n_out)

    def _resize_map(self, node: onnx.NodeProto, axis: int, n_in: int, n_out: int | None) -> tuple[list[int], list[int]]:
        """Source indices each output index reads, following the ONNX Resize/Upsample formulas."""
        if node.op_type == "Upsample":
            scales = attr(node, "scales")
            scales = scales if scales is not None else self._const(node, 1)
            coord, mode, nearest = "asymmetric", str_attr(node, "mode", "nearest"), "floor"
        else:
            scales = self._const(node, 2) if self.opset >= 11 else self._const(node, 1)
            default = "half_pixel" if self.opset >= 11 else "asymmetric"
            coord = str_attr(node, "coordinate_transformation_mode", default)
            mode = str_attr(node, "mode", "nearest")
            nearest = str_attr(node, "nearest_mode", "round_prefer_floor" if self.opset >= 11 else "floor")
        scale = None
        if scales is not None and len(np.asarray(scales).ravel()) > axis:
            scale = Fraction(float(np.asarray(scales).ravel()[axis])).limit_denominator(10_000)
        if n_out is None:
            if scale is None:
                raise ModelError(f"Cannot read the output size of {node.op_type} node {node.name!r}.")
            n_out = math.floor(n_in * scale)
        scale = scale or Fraction(n_out, n_in)
        if coord not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"):
            log.warning("Resize %r: coordinate mode %s taken as half_pixel for the receptive field.", node.name, coord)
            coord = "half_pixel"
        return resize_sources(mode, coord, nearest, scale, n_in, n_out)

    # -- reductions and global ops
    def _reduce(self, node: onnx.NodeProto, state: State) -> State:
        if not isinstance(state, Local):
            return state
        op = node.op_type
        rank = self._rank(node.input[0]) or 4
        if op in _GLOBAL_POOLS:
            axes = list(range(2, rank))
        elif op in ("ArgMax", "ArgMin"):
            axes = [int(attr(node, "axis") or 0)]
        else:
            axes = self._ints(node, "axes", 1)
            if not axes:
                axes = [] if attr(node, "noop_with_empty_axes") else list(range(rank))
        axes = [a % rank for a in axes]
        if set(axes) & set(state.axes):
            self.summaries.append(node.output[0])
            return POOLED
        keep = op in _GLOBAL_POOLS or attr(node, "keepdims") in (None, 1)
        if keep:
            return state
        return state.with_axes(tuple(a - sum(r < a for r in axes) for a in state.axes))

    def _matmul(self, node: onnx.NodeProto, ins: list[State]) -> State:
        a, b = ins[0], ins[1] if len(ins) > 1 else None
        if isinstance(a, Local) and b is None:
            rank = self._rank(node.input[0])
            if rank is not None and rank - 1 not in a.axes:  # contracts the channel axis: a 1x1 conv
                return self._join_aligned(node, [a, None])
        return globalise(join(ins))

    def _softmax(self, node: onnx.NodeProto, state: State) -> State:
        if not isinstance(state, Local):
            return state
        rank = self._rank(node.input[0]) or 4
        default = -1 if self.opset >= 13 else 1
        axis = int(attr(node, "axis") if attr(node, "axis") is not None else default) % rank
        covered = {axis} if self.opset >= 13 else set(range(axis, rank))  # old opsets flatten from axis on
        return STRONG if covered & set(state.axes) else state

    # -- axis bookkeeping
    def _move_axes(self, node: onnx.NodeProto, ins: list[State]) -> State:
        op = node.op_type
        state = ins[0]
        if op == "Concat":
            axis = int(attr(node, "axis")) % (self._rank(node.output[0]) or 4)
            joined = self._join_aligned(node, ins)
            if isinstance(joined, Local) and axis in joined.axes:
                log.warning("Concat %r along an image axis: its receptive field is taken as global.", node.name)
                return STRONG
            return joined
        if not isinstance(state, Local):
            return join(ins) if op == "Concat" else state
        in_rank, out_rank = self._rank(node.input[0]), self._rank(node.output[0])
        if op == "Transpose":
            perm = list(attr(node, "perm") or range(in_rank or 4)[::-1])
            return state.with_axes((perm.index(state.axes[0]), perm.index(state.axes[1])))
        if op == "Tile":
            repeats = self._const(node, 1)
            if repeats is not None and any(int(repeats[a]) != 1 for a in state.axes):
                log.warning("Tile %r repeats an image axis: its receptive field is taken as global.", node.name)
                return STRONG
            return state
        if op == "Gather":
            axis = int(attr(node, "axis") or 0) % (in_rank or 4)
            if axis in state.axes:
                log.warning("Gather %r along an image axis: its receptive field is taken as global.", node.name)
                return STRONG
            q = self._rank(node.input[1]) or 0
            return state.with_axes(tuple(a if a < axis else a + q - 1 for a in state.axes))
        if op == "Unsqueeze":
            axes = sorted(a % out_rank for a in self._ints(node, "axes", 1) or [])
            moved = list(state.axes)
            for a in axes:
                moved = [m + 1 if m >= a else m for m in moved]
            return state.with_axes(tuple(moved))
        if op == "Squeeze":
            axes = self._ints(node, "axes", 1)
            shape = self.shapes.get(node.input[0]) or []
            axes = [a % in_rank for a in axes] if axes else [i for i, v in enumerate(shape) if v == 1]
            if set(axes) & set(state.axes):
                return STRONG
            return state.with_axes(tuple(a - sum(r < a for r in axes) for a in state.axes))
        # Reshape / (Flatten handled as global): keep an image axis only where memory layout around it is unchanged
        in_shape, out_shape = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        if in_shape is None or out_shape is None or None in in_shape or None in out_shape:
            log.warning("Reshape %r with unknown shapes: its receptive field is taken as global.", node.name)
            return STRONG
        moved = tuple(same_axis(in_shape, out_shape, a) for a in state.axes)
        if None in moved:
            return STRONG
        return state.with_axes(moved)

    def _crop(self, node: onnx.NodeProto, ins: list[State]) -> State:
        """Pad (shift by the leading pad) and Slice (shift by the start, multiply j by the step)."""
        state = ins[0]
        if not isinstance(state, Local):
            return join(ins)
        rank = self._rank(node.input[0]) or 4
        out_name = node.output[0]
        if node.op_type == "Pad":
            pads = self._ints(node, "pads", 1)
            if pads is None:
                log.warning("Pad %r with non-constant pads: its receptive field ignores the pad.", node.name)
                return state
            axes = [a % rank for a in (self._const_ints(node, 3) or range(rank))]
            begin = {a: pads[i] for i, a in enumerate(axes)}
            end = {a: pads[i + len(axes)] for i, a in enumerate(axes)}
            mode = str_attr(node, "mode", "constant")

            def pad(t: int, c: AxisWindows) -> AxisWindows:
                if t not in begin:
                    return c
                return c.shift(-begin[t], 1, self._dim(out_name, t) or c.n + begin[t] + end[t], mode)

            return state.map_axes(pad)
        starts = self._ints(node, "starts", 1 if self.opset >= 10 else None)
        ends = self._ints(node, "ends", 2 if self.opset >= 10 else None)
        if starts is None or ends is None:
            log.warning("Slice %r with non-constant bounds: its receptive field is taken as global.", node.name)
            return STRONG
        axes = self._ints(node, "axes", 3 if self.opset >= 10 else None) or list(range(len(starts)))
        steps = (self._const_ints(node, 4) if self.opset >= 10 else None) or [1] * len(starts)
        axes = [a % rank for a in axes]

        def update(t: int, c: AxisWindows) -> AxisWindows:
            if t not in axes:
                return c
            i = axes.index(t)
            first, last, step = slice(starts[i], ends[i], steps[i]).indices(c.n)
            if step < 0:
                log.warning("Slice %r reverses an image axis: its receptive field is taken as global.", node.name)
                raise _Reversed
            return c.shift(first, step, len(range(first, last, step)))

        try:
            return state.map_axes(update)
        except _Reversed:
            return STRONG

    def _split(self, node: onnx.NodeProto, state: State) -> list[State]:
        n_out = len(node.output)
        if not isinstance(state, Local):
            return [state] * n_out
        axis = int(attr(node, "axis") or 0) % (self._rank(node.input[0]) or 4)
        if axis not in state.axes:
            return [state] * n_out
        sizes = self._ints(node, "split", 1)
        if not sizes:
            n = (state.y if axis == state.axes[0] else state.x).n
            part = math.ceil(n / n_out)
            sizes = [min(part, n - part * i) for i in range(n_out)]
        outs, first = [], 0
        for size in sizes:
            outs.append(state.map_axes(lambda t, c, f=first, s=size: c.shift(f, 1, s) if t == axis else c))
            first += size
        return outs


class _Reversed(Exception):
    """A negative Slice step on an image axis (no linear window)."""
