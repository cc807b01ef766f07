"""Layers read after their activation however exporters write it (docs/method.md §1).

Spelled-out activations are checked against onnxruntime's fused op on random input; the committed
exporter-style graphs (tests/exporter_graphs.py) against tables written here; the receptive fields
of MixNet-style branches and of computed-``Pad`` convs against an empirical probe written here
(one input row changed at a time, the output rows that move).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from exporter_graphs import FOLDER, GRAPHS, SPELLED, _scalar
from onnx import TensorProto, helper
from onnx_builders import NetBuilder

from onnx_nfi import api
from onnx_nfi.errors import ModelError
from onnx_nfi.graph.activations import find_activation
from onnx_nfi.graph.graph_view import GraphView
from onnx_nfi.graph.instrument import instrument
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.graph.load import load_model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _one_op_model(nodes: list[onnx.NodeProto], inits: list, output: str, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 6, 5, 7])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _fused(op: str, attrs: dict, opset: int) -> onnx.ModelProto:
    """onnxruntime's own op for what a pattern spells out (Silu: the two-node ``x·Sigmoid(x)``)."""
    if op == "Clip6":
        b = NetBuilder(channels=6, input_hw=(5, 7))
        out = b.node("Clip", ["input", _scalar(b, 0.0), _scalar(b, 6.0)])
        return _one_op_model(b.nodes, b.inits, out, opset)
    if op == "Silu":
        nodes = [helper.make_node("Sigmoid", ["input"], ["s"]), helper.make_node("Mul", ["input", "s"], ["out"])]
        return _one_op_model(nodes, [], "out", opset)
    return _one_op_model([helper.make_node(op, ["input"], ["out"], **attrs)], [], "out", opset)


@pytest.mark.parametrize("name", sorted(SPELLED))
def test_spelled_out_activation_equals_fused_op(name: str) -> None:
    build, op, attrs, opset = SPELLED[name]
    b = NetBuilder(channels=6, input_hw=(5, 7), opset=opset)
    out = build(b, "input")
    spelled = _one_op_model(b.nodes, b.inits, out, opset)
    found = find_activation("input", GraphView(spelled.graph))
    assert found is not None and found.output == out  # the whole subgraph, ending at its last node
    x = (np.random.default_rng(7).normal(0, 4, (2, 6, 5, 7))).astype(np.float32)
    x.flat[:6] = [-3.0, 0.0, 3.0, 6.0, 7.5, -8.0]  # the kinks and saturation of ReLU6/hard-swish
    got = _session(spelled).run(None, {"input": x})[0]
    want = _session(_fused(op, attrs, opset)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_lookalike_is_not_an_activation() -> None:
    """``x·Clip(x + 3, 0, 5)/6`` is not hard-swish: no match, the layer ends before it."""
    b = NetBuilder(channels=6, input_hw=(5, 7), opset=13)
    clip = b.node("Clip", [b.node("Add", ["input", _scalar(b, 3.0)]), _scalar(b, 0.0), _scalar(b, 5.0)])
    out = b.node("Div", [b.node("Mul", ["input", clip]), _scalar(b, 6.0)])
    assert find_activation("input", GraphView(_one_op_model(b.nodes, b.inits, out, 13).graph)) is None


#: Per committed graph, per layer: the tensor read, its producer's op type, the op chain, the RF size
#: (rows) and stride. Written from the graphs' construction (tests/exporter_graphs.py).
LAYERS = {
    "paddle_block.onnx": [
        ("div_21", "Div", "Conv>BatchNormalization>HardSwish(decomposed)", 3, 2),
        ("mul_35", "Mul", "Conv>BatchNormalization>HardSigmoid>Mul", 7, 2),
        ("relu_48", "Relu", "Conv>Add>Relu", None, 0),  # SE reduce: bias added through Unsqueeze
        ("hardsigmoid_59", "HardSigmoid", "Conv>Add>HardSigmoid", None, 0),  # SE gate: bias through Reshape
        ("batchnormalization_71", "BatchNormalization", "Conv>BatchNormalization", 7, 2),
        ("min_87", "Min", "Conv>BatchNormalization>Relu6(Min/Max)", 11, 2),
    ],
    "convnext_block.onnx": [
        ("conv_3", "Conv", "Conv", 4, 4),
        ("conv_7", "Conv", "Conv", 28, 4),
        ("mul_24", "Mul", "Conv>Gelu(Erf)", 28, 4),
        ("mul_31", "Mul", "Conv>Mul", 28, 4),
        ("mul_50", "Mul", "Conv>Gelu(Erf)", 28, 4),
        ("mul_75", "Mul", "Conv>Gelu(tanh)", 28, 4),
        ("mul_85", "Mul", "Conv>Mish(decomposed)", 28, 4),
        ("mul_93", "Mul", "Conv>Sigmoid>Mul", 28, 4),
    ],
    "mixnet_block.onnx": [
        ("mul_13", "Mul", "Conv>BatchNormalization>Sigmoid>Mul", 3, 2),
        ("mul_37__channels_0_4", "Slice", "Conv>Concat>BatchNormalization>Sigmoid>Mul>Slice", 7, 2),
        ("mul_37__channels_4_8", "Slice", "Conv>Concat>BatchNormalization>Sigmoid>Mul>Slice", 11, 2),
        ("conv_45", "Conv", "Conv", 7, 2),  # 1×1 on the 3×3 branch's channels
        ("conv_49", "Conv", "Conv", 11, 2),  # 1×1 on the 5×5 branch's channels
        ("relu_79__channels_0_4", "Slice", "Conv>Concat>BatchNormalization>Relu>Slice", 11, 2),
        ("relu_79__channels_4_8", "Slice", "Conv>Concat>BatchNormalization>Relu>Slice", 23, 2),
    ],
    "tf_same_classic.onnx": [
        ("clip_48", "Clip", "Conv>BatchNormalization>Clip", 3, 2),
        ("clip_97", "Clip", "Conv>BatchNormalization>Clip", 7, 2),
        ("batchnormalization_107", "BatchNormalization", "Conv>BatchNormalization", 7, 2),
        ("relu_148", "Relu", "Conv>Relu", 15, 4),
    ],
    "tf_same_dynamic.onnx": [  # the same pads, computed from Shape(x) each time
        ("relu_101", "Relu", "Conv>Relu", 3, 2),
        ("relu_203", "Relu", "Conv>Relu", 7, 2),
        ("relu_305", "Relu", "Conv>Relu", 15, 4),
    ],
}


def test_committed_graphs_are_the_generators() -> None:
    for name, build in GRAPHS.items():
        assert (FOLDER / name).read_bytes() == build().SerializeToString(), f"rerun python tests/exporter_graphs.py ({name})"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_are_read_after_their_activation(name: str) -> None:
    infos = api.layers(FOLDER / name)
    graph = load_model(FOLDER / name).proto.graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    got = [
        (i.layer.tensor, producers[i.layer.tensor], i.layer.op_type, None if i.rf.is_global else i.rf.size[0],
         i.rf.stride[0])
        for i in infos
    ]
    assert got == LAYERS[name]


def test_spelled_out_activations_keep_the_saturation_rule() -> None:
    """A decomposed activation tells the rule what it is: its input is the pre-activation map; the
    score is read from the layer's own map (no fused node to apply to the maximum)."""
    lm = load_model(FOLDER / "paddle_block.onnx")
    layers = {layer.alias: layer for layer in find_conv_layers(lm)}
    producers = {o: n for n in lm.proto.graph.node for o in n.output}
    for alias in ("conv1", "conv6"):  # HardSwish(decomposed), Relu6(Min/Max): both rise where positive
        assert producers[layers[alias].pre_activation].op_type == "BatchNormalization"
        assert not layers[alias].score_from_pre
    assert producers[layers["conv4"].pre_activation].op_type == "Add"  # the SE gate's input
    mix = {layer.alias: layer for layer in find_conv_layers(load_model(FOLDER / "mixnet_block.onnx"))}
    assert mix["conv7"].pre_activation == "batchnormalization_77__channels_4_8"


def _probe_rows(model: onnx.ModelProto, tensors: list[str], hw: tuple[int, int]) -> dict[str, list[tuple[int, int]]]:
    """Per tensor and output row, the input rows whose change moves it: one image per input row."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    h, w = hw
    base = np.random.default_rng(11).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
    batch = np.repeat(base, h + 1, axis=0)
    for r in range(h):
        batch[r + 1, :, r, :] += 5.0
    outs = _session(model).run(None, {"input": batch})
    spans = {}
    for name, out in zip(tensors, outs):
        moved = (out[1:] != out[:1]).any(axis=(1, 3))  # [input row, output row]
        spans[name] = [(int(np.flatnonzero(col).min()), int(np.flatnonzero(col).max()) + 1) for col in moved.T]
    return spans


@pytest.mark.parametrize("name", ["mixnet_block.onnx", "tf_same_classic.onnx", "tf_same_dynamic.onnx"])
def test_branch_and_computed_pad_receptive_fields_match_a_probe(name: str) -> None:
    lm = load_model(FOLDER / name)
    infos = api.layers(FOLDER / name)
    h = lm.input.height
    measured = _probe_rows(lm.proto, [i.layer.tensor for i in infos], (h, lm.input.width))
    for info in infos:
        rf = info.rf
        analytic = [
            (max(y * rf.stride[0] + rf.offset[0], 0), min(y * rf.stride[0] + rf.offset[0] + rf.size[0], h))
            for y in range(info.layer.height)
        ]
        assert measured[info.layer.tensor] == analytic, info.layer.alias


def test_branch_slices_are_scanned() -> None:
    """The instrumented graph's per-channel max of a branch layer is the max of its channels of the activation."""
    lm = load_model(FOLDER / "mixnet_block.onnx")
    layers = find_conv_layers(lm)
    proto, outputs = instrument(lm, layers)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 3, 40, 40)).astype(np.float32)
    got = dict(zip([o.name for o in proto.graph.output], _session(proto).run(None, {"input": x})))
    full = onnx.ModelProto.FromString(lm.proto.SerializeToString())
    del full.graph.output[:]
    full.graph.output.extend([helper.make_tensor_value_info("relu_79", TensorProto.FLOAT, None)])
    relu = _session(full).run(None, {"input": x})[0]
    for layer, channels in ((layers[5], slice(0, 4)), (layers[6], slice(4, 8))):
        np.testing.assert_array_equal(got[outputs.max[layer.tensor]], relu[:, channels].max(axis=(2, 3)))


@pytest.mark.parametrize("name", ["tf_same_classic.onnx", "tf_same_dynamic.onnx"])
def test_classic_export_pads_are_folded(name: str) -> None:
    """TF-"same" pads: total ``max((ceil(n/s) − 1)·s + k − n, 0)``, half (rounded down) before."""
    graph = load_model(FOLDER / name).proto.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    pads = [inits[n.input[1]].tolist() for n in graph.node if n.op_type == "Pad"]
    assert pads == [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 2, 2]]
    assert not any(n.op_type in ("ConstantOfShape", "Transpose", "Cast", "Shape", "Ceil") for n in graph.node)
    assert [i.name for i in graph.input] == ["input"] and graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_unknown_conv_sizes_name_the_cause_and_the_fix(tmp_path) -> None:  # noqa: ANN001
    """Pads computed from the input's shape (its batch is dynamic): no size can be known."""
    b = NetBuilder(channels=3, input_hw=(16, 16), opset=13)
    shape = b.node("Cast", [b.node("Shape", ["input"])], to=TensorProto.FLOAT)
    zeros = b.node("Cast", [b.node("Mul", [shape, _scalar(b, 0.0)])], to=TensorProto.INT64)
    pads = b.node("Concat", [zeros, zeros], axis=0)
    out = b.conv(b.node("Pad", ["input", pads]), 3, 4, 3)
    path = tmp_path / "unknown.onnx"
    onnx.save(b.build(out).model, str(path))
    with pytest.raises(ModelError, match=r"cannot be inferred.*--input-size H,W.*dynamo=True"):
        api.layers(path)


def test_layers_warn_about_activations_they_leave_out(tmp_path, caplog) -> None:  # noqa: ANN001
    """A conv whose output feeds a ReLU and a shortcut is read before the ReLU: one warning says so."""
    b = NetBuilder(channels=3, input_hw=(16, 16), opset=13)
    x = b.conv("input", 3, 4, 3, pads=[1, 1, 1, 1])
    out = b.node("Add", [x, b.node("Relu", [x])])
    path = tmp_path / "shortcut.onnx"
    onnx.save(b.build(out).model, str(path))
    with caplog.at_level(logging.WARNING):
        infos = api.layers(path)
    assert [i.layer.op_type for i in infos] == ["Conv"]
    warnings = [r.getMessage() for r in caplog.records if "activation they do not include" in r.getMessage()]
    assert warnings == ["1 layer(s) end at a tensor that also feeds an activation they do not include, and are read "
                        "before it: Relu (1) (docs/method.md §1)"]


def test_layers_warn_about_activations_after_a_channel_split(tmp_path, caplog) -> None:  # noqa: ANN001
    """A conv split along its channels, each part activated: read at its output, and the warning names it."""
    b = NetBuilder(channels=3, input_hw=(16, 16), opset=13)
    parts = b.node("Split", [b.conv("input", 3, 4, 3), b.const(np.array([2, 2], np.int64))], n_outputs=2, axis=1)
    out = b.node("Concat", [b.node("Relu", [parts[0]]), b.node("Sigmoid", [parts[1]])], axis=1)
    path = tmp_path / "split.onnx"
    onnx.save(b.build(out).model, str(path))
    with caplog.at_level(logging.WARNING):
        api.layers(path)
    assert any("read before it: Split>Relu (1)" in r.getMessage() for r in caplog.records)
