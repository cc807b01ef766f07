"""NFs stored as bytes: the value read back, a database written with float NFs, and the file size.

The expected NF is computed here from the stored top activations and the image files with the
brute force of ``test_nf.py`` (§4 literally, in float64); an older database is made from a real one
by turning its NF column back into floats with a known fraction added to every value.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import TINY
from test_nf import brute_force_nf

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.data.preprocess import from_dict
from onnx_nfi.neurons.similarity import nf_embeddings
from onnx_nfi.report.site.build import nf_pngs
from onnx_nfi.store.duckdb_store import Store

MODEL = "tiny"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The tiny model over the real photos, NFs at full resolution (exact, so the brute force applies)."""
    path = tmp_path_factory.mktemp("nf_storage") / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=path, name=MODEL, config=AnalyzeConfig(top_n=6, indexes=(), nf_max_size=0))
    return path


def nf_type(db: Path) -> str:
    return query(db, "SELECT data_type FROM information_schema.columns WHERE table_name = 'neurons' AND column_name = 'nf'")[0][0]


def stored(db: Path) -> dict[tuple[str, int], np.ndarray | None]:
    rows = query(db, "SELECT layer, unit, nf, nf_height, nf_width FROM neurons WHERE model = ?", [MODEL])
    return {(l, u): None if nf is None else np.array(nf, np.float64).reshape(h, w, 3) for l, u, nf, h, w in rows}


def same_bytes(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, nf in want.items():
        assert (nf is None and got[key] is None) or np.array_equal(got[key], nf), key


def nf_blocks(db: Path) -> int:
    """Storage blocks holding the NF values (DuckDB's own account of its file)."""
    return query(db, "SELECT count(DISTINCT block_id) FROM pragma_storage_info('neurons') "
                     "WHERE column_name = 'nf' AND segment_type IN ('FLOAT', 'UTINYINT')")[0][0]


def fresh_copy(source: Path, target: Path) -> Path:
    """``source`` rewritten into a new file (no free blocks), to compare sizes fairly."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{source}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{target}' AS b")
        con.execute("COPY FROM DATABASE a TO b")
    finally:
        con.close()
    return target


def float_database(db: Path, target: Path) -> Path:
    """``db`` as an older version wrote it: ``nf FLOAT[]``, each value moved by a fraction within ±0.39
    (so it rounds back to the byte; irregular, as real NFs are, which DuckDB cannot compress away),
    schema version 1."""
    shutil.copy(db, target)
    con = duckdb.connect(str(target))
    try:
        con.execute(
            "ALTER TABLE neurons ALTER nf SET DATA TYPE FLOAT[] USING "
            "list_transform(nf, lambda v, i: CAST(v AS FLOAT) + CAST((i * 0.6180339887) % 0.78 - 0.39 AS FLOAT))"
        )
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    finally:
        con.close()
    return target


def test_the_stored_nf_is_the_brute_force_nf_within_half_a_grey_level(db: Path) -> None:
    assert nf_type(db) == "UTINYINT[]"
    pre_json, in_h, in_w = query(db, "SELECT preprocessing, input_height, input_width FROM models WHERE model = ?", [MODEL])[0]
    pre = from_dict(json.loads(pre_json), "stored")
    images = {i: pre.to_display(cv2.imread(p)).astype(np.float64) for i, p in query(db, "SELECT image_id, path FROM images")}
    layers = query(db, "SELECT layer, rf_size_y, rf_size_x, rf_stride_y, rf_stride_x, rf_offset_y, rf_offset_x "
                       "FROM layers WHERE model = ? ORDER BY depth", [MODEL])
    nfs, checked, fractional = stored(db), 0, 0
    for layer, sy, sx, ty, tx, oy, ox in layers[::2]:
        for unit in range(0, 32, 7):
            tops = query(db, "SELECT activation, image_id, y, x FROM top_activations WHERE model = ? AND layer = ? "
                             "AND unit = ? ORDER BY rank", [MODEL, layer, unit])
            if not tops:
                continue
            a, ids, ys, xs = (np.array(c) for c in zip(*tops))
            expected = brute_force_nf(a, ids, ys, xs, images, (sy, sx), (ty, tx), (oy, ox), (in_h, in_w))
            got = nfs[(layer, unit)]
            if expected is None:
                assert got is None
                continue
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() <= 0.5 + 1e-3, (layer, unit)
            clear = np.abs(expected - np.floor(expected) - 0.5) > 1e-3  # not on a rounding boundary
            np.testing.assert_array_equal(got[clear], np.floor(expected[clear] + 0.5))
            checked += 1
            fractional += int((np.abs(expected - got) > 0.01).any())
    assert checked >= 10 and fractional >= 5  # real float NFs, rounded


def test_nf_vectors_embed_the_stored_nf(db: Path) -> None:
    with Store.open(db, read_only=True) as store:
        layer = store.layer_rows(MODEL)[3]["layer"]
        rows = store.rows(
            "SELECT n.unit, n.nf, n.nf_height, n.nf_width, v.vector FROM neurons n JOIN nf_vectors v USING (neuron_id) "
            "WHERE n.model = ? AND n.layer = ? ORDER BY n.unit", [MODEL, layer],
        )
    nfs = np.stack([np.array(r["nf"], np.float32).reshape(r["nf_height"], r["nf_width"], 3) for r in rows])
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), nf_embeddings(nfs), atol=1e-6)


def test_a_float_database_is_read_as_it_is_then_converted_and_smaller(db: Path, tmp_path: Path) -> None:
    old = float_database(db, tmp_path / "old.duckdb")
    assert nf_type(old) == "FLOAT[]"
    floats, new = stored(old), stored(db)
    assert any(f is not None and (f != np.floor(f)).any() for f in floats.values())
    for key, nf in new.items():
        assert (nf is None) == (floats[key] is None)
        if nf is not None:
            np.testing.assert_array_equal(np.floor(floats[key] + 0.5).clip(0, 255), nf)

    # every reader opens it read-only and shows what the byte database shows
    for where in (old, db):
        r = invoke("nf", MODEL, "conv5", 3, "-o", tmp_path / f"{where.stem}.png", "--db", where)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "old.png").read_bytes() == (tmp_path / "nfi.png").read_bytes()
    hits = [[(h.layer, h.unit) for h in api.similar(f"{MODEL}:conv5:3", by="nf", k=5, db=w).hits] for w in (old, db)]
    assert hits[0] == hits[1]
    layer = query(db, "SELECT layer FROM layers WHERE alias = 'conv7'")[0][0]
    pngs = []
    for where in (old, db):
        with Store.open(where, read_only=True) as store:
            pngs.append(dict(nf_pngs(store, MODEL, layer)))
    assert pngs[0] == pngs[1] and pngs[0]
    assert nf_type(old) == "FLOAT[]"  # reading changed nothing

    # the same rows, written compactly: the byte database is the smaller file, its NFs in half the
    # blocks or fewer (the tiny model's NFs are a small part of its file)
    old_fresh, new_fresh = fresh_copy(old, tmp_path / "old_fresh.duckdb"), fresh_copy(db, tmp_path / "new_fresh.duckdb")
    assert new_fresh.stat().st_size < old_fresh.stat().st_size
    assert 2 * nf_blocks(new_fresh) <= nf_blocks(old_fresh)

    # imported into a new database, its NFs arrive as bytes
    target = tmp_path / "imported.duckdb"
    r = invoke("import", old, "--db", target)
    assert r.exit_code == 0, r.output
    assert nf_type(target) == "UTINYINT[]"
    same_bytes(stored(target), new)

    # opened for writing (here by compact), it is converted in place and the file shrinks
    before = old.stat().st_size
    r = invoke("compact", "--db", old)
    assert r.exit_code == 0, r.output
    assert nf_type(old) == "UTINYINT[]"
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'")[0][0] == "2"
    same_bytes(stored(old), new)
    assert old.stat().st_size < before
