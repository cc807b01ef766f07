"""``similar --by indexes``: each index standardised over the database (z-score), neurons compared by
the distance of those vectors, magnitude kept (docs/method.md §8).

The database's index columns are set here so that every neuron's (colour, class) pair lies on one
ray from (0.5, 0.5): unit-length vectors would all tie at 1.0. The expected hits and scores are a
brute force written here: numpy z-scores over the neurons not flagged weak, Euclidean distance.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import TINY

from onnx_nfi import search
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.vectors import store_index_vectors


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("index_space") / "nfi.duckdb"
    r = invoke("analyze", TINY, photo_dir, "--db", path, "--name", "a", "--top-n", 3, "--indexes", "none", "--silent")
    assert r.exit_code == 0, r.output
    con = duckdb.connect(str(path))
    try:  # one ray from the centre: colour − 0.5 = t, class − 0.5 = 2t, t in 0.01 … 0.37
        con.execute("UPDATE neurons SET color_selectivity = CASE WHEN dead THEN NULL ELSE 0.5 + 0.01 * (neuron_id % 37 + 1) END, "
                    "class_selectivity = CASE WHEN dead THEN NULL ELSE 0.5 + 0.02 * (neuron_id % 37 + 1) END")
    finally:
        con.close()
    with Store.open(path) as store:
        store_index_vectors(store, "a")
    return path


def brute_force(db: Path, query_id: int, k: int) -> list[tuple[int, float]]:
    rows = query(db, "SELECT neuron_id, coalesce(weak, false), color_selectivity, class_selectivity FROM neurons "
                     "WHERE color_selectivity IS NOT NULL OR class_selectivity IS NOT NULL ORDER BY neuron_id")
    ids = np.array([r[0] for r in rows])
    weak = np.array([r[1] for r in rows], bool)
    x = np.array([[r[2], r[3]] for r in rows], np.float64)
    ref = x[~weak]
    z = (x - ref.mean(axis=0)) / ref.std(axis=0)
    q = z[ids == query_id][0]
    d = np.sqrt(((z - q) ** 2).sum(axis=1))
    keep = (ids != query_id) & ~weak
    order = sorted(zip(d[keep].tolist(), ids[keep].tolist()))[:k]
    return [(i, -dist) for dist, i in order]


def test_scores_are_minus_the_distance_of_z_scores_and_never_tie_at_one(db: Path) -> None:
    model, layer, unit, qid = query(db, "SELECT model, layer, unit, neuron_id FROM neurons WHERE NOT dead "
                                        "AND NOT coalesce(weak, false) AND neuron_id % 37 = 0 ORDER BY neuron_id LIMIT 1")[0]  # the ray's end
    result = search.similar(db, f"{model}:{layer}:{unit}", by="indexes", k=300)
    expected = brute_force(db, qid, 300)
    assert [h.neuron_id for h in result.hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in result.hits], [s for _, s in expected], rtol=1e-5, atol=1e-5)
    # every pair lies on one ray, so unit-length vectors scored them all 1.0; now the raw vectors that
    # differ get scores that differ (magnitude kept), and only equal raw vectors tie
    raw = {(round(h.indexes["color_selectivity"], 6), round(h.indexes["class_selectivity"], 6)) for h in result.hits}
    assert len(raw) > 5 and len({round(h.score, 5) for h in result.hits}) == len(raw)


def test_other_models_with_one_model_says_so_in_one_line(db: Path) -> None:
    r = invoke("similar", "a:conv1:0", "--other-models", "--db", db)
    assert r.exit_code == 2
    assert r.output == (
        f"Error: --other-models: {db} holds no model but a; analyse or import another model to search across models\n"
    )
