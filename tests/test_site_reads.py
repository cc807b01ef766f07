"""The site's Store readers against queries written here by hand: NULLs stay NULL (masked), a unit
filter keeps exactly the rows of those units, and the counts are the tables' counts."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
from test_find import M, words_db  # noqa: F401  (a database with NULL indexes beside planted values)

from onnx_nfi.store import neuron_table, site_reads
from onnx_nfi.store.duckdb_store import Store


def _raw(db: Path, sql: str, params: list) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def test_layer_unit_columns_keep_nulls_masked(words_db: Path) -> None:  # noqa: F811
    layers = [r[0] for r in _raw(words_db, "SELECT layer FROM layers WHERE model = ? ORDER BY depth", [M])]
    with Store.open(words_db, read_only=True) as store:
        for layer in layers:
            cols = site_reads.layer_unit_columns(store, M, layer, ("class_selectivity", "max_activation"))
            expected = _raw(words_db, "SELECT unit, class_selectivity, max_activation FROM neurons "
                                      "WHERE model = ? AND layer = ? ORDER BY unit", [M, layer])
            assert [int(u) for u in cols["unit"]] == [r[0] for r in expected]
            got = cols["class_selectivity"]
            masked = np.ma.getmaskarray(got)
            assert masked.tolist() == [r[1] is None for r in expected]
            assert [float(v) for v, m in zip(np.ma.getdata(got), masked) if not m] == [r[1] for r in expected if r[1] is not None]
            assert np.allclose(np.ma.getdata(cols["max_activation"]).astype(float), [r[2] for r in expected])
        assert masked.any() and not masked.all()  # the fixture has both


def test_unit_filters_keep_exactly_those_units(words_db: Path) -> None:  # noqa: F811
    layer = _raw(words_db, "SELECT layer FROM top_activations WHERE model = ? LIMIT 1", [M])[0][0]
    with Store.open(words_db, read_only=True) as store:
        every = site_reads.layer_top_images(store, M, layer, 3)
        some = site_reads.layer_top_images(store, M, layer, 3, units=[0, 2])
        keep = np.isin(np.asarray(every["unit"]), [0, 2])
        for name in ("unit", "rank", "image_id", "activation"):
            assert np.asarray(some[name]).tolist() == np.asarray(every[name])[keep].tolist()
        assert int(np.asarray(every["rank"]).max()) == 3 and len(some["unit"]) == 6
        paths = site_reads.top_image_paths(store, M, 3)
        ids = sorted({r[0] for r in _raw(words_db, "SELECT image_id FROM top_activations WHERE model = ? AND rank <= 3", [M])})
        assert [r["image_id"] for r in paths] == ids
        assert [r["image_id"] for r in site_reads.top_image_paths(store, M, 3, image_ids=ids[:2])] == ids[:2]


def test_model_counts_are_the_table_counts(words_db: Path) -> None:  # noqa: F811
    neurons, dead = _raw(words_db, "SELECT count(*), count(*) FILTER (WHERE dead) FROM neurons WHERE model = ?", [M])[0]
    images = _raw(words_db, "SELECT count(*) FROM images WHERE model = ?", [M])[0][0]
    with Store.open(words_db, read_only=True) as store:
        assert site_reads.model_counts(store, M) == (neurons, dead, images)
        assert sorted(neuron_table.model_neuron_ids(store, M).tolist()) == sorted(
            r[0] for r in _raw(words_db, "SELECT neuron_id FROM neurons WHERE model = ?", [M]))
