"""Selectivity-index formulas (docs/method.md §5-§7), region transforms and the planted model.

The vectorised functions are checked on hand-made top-N lists whose answers are written down,
and against plain-Python loop implementations written here from the formulas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_nfi.neurons.class_selectivity import SelectivityOptionError, class_selectivity
from onnx_nfi.neurons.color import color_selectivity, grey_region, to_grey
from onnx_nfi.neurons import transforms as tf
from tests.planted_data import CLASSES, COLOR_CLASSES, make_dataset, make_image

MODELS = Path(__file__).resolve().parent.parent / "models"


# ---------------------------------------------------------------- plain-Python references


def loop_class_selectivity(acts, labels, rho=1.0, threshold=0.1):
    """One neuron, straight from §6; returns (index, top_class, top_freq, population, {c: f_c})."""
    kept = [(a, c) for a, c in zip(acts, labels) if a > 0 and c >= 0]
    if not kept:
        return math.nan, -1, math.nan, 0, {}
    total = sum(a for a, _ in kept)
    freq: dict[int, float] = {}
    first_seen: dict[int, int] = {}
    for rank, (a, c) in enumerate(kept):
        freq[c] = freq.get(c, 0.0) + a
        first_seen.setdefault(c, rank)
    freq = {c: s / total for c, s in freq.items()}
    ordered = sorted(freq.values(), reverse=True)
    m, cumulative = 0, 0.0
    for f in ordered:
        m += 1
        cumulative += f
        if cumulative >= rho - 1e-9:
            break
    n = len(kept)
    index = (n - m) / (n - 1) if n >= 2 else math.nan
    best = max(freq.values())
    top = min((c for c in freq if freq[c] >= best - 1e-9), key=lambda c: first_seen[c])
    population = sum(1 for f in freq.values() if f >= threshold - 1e-9)
    return index, top, freq[top], population, freq


def loop_ratio(acts, transformed):
    """S = Σ a'_j / Σ a_j over a_j > 0, one neuron; NaN when no a_j > 0."""
    num = sum(t for a, t in zip(acts, transformed) if a > 0)
    den = sum(a for a in acts if a > 0)
    return num / den if den > 0 else math.nan


# ---------------------------------------------------------------- class selectivity


def test_all_one_class_gives_one():
    result = class_selectivity(np.linspace(5, 1, 100)[None], np.full((1, 100), 7))
    assert result.index[0] == 1.0
    assert result.top_class[0] == 7 and result.top_class_frequency[0] == 1.0
    assert result.population_code[0] == 1 and result.n_images[0] == 100 and result.n_classes[0] == 1


def test_ten_classes_of_ten_gives_90_over_99():
    rng = np.random.default_rng(1)
    acts = np.sort(rng.uniform(0.1, 3.0, 100))[::-1][None]
    labels = rng.permutation(np.repeat(np.arange(10), 10))[None]
    result = class_selectivity(acts, labels)
    assert result.index[0] == pytest.approx(90 / 99, abs=1e-12)
    assert result.n_classes[0] == 10


def test_equal_frequencies_reach_rho_despite_rounding():
    # Ten classes of f = 0.1 each: the float cumulative sum misses 1.0 by an ulp, and each f_c
    # may come out as 0.09999999999999999; the tolerance must still count all ten.
    result = class_selectivity(np.full((1, 100), 0.3), np.repeat(np.arange(10), 10)[None])
    assert result.index[0] == pytest.approx(90 / 99, abs=1e-12)
    assert result.population_code[0] == 10


def test_dead_neuron_is_undefined():
    acts = np.array([[0.0, -1.0, -2.0], [-0.5, -0.5, -3.0]])
    result = class_selectivity(acts, np.zeros((2, 3), dtype=int))
    assert np.isnan(result.index).all()
    assert (result.top_class == -1).all() and np.isnan(result.top_class_frequency).all()
    assert (result.population_code == 0).all() and (result.n_images == 0).all()
    assert result.distribution.unit.size == 0


def test_rho_below_one_by_hand():
    # f = (0.7, 0.2, 0.05, 0.05) over N' = 5 images.
    acts = np.array([[4.0, 3.0, 2.0, 0.5, 0.5]])
    labels = np.array([[0, 0, 1, 2, 3]])
    assert class_selectivity(acts, labels, rho=0.9).index[0] == pytest.approx((5 - 2) / 4)  # 0.7+0.2
    assert class_selectivity(acts, labels, rho=0.95).index[0] == pytest.approx((5 - 3) / 4)
    assert class_selectivity(acts, labels, rho=0.7).index[0] == pytest.approx((5 - 1) / 4)
    assert class_selectivity(acts, labels, rho=1.0).index[0] == pytest.approx((5 - 4) / 4)


def test_population_code_and_distribution():
    acts = np.array([[4.0, 3.0, 2.0, 0.5, 0.5]])
    labels = np.array([[0, 0, 1, 2, 3]])
    result = class_selectivity(acts, labels)
    assert result.population_code[0] == 2  # 0.7 and 0.2; 0.05 twice falls below 0.1
    assert class_selectivity(acts, labels, population_threshold=0.05).population_code[0] == 4
    dist = result.distribution.of(0)
    assert [c for c, _ in dist] == [0, 1, 2, 3]
    assert [f for _, f in dist] == pytest.approx([0.7, 0.2, 0.05, 0.05])
    assert result.top_class[0] == 0 and result.top_class_frequency[0] == pytest.approx(0.7)


def test_unlabelled_and_non_positive_images_are_skipped():
    acts = np.array([[9.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    labels = np.array([[-1, 4, 4, 5, 6, 6]])
    result = class_selectivity(acts, labels)
    assert result.n_images[0] == 3
    assert result.index[0] == pytest.approx((3 - 2) / 2)
    assert result.distribution.of(0) == [(4, pytest.approx(5 / 6)), (5, pytest.approx(1 / 6))]


def test_single_labelled_image_has_class_but_no_index():
    result = class_selectivity(np.array([[5.0, 1.0]]), np.array([[3, -1]]))
    assert np.isnan(result.index[0])
    assert result.top_class[0] == 3 and result.top_class_frequency[0] == 1.0


def test_top_class_tie_goes_to_highest_ranked_image():
    # Classes 9 and 2 weigh 3.0 each; class 9's first image ranks higher, so 9 wins despite its code.
    acts = np.array([[2.0, 1.5, 1.5, 1.0], [2.0, 1.5, 1.5, 1.0]])
    labels = np.array([[9, 2, 2, 9], [2, 9, 9, 2]])
    result = class_selectivity(acts, labels)
    assert result.top_class.tolist() == [9, 2]


def test_invalid_rho_is_a_user_error():
    with pytest.raises(SelectivityOptionError):
        class_selectivity(np.ones((1, 3)), np.zeros((1, 3), dtype=int), rho=0.0)


def test_vectorised_class_selectivity_equals_loop():
    rng = np.random.default_rng(7)
    units, n = 60, 40
    acts = np.sort(rng.normal(0.5, 1.0, (units, n)), axis=1)[:, ::-1]
    acts[:3] = -np.abs(acts[:3])  # some dead neurons
    labels = rng.integers(-1, 8, (units, n)) * 1000  # sparse, large codes
    labels[labels < 0] = -1
    labels[10] = 3000  # one single-class neuron
    for rho in (1.0, 0.8, 0.5):
        result = class_selectivity(acts, labels, rho=rho)
        for u in range(units):
            index, top, top_f, population, freq = loop_class_selectivity(acts[u], labels[u], rho)
            np.testing.assert_allclose(result.index[u], index, rtol=1e-12, equal_nan=True)
            assert result.top_class[u] == top
            np.testing.assert_allclose(result.top_class_frequency[u], top_f, rtol=1e-12, equal_nan=True)
            assert result.population_code[u] == population
            got = dict(result.distribution.of(u))
            assert got.keys() == freq.keys()
            assert all(got[c] == pytest.approx(freq[c], rel=1e-12) for c in freq)


# ---------------------------------------------------------------- colour


def test_color_index_zero_when_grey_changes_nothing():
    acts = np.array([[3.0, 2.0, 1.0, 0.0]])
    assert color_selectivity(acts, acts)[0] == 0.0


def test_color_index_by_hand_and_not_clipped():
    acts = np.array([[2.0, 1.0, -1.0, 0.0], [2.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    grey = np.array([[1.0, 1.0, 5.0, 5.0], [4.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = color_selectivity(acts, grey)
    assert got[0] == pytest.approx(1 - 2 / 3)  # images with a_j <= 0 ignored on both sides
    assert got[1] == pytest.approx(-1.0)  # grey excites more: reported as is
    assert np.isnan(got[2])  # dead


def test_color_index_equals_loop():
    rng = np.random.default_rng(3)
    acts, grey = rng.normal(0.3, 1, (40, 25)), rng.normal(0.2, 1, (40, 25))
    acts[0] = -1.0
    expected = [1 - loop_ratio(a, g) for a, g in zip(acts, grey)]
    np.testing.assert_allclose(color_selectivity(acts, grey), expected, rtol=1e-12, equal_nan=True)


def test_to_grey_is_luma_on_three_channels():
    images = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]]], dtype=np.uint8)
    grey = to_grey(images)
    assert grey.dtype == np.float32 and grey.shape == (1, 2, 2, 3)
    expected = np.array([[0.299 * 255, 0.587 * 255], [0.114 * 255, 0.299 * 10 + 0.587 * 20 + 0.114 * 30]])
    np.testing.assert_allclose(grey[0, :, :, 0], expected, rtol=1e-6)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_allclose(to_grey(grey), grey, rtol=1e-6)  # grey is a fixed point


def test_grey_region_greys_only_the_clipped_window():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    out = grey_region(image, (-3, 8, 4, 20))  # clipped to rows 0..3, columns 8..11
    np.testing.assert_array_equal(out[:4, 8:], to_grey(image[:4, 8:]))
    outside = np.ones((10, 12), dtype=bool)
    outside[:4, 8:] = False
    np.testing.assert_array_equal(out[outside], image[outside].astype(np.float32))


def _conv_graph(weights: np.ndarray) -> ort.InferenceSession:
    """A 3x3 Conv (pad 1) + Relu over an RGB image: each output sees a 3x3 window."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights.shape[0], 9, 9])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_grey_window_equals_grey_image_at_the_window_position():
    """§5: with an exact receptive field, greying the whole image gives the same a'_j."""
    rng = np.random.default_rng(5)
    session = _conv_graph(rng.normal(size=(4, 3, 3, 3)).astype(np.float32))
    image = rng.uniform(0, 255, (9, 9, 3)).astype(np.float32)

    def run(img):
        return session.run(None, {"x": img.transpose(2, 0, 1)[None]})[0][0]

    whole = run(to_grey(image))
    for y, x in [(0, 0), (4, 5), (8, 8), (0, 7)]:
        window = (y - 1, x - 1, y + 2, x + 2)
        np.testing.assert_allclose(run(grey_region(image, window))[:, y, x], whole[:, y, x], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- transforms


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(11).uniform(0, 255, (20, 24, 3)).astype(np.float32)


WINDOWS = [(3, 5, 10, 12), (2, 4, 15, 9), (-4, -3, 6, 5), (14, 18, 30, 31)]


def _outside(shape, window):
    y0, x0, y1, x1 = window
    mask = np.ones(shape[:2], dtype=bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = False
    return mask


@pytest.mark.parametrize("window", WINDOWS)
def test_transforms_leave_everything_outside_the_window(image, window):
    outside = _outside(image.shape, window)
    outputs = [tf.rotate_region(image, window, 37), tf.shuffle_region(image, window, np.random.default_rng(0))]
    outputs += [tf.mirror_region(image, window, axis) for axis in tf.AXES]
    for out in outputs:
        assert out.dtype == np.float32 and out.shape == image.shape
        np.testing.assert_array_equal(out[outside], image[outside])
    assert not np.array_equal(outputs[0], image)  # the window did change


@pytest.mark.parametrize("window", WINDOWS)
def test_rotating_by_360_is_identity(image, window):
    np.testing.assert_array_equal(tf.rotate_region(image, window, 360), image)
    np.testing.assert_array_equal(tf.rotate_region(image, window, 0), image)


def test_rotation_by_90_is_rot90_counter_clockwise(image):
    out = tf.rotate_region(image, (3, 5, 10, 12), 90)
    np.testing.assert_array_equal(out[3:10, 5:12], np.rot90(image[3:10, 5:12]))


def test_mirror_axes_on_a_square_window(image):
    region = image[3:10, 5:12]
    expected = {
        0: region[::-1],  # horizontal axis: top <-> bottom
        90: region[:, ::-1],  # vertical axis: left <-> right
        135: region.transpose(1, 0, 2),  # main diagonal
        45: region[::-1, ::-1].transpose(1, 0, 2),  # anti-diagonal
    }
    for axis, want in expected.items():
        np.testing.assert_array_equal(tf.mirror_region(image, (3, 5, 10, 12), axis)[3:10, 5:12], want)


@pytest.mark.parametrize("window", WINDOWS[:2])
def test_mirroring_twice_is_identity(image, window):
    # Only for windows inside the image: a clipped window is mirrored about its unclipped centre,
    # so part of it maps outside the image and is filled by the border rule.
    y0, x0, y1, x1 = window
    axes = tf.AXES if y1 - y0 == x1 - x0 else (0, 90)  # diagonals map only a square onto itself
    for axis in axes:
        twice = tf.mirror_region(tf.mirror_region(image, window, axis), window, axis)
        np.testing.assert_array_equal(twice, image)


def test_mirror_rejects_unknown_axis(image):
    with pytest.raises(ValueError):
        tf.mirror_region(image, (0, 0, 4, 4), 30)


@pytest.mark.parametrize("window", WINDOWS)
def test_shuffle_preserves_the_pixel_multiset(image, window):
    out = tf.shuffle_region(image, window, np.random.default_rng(2))
    inside = ~_outside(image.shape, window)
    sort = lambda px: px[np.lexsort(px.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(sort(out[inside]), sort(image[inside]))
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(out, tf.shuffle_region(image, window, np.random.default_rng(2)))


def test_angle_and_axis_constants():
    assert tf.ANGLES == tuple(range(15, 346, 15)) and len(tf.ANGLES) == 23
    assert tf.AXES == (0, 45, 90, 135)


def test_further_indexes_equal_loop():
    rng = np.random.default_rng(9)
    units, n = 12, 30
    acts = rng.normal(0.5, 1, (units, n))
    acts[4] = -0.1  # dead
    rotated = rng.uniform(-0.5, 2.5, (units, len(tf.ANGLES), n))
    mirrored = rng.uniform(-0.5, 2.5, (units, len(tf.AXES), n))
    shuffled = rng.uniform(-0.5, 2.5, (units, n))

    per_angle, mean_angle = tf.orientation_index(acts, rotated)
    per_axis, mean_axis = tf.symmetry_index(acts, mirrored)
    shape = tf.shape_index(acts, shuffled)
    clip = lambda v: min(max(v, 0.0), 1.0) if not math.isnan(v) else v  # noqa: E731
    for u in range(units):
        angles = [clip(1 - loop_ratio(acts[u], rotated[u, k])) for k in range(len(tf.ANGLES))]
        axes = [clip(loop_ratio(acts[u], mirrored[u, k])) for k in range(len(tf.AXES))]
        np.testing.assert_allclose(per_angle[u], angles, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(mean_angle[u], np.mean(angles), rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(per_axis[u], axes, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(mean_axis[u], np.mean(axes), rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(shape[u], 1 - loop_ratio(acts[u], shuffled[u]), rtol=1e-12, equal_nan=True)
    assert np.isnan(mean_angle[4]) and np.isnan(mean_axis[4]) and np.isnan(shape[4])
    assert ((per_angle[~np.isnan(per_angle)] >= 0) & (per_angle[~np.isnan(per_angle)] <= 1)).all()
    assert (shape < 0).any()  # shape is not clipped


# ---------------------------------------------------------------- planted model


def test_planted_colour_classes_differ_only_in_colour():
    grey = [to_grey(make_image(CLASSES.index(name), np.random.default_rng(4))) for name in COLOR_CLASSES]
    colour = [make_image(CLASSES.index(name), np.random.default_rng(4)) for name in COLOR_CLASSES]
    assert not np.array_equal(colour[0], colour[1])
    for g in grey[1:]:
        np.testing.assert_allclose(g, grey[0], atol=1e-4)


def _planted_conv1_session() -> ort.InferenceSession:
    """The planted model with its first Relu (conv1 after ReLU) as an extra output."""
    model = onnx.load(MODELS / "planted_selectivity.onnx")
    first_relu = next(node for node in model.graph.node if node.op_type == "Relu")
    model.graph.output.append(helper.make_tensor_value_info(first_relu.output[0], TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _planted_conv1(session: ort.InferenceSession, rgb: np.ndarray) -> np.ndarray:
    """conv1 activations ``[B, 16, 32, 32]`` of RGB images (0-255), normalised as the sidecar says."""
    x = ((rgb.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    return session.run([session.get_outputs()[-1].name], {"input": x})[0]


def test_planted_luminance_edge_unit_is_colour_blind():
    session = _planted_conv1_session()
    images, _ = make_dataset(20, seed=123)
    colour = _planted_conv1(session, images)
    grey = _planted_conv1(session, to_grey(images))
    unit = colour[:, 0].reshape(len(images), -1)
    where = unit.argmax(axis=1)
    a = unit[np.arange(len(images)), where][None]
    a_grey = grey[:, 0].reshape(len(images), -1)[np.arange(len(images)), where][None]
    assert (a > 0).all()
    assert abs(color_selectivity(a, a_grey)[0]) < 1e-5
    np.testing.assert_allclose(grey[:, 0], colour[:, 0], atol=1e-4)
    # The other, trained, conv1 units all learnt some colour dependence on the same images.
    others = colour[:, 1:].reshape(len(images), 15, -1)
    where = others.argmax(axis=2)
    a = np.take_along_axis(others, where[..., None], 2)[..., 0].T
    a_grey = np.take_along_axis(grey[:, 1:].reshape(len(images), 15, -1), where[..., None], 2)[..., 0].T
    assert (color_selectivity(a, a_grey) > 0.1).all()


def test_planted_edge_unit_orientation_and_symmetry():
    """Sobel-x is odd left-right: a 180° turn or a left-right mirror of its 3x3 window negates the
    response (ReLU -> 0), a top-bottom mirror or a 360° turn keeps it. Interior locations only,
    since at the border the zero padding is part of the edge and cannot be transformed."""
    session = _planted_conv1_session()
    images, _ = make_dataset(10, seed=321)
    x = images.astype(np.float32)
    unit = _planted_conv1(session, x)[:, 0, 1:-1, 1:-1].reshape(len(x), -1)
    ys, xs = np.divmod(unit.argmax(axis=1), 30)
    ys, xs = ys + 1, xs + 1
    a = unit.max(axis=1)[None]
    assert (a > 0).all()

    def read(transform, *args):
        batch = np.stack([transform(img, (y - 1, x - 1, y + 2, x + 2), *args) for img, y, x in zip(x, ys, xs)])
        return _planted_conv1(session, batch)[np.arange(len(x)), 0, ys, xs]

    rotated = np.stack([read(tf.rotate_region, angle) for angle in (180, 360)])[None]
    mirrored = np.stack([read(tf.mirror_region, axis) for axis in tf.AXES])[None]
    per_angle, _ = tf.orientation_index(a, rotated)
    per_axis, _ = tf.symmetry_index(a, mirrored)
    np.testing.assert_allclose(per_angle[0], [1.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(per_axis[0, [0, 2]], [1.0, 0.0], atol=1e-5)  # axes 0° and 90°
