"""``onnx-nfi nf / card / top / summary / similar -o / match -o``: real databases in, PNGs read back
and checked pixel by pixel.

The expected pixels are computed here from the stored rows (SQL) and the image files, independently
of ``onnx_nfi.report``: an enlarged NF is the stored values rounded, each pixel repeated k×k; a
card's crop is the RF window ``y·stride + offset`` (centre-cropped to the input) of the image as
the stored preprocessing feeds it, grey outside the image; which units a grid page holds comes
from SQL; a heat map's best cell per row is the argmax of the match scores, its other cells
viridis of their score. The picture verbs say where they put each tile (``render.Drawn``); the
tests check that the pixels there are the right ones and that the layout has no empty row,
column or cut caption.
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
from matplotlib import colormaps

from onnx_nfi import api
from onnx_nfi.api import analyze
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.preprocess import from_dict
from onnx_nfi.report import pictures, render
from onnx_nfi.report.queries import cut_crop

MODEL = "tiny"
DEAD = ("conv1", 2)  # made dead in the fixture, as a dead neuron is stored
GREY = 127


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def tensor(db: Path, alias: str) -> str:
    return query(db, "SELECT layer FROM layers WHERE model = ? AND alias = ?", [MODEL, alias])[0][0]


def stored_nfs(db: Path, alias: str, model: str = MODEL) -> dict[int, np.ndarray | None]:
    """A layer's stored NFs as [h, w, 3] by unit, None for a dead neuron."""
    rows = query(
        db,
        "SELECT unit, nf, nf_height, nf_width FROM neurons JOIN layers USING (model, layer) WHERE model = ? AND alias = ?",
        [model, alias],
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


def ink(region: np.ndarray) -> bool:
    """Whether a region holds drawn text (dark pixels), not just background."""
    return bool((region < 100).any())


def check_tiles(png: np.ndarray, drawn: render.Drawn, db: Path, alias: str, units: list[int]) -> None:
    """The picture holds exactly ``units``' NFs, in order, each pixel for pixel as stored."""
    assert list(drawn.units) == units and len(drawn.boxes) == len(units)
    by_unit = stored_nfs(db, alias)
    for unit, box in zip(units, drawn.boxes):
        tile = box_pixels(png, box)
        if by_unit[unit] is None:
            assert box[2] - box[0] == 96 and (tile[1, tile.shape[1] // 2] == GREY).all()
            assert (tile[48, 48] < 100).all() and (tile[1, 1] < 100).all()  # crossed out
        else:
            np.testing.assert_array_equal(tile, expected_enlarged(by_unit[unit], tile.shape[:2]))


def levels(values: list[int]) -> list[int]:
    """Distinct positions, merging those 1 px apart (odd-sized tiles centred in a cell land half a pixel off)."""
    out: list[int] = []
    for v in sorted(values):
        if not out or v - out[-1] > 1:
            out.append(v)
    return out


def check_lattice(png: np.ndarray, boxes: tuple) -> tuple[int, int]:
    """Tiles on a regular lattice, row-major, every row full but the last, and no empty row or
    column of tiles in the canvas; returns (rows, columns)."""
    centres = [((b[0] + b[2]) // 2, (b[1] + b[3]) // 2) for b in boxes]  # tiles are centred in their cells
    tops, lefts = levels([c[0] for c in centres]), levels([c[1] for c in centres])
    rows, columns = len(tops), len(lefts)
    assert rows == math.ceil(len(boxes) / columns)
    assert len(boxes) > (rows - 1) * columns  # the last row is not empty
    for steps in (np.diff(tops), np.diff(lefts)):
        assert steps.size == 0 or steps.max() - steps.min() <= 2  # a regular lattice (centres within 1 px)
    for k, (cy, cx) in enumerate(centres):  # row-major, in order
        assert abs(cy - tops[k // columns]) <= 1 and abs(cx - lefts[k % columns]) <= 1
    pitch_y = tops[1] - tops[0] if rows > 1 else 96
    pitch_x = lefts[1] - lefts[0] if columns > 1 else 96
    assert png.shape[0] - max(b[2] for b in boxes) < pitch_y  # nothing below the last row of tiles
    right = png.shape[1] - pictures.MARGIN - max(b[3] for b in boxes)
    left = min(b[1] for b in boxes) - pictures.MARGIN
    assert right < pitch_x or png.shape[1] == pictures.MIN_TEXT_WIDTH + 2 * pictures.MARGIN
    assert abs(right - left) <= 2  # tiles centred when the text column is the wider
    return rows, columns


def test_single_nf_is_the_stored_nf_enlarged_under_a_title(db: Path, tmp_path: Path) -> None:
    nf = stored_nf(db, "conv3", 5)
    r = invoke("nf", MODEL, "conv3", 5, "-o", tmp_path / "nf.png", "--db", db)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"Wrote {tmp_path / 'nf.png'}"
    png = read_png(tmp_path / "nf.png")
    drawn = render.nf_png(MODEL, tensor(db, "conv3"), 5, tmp_path / "api.png", db=db)
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "nf.png").read_bytes()
    (box,) = drawn.boxes
    k = math.ceil(256 / nf.shape[0])
    assert (box[2] - box[0], box[3] - box[1]) == (nf.shape[0] * k, nf.shape[1] * k) and box[2] - box[0] >= 256
    np.testing.assert_array_equal(box_pixels(png, box), expected_enlarged(nf, (box[2] - box[0], box[3] - box[1])))
    # a title above the NF (model / alias / unit, the tensor, the indexes), background everywhere else
    assert ink(png[: box[0]]) and box[0] > 3 * 16
    for line in range(pictures.MARGIN, box[0] - 16, 18):
        assert ink(png[line : line + 18]), line  # three lines, none of them empty
    outside = png.copy()
    outside[: box[0]] = pictures.BACKGROUND
    outside[box[0] : box[2], box[1] : box[3]] = pictures.BACKGROUND
    assert (outside == pictures.BACKGROUND).all()
    assert png.shape[0] - box[2] == pictures.MARGIN

    r = invoke("nf", MODEL, tensor(db, "conv3"), 5, "-o", tmp_path / "nf4.png", "--db", db, "--scale", 4)
    assert r.exit_code == 0, r.output
    drawn = render.nf_png(MODEL, "conv3", 5, tmp_path / "api4.png", db=db, scale=4)
    (box,) = drawn.boxes
    assert (box[2] - box[0], box[3] - box[1]) == (nf.shape[0] * 4, nf.shape[1] * 4)
    tile = box_pixels(read_png(tmp_path / "nf4.png"), box)
    np.testing.assert_array_equal(tile, expected_enlarged(nf, tile.shape[:2]))


def test_layer_grid_pages_hold_exactly_their_units(db: Path, tmp_path: Path) -> None:
    units = [u for (u,) in query(db, "SELECT unit FROM neurons WHERE model = ? AND layer = ? ORDER BY unit",
                                 [MODEL, tensor(db, "conv1")])]
    assert len(units) == 32 and stored_nf(db, "conv1", DEAD[1]) is None
    out = tmp_path / "grid.png"
    r = invoke("nf", MODEL, "conv1", "--grid", "-o", out, "--db", db)  # 32 units: one page, 8 x 4
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"Wrote {out}"
    drawn = render.grid_png(MODEL, "conv1", tmp_path / "api.png", db=db)
    assert (tmp_path / "api.png").read_bytes() == out.read_bytes() and (drawn.page, drawn.pages) == (1, 1)
    png = read_png(out)
    check_tiles(png, drawn, db, "conv1", units)
    assert check_lattice(png, drawn.boxes) == (4, 8)
    for box in drawn.boxes:
        assert ink(png[box[2] + 2 : box[2] + 18, box[1] : box[3]])  # a caption under every tile

    per = 12
    for page, rows_columns in ((1, (3, 4)), (2, (3, 4)), (3, (2, 4))):
        out = tmp_path / f"page{page}.png"
        r = invoke("nf", MODEL, "conv1", "--grid", "--per-page", per, "--page", page, "-o", out, "--db", db)
        assert r.exit_code == 0, r.output
        following = f"; --page {page + 1} draws the next" if page < 3 else ""
        assert r.output == f"Wrote {out}\nPage {page} of 3{following}.\n"
        drawn = render.grid_png(MODEL, "conv1", tmp_path / "api.png", db=db, page=page, per_page=per)
        assert (tmp_path / "api.png").read_bytes() == out.read_bytes() and (drawn.page, drawn.pages) == (page, 3)
        png = read_png(out)
        check_tiles(png, drawn, db, "conv1", units[(page - 1) * per : page * per])  # 8 on the last page
        assert check_lattice(png, drawn.boxes) == rows_columns
        top = min(b[0] for b in drawn.boxes)
        assert ink(png[pictures.MARGIN : pictures.MARGIN + 16]) and ink(png[top - 26 : top - 8])  # title, page caption


def test_grid_ordered_by_a_column_pages_through_the_ranking(db: Path, tmp_path: Path) -> None:
    ranking = [u for (u,) in query(
        db, "SELECT unit FROM neurons WHERE model = ? AND layer = ? ORDER BY max_activation DESC, unit",
        [MODEL, tensor(db, "conv3")])]
    out = tmp_path / "ordered.png"
    r = invoke("nf", MODEL, "conv3", "--grid", "--order-by", "max_activation", "--per-page", 5, "--page", 2,
               "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    drawn = render.grid_png(MODEL, "conv3", tmp_path / "api.png", db=db, order_by="max_activation", page=2, per_page=5)
    assert (tmp_path / "api.png").read_bytes() == out.read_bytes()
    png = read_png(out)
    check_tiles(png, drawn, db, "conv3", ranking[5:10])
    assert check_lattice(png, drawn.boxes) == (1, 5)  # five tiles: one full row, not 3 + 2

    drawn = render.grid_png(MODEL, "conv3", out, db=db, order_by="max_activation", descending=False, limit=3)
    lowest = [u for (u,) in query(
        db, "SELECT unit FROM neurons WHERE model = ? AND layer = ? ORDER BY max_activation, unit LIMIT 3",
        [MODEL, tensor(db, "conv3")])]
    check_tiles(read_png(out), drawn, db, "conv3", lowest)
    assert drawn.pages == 1


def test_top_shows_the_most_selective_neurons(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "top.png"
    r = invoke("top", MODEL, "conv3", "--by", "color_selectivity", "-k", 6, "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    rows = query(
        db,
        "SELECT unit FROM neurons WHERE model = ? AND layer = ? AND color_selectivity IS NOT NULL "
        "ORDER BY color_selectivity DESC, unit LIMIT 6",
        [MODEL, tensor(db, "conv3")],
    )
    drawn = render.top_png(MODEL, "conv3", "color_selectivity", tmp_path / "api.png", db=db, k=6)
    assert (tmp_path / "api.png").read_bytes() == out.read_bytes()
    png = read_png(out)
    check_tiles(png, drawn, db, "conv3", [u for (u,) in rows])
    assert check_lattice(png, drawn.boxes) == (2, 3)  # the long title wraps instead of widening the page
    r = invoke("top", MODEL, "conv3", "--by", "shape_selectivity", "-o", out, "--db", db)
    assert r.exit_code == 2
    assert "no neuron of tiny:conv3 has a shape_selectivity value" in r.output


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
    picture = render.card_png(MODEL, "conv9", 3, tmp_path / "api.png", db=db, top=top)
    assert (tmp_path / "api.png").read_bytes() == out.read_bytes()
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


def test_card_of_a_dead_unit_shows_its_stored_top_list_with_a_dead_mark(db: Path, tmp_path: Path) -> None:
    """A dead unit has no NF but a stored top list: the card draws the crossed tile in the NF's place
    and every stored top image (``nf`` of a dead unit stays an error: there is no NF to enlarge)."""
    out = tmp_path / "dead.png"
    r = invoke("card", MODEL, "conv1", DEAD[1], "-o", out, "--db", db)
    assert r.exit_code == 0, r.output
    stored = query(
        db, "SELECT count(*) FROM top_activations t JOIN layers l USING (model, layer) WHERE t.model = ? AND l.alias = ? "
        "AND t.unit = ?", [MODEL, DEAD[0], DEAD[1]],
    )[0][0]
    drawn = render.card_png(MODEL, DEAD[0], DEAD[1], tmp_path / "dead2.png", db=db)
    assert stored > 0 and len(drawn.boxes) == 1 + min(stored, 20)
    png = read_png(tmp_path / "dead2.png")
    tile = box_pixels(png, drawn.boxes[0])
    side = tile.shape[0]
    assert (tile[1, side // 2] == 127).all()  # grey fill
    assert (tile[side // 2, side // 2] < 100).all() and (tile[2, 2] < 100).all()  # crossed out
    from onnx_nfi.report import queries
    from onnx_nfi.store.duckdb_store import Store

    with Store.open(db, read_only=True) as store:
        card = queries.neuron_card(store, MODEL, DEAD[0], DEAD[1], 20)
    assert card.dead and card.nf is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nf", MODEL, "conv1", DEAD[1]], "neuron is dead: tiny:conv1:2 never fired"),
        (["nf", MODEL, "conv1", 99], "neuron tiny:conv1:99 does not exist; layer conv1 of 'tiny' has units 0-31"),
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
        (["nf", MODEL, "conv1", "--grid", "--page", 2],
         "there is no page 2: tiny:conv1 has 32 NFs to show, 1 page of 256; choose --page 1 or lower"),
        (["nf", MODEL, "conv1", "--grid", "--per-page", 10, "--page", 5],
         "there is no page 5: tiny:conv1 has 32 NFs to show, 4 pages of 10; choose --page 4 or lower"),
        (["nf", MODEL, "conv1", 1, "--page", 2], "pages are for --grid; a single NF is one picture"),
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


LONG = "tiny_lite0_analysed_a_second_time"  # wider than a tile: its captions must not be cut


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The tiny model analysed twice, once under a long name, with the shared probe set."""
    path = tmp_path_factory.mktemp("two_models") / "nfi.duckdb"
    for name in (MODEL, LONG):
        analyze(TINY, photo_dir, db=path, name=name, config=AnalyzeConfig(top_n=6, indexes=()))
    return path


def test_similar_picture_writes_model_names_in_full(two_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "similar.png"
    r = invoke("similar", f"{MODEL}:conv3:5", "--other-models", "-k", 4, "-o", out, "--db", two_models)
    assert r.exit_code == 0, r.output
    result = api.similar(f"{MODEL}:conv3:5", k=4, other_models=True, db=two_models)
    drawn = render.similar_png(result, tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == out.read_bytes()
    png = read_png(out)
    assert check_lattice(png, drawn.boxes) == (1, 5)
    centres = [(b[1] + b[3]) // 2 for b in drawn.boxes]
    pitch = centres[1] - centres[0]
    name_width = pictures._text_width(LONG, pictures.CAPTION_PX)
    assert pitch >= name_width  # a column is as wide as the name
    for hit, box, centre in zip(result.hits, drawn.boxes[1:], centres[1:]):
        assert hit.model == LONG
        nf = stored_nfs(two_models, hit.alias, LONG)[hit.unit]
        np.testing.assert_array_equal(box_pixels(png, box), expected_enlarged(nf, (box[2] - box[0], box[3] - box[1])))
        band = png[box[2] :, centre - pitch // 2 : centre + pitch // 2]
        inked = np.flatnonzero((band < 100).any(axis=(0, 2)))
        assert inked[-1] - inked[0] + 1 >= name_width - 2  # the whole name, not "tiny_lite0_an…"


def test_match_heat_map_marks_each_rows_best_layer(two_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "match.png"
    r = invoke("match", MODEL, LONG, "-o", out, "--db", two_models)
    assert r.exit_code == 0, r.output
    result = api.match(MODEL, LONG, db=two_models)
    drawn = render.match_png(result, tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == out.read_bytes()
    png = read_png(out).astype(int)
    (y0, x0, y1, x1), (rows, columns) = drawn.boxes[0], result.heat.shape
    cell_h, cell_w = (y1 - y0) / rows, (x1 - x0) / columns
    assert min(cell_h, cell_w) >= 20  # room for a 9-pt label per row and column
    viridis = colormaps["viridis"]
    marked = 0
    for i in range(rows):
        cy = round(y0 + (i + 0.5) * cell_h)
        assert ink(png[cy - 4 : cy + 5, x0 - 50 : x0 - 4].astype(np.uint8))  # the row's label
        finite = np.flatnonzero(np.isfinite(result.heat[i]))
        best = finite[np.argmax(result.heat[i, finite])] if finite.size else None
        for j in finite:
            pixel = png[cy, round(x0 + (j + 0.5) * cell_w)]
            if j == best:
                assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60, (i, j, pixel)  # the red dot
                marked += 1
            else:
                colour = np.array(viridis(float(result.heat[i, j]))[:3]) * 255
                assert np.abs(pixel - colour).max() <= 3, (i, j, pixel, colour)
    assert marked == sum(np.isfinite(result.heat).any(axis=1)) > 0
    for j in range(columns):
        cx = round(x0 + (j + 0.5) * cell_w)
        assert ink(png[y1 + 4 : y1 + 50, cx - 4 : cx + 5].astype(np.uint8))  # the column's label


def test_one_neuron_error_text_across_commands(db: Path, tmp_path: Path) -> None:
    """card, nf and similar name a missing unit with one line; top (which takes no unit), card, nf and
    similar name a missing layer with one line: the neuron written MODEL:LAYER:UNIT each time."""
    out = tmp_path / "x.png"
    unit_lines = {
        invoke("card", MODEL, "conv1", 32, "-o", out, "--db", db).output,
        invoke("nf", MODEL, "conv1", 32, "-o", out, "--db", db).output,
        invoke("similar", f"{MODEL}:conv1:32", "--db", db).output,
    }
    assert unit_lines == {"Error: neuron tiny:conv1:32 does not exist; layer conv1 of 'tiny' has units 0-31\n"}
    layer_lines = {
        invoke("card", MODEL, "conv99", 1, "-o", out, "--db", db).output,
        invoke("nf", MODEL, "conv99", 1, "-o", out, "--db", db).output,
        invoke("similar", f"{MODEL}:conv99:1", "--db", db).output,
        invoke("top", MODEL, "conv99", "--by", "color_selectivity", "-o", out, "--db", db).output,
    }
    assert len(layer_lines) == 1 and next(iter(layer_lines)).startswith("Error: layer 'conv99' is not in model 'tiny'")
    assert not out.exists()
