"""Relevance by ablation: exact values on a classifier whose ablations are computed by hand, the
product against a brute force (one edited graph, one channel masked at a time) on real models, and
the refusal of a model without class scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import invoke
from conftest import LITE0, PLANTED, TINY
from onnx import TensorProto, helper, numpy_helper

import onnx_nfi
from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import Interrupted, NfiError
from onnx_nfi.graph.cut import cut_at
from onnx_nfi.graph.load import load_model
from onnx_nfi.report import queries, render
from onnx_nfi.report.relevance_plot import relevance_png
from onnx_nfi.store.duckdb_store import Store

#: The hand-built classifier: x -> A = conv1(x) = x (identity 1x1), B = conv2(A) = W2·A (1x1),
#: S = A + B (a skip connection past conv2), logits = mean_yx(S) · M.
W2 = np.array([[0.5, -0.25, 0.0], [0.0, 0.75, 0.5], [-0.5, 0.0, 1.0]], np.float32)
M = np.array([[2.0, -1.0, 0.5, 0.0], [-1.0, 2.5, 0.0, 0.5], [0.5, 0.0, -2.0, 1.5]], np.float32) / 40.0
CLASSES = M.shape[1]


def hand_built_model(path: Path) -> None:
    """The classifier above on 8x8 RGB images (raw pixels), its weights in the module constants."""
    ident = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["A"]),
        helper.make_node("Conv", ["A", "w2"], ["B"]),
        helper.make_node("Add", ["A", "B"], ["S"]),
        helper.make_node("GlobalAveragePool", ["S"], ["G"]),
        helper.make_node("Flatten", ["G"], ["F"]),
        helper.make_node("Gemm", ["F", "m", "bias"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(ident, "w1"), numpy_helper.from_array(W2.reshape(3, 3, 1, 1), "w2"),
             numpy_helper.from_array(M, "m"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The hand-built model analysed on 16 8x8 images in folders named by class index; returns the
    database, each image's channel means [N, 3] (sorted file order) and labels."""
    root = tmp_path_factory.mktemp("hand")
    hand_built_model(root / "hand.onnx")
    rng = np.random.default_rng(3)
    means, labels = [], []
    for label in range(CLASSES):
        for k in range(4):
            colour = rng.integers(0, 256, 3)  # images of different mean colours: mean ablation changes them
            rgb = np.clip(colour + rng.integers(-40, 41, (8, 8, 3)), 0, 255).astype(np.uint8)
            folder = root / "images" / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{k}.png"), rgb[:, :, ::-1])
            means.append(rgb.reshape(-1, 3).astype(np.float64).mean(axis=0))
            labels.append(label)
    db = root / "nfi.duckdb"
    api.analyze(root / "hand.onnx", root / "images", db=db, config=AnalyzeConfig(preprocess="raw", indexes=("class",)))
    return db, np.array(means), np.array(labels)


def by_hand(means: np.ndarray, layer: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Baseline probabilities [N, K] and, per ablated channel c, the probabilities [C, N, K]: the
    pooled S is (I + W2)·a with a the image means when A is ablated, a + W2·a with B's row c gone
    when B is; mean ablation puts the channel's mean over the images in place of its value."""
    full = means @ (np.eye(3) + W2.T.astype(np.float64))  # pooled S per image
    base = softmax(full @ M.astype(np.float64))
    ablated = []
    for c in range(3):
        if layer == "A":
            a = means.copy()
            a[:, c] = 0.0 if mode == "zero" else means[:, c].mean()
            pooled = a @ (np.eye(3) + W2.T.astype(np.float64))
        else:
            b = means @ W2.T.astype(np.float64)
            b[:, c] = 0.0 if mode == "zero" else b[:, c].mean()
            pooled = means + b
        ablated.append(softmax(pooled @ M.astype(np.float64)))
    return base, np.array(ablated)


def stored(db: Path, model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer tensor: the stored prob_drop and flip_rate by unit."""
    _, rows = api.sql(
        "SELECT n.layer, n.unit, r.prob_drop, r.flip_rate FROM relevance r JOIN neurons n USING (neuron_id) "
        f"WHERE n.model = '{model}' ORDER BY n.layer, n.unit", db=db,
    )
    out: dict[str, tuple[list, list]] = {}
    for layer, _unit, drop, flip in rows:
        out.setdefault(layer, ([], []))
        out[layer][0].append(drop)
        out[layer][1].append(flip)
    return {k: (np.array(d), np.array(f)) for k, (d, f) in out.items()}


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("target", ["predicted", "label"])
def test_hand_built_classifier_gives_the_drops_and_flips_computed_by_hand(hand, mode: str, target: str) -> None:
    db, means, labels = hand
    assert cut_at(load_model(db.parent / "hand.onnx"), "B").crossing == ("B", "A")  # the skip connection crosses the cut
    summary = onnx_nfi.relevance("hand", db=db, images=db.parent / "images", target=target, mode=mode)
    assert summary.images == len(labels) and [d.alias for d in summary.layers] == ["conv1", "conv2"]
    values = stored(db, "hand")
    for layer in ("A", "B"):
        base, ablated = by_hand(means, layer, mode)
        t = base.argmax(axis=1) if target == "predicted" else labels
        margins = np.sort(ablated, axis=2)[..., -1] - np.sort(ablated, axis=2)[..., -2]
        assert margins.min() > 1e-4  # no near-tie: each flip below is decided, not rounding
        drop = (base[np.arange(len(t)), t][None] - ablated[:, np.arange(len(t)), t]).mean(axis=1)
        flips = (ablated.argmax(axis=2) != base.argmax(axis=1)[None]).mean(axis=1)
        np.testing.assert_allclose(values[layer][0], drop, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(values[layer][1], flips)
        assert flips.max() > 0  # the test would see a wrong flip count
    _, rows = api.sql("SELECT DISTINCT target, mode, images FROM relevance", db=db)
    assert rows == [(target, mode, len(labels))]


def test_classes_hurt_most_are_the_largest_mean_drops_by_target_class(hand) -> None:
    db, means, labels = hand
    onnx_nfi.relevance("hand", db=db, images=db.parent / "images", target="label", layers=["conv2"])
    base, ablated = by_hand(means, "B", "zero")
    _, rows = api.sql(
        "SELECT n.unit, c.rank, c.class_index, c.prob_drop FROM relevance_classes c JOIN neurons n USING (neuron_id) "
        "WHERE n.layer = 'B' ORDER BY n.unit, c.rank", db=db,
    )
    for unit in range(3):
        drops = base[np.arange(len(labels)), labels] - ablated[unit, np.arange(len(labels)), labels]
        per_class = np.array([drops[labels == k].mean() for k in range(CLASSES)])
        best = np.argsort(-per_class, kind="stable")[:3]
        got = [r for r in rows if r[0] == unit]
        assert [r[2] for r in got] == best.tolist()
        np.testing.assert_allclose([r[3] for r in got], per_class[best], rtol=1e-5, atol=1e-7)


def masked_model(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``model`` with ``tensor`` multiplied by an input mask [1, C, 1, 1] before every reader."""
    edited = onnx.ModelProto.FromString(model.SerializeToString())
    g = edited.graph
    for node in g.node:
        node.input[:] = [f"{tensor}__masked" if i == tensor else i for i in node.input]
    for out in g.output:
        assert out.name != tensor
    g.node.append(helper.make_node("Mul", [tensor, "mask"], [f"{tensor}__masked"]))
    g.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, None, 1, 1]))
    nodes = _topological(list(g.node))  # the Mul, appended last, goes before its readers
    del g.node[:]
    g.node.extend(nodes)
    return edited


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes reordered so that every node comes after the producers of its inputs."""
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    done: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        if i in seen:
            return
        seen.add(i)
        for name in nodes[i].input:
            if name in produced:
                visit(produced[name])
        done.append(i)

    for i in range(len(nodes)):
        visit(i)
    return [nodes[i] for i in done]


def brute_force(model_path: Path, tensor: str, channels: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """prob_drop and flip_rate of every channel of ``tensor`` (zeroed, target = predicted): one full run each."""
    model = masked_model(onnx.load(str(model_path)), tensor)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = model.graph.input[0].name
    out = model.graph.output[0].name

    def probs(mask: np.ndarray) -> np.ndarray:
        return softmax(session.run([out], {name: x, "mask": mask.reshape(1, -1, 1, 1)})[0].astype(np.float64))

    base = probs(np.ones(channels, np.float32))
    t = base.argmax(axis=1)
    drops, flips = [], []
    for c in range(channels):
        mask = np.ones(channels, np.float32)
        mask[c] = 0.0
        p = probs(mask)
        drops.append((base[np.arange(len(t)), t] - p[np.arange(len(t)), t]).mean())
        flips.append((p.argmax(axis=1) != t).mean())
    return np.array(drops), np.array(flips)


def images_at(folder: Path, photo_dir: Path, size: int, count: int) -> list[np.ndarray]:
    """``count`` photos resized to exactly ``size`` px (fed pixel for pixel), written to ``folder``; RGB arrays."""
    folder.mkdir(parents=True)
    out = []
    for k, path in enumerate(sorted(p for p in photo_dir.rglob("*") if p.is_file())[::7][:count]):
        bgr = cv2.resize(cv2.imread(str(path)), (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{k:02d}.png"), bgr)
        out.append(bgr[:, :, ::-1])
    return out


def compare_with_brute_force(model: Path, photos: Path, tmp_path: Path, aliases: list[str], count: int) -> None:
    """The product's values on ``aliases`` of ``model`` against ``brute_force`` on the same images."""
    pre = json.loads(model.with_suffix(".json").read_text())
    size = pre["input_size"][0]
    rgb = images_at(tmp_path / "images", photos, size, count)
    x = ((np.stack(rgb).astype(np.float32) - np.float32(pre["mean"])) / np.float32(pre["std"])).transpose(0, 3, 1, 2)
    db = tmp_path / "nfi.duckdb"
    api.analyze(model, tmp_path / "images", db=db, config=AnalyzeConfig(layers=tuple(aliases), indexes=(), nf=False))
    onnx_nfi.relevance(model.stem, db=db, images=tmp_path / "images")
    values = stored(db, model.stem)
    layers = {i.layer.alias: i.layer for i in api.layers(model)}
    for alias in aliases:
        layer = layers[alias]
        drops, flips = brute_force(model, layer.tensor, layer.channels, np.ascontiguousarray(x))
        np.testing.assert_allclose(values[layer.tensor][0], drops, rtol=1e-3, atol=2e-6)
        np.testing.assert_array_equal(values[layer.tensor][1], flips)
        assert np.abs(drops).max() > 1e-4  # the layers matter on these images: the comparison says something


def test_planted_model_matches_a_brute_force_on_two_layers(photo_dir: Path, tmp_path: Path) -> None:
    compare_with_brute_force(PLANTED, photo_dir, tmp_path, ["conv2", "conv4"], 12)


@pytest.mark.slow
def test_lite0_matches_a_brute_force_across_its_skip_connections(photo_dir: Path, tmp_path: Path) -> None:
    # conv6 (block 1's output) is also the residual input of block 2's Add; conv9 (block 2's
    # projection) is cut with conv6 crossing the cut beside it
    lm = load_model(LITE0)
    assert cut_at(lm, "_blocks.2._project_conv").crossing == ("_blocks.2._project_conv", "_blocks.1._project_conv")
    compare_with_brute_force(LITE0, photo_dir, tmp_path, ["conv6", "conv9"], 3)


def test_model_without_class_scores_is_refused_in_one_line(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(indexes=(), nf=False, layers=("conv1",)))
    with pytest.raises(NfiError, match="no class-score output"):
        onnx_nfi.relevance("tiny_lite0", db=db, images=photo_dir)
    result = invoke("relevance", "tiny_lite0", "--db", db, "--images", photo_dir, "--silent")
    assert result.exit_code == 2 and not result.stdout.strip() and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "class-score output" in lines[0]
    assert api.sql("SELECT count(*) FROM relevance", db=db)[1] == [(0,)]


def test_stopped_run_says_which_layers_were_written(hand, tmp_path: Path) -> None:
    db = tmp_path / "copy.duckdb"
    shutil.copy(hand[0], db)
    api.sql("DELETE FROM relevance", write=True, db=db)

    def stop_in_second_layer(phase: str, done: int, total: int) -> None:
        if phase == "Ablating conv2":
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"relevance of conv1 was written .*measure the rest with --layers conv2, or "
                       r"run the same command with --resume\."):
        onnx_nfi.relevance("hand", db=db, images=hand[0].parent / "images", progress=stop_in_second_layer)
    layers = "SELECT DISTINCT n.layer FROM relevance JOIN neurons n USING (neuron_id) ORDER BY 1"
    assert api.sql(layers, db=db)[1] == [("A",)]
    resumed = onnx_nfi.relevance("hand", db=db, images=hand[0].parent / "images", resume=True)
    assert resumed.resumed == ("conv1",) and [d.alias for d in resumed.layers] == ["conv2"]
    assert api.sql(layers, db=db)[1] == [("A",), ("B",)]
    again = onnx_nfi.relevance("hand", db=db, images=hand[0].parent / "images", resume=True, mode="mean")
    assert again.resumed == () and len(again.layers) == 2  # another mode is another measurement
    api.remove("hand", db=db)
    both = "SELECT count(*) FROM relevance UNION ALL SELECT count(*) FROM relevance_classes"
    assert api.sql(both, db=db)[1] == [(0,), (0,)]


def test_top_card_and_plot_show_the_stored_relevance(hand, tmp_path: Path) -> None:
    db, _, _ = hand
    onnx_nfi.relevance("hand", db=db, images=db.parent / "images", layers=["conv1", "conv2"])
    drops = stored(db, "hand")["B"][0]
    drawn = render.top_png("hand", "conv2", "prob_drop", tmp_path / "top.png", db=db, k=3)
    assert list(drawn.units) == np.argsort(-drops, kind="stable").tolist()
    with Store.open(db, read_only=True) as store:
        card = queries.neuron_card(store, "hand", "conv2", 1)
    assert card.values["prob_drop"] == pytest.approx(drops[1]) and "flip_rate" in card.values
    result = invoke("relevance", "hand", "--db", db, "--images", db.parent / "images", "--layers", "conv2",
                    "--plot", tmp_path / "plot.png", "--silent")
    assert result.exit_code == 0, result.output
    assert "conv2" in result.stdout and (tmp_path / "plot.png").stat().st_size > 1000
    image = cv2.imread(str(relevance_png("hand", tmp_path / "again.png", db=db)))
    assert image is not None and image.shape[1] > 600  # two layers with relevance: two panels side by side


def test_import_brings_the_relevance_rows_with_fresh_neuron_ids(hand, tmp_path: Path) -> None:
    db = hand[0]
    onnx_nfi.relevance("hand", db=db, images=db.parent / "images")
    other = tmp_path / "other.duckdb"
    api.import_db(db, db=other)
    query = ("SELECT n.layer, n.unit, r.prob_drop, r.flip_rate, c.rank, c.class_index FROM relevance r "
             "JOIN neurons n USING (neuron_id) JOIN relevance_classes c USING (neuron_id) ORDER BY ALL")
    assert api.sql(query, db=other)[1] == api.sql(query, db=db)[1] and len(api.sql(query, db=db)[1]) == 18


def test_labels_that_name_no_class_and_bad_options_are_refused_before_any_work(hand, photo_dir: Path) -> None:
    db = hand[0]
    before = api.sql("SELECT count(*) FROM runs WHERE kind = 'relevance'", db=db)[1]
    with pytest.raises(NfiError, match=r"is not one of the model's 4 classes.*--class-names"):
        onnx_nfi.relevance("hand", db=db, images=photo_dir, target="label")
    with pytest.raises(NfiError, match="--target label needs labelled images"):
        onnx_nfi.relevance("hand", db=db, target="label")
    with pytest.raises(NfiError, match="--mode one of zero, mean"):
        onnx_nfi.relevance("hand", db=db, mode="half")
    assert api.sql("SELECT count(*) FROM runs WHERE kind = 'relevance'", db=db)[1] == before


def test_threads_option_gives_the_same_relevance(hand, tmp_path: Path) -> None:
    """``--threads`` sets how the sessions run, not what they compute: the stored rows are the same
    (to float rounding) with 2 threads as with the suite's 1."""
    db, _, _ = hand
    onnx_nfi.relevance("hand", db=db, images=db.parent / "images", layers=["conv2"])
    before = stored(db, "hand")
    result = invoke("relevance", "hand", "--db", db, "--images", db.parent / "images", "--layers", "conv2",
                    "--threads", "2", "--silent")
    assert result.exit_code == 0, result.output
    after = stored(db, "hand")
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), rtol=1e-5, atol=1e-7)
