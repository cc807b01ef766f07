"""Portable results: a database moved with its images draws cards given the new --image-root, and
`onnx-nfi import` brings another database's models in, searchable with `similar`."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
from cli_helpers import invoke, query, scalar
from conftest import TINY

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

OPTIONS = ("--batch-size", "8", "--provider", "cpu", "--indexes", "color", "--silent")


def test_moved_database_and_images_draw_a_card_with_the_new_image_root(photo_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "machine_a"
    shutil.copytree(photo_dir, old / "images")
    db = old / "nfi.duckdb"
    result = invoke("analyze", TINY, old / "images", "--db", db, "--image-root", old / "images", *OPTIONS)
    assert result.exit_code == 0, result.output
    paths = [r[0] for r in query(db, "SELECT path FROM images")]
    assert paths and all(not Path(p).is_absolute() for p in paths), paths[:3]
    assert set(paths) == {p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("*") if p.is_file()}
    new = tmp_path / "machine_b"
    shutil.move(old, new)
    moved = new / "nfi.duckdb"
    lost = invoke("card", "tiny_lite0:conv3:1", "-o", tmp_path / "card.png", "--db", moved)
    assert lost.exit_code == 2
    assert "pass --image-root DIR, the folder that holds them now" in lost.output
    card = invoke("card", "tiny_lite0:conv3:1", "-o", tmp_path / "card.png", "--db", moved, "--image-root", new / "images")
    assert card.exit_code == 0, card.output
    assert (tmp_path / "card.png").stat().st_size > 1000
    site = tmp_path / "site"
    lost = invoke("report", "--db", moved, "-o", site, "--silent")
    assert lost.exit_code == 2 and "pass --image-root DIR, the folder that holds them now" in lost.output
    report = invoke("report", "--db", moved, "-o", site, "--image-root", new / "images", "--silent")
    assert report.exit_code == 0, report.output
    shown = scalar(moved, "SELECT count(DISTINCT image_id) FROM top_activations WHERE rank <= 16")
    jpegs = list((site / "tiny_lite0" / "images").glob("*.jpg"))
    assert len(jpegs) == shown > 10
    assert all(cv2.imread(str(j)).shape == (64, 64, 3) for j in jpegs)  # tiny_lite0 sees 64x64 images
    outside = invoke("analyze", TINY, new / "images", "--db", tmp_path / "x.duckdb", "--image-root", tmp_path / "elsewhere", *OPTIONS)
    assert outside.exit_code == 2 and "is not under --image-root" in outside.output
    assert not (tmp_path / "x.duckdb").exists()


def test_imported_models_are_found_by_similar(photo_dir: Path, tmp_path: Path) -> None:
    here, there = tmp_path / "here.duckdb", tmp_path / "there.duckdb"
    config = AnalyzeConfig(batch_size=8, provider="cpu", indexes=("color",))
    api.analyze(TINY, photo_dir, db=here, name="tiny_here", config=config)
    api.analyze(TINY, photo_dir, db=there, name="tiny_there", config=config)
    before = scalar(here, "SELECT max(neuron_id) FROM neurons")
    result = invoke("import", there, "--db", here)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Imported tiny_there (608 neurons) from {there} into {here}."
    # the imported neurons got fresh ids after this database's own, and every table came along
    assert scalar(here, "SELECT min(neuron_id) FROM neurons WHERE model = 'tiny_there'") == before + 1
    for table in ("images", "layers", "top_activations", "class_frequencies"):
        n_there = scalar(there, f"SELECT count(*) FROM {table}")
        assert scalar(here, f"SELECT count(*) FROM {table} WHERE model = 'tiny_there'") == n_there, table
    for table in ("response_vectors", "nf_vectors", "index_vectors"):
        n_there = scalar(there, f"SELECT count(*) FROM {table}")
        joined = f"SELECT count(*) FROM {table} JOIN neurons USING (neuron_id) WHERE model = 'tiny_there'"
        assert n_there > 0 and scalar(here, joined) == n_there, table
    # the same network on the same probe images: unit 7 of conv2 finds its twin first among the other models
    hits = api.similar("tiny_here:conv2:7", other_models=True, k=3, db=here).hits
    assert (hits[0].model, hits[0].alias, hits[0].unit) == ("tiny_there", "conv2", 7)
    assert hits[0].score > 0.999
    again = invoke("import", there, "--db", here)
    assert again.exit_code == 2
    assert "already holds tiny_there; remove it first" in again.output
