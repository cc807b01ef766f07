"""Analytic receptive fields (docs/method.md §3) against the empirical probe and hand computations.

Every net is checked twice: the linear fields (size, stride, offset) must give the same clipped
windows as the field fitted to the probe (``compare``), and the exact per-index spans of the walk
must equal the measured ones (``compare_windows``), which also covers border effects.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_nfi.errors import LayerError, ModelError
from onnx_nfi.graph.receptive_field import ReceptiveField, clipped_windows
from onnx_nfi.graph.rf_probe import measure_windows
from onnx_nfi.graph.rf_walk import receptive_fields, trace_graph
from tests import onnx_builders as nets
from tests.rf_fit import compare_windows, fit_receptive_field

LITE0 = Path(__file__).resolve().parents[1] / "models" / "efficientnet_lite0.onnx"


def compare(analytic: ReceptiveField, measured: ReceptiveField, input_hw, out_hw) -> list[str]:
    """Differences of two fields' clipped windows at every output index; ``[]`` when they agree."""
    return compare_windows(clipped_windows(analytic, input_hw, out_hw), clipped_windows(measured, input_hw, out_hw))


def assert_analytic_matches_probe(net: nets.BuiltNet, **probe_options) -> dict[str, ReceptiveField]:
    """Both checks for every layer of ``net``; returns the analytic fields by alias."""
    names = list(net.layers.values())
    trace = trace_graph(net.model, net.input_name, net.input_hw, net.layout)
    analytic = receptive_fields(net.model, net.input_name, net.input_hw, net.layout, names)
    measured = measure_windows(net.model, net.input_name, net.input_hw, net.layout, names, **probe_options)
    for alias, name in net.layers.items():
        fitted = fit_receptive_field(measured[name], net.input_hw)
        assert compare(analytic[name], fitted, net.input_hw, trace.out_hw(name)) == [], alias
        assert compare_windows(trace.windows(name), measured[name]) == [], alias
    return {alias: analytic[name] for alias, name in net.layers.items()}


def test_vgg_m_sizes_are_the_published_ones_and_match_the_probe():
    fields = assert_analytic_matches_probe(nets.vgg_m_like_net())
    sizes = [fields[f"conv{k}"].size for k in range(1, 6)]
    assert sizes == [(7, 7), (27, 27), (75, 75), (107, 107), (139, 139)]
    assert [fields[f"conv{k}"].stride for k in range(1, 6)] == [(2, 2), (8, 8), (16, 16), (16, 16), (16, 16)]
    # o = −(pad·j summed): conv2's pad 1 at j = 4, then conv3…conv5's pad 1 at j = 16
    assert fields["conv5"].offset == (-52, -52)
    assert fields["conv5"].window(0, 0) == (-52, -52, 87, 87)  # unclipped
    assert fields["conv5"].window(11, 2) == (124, -20, 263, 119)


def test_vgg_m_windows_stop_where_the_network_stops_reading():
    """conv1 (7x7, stride 2, no pad) never reads row 223 of a 224 image, and conv3's bottom pad
    stands where rows 215… would be: the last windows really end at 215, not at the image border."""
    net = nets.vgg_m_like_net()
    trace = trace_graph(net.model, net.input_name, net.input_hw, net.layout)
    seen_y, _ = trace.windows(net.layers["conv5"])  # measured by the probe in the test above
    assert seen_y[-1].tolist() == [124, 215]
    conv5 = net.layers["conv5"]
    clipped_y, _ = clipped_windows(trace.receptive_field(conv5), (224, 224), trace.out_hw(conv5))
    assert clipped_y[-1].tolist() == [124, 224]


def test_resnet_same_padding_and_residual_add():
    fields = assert_analytic_matches_probe(nets.resnet_like_net())
    # stem: 61 rows, k4 s2 SAME_UPPER → 31 out, total pad 30·2 + 4 − 61 = 3, leading 1
    assert fields["stem"] == ReceptiveField(size=(4, 4), stride=(2, 2), offset=(-1, -1))
    # the Add takes the union of the 3x3/2x2 branch and the strided 1x1 shortcut
    assert fields["block_out"].size == fields["block_b"].size == (24, 24)
    assert fields["shortcut"].size == (8, 8)
    assert fields["head"].stride == (16, 8)


def test_dilated_convs():
    fields = assert_analytic_matches_probe(nets.dilated_net())
    assert fields["conv1"].size == (5, 5)  # 1 + 2·2
    assert fields["conv2"].size == (11, 11)  # 5 + 2·3·1
    assert fields["conv3"].size == (19, 23)  # 11 + 2·2·2 and 11 + 2·3·2


@pytest.mark.parametrize("opset", [9, 13])
def test_pad_nodes_shift_the_offset(opset):
    fields = assert_analytic_matches_probe(nets.pad_node_net(opset))
    assert fields["conv1"].offset == (-3, -1)  # the Pad's leading pads on y and x
    # the reflect Pad makes the last windows read rows mirrored from before them: the cover grows
    assert fields["conv2"].size == (11, 11)


def test_nhwc_input_through_transposes():
    net = nets.nhwc_net()
    fields = assert_analytic_matches_probe(net)
    assert fields["conv2_nhwc"] == fields["conv2"] == ReceptiveField((11, 11), (4, 4), (-2, -2))
    trace = trace_graph(net.model, net.input_name, net.input_hw, net.layout)
    assert trace.spatial_axes(net.layers["conv2"]) == (2, 3)
    assert trace.spatial_axes(net.layers["conv2_nhwc"]) == (1, 2)


def test_nearest_resize_divides_the_jump():
    fields = assert_analytic_matches_probe(nets.resize_net())
    assert fields["conv2"].stride == (4, 4)
    assert fields["up"].stride == (2, 2)
    assert fields["conv4"].stride == (4, 4)


@pytest.mark.parametrize(
    "mode, coordinates",
    [("nearest", "half_pixel"), ("nearest", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners")],
)
def test_resize_below_input_resolution_gives_fractional_jumps(mode, coordinates):
    fields = assert_analytic_matches_probe(nets.upsample_input_net(mode, coordinates))
    assert fields["up"].stride == (Fraction(1, 2), Fraction(1, 2))
    assert fields["conv2"].stride == (1, 1)


@pytest.mark.parametrize("build", [nets.conv_transpose_net, nets.space_depth_slice_net])
def test_transposed_conv_depth_to_space_and_slice(build):
    assert_analytic_matches_probe(build())


def test_slice_offsets():
    fields = assert_analytic_matches_probe(nets.space_depth_slice_net())
    # Slice starts at index 1 (y) and 2 with step 2 (x) of a stride-2 tensor
    assert fields["slice"].stride == (2, 4)
    assert fields["slice"].offset == (fields["space_to_depth"].offset[0] + 2, fields["space_to_depth"].offset[1] + 4)


def test_global_average_pool_and_gemm_are_global():
    net = nets.gap_gemm_net()
    fields = assert_analytic_matches_probe(net)
    assert fields["conv2"] == ReceptiveField((7, 7), (4, 4), (-3, -3))
    for alias in ("pool", "logits"):
        assert fields[alias].is_global
        assert fields[alias].window(0, 0) == (0, 0, 32, 32)
    measured = measure_windows(net.model, net.input_name, net.input_hw, net.layout, [net.layers["logits"]])
    probed = {name: fit_receptive_field(w, net.input_hw) for name, w in measured.items()}
    assert probed[net.layers["logits"]].is_global


def test_squeeze_excitation_keeps_the_local_window():
    """The gate's global effect is real but weak; the analytic field ignores it (documented decision)."""
    net = nets.se_net()
    fields = assert_analytic_matches_probe(net)
    assert fields["se"] == fields["conv1"]
    assert not fields["conv2"].is_global

    names = [net.layers["se"], net.layers["conv2"]]
    free = measure_windows(net.model, net.input_name, net.input_hw, net.layout, names, freeze_summaries=False)
    assert all(free[name][0].tolist() == [[0, 40]] * len(free[name][0]) for name in names)  # every row moves everything

    # but far from the window the change is small next to the change inside it
    trace = trace_graph(net.model, net.input_name, net.input_hw, net.layout)
    model = onnx.ModelProto.FromString(net.model.SerializeToString())
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, (1, 3, 40, 40)).astype(np.float32)
    ratios = []
    for row in range(0, 40, 3):
        moved = base.copy()
        moved[:, :, row] += rng.uniform(0.5, 1, (1, 3, 40)).astype(np.float32)
        for name, a, b in zip(names, session.run(None, {"input": base}), session.run(None, {"input": moved})):
            change = np.abs(a - b).max(axis=(0, 1, 3))
            seen = trace.windows(name)[0]
            inside = (seen[:, 0] <= row) & (row < seen[:, 1])
            ratios.append(change[~inside].max() / change[inside].max())
    assert 0 < max(ratios) < 0.1


def test_fixed_batch_graph_and_unknown_op(caplog):
    net = nets.fixed_batch_head_net()
    with caplog.at_level(logging.WARNING, logger="onnx_nfi.graph.rf_walk"):
        fields = assert_analytic_matches_probe(net, passes=2)
    assert "Shrink" in caplog.text
    assert fields["shrink"] == fields["conv1"]
    assert fields["logits"].is_global


def test_clipped_windows_and_compare_report_differences():
    field = ReceptiveField((5, 3), (2, 2), (-2, -1))
    wy, wx = clipped_windows(field, (10, 6), (5, 3))
    assert wy.tolist() == [[0, 3], [0, 5], [2, 7], [4, 9], [6, 10]]
    assert wx.tolist() == [[0, 2], [1, 4], [3, 6]]
    shifted = ReceptiveField((5, 3), (2, 2), (-1, -1))
    problems = compare(field, shifted, (10, 6), (5, 3))
    assert problems[0] == "y[0]: analytic [0, 3) vs measured [0, 4)"
    assert len(problems) == 5


def test_user_errors():
    net = nets.gap_gemm_net()
    with pytest.raises(ModelError, match="layout"):
        receptive_fields(net.model, "input", (32, 32), "CHW", [])
    with pytest.raises(ModelError, match="no input 'image'"):
        receptive_fields(net.model, "image", (32, 32), "NCHW", [])
    with pytest.raises(LayerError, match="not in the model"):
        receptive_fields(net.model, "input", (32, 32), "NCHW", ["nope"])
    with pytest.raises(ModelError, match="check the layout"):
        receptive_fields(net.model, "input", (32, 32), "NHWC", [net.layers["conv1"]])


@pytest.mark.slow
@pytest.mark.skipif(not LITE0.exists(), reason="models/efficientnet_lite0.onnx not built")
def test_lite0_rf_matches_probe():
    model = onnx.load(LITE0)
    layers = {n.output[0]: n.output[0] for n in model.graph.node if n.op_type in ("Clip", "Add", "ReduceMean", "Gemm")}
    net = nets.BuiltNet(model, "input", (224, 224), "NCHW", layers)
    fields = assert_analytic_matches_probe(net, passes=2)  # one base image, both signs: ~1 min on 2 cores
    assert fields["_conv_stem.act"] == ReceptiveField((3, 3), (2, 2), (0, 0))
    assert fields["_conv_head.act"] == ReceptiveField((851, 851), (32, 32), (-394, -394))
    assert fields["logits"].is_global
