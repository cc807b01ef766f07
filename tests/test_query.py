"""``query`` and ``where`` against brute force written here: onnxruntime on an unmodified copy of the
model with the layers exposed as graph outputs, the preprocessing and the receptive-field arithmetic
redone in numpy, the stored scores read with SQL; and a planted model whose one unit fires only on a
pattern in one corner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import invoke, query
from conftest import TINY
from matplotlib import colormaps
from onnx import TensorProto, helper, numpy_helper

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ConfigError, ImageError, ModelError

LAYERS = ("conv5", "conv8")


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    db = tmp_path_factory.mktemp("query") / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, name="tiny", config=AnalyzeConfig(top_n=8))
    return db


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """A photo that is not square and not the input size: resize and crop both move the box."""
    source = sorted(p for p in photo_dir.rglob("*.jpg"))[0]
    image = cv2.imread(str(source))
    wide = cv2.resize(image, (150, 90), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("photo") / "wide.png"
    cv2.imwrite(str(path), wide)
    return path


# ---- brute force ---------------------------------------------------------------------------------


def stored_pre(db: Path) -> dict:
    return json.loads(query(db, "SELECT preprocessing FROM models WHERE model = 'tiny'")[0][0])


def input_of(path: Path, pre: dict) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The network input of ``path`` (shorter-side resize, centre crop, normalisation) and the map
    (scale, crop top, crop left) from original pixels to input pixels."""
    bgr = cv2.imread(str(path))
    h, w = bgr.shape[:2]
    size = pre["resize"]["size"]
    scale = size / min(h, w)
    nh, nw = (size, round(w * scale)) if h <= w else (round(h * scale), size)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    ch, cw = pre["crop"]["height"], pre["crop"]["width"]
    top, left = (nh - ch) // 2, (nw - cw) // 2
    rgb = resized[top : top + ch, left : left + cw, ::-1].astype(np.float32)
    x = (rgb * pre["pixel_scale"] - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32), (nw / w, top, left)


def tensor_of(db: Path, alias: str) -> str:
    return query(db, "SELECT layer FROM layers WHERE model = 'tiny' AND alias = ?", [alias])[0][0]


def maps_of(x: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    """The layers' full maps from onnxruntime: an unmodified copy with the tensors as extra outputs."""
    model = onnx.load(str(TINY))
    for t in tensors:
        model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(tensors, {session.get_inputs()[0].name: x})
    return {t: v[0] for t, v in zip(tensors, values)}


def fields(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """(size, stride, start of cell 0) along y of every tensor, walking Conv / Add / elementwise nodes."""
    rf = {model.graph.input[0].name: (1, 1, 0)}
    for node in model.graph.node:
        ins = [rf[i] for i in node.input if i in rf]
        if not ins:
            continue
        if node.op_type == "Conv":
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            k, s = a["kernel_shape"][0], a.get("strides", [1, 1])[0]
            d, pad = a.get("dilations", [1, 1])[0], a.get("pads", [0, 0, 0, 0])[0]
            size, stride, start = ins[0]
            rf[node.output[0]] = (size + (k - 1) * d * stride, stride * s, start - pad * stride)
        else:  # Add of two paths: the span of both; Clip / Relu / BN: unchanged
            start = min(f[2] for f in ins)
            end = max(f[2] + f[0] for f in ins)
            rf[node.output[0]] = (end - start, ins[0][1], start)
    return rf


def brute_force(db: Path, path: Path, box: tuple[float, float, float, float] | None) -> list[tuple[str, float, float, float]]:
    """(neuron, response, relative, percentile) of every live neuron of ``LAYERS``, ranked by relative."""
    pre = stored_pre(db)
    x, (scale, top, left) = input_of(path, pre)
    tensors = [tensor_of(db, a) for a in LAYERS]
    maps = maps_of(x, tensors)
    rf = fields(onnx.load(str(TINY)))
    found = []
    for alias, tensor in zip(LAYERS, tensors):
        m = maps[tensor]
        size, stride, start = rf[tensor]
        centre = start + np.arange(m.shape[1]) * stride + size / 2  # square maps, same on both axes
        if box is None:
            keep = np.ones(m.shape[1:], bool)
        else:
            x0, y0, x1, y1 = box[0] * scale - left, box[1] * scale - top, box[2] * scale - left, box[3] * scale - top
            keep = ((centre >= y0) & (centre <= y1))[:, None] & ((centre >= x0) & (centre <= x1))[None, :]
        assert keep.any()
        scores = {}
        for unit, rank, activation in query(db, "SELECT unit, rank, activation FROM top_activations WHERE model = 'tiny' "
                                                "AND layer = ? ORDER BY unit, rank", [tensor]):
            scores.setdefault(unit, []).append(activation)
        dead = {u for (u,) in query(db, "SELECT unit FROM neurons WHERE model = 'tiny' AND layer = ? AND dead", [tensor])}
        for unit in range(m.shape[0]):
            if unit in dead or scores[unit][0] <= 0:
                continue
            response = float(m[unit][keep].max())
            percentile = 100 * sum(s <= response for s in scores[unit]) / len(scores[unit])
            found.append((f"tiny:{alias}:{unit}", response, response / scores[unit][0], percentile))
    return sorted(found, key=lambda f: -f[2])


@pytest.mark.parametrize("box", [None, (20.0, 10.0, 70.0, 60.0)])
def test_query_matches_brute_force(tiny_db: Path, photo: Path, box) -> None:
    expected = brute_force(tiny_db, photo, box)
    result = api.query(photo, "tiny", db=tiny_db, box=box, layers=LAYERS, k=10_000, provider="cpu")
    got = [(h.neuron, h.response, h.relative, h.percentile) for h in result.hits]
    assert len(got) == len(expected) > 100
    assert sorted(n for n, *_ in got) == sorted(n for n, *_ in expected)
    by_name = {n: rest for n, *rest in expected}
    for name, response, relative, percentile in got:
        want = by_name[name]
        assert response == pytest.approx(want[0], rel=1e-4, abs=1e-4)
        assert relative == pytest.approx(want[1], rel=1e-4, abs=1e-4)
        assert percentile == pytest.approx(want[2], abs=1e-9) or abs(response - want[0]) < 1e-4
    # the ranking: relative never increases, and the order agrees wherever the values are apart
    relatives = [g[2] for g in got]
    assert relatives == sorted(relatives, reverse=True)
    rank = {n: k for k, (n, *_) in enumerate(expected)}
    for a, b in zip(got, got[1:]):
        if a[2] - b[2] > 1e-3:
            assert rank[a[0]] < rank[b[0]]
    if box is not None:  # the box changes the answer (it is not the whole image)
        whole = {h.neuron: h.response for h in api.query(photo, "tiny", db=tiny_db, layers=LAYERS, k=10_000).hits}
        assert any(whole[n] > r + 1e-3 for n, r, *_ in got)
        assert all(whole[n] >= r - 1e-5 for n, r, *_ in got)


def test_query_cli_json_and_picture(tiny_db: Path, photo: Path, tmp_path: Path) -> None:
    picture = tmp_path / "q.png"
    result = invoke("query", photo, "--model", "tiny", "--db", tiny_db, "--layers", "conv5", "-k", "4", "--json",
                    "-o", picture, "--box", "20,10,70,60")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 4
    assert set(lines[0]) >= {"neuron", "response", "relative", "percentile", "location"}
    expected = brute_force(tiny_db, photo, (20.0, 10.0, 70.0, 60.0))
    best_conv5 = max(r for n, _, r, _ in expected if ":conv5:" in n)
    assert lines[0]["relative"] == pytest.approx(best_conv5, rel=1e-4)
    assert cv2.imread(str(picture)) is not None


def test_query_per_layer_and_folder_table(tiny_db: Path, photo: Path, tmp_path: Path) -> None:
    hits = api.query(photo, "tiny", db=tiny_db, layers=LAYERS, k=3, per_layer=True).hits
    assert [h.alias for h in hits] == ["conv5"] * 3 + ["conv8"] * 3
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(photo, folder / "a.png")
    shutil.copy(photo, folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"top{suffix}"
        result = invoke("query", folder, "--model", "tiny", "--db", tiny_db, "--layers", "conv5", "-k", "5",
                        "--out", out, "--silent")
        assert result.exit_code == 0, result.output
        import duckdb

        rows = duckdb.sql(f"SELECT image, place, neuron, relative FROM '{out}' ORDER BY image, place").fetchall()
        assert len(rows) == 10 and [r[1] for r in rows[:5]] == [1, 2, 3, 4, 5]
        expected = [n for n, *_ in brute_force(tiny_db, photo, None) if ":conv5:" in n][:5]
        assert [r[3] for r in rows[:5]] == sorted((r[3] for r in rows[:5]), reverse=True)
        assert {r[2] for r in rows[:5]} <= {n for n, *_ in brute_force(tiny_db, photo, None)}
        assert rows[0][3] == pytest.approx(dict((n, r) for n, _, r, _ in brute_force(tiny_db, photo, None))[expected[0]], rel=1e-4)
        assert "1 skipped" in result.output


def test_query_refuses_bad_input_in_one_line(tiny_db: Path, photo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        api.query(photo, "tiny", db=tiny_db, box=(50, 10, 20, 60))
    with pytest.raises(ConfigError, match="outside"):
        api.query(photo, "tiny", db=tiny_db, box=(500, 500, 600, 600))
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(ImageError, match="not a decodable image"):
        api.query(tmp_path / "x.jpg", "tiny", db=tiny_db)
    other = tmp_path / "other.onnx"
    shutil.copy(TINY, other)
    with other.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="not the file"):
        api.query(photo, "tiny", db=tiny_db, model_file=other)
    moved = tmp_path / "moved.onnx"
    shutil.copy(TINY, moved)
    assert api.query(photo, "tiny", db=tiny_db, model_file=moved, k=1).hits
    result = invoke("query", photo, "--model", "tiny", "--db", tiny_db, "--box", "1,2,3")
    assert result.exit_code == 2 and "X0,Y0,X1,Y1" in result.output
    result = invoke("where", "tiny:conv5:9999", photo, "--db", tiny_db, "-o", tmp_path / "w.png")
    assert result.exit_code == 2 and result.output.startswith("Error: ") and "units 0-" in result.output
    assert result.output.startswith("Error: neuron tiny:conv5:9999 does not exist; layer conv5 of 'tiny' has units 0-")


# ---- where ---------------------------------------------------------------------------------------


def test_where_draws_the_map_computed_here(tiny_db: Path, photo: Path, tmp_path: Path) -> None:
    tensor = tensor_of(tiny_db, "conv5")
    x, _ = input_of(photo, stored_pre(tiny_db))
    m = maps_of(x, [tensor])[tensor]
    unit = int(np.argmax(m.max(axis=(1, 2))))  # the unit that fires most: a map with a clear peak
    values = m[unit]
    top1 = query(tiny_db, "SELECT activation FROM top_activations WHERE model = 'tiny' AND layer = ? AND unit = ? "
                          "AND rank = 1", [tensor, unit])[0][0]
    out = tmp_path / "where.png"
    result = invoke("where", f"tiny:conv5:{unit}", photo, "--db", tiny_db, "-o", out)
    assert result.exit_code == 0, result.output
    drawn = api.where(f"tiny:conv5:{unit}", photo, tmp_path / "again.png", db=tiny_db)
    png = cv2.imread(str(out))[:, :, ::-1]
    # the map tile: each 64-px input pixel shows cell (py * 16 // 64, px * 16 // 64), enlarged by an integer factor
    y0, x0, y1, x1 = drawn.boxes[1]
    factor = (y1 - y0) // 64
    assert factor >= 1 and (y1 - y0, x1 - x0) == (64 * factor, 64 * factor)
    idx = np.arange(64 * factor) // factor * values.shape[0] // 64
    up = values[idx[:, None], idx[None, :]]
    vmin, vmax = min(0.0, float(values.min())), max(float(values.max()), top1)
    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round()
    want = lut[np.clip(np.round((up - vmin) / (vmax - vmin) * 255), 0, 255).astype(int)]
    assert np.abs(png[y0:y1, x0:x1].astype(float) - want).max() <= 1
    # the overlay outlines the receptive field of the map's maximum in red
    cy, cx = np.unravel_index(int(values.argmax()), values.shape)
    size, stride, start = fields(onnx.load(str(TINY)))[tensor]
    ry0, rx0 = max(start + cy * stride, 0), max(start + cx * stride, 0)
    oy, ox = drawn.boxes[0][:2]
    red = (png[..., 0] == 255) & (png[..., 1] == 0) & (png[..., 2] == 0)
    ys, xs = np.nonzero(red[oy : oy + 64 * factor, ox : ox + 64 * factor])
    assert ys.min() // factor == ry0 and xs.min() // factor == rx0
    assert ys.max() // factor == min(start + cy * stride + size, 64) - 1
    assert drawn.response == pytest.approx(float(values.max()), rel=1e-4) and drawn.cell == (cy, cx)


# ---- a planted unit --------------------------------------------------------------------------------

PATTERN = np.kron(np.array([[1, 0], [0, 1]]), np.ones((2, 2)))[..., None].repeat(3, axis=2) * 255.0  # 4x4 checks


def planted_model(path: Path) -> None:
    """Input 32x32 in 0..255 (raw); one 4x4 conv + ReLU: unit 0 matches ``PATTERN`` (zero-mean weights,
    bias 90 % of the exact match, so only the pattern fires it), units 1-3 are the mean of one colour."""
    w = np.zeros((4, 3, 4, 4), np.float32)
    w[0] = ((PATTERN - 127.5) / 127.5 / 48).transpose(2, 0, 1)
    for c in range(3):
        w[1 + c, c] = 1 / 16
    exact = float((w[0] * PATTERN.transpose(2, 0, 1)).sum())
    b = np.array([-0.9 * exact, 0, 0, 0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["conv"], kernel_shape=[4, 4]),
         helper.make_node("Relu", ["conv"], ["act"]), helper.make_node("GlobalAveragePool", ["act"], ["out"])],
        "planted", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4, 1, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def noise(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The planted model analysed over noise images, two of them with the pattern somewhere."""
    root = tmp_path_factory.mktemp("planted")
    model = root / "planted.onnx"
    planted_model(model)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for k in range(10):
        img = noise(rng)
        if k < 2:
            y, x = rng.integers(0, 28, 2)
            img[y : y + 4, x : x + 4] = PATTERN
        cv2.imwrite(str(images / f"{k}.png"), img)
    db = root / "nfi.duckdb"
    api.analyze(model, images, db=db, name="planted", config=AnalyzeConfig(top_n=5, preprocess="raw"))
    return db, root


def test_planted_unit_ranks_first_only_for_a_box_around_its_pattern(planted: tuple[Path, Path]) -> None:
    db, root = planted
    image = np.full((32, 32, 3), 128, np.uint8)
    image[2:6, 2:6] = PATTERN  # top-left corner
    path = root / "query.png"
    cv2.imwrite(str(path), image)
    around = api.query(path, "planted", db=db, box=(0, 0, 9, 9)).hits
    assert around[0].neuron == "planted:conv1:0"
    assert around[0].relative == pytest.approx(1.0, rel=1e-5) and around[0].cell == (2, 2)
    assert around[1].relative < 0.9
    elsewhere = api.query(path, "planted", db=db, box=(20, 20, 31, 31)).hits
    assert elsewhere[0].neuron != "planted:conv1:0"
    assert "planted:conv1:0" not in [h.neuron for h in elsewhere if h.relative > 0]


def test_a_moved_model_is_found_with_model_file_only(planted: tuple[Path, Path], tmp_path: Path) -> None:
    db, root = planted
    model = tmp_path / "planted.onnx"
    shutil.copy(root / "planted.onnx", model)
    images = root / "images"
    moved_db = tmp_path / "nfi.duckdb"
    api.analyze(model, images, db=moved_db, name="planted", config=AnalyzeConfig(top_n=5, preprocess="raw"))
    elsewhere = tmp_path / "elsewhere.onnx"
    model.rename(elsewhere)
    image = images / "0.png"
    result = invoke("query", image, "--model", "planted", "--db", moved_db)
    assert result.exit_code == 2 and result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert "is gone" in result.output and "--model-file" in result.output
    result = invoke("query", image, "--model", "planted", "--db", moved_db, "--model-file", elsewhere, "--json", "-k", "2")
    assert result.exit_code == 0, result.output
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 2
