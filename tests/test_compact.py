"""``compact`` shrinks a database after ``remove`` and keeps every remaining row and the search working."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from cli_helpers import invoke, query
from conftest import TINY
from test_errors import assert_clean_error, row_counts

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig


def test_compact_shrinks_a_database_after_remove(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "it's.duckdb"  # a quote in the path: ATTACH's SQL text must quote it
    twin = tmp_path / "twin.onnx"
    shutil.copy(TINY, twin)
    shutil.copy(TINY.with_suffix(".json"), twin.with_suffix(".json"))
    for model in (TINY, twin):
        api.analyze(model, photo_dir, db=db, config=AnalyzeConfig(top_n=20, nf=True, indexes=("color",)))
    kept = query(db, "SELECT * FROM neurons WHERE model = 'tiny_lite0' ORDER BY neuron_id")
    removed = invoke("remove", "twin", "--db", db)
    assert removed.exit_code == 0 and "onnx-nfi compact" in removed.stdout
    before = db.stat().st_size
    counts = row_counts(db)
    result = invoke("compact", "--db", db)
    assert result.exit_code == 0, result.output
    after = db.stat().st_size
    assert after < before
    assert "MiB freed" in result.stdout and str(db) in result.stdout
    assert row_counts(db) == counts
    assert query(db, "SELECT * FROM neurons WHERE model = 'tiny_lite0' ORDER BY neuron_id") == kept
    assert query(db, "SELECT count(*) FROM layer_summary WHERE model = 'tiny_lite0'") == [(9,)]  # the view survives
    assert invoke("similar", "tiny_lite0:conv3:0", "--db", db).exit_code == 0
    assert not list(tmp_path.glob("*.compact*"))


def test_remove_can_compact_at_once(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=20, indexes=()))
    result = invoke("remove", "tiny_lite0", "--db", db, "--compact")
    assert result.exit_code == 0, result.output
    assert "Compacted" in result.stdout


def test_compact_of_a_missing_database(tmp_path: Path) -> None:
    assert_clean_error(invoke("compact", "--db", tmp_path / "none.duckdb"), "does not exist")


def test_a_killed_compact_leaves_no_copy_past_the_next_command(tmp_path: Path) -> None:
    """SIGKILL to a real ``compact`` while it writes its copy: the copy (and its WAL) stays only
    until the next command that opens the database, which deletes it and finds every row."""
    db = tmp_path / "nfi.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE filler AS SELECT range AS k, random() AS v FROM range(6000000)")
    con.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    compact = subprocess.Popen([sys.executable, "-m", "onnx_nfi", "compact", "--db", str(db)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    copies: list[Path] = []
    while compact.poll() is None and not copies:
        copies = [p for p in tmp_path.glob("nfi.duckdb.*.tmp") if p.stat().st_size > 0]
        time.sleep(0.005)
    compact.send_signal(signal.SIGKILL)
    compact.wait()
    assert copies, "the compact finished before its copy was seen"
    assert copies[0].exists()  # the kill left it behind
    result = invoke("sql", "SELECT count(*) AS n FROM filler", "--db", db)
    assert result.exit_code == 0, result.output
    assert "6000000" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nfi.duckdb"]
