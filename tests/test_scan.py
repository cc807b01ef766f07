"""The scan against an independent brute force: full maps out of onnxruntime, numpy top-N."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import LITE0, TINY
from reference import pre_activation_of, reference_inputs, reference_topn

from onnx_nfi.pipeline.models import open_model
from onnx_nfi.data.images import list_images
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.scan.scanner import scan
from onnx_nfi.scan.topn import Moments, TopN


def brute_force(model_path: Path, images_dir: Path, top_n: int, layer_names: list[str]):
    """Per image and layer: full map (and the activation's input) -> max and first row-major argmax; numpy top-N.
    Images are decoded and normalised in the test (``reference_inputs``), not by the product's loader."""
    _, tensors = reference_inputs(model_path, images_dir)
    proto = onnx.load(str(model_path))
    source = onnx.load(str(model_path))
    input_name = proto.graph.input[0].name
    del proto.graph.output[:]
    pre_maps = {name: pre_activation_of(source, name) for name in layer_names}
    names = layer_names + [p for p in pre_maps.values() if p]
    for name in names:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    maps = {name: [] for name in names}
    for i in range(len(tensors)):  # one image at a time: no batching shared with the code under test
        outs = sess.run(names, {input_name: tensors[i : i + 1]})
        for name, value in zip(names, outs):
            maps[name].append(value[0])
    return {
        name: reference_topn(maps[name], top_n, maps[pre_maps[name]] if pre_maps[name] else None)
        for name in layer_names
    }


def check_against_brute_force(model_path: Path, images_dir: Path, top_n: int, batch_size: int, layers=None) -> None:
    lm, pre = open_model(model_path)
    all_layers = find_conv_layers(lm)
    chosen = layers(all_layers) if layers else all_layers
    result = scan(lm, chosen, pre, list_images(images_dir).files, top_n=top_n, batch_size=batch_size, provider="cpu")
    expected = brute_force(model_path, images_dir, top_n, [l.tensor for l in chosen])
    for layer in chosen:
        st, ex = result.stats[layer.tensor], expected[layer.tensor]
        np.testing.assert_array_equal(st.topn.ids, ex["ids"], err_msg=layer.alias)
        np.testing.assert_array_equal(st.topn.ys, ex["ys"], err_msg=layer.alias)
        np.testing.assert_array_equal(st.topn.xs, ex["xs"], err_msg=layer.alias)
        np.testing.assert_allclose(st.topn.scores, ex["scores"], rtol=1e-5, atol=1e-6, err_msg=layer.alias)
        np.testing.assert_allclose(st.moments.mean, ex["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.moments.std, ex["std"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st.moments.active_fraction, ex["active"])


def test_tiny_scan_matches_brute_force(photo_dir: Path) -> None:
    check_against_brute_force(TINY, photo_dir, top_n=7, batch_size=5)


@pytest.mark.slow
def test_lite0_scan_matches_brute_force(photo_dir: Path) -> None:
    # every 6th layer keeps the brute force's full maps small; covers early, middle and last layers
    check_against_brute_force(LITE0, photo_dir, top_n=10, batch_size=16, layers=lambda ls: ls[::6])  # 0, 6, …, 48: the last layer included


def random_stream(rng: np.random.Generator, n_images: int, channels: int, ties: bool):
    scores = rng.normal(size=(n_images, channels)).astype(np.float32)
    if ties:
        scores = np.round(scores * 2) / 2  # many exact ties
    ys = rng.integers(0, 9, size=(n_images, channels))
    xs = rng.integers(0, 9, size=(n_images, channels))
    return scores, ys, xs


@pytest.mark.parametrize("ties, nans", [(False, False), (True, False), (True, True)])
def test_topn_streaming_and_merge_equal_full_sort(ties: bool, nans: bool) -> None:
    rng = np.random.default_rng(1)
    scores, ys, xs = random_stream(rng, 250, 6, ties)
    if nans:  # a broken model's NaNs rank last, after every number
        scores[rng.random(scores.shape) < 0.95] = np.nan  # fewer numbers than N: NaNs fill the tail
    ids = np.arange(250)
    order = np.argsort(-scores, axis=0, kind="stable")[:20].T  # ties: first seen wins

    streamed = TopN.empty(6, 20)
    for lo in range(0, 250, 17):
        streamed.update(ids[lo : lo + 17], scores[lo : lo + 17], ys[lo : lo + 17], xs[lo : lo + 17])
    shard_a, shard_b = TopN.empty(6, 20), TopN.empty(6, 20)
    shard_a.update(ids[130:], scores[130:], ys[130:], xs[130:])  # later images first: merge must still order ties
    shard_b.update(ids[:130], scores[:130], ys[:130], xs[:130])
    merged = shard_a.merge(shard_b)
    for state in (streamed, merged):
        np.testing.assert_array_equal(state.ids, order)
        np.testing.assert_array_equal(state.scores, np.take_along_axis(scores.T, order, 1))
        np.testing.assert_array_equal(state.ys, np.take_along_axis(ys.T, order, 1))


def test_topn_with_fewer_images_than_n() -> None:
    state = TopN.empty(2, 5)
    state.update(np.array([0, 1]), np.array([[1.0, -2.0], [3.0, -1.0]], np.float32), np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert state.count() == 2
    np.testing.assert_array_equal(state.ids[:, :2], [[1, 0], [1, 0]])
    assert (state.ids[:, 2:] == -1).all()


def test_moments_merge_equals_numpy() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(3, 2, size=(101, 4))
    a, b = Moments.empty(4), Moments.empty(4)
    a.update(scores[:40])
    b.update(scores[40:70])
    b.update(scores[70:])
    merged = a.merge(b)
    np.testing.assert_allclose(merged.mean, scores.mean(0))
    np.testing.assert_allclose(merged.std, scores.std(0))
    np.testing.assert_allclose(merged.active_fraction, (scores > 0).mean(0))
