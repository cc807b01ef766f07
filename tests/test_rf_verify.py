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
    measured = measure_windows(lm.proto, lm.input.name, hw, "NCHW", [info.layer.tensor])[info.layer.tensor]
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
