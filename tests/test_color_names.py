"""Colour names (docs/method.md §9): the 11-term colour-naming model against a one-colour-at-a-time
transcription of its formulas, and each neuron's colour-term distribution on a model built to see
red, green and blue, against a brute force over upsampled maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_nfi
from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig, IndexConfig
from onnx_nfi.data.images import list_images
from onnx_nfi.graph.model_layers import model_layers
from onnx_nfi.pipeline.features import FeatureWork, compute_features
from onnx_nfi.pipeline.models import open_model
from onnx_nfi.scan.scanner import scan
from onnx_nfi.store.duckdb_store import Store

TERMS = ["red", "orange", "brown", "yellow", "green", "blue", "purple", "pink", "black", "grey", "white"]
PARAMETERS = json.loads((Path(onnx_nfi.__file__).parent / "neurons" / "color_naming_tse.json").read_text())
PROTOTYPES = [(220, 20, 30), (255, 140, 0), (120, 70, 30), (250, 230, 30), (30, 160, 40), (30, 60, 200),
              (120, 30, 140), (250, 170, 200), (10, 10, 10), (128, 128, 128), (250, 250, 250)]


def reference_memberships(r: int, g: int, b: int) -> list[float]:
    """The model for one colour, step by step as §9 writes it (plain floats, no arrays)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r / 255, g / 255, b / 255)]
    m = [(0.412424, 0.357579, 0.180464), (0.212656, 0.715158, 0.0721856), (0.0193324, 0.119193, 0.950444)]
    x, y, z = (sum(row[i] * lin[i] for i in range(3)) / w for row, w in zip(m, (0.9505, 1.0, 1.0891)))

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    lightness = 116 * y ** (1 / 3) - 16 if y > 0.008856 else 903.3 * y
    a, bb = 500 * (f(x) - f(y)), 200 * (f(y) - f(z))
    thr = PARAMETERS["lightness_thresholds"]
    level = 0
    for k in range(len(thr) - 1):
        if thr[k] < lightness <= thr[k + 1]:
            level = k

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v)) if v > -700 else 0.0

    mus = []
    for k in range(8):
        tx, ty, ax, ay, bx, by, be, ex, ey, phi = (PARAMETERS["chromatic"][k][p][level] for p in range(10))
        if be == 0:
            mus.append(0.0)
            continue
        da, db = a - tx, bb - ty
        r1 = da * math.cos(ay) + db * math.sin(ay)
        r2 = -da * math.sin(ax) + db * math.cos(ax)
        e1 = da * math.cos(phi) + db * math.sin(phi)
        e2 = -da * math.sin(phi) + db * math.cos(phi)
        ex, ey = ex or 1.0, ey or 1.0
        mus.append(sig(by * r1) * sig(bx * r2) * sig(be * ((e1 / ex) ** 2 + (e2 / ey) ** 2 - 1)))
    rest = max(0.0, 1 - sum(mus))
    s = [sig(beta * (lightness - t)) for t, beta in PARAMETERS["achromatic_sigmoids"]]
    values = mus + [rest * s[0], rest * s[1] * s[2], rest * s[3]]
    return [v / sum(values) for v in values]


def test_memberships_match_the_formulas_on_random_colours() -> None:
    colours = np.random.default_rng(3).integers(0, 256, (400, 3), dtype=np.uint8)
    colours = np.concatenate([colours, [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]]).astype(np.uint8)
    got = onnx_nfi.color_memberships(colours)
    expected = np.array([reference_memberships(*map(int, c)) for c in colours])
    assert got.shape == (len(colours), 11)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    # any leading shape: an image in, an image of memberships out
    image = colours[:400].reshape(20, 20, 3)
    np.testing.assert_allclose(onnx_nfi.color_memberships(image), got[:400].reshape(20, 20, 11))


@pytest.mark.parametrize("term, rgb", list(zip(TERMS, PROTOTYPES)))
def test_each_prototype_is_named_by_its_term(term: str, rgb: tuple[int, int, int]) -> None:
    mu = onnx_nfi.color_memberships(np.array(rgb, np.uint8))
    assert mu.shape == (11,)
    assert TERMS[int(np.argmax(mu))] == term and mu.max() >= 0.95
    assert reference_memberships(*rgb)[TERMS.index(term)] >= 0.95


# ------------------------------------------------------------------- a model that sees red, green, blue
HW = 64
#: Layer 1 (1x1 conv): red, green, blue opponents and brightness; layer 2: 5x5 means, stride 2;
#: layer 3: 3x3 means of layer 2, stride 2 (receptive field 13 px, stride 4).
OPPONENTS = np.array([[1, -0.5, -0.5], [-0.5, 1, -0.5], [-0.5, -0.5, 1], [1 / 3, 1 / 3, 1 / 3]], np.float32)
BIAS = np.array([-20, -20, -20, 0], np.float32)


def colour_model(path: Path) -> Path:
    """The three-layer model above (every layer is a Conv + Relu), saved with every layer as an output."""
    mean5 = np.zeros((4, 4, 5, 5), np.float32)
    mean3 = np.zeros((4, 4, 3, 3), np.float32)
    for c in range(4):
        mean5[c, c], mean3[c, c] = 1 / 25, 1 / 9
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (OPPONENTS[:, :, None, None], "w1"), (BIAS, "b1"), (mean5, "w2"), (mean3, "w3"))]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"]), helper.make_node("Relu", ["c1"], ["layer1"]),
        helper.make_node("Conv", ["layer1", "w2"], ["c2"], strides=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c2"], ["layer2"]),
        helper.make_node("Conv", ["layer2", "w3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["layer3"]),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("layer3", "layer1", "layer2")]
    graph = helper.make_graph(nodes, "rgb", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, HW, HW])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def patch_images(folder: Path, colours: dict[str, tuple[int, int, int]], per_colour: int, seed: int) -> Path:
    """``per_colour`` 64 px images per colour: a 14 px patch of it on a flat grey or a grey-noise
    background (grey levels only), at a random place."""
    rng = np.random.default_rng(seed)
    for name, rgb in colours.items():
        (folder / name).mkdir(parents=True)
        for k in range(per_colour):
            level = int(rng.integers(60, 200))
            image = np.full((HW, HW, 3), level, np.uint8)
            if k % 2:
                image[:] = rng.integers(40, 220, (HW, HW, 1), dtype=np.uint8)
            y, x = rng.integers(4, HW - 18, 2)
            image[y : y + 14, x : x + 14] = rgb
            cv2.imwrite(str(folder / name / f"{k}.png"), image[:, :, ::-1])
    return folder


@pytest.fixture(scope="module")
def colour_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("colours")
    model = colour_model(folder / "rgb.onnx")
    images = patch_images(folder / "images", {"red": (220, 20, 30), "green": (30, 160, 40), "blue": (30, 60, 200)}, 6, 0)
    db = folder / "nfi.duckdb"
    config = AnalyzeConfig(top_n=5, nf=False, indexes=("color_names",), preprocess="raw")
    api.analyze(model, images, db=db, config=config)
    return db, model, images


def test_units_built_for_red_green_and_blue_are_named_so(colour_db: tuple[Path, Path, Path]) -> None:
    db, _, _ = colour_db
    with Store.open(db, read_only=True) as store:
        rows = store.rows("SELECT l.alias, n.unit, n.top_color, n.top_color_share FROM neurons n JOIN layers l "
                          "USING (model, layer) ORDER BY l.depth, n.unit")
    assert {r["alias"] for r in rows} == {"conv1", "conv2", "conv3"}
    for r in rows:
        if r["unit"] < 3:
            assert r["top_color"] == ("red", "green", "blue")[r["unit"]], r
            assert r["top_color_share"] > 0.6, r
    # the 1x1 layer's window is one pixel: the patch colour alone
    first = [r for r in rows if r["alias"] == "conv1" and r["unit"] < 3]
    assert all(r["top_color_share"] > 0.95 for r in first)


def test_stored_shares_match_a_brute_force_over_upsampled_maps(colour_db: tuple[Path, Path, Path]) -> None:
    """Every stored (neuron, term) share against maps upsampled pixel by pixel in the test: each
    pixel takes the value of the cell whose receptive-field centre is nearest (ties: the later
    cell), inside the window of the top location, clipped to the image."""
    db, model, _ = colour_db
    with Store.open(db, read_only=True) as store:
        layers = {r["layer"]: r for r in store.rows("SELECT * FROM layers")}
        tops = store.rows("SELECT t.layer, t.unit, t.image_id, t.y, t.x, t.activation, i.path FROM top_activations t "
                          "JOIN images i USING (model, image_id) WHERE t.activation > 0")
        stored = store.rows("SELECT n.layer, n.unit, c.color, c.share FROM color_names c JOIN neurons n USING (neuron_id)")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    cache: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    sums: dict[tuple[str, int], np.ndarray] = {}
    weights: dict[tuple[str, int], float] = {}
    for t in tops:
        if t["path"] not in cache:
            rgb = cv2.imread(t["path"])[:, :, ::-1]
            maps = dict(zip(names, session.run(None, {"input": rgb.transpose(2, 0, 1)[None].astype(np.float32)})))
            mu = np.array([reference_memberships(*map(int, p)) for p in rgb.reshape(-1, 3)]).reshape(HW, HW, 11)
            cache[t["path"]] = (mu, maps)
        mu, maps = cache[t["path"]]
        rf = layers[t["layer"]]
        fmap = np.maximum(maps[t["layer"]][0, t["unit"]], 0)
        cell = [_nearest_cell(np.arange(HW), rf[f"rf_size_{a}"], rf[f"rf_stride_{a}"], rf[f"rf_offset_{a}"], fmap.shape[k])
                for k, a in enumerate("yx")]
        w = fmap[cell[0][:, None], cell[1][None, :]]
        y0, x0 = t["y"] * rf["rf_stride_y"] + rf["rf_offset_y"], t["x"] * rf["rf_stride_x"] + rf["rf_offset_x"]
        inside = np.zeros((HW, HW), bool)
        inside[max(y0, 0) : max(y0 + rf["rf_size_y"], 0), max(x0, 0) : max(x0 + rf["rf_size_x"], 0)] = True
        w = np.where(inside, w, 0)
        share = (w[..., None] * mu).sum((0, 1)) / w.sum()
        key = (t["layer"], t["unit"])
        sums[key] = sums.get(key, 0) + t["activation"] * share
        weights[key] = weights.get(key, 0) + t["activation"]
    expected = {(layer, unit, TERMS[n]): v / weights[(layer, unit)] for (layer, unit), s in sums.items() for n, v in enumerate(s)}
    got = {(r["layer"], r["unit"], r["color"]): r["share"] for r in stored}
    assert len(got) >= 12
    assert set(got) == {k for k, v in expected.items() if v >= 0.01}
    for key, value in got.items():
        assert value == pytest.approx(expected[key], abs=2e-4), key


def _nearest_cell(pixels: np.ndarray, size: int, stride: int, offset: int, cells: int) -> np.ndarray:
    """Per pixel index, the map cell whose receptive field is centred nearest (ties: the later one)."""
    centres = offset + np.arange(cells) * stride + (size - 1) / 2
    distance = np.abs(pixels[:, None] - centres[None, :])
    later_first = distance[:, ::-1]
    return cells - 1 - np.argmin(later_first, axis=1)


def test_a_neuron_on_grey_images_is_named_achromatic(colour_db: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, model, _ = colour_db
    images = patch_images(tmp_path / "grey", {"light": (230, 230, 230), "mid": (128, 128, 128), "dark": (25, 25, 25)}, 4, 1)
    db = tmp_path / "grey.duckdb"
    api.analyze(model, images, db=db, config=AnalyzeConfig(top_n=5, nf=False, indexes=("color_names",), preprocess="raw"))
    with Store.open(db, read_only=True) as store:
        rows = store.rows("SELECT unit, dead, top_color FROM neurons")
        terms = {r[0] for r in store._con.execute("SELECT DISTINCT color FROM color_names").fetchall()}
    brightness = [r for r in rows if r["unit"] == 3]
    assert brightness and all(r["top_color"] in ("black", "grey", "white") for r in brightness)
    assert all(r["top_color"] is None for r in rows if r["dead"])  # the opponents see nothing on grey
    assert terms <= {"black", "grey", "white"}


def test_index_recomputes_the_same_colour_names_in_small_chunks(colour_db: tuple[Path, Path, Path]) -> None:
    """``onnx-nfi index --indexes color_names`` on the stored top images gives the analysis's rows
    again; so do the passes cut into chunks of 4 images (each chunk's shares are its own entries')."""
    db, model, images = colour_db
    query = ("SELECT n.layer, n.unit, n.top_color, n.top_color_share, c.color, c.share FROM neurons n "
             "LEFT JOIN color_names c USING (neuron_id) ORDER BY ALL")
    with Store.open(db, read_only=True) as store:
        before = store.rows(query)
    summary = api.index("rgb", db=db, config=IndexConfig(indexes=("color_names",)))
    assert summary.indexes == ("color_names",)
    with Store.open(db, read_only=True) as store:
        assert store.rows(query) == before
    lm, pre = open_model(model, "raw")
    infos = model_layers(lm)
    config = AnalyzeConfig(top_n=5, nf=False, indexes=("color_names",), preprocess="raw")
    result = scan(lm, [i.layer for i in infos], pre, list_images(images).files, top_n=5, provider="cpu")
    topns = {tensor: st.topn for tensor, st in result.stats.items()}
    paths = {img.image_id: Path(img.path) for img in result.images}
    whole, chunked = (
        compute_features(FeatureWork.of(lm, pre, infos, topns, paths, {}, config, chunk_images=size), None).indexes
        for size in (512, 4)
    )
    for tensor, names in whole.color_names.items():
        np.testing.assert_array_equal(chunked.color_names[tensor], names)
        assert list(chunked.columns[tensor]["top_color"]) == list(whole.columns[tensor]["top_color"])


def test_summary_names_draws_colours_and_concepts_by_depth(colour_db: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``summary --names`` on a real database (a copy with concept labels set on the brightness
    units): the counts it draws equal a count in the test, and the PNG shows the bars and the line."""
    import shutil

    from cli_helpers import invoke

    from onnx_nfi.report.names_plot import TERM_RGB
    from onnx_nfi.store.color_names import names_by_depth

    db = tmp_path / "copy.duckdb"
    shutil.copy(colour_db[0], db)
    with Store.open(db) as store:
        store._con.execute("UPDATE neurons SET concept = 'light', concept_p = 1e-5 WHERE unit = 3")
        rows = store.rows("SELECT l.alias, n.top_color, n.concept, n.dead FROM neurons n JOIN layers l USING (model, layer)")
        drawn = {x.alias: x for x in names_by_depth(store, [])}
    for alias, x in drawn.items():
        mine = [r for r in rows if r["alias"] == alias and not r["dead"]]
        assert x.live == len(mine) and x.concepts == sum(r["concept"] is not None for r in mine)
        assert x.top_colors == {t: sum(r["top_color"] == t for r in mine) for t in {r["top_color"] for r in mine}}
    png = tmp_path / "names.png"
    result = invoke("summary", "--names", "-o", png, "--db", db)
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(png))[:, :, ::-1].astype(int)
    for term in ("red", "green", "blue"):
        rgb = np.rint(np.array(TERM_RGB[term]) * 255)
        assert (np.abs(image - rgb).max(axis=2) <= 2).sum() > 500, term  # a bar, not just the legend swatch
    plain = tmp_path / "plain.png"  # the same database before the concept labels
    assert invoke("summary", "--names", "-o", plain, "--db", colour_db[0]).exit_code == 0
    without = cv2.imread(str(plain)).astype(int)
    assert (image.max(axis=2) <= 5).sum() > (without.max(axis=2) <= 5).sum() + 200  # the black concept line
    missing = invoke("summary", "nosuch", "--names", "-o", tmp_path / "x.png", "--db", db)
    assert missing.exit_code != 0 and missing.output.startswith("Error:") and "nosuch" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def test_colour_names_follow_their_neurons_through_import_and_remove(colour_db: tuple[Path, Path, Path], tmp_path: Path) -> None:
    db = tmp_path / "other.duckdb"
    query = ("SELECT l.alias, n.unit, c.color, c.share FROM color_names c JOIN neurons n USING (neuron_id) "
             "JOIN layers l USING (model, layer) ORDER BY ALL")
    with Store.open(colour_db[0], read_only=True) as store:
        source = store.rows(query)
    api.import_db(colour_db[0], db=db)
    with Store.open(db, read_only=True) as store:
        assert store.rows(query) == source
    api.remove("rgb", db=db)
    with Store.open(db, read_only=True) as store:
        assert store.rows("SELECT * FROM color_names") == []


def test_colour_name_chunks_on_ray_equal_the_same_chunks_here(colour_db: tuple[Path, Path, Path]) -> None:
    """The colour-name pass as Ray tasks over 4-image chunks, combined by the fold actor, equals
    the local pass bit for bit."""
    ray = pytest.importorskip("ray", reason="the ray extra is part of the dev install (make test)")
    from onnx_nfi.pipeline.distributed import RayChunks

    _, model, images = colour_db
    lm, pre = open_model(model, "raw")
    infos = model_layers(lm)
    config = AnalyzeConfig(top_n=5, nf=False, indexes=("color_names",), preprocess="raw", provider="cpu")
    result = scan(lm, [i.layer for i in infos], pre, list_images(images).files, top_n=5, provider="cpu")
    topns = {tensor: st.topn for tensor, st in result.stats.items()}
    paths = {img.image_id: Path(img.path) for img in result.images}
    work = FeatureWork.of(lm, pre, infos, topns, paths, {}, config, chunk_images=4)
    here = compute_features(work, None).indexes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        there = compute_features(work, None, RayChunks("local")).indexes
    finally:
        ray.shutdown()
    assert set(there.color_names) == set(here.color_names)
    for tensor, names in here.color_names.items():
        np.testing.assert_array_equal(there.color_names[tensor], names)
