"""Saturating activations (docs/method.md §2): ties ranked and crops placed by the pre-activation.

The graphs are built here with onnx.helper; every expectation comes from full maps out of
onnxruntime (the activation's input and output) reduced with numpy, or from how the images were
drawn, never from the scan's own helpers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import modern_net, opset11_gates_net, pytorch_opset9_net, tf2onnx_nhwc_net
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import NetBuilder
from reference import pre_activation_of, reference_topn

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.images import list_images
from onnx_nfi.data.preprocess import preset
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.graph.load import LoadedModel, load_model
from onnx_nfi.report import queries
from onnx_nfi.scan.scanner import scan
from onnx_nfi.scan.topn import TopN
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.results import stored_topn

HW = (16, 16)
BACKGROUND = 20
#: image file -> bright spots (y, x, grey level) on a uniform background, in file (= id) order
SPOTS = {
    "img_00.png": [(2, 2, 170), (9, 11, 230)],  # two saturating spots: the first in row-major order is the weaker
    "img_01.png": [(4, 7, 200)],
    "img_02.png": [(12, 3, 250)],
    "img_03.png": [],
    "img_04.png": [(4, 7, 200)],  # the same picture as img_01: tied on score and pre-activation
    "img_05.png": [(0, 15, 160)],
    "img_06.png": [(8, 8, 120)],  # below saturation
}
#: channel 0 saturates (Clip at 6) from grey level 153 on; channel 1 stays below 6 everywhere
GAIN = (10.0, 4.0)


def clip6_net(opset: int = 13) -> onnx.ModelProto:
    """Conv 1×1 (3 -> 2) + Clip(0, 6); channel ``k`` computes ``GAIN[k] · grey / 255`` on a grey image.

    The weights undo the torchvision normalisation: ``Σ_c w_c · (v/255 − m_c)/s_c + b = g · v/255``
    with ``w_c = g · s_c / 3`` and ``b = g · mean(m)``.
    """
    norm = preset("torchvision", HW, "NCHW")
    std, mean = np.array(norm.std, np.float32), np.array(norm.mean, np.float32)
    w = np.stack([g * std / 3 for g in GAIN]).reshape(2, 3, 1, 1).astype(np.float32)
    b = np.array([g * mean.mean() for g in GAIN], np.float32)
    inits = [
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi"),
    ]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["pre"]), helper.make_node("Clip", ["pre", "lo", "hi"], ["post"])]
    graph = helper.make_graph(
        nodes, "clip6", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *HW])],
        [helper.make_tensor_value_info("post", TensorProto.FLOAT, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def draw_images(folder: Path) -> Path:
    folder.mkdir()
    for name, spots in SPOTS.items():
        img = np.full((*HW, 3), BACKGROUND, np.uint8)
        for y, x, v in spots:
            img[y, x] = v
        cv2.imwrite(str(folder / name), img)
    return folder


def full_maps(
    model: onnx.ModelProto, images: Path, tensors: list[str], hw: tuple[int, int] = HW
) -> dict[str, list[np.ndarray]]:
    """Every tensor's map ``[C, H, W]`` per image (sorted file order, torchvision normalisation), one image per run."""
    norm = preset("torchvision", hw, "NCHW")
    proto = onnx.ModelProto.FromString(model.SerializeToString())
    del proto.graph.output[:]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    maps: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for path in sorted(images.glob("*.png")):
        rgb = cv2.imread(str(path))[:, :, ::-1].astype(np.float32)
        x = ((rgb / 255 - np.array(norm.mean, np.float32)) / np.array(norm.std, np.float32)).transpose(2, 0, 1)[None]
        for t, value in zip(tensors, sess.run(tensors, {proto.graph.input[0].name: np.ascontiguousarray(x, np.float32)})):
            maps[t].append(value[0])
    return maps


def saved(model: onnx.ModelProto, path: Path) -> LoadedModel:
    onnx.save(model, str(path))
    return load_model(path)


@pytest.mark.parametrize("opset", [9, 13])  # Clip with attributes (flat argmax) and with inputs (row-first argmax)
def test_clip6_ties_ranked_and_located_by_pre_activation(tmp_path: Path, opset: int) -> None:
    model = clip6_net(opset) if opset >= 11 else _with_clip_attributes(clip6_net(13), opset)
    images = draw_images(tmp_path / "images")
    lm = saved(model, tmp_path / "clip6.onnx")
    (layer,) = find_conv_layers(lm)
    assert layer.pre_activation == "pre"
    result = scan(lm, [layer], preset("torchvision", HW, "NCHW"), list_images(images).files, top_n=7, batch_size=3, provider="cpu")
    top = result.stats[layer.tensor].topn

    maps = full_maps(model, images, ["pre", "post"])
    post, pre = np.stack(maps["post"]), np.stack(maps["pre"])  # [I, C, H, W]
    n, c, h, w = post.shape
    score, key = post.reshape(n, c, -1).max(2), pre.reshape(n, c, -1).max(2)
    loc = pre.reshape(n, c, -1).argmax(2)
    order = np.lexsort((np.broadcast_to(np.arange(n)[:, None], (n, c)), -key, -score), axis=0).T  # [C, I]
    np.testing.assert_array_equal(top.ids, order)
    # the test normalises the pixels in its own float order: values agree to an ulp, ranks and places exactly
    np.testing.assert_allclose(top.scores, np.take_along_axis(score.T, order, 1), rtol=1e-6)
    np.testing.assert_allclose(top.keys, np.take_along_axis(key.T, order, 1), rtol=1e-6)
    np.testing.assert_array_equal(top.ys * w + top.xs, np.take_along_axis(loc.T, order, 1))

    # what the drawing implies: five images saturate channel 0 at exactly 6, ranked by spot brightness;
    # img_01 and img_04 are equal on both, so file order decides between them
    assert (top.scores[0, :5] == 6).all() and top.scores[0, 5] < 6
    np.testing.assert_array_equal(top.ids[0], [2, 0, 1, 4, 5, 6, 3])
    assert top.keys[0, 2] == top.keys[0, 3]
    assert (top.ys[0, 1], top.xs[0, 1]) == (9, 11)  # img_00: the stronger spot, not the first saturated pixel
    first_saturated = np.flatnonzero(post[0, 0].reshape(-1) == 6)[0]
    assert divmod(int(first_saturated), w) == (2, 2)  # the old rule's location, so the check above can fail
    np.testing.assert_array_equal(np.argsort(-score[:, 0], kind="stable")[:5], [0, 1, 2, 4, 5])  # old order differs
    # channel 1 never saturates: its order is the plain score order, its locations the output map's
    np.testing.assert_array_equal(top.ids[1], np.argsort(-score[:, 1], kind="stable"))
    np.testing.assert_array_equal(top.ys[1] * w + top.xs[1], post.reshape(n, c, -1).argmax(2)[top.ids[1], 1])
    np.testing.assert_array_equal(top.saturated_top(), [5, 1])


def _with_clip_attributes(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The same net at an old opset, where Clip's bounds are attributes (and the scan's argmax is flat)."""
    graph = model.graph
    clip = next(node for node in graph.node if node.op_type == "Clip")
    del clip.input[1:]
    clip.attribute.extend([helper.make_attribute("min", 0.0), helper.make_attribute("max", 6.0)])
    inits = [t for t in graph.initializer if t.name not in ("lo", "hi")]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", opset)])
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def test_relu_graph_gives_the_plain_rule_results(photo_dir: Path, tmp_path: Path) -> None:
    """With ReLU nothing ties above 0, so ranks and locations are exactly those of the output maps."""
    hw = (40, 36)
    b = NetBuilder(3, hw, seed=7)
    x = b.conv_relu("input", 3, 8, 3, "conv1", pads=[1, 1, 1, 1])
    b.conv_relu(x, 8, 12, 3, "conv2", strides=[2, 2])
    net = b.build(b.layers["conv2"])
    lm = saved(net.model, tmp_path / "relu.onnx")
    layers = find_conv_layers(lm)
    assert [layer.tensor for layer in layers] == list(net.layers.values()) and all(layer.pre_activation for layer in layers)
    images = tmp_path / "images"
    images.mkdir()
    for k, photo in enumerate(sorted(photo_dir.rglob("*.jpg"))[::5][:24]):
        cv2.imwrite(str(images / f"img_{k:02d}.png"), cv2.resize(cv2.imread(str(photo)), (hw[1], hw[0]), interpolation=cv2.INTER_AREA))
    top_n = 6
    result = scan(lm, layers, preset("torchvision", hw, "NCHW"), list_images(images).files, top_n=top_n, batch_size=5, provider="cpu")
    maps = full_maps(net.model, images, list(net.layers.values()), hw)
    for layer in layers:
        expected = reference_topn(maps[layer.tensor], top_n)  # the output maps alone: the rule before pre-activations
        assert (expected["scores"][:, -1] > 0).all(), f"{layer.alias}: a zero tie in the top-N would make this test moot"
        top = result.stats[layer.tensor].topn
        np.testing.assert_array_equal(top.ids, expected["ids"], err_msg=layer.alias)
        np.testing.assert_array_equal(top.ys, expected["ys"], err_msg=layer.alias)
        np.testing.assert_array_equal(top.xs, expected["xs"], err_msg=layer.alias)
        np.testing.assert_allclose(top.scores, expected["scores"], rtol=1e-5, atol=1e-6, err_msg=layer.alias)


@pytest.mark.parametrize("nans", [False, True])
def test_topn_with_keys_streaming_and_merge_equal_full_sort(nans: bool) -> None:
    rng = np.random.default_rng(5)
    n_images, channels, n = 300, 5, 25
    scores = np.minimum(np.round(rng.normal(size=(n_images, channels)) * 2) / 2, 1.0).astype(np.float32)  # ties at 1
    keys = np.where(scores == 1, 1 + np.round(rng.exponential(size=scores.shape) * 2) / 2, scores).astype(np.float32)
    if nans:
        scores[rng.random(scores.shape) < 0.1] = np.nan
    ys, xs = rng.integers(0, 9, size=(2, n_images, channels))
    ids = np.arange(n_images)
    expected = np.lexsort((np.broadcast_to(ids[:, None], scores.shape), -keys, -scores), axis=0)[:n].T
    assert (np.take_along_axis(scores.T, expected, 1)[:, :10] == 1).all()  # the test is about ties
    assert (np.take_along_axis(keys.T, expected, 1)[:, 0] > 1).all()

    streamed = TopN.empty(channels, n)
    for lo in range(0, n_images, 23):
        part = slice(lo, lo + 23)
        streamed.update(ids[part], scores[part], ys[part], xs[part], keys[part])
    shard_a, shard_b = TopN.empty(channels, n), TopN.empty(channels, n)
    shard_a.update(ids[170:], scores[170:], ys[170:], xs[170:], keys[170:])  # later images first
    shard_b.update(ids[:170], scores[:170], ys[:170], xs[:170], keys[:170])
    for state in (streamed, shard_a.merge(shard_b)):
        np.testing.assert_array_equal(state.ids, expected)
        np.testing.assert_array_equal(state.keys, np.take_along_axis(keys.T, expected, 1))
        np.testing.assert_array_equal(state.ys, np.take_along_axis(ys.T, expected, 1))
        np.testing.assert_array_equal(state.xs, np.take_along_axis(xs.T, expected, 1))
        best = np.take_along_axis(scores.T, expected, 1)
        np.testing.assert_array_equal(state.saturated_top(), (best == best[:, :1]).sum(1))


@pytest.mark.parametrize(
    "build", [opset11_gates_net, lambda: modern_net(17), lambda: modern_net(21), pytorch_opset9_net, lambda: tf2onnx_nhwc_net(13)],
)
def test_pre_activation_is_the_activations_input(build, tmp_path: Path) -> None:
    net = build()
    layers = find_conv_layers(saved(net.model, tmp_path / "net.onnx"))
    assert [layer.pre_activation for layer in layers] == [pre_activation_of(net.model, layer.tensor) for layer in layers]
    assert any(layer.pre_activation for layer in layers)


@pytest.mark.parametrize(
    "op, inputs, attrs, rises",
    [
        ("LeakyRelu", [], {"alpha": 0.1}, True),
        ("LeakyRelu", [], {"alpha": -0.5}, False),  # falls below 0: a negative input can beat the positive maximum
        ("PRelu", [np.full((2, 1, 1), 0.25, np.float32)], {}, True),
        ("PRelu", [np.array([[[0.25]], [[-1.0]]], np.float32)], {}, False),
        ("Elu", [], {"alpha": -1.0}, False),
        ("Softsign", [], {}, True),
    ],
)
def test_activation_parameters_decide_the_rule(op: str, inputs: list[np.ndarray], attrs: dict, rises: bool, tmp_path: Path) -> None:
    model = clip6_net()
    clip = next(node for node in model.graph.node if node.op_type == "Clip")
    slope_names = [f"p{k}" for k in range(len(inputs))]
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for v, name in zip(inputs, slope_names))
    clip.CopyFrom(helper.make_node(op, ["pre", *slope_names], ["post"], **attrs))
    (layer,) = find_conv_layers(saved(model, tmp_path / "act.onnx"))
    assert layer.pre_activation == ("pre" if rises else None)
    assert layer.score_from_pre == (rises and op in ("LeakyRelu", "PRelu"))


def test_saturation_stored_flagged_and_rebuilt(tmp_path: Path) -> None:
    images = draw_images(tmp_path / "images")
    model_path = tmp_path / "clip6.onnx"
    onnx.save(clip6_net(), str(model_path))
    db = tmp_path / "nfi.duckdb"
    api.analyze(model_path, images, db=db, config=AnalyzeConfig(top_n=7, batch_size=4, provider="cpu", preprocess="torchvision"))

    maps = full_maps(clip6_net(), images, ["pre"])
    pre_max = np.stack(maps["pre"]).reshape(len(SPOTS), 2, -1).max(2)  # [I, C]
    with Store.open(db, read_only=True) as store:
        rows = store.rows("SELECT unit, saturated_top FROM neurons ORDER BY unit")
        assert [(r["unit"], r["saturated_top"]) for r in rows] == [(0, 5), (1, 1)]
        tops = store.columns("SELECT unit, rank, image_id, y, x, pre_activation FROM top_activations ORDER BY unit, rank")
        np.testing.assert_array_equal(tops["image_id"][:7], [2, 0, 1, 4, 5, 6, 3])
        assert (tops["y"][1], tops["x"][1]) == (9, 11)
        np.testing.assert_allclose(tops["pre_activation"], pre_max[tops["image_id"], tops["unit"]], rtol=1e-6)
        summary = store.rows("SELECT neurons, saturated FROM layer_summary")
        assert summary == [{"neurons": 2, "saturated": 1}]
        rebuilt = stored_topn(store, "clip6", "post", 2)
        np.testing.assert_allclose(rebuilt.keys, pre_max[rebuilt.ids, np.arange(2)[:, None]], rtol=1e-6)
        card = queries.neuron_card(store, "clip6", "conv1", 0, top=7)
        assert card.saturated_top == 5 and [c.image_id for c in card.crops] == [2, 0, 1, 4, 5, 6, 3]
        tiles = queries.layer_nfs(store, "clip6", "conv1")
        assert [t.saturated_top for t in tiles.neurons] == [5, 1]
