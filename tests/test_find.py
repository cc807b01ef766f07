"""``describe`` and ``find``: exact output on a real analysis whose colour names and concept rows are
then set by hand, so every number on screen is known (scores worked out in the comments)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from cli_helpers import invoke
from conftest import PLANTED
from planted_data import write_image_folder

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import SearchError

M = "planted_selectivity"
#: (alias, unit) -> top colour and its share, concept rows (concept, wnid, depth, share, enrichment, p_holm).
PLANTED_WORDS = {
    ("conv4", 1): ("red", 0.55, [("dog", "n02084071", 13, 0.62, 38.0, 3e-40), ("Chihuahua", "n02085620", 15, 0.3, 9.0, 0.02)]),
    ("conv4", 2): ("red", 0.3, [("Chihuahua", "n02085620", 15, 0.8, 40.0, 1e-12)]),
    ("conv3", 5): (None, None, [("goldfinch", "n01531178", 12, 0.9, 6.0, 1e-5)]),
    ("conv2", 3): (None, None, [("gizmo_xq", None, 0, 0.7, 3.0, 1e-4)]),  # a label WordNet does not know
}


@pytest.fixture(scope="module")
def words_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("words")
    write_image_folder(root / "images", 4, seed=5)
    db = root / "nfi.duckdb"
    api.analyze(PLANTED, root / "images", db=db, config=AnalyzeConfig(top_n=5, nf=False))
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM concept_labels")
        con.execute("DELETE FROM color_names")
        con.execute("UPDATE neurons SET concept = NULL, concept_p = NULL, top_color = NULL, top_color_share = NULL, "
                    "color_selectivity = NULL, class_selectivity = NULL, top_class = NULL, top_class_frequency = NULL")
        for (alias, unit), (color, color_share, rows) in PLANTED_WORDS.items():
            nid = con.execute("SELECT neuron_id FROM neurons JOIN layers USING (model, layer) WHERE alias = ? AND unit = ?",
                              [alias, unit]).fetchone()[0]
            label = next(r for r in rows if r[5] < 0.01)
            con.execute("UPDATE neurons SET concept = ?, concept_p = ?, top_color = ?, top_color_share = ?, "
                        "color_selectivity = 0.25, class_selectivity = 0.5, top_class = 'red_disc', top_class_frequency = 0.75 "
                        "WHERE neuron_id = ?", [label[0], label[5], color, color_share, nid])
            for concept, wnid, depth, share, enrichment, p in rows:
                con.execute("INSERT INTO concept_labels VALUES (?, ?, ?, ?, ?, 10, 20, ?, ?, ?, ?)",
                            [nid, concept, wnid, depth, share, share / enrichment, enrichment, p / 10, p])
            if color:
                con.execute("INSERT INTO color_names VALUES (?, ?, ?), (?, 'orange', 0.2)", [nid, color, color_share, nid])
    return db


def _lines(text: str) -> str:
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def test_describe_output_is_exact(words_db: Path) -> None:
    result = invoke("describe", f"{M}:conv4:1", "--db", words_db)
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == (
        "planted_selectivity:conv4:1: red · dog (f 0.62, ×38, p 3e-40)\n"
        "  color_selectivity: 0.250\n"
        "  class_selectivity: 0.500\n"
        "  top_class: red_disc (0.75)\n"
    )
    assert invoke("describe", f"{M}:conv3:5", "--db", words_db).stdout.splitlines()[0] == (
        "planted_selectivity:conv3:5: goldfinch (f 0.90, ×6.0, p 1e-5)"
    )
    assert invoke("describe", f"{M}:conv1:0", "--db", words_db).stdout.splitlines()[0] == (
        "planted_selectivity:conv1:0: no colour or concept label"
    )


def test_find_output_is_exact(words_db: Path) -> None:
    # red dog: conv4:1 = 0.55 (red) x 0.62 x -log10(3e-40) = 13.47; conv4:2 = 0.3 x 0.8 x 12 = 2.88
    result = invoke("find", "red dog", "--db", words_db)
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == (
        "Neurons matching red + dog, best first:\n"
        " neuron                       score  description                             matched\n"
        " planted_selectivity:conv4:1  13.5   red · dog (f 0.62, ×38, p 3e-40)        red 0.55; dog 0.62, p 3e-40\n"
        " planted_selectivity:conv4:2  2.9    red · Chihuahua (f 0.80, ×40, p 1e-12)  red 0.30; Chihuahua 0.80, p 1e-12\n"
    )


def test_find_reads_words_through_wordnet(words_db: Path) -> None:
    assert [h.neuron for h in api.find("dogs", db=words_db).hits] == [f"{M}:conv4:1", f"{M}:conv4:2"]
    assert [h.neuron for h in api.find("toy dog", db=words_db).hits] == [f"{M}:conv4:2"]  # one term, a hypernym of Chihuahua
    assert [h.neuron for h in api.find("bird", db=words_db).hits] == [f"{M}:conv3:5"]
    assert [h.neuron for h in api.find("animal", db=words_db, layers=["conv3"]).hits] == [f"{M}:conv3:5"]
    assert api.find("hound", db=words_db).hits == ()  # a noun, but no hound here
    assert api.find("green dog", db=words_db).hits == ()  # every word must match
    assert [h.neuron for h in api.find("orange", db=words_db, k=1).hits] == [f"{M}:conv4:1"]
    assert api.find("gray", db=words_db).terms == ("gray",)
    assert [h.neuron for h in api.find("Gizmo xq", db=words_db).hits] == [f"{M}:conv2:3"]  # by its stored name


def test_find_json_is_one_object_per_neuron(words_db: Path) -> None:
    result = invoke("find", "dog", "--json", "--db", words_db)
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["neuron"] for o in objects] == [f"{M}:conv4:1", f"{M}:conv4:2"]
    assert objects[0]["score"] == pytest.approx(0.62 * 39.52287874528034)
    assert objects[1]["matched"] == [{"word": "dog", "kind": "concept", "name": "Chihuahua", "share": 0.8, "p": 1e-12}]


def test_find_refuses_unknown_words_and_models_in_one_line(words_db: Path) -> None:
    result = invoke("find", "red dgo", "--db", words_db)
    assert result.exit_code == 2
    assert result.output.strip() == "Error: 'dgo' is no colour term, WordNet noun or stored concept; closest known: dog"
    with pytest.raises(SearchError, match="closest known: orange"):
        api.find("ornage", db=words_db)
    result = invoke("find", "dog", "--model", "nope", "--db", words_db)
    assert result.exit_code == 2 and "model 'nope' is not in" in result.output
