"""Graphs from other producers (tests/graphs.py): layer discovery and the scan against a brute force.

The brute force is independent of the code under test: the images are written at the input size
(so they are fed pixel for pixel), normalised here with numpy, run one at a time through the
*original* model with the expected layer tensors as outputs, and reduced with numpy
(max, first row-major argmax, stable top-N).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import (
    ProducerNet,
    fixed_batch_net,
    modern_net,
    opset11_gates_net,
    pytorch_opset9_net,
    tf2onnx_nhwc_net,
)
from reference import pre_activation_of, reference_topn

from onnx_nfi.data.images import list_images
from onnx_nfi.data.preprocess import PRESETS, preset
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.graph.load import load_model
from onnx_nfi.scan.scanner import scan

N_IMAGES = 11  # batches of 4 leave a partial last batch
TOP_N = 5

NETS: dict[str, Callable[[], ProducerNet]] = {
    "tf2onnx_nhwc_opset13": lambda: tf2onnx_nhwc_net(13),
    "tf2onnx_nhwc_opset10": lambda: tf2onnx_nhwc_net(10),
    "pytorch_opset9": pytorch_opset9_net,
    "opset11_gates": opset11_gates_net,
    "modern_opset17": lambda: modern_net(17),
    "modern_opset21": lambda: modern_net(21),
    "fixed_batch_reshape_head": lambda: fixed_batch_net("reshape"),
    "fixed_batch_flatten_head": lambda: fixed_batch_net("flatten"),
}


@pytest.fixture(params=list(NETS))
def net_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ProducerNet, Path]:
    net = NETS[request.param]()
    path = tmp_path / f"{request.param}.onnx"
    onnx.save(net.model, path)
    return net, path


def write_images(photo_dir: Path, target: Path, hw: tuple[int, int]) -> Path:
    """Real photos resized to the input size and saved losslessly, named in scan order."""
    target.mkdir()
    photos = sorted(photo_dir.rglob("*.jpg"))[:: 7][:N_IMAGES]
    assert len(photos) == N_IMAGES
    for k, photo in enumerate(photos):
        img = cv2.resize(cv2.imread(str(photo)), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(target / f"img_{k:02d}.png"), img)
    return target


def brute_force(net: ProducerNet, images: Path, top_n: int) -> dict[str, dict[str, np.ndarray]]:
    """Full maps per image out of onnxruntime (with the activations' inputs), then numpy max / first argmax / top-N."""
    stats = PRESETS["torchvision"]
    mean, std = np.array(stats["mean"], np.float32), np.array(stats["std"], np.float32)
    proto = onnx.ModelProto.FromString(net.model.SerializeToString())
    del proto.graph.output[:]
    layers = [layer.tensor for layer in net.layers]
    pre = {name: pre_activation_of(net.model, name) for name in layers}
    names = layers + [p for p in pre.values() if p]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    maps: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for path in sorted(images.glob("*.png")):
        rgb = cv2.imread(str(path))[:, :, ::-1].astype(np.float32)
        x = ((rgb / np.float32(255) - mean) / std)[None]
        if net.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        for name, value in zip(names, sess.run(names, {"image": np.ascontiguousarray(x)})):
            maps[name].append(value[0])
    return {name: reference_topn(maps[name], top_n, maps[pre[name]] if pre[name] else None) for name in layers}


def test_layers_found_with_their_chains(net_file: tuple[ProducerNet, Path]) -> None:
    net, path = net_file
    lm = load_model(path)
    assert lm.input.layout == net.layout
    assert (lm.input.height, lm.input.width, lm.input.channels, lm.input.batch) == (*net.input_hw, 3, net.batch)
    found = find_conv_layers(lm)
    assert [(l.tensor, l.op_chain) for l in found] == [(e.tensor, e.op_chain) for e in net.layers]
    assert [(l.channels, l.height, l.width) for l in found] == [(e.channels, e.height, e.width) for e in net.layers]
    assert [l.alias for l in found] == [f"conv{k}" for k in range(1, len(found) + 1)]


def test_scan_matches_brute_force(net_file: tuple[ProducerNet, Path], photo_dir: Path, tmp_path: Path) -> None:
    net, path = net_file
    images = write_images(photo_dir, tmp_path / "images", net.input_hw)
    lm = load_model(path)
    pre = preset("torchvision", net.input_hw, net.layout)
    layers = find_conv_layers(lm)
    result = scan(lm, layers, pre, list_images(images).files, top_n=TOP_N, batch_size=4, provider="cpu")
    assert len(result.images) == N_IMAGES and not result.skipped
    expected = brute_force(net, images, TOP_N)
    for layer in layers:
        st, ex = result.stats[layer.tensor], expected[layer.tensor]
        assert np.isfinite(ex["scores"]).all() and (ex["scores"] > 0).any(), f"{layer.alias} is dead: a useless test"
        np.testing.assert_array_equal(st.topn.ids, ex["ids"], err_msg=layer.alias)
        np.testing.assert_array_equal(st.topn.ys, ex["ys"], err_msg=layer.alias)
        np.testing.assert_array_equal(st.topn.xs, ex["xs"], err_msg=layer.alias)
        np.testing.assert_allclose(st.topn.scores, ex["scores"], rtol=1e-5, atol=1e-6, err_msg=layer.alias)
        np.testing.assert_allclose(st.moments.mean, ex["mean"], rtol=1e-5, atol=1e-6, err_msg=layer.alias)
        np.testing.assert_allclose(st.moments.active_fraction, ex["active"], err_msg=layer.alias)
