"""The instrumented graph's max and first row-major argmax on maps full of ties (docs/method.md §1-2).

Each conv here is a depthwise 1×1 with weight 1 and bias 0, so its output is the input bit for
bit and the maps are exactly the small integers fed in: many equal maxima in several rows and
columns of a channel, saturated Clip values, ReLU zeros. The expected values are NumPy's over the
maps computed here (``argmax`` of the flattened map returns the first maximum in row-major order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_builders import NetBuilder

from onnx_nfi.graph.instrument import instrument
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.graph.load import load_model
from onnx_nfi.graph.session import Runner

CHANNELS, HW = 3, (6, 9)  # an RGB input: the model loader takes 3 channels


def identity_conv(b: NetBuilder, x: str) -> str:
    """A conv whose output equals its input exactly."""
    w = np.ones((CHANNELS, 1, 1, 1), np.float32)
    return b.node("Conv", [x, b.const(w, "w"), b.const(np.zeros(CHANNELS, np.float32), "b")], group=CHANNELS)


def tie_net(tmp_path: Path) -> Path:
    """input -> conv -> Clip(0, 6) [layer 1] -> conv -> Relu [layer 2] -> conv [layer 3, no activation]."""
    b = NetBuilder(channels=CHANNELS, input_hw=HW)
    clip = b.node("Clip", [identity_conv(b, "input"), b.const(np.array(0, np.float32)), b.const(np.array(6, np.float32))])
    relu = b.relu(identity_conv(b, clip))
    out = identity_conv(b, relu)
    path = tmp_path / "ties.onnx"
    onnx.save(b.build(out).model, path)
    return path


def first_max(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (image, channel): the maximum and the row-major index of its first occurrence."""
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
    return flat.max(axis=2), flat.argmax(axis=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_first_argmax_equals_numpy_on_ties(tmp_path: Path, seed: int) -> None:
    model = load_model(tie_net(tmp_path))
    layers = find_conv_layers(model)
    assert [layer.pre_activation is not None for layer in layers] == [True, True, False]
    proto, outputs = instrument(model, layers)
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 9, size=(4, CHANNELS, *HW)).astype(np.float32)  # values above 6 saturate the Clip
    x[0, 0] = 7.0  # one channel saturated everywhere: its first maximum is at (0, 0)
    got = Runner(proto, "cpu").run(x)
    clip_in = x
    clip_out = np.clip(clip_in, 0, 6)
    relu_out = np.maximum(clip_out, 0)
    expected = {  # layer: (map the location is taken on, the layer's own map)
        layers[0].tensor: (clip_in, clip_out), layers[1].tensor: (clip_out, relu_out), layers[2].tensor: (relu_out, relu_out),
    }
    for tensor, (located, own) in expected.items():
        key, position = first_max(located)
        assert np.array_equal(got[outputs.argmax[tensor]], position), tensor
        assert np.array_equal(got[outputs.max[tensor]], own.reshape(*own.shape[:2], -1).max(axis=2)), tensor
        if tensor in outputs.key:
            assert np.array_equal(got[outputs.key[tensor]], key), tensor
