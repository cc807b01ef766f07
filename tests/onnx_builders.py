"""Small ONNX graphs built with onnx.helper, random weights, for tests of graph-level code.

``NetBuilder`` appends nodes to one graph and names every tensor; the ``*_net`` functions build the
nets of the receptive-field tests and return a ``BuiltNet`` with the layer tensors a test checks.
Weights have a small positive bias so that ReLUs do not silence most of a random net.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class BuiltNet:
    """A test model and what a test needs to know about it."""

    model: onnx.ModelProto
    input_name: str
    input_hw: tuple[int, int]
    layout: str
    layers: dict[str, str]  # alias -> tensor name, in graph order


class UniqueNames:
    """Unique tensor names and initializers for a graph under construction (the class has ``inits`` and ``_count``)."""

    inits: list[onnx.TensorProto]
    _count: int

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name


@dataclass
class NetBuilder(UniqueNames):
    """Appends nodes to a graph whose input is ``input`` (NCHW unless ``layout='NHWC'``)."""

    channels: int
    input_hw: tuple[int, int]
    layout: str = "NCHW"
    opset: int = 17
    seed: int = 0
    dynamic_batch: bool = True
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)
    _count: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def node(self, op: str, inputs: Sequence[str], n_outputs: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op), **attrs))
        return outs[0] if n_outputs == 1 else outs

    def conv(self, x: str, c_in: int, c_out: int, k: int | tuple[int, int], alias: str | None = None, **attrs) -> str:
        """Conv with He-scaled random weights and bias 0.1; ``alias`` records the tensor as a layer."""
        kh, kw = (k, k) if isinstance(k, int) else k
        group = attrs.get("group", 1)
        fan_in = c_in // group * kh * kw
        w = self.rng.normal(0, np.sqrt(2 / fan_in), (c_out, c_in // group, kh, kw)).astype(np.float32)
        b = np.full(c_out, 0.1, np.float32)
        out = self.node("Conv", [x, self.const(w, "w"), self.const(b, "b")], **attrs)
        if alias:
            self.layers[alias] = out
        return out

    def relu(self, x: str, alias: str | None = None) -> str:
        out = self.node("Relu", [x])
        if alias:
            self.layers[alias] = out
        return out

    def conv_relu(self, x: str, c_in: int, c_out: int, k: int | tuple[int, int], alias: str, **attrs) -> str:
        """A conv layer read after its non-linearity, as docs/method.md §1 defines a layer."""
        return self.relu(self.conv(x, c_in, c_out, k, **attrs), alias)

    def build(self, output: str, alias: str | None = None) -> BuiltNet:
        h, w = self.input_hw
        batch = "N" if self.dynamic_batch else 1
        shape = [batch, self.channels, h, w] if self.layout == "NCHW" else [batch, h, w, self.channels]
        graph = helper.make_graph(
            self.nodes,
            "test_net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)  # gives the output its shape
        onnx.checker.check_model(model)
        layers = dict(self.layers)
        if alias:
            layers[alias] = output
        return BuiltNet(model, "input", self.input_hw, self.layout, layers)


def vgg_m_like_net(input_hw: tuple[int, int] = (224, 224)) -> BuiltNet:
    """VGG-M's conv body (Chatfield et al. 2014) with few channels: RFs 7, 27, 75, 107, 139 at 224."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 8, 7, "conv1", strides=[2, 2])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    x = b.conv_relu(x, 8, 8, 5, "conv2", strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    x = b.conv_relu(x, 8, 8, 3, "conv3", pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 8, 8, 3, "conv4", pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 8, 8, 3, "conv5", pads=[1, 1, 1, 1])
    return b.build(x)


def resnet_like_net(input_hw: tuple[int, int] = (61, 58)) -> BuiltNet:
    """SAME_UPPER strided convs with even and odd kernels, a max pool, a residual block whose
    strided 1x1 shortcut is joined by Add; odd sizes make the SAME pads asymmetric."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 6, 4, "stem", strides=[2, 2], auto_pad="SAME_UPPER")
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    b.layers["pool"] = x
    y = b.conv_relu(x, 6, 8, 3, "block_a", strides=[2, 2], auto_pad="SAME_UPPER")
    y = b.conv(y, 8, 8, 2, "block_b", auto_pad="SAME_LOWER")
    shortcut = b.conv(x, 6, 8, 1, "shortcut", strides=[2, 2])
    s = b.relu(b.node("Add", [y, shortcut]), "block_out")
    s = b.conv_relu(s, 8, 8, (2, 3), "head", strides=[2, 1], auto_pad="SAME_UPPER")
    return b.build(s)


def dilated_net(input_hw: tuple[int, int] = (48, 40)) -> BuiltNet:
    """Convs with dilation 2 and 3 (the RF grows by (k−1)·d·j), one of them strided."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 6, 3, "conv1", dilations=[2, 2], pads=[2, 2, 2, 2])
    x = b.conv_relu(x, 6, 6, 3, "conv2", strides=[2, 2], dilations=[3, 3])
    x = b.conv_relu(x, 6, 6, 3, "conv3", dilations=[2, 3], pads=[1, 0, 1, 0])
    return b.build(x)


def pad_node_net(opset: int, input_hw: tuple[int, int] = (40, 36)) -> BuiltNet:
    """Asymmetric zero padding by a Pad node (pads input from opset 11, attribute before) and a
    reflect Pad, each followed by a strided valid conv."""
    b = NetBuilder(3, input_hw, opset=opset)

    def pad(x: str, pads: list[int], mode: str = "constant") -> str:
        if opset >= 11:
            return b.node("Pad", [x, b.const(np.array(pads, np.int64), "pads")], mode=mode)
        return b.node("Pad", [x], pads=pads, mode=mode)

    x = pad("input", [0, 0, 3, 1, 0, 0, 0, 2])
    x = b.conv_relu(x, 3, 6, 3, "conv1", strides=[2, 2])
    x = pad(x, [0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")
    x = b.conv_relu(x, 6, 6, 4, "conv2", strides=[2, 2])
    return b.build(x)


def nhwc_net(input_hw: tuple[int, int] = (36, 44)) -> BuiltNet:
    """An NHWC input transposed to NCHW right away (as tf2onnx does), and back at the end."""
    b = NetBuilder(3, input_hw, layout="NHWC")
    x = b.node("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = b.conv_relu(x, 3, 6, 3, "conv1", strides=[2, 2], auto_pad="SAME_UPPER")
    x = b.conv_relu(x, 6, 6, 5, "conv2", strides=[2, 2], auto_pad="SAME_UPPER")
    x = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    return b.build(x, alias="conv2_nhwc")


def resize_net(input_hw: tuple[int, int] = (48, 44)) -> BuiltNet:
    """An FPN-like decoder: two stride-2 convs, nearest Resize ×2 (scales input), convs after it."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 6, 3, "conv1", strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 6, 6, 3, "conv2", strides=[2, 2], pads=[1, 1, 1, 1])
    empty = b.const(np.zeros(0, np.float32), "roi")
    x = b.node("Resize", [x, empty, b.const(np.array([1, 1, 2, 2], np.float32), "scales")], mode="nearest")
    b.layers["up"] = x
    x = b.conv_relu(x, 6, 6, 3, "conv3", pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 6, 6, 3, "conv4", strides=[2, 2], pads=[1, 1, 1, 1])
    return b.build(x)


def gap_gemm_net(input_hw: tuple[int, int] = (32, 32), classes: int = 5) -> BuiltNet:
    """Conv layers, GlobalAveragePool, Flatten, Gemm: the pooled and class tensors are global."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 6, 3, "conv1", strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 6, 8, 3, "conv2", strides=[2, 2], pads=[1, 1, 1, 1])
    pooled = b.node("GlobalAveragePool", [x])
    b.layers["pool"] = pooled
    flat = b.node("Flatten", [pooled])
    w = b.const(b.rng.normal(0, 0.3, (classes, 8)).astype(np.float32), "fc_w")
    logits = b.node("Gemm", [flat, w, b.const(np.zeros(classes, np.float32), "fc_b")], transB=1)
    return b.build(logits, alias="logits")


def se_net(input_hw: tuple[int, int] = (40, 40)) -> BuiltNet:
    """A squeeze-excitation block (GlobalAveragePool → 1x1 conv → ReLU → 1x1 conv → Sigmoid → Mul
    with the feature map) between two conv layers, as in EfficientNet-B0 and MobileNetV3."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 8, 3, "conv1", strides=[2, 2], pads=[1, 1, 1, 1])
    squeeze = b.node("GlobalAveragePool", [x])
    gate = b.relu(b.conv(squeeze, 8, 4, 1))
    gate = b.node("Sigmoid", [b.conv(gate, 4, 8, 1)])
    x = b.node("Mul", [x, gate])
    b.layers["se"] = x
    x = b.conv_relu(x, 8, 8, 3, "conv2", strides=[2, 2], pads=[1, 1, 1, 1])
    return b.build(x)


def upsample_input_net(
    mode: str = "nearest", coordinates: str = "half_pixel", input_hw: tuple[int, int] = (30, 26)
) -> BuiltNet:
    """Resize ×2 of the input itself (jump 1/2: windows repeat in pairs), then convs back to stride 2."""
    b = NetBuilder(3, input_hw)
    roi = b.const(np.zeros(0, np.float32), "roi")
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    x = b.node("Resize", ["input", roi, scales], mode=mode, coordinate_transformation_mode=coordinates)
    b.layers["up"] = x
    x = b.conv_relu(x, 3, 6, 3, "conv1", pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 6, 6, 3, "conv2", strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.conv_relu(x, 6, 6, 3, "conv3", strides=[2, 2], pads=[1, 1, 1, 1])
    return b.build(x)


def conv_transpose_net(input_hw: tuple[int, int] = (32, 28)) -> BuiltNet:
    """A strided conv undone by a 4x4 stride-2 ConvTranspose, then a conv."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 6, 3, "conv1", strides=[2, 2], pads=[1, 1, 1, 1])
    w = b.const(b.rng.normal(0, 0.3, (6, 6, 4, 4)).astype(np.float32), "w")
    x = b.node("ConvTranspose", [x, w], strides=[2, 2], pads=[1, 1, 1, 1])
    b.layers["deconv"] = x
    x = b.conv_relu(x, 6, 6, 3, "conv2", pads=[1, 1, 1, 1])
    return b.build(x)


def space_depth_slice_net(input_hw: tuple[int, int] = (32, 28)) -> BuiltNet:
    """DepthToSpace, SpaceToDepth and a strided Slice (start 1 on y, start 2 step 2 on x)."""
    b = NetBuilder(3, input_hw)
    x = b.conv_relu("input", 3, 8, 3, "conv1", strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("DepthToSpace", [x], blocksize=2)
    b.layers["depth_to_space"] = x
    x = b.conv_relu(x, 2, 4, 3, "conv2", pads=[1, 1, 1, 1])
    x = b.node("SpaceToDepth", [x], blocksize=2)
    b.layers["space_to_depth"] = x
    starts, ends, axes, steps = ([1, 2], [100, -1], [2, 3], [1, 2])
    x = b.node("Slice", [x] + [b.const(np.array(v, np.int64), "slice") for v in (starts, ends, axes, steps)])
    b.layers["slice"] = x
    x = b.conv_relu(x, 16, 4, 3, "conv3", pads=[1, 1, 1, 1])
    return b.build(x)


def fixed_batch_head_net(input_hw: tuple[int, int] = (24, 24)) -> BuiltNet:
    """Batch fixed to 1 and a Reshape to ``[1, -1]`` before Gemm: cannot run batched."""
    b = NetBuilder(3, input_hw, dynamic_batch=False)
    x = b.conv_relu("input", 3, 4, 3, "conv1", strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("Shrink", [x], lambd=0.05)  # an op the receptive-field walk does not know: point-wise
    b.layers["shrink"] = x
    flat = b.node("Reshape", [x, b.const(np.array([1, -1], np.int64), "shape")])
    w = b.const(b.rng.normal(0, 0.1, (3, 4 * 12 * 12)).astype(np.float32), "fc_w")
    logits = b.node("Gemm", [flat, w], transB=1)
    return b.build(logits, alias="logits")
