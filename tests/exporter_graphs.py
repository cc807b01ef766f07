"""Small graphs written the way real exporters write them, for the layer-discovery tests.

Each builder reproduces the node patterns of one exporter (tiny widths, random weights): Paddle2ONNX's
spelled-out hard-swish and squeeze-excitation with an unfolded bias, the TorchScript exporter's
Erf/tanh GELU (ConvNeXt's conv MLP), timm's MixNet mixed kernels (Split → convs → Concat → BN →
SiLU), and the classic PyTorch exporter's computed ``Pad`` in front of TF-"same" convs
(EfficientNet-Lite ports). ``python tests/exporter_graphs.py`` writes them to tests/exporter_models/,
where they are committed; the tests read the committed files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_builders import NetBuilder

FOLDER = Path(__file__).parent / "exporter_models"


def _bn(b: NetBuilder, x: str, c: int) -> str:
    """BatchNormalization with random statistics (scale around 1)."""
    rng = b.rng
    return b.node("BatchNormalization", [
        x, b.const(rng.uniform(0.5, 1.5, c).astype(np.float32)), b.const(rng.normal(0, 0.2, c).astype(np.float32)),
        b.const(rng.normal(0, 0.2, c).astype(np.float32)), b.const(rng.uniform(0.5, 1.5, c).astype(np.float32)),
    ])


def _scalar(b: NetBuilder, value: float) -> str:
    return b.const(np.array(value, np.float32), "s")


def hardswish_paddle(b: NetBuilder, x: str) -> str:
    """Paddle2ONNX's hard_swish: ``x · Clip(x + 3, 0, 6) / 6``."""
    clip = b.node("Clip", [b.node("Add", [x, _scalar(b, 3.0)]), _scalar(b, 0.0), _scalar(b, 6.0)])
    return b.node("Div", [b.node("Mul", [x, clip]), _scalar(b, 6.0)])


def hardsigmoid_decomposed(b: NetBuilder, x: str) -> str:
    """``Clip(x + 3, 0, 6) / 6`` (torch's hardsigmoid written out)."""
    clip = b.node("Clip", [b.node("Add", [x, _scalar(b, 3.0)]), _scalar(b, 0.0), _scalar(b, 6.0)])
    return b.node("Div", [clip, _scalar(b, 6.0)])


def relu6_min_max(b: NetBuilder, x: str) -> str:
    """``Min(Max(x, 0), 6)`` (TensorFlow's relu6 through tf2onnx)."""
    return b.node("Min", [b.node("Max", [x, _scalar(b, 0.0)]), _scalar(b, 6.0)])


def gelu_erf(b: NetBuilder, x: str) -> str:
    """TorchScript's GELU below opset 20: ``(x · (Erf(x / √2) + 1)) · 0.5``."""
    erf = b.node("Erf", [b.node("Div", [x, _scalar(b, 1.4142135381698608)])])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [erf, _scalar(b, 1.0)])]), _scalar(b, 0.5)])


def gelu_erf_tf(b: NetBuilder, x: str) -> str:
    """tf2onnx's GELU: ``x · (0.5 · (1 + Erf(x · 0.7071)))``."""
    erf = b.node("Erf", [b.node("Mul", [x, _scalar(b, 0.7071067690849304)])])
    half = b.node("Mul", [_scalar(b, 0.5), b.node("Add", [_scalar(b, 1.0), erf])])
    return b.node("Mul", [x, half])


def gelu_tanh(b: NetBuilder, x: str) -> str:
    """GELU's tanh approximation as exported: ``0.5·x·(1 + Tanh(√(2/π)·(x + 0.044715·x³)))`` with ``Pow``."""
    cube = b.node("Mul", [b.node("Pow", [x, _scalar(b, 3.0)]), _scalar(b, 0.044715)])
    inner = b.node("Mul", [b.node("Add", [x, cube]), _scalar(b, 0.7978845834732056)])
    one_plus = b.node("Add", [b.node("Tanh", [inner]), _scalar(b, 1.0)])
    return b.node("Mul", [b.node("Mul", [x, _scalar(b, 0.5)]), one_plus])


def mish(b: NetBuilder, x: str) -> str:
    """``x · Tanh(Softplus(x))`` (torch's Mish below opset 18)."""
    return b.node("Mul", [x, b.node("Tanh", [b.node("Softplus", [x])])])


def silu_swapped(b: NetBuilder, x: str) -> str:
    """``Sigmoid(x) · x`` (SiLU with the operands the other way round)."""
    return b.node("Mul", [b.node("Sigmoid", [x]), x])


#: Spelled-out activations and the fused op (with its attributes and opset) each one equals.
SPELLED = {
    "hardswish_paddle": (hardswish_paddle, "HardSwish", {}, 14),
    "hardsigmoid_decomposed": (hardsigmoid_decomposed, "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, 14),
    "relu6_min_max": (relu6_min_max, "Clip6", {}, 14),
    "gelu_erf": (gelu_erf, "Gelu", {}, 20),
    "gelu_erf_tf": (gelu_erf_tf, "Gelu", {}, 20),
    "gelu_tanh": (gelu_tanh, "Gelu", {"approximate": "tanh"}, 20),
    "mish": (mish, "Mish", {}, 18),
    "silu_swapped": (silu_swapped, "Silu", {}, 14),
}


def paddle_block() -> onnx.ModelProto:
    """PaddleOCR-style block: Conv→BN→hard-swish (spelled out), depthwise Conv→BN→``x·HardSigmoid(x)``,
    squeeze-excitation whose convs add their bias through ``Unsqueeze``/``Reshape``, a projection
    Conv→BN, and a Conv→BN→``Min(Max(x, 0), 6)``."""
    b = NetBuilder(channels=3, input_hw=(32, 32), opset=13, seed=1)
    x = hardswish_paddle(b, _bn(b, b.conv("input", 3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1]), 8))
    hs = b.node("HardSigmoid", [d := _bn(b, b.conv(x, 8, 8, 3, group=8, pads=[1, 1, 1, 1]), 8)], alpha=0.2, beta=0.5)
    x = b.node("Mul", [d, hs])
    pooled = b.node("GlobalAveragePool", [x])
    bias1 = b.node("Unsqueeze", [b.const(np.full(4, 0.2, np.float32)), b.const(np.array([1, 2], np.int64))])
    w1 = b.const(b.rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32), "w")
    r = b.node("Relu", [b.node("Add", [b.node("Conv", [pooled, w1]), bias1])])
    bias2 = b.node("Reshape", [b.const(np.full(8, 0.1, np.float32)), b.const(np.array([1, 8, 1, 1], np.int64))])
    w2 = b.const(b.rng.normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32), "w")
    gate = b.node("HardSigmoid", [b.node("Add", [b.node("Conv", [r, w2]), bias2])], alpha=0.2, beta=0.5)
    x = b.node("Mul", [x, gate])
    x = _bn(b, b.conv(x, 8, 6, 1), 6)
    x = relu6_min_max(b, _bn(b, b.conv(x, 6, 6, 3, pads=[1, 1, 1, 1]), 6))
    return b.build(x).model


def convnext_block() -> onnx.ModelProto:
    """ConvNeXt-style conv MLP (TorchScript, opset 17): stem Conv 4×4/4, depthwise 7×7, 1×1 → Erf-GELU
    → 1×1 and a residual; then 1×1 convs ending in tf2onnx's Erf GELU, tanh GELU, Mish, ``σ(x)·x``."""
    b = NetBuilder(channels=3, input_hw=(32, 32), opset=17, seed=2)
    stem = b.conv("input", 3, 8, 4, strides=[4, 4])
    x = b.conv(stem, 8, 8, 7, group=8, pads=[3, 3, 3, 3])
    x = b.conv(gelu_erf(b, b.conv(x, 8, 16, 1)), 16, 8, 1)
    x = b.node("Add", [stem, b.node("Mul", [x, b.const(np.full((8, 1, 1), 0.5, np.float32))])])
    for act in (gelu_erf_tf, gelu_tanh, mish, silu_swapped):
        x = act(b, b.conv(x, 8, 8, 1))
    return b.build(x).model


def mixnet_block() -> onnx.ModelProto:
    """timm MixNet-style mixed kernels: stem Conv→BN→SiLU; Split in two → depthwise 3×3 and 5×5 →
    Concat → BN → SiLU; Split in two → 1×1 convs (grouped pointwise) → Concat → BN; again a 3×3/7×7
    mixed depthwise → Concat → BN → ReLU."""
    b = NetBuilder(channels=3, input_hw=(40, 40), opset=13, seed=3)

    def silu(x: str) -> str:
        return b.node("Mul", [x, b.node("Sigmoid", [x])])

    def mixed(x: str, kernels: tuple[int, int], channels: int, pointwise: bool = False) -> str:
        half = channels // 2
        parts = b.node("Split", [x, b.const(np.array([half, half], np.int64))], n_outputs=2, axis=1)
        outs = [
            b.conv(p, half, half, 1) if pointwise else b.conv(p, half, half, k, group=half, pads=[k // 2] * 4)
            for p, k in zip(parts, kernels)
        ]
        return b.node("Concat", outs, axis=1)

    x = silu(_bn(b, b.conv("input", 3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1]), 8))
    x = silu(_bn(b, mixed(x, (3, 5), 8), 8))
    x = _bn(b, mixed(x, (1, 1), 8, pointwise=True), 8)
    x = b.node("Relu", [_bn(b, mixed(x, (3, 7), 8), 8)])
    return b.build(x).model


def _torch_pads(b: NetBuilder, left: int, right: int, top: int, bottom: int) -> str:
    """The classic exporter's pads for ``F.pad(x, [left, right, top, bottom])`` (opset 11+): a program over
    constants that ONNX shape inference does not run."""
    pad = b.const(np.array([left, right, top, bottom], np.int64), "pad")
    pad_len = b.node("Gather", [b.node("Shape", [pad]), b.const(np.array(0, np.int64))], axis=0)
    extension = b.node("Sub", [b.const(np.array(8, np.int64)), pad_len])
    zeros = b.node("ConstantOfShape", [b.node("Unsqueeze", [extension, b.const(np.array([0], np.int64))])],
                   value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    pairs = b.node("Reshape", [b.node("Concat", [pad, zeros], axis=0), b.const(np.array([-1, 2], np.int64))])
    reverse = b.node("Slice", [pairs, *(b.const(np.array([v], np.int64)) for v in (-1, -(2**63) + 1, 0, -1))])
    flat = b.node("Reshape", [b.node("Transpose", [reverse], perm=[1, 0]), b.const(np.array([-1], np.int64))])
    return b.node("Cast", [flat], to=TensorProto.INT64)


def tf_same_classic() -> onnx.ModelProto:
    """An EfficientNet-Lite port with TF-"same" padding, exported by ``torch.onnx.export(dynamo=False)``:
    every padded conv follows a ``Pad`` whose pads are computed (32×32 input, opset 13)."""
    b = NetBuilder(channels=3, input_hw=(32, 32), opset=13, seed=4)

    def padded(x: str, pads: tuple[int, int, int, int], *conv) -> str:  # noqa: ANN002
        value = b.const(np.array(0.0, np.float32))
        return b.conv(b.node("Pad", [x, _torch_pads(b, *pads), value], mode="constant"), *conv[:3], **conv[3])

    x = b.node("Clip", [_bn(b, padded("input", (0, 1, 0, 1), 3, 8, 3, {"strides": [2, 2]}), 8),
                        _scalar(b, 0.0), _scalar(b, 6.0)])
    x = b.node("Clip", [_bn(b, padded(x, (1, 1, 1, 1), 8, 8, 3, {"group": 8}), 8), _scalar(b, 0.0), _scalar(b, 6.0)])
    x = _bn(b, b.conv(x, 8, 8, 1), 8)
    x = b.node("Relu", [padded(x, (1, 2, 1, 2), 8, 8, 5, {"group": 8, "strides": [2, 2]})])
    return b.build(x).model


def _timm_same_pads(b: NetBuilder, x: str, k: int, s: int) -> str:
    """timm's ``Conv2dSame`` pads as the classic exporter writes them with a dynamic batch: from
    ``Shape(x)``, per axis ``p = max((ceil(n / s) − 1)·s + k − n, 0)``, ``p // 2`` before, the rest after."""
    shape = b.node("Shape", [x])
    before, after = [], []
    for axis in (2, 3):
        n = b.node("Cast", [b.node("Gather", [shape, b.const(np.array(axis, np.int64))], axis=0)], to=TensorProto.FLOAT)
        steps = b.node("Sub", [b.node("Ceil", [b.node("Div", [n, _scalar(b, float(s))])]), _scalar(b, 1.0)])
        total = b.node("Sub", [b.node("Add", [b.node("Mul", [steps, _scalar(b, float(s))]), _scalar(b, float(k))]), n])
        total = b.node("Max", [total, _scalar(b, 0.0)])
        first = b.node("Floor", [b.node("Div", [total, _scalar(b, 2.0)])])
        before.append(first)
        after.append(b.node("Sub", [total, first]))
    zero = _scalar(b, 0.0)
    flat = [b.node("Unsqueeze", [t, b.const(np.array([0], np.int64))]) for t in (zero, zero, *before, zero, zero, *after)]
    return b.node("Cast", [b.node("Concat", flat, axis=0)], to=TensorProto.INT64)


def tf_same_dynamic() -> onnx.ModelProto:
    """timm's TF ports (``tf_efficientnet_*``, ``tf_mixnet_*``) by the classic exporter with a dynamic
    batch: each pad is computed from the size of the tensor before it (32×32 input, opset 13)."""
    b = NetBuilder(channels=3, input_hw=(32, 32), opset=13, seed=5)

    def same(x: str, c_in: int, c_out: int, k: int, s: int, group: int = 1) -> str:
        padded = b.node("Pad", [x, _timm_same_pads(b, x, k, s), b.const(np.array(0.0, np.float32))])
        return b.node("Relu", [b.conv(padded, c_in, c_out, k, strides=[s, s], group=group)])

    return b.build(same(same(same("input", 3, 8, 3, 2), 8, 8, 3, 1, group=8), 8, 8, 5, 2, group=8)).model


#: The committed graphs, by file name.
GRAPHS = {
    "paddle_block.onnx": paddle_block,
    "convnext_block.onnx": convnext_block,
    "mixnet_block.onnx": mixnet_block,
    "tf_same_classic.onnx": tf_same_classic,
    "tf_same_dynamic.onnx": tf_same_dynamic,
}


def main(folder: Path = FOLDER) -> None:
    """Write every graph of ``GRAPHS`` to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in GRAPHS.items():
        onnx.save(build(), str(folder / name))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER)
