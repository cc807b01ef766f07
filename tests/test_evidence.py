"""Weak-evidence flags (docs/method.md §14): a unit built to fire once, weakly, is flagged and left out
of rankings; ``--include-weak`` brings it back.

The graph is a 1×1 convolution + Relu built here; on uniform grey images channel ``k`` computes
``GAIN[k] · (grey/255 − CUT[k])``, so unit 1 fires on the brightest image only, with 0.22 while its
layer's units reach 4.7-9.4. The expected flags come from onnxruntime's maps reduced with numpy
(largest activation per image, the layer's median of unit maxima), not from the product's rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import invoke, query
from onnx import TensorProto, helper, numpy_helper
from test_site import browser, open_page  # noqa: F401  (the Chromium fixture and page helper)

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.preprocess import preset

HW = (8, 8)
LEVELS = (30, 60, 90, 120, 150, 180, 210, 240)  # one uniform grey image each
GAIN = (10.0, 10.0, 5.0, 8.0)
CUT = (0.0, 0.92, 0.0, 0.0)  # unit 1 fires only where grey/255 > 0.92: on 240 alone
TOP_N = 8
MIN_ACTIVE, FRACTION = 5, 0.05  # the documented thresholds (docs/method.md §14)


def once_net() -> onnx.ModelProto:
    """Conv 1×1 (3 -> 4) + Relu; the weights undo the torchvision normalisation (as in test_saturation)."""
    norm = preset("torchvision", HW, "NCHW")
    std, mean = np.array(norm.std, np.float32), np.array(norm.mean, np.float32)
    w = np.stack([g * std / 3 for g in GAIN]).reshape(len(GAIN), 3, 1, 1).astype(np.float32)
    b = np.array([g * (mean.mean() - c) for g, c in zip(GAIN, CUT)], np.float32)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["pre"]), helper.make_node("Relu", ["pre"], ["post"])]
    graph = helper.make_graph(
        nodes, "once", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *HW])],
        [helper.make_tensor_value_info("post", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def unit_maxima(model: onnx.ModelProto, folder: Path) -> np.ndarray:
    """[images, units]: each unit's largest activation on each image, straight from onnxruntime."""
    norm = preset("torchvision", HW, "NCHW")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = []
    for path in sorted(folder.glob("*.png")):
        rgb = cv2.imread(str(path))[:, :, ::-1].astype(np.float32)
        x = ((rgb / 255 - np.array(norm.mean, np.float32)) / np.array(norm.std, np.float32)).transpose(2, 0, 1)[None]
        out.append(sess.run(["post"], {"image": np.ascontiguousarray(x, np.float32)})[0][0].max(axis=(1, 2)))
    return np.array(out)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The net analysed over the grey images; a colour index set by SQL that puts the weak unit first,
    as the issue's 201.8 did. Returns the database and the brute-force maxima."""
    root = tmp_path_factory.mktemp("evidence")
    folder = root / "images"
    folder.mkdir()
    for k, level in enumerate(LEVELS):
        cv2.imwrite(str(folder / f"img_{k:02d}.png"), np.full((*HW, 3), level, np.uint8))
    model = once_net()
    onnx.save(model, root / "once.onnx")
    db = root / "nfi.duckdb"
    api.analyze(root / "once.onnx", folder, db=db, name="once",
                config=AnalyzeConfig(top_n=TOP_N, indexes=(), provider="cpu", preprocess="torchvision"))
    import duckdb

    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE neurons SET color_selectivity = CASE unit WHEN 1 THEN 201.8 ELSE unit / 10 END")
    finally:
        con.close()
    return db, unit_maxima(model, folder)


def test_flags_equal_a_brute_force(case: tuple[Path, np.ndarray]) -> None:
    db, maxima = case
    best = maxima.max(axis=0)
    assert best[1] > 0 and (maxima[:, 1] > 0).sum() == 1  # the construction: fires once, weakly
    dead = best <= 0
    median = np.median(best[~dead])
    capacity = min(TOP_N, len(LEVELS))
    top = np.sort(maxima, axis=0)[::-1][:capacity]  # each unit's top list: its best images
    few = (top > 0).sum(axis=0) < min(MIN_ACTIVE, capacity)
    faint = best < FRACTION * median
    expected = ~dead & (few | faint)
    rows = query(db, "SELECT unit, weak, weak_reason FROM neurons WHERE model = 'once' ORDER BY unit")
    assert [bool(w) for _, w, _ in rows] == expected.tolist() == [False, True, False, False]
    reason = rows[1][2]
    assert reason.startswith("active on 1 of its top images (fewer than 5); largest activation ")
    assert f"is {100 * best[1] / median:.1f} % of its layer's median unit maximum {median:.3g} (below 5 %)" in reason
    assert all(r is None for _, w, r in rows if not w)


def test_top_leaves_the_weak_unit_out_and_include_weak_brings_it_back(case: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    db, _ = case
    from onnx_nfi.report import render

    drawn = render.top_png("once", "post", "color_selectivity", tmp_path / "top.png", db=db, k=4)
    assert list(drawn.units) == [3, 2, 0]  # 0.3, 0.2, 0.0: unit 1 (201.8) is not there
    r = invoke("top", "once", "post", "--by", "color_selectivity", "-o", tmp_path / "cli.png", "--db", db)
    assert r.exit_code == 0, r.output
    back = render.top_png("once", "post", "color_selectivity", tmp_path / "all.png", db=db, k=4, include_weak=True)
    assert list(back.units) == [1, 3, 2, 0]
    r = invoke("top", "once", "post", "--by", "color_selectivity", "--include-weak", "-o", tmp_path / "cli2.png", "--db", db)
    assert r.exit_code == 0, r.output


def test_grid_by_a_column_leaves_it_out_by_unit_shows_it(case: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    db, _ = case
    from onnx_nfi.report import render

    assert list(render.grid_png("once", "post", tmp_path / "g.png", db=db, order_by="color_selectivity").units) == [3, 2, 0]
    assert list(render.grid_png("once", "post", tmp_path / "g.png", db=db, order_by="color_selectivity",
                                include_weak=True).units) == [1, 3, 2, 0]
    assert list(render.grid_png("once", "post", tmp_path / "g.png", db=db).units) == [0, 1, 2, 3]
    r = invoke("nf", "once", "post", "--grid", "--order-by", "color", "--include-weak", "-o", tmp_path / "c.png", "--db", db)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def site(case: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The static report of a copy of the case, unit 0 given the demo's cat-eye class evidence."""
    import shutil

    import duckdb

    from onnx_nfi.report.site.build import build_report

    tmp_path = tmp_path_factory.mktemp("evidence_site")
    db = tmp_path / "site.duckdb"
    shutil.copy(case[0], db)
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE neurons SET top_class = 'cat', top_class_frequency = 0.886, class_selectivity = 0.739, "
                    "concept = 'domestic cat' WHERE unit = 0")
    finally:
        con.close()
    build_report(tmp_path / "site", db=db)
    return db, tmp_path


def test_site_marks_the_weak_unit_and_leads_with_the_top_class_share(site: tuple[Path, Path]) -> None:
    """The static report: the weak unit's tile and page carry the mark and the stored reason; a unit's
    class evidence starts with the top-class share and concept, the paper's index after it."""
    db, tmp_path = site
    layer = (tmp_path / "site" / "once" / "conv1" / "index.html").read_text()
    assert 'data-unit="1" data-dead="0" data-weak="1"' in layer and 'data-unit="0" data-dead="0" data-weak="0"' in layer
    assert '<span class="weak-mark">weak</span>' in layer and 'id="include-weak"' in layer
    assert "<b>weak</b>: 1 unit with too little evidence" in layer
    reason = query(db, "SELECT weak_reason FROM neurons WHERE unit = 1")[0][0]
    weak_page = (tmp_path / "site" / "once" / "conv1" / "1" / "index.html").read_text()
    assert f"<b>weak</b> — {reason}" in weak_page.replace("&#39;", "'")
    page = (tmp_path / "site" / "once" / "conv1" / "0" / "index.html").read_text()
    block = page[page.index('id="class-evidence"'):]
    lines = re.findall(r"<p[^>]*>(.*?)</p>", block)[:3]
    assert lines[0] == "top class cat: 88.6 % of the top images&#39; weight · concept domestic cat"
    assert lines[1] == "class selectivity 0.739 (the paper&#39;s index)"
    assert lines[2].startswith("share: the part of the activation weight") and "(N&#39;−M)/(N&#39;−1)" in lines[2]
    assert page.index('id="class-evidence"') < page.index('id="stats"')  # read before the table of numbers
    assert 'id="weak"' not in page and 'id="class-evidence"' not in weak_page


def test_similar_leaves_the_weak_unit_out_of_its_hits(case: tuple[Path, np.ndarray]) -> None:
    from onnx_nfi import search

    db, _ = case
    with_vectors = {u for (u,) in query(db, "SELECT n.unit FROM neurons n JOIN response_vectors USING (neuron_id)")}
    assert {0, 1, 2} <= with_vectors  # the weak unit has a response profile: only the flag keeps it out
    hits = search.similar(db, "once:conv1:0", k=10)
    assert [h.unit for h in hits.hits if h.unit == 1] == []
    back = search.similar(db, "once:conv1:0", k=10, include_weak=True)
    assert 1 in [h.unit for h in back.hits]
    r = invoke("similar", "once:conv1:0", "--include-weak", "--format", "csv", "--db", db)
    assert r.exit_code == 0 and any(line.split(",")[3] == "1" for line in r.output.splitlines()[1:]), r.output
    weak_query = search.similar(db, "once:conv1:1", k=10)  # a weak query is answered
    assert weak_query.hits and 1 not in [h.unit for h in weak_query.hits]


def test_card_carries_the_stored_reason(case: tuple[Path, np.ndarray]) -> None:
    from onnx_nfi.report import queries
    from onnx_nfi.store.duckdb_store import Store

    db, _ = case
    reason = query(db, "SELECT weak_reason FROM neurons WHERE unit = 1")[0][0]
    with Store.open(db, read_only=True) as store:
        assert queries.neuron_card(store, "once", "conv1", 1, 4).weak == reason
        assert queries.neuron_card(store, "once", "conv1", 0, 4).weak is None


def test_the_browsers_neighbour_lists_leave_the_weak_unit_out(case: tuple[Path, np.ndarray]) -> None:
    from onnx_nfi.search.similar import nearest_by_model
    from onnx_nfi.store.duckdb_store import Store

    db, _ = case
    ids = dict(query(db, "SELECT unit, neuron_id FROM neurons ORDER BY unit"))
    with Store.open(db, read_only=True) as store:
        lists = nearest_by_model(store, ["once"], k=10)
    assert ids[1] in lists  # asked about
    assert all(ids[1] not in [h for h, _ in same] for same, _ in lists.values())  # never a neighbour
    assert ids[2] in [h for h, _ in lists[ids[0]][0]]


def test_index_writes_the_flags_into_a_database_without_them(case: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    import shutil

    import duckdb

    db = tmp_path / "old.duckdb"
    shutil.copy(case[0], db)
    expected = query(db, "SELECT unit, weak, weak_reason FROM neurons ORDER BY unit")
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE neurons SET weak = NULL, weak_reason = NULL")  # as a database from before the flags
    finally:
        con.close()
    r = invoke("index", "once", "--indexes", "class", "--db", db)
    assert r.exit_code == 0, r.output
    assert query(db, "SELECT unit, weak, weak_reason FROM neurons ORDER BY unit") == expected


def test_layer_page_sort_leaves_the_weak_unit_out_until_included(browser, site: tuple[Path, Path]) -> None:  # noqa: F811
    _, root = site
    page = open_page(browser, (root / "site" / "once" / "conv1" / "index.html").as_uri())
    visible = "ts => ts.filter(t => !t.hidden).map(t => parseInt(t.dataset.unit))"
    assert page.eval_on_selector_all("#grid a.tile", visible) == [0, 1, 2, 3]  # by unit: all, marked
    page.select_option("#sort", "color_selectivity")
    assert page.eval_on_selector_all("#grid a.tile", visible) == [3, 2, 0]
    assert page.locator("#shown").inner_text() == "3 of 4 units"
    page.check("#include-weak")
    assert page.eval_on_selector_all("#grid a.tile", visible) == [1, 3, 2, 0]
    assert page.errors == []


def test_top_over_weak_values_only_says_so(case: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    import shutil

    import duckdb

    db = tmp_path / "only_weak.duckdb"
    shutil.copy(case[0], db)
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE neurons SET color_selectivity = NULL WHERE NOT weak")
    finally:
        con.close()
    r = invoke("top", "once", "conv1", "--by", "color", "-o", tmp_path / "t.png", "--db", db)
    assert r.exit_code == 2
    assert r.output == ("Error: every neuron of once:conv1 with a color_selectivity value is flagged weak "
                        "(too little evidence); add --include-weak to rank them anyway\n")
    r = invoke("top", "once", "conv1", "--by", "color", "--include-weak", "-o", tmp_path / "t.png", "--db", db)
    assert r.exit_code == 0, r.output
