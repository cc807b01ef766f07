"""Search verbs on a real database: no stale neuron after remove / re-analysis / a crash, the probe
set's extra pass, the CLI's formats, pictures and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import TINY

from onnx_nfi import search
from onnx_nfi.store.vectors import index_dir

KINDS = ("response", "nf", "indexes")



def analyse(db: Path, images: Path, name: str) -> None:
    result = invoke("analyze", TINY, images, "--db", db, "--name", name, "--top-n", 3, "--silent")
    assert result.exit_code == 0, result.output



def ids_of(db: Path, model: str) -> set[int]:
    return {r[0] for r in query(db, "SELECT neuron_id FROM neurons WHERE model = ?", [model])}


def all_hits(db: Path, kind: str) -> set[int]:
    """Every neuron id any search returns: each neuron with a vector queried, k larger than the DB."""
    table = {"response": "response_vectors", "nf": "nf_vectors", "indexes": "index_vectors"}[kind]
    names = [f"{m}:{layer}:{u}" for m, layer, u in query(
        db, f"SELECT model, layer, unit FROM neurons JOIN {table} USING (neuron_id) USING SAMPLE 40 ROWS"
    )]
    return {h.neuron_id for r in search.similar_many(db, names, by=kind, k=2000) for h in r.hits}


@pytest.fixture()
def two_models(tmp_path: Path, photo_dir: Path) -> Path:
    """The tiny model analysed twice, as ``a`` and ``b`` (tests may change this database)."""
    db = tmp_path / "nfi.duckdb"
    analyse(db, photo_dir, "a")
    analyse(db, photo_dir, "b")
    return db


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """Like ``two_models``, for tests that only read."""
    db = tmp_path_factory.mktemp("shared") / "nfi.duckdb"
    analyse(db, photo_dir, "a")
    analyse(db, photo_dir, "b")
    return db


def check_in_step(db: Path) -> None:
    """Hits come only from neurons in DuckDB now, and each index file holds exactly the DB's vectors."""
    current = {r[0] for r in query(db, "SELECT neuron_id FROM neurons")}
    for kind, table in (("response", "response_vectors"), ("nf", "nf_vectors"), ("indexes", "index_vectors")):
        stored = {r[0] for r in query(db, f"SELECT neuron_id FROM {table}")}
        assert stored <= current  # no orphan vectors
        held = set(np.load(index_dir(db) / f"{kind}.ids.npy").tolist())
        assert held == stored
        assert all_hits(db, kind) <= current


def test_remove_leaves_no_trace(two_models: Path) -> None:
    db = two_models
    old_b = ids_of(db, "b")
    assert old_b and all_hits(db, "response") & old_b
    result = invoke("remove", "b", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"Removed b ({len(old_b)} neurons) from {db}.\n"
        "The file keeps its size until 'onnx-nfi compact' (or remove --compact) rewrites it.\n"
    )
    for kind in KINDS:
        assert not all_hits(db, kind) & old_b
    check_in_step(db)
    for table in ("neurons", "layers", "images", "top_activations", "runs", "class_frequencies"):
        assert query(db, f"SELECT count(*) FROM {table} WHERE model = 'b'")[0][0] == 0
    result = invoke("remove", "b", "--db", db)
    assert result.exit_code == 2
    assert result.output == f"Error: model 'b' is not in {db} (models: a)\n"


def test_reanalysis_and_a_crash_before_the_index_save_serve_no_stale_neuron(two_models: Path, photo_dir: Path, tmp_path: Path) -> None:
    db = two_models
    folder = index_dir(db)
    stale_copy = tmp_path / "stale"
    shutil.copytree(folder, stale_copy)
    old_a = ids_of(db, "a")
    analyse(db, photo_dir, "a")
    assert not ids_of(db, "a") & old_a  # ids are never reused
    for kind in KINDS:
        assert not all_hits(db, kind) & old_a
    check_in_step(db)
    # a crash between the DuckDB commit and the index save leaves the old index files behind
    shutil.rmtree(folder)
    shutil.copytree(stale_copy, folder)
    for kind in KINDS:
        assert not all_hits(db, kind) & old_a
    check_in_step(db)


def test_probe_images_outside_the_image_set_get_an_extra_pass(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    analyse(db, photo_dir, "full")
    probe = query(db, "SELECT sha256 FROM probe_images ORDER BY probe_index")
    assert len(probe) == 81  # probe_size 1024 > 81 images: all of them
    subset = tmp_path / "subset"
    subset.mkdir()
    for path in sorted(photo_dir.rglob("*.jpg"))[:10]:
        shutil.copy(path, subset / path.name)
    analyse(db, subset, "sub")  # 71 probe images are not in its image set
    assert query(db, "SELECT sha256 FROM probe_images ORDER BY probe_index") == probe
    rows = query(
        db, "SELECT n.model, n.layer, n.unit, r.vector FROM neurons n JOIN response_vectors r USING (neuron_id) "
        "ORDER BY n.layer, n.unit, n.model"
    )
    full = {(r[1], r[2]): np.array(r[3]) for r in rows if r[0] == "full"}
    sub = {(r[1], r[2]): np.array(r[3]) for r in rows if r[0] == "sub"}
    assert full.keys() == sub.keys() and len(full) > 400
    for key, vector in full.items():
        np.testing.assert_allclose(sub[key], vector, atol=1e-5)
    sim = query(db, "SELECT min(array_cosine_similarity(a.vector, b.vector)) FROM response_vectors a, response_vectors b, "
                "neurons na, neurons nb WHERE na.neuron_id = a.neuron_id AND nb.neuron_id = b.neuron_id AND na.model = 'full' "
                "AND nb.model = 'sub' AND na.layer = nb.layer AND na.unit = nb.unit")[0][0]
    assert sim > 0.9999  # fixed-size arrays: SQL users can compare vectors


def test_vanished_probe_image_is_a_clear_error(tmp_path: Path, photos_copy: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    analyse(db, photos_copy, "full")
    subset = tmp_path / "subset"
    subset.mkdir()
    files = sorted(photos_copy.rglob("*.jpg"))
    shutil.copy(files[0], subset / files[0].name)
    files[-1].unlink()
    result = invoke("analyze", TINY, subset, "--db", db, "--name", "sub", "--top-n", 3, "--silent")
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: probe image {files[-1]} (sha256 ")
    assert result.output.count("\n") == 1 and "onnx-nfi probe DIR --force" in result.output


def test_similar_json_csv_table_and_picture(shared: Path, tmp_path: Path) -> None:
    db = shared
    result = invoke("similar", "a:conv2:3", "--db", db, "-k", 5, "--format", "json", "--other-models")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 5 and all({"model", "layer", "unit", "score"} <= h.keys() for h in hits)
    assert [h["model"] for h in hits] == ["b"] * 5
    assert (hits[0]["alias"], hits[0]["unit"]) == ("conv2", 3) and hits[0]["score"] > 0.999  # itself in the copy
    assert hits == sorted(hits, key=lambda h: -h["score"])
    by_tensor = invoke("similar", f"a:{hits[0]['layer']}:3", "--db", db, "-k", 5, "--format", "json", "--other-models")
    assert json.loads(by_tensor.output) == hits  # LAYER by tensor name or alias
    own = json.loads(invoke("similar", "a:conv2:3", "--db", db, "-k", 50, "--format", "json", "--models", "a",
                            "--layers", "conv2").output)
    assert {(h["model"], h["alias"]) for h in own} == {("a", "conv2")} and 3 not in {h["unit"] for h in own}
    csv_out = invoke("similar", "a:conv2:3", "--db", db, "-k", 2, "--by", "nf", "--format", "csv").output.splitlines()
    assert csv_out[0].startswith("model,layer,alias,unit,neuron_id,score,top_class") and len(csv_out) == 3
    picture = tmp_path / "similar.png"
    table = invoke("similar", "a:conv2:3", "--db", db, "-k", 3, "--by", "indexes", "-o", picture)
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0] == "Neurons most similar to a:conv2:3 by indexes:"
    assert table.output.splitlines()[-1] == f"Wrote {picture}"
    image = cv2.imread(str(picture))
    assert image is not None and min(image.shape[:2]) > 2 * 96  # the query and 3 neighbours, 2 x 2 tiles


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x:conv2:1"], "Error: model 'x' is not in {db} (models: a, b)"),
        (["a:conv99:1"], "Error: layer 'conv99' is not in model 'a'; list them with: onnx-nfi sql \"SELECT alias, layer FROM layers WHERE model = 'a'\""),
        (["a:conv2:32"], "Error: neuron a:conv2:32 does not exist; layer conv2 of 'a' has units 0-31"),
        (["a:conv2"], "Error: bad neuron 'a:conv2'; write MODEL:LAYER:UNIT, e.g. lite0:conv3:12 (LAYER: alias or tensor name)"),
        (["a:conv2:x"], "Error: bad neuron 'a:conv2:x'; write MODEL:LAYER:UNIT, e.g. lite0:conv3:12 (LAYER: alias or tensor name)"),
        (["a:conv2:\u00b2"], "Error: bad neuron 'a:conv2:\u00b2'; write MODEL:LAYER:UNIT, e.g. lite0:conv3:12 (LAYER: alias or tensor name)"),
        (["a:conv2:1", "--models", "zz"], "Error: model 'zz' is not in {db} (models: a, b)"),
    ],
)
def test_similar_errors_are_one_line(shared: Path, args: list[str], message: str) -> None:
    result = invoke("similar", *args, "--db", shared)
    assert result.exit_code == 2
    assert result.output == message.format(db=shared) + "\n"


def test_match_and_probe_commands(two_models: Path, tmp_path: Path, photo_dir: Path) -> None:
    db = two_models
    result = invoke("match", "a", "nope", "--db", db)
    assert (result.exit_code, result.output) == (2, f"Error: model 'nope' is not in {db} (models: a, b)\n")
    result = invoke("match", "a", "b", "--db", db, "-o", tmp_path / "heat.jpg")
    assert result.exit_code == 2 and result.output.startswith("Error: pictures are written as PNG")
    result = invoke("probe", photo_dir, "--db", db, "--size", 10)
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {db} already holds 2 model(s) (a, b) scored on its current probe set; pass --force to replace it "
        "and recompute their response profiles from their ONNX files\n"
    )
    result = invoke("probe", photo_dir, "--db", db, "--size", 10, "--force", "--silent")
    assert result.exit_code == 0, result.output
    assert result.output == f"Probe set of {db}: 10 images; recomputed the response profiles of a, b.\n"
    assert query(db, "SELECT data_type FROM information_schema.columns WHERE table_name = 'response_vectors' "
                     "AND column_name = 'vector'")[0][0] == "FLOAT[10]"
    check_in_step(db)
    hits = json.loads(invoke("similar", "a:conv3:0", "--db", db, "--format", "json", "--other-models", "-k", 1).output)
    assert (hits[0]["alias"], hits[0]["unit"]) == ("conv3", 0) and hits[0]["score"] > 0.999


def test_neuron_ref_round_trips_and_refuses_bad_text() -> None:
    from onnx_nfi.errors import SearchError
    from onnx_nfi.names import parse_neuron
    from onnx_nfi.refs import LayerRef, NeuronRef

    ref = NeuronRef.parse("lite0:block/conv:0:12")  # a tensor name may hold ':'
    assert (ref.model, ref.layer, ref.unit) == ("lite0", "block/conv:0", 12)
    assert str(ref) == "lite0:block/conv:0:12" and NeuronRef.parse(str(ref)) == ref
    assert ref.layer_ref == LayerRef("lite0", "block/conv:0") and str(ref.layer_ref) == "lite0:block/conv:0"
    assert parse_neuron("a:conv2:3") == ("a", "conv2", 3)
    for bad in ("a:conv2", "a:conv2:-1", ":conv2:1", "a::1"):
        with pytest.raises(SearchError, match="write MODEL:LAYER:UNIT"):
            NeuronRef.parse(bad)
