"""Models that exporters produce and that onnx-nfi must either analyse or refuse in one line, built
with onnx.helper: dynamic sizes, batch 1 hard-coded inside, opsets out of range, custom ops, NaN."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx_builders import NetBuilder


def _model(b: NetBuilder, output: str, dims: list, opset: int, extra_domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes, "hostile", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [dims[0], None, None, None])], b.inits,
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def two_conv_net(dims: list, opset: int = 13, custom: str | None = None, log: bool = False) -> onnx.ModelProto:
    """conv1 > Relu > [custom op | log(-|x|)] > conv2 > Relu; ``custom`` is "first" (before conv1) or "between"."""
    b = NetBuilder(3, (16, 16), opset=opset)
    x = "input"
    if custom == "first":
        x = b.node("Scramble", [x])
        b.nodes[-1].domain = "com.example"
    x = b.conv_relu(x, 3, 4, 3, "c1")
    if log:  # log of a non-positive map (log(-|x|)): NaN, as a Log on a signed tensor gives in part
        x = b.node("Log", [b.node("Neg", [b.node("Abs", [x])])])
    if custom == "between":
        x = b.node("Scramble", [x])
        b.nodes[-1].domain = "com.example"
    x = b.conv(x, 4, 4, 3)
    x = b.relu(x)
    return _model(b, x, dims, opset, ("com.example",) if custom else ())


def shufflenet_like_net() -> onnx.ModelProto:
    """Caffe2's ShuffleNet channel shuffle: batch 1 fixed in the input and in a Reshape to
    [1, groups, C/groups, H, W] between two convs (onnx's test ShuffleNet reshapes to {1,4,28,56,56})."""
    b = NetBuilder(3, (16, 16), opset=9, dynamic_batch=False)
    x = b.conv_relu("input", 3, 8, 3, "c1", pads=[1, 1, 1, 1])
    x = b.node("Reshape", [x, b.const(np.array([1, 2, 4, 16, 16], np.int64), "shape")])
    x = b.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
    x = b.node("Reshape", [x, b.const(np.array([1, 8, 16, 16], np.int64), "shape")])
    x = b.conv_relu(x, 8, 6, 3, "c2")
    return _model(b, x, [1, 3, 16, 16], 9)


def two_input_conv_net(inputs: dict[str, list], combine: str | None = "Sub") -> onnx.ModelProto:
    """conv1 > Relu > conv2 > Relu on ``combine(*inputs)``, e.g. ``Sub(image, mask)``; with one input,
    the same convs (same weights) on it alone (``combine`` None) or on ``Neg`` of it: what an
    analysis feeding the other input zeros must equal (x - 0 = x, 0 - x = -x)."""
    b = NetBuilder(3, (16, 16))
    names = list(inputs)
    x = b.node(combine, names) if combine else names[0]
    x = b.conv_relu(x, 3, 4, 3, "c1")
    x = b.conv_relu(x, 4, 4, 3, "c2")
    graph = helper.make_graph(
        b.nodes, "inputs", [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n, dims in inputs.items()],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", None, None, None])], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def saturating_and_linear_net() -> onnx.ModelProto:
    """Two 1x1 conv layers on the raw image (pixels 0..255, preprocessing ``raw``): ``sat``, the mean of
    R, G, B through Clip(0, 6), at 6 on every photo (all its top activations tie); and ``lin``,
    R - G - 1 with no activation, -1 wherever the image is grey, so its colour index exceeds 1."""
    b = NetBuilder(3, (16, 16))
    ones = b.const(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    sat = b.node("Clip", [b.node("Conv", ["input", ones]), b.const(np.float32(0), "lo"), b.const(np.float32(6), "hi")])
    red_green = b.const(np.array([1, -1, 0], np.float32).reshape(1, 3, 1, 1), "w")
    lin = b.node("Conv", ["input", red_green, b.const(np.array([-1], np.float32), "b")])
    graph = helper.make_graph(
        b.nodes, "planted", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", 1, 16, 16]) for t in (sat, lin)], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
