"""Selectivity indexes end to end: grey-pass equivalence, recomputation, and planted selectivity."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import PLANTED, TINY
from planted_data import COLOR_CLASSES, write_image_folder

from onnx_nfi import api
from onnx_nfi.config import INDEX_NAMES, AnalyzeConfig, IndexConfig
from onnx_nfi.neurons.transforms import ANGLES, AXES


def neuron_table(db: Path, model: str) -> dict[str, np.ndarray]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT l.depth, n.unit, n.color_selectivity, n.class_selectivity, n.top_class, n.dead "
            "FROM neurons n JOIN layers l USING (model, layer) WHERE model = ? ORDER BY l.depth, n.unit",
            [model],
        ).fetchnumpy()


def test_whole_image_grey_pass_equals_region_mode(photo_dir: Path, tmp_path: Path) -> None:
    """§5: with exact RFs, greying the whole image or only the RF region gives the same a'_j."""
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=6, nf=False, indexes=("color",)))
    image_mode = neuron_table(db, "tiny_lite0")["color_selectivity"]
    api.index("tiny_lite0", db=db, config=IndexConfig(indexes=("color",), color_mode="region"))
    region_mode = neuron_table(db, "tiny_lite0")["color_selectivity"]
    alive = ~np.isnan(np.asarray(image_mode, float))
    assert alive.sum() > 500
    np.testing.assert_allclose(np.asarray(region_mode, float)[alive], np.asarray(image_mode, float)[alive], atol=2e-4)
    assert np.isnan(np.asarray(region_mode, float)[~alive]).all()


def test_index_recomputation_matches_analysis(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=8, nf=False))
    before = neuron_table(db, "tiny_lite0")
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE neurons SET color_selectivity = NULL, class_selectivity = NULL, top_class = NULL")
        con.execute("DELETE FROM class_frequencies")
    api.index("tiny_lite0", db=db)
    after = neuron_table(db, "tiny_lite0")
    np.testing.assert_allclose(np.asarray(after["color_selectivity"], float), np.asarray(before["color_selectivity"], float), atol=1e-6)
    np.testing.assert_allclose(np.asarray(after["class_selectivity"], float), np.asarray(before["class_selectivity"], float))
    assert list(after["top_class"]) == list(before["top_class"])
    with duckdb.connect(str(db), read_only=True) as con:
        sums = con.execute(
            "SELECT layer, unit, sum(frequency) FROM class_frequencies WHERE model = 'tiny_lite0' GROUP BY ALL"
        ).fetchall()
    assert len(sums) == int((~before["dead"]).sum()) and all(abs(s - 1) < 1e-9 for _, _, s in sums)


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted model analysed on fresh synthetic images (not its training seed)."""
    root = tmp_path_factory.mktemp("planted")
    # 30 images per class and N = 100: no neuron can be trivially 1, so the index has room to move
    write_image_folder(root / "images", n_per_class=30, seed=7)
    db = root / "nfi.duckdb"
    api.analyze(PLANTED, root / "images", db=db, config=AnalyzeConfig(top_n=100, nf=False))
    return db


def test_planted_luminance_edge_neuron_is_not_colour_selective(planted_db: Path) -> None:
    t = neuron_table(planted_db, "planted_selectivity")
    edge = (t["depth"] == 1) & (t["unit"] == 0)
    assert abs(float(t["color_selectivity"][edge][0])) < 1e-3


def test_planted_colour_neurons_have_high_colour_index(planted_db: Path) -> None:
    t = neuron_table(planted_db, "planted_selectivity")
    deep = (t["depth"] == 4) & ~t["dead"]
    colour = deep & np.isin(t["top_class"], COLOR_CLASSES)
    shape = deep & ~np.isin(t["top_class"], COLOR_CLASSES)
    assert colour.sum() >= 3, "some last-layer neurons must be selective for a colour class"
    csi = np.asarray(t["color_selectivity"], float)
    assert np.median(csi[colour]) > 0.5
    if shape.any():  # neurons of the shape classes (grey images) see no colour at all
        assert np.median(csi[colour]) > np.median(csi[shape]) + 0.3


def test_planted_class_selectivity_rises_with_depth(planted_db: Path) -> None:
    """With rho = 1 the index only counts distinct classes, so it moves little; it must still rise layer by layer."""
    with duckdb.connect(str(planted_db), read_only=True) as con:
        means, top_freq = zip(*con.execute(
            "SELECT class_selectivity_mean, (SELECT avg(top_class_frequency) FROM neurons n "
            " WHERE n.model = s.model AND n.layer = s.layer) "
            "FROM layer_summary s WHERE model = 'planted_selectivity' ORDER BY depth"
        ).fetchall())
    assert list(means) == sorted(means) and means[-1] > means[0] + 0.01, means
    assert top_freq[-1] > top_freq[0] + 0.1, top_freq


def test_region_indexes_end_to_end_on_the_planted_edge_neuron(tmp_path: Path) -> None:
    """``--indexes all`` fills every index column; the planted vertical-edge unit survives a top-bottom mirror
    (symmetry about 0° is 1) but not a left-right one, and a 180° turn (which flips its sign) hurts more than 15°."""
    write_image_folder(tmp_path / "images", n_per_class=20, seed=3)
    db = tmp_path / "nfi.duckdb"
    api.analyze(PLANTED, tmp_path / "images", db=db, config=AnalyzeConfig(top_n=20, nf=False, indexes=INDEX_NAMES))
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT unit, dead, orientation_selectivity, orientation_by_angle, symmetry_selectivity, symmetry_by_axis, "
            "shape_selectivity, color_selectivity, class_selectivity "
            "FROM neurons n JOIN layers l USING (model, layer) WHERE alias = 'conv1' ORDER BY unit"
        ).fetchall()
    for unit, dead, *values in rows:
        if not dead:
            assert all(v is not None for v in values), unit
            assert len(values[1]) == len(ANGLES) and len(values[3]) == len(AXES)
    edge = rows[0]
    by_angle, by_axis = dict(zip(ANGLES, edge[3])), dict(zip(AXES, edge[5]))
    assert by_axis[0] > 0.95 and by_axis[90] < by_axis[0] - 0.3
    assert by_angle[180] > by_angle[15] + 0.2
