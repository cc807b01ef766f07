"""``layers --verify-rf``: theoretical (analytic) vs effective (measured) receptive fields.

Constant or sparse weights make a neuron respond to fewer pixels than it can see; that must not be
called an analytic error. A measured pixel outside the analytic window must."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from cli_helpers import invoke
from onnx import numpy_helper
from onnx_builders import NetBuilder
from rf_fit import fit_receptive_field

from onnx_nfi.graph.load import load_model
from onnx_nfi.graph.model_layers import model_layers
from onnx_nfi.graph.receptive_field import clipped_windows
from onnx_nfi.graph.rf_probe import measure_windows, outside_windows


def centre_tap_net() -> onnx.ModelProto:
    """Two 5x5 convs whose weights are zero except the centre tap: theoretical RF 9x9, effective 1x1."""
    b = NetBuilder(3, (20, 20))
    x = b.conv_relu("input", 3, 4, 5, "c1")
    x = b.conv_relu(x, 4, 4, 5, "c2")
    model = b.build(x).model
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 4:
            sparse = np.zeros_like(w)
            sparse[:, :, 2, 2] = np.abs(w[:, :, 2, 2]) + 0.1
            init.CopyFrom(numpy_helper.from_array(sparse, init.name))
    return model


def test_effective_field_smaller_than_theoretical_passes(tmp_path: Path) -> None:
    path = tmp_path / "centre.onnx"
    onnx.save(centre_tap_net(), path)
    result = invoke("layers", path, "--verify-rf", "--preprocess", "raw")
    assert result.exit_code == 0, result.output
    assert "9x9" in result.stdout  # the analytic (theoretical) field of conv2
    assert "Receptive fields verified empirically for all 2 layers." in result.stdout
    assert "Effective fields smaller than the theoretical ones" in result.stdout and "conv1, conv2" in result.stdout


def test_planted_wrong_field_fails(tmp_path: Path) -> None:
    path = tmp_path / "centre.onnx"
    onnx.save(centre_tap_net(), path)
    lm = load_model(path)
    info = model_layers(lm)[0]  # conv1: a 5x5 field, measured 1x1 at its centre
    hw, out_hw = (20, 20), (info.layer.height, info.layer.width)
    # one pass, as `layers --verify-rf` makes
    measured = measure_windows(lm.proto, lm.input.name, hw, "NCHW", [info.layer.tensor], passes=1)[info.layer.tensor]
    # independent expectation: output i sees input pixel i + 2 only
    expected = np.stack([np.arange(16) + 2, np.arange(16) + 3], axis=1)
    assert np.array_equal(measured[0], expected) and np.array_equal(measured[1], expected)
    right = clipped_windows(info.rf, hw, out_hw)
    assert outside_windows(right, measured) == ([], True)
    # a planted wrong field: 3 pixels wide, shifted by 2: the centre pixel falls outside
    wrong = clipped_windows(replace(info.rf, size=(3, 3), offset=(3, 3)), hw, out_hw)
    problems, _ = outside_windows(wrong, measured)
    assert problems[0] == "y[0]: measured [2, 3) reaches outside the analytic [3, 6)"
    assert len(problems) == 2 * 16


def test_global_pool_output_graph_verifies(tmp_path: Path) -> None:
    b = NetBuilder(3, (20, 20))
    x = b.conv_relu(b.conv_relu("input", 3, 4, 3, "c1"), 4, 4, 3, "c2")
    path = tmp_path / "gap.onnx"
    onnx.save(b.build(b.node("GlobalAveragePool", [x])).model, path)
    result = invoke("layers", path, "--verify-rf", "--preprocess", "raw")
    assert result.exit_code == 0, result.output
    assert "Receptive fields verified empirically for all 2 layers." in result.stdout


def constant_stack_net(layers: int = 14, k: int = 7, size: int = 48) -> onnx.ModelProto:
    """A stack of ``k``x``k`` convs whose weights are all one, bias zero, one channel after the first: the pattern
    of constant-weight models (the onnx package's light Inception-v1). A border row of a deep window
    reaches the neuron along one path of the ``k^layers`` per axis, so its float32 contribution sinks
    below the rounding of the neuron's value."""
    b = NetBuilder(3, (size, size))
    x = "input"
    for n in range(layers):
        x = b.conv_relu(x, 3 if n == 0 else 1, 1, k, f"c{n}", pads=[k // 2] * 4)
    model = b.build(x).model
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ones_like(w) if w.ndim == 4 else np.zeros_like(w), init.name))
    return model


def box_stack_float64(image: np.ndarray, layers: int, k: int) -> np.ndarray:
    """The same stack in float64 on a ``(3, H, W)`` image, from shifted sums: independent of
    onnxruntime and of the walk (the first layer's box of the channel sum is the sum of their boxes)."""
    x = image.astype(np.float64).sum(axis=0)
    for _ in range(layers):
        padded = np.pad(x, k // 2)
        x = sum(padded[dy : dy + x.shape[0], dx : dx + x.shape[1]] for dy in range(k) for dx in range(k))
    return x


def test_float32_rounding_shrinks_windows_unevenly_without_failing_the_check(tmp_path: Path) -> None:
    """Inception-v1 with constant weights: measured windows of its deep layers are 1-10 pixels
    smaller than the analytic ones, by different amounts per index. A linear field fitted to them
    is no field at all (the comparison of fitted fields reported three layers as wrong); per index,
    nothing lies outside the analytic window, and in float64 the missing rows do reach the neuron."""
    model = constant_stack_net()
    path = tmp_path / "stack.onnx"
    onnx.save(model, path)
    lm = load_model(path)
    info = model_layers(lm)[-1]  # conv14: 1 + 14·6 = 85 rows, more than the image
    hw, out_hw = (48, 48), (info.layer.height, info.layer.width)
    assert info.rf.size == (85, 85)
    measured = measure_windows(lm.proto, lm.input.name, hw, "NCHW", [info.layer.tensor], passes=1)[info.layer.tensor]
    analytic = clipped_windows(info.rf, hw, out_hw)
    assert outside_windows(analytic, measured) == ([], True)
    assert fit_receptive_field(measured, hw) != info.rf  # uneven shrinking: the fitted "field" is not the network's
    # the last output row: the analytic window starts 42 rows above it, the measured one later
    (first, _), (seen, _) = analytic[0][-1], measured[0][-1]
    assert first == 47 - 42 < seen
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (3, *hw))
    moved = base.copy()
    moved[:, first] += rng.uniform(0.5, 1, (3, hw[1]))
    before, after = box_stack_float64(base, 14, 7)[-1], box_stack_float64(moved, 14, 7)[-1]
    change = np.abs(after - before) / before
    assert (change > 0).all()  # the row is in the window: the analytic field is right
    assert change.max() < 2.0**-23  # but moves the value by less than one float32 step
    result = invoke("layers", path, "--verify-rf", "--preprocess", "raw")
    assert result.exit_code == 0, result.output
    assert "Receptive fields verified empirically for all 14 layers." in result.stdout
    assert "conv14" in result.stdout.split("Effective fields smaller")[1]
