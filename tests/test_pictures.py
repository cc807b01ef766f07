"""``onnx-nfi nf / card / top / summary``: real databases in, PNGs read back and checked pixel by pixel.

The expected pixels are computed here from the stored rows (SQL) and the image files, independently
of ``onnx_nfi.report``: an enlarged NF is the stored values rounded, each pixel repeated k×k; a
card's crop is the RF window ``y·stride + offset`` (centre-cropped to the input) of the image as
the stored preprocessing feeds it, grey outside the image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import TINY

from onnx_nfi.api import analyze
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.preprocess import from_dict
from onnx_nfi.report import pictures
from onnx_nfi.report.queries import cut_crop

MODEL = "tiny"
DEAD = ("conv1", 2)  # made dead in the fixture, as a dead neuron is stored
GREY = 127




def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def tensor(db: Path, alias: str) -> str:
    return query(db, "SELECT layer FROM layers WHERE model = ? AND alias = ?", [MODEL, alias])[0][0]


def stored_nfs(db: Path, alias: str) -> dict[int, np.ndarray | None]:
    """A layer's stored NFs as [h, w, 3] by unit, None for a dead neuron."""
    rows = query(
        db,
        "SELECT unit, nf, nf_height, nf_width FROM neurons WHERE model = ? AND layer = ?",
        [MODEL, tensor(db, alias)],
    )
    return {u: None if nf is None else np.array(nf, np.float64).reshape(h, w, 3) for u, nf, h, w in rows}


def stored_nf(db: Path, alias: str, unit: int) -> np.ndarray | None:
    return stored_nfs(db, alias)[unit]


def expected_enlarged(nf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``shape`` pixels of a nearest-neighbour enlargement: pixel (i, j) is stored value (i // k, j // k)."""
    k = shape[0] // nf.shape[0]
    assert shape == (nf.shape[0] * k, nf.shape[1] * k)
    rows, cols = np.arange(shape[0]) // k, np.arange(shape[1]) // k
    return np.clip(np.floor(nf[rows][:, cols] + 0.5), 0, 255).astype(np.uint8)


def box_pixels(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, x0, y1, x1 = box
    return image[y0:y1, x0:x1]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The tiny model analysed over the real photos; one neuron stored as dead, indexes filled by SQL.

    The index values are real functions of each neuron's stored statistics (the index pass is
    tested elsewhere); shape_selectivity stays NULL everywhere, as when it was never computed.
    A second model ``tiny_copy`` holds the same rows with other index values, for overlays.
    """
    path = tmp_path_factory.mktemp("pictures") / "nfi.duckdb"
    analyze(TINY, photo_dir, db=path, name=MODEL, config=AnalyzeConfig(top_n=12, indexes=()))
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "UPDATE neurons SET dead = true, nf = NULL, nf_height = NULL, nf_width = NULL "
            "WHERE model = ? AND unit = ? AND layer = (SELECT layer FROM layers WHERE model = ? AND alias = ?)",
            [MODEL, DEAD[1], MODEL, DEAD[0]],
        )
        con.execute(
            "UPDATE neurons SET "
            "color_selectivity = CASE WHEN dead THEN NULL ELSE 1 - mean_activation / max_activation END, "
            "class_selectivity = CASE WHEN dead THEN NULL ELSE active_fraction END, "
            "top_class = 'cat', top_class_frequency = 0.25"
        )
        for table in ("models", "layers"):
            con.execute(
                f"INSERT INTO {table} SELECT * REPLACE ('tiny_copy' AS model) FROM {table} WHERE model = ?", [MODEL]
            )
        con.execute(
            "INSERT INTO neurons SELECT * REPLACE ('tiny_copy' AS model, neuron_id + 100000 AS neuron_id, "
            "color_selectivity / 2 AS color_selectivity) FROM neurons WHERE model = ?",
            [MODEL],
        )
    finally:
        con.close()
    return path


def test_single_nf_is_the_stored_nf_enlarged(db: Path, tmp_path: Path) -> None:
    nf = stored_nf(db, "conv3", 5)
    r = invoke("nf", MODEL, "conv3", 5, "-o", tmp_path / "nf.png", "--db", db)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"Wrote {tmp_path / 'nf.png'}"
    png = read_png(tmp_path / "nf.png")
    k = math.ceil(256 / nf.shape[0])
    assert png.shape == (nf.shape[0] * k, nf.shape[1] * k, 3) and png.shape[0] >= 256
    np.testing.assert_array_equal(png, expected_enlarged(nf, png.shape[:2]))

    r = invoke("nf", MODEL, tensor(db, "conv3"), 5, "-o", tmp_path / "nf4.png", "--db", db, "--scale", 4)
    assert r.exit_code == 0, r.output
    png = read_png(tmp_path / "nf4.png")
    assert png.shape == (nf.shape[0] * 4, nf.shape[1] * 4, 3)
    np.testing.assert_array_equal(png, expected_enlarged(nf, png.shape[:2]))


def test_layer_grid_places_every_unit_in_order(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    r = invoke("nf", MODEL, "conv1", "--grid", "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    png = read_png(out)
    units = [
        u
        for (u,) in query(
            db, "SELECT unit FROM neurons WHERE model = ? AND layer = ? ORDER BY unit", [MODEL, tensor(db, "conv1")]
        )
    ]
    by_unit = stored_nfs(db, "conv1")
    nfs = [by_unit[u] for u in units]
    assert nfs[DEAD[1]] is None and sum(n is None for n in nfs) < len(units) // 2
    tiles = [pictures.Tile(nf, (f"unit {u}",)) for u, nf in zip(units, nfs)]
    picture = pictures.grid(tiles, "title")
    assert len(picture.boxes) == len(units) == 32
    columns = math.ceil(math.sqrt(len(units)))
    tops = sorted({b[0] for b in picture.boxes})
    lefts = sorted({b[1] for b in picture.boxes})
    assert len(lefts) == columns and len(tops) == math.ceil(len(units) / columns)
    assert len(set(np.diff(lefts))) == 1 and len(set(np.diff(tops))) == 1  # a regular lattice
    assert png.shape[0] > tops[-1] + 96 and png.shape[1] > lefts[-1] + 96
    for k, (nf, box) in enumerate(zip(nfs, picture.boxes)):
        assert (box[0], box[1]) == (tops[k // columns], lefts[k % columns])  # row-major, unit order
        tile = box_pixels(png, box)
        if nf is None:
            assert box[2] - box[0] == 96 and (tile[1, tile.shape[1] // 2] == GREY).all()
            assert (tile[48, 48] < 100).all() and (tile[1, 1] < 100).all()  # crossed out
        else:
            np.testing.assert_array_equal(tile, expected_enlarged(nf, tile.shape[:2]))
        caption = png[box[2] + 2 : box[2] + 2 + 16, box[1] : box[3]]
        assert (caption < 100).any()  # a caption is drawn under every tile


def test_grid_ordered_by_a_column(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "ordered.png"
    r = invoke("nf", MODEL, "conv3", "--grid", "--order-by", "max_activation", "--limit", 5, "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    rows = query(
        db,
        "SELECT unit, max_activation FROM neurons WHERE model = ? AND layer = ? ORDER BY max_activation DESC LIMIT 5",
        [MODEL, tensor(db, "conv3")],
    )
    tiles = [pictures.Tile(stored_nf(db, "conv3", u), (f"unit {u}", f"{v:.3f}")) for u, v in rows]
    picture = pictures.grid(tiles, "t")
    png = read_png(out)
    for (u, _), box in zip(rows, picture.boxes):
        tile = box_pixels(png, box)
        np.testing.assert_array_equal(tile, expected_enlarged(stored_nf(db, "conv3", u), tile.shape[:2]))

    r = invoke(
        "nf", MODEL, "conv3", "--grid", "--order-by", "max_activation", "--asc", "--limit", 3, "-o", out, "--db", db
    )
    assert r.exit_code == 0, r.output
    first = query(
        db,
        "SELECT unit FROM neurons WHERE model = ? AND layer = ? ORDER BY max_activation LIMIT 1",
        [MODEL, tensor(db, "conv3")],
    )[0][0]
    box = pictures.grid([pictures.Tile(stored_nf(db, "conv3", first), ("a", "b"))] * 3, "t").boxes[0]
    tile = box_pixels(read_png(out), box)
    np.testing.assert_array_equal(tile, expected_enlarged(stored_nf(db, "conv3", first), tile.shape[:2]))


def test_card_shows_the_nf_and_its_top_crops(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "card.png"
    top = 6
    r = invoke("card", MODEL, "conv9", 3, "-o", out, "--db", db, "--top", top)
    assert r.exit_code == 0, r.output
    png = read_png(out)
    layer = query(db, "SELECT * FROM layers WHERE model = ? AND alias = 'conv9'", [MODEL])[0]
    cols = [d[0] for d in duckdb.connect(str(db), read_only=True).execute("SELECT * FROM layers LIMIT 0").description]
    row = dict(zip(cols, layer))
    pre_json, in_h, in_w = query(
        db, "SELECT preprocessing, input_height, input_width FROM models WHERE model = ?", [MODEL]
    )[0]
    pre = from_dict(json.loads(pre_json), "stored")
    size = (min(row["rf_size_y"], in_h), min(row["rf_size_x"], in_w))
    tops = query(
        db,
        "SELECT t.y, t.x, t.activation, i.path FROM top_activations t JOIN images i USING (model, image_id) "
        "WHERE t.model = ? AND t.layer = ? AND t.unit = 3 ORDER BY t.rank LIMIT ?",
        [MODEL, row["layer"], top],
    )
    crops = []
    for y, x, _, path in tops:
        image = pre.to_display(cv2.imread(path))
        y0 = y * row["rf_stride_y"] + row["rf_offset_y"] + (row["rf_size_y"] - size[0]) // 2
        x0 = x * row["rf_stride_x"] + row["rf_offset_x"] + (row["rf_size_x"] - size[1]) // 2
        crop = np.full((*size, 3), GREY, np.uint8)
        for i in range(size[0]):
            for j in range(size[1]):
                if 0 <= y0 + i < image.shape[0] and 0 <= x0 + j < image.shape[1]:
                    crop[i, j] = image[y0 + i, x0 + j]
        crops.append(crop)
    nf = stored_nf(db, "conv9", 3)
    picture = pictures.card(nf, [pictures.Tile(c, ("#1 1.00", "label")) for c in crops], ["h", "v", "t"])
    assert png.shape == picture.image.shape
    nf_tile = box_pixels(png, picture.boxes[0])
    assert nf_tile.shape[0] >= 200
    np.testing.assert_array_equal(nf_tile, expected_enlarged(nf, nf_tile.shape[:2]))
    for crop, box in zip(crops, picture.boxes[1:]):
        tile = box_pixels(png, box)
        np.testing.assert_array_equal(tile, expected_enlarged(crop.astype(np.float64), tile.shape[:2]))
    assert len(picture.boxes) == 1 + top
    assert tops[0][2] >= tops[-1][2] > 0


def test_cut_crop_fills_outside_with_grey() -> None:
    image = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    crop = cut_crop(image, -2, 1, (4, 5))
    assert (crop[:2] == GREY).all() and (crop[:, 3:] == GREY).all()
    np.testing.assert_array_equal(crop[2:, :3], image[:2, 1:4])


def test_top_shows_the_most_selective_neurons(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "top.png"
    r = invoke("top", MODEL, "conv3", "--by", "color_selectivity", "-k", 4, "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    rows = query(
        db,
        "SELECT unit FROM neurons WHERE model = ? AND layer = ? AND color_selectivity IS NOT NULL "
        "ORDER BY color_selectivity DESC, unit LIMIT 4",
        [MODEL, tensor(db, "conv3")],
    )
    nfs = [stored_nf(db, "conv3", u) for (u,) in rows]
    picture = pictures.grid([pictures.Tile(n, ("u", "v")) for n in nfs], "t")
    png = read_png(out)
    for nf, box in zip(nfs, picture.boxes):
        tile = box_pixels(png, box)
        np.testing.assert_array_equal(tile, expected_enlarged(nf, tile.shape[:2]))
    r = invoke("top", MODEL, "conv3", "--by", "shape_selectivity", "-o", out, "--db", db)
    assert r.exit_code == 2
    assert "no neuron of tiny/conv3 has a shape_selectivity value" in r.output


def test_summary_overlays_models_and_skips_empty_indexes(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "summary.png"
    r = invoke("summary", "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    assert "Note: shape_selectivity has no value in any model; left out" in " ".join(r.output.split())
    png = read_png(out)
    assert png.shape == (int((3.8 + 0.9) * 100), int(2 * 5.2 * 100), 3)  # two panels: colour, class
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])  # tab10: tiny, tiny_copy
    assert (np.abs(png.astype(int) - blue).sum(axis=2) < 10).sum() > 200
    assert (np.abs(png.astype(int) - orange).sum(axis=2) < 10).sum() > 200

    r = invoke("summary", "tiny_copy", "--indexes", "color", "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    png = read_png(out)
    assert png.shape == (470, 520, 3)
    assert (np.abs(png.astype(int) - blue).sum(axis=2) < 10).sum() > 200  # one model: the first colour

    r = invoke("summary", "--indexes", "shape,orientation", "-o", out, "--db", db)
    assert r.exit_code == 2 and "no value of shape_selectivity, orientation_selectivity" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nf", MODEL, "conv1", DEAD[1]], "neuron is dead: tiny/conv1:2 never fired"),
        (["card", MODEL, "conv1", DEAD[1]], "neuron is dead: tiny/conv1:2"),
        (["nf", MODEL, "conv1", 99], "neuron tiny/conv1:99 does not exist; layer conv1 has units 0-31"),
        (["nf", MODEL, "conv99", 1], "layer 'conv99' is not in model 'tiny'"),
        (["nf", "resnet", "conv1", 1], "model 'resnet' is not in"),
        (["summary", "resnet"], "model 'resnet' is not in"),
        (
            ["nf", MODEL, "conv1", "--grid", "--order-by", "nope"],
            "--order-by: 'nope' is not a neurons column; use one of: model, layer, unit",
        ),
        (["nf", MODEL, "conv1", "--grid", "--order-by", "nf"], "--order-by: 'nf' is not a neurons column"),
        (["summary", "--indexes", "top_class"], "--indexes: 'top_class' is not a numeric neurons column"),
        (["nf", MODEL, "conv1"], "give either a UNIT or --grid"),
        (["nf", MODEL, "conv1", 1, "--grid"], "give either a UNIT or --grid"),
    ],
)
def test_errors_are_one_clean_line(db: Path, tmp_path: Path, args: list, message: str) -> None:
    r = invoke(*args, "-o", tmp_path / "x.png", "--db", db)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert "Traceback" not in r.output
    assert not (tmp_path / "x.png").exists()


def test_output_and_database_errors(db: Path, tmp_path: Path) -> None:
    r = invoke("nf", MODEL, "conv1", 1, "-o", tmp_path / "missing" / "x.png", "--db", db)
    assert r.exit_code == 2 and f"folder {tmp_path / 'missing'} does not exist" in " ".join(r.output.split())
    r = invoke("nf", MODEL, "conv1", 1, "-o", tmp_path / "x.jpg", "--db", db)
    assert r.exit_code == 2 and "name the output file *.png" in r.output
    r = invoke("nf", MODEL, "conv1", 1, "-o", tmp_path / "x.png", "--db", tmp_path / "none.duckdb")
    assert r.exit_code == 2 and "does not exist; run 'onnx-nfi analyze' first" in " ".join(r.output.split())
