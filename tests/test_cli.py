"""``onnx-nfi analyze`` / ``layers`` / ``sql`` end to end, and the DuckDB contract the README states."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, query, scalar
from conftest import LITE0, TINY
from typer.testing import Result

from onnx_nfi.pipeline.models import open_model
from onnx_nfi.data.images import list_images
from onnx_nfi.data.loader import iter_decoded
from onnx_nfi.graph.layers import find_conv_layers
from onnx_nfi.graph.load import load_model
from onnx_nfi.graph.session import Runner

TOP_N = 5
FAST = ["--no-nf", "--indexes", "none"]

#: The minimum contract of the DuckDB store (the README's schema table).
CONTRACT = {
    "models": ["model", "path", "sha256", "input_height", "input_width", "layout", "preprocessing"],
    "images": ["image_id", "path", "sha256", "label", "label_source"],
    "layers": ["model", "layer", "alias", "op_type", "depth", "channels", "height", "width"],
    "neurons": ["model", "layer", "unit", "max_activation", "mean_activation", "std_activation", "active_fraction", "dead"],
    "top_activations": ["model", "layer", "unit", "rank", "image_id", "y", "x", "activation"],
    "runs": ["run_id", "model", "started_at", "finished_at", "images_seen", "images_skipped", "top_n", "provider", "params"],
    "skipped_images": ["run_id", "path", "reason"],
}
#: Unreadable files added to the photos: name -> expected start of the stored reason.
JUNK = {
    "empty.jpg": "empty file",
    "truncated.jpg": "not a decodable image",
    "notes.jpg": "not a decodable image",
    "readme.txt": "unsupported file type '.txt'",
}





@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The real photos plus, in ``junk/``, files that cannot be decoded."""
    root = tmp_path_factory.mktemp("cli_images") / "photos"
    shutil.copytree(photo_dir, root)
    junk = root / "junk"
    junk.mkdir()
    jpeg = sorted(photo_dir.rglob("*.jpg"))[0].read_bytes()
    (junk / "empty.jpg").write_bytes(b"")
    (junk / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (junk / "notes.jpg").write_text("this is text, not a JPEG\n")
    (junk / "readme.txt").write_text("notes about the photos\n")
    return root


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, Result]:
    db = tmp_path_factory.mktemp("cli_db") / "nfi.duckdb"
    return db, invoke("analyze", TINY, images, "--db", db, "--top-n", TOP_N, "--batch-size", 16, *FAST)


def readable(images: Path) -> list[Path]:
    return sorted(p for p in images.rglob("*.jpg") if p.parent.name != "junk")


def test_analyze_prints_summary(analysed: tuple[Path, Result], images: Path) -> None:
    db, result = analysed
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # rich wraps at the console width (80 under pytest-xdist)
    n_images = len(readable(images))
    neurons = sum(layer.channels for layer in find_conv_layers(load_model(TINY)))
    assert f"Analysed tiny_lite0: 9 layers, {neurons} neurons" in text
    assert f"over {n_images} images ({len(JUNK)} skipped) on CPUExecutionProvider" in text
    assert "labels: folder" in text
    assert f"Results: {db.resolve()}" in text


def test_store_has_the_contract_columns(analysed: tuple[Path, Result]) -> None:
    db, _ = analysed
    for table, columns in CONTRACT.items():
        present = {r[0] for r in query(db, "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table])}
        assert set(columns) <= present, (table, set(columns) - present)


def test_store_rows(analysed: tuple[Path, Result], images: Path) -> None:
    db, _ = analysed
    files = readable(images)
    layers = find_conv_layers(load_model(TINY))
    channels = sum(layer.channels for layer in layers)
    assert scalar(db, "SELECT count(*) FROM neurons WHERE model = 'tiny_lite0'") == channels
    assert query(db, "SELECT layer, alias, channels, height, width FROM layers ORDER BY depth") == [
        (l.tensor, l.alias, l.channels, l.height, l.width) for l in layers
    ]
    assert scalar(db, "SELECT count(*) FROM top_activations") == channels * min(TOP_N, len(files))
    # every neuron has ranks 1..N exactly once, activations non-increasing, locations inside the map
    assert query(db, """
        SELECT count(*) FROM (
            SELECT layer, unit, list(rank ORDER BY rank) AS ranks FROM top_activations GROUP BY ALL
        ) WHERE ranks <> range(1, ? + 1)""", [TOP_N])[0][0] == 0
    assert scalar(db, """
        SELECT count(*) FROM top_activations a JOIN top_activations b USING (model, layer, unit)
        WHERE b.rank = a.rank + 1 AND b.activation > a.activation""") == 0
    assert scalar(db, """
        SELECT count(*) FROM top_activations t JOIN layers l USING (model, layer)
        WHERE t.y NOT BETWEEN 0 AND l.height - 1 OR t.x NOT BETWEEN 0 AND l.width - 1""") == 0
    assert scalar(db, """
        SELECT count(*) FROM neurons n JOIN top_activations t USING (model, layer, unit)
        WHERE t.rank = 1 AND t.activation <> n.max_activation""") == 0
    # every top image is a stored image; images are the readable files, by absolute path and content hash
    assert scalar(db, "SELECT count(*) FROM top_activations t ANTI JOIN images i USING (model, image_id)") == 0
    stored = query(db, "SELECT image_id, path, sha256 FROM images WHERE model = 'tiny_lite0' ORDER BY image_id")
    assert [r[0] for r in stored] == list(range(len(files)))
    assert sorted(Path(r[1]) for r in stored) == [p.resolve() for p in files]
    for _, path, sha in stored:
        assert Path(path).is_absolute()
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
    model = query(db, "SELECT path, sha256, input_height, input_width, layout, preprocessing FROM models")
    assert len(model) == 1
    path, sha, h, w, layout, pre = model[0]
    assert (Path(path), sha, h, w, layout) == (TINY.resolve(), hashlib.sha256(TINY.read_bytes()).hexdigest(), 64, 64, "NCHW")
    assert json.loads(pre)["mean"] == [127.0, 127.0, 127.0]


def test_unreadable_files_are_skipped_and_recorded(analysed: tuple[Path, Result], images: Path) -> None:
    db, _ = analysed
    run_id, seen, skipped, top_n, provider = query(
        db, "SELECT run_id, images_seen, images_skipped, top_n, provider FROM runs WHERE model = 'tiny_lite0'"
    )[0]
    assert (seen, skipped, top_n, provider) == (len(readable(images)), len(JUNK), TOP_N, "CPUExecutionProvider")
    rows = query(db, "SELECT path, reason FROM skipped_images WHERE run_id = ?", [run_id])
    reasons = {Path(p).name: r for p, r in rows}
    assert set(reasons) == set(JUNK)
    for name, reason in JUNK.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert all(Path(p) == (images / "junk" / Path(p).name).resolve() for p, _ in rows)


def test_labels_from_folders(analysed: tuple[Path, Result]) -> None:
    db, _ = analysed
    rows = query(db, "SELECT path, label, label_source FROM images")
    assert rows and all(label == Path(path).parent.name and source == "folder" for path, label, source in rows)


def test_reanalysis_replaces_only_its_own_rows(analysed: tuple[Path, Result], images: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shutil.copyfile(analysed[0], db)
    assert invoke("analyze", TINY, images, "--db", db, "--name", "other", "--top-n", 3, "--layers", "conv1", *FAST).exit_code == 0
    other_tables = ("models", "images", "layers", "neurons", "top_activations")

    def rows_of(model: str) -> dict[str, list[tuple]]:
        return {t: sorted(map(repr, query(db, f"SELECT * FROM {t} WHERE model = ?", [model]))) for t in other_tables}

    other = rows_of("other")
    assert len(other["neurons"]) == 32 and len(other["top_activations"]) == 32 * 3
    result = invoke("analyze", TINY, images, "--db", db, "--top-n", 2, "--layers", "conv[12]", *FAST)
    assert result.exit_code == 0, result.output
    assert rows_of("other") == other
    assert scalar(db, "SELECT count(*) FROM neurons WHERE model = 'tiny_lite0'") == 64
    assert query(db, "SELECT alias FROM layers WHERE model = 'tiny_lite0' ORDER BY depth") == [("conv1",), ("conv2",)]
    assert query(db, "SELECT count(*), max(rank) FROM top_activations WHERE model = 'tiny_lite0'") == [(64 * 2, 2)]
    assert scalar(db, "SELECT count(*) FROM models") == 2
    latest = scalar(db, "SELECT run_id FROM models WHERE model = 'tiny_lite0'")
    assert query(db, "SELECT top_n, images_skipped FROM runs WHERE run_id = ?", [latest]) == [(2, len(JUNK))]


def test_layers_command_lists_aliases_channels_and_rf() -> None:
    result = invoke("layers", TINY)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    layers = find_conv_layers(load_model(TINY))
    expected = [[l.alias, l.op_type, str(l.channels), f"{l.height}x{l.width}"] for l in layers]
    assert [[r[0], *r[2:5]] for r in rows] == expected
    for row, layer in zip(rows, layers):  # rich cuts long names to the console width (80 under pytest-xdist)
        assert row[1] == layer.tensor or (row[1].endswith("…") and layer.tensor.startswith(row[1][:-1])), row[1]
    rf_sizes = [r[5] for r in rows]
    assert rf_sizes[0] == "3x3"  # the stem: one 3x3 conv
    sizes = [int(s.split("x")[0]) for s in rf_sizes]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # RFs grow with depth in a chain


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_sql_output_formats_parse(fmt: str, analysed: tuple[Path, Result]) -> None:
    db, _ = analysed
    sql = "SELECT layer, unit, max_activation, dead FROM neurons WHERE model = 'tiny_lite0' ORDER BY layer, unit"
    result = invoke("sql", sql, "--db", db, "--format", fmt)
    assert result.exit_code == 0, result.output
    expected = query(db, sql)
    if fmt == "csv":
        parsed = [(r["layer"], int(r["unit"]), float(r["max_activation"]), r["dead"] == "True") for r in csv.DictReader(io.StringIO(result.stdout))]
    else:
        parsed = [(r["layer"], r["unit"], r["max_activation"], r["dead"]) for r in json.loads(result.stdout)]
    assert len(parsed) == len(expected)
    for got, want in zip(parsed, expected):
        assert got[:2] == want[:2] and got[3] == want[3]
        assert got[2] == pytest.approx(want[2], rel=1e-6)


def test_labels_from_csv(images: Path, tmp_path: Path) -> None:
    files = readable(images)
    labelled = {p: f"class_{k % 3}" for k, p in enumerate(files[:10])}
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for k, (path, label) in enumerate(labelled.items()):  # relative and absolute paths both work
            writer.writerow([path.relative_to(images).as_posix() if k % 2 else str(path), label])
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", TINY, images, "--db", db, "--labels", f"csv:{table}", "--layers", "conv1", "--top-n", 2, *FAST)
    assert result.exit_code == 0, result.output
    assert "labels: csv" in result.stdout
    rows = query(db, "SELECT path, label, label_source FROM images")
    assert len(rows) == len(files)
    assert {Path(p): label for p, label, _ in rows} == {p.resolve(): labelled.get(p) for p in files}
    assert {source for _, _, source in rows} == {"csv"}


@pytest.mark.slow
def test_labels_predicted_by_lite0(photo_dir: Path, tmp_path: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"class_{k}\n" for k in range(1000)))
    db = tmp_path / "nfi.duckdb"
    result = invoke("analyze", LITE0, photo_dir, "--db", db, "--labels", f"predicted:{names}", "--layers", "conv1", "--top-n", 2, *FAST)
    assert result.exit_code == 0, result.output
    assert "labels: predicted" in result.stdout
    stored = {Path(p): (label, source) for p, label, source in query(db, "SELECT path, label, label_source FROM images")}
    # independent top-1: the whole model, one image at a time, on the decoded images
    lm, pre = open_model(LITE0)
    runner = Runner(lm.proto, "cpu")
    files = list_images(photo_dir).files
    expected = {}
    for decoded in iter_decoded(files, pre):
        logits = next(iter(runner.run(pre.to_tensor(decoded.image[None])).values()))
        expected[decoded.file.path] = f"class_{int(np.argmax(logits))}"
    assert stored == {p: (label, "predicted") for p, label in expected.items()}
    # the ImageNet photos are named imagenet_<k>_<class>_<crop>.jpg: most crops are recognised
    imagenet = {p: label for p, label in expected.items() if p.name.startswith("imagenet_")}
    hits = sum(label == f"class_{int(p.name.split('_')[2])}" for p, label in imagenet.items())
    assert imagenet and hits >= len(imagenet) // 2, (hits, len(imagenet))
