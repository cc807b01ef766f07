"""ONNX graphs in the shapes other producers emit, built with onnx.helper (random weights, small).

Each builder returns a ``ProducerNet``: the model plus, independently of the code under test, the
conv layers a correct discovery must find (tensor = last node of the chain, the op chain, the
output shape). The graphs mimic what tf2onnx (NHWC input + Transpose, bias as ``Add``, unfolded
``Mul``/``Add`` batch norm), old PyTorch exports (opset 9, weights listed as graph inputs, ``Clip``
with attributes, ``Constant`` nodes) and newer exporters (``HardSwish``, ``x·Sigmoid(x)``,
depthwise and grouped convs, fixed batch with a ``Reshape`` head) produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import UniqueNames


@dataclass(frozen=True)
class ExpectedLayer:
    """A conv layer as the test expects it to be found."""

    tensor: str
    op_chain: tuple[str, ...]
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class ProducerNet:
    """A test model and the layers it holds, in graph order."""

    model: onnx.ModelProto
    layout: str
    input_hw: tuple[int, int]
    batch: int  # fixed batch size of the input, 0 when dynamic
    layers: tuple[ExpectedLayer, ...]


@dataclass
class GraphBuilder(UniqueNames):
    """Appends nodes to a graph and records the expected conv layers; tensors get unique names."""

    opset: int
    seed: int = 0
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    expected: list[ExpectedLayer] = field(default_factory=list)
    _count: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def constant_node(self, value: np.ndarray) -> str:
        """A ``Constant`` node instead of an initializer (older PyTorch exports do this)."""
        out = self.name("const")
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(value))))
        return out

    def node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.name(op), **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int, bias: bool = True, group: int = 1, **attrs) -> str:
        """Conv with He-scaled random weights; ``group`` = ``c_in`` makes it depthwise."""
        w = self.rng.normal(0, np.sqrt(2 / (c_in // group * k * k)), (c_out, c_in // group, k, k)).astype(np.float32)
        inputs = [x, self.const(w, "w")]
        if bias:
            inputs.append(self.const(self.rng.uniform(0.0, 0.3, c_out).astype(np.float32), "b"))
        return self.node("Conv", inputs, group=group, **attrs)

    def batch_norm(self, x: str, c: int) -> str:
        """An unfolded BatchNormalization with non-trivial statistics."""
        scale = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "bn_scale")
        bias = self.const(self.rng.uniform(0.0, 0.5, c).astype(np.float32), "bn_bias")
        mean = self.const(self.rng.normal(0, 0.2, c).astype(np.float32), "bn_mean")
        var = self.const(self.rng.uniform(0.5, 2.0, c).astype(np.float32), "bn_var")
        return self.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-3)

    def channel_const(self, c: int, low: float, high: float, prefix: str) -> str:
        """A per-channel constant broadcast over NCHW (``[1, C, 1, 1]``)."""
        return self.const(self.rng.uniform(low, high, (1, c, 1, 1)).astype(np.float32), prefix)

    def relu6(self, x: str) -> str:
        """``Clip(0, 6)``: min/max attributes before opset 11, inputs from 11 on."""
        if self.opset < 11:
            return self.node("Clip", [x], min=0.0, max=6.0)
        return self.node("Clip", [x, self.const(np.float32(0.0), "min"), self.const(np.float32(6.0), "max")])

    def gated(self, x: str, gate: str, gate_first: bool = False, **attrs) -> str:
        """``x · gate(x)`` as two nodes (SiLU with Sigmoid, hard-swish with HardSigmoid)."""
        g = self.node(gate, [x], **attrs)
        return self.node("Mul", [g, x] if gate_first else [x, g])

    def expect(self, tensor: str, chain: Sequence[str], channels: int, hw: tuple[int, int]) -> None:
        self.expected.append(ExpectedLayer(tensor, tuple(chain), channels, hw[0], hw[1]))

    def build(
        self,
        output: str,
        input_shape: Sequence[int | str],
        layout: str,
        input_hw: tuple[int, int],
        initializers_as_inputs: bool = False,
    ) -> ProducerNet:
        inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(input_shape))]
        if initializers_as_inputs:  # torch.onnx's keep_initializers_as_inputs (the default up to opset 9)
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        graph = helper.make_graph(
            self.nodes, "producer_net", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], self.inits
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx-nfi-tests")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        batch = input_shape[0] if isinstance(input_shape[0], int) else 0
        return ProducerNet(model, layout, input_hw, batch, tuple(self.expected))


def tf2onnx_nhwc_net(opset: int = 13) -> ProducerNet:
    """tf2onnx style: NHWC input transposed to NCHW, conv bias as ``Add``, BN folded into
    ``Mul``+``Add``, ReLU6 as ``Clip``, a depthwise conv, and a Transpose back to NHWC."""
    b = GraphBuilder(opset, seed=1)
    x = b.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    x = b.conv(x, 3, 8, 3, bias=False, strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("Add", [x, b.channel_const(8, 0.0, 0.3, "bias")])
    x = b.node("Relu", [x])
    b.expect(x, ["Conv", "Add", "Relu"], 8, (20, 20))
    x = b.conv(x, 8, 8, 3, group=8, auto_pad="SAME_UPPER")
    x = b.node("Mul", [x, b.channel_const(8, 0.5, 1.5, "bn_mul")])
    x = b.node("Add", [x, b.channel_const(8, 0.0, 0.5, "bn_add")])
    x = b.relu6(x)
    b.expect(x, ["Conv", "Mul", "Add", "Clip"], 8, (20, 20))
    x = b.conv(x, 8, 12, 1, bias=False)
    x = b.node("Add", [x, b.channel_const(12, 0.0, 0.3, "bias")])
    b.expect(x, ["Conv", "Add"], 12, (20, 20))
    x = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    return b.build(x, ["unk__0", 40, 40, 3], "NHWC", (40, 40))


def pytorch_opset9_net() -> ProducerNet:
    """An opset-9 PyTorch export: weights also listed as graph inputs, unfolded BN, ``Clip`` with
    min/max attributes, depthwise and grouped convs, LeakyRelu, PRelu, a ``Constant``-node bias,
    and a pooled ``Flatten``/``Gemm`` classifier head."""
    b = GraphBuilder(9, seed=2)
    x = b.conv("image", 3, 8, 3, bias=False, strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.relu6(b.batch_norm(x, 8))
    b.expect(x, ["Conv", "BatchNormalization", "Clip"], 8, (18, 18))
    x = b.conv(x, 8, 8, 3, bias=False, group=8, pads=[1, 1, 1, 1])
    x = b.node("LeakyRelu", [b.batch_norm(x, 8)], alpha=0.1)
    b.expect(x, ["Conv", "BatchNormalization", "LeakyRelu"], 8, (18, 18))
    x = b.conv(x, 8, 12, 3, group=4, pads=[1, 1, 1, 1])
    x = b.node("PRelu", [x, b.const(b.rng.uniform(0.05, 0.3, (12, 1, 1)).astype(np.float32), "slope")])
    b.expect(x, ["Conv", "PRelu"], 12, (18, 18))
    x = b.conv(x, 12, 16, 3, bias=False, strides=[2, 2])
    x = b.node("Add", [b.constant_node(b.rng.uniform(0, 0.3, (16, 1, 1)).astype(np.float32)), x])
    x = b.node("Relu", [x])
    b.expect(x, ["Conv", "Add", "Relu"], 16, (8, 8))
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    fc_w = b.const(b.rng.normal(0, 0.3, (5, 16)).astype(np.float32), "fc_w")
    logits = b.node("Gemm", [x, fc_w, b.const(np.zeros(5, np.float32), "fc_b")], transB=1)
    return b.build(logits, ["batch", 3, 36, 36], "NCHW", (36, 36), initializers_as_inputs=True)


def opset11_gates_net() -> ProducerNet:
    """Opset 11: ``Clip`` with min/max inputs (and with min only), SiLU as ``Sigmoid`` + ``Mul``,
    hard-swish as ``HardSigmoid`` + ``Mul`` (HardSwish only exists from opset 14) on a depthwise conv."""
    b = GraphBuilder(11, seed=3)
    x = b.conv("image", 3, 8, 3, bias=False, strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.relu6(b.batch_norm(x, 8))
    b.expect(x, ["Conv", "BatchNormalization", "Clip"], 8, (16, 16))
    x = b.gated(b.conv(x, 8, 12, 1), "Sigmoid")
    b.expect(x, ["Conv", "Sigmoid", "Mul"], 12, (16, 16))
    x = b.conv(x, 12, 12, 3, bias=False, group=12, strides=[2, 2], pads=[0, 0, 1, 1])
    x = b.gated(b.batch_norm(x, 12), "HardSigmoid", gate_first=True, alpha=1 / 6, beta=0.5)
    b.expect(x, ["Conv", "BatchNormalization", "HardSigmoid", "Mul"], 12, (8, 8))
    x = b.conv(x, 12, 10, 3, pads=[1, 1, 1, 1])
    x = b.node("Clip", [x, b.const(np.float32(0.0), "min"), ""])
    b.expect(x, ["Conv", "Clip"], 10, (8, 8))
    return b.build(x, ["N", 3, 32, 32], "NCHW", (32, 32))


def modern_net(opset: int) -> ProducerNet:
    """A recent exporter's blocks: Conv+BN+HardSwish, depthwise Conv+BN+SiLU, grouped Conv+PRelu,
    and a plain Conv+Relu (opset ≥ 18 makes the instrumentation use ReduceMax's ``axes`` input)."""
    b = GraphBuilder(opset, seed=4)
    x = b.conv("image", 3, 8, 3, bias=False, strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("HardSwish", [b.batch_norm(x, 8)])
    b.expect(x, ["Conv", "BatchNormalization", "HardSwish"], 8, (14, 15))
    x = b.gated(b.batch_norm(b.conv(x, 8, 8, 3, bias=False, group=8, pads=[1, 1, 1, 1]), 8), "Sigmoid", gate_first=True)
    b.expect(x, ["Conv", "BatchNormalization", "Sigmoid", "Mul"], 8, (14, 15))
    x = b.conv(x, 8, 12, 3, group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("PRelu", [x, b.const(np.full((12, 1, 1), 0.2, np.float32), "slope")])
    b.expect(x, ["Conv", "PRelu"], 12, (7, 8))
    x = b.node("Relu", [b.conv(x, 12, 6, 3)])
    b.expect(x, ["Conv", "Relu"], 6, (5, 6))
    return b.build(x, ["N", 3, 28, 30], "NCHW", (28, 30))


def fixed_batch_net(head: str) -> ProducerNet:
    """Batch fixed to 1 in the input, and a ``Reshape([1, -1])`` or ``Flatten`` head into a Gemm."""
    b = GraphBuilder(13, seed=5)
    x = b.node("Relu", [b.conv("image", 3, 6, 3, strides=[2, 2], pads=[1, 1, 1, 1])])
    b.expect(x, ["Conv", "Relu"], 6, (12, 12))
    x = b.node("Relu", [b.conv(x, 6, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])])
    b.expect(x, ["Conv", "Relu"], 8, (6, 6))
    if head == "reshape":
        flat = b.node("Reshape", [x, b.const(np.array([1, -1], np.int64), "shape")])
    else:
        flat = b.node("Flatten", [x], axis=1)
    fc_w = b.const(b.rng.normal(0, 0.1, (4, 8 * 6 * 6)).astype(np.float32), "fc_w")
    logits = b.node("Gemm", [flat, fc_w], transB=1)
    return b.build(logits, [1, 3, 24, 24], "NCHW", (24, 24))


def no_conv_net() -> ProducerNet:
    """An image model without any Conv (pooling only): nothing for onnx-nfi to analyse."""
    b = GraphBuilder(13)
    x = b.node("MaxPool", ["image"], kernel_shape=[2, 2], strides=[2, 2])
    return b.build(b.node("Relu", [x]), ["N", 3, 16, 16], "NCHW", (16, 16))


def two_input_net() -> onnx.ModelProto:
    """A conv net with a second image input (e.g. a mask) added to the first."""
    b = GraphBuilder(13)
    x = b.node("Add", ["image", "mask"])
    x = b.node("Relu", [b.conv(x, 3, 4, 3)])
    shape = ["N", 3, 16, 16]
    graph = helper.make_graph(
        b.nodes,
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("image", "mask")],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model
