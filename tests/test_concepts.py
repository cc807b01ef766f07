"""Concept labels end to end: WordNet label mapping, every statistic of every stored row against a
brute force written here (WordNet closure read straight from the shipped table, scipy's hypergeometric
tail, Holm by hand), and the label being the most specific qualifying concept.

The planted model's colour classes become WordNet labels: red discs are three dog breeds in turn
(so a red unit is a *dog* unit, no breed holding half of it), green discs two birds, blue discs a
vehicle; grey discs an unmapped label (kept as its own concept) and grey squares and crosses lie at
the root, unlabelled. Folders are named by wnid and by lemma (case, ``_`` and plural forms).
"""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import PLANTED, ROOT
from planted_data import CLASSES, make_dataset
from scipy.stats import hypergeom

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.neurons.wordnet import wordnet

#: folder -> the synset it must map to (written by hand from WordNet 3.0).
FOLDER_WNID = {
    "n02085620": "n02085620",  # Chihuahua, by wnid
    "golden_retriever": "n02099601",
    "Dalmatians": "n02110341",  # plural, capitalised: the ImageNet class (the dog), not the person
    "goldfinch": "n01531178",  # ImageNet's goldfinch (Carduelis carduelis), not WordNet's first sense
    "n01558993": "n01558993",  # robin, by wnid
    "fire engine": "n03345487",  # the vehicle
}
DOGS, BIRDS = ("n02085620", "golden_retriever", "Dalmatians"), ("goldfinch", "n01558993")
WNID_ANIMAL = "n00015388"
TOP_N = 30


def _write(root: Path) -> None:
    """The planted images (seed 3, 40 a class) in the folders above."""
    import cv2

    images, labels = make_dataset(40, seed=3)
    counters = dict.fromkeys(CLASSES, 0)
    for i, (image, label) in enumerate(zip(images, labels)):
        name = CLASSES[label]
        k = counters[name]
        counters[name] += 1
        folder = {
            "red_disc": DOGS[k % 3], "green_disc": BIRDS[k % 2], "blue_disc": "fire engine", "grey_disc": "gizmo_xq",
        }.get(name)
        path = root / folder / f"{i:04d}.png" if folder else root / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image[:, :, ::-1])


@pytest.fixture(scope="module")
def concept_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concepts")
    _write(root / "images")
    db = root / "nfi.duckdb"
    api.analyze(PLANTED, root / "images", db=db, config=AnalyzeConfig(top_n=TOP_N, nf=False, indexes=("class", "concepts")))
    return db


def _closure() -> tuple[dict[int, set[int]], dict[int, int], dict[int, str]]:
    """Ancestors (self included), longest depth from the root and first lemma of every noun synset,
    read straight from the shipped table."""
    hyper, names = {}, {}
    with gzip.open(ROOT / "onnx_nfi/neurons/wordnet_data/nouns.tsv.gz", "rt") as f:
        for line in f:
            offset, h, lemmas = line.rstrip("\n").split("\t")
            hyper[int(offset)] = [int(x) for x in h.split()]
            names[int(offset)] = lemmas.split("|")[0].replace("_", " ")
    ancestors: dict[int, set[int]] = {}
    depth: dict[int, int] = {}

    def walk(o: int) -> None:
        if o not in ancestors:
            for h in hyper[o]:
                walk(h)
            ancestors[o] = {o}.union(*(ancestors[h] for h in hyper[o]))
            depth[o] = 1 + max((depth[h] for h in hyper[o]), default=-1)

    for wnid in FOLDER_WNID.values():
        walk(int(wnid[1:]))
    return ancestors, depth, names


def test_labels_map_to_synsets_by_wnid_and_by_lemma() -> None:
    net = wordnet()
    for folder, wnid in FOLDER_WNID.items():
        assert f"n{net.synsets(folder)[0]:08d}" == wnid, folder
    assert net.synsets("DALMATIAN")[0] == net.synsets("dalmatians")[0] == 2110341
    assert net.synsets("golden-retriever") == net.synsets("Golden Retriever") == [2099601]
    assert net.synsets("mice")[0] == 2330245  # irregular plural, noun.exc
    assert [c.wnid for c in net.concepts("gizmo_xq")] == [None]  # unmapped: kept as itself
    chihuahua = [c.name for c in net.concepts("n02085620")]
    assert chihuahua[:3] == ["Chihuahua", "toy dog", "dog"] and chihuahua[-1] == "entity"


def _brute_force(db: Path) -> dict[tuple[int, str], tuple]:
    """(neuron id, wnid or name) -> (share, count, n', base rate, p, Holm p, depth, name) over every
    concept of every neuron's labelled top images with a > 0."""
    ancestors, depth, names = _closure()
    labels = dict(query(db, "SELECT image_id, label FROM images WHERE model = 'planted_selectivity'"))

    def concepts(label: str) -> dict[str, tuple[int, str]]:
        if label not in FOLDER_WNID:
            return {label: (0, label)}
        return {f"n{o:08d}": (depth[o], names[o]) for o in ancestors[int(FOLDER_WNID[label][1:])]}

    labelled = [lab for lab in labels.values() if lab is not None]
    positives: dict[str, int] = {}
    for lab in labelled:
        for key in concepts(lab):
            positives[key] = positives.get(key, 0) + 1
    tops: dict[int, list[tuple[float, str]]] = {}
    for nid, image_id, a in query(db, "SELECT n.neuron_id, t.image_id, t.activation FROM top_activations t "
                                      "JOIN neurons n USING (model, layer, unit) WHERE t.activation > 0"):
        if labels[image_id] is not None:
            tops.setdefault(nid, []).append((a, labels[image_id]))
    out = {}
    for nid, entries in tops.items():
        total, n = sum(a for a, _ in entries), len(entries)
        stats = {}
        for key in {k for _, lab in entries for k in concepts(lab)}:
            inside = [a for a, lab in entries if key in concepts(lab)]
            p = hypergeom.sf(len(inside) - 1, len(labelled), positives[key], n)
            stats[key] = [sum(inside) / total, len(inside), n, positives[key] / len(labelled), p]
        order = sorted(stats, key=lambda key: stats[key][4])
        running = 0.0
        for j, key in enumerate(order):  # Holm, step-down, monotone
            running = max(running, min(1.0, (len(order) - j) * stats[key][4]))
            stats[key].append(running)
        for key, s in stats.items():
            dep, name = next(concepts(lab)[key] for _, lab in entries if key in concepts(lab))
            out[(nid, key)] = (*s, dep, name)
    return out


def test_every_statistic_matches_a_brute_force(concept_db: Path) -> None:
    expected = _brute_force(concept_db)
    stored = query(concept_db, "SELECT neuron_id, coalesce(wnid, concept), share, top_count, labelled_top, base_rate, "
                               "enrichment, p_value, p_holm, depth, concept FROM concept_labels")
    assert len(stored) == sum(1 for s in expected.values() if s[4] < 0.05) > 100
    for nid, key, share, count, n, base, enrichment, p, p_holm, dep, name in stored:
        e_share, e_count, e_n, e_base, e_p, e_holm, e_dep, e_name = expected[(nid, key)]
        assert (count, n, dep, name) == (e_count, e_n, e_dep, e_name)
        assert share == pytest.approx(e_share, rel=1e-9) and base == pytest.approx(e_base, rel=1e-12)
        assert enrichment == pytest.approx(e_share / e_base, rel=1e-9)
        assert p == pytest.approx(e_p, rel=1e-9, abs=1e-300) and p_holm == pytest.approx(e_holm, rel=1e-9, abs=1e-300)


def test_label_is_the_most_specific_qualifying_concept(concept_db: Path) -> None:
    expected = _brute_force(concept_db)
    labels = dict(((nid, (concept, p)) for nid, concept, p in query(
        concept_db, "SELECT neuron_id, concept, concept_p FROM neurons WHERE model = 'planted_selectivity'")))
    for nid, (concept, p) in labels.items():
        qualifying = [(s[6], s[0], key, s) for (n, key), s in expected.items() if n == nid and s[5] < 0.01 and s[0] >= 0.5]
        if not qualifying:
            assert concept is None and p is None, nid
            continue
        best = max(qualifying, key=lambda q: (q[0], q[1]))[3]
        assert concept == best[7] and p == pytest.approx(best[5], rel=1e-9, abs=1e-300)
    dog_units = [nid for nid, (concept, _) in labels.items() if concept == "dog"]
    assert dog_units, "a red-disc unit is a dog unit: its breeds together"
    for nid in dog_units:
        breeds = [expected[(nid, FOLDER_WNID[d])][0] for d in DOGS if (nid, FOLDER_WNID[d]) in expected]
        assert max(breeds) < 0.5  # no single breed labels it
    # where "animal" qualifies too, the deeper "dog" is still the label
    assert any(expected[(nid, WNID_ANIMAL)][5] < 0.01 and expected[(nid, WNID_ANIMAL)][0] >= 0.5 for nid in dog_units)


def test_unlabelled_run_gets_no_concepts_and_one_note(tmp_path: Path) -> None:
    images = tmp_path / "flat"
    images.mkdir()
    data, _ = make_dataset(3, seed=4)
    import cv2

    for i, image in enumerate(data):
        cv2.imwrite(str(images / f"{i}.png"), image)
    summary = api.analyze(PLANTED, images, db=tmp_path / "n.duckdb", config=AnalyzeConfig(top_n=5, nf=False))
    notes = [w for w in summary.warnings if w.startswith("concepts:")]
    assert len(notes) == 1 and "no labels" in notes[0]
    assert query(tmp_path / "n.duckdb", "SELECT count(*) FROM concept_labels")[0][0] == 0
    assert query(tmp_path / "n.duckdb", "SELECT count(concept) FROM neurons")[0][0] == 0


def test_concepts_follow_their_neurons_on_import_and_remove(concept_db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    assert invoke("import", concept_db, "--db", other).exit_code == 0
    sql = ("SELECT n.layer, n.unit, c.concept, c.p_value FROM concept_labels c JOIN neurons n USING (neuron_id) "
           "ORDER BY ALL")
    assert query(other, sql) == query(concept_db, sql)
    copy = tmp_path / "copy.duckdb"
    shutil.copy(concept_db, copy)
    assert invoke("remove", "planted_selectivity", "--db", copy).exit_code == 0
    assert query(copy, "SELECT count(*) FROM concept_labels")[0][0] == 0


def test_index_recomputes_the_same_concepts(concept_db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(concept_db, copy)
    sql = "SELECT neuron_id, concept, share, p_holm FROM concept_labels ORDER BY ALL"
    before = query(copy, sql)
    result = invoke("index", "planted_selectivity", "--indexes", "concepts", "--db", copy)
    assert result.exit_code == 0, result.output
    after = query(copy, sql)
    assert len(after) == len(before) and all(
        a[:2] == b[:2] and math.isclose(a[2], b[2]) and math.isclose(a[3], b[3], rel_tol=1e-9, abs_tol=1e-300)
        for a, b in zip(after, before)
    )
    assert np.isfinite([r[3] for r in after]).all()
