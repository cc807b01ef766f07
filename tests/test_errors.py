"""Bad input through the CLI: exit code 2, one ``Error:`` line that says what to do, no traceback,
and nothing written (no new database; an existing database keeps every row)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import invoke
from conftest import TINY
from graphs import no_conv_net, two_input_net
from hostile_models import two_conv_net
from typer.testing import Result

ANALYZE_FAST = ["--no-nf", "--indexes", "none", "--top-n", "3"]



def assert_clean_error(result: Result, hint: str) -> str:
    """Exit 2, stdout empty, stderr one ``Error:`` line containing ``hint``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert hint in lines[0], lines[0]
    return lines[0]


def row_counts(db: Path) -> dict[str, int]:
    """Rows per table of a database (read-only)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


@pytest.fixture(scope="module")
def analysed_db(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """A database holding one analysis of the tiny model (copied by each test that may spoil it)."""
    db = tmp_path_factory.mktemp("errors_db") / "nfi.duckdb"
    result = invoke("analyze", TINY, photo_dir, "--db", db, "--silent", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture()
def existing_db(analysed_db: Path, tmp_path: Path) -> Path:
    db = tmp_path / "existing.duckdb"
    shutil.copyfile(analysed_db, db)
    return db


@dataclass(frozen=True)
class Case:
    """A failing ``analyze``: its arguments after MODEL IMAGES come from ``extra``; ``hint`` must be in the message."""

    model: Callable[[Path], Path]
    images: Callable[[Path, Path], Path]
    hint: str
    extra: Callable[[Path], list[str]] = lambda tmp: []


def tiny(tmp: Path) -> Path:
    return TINY


def photos(tmp: Path, photo_dir: Path) -> Path:
    return photo_dir


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def saved(model: onnx.ModelProto, tmp: Path, name: str) -> Path:
    onnx.save(model, tmp / name)
    return tmp / name


def unreadable_images(tmp: Path, photo_dir: Path) -> Path:
    write(tmp, "bad/broken.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 truncated")
    write(tmp, "bad/empty.png", b"")
    return tmp / "bad"


def empty_folder(tmp: Path, photo_dir: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def preprocess_json(data: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--preprocess", str(write(tmp, "pre.json", data))]


SIDECAR = json.loads((TINY.with_suffix(".json")).read_text())

CASES = {
    "random_bytes_model": Case(lambda t: write(t, "m.onnx", np.random.default_rng(0).bytes(4096)), photos, "export your model to ONNX"),
    "text_file_model": Case(lambda t: write(t, "m.onnx", "name,value\nnot,a model\n"), photos, "export your model to ONNX"),
    "missing_model": Case(lambda t: t / "nowhere.onnx", photos, "pass the path of an .onnx file"),
    "no_conv_layer": Case(lambda t: saved(no_conv_net().model, t, "m.onnx"), photos, "no 2-D conv layer"),
    "two_inputs": Case(
        lambda t: saved(two_input_net(), t, "m.onnx"), photos,
        "has several image inputs (image, mask); pick the one to analyse with --input NAME",
    ),
    "unknown_input": Case(
        lambda t: saved(two_input_net(), t, "m.onnx"), photos,
        "has no input 'scan'; its inputs are image, mask: pass one of them to --input", lambda t: ["--input", "scan"],
    ),
    "nothing_readable": pytest.param(Case(tiny, unreadable_images, "no readable image")),
    "empty_folder": Case(tiny, empty_folder, "put .jpg/.png"),
    "missing_folder": Case(tiny, lambda t, p: t / "no_such_folder", "pass the folder that holds the images"),
    "missing_folder_with_brackets": pytest.param(
        Case(tiny, lambda t, p: t / "photos[raw]", "photos[raw]")
    ),
    "missing_folder_with_closing_tag": pytest.param(  # today a MarkupError traceback
        Case(tiny, lambda t, p: t / "scans[/i]", "scans[/i]")
    ),
    "unknown_layer": Case(tiny, photos, "onnx-nfi layers", lambda t: ["--layers", "conv1", "--layers", "conv99"]),
    "preprocess_missing_key": Case(
        tiny, photos, "missing key(s) mean", preprocess_json(json.dumps({k: v for k, v in SIDECAR.items() if k != "mean"}))
    ),
    "preprocess_malformed_json": Case(tiny, photos, "not valid JSON", preprocess_json('{"layout": "NCHW",')),
    "unknown_preset": Case(tiny, photos, "use one of torchvision", lambda t: ["--preprocess", "imagenet_bgr"]),
    "labels_csv_missing": Case(tiny, photos, "path,label", lambda t: ["--labels", f"csv:{t / 'missing.csv'}"]),
    "unknown_label_source": Case(tiny, photos, "use folder, csv:FILE", lambda t: ["--labels", "filenames"]),
    "truncated_model": Case(lambda t: write(t, "m.onnx", TINY.read_bytes()[:30000]), photos, "export your model to ONNX"),
    "opset_too_old": Case(lambda t: saved(two_conv_net(["N", 3, 16, 16], opset=5), t, "m.onnx"), photos, "convert it with"),
    "custom_op_before_conv": Case(
        lambda t: saved(two_conv_net(["N", 3, 16, 16], custom="first"), t, "m.onnx"), photos, "onnxruntime cannot run"
    ),
    "nan_layer": Case(lambda t: saved(two_conv_net(["N", 3, 16, 16], log=True), t, "m.onnx"), photos, "non-finite"),
    "input_size_on_fixed_model": Case(tiny, photos, "drop --input-size", lambda t: ["--input-size", "32,32"]),
    "predicted_without_class_head": Case(tiny, photos, "class scores", lambda t: ["--labels", "predicted"]),
    "resize_key_not_honoured": Case(
        tiny, photos, "unknown key(s) antialias",
        preprocess_json(json.dumps({**SIDECAR, "resize": {**SIDECAR["resize"], "antialias": True}})),
    ),
}
if "CUDAExecutionProvider" not in ort.get_available_providers():
    CASES["provider_cuda_on_cpu"] = Case(tiny, photos, "--provider cpu", lambda t: ["--provider", "cuda"])
    CASES["provider_cuda_message_intact"] = pytest.param(
        Case(tiny, photos, "pip install 'onnx-nfi[gpu]'", lambda t: ["--provider", "cuda"])
    )


def run_case(case: Case, tmp: Path, photo_dir: Path, db: Path) -> Result:
    model, images = case.model(tmp), case.images(tmp, photo_dir)
    return invoke("analyze", model, images, "--db", db, *ANALYZE_FAST, *case.extra(tmp))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_writes_no_database(case: Case, tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "fresh.duckdb"
    assert_clean_error(run_case(case, tmp_path, photo_dir, db), case.hint)
    assert not db.exists()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_leaves_existing_database_unchanged(case: Case, tmp_path: Path, photo_dir: Path, existing_db: Path) -> None:
    before = row_counts(existing_db)
    assert before["neurons"] > 0
    assert_clean_error(run_case(case, tmp_path, photo_dir, existing_db), case.hint)
    assert row_counts(existing_db) == before


def test_database_that_is_not_duckdb(tmp_path: Path, photo_dir: Path) -> None:
    db = write(tmp_path, "junk.duckdb", np.random.default_rng(1).bytes(16384))
    content = db.read_bytes()
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", db, *ANALYZE_FAST), "is not a DuckDB database")
    assert_clean_error(invoke("sql", "SELECT 1", "--db", db), "is not a DuckDB database")
    assert db.read_bytes() == content


def test_database_path_is_a_folder(tmp_path: Path, photo_dir: Path) -> None:
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", tmp_path, *ANALYZE_FAST), "pass another --db file")
    assert_clean_error(invoke("sql", "SELECT 1", "--db", tmp_path), "pass another --db file")


def test_database_in_missing_folder(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "no_such_dir" / "nfi.duckdb"
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", db, *ANALYZE_FAST), "create it first")
    assert not db.parent.exists()


def test_database_locked_by_another_process(existing_db: Path, photo_dir: Path) -> None:
    before = row_counts(existing_db)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(existing_db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        hint = "locked by another process; close it or use another --db"
        assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", existing_db, *ANALYZE_FAST), hint)
        assert_clean_error(invoke("sql", "SELECT count(*) FROM neurons", "--db", existing_db), hint)
    finally:
        holder.kill()
        holder.wait()
    assert row_counts(existing_db) == before


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM neurons", "DROP TABLE top_activations", "INSERT INTO runs (run_id) VALUES (99)", "UPDATE neurons SET dead = true"],
)
def test_sql_write_needs_write_flag(statement: str, existing_db: Path) -> None:
    before = row_counts(existing_db)
    assert_clean_error(invoke("sql", statement, "--db", existing_db), "pass --write")
    assert row_counts(existing_db) == before


def test_sql_on_missing_database(tmp_path: Path) -> None:
    db = tmp_path / "none.duckdb"
    assert_clean_error(invoke("sql", "SELECT 1", "--db", db), "run 'onnx-nfi analyze' first")
    assert not db.exists()


def test_layers_of_bad_model(tmp_path: Path) -> None:
    model = write(tmp_path, "m.onnx", b"\x08\x07garbage")
    assert_clean_error(invoke("layers", model), "export your model to ONNX")
