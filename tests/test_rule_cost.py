"""The saturation rule's extra reductions only where they can change a result (docs/method.md §2).

A ReLU/Clip layer moves to the plain reduction once no score at a bound can enter its top-N; a
later score at a bound sends the batch back to the exact graph. Expectations come from full maps
out of onnxruntime reduced with numpy (tests/reference.py), or from the exact graph's scan with a
top-N that never fills (every image kept, so no layer ever moves), cut to the first N ranks.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx_builders import NetBuilder, vgg_m_like_net
from reference import reference_topn
from test_saturation import HW, clip6_net, full_maps, saved

from onnx_nfi.data.images import list_images
from onnx_nfi.data.preprocess import preset
from onnx_nfi.graph.instrument import flat_bounds
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.scan.rule import RuleRunner
from onnx_nfi.scan.scanner import scan
from onnx_nfi.scan.topn import TopN

ROOT = Path(__file__).resolve().parents[1]


def photo_variants(photo_dir: Path, folder: Path, hw: tuple[int, int], count: int) -> Path:
    """``count`` distinct real images at ``hw``: each photo as it is, mirrored, upside down."""
    folder.mkdir()
    photos = sorted(photo_dir.rglob("*.jpg"))
    for k in range(count):
        image = cv2.resize(cv2.imread(str(photos[k % len(photos)])), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        image = [image, image[:, ::-1], image[::-1]][(k // len(photos)) % 3]
        cv2.imwrite(str(folder / f"img_{k:03d}.png"), np.ascontiguousarray(image))
    return folder


def test_bounds_of_relu_and_clip(tmp_path: Path) -> None:
    lm = saved(clip6_net(13), tmp_path / "clip6.onnx")
    (layer,) = find_conv_layers(lm)
    assert flat_bounds(lm, layer) == (0.0, 6.0)
    net = vgg_m_like_net()
    vgg = saved(net.model, tmp_path / "vgg.onnx")
    assert {flat_bounds(vgg, layer) for layer in find_conv_layers(vgg)} == {(0.0, np.inf)}


def test_relu_layers_move_to_the_plain_reduction_and_back(tmp_path: Path) -> None:
    """The runner switches once rows are full and positive; a zero that could enter sends a batch back."""
    net = vgg_m_like_net((64, 64))
    lm = saved(net.model, tmp_path / "vgg.onnx")
    layers = find_conv_layers(lm)
    runner = RuleRunner(lm, layers, "cpu")
    topns = {layer.tensor: TopN.empty(layer.channels, 2) for layer in layers}
    runner.consider(topns)
    assert runner.current[1] == frozenset()  # empty rows: a zero could still enter
    for t in topns.values():
        t.scores[:] = 0.5
        t.ids[:] = [0, 1]
    runner.consider(topns)
    assert runner.current[1] == frozenset(layer.tensor for layer in layers)
    batch = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    ran = runner.run(batch)
    assert ran.plain == runner.current[1]
    out = runner.exact(batch, ran, topns)
    for layer in layers:  # a score above every row's last: the plain reduction's key is the score
        name = runner.outputs.max[layer.tensor]
        if (ran.outputs[name] > 0.5).all():
            np.testing.assert_array_equal(out[runner.outputs.key[layer.tensor]], out[name])
    dark = np.full((3, 3, 64, 64), -50, np.float32)  # nothing fires: every score 0, ahead of no row's 0.5...
    runner.exact(dark, runner.run(dark), topns)
    assert runner.current[1]  # ...so the plain graph stays
    for t in topns.values():
        t.scores[:] = 0.0  # now a 0 ties each row's last and could enter: the exact graph answers
    out = runner.exact(dark, runner.run(dark), topns)
    assert runner.current[1] == frozenset()
    assert set(runner.outputs.key.values()) <= set(out)


def test_relu_scan_after_the_switch_matches_brute_force(photo_dir: Path, tmp_path: Path) -> None:
    hw = (40, 36)
    b = NetBuilder(3, hw, seed=11)
    x = b.conv_relu("input", 3, 6, 3, "conv1", pads=[1, 1, 1, 1])
    b.conv_relu(x, 6, 8, 3, "conv2", strides=[2, 2])
    net = b.build(b.layers["conv2"])
    lm = saved(net.model, tmp_path / "relu.onnx")
    layers = find_conv_layers(lm)
    images = photo_variants(photo_dir, tmp_path / "images", hw, 170)  # the switch comes after 130 images
    top_n = 5
    result = scan(lm, layers, preset("torchvision", hw, "NCHW"), list_images(images).files, top_n=top_n, batch_size=5, provider="cpu")
    maps = full_maps(net.model, images, [*net.layers.values(), *(layer.pre_activation for layer in layers)], hw)
    for layer in layers:
        expected = reference_topn(maps[layer.tensor], top_n, maps[layer.pre_activation])
        top = result.stats[layer.tensor].topn
        assert (top.scores[:, -1] > 0).all(), f"{layer.alias}: rows must fill with firing images for the switch"
        np.testing.assert_array_equal(top.ids, expected["ids"], err_msg=layer.alias)
        np.testing.assert_array_equal(top.ys, expected["ys"], err_msg=layer.alias)
        np.testing.assert_array_equal(top.xs, expected["xs"], err_msg=layer.alias)
        np.testing.assert_allclose(top.scores, expected["scores"], rtol=1e-5, atol=1e-6, err_msg=layer.alias)


def test_clip_saturating_after_the_switch_is_ranked_by_the_exact_rule(tmp_path: Path) -> None:
    """140 unsaturated images move the layer to the plain graph; then six images reach 6 at spots
    whose pre-activations rank them against file order: only the exact graph can order them."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(140):  # channel 0 = 10·grey/255 stays below 6 (grey < 153), above 0
        cv2.imwrite(str(folder / f"img_{k:03d}.png"), rng.integers(20, 150, (*HW, 3), dtype=np.uint8))
    for k, grey in enumerate([160, 250, 170, 240, 180, 230]):  # saturated, brighter and darker in turn
        img = np.full((*HW, 3), 30, np.uint8)
        img[3 + k, 2 + k] = grey
        img[0, 0] = 155  # saturated too, and first in row-major order: the location must follow P to the spot
        cv2.imwrite(str(folder / f"img_{140 + k:03d}.png"), img)
    model = clip6_net(13)
    lm = saved(model, tmp_path / "clip6.onnx")
    (layer,) = find_conv_layers(lm)
    top_n = 8
    result = scan(lm, [layer], preset("torchvision", HW, "NCHW"), list_images(folder).files, top_n=top_n, batch_size=4, provider="cpu")
    maps = full_maps(model, folder, ["pre", "post"])
    expected = reference_topn(maps["post"], top_n, maps["pre"])
    top = result.stats[layer.tensor].topn
    assert (top.scores[0, :6] == 6).all()
    assert [(int(y), int(x)) for y, x in zip(top.ys[0, :6], top.xs[0, :6])] == [(4, 3), (6, 5), (8, 7), (7, 6), (5, 4), (3, 2)]
    np.testing.assert_array_equal(top.ids[0, :6], [141, 143, 145, 144, 142, 140])  # by pre-activation, not file order
    np.testing.assert_array_equal(top.ids, expected["ids"])
    np.testing.assert_array_equal(top.ys, expected["ys"])
    np.testing.assert_array_equal(top.xs, expected["xs"])


def _tables_equal_to_the_exact_rule(model: Path, images: Path, top_n: int, batch_size: int) -> None:
    lm, pre = open_model(model)
    layers = find_conv_layers(lm)
    files = list_images(images).files
    adaptive = scan(lm, layers, pre, files, top_n=top_n, batch_size=batch_size, provider="cpu")
    exact = scan(lm, layers, pre, files, top_n=len(files), batch_size=batch_size, provider="cpu")  # never full
    for tensor, st in adaptive.stats.items():
        every = exact.stats[tensor]
        for part in ("scores", "ids", "ys", "xs", "keys"):
            np.testing.assert_array_equal(getattr(st.topn, part), getattr(every.topn, part)[:, :top_n], err_msg=f"{tensor} {part}")
        np.testing.assert_array_equal(st.moments.mean, every.moments.mean)
        np.testing.assert_array_equal(st.moments.m2, every.moments.m2)


@pytest.mark.parametrize("model", ["tiny_lite0", "vgg_m_like"])
def test_tables_equal_to_the_exact_rule_on_real_photos(model: str, photo_dir: Path, tmp_path: Path) -> None:
    if model == "vgg_m_like":
        path = tmp_path / "vgg.onnx"
        onnx.save(vgg_m_like_net((96, 96)).model, str(path))
    else:
        path = ROOT / "models" / "tiny_lite0.onnx"
    images = photo_variants(photo_dir, tmp_path / "images", (96, 96), 150)
    _tables_equal_to_the_exact_rule(path, images, top_n=10, batch_size=8)


@pytest.mark.slow
def test_lite0_tables_equal_to_the_exact_rule_on_real_photos(photo_dir: Path, tmp_path: Path) -> None:
    images = photo_variants(photo_dir, tmp_path / "images", (224, 224), 150)
    _tables_equal_to_the_exact_rule(ROOT / "models" / "efficientnet_lite0.onnx", images, top_n=10, batch_size=16)
