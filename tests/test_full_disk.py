"""A full disk (here: the process's file-size limit, RLIMIT_FSIZE, and where user namespaces allow
it a real full tmpfs) ends ``import``, ``remove``, ``match`` and ``analyze`` with one line and a
non-zero exit, the database as it was (counted independently with DuckDB) and no new file left."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import query
from conftest import ROOT, TINY

from onnx_nfi.api import analyze
from onnx_nfi.config import AnalyzeConfig

FAST = AnalyzeConfig(top_n=3, nf=False, indexes=("none",), provider="cpu")
TABLES = ("models", "neurons", "top_activations", "neuron_matches", "images")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """A database holding ``a`` and ``b`` (the tiny model twice) and one holding ``c``."""
    folder = tmp_path_factory.mktemp("full")
    analyze(TINY, photo_dir, db=folder / "ab.duckdb", name="a", config=FAST)
    analyze(TINY, photo_dir, db=folder / "ab.duckdb", name="b", config=FAST)
    analyze(TINY, photo_dir, db=folder / "c.duckdb", name="c", config=FAST)
    return folder


def counts(db: Path) -> list[int]:
    return [query(db, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES]


def run_limited(args: list[str], limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``onnx-nfi ARGS`` with every file write past ``limit_bytes`` refused (EFBIG: Python ignores SIGXFSZ)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "onnx_nfi", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, preexec_fn=limit)


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode != 0, run.stdout
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stdout + run.stderr
    return lines[0]


@pytest.mark.parametrize(("verb", "limit_bytes"), [  # (a remove's deletions fit in 200 KB)
    ("import", 1024), ("import", 200 * 1024), ("remove", 1024), ("match", 1024), ("match", 200 * 1024)])
def test_writes_refused_by_a_full_disk_end_in_one_line(two_models: Path, tmp_path: Path, verb: str, limit_bytes: int) -> None:
    ab, c = tmp_path / "ab.duckdb", tmp_path / "c.duckdb"
    shutil.copy(two_models / "ab.duckdb", ab)
    shutil.copy(two_models / "c.duckdb", c)
    args = {"import": ["import", str(c), "--db", str(ab)], "remove": ["remove", "a", "--db", str(ab)],
            "match": ["match", "a", "b", "--db", str(ab)]}[verb]
    before = counts(ab)
    line = one_line_error(run_limited(args, limit_bytes, tmp_path))
    assert line == (f"Error: cannot write {ab} (File too large); free disk space (or raise the file-size limit) "
                    "and run the command again: the database is unchanged")
    assert counts(ab) == before
    assert not run_limited(args, 2**40, tmp_path).returncode  # with room, the same command works


def test_an_analysis_into_a_new_database_on_a_full_disk_leaves_nothing(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "new.duckdb"
    run = run_limited(["analyze", str(TINY), str(photo_dir), "--db", str(db), "--no-nf", "--indexes", "none",
                       "--top-n", "3", "--silent"], 1024, tmp_path)
    assert "(File too large); free disk space" in one_line_error(run)
    assert not db.exists()


def test_a_real_full_filesystem(two_models: Path, tmp_path: Path) -> None:
    """The same on a full tmpfs mounted in a user namespace (skipped where those are not allowed)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a small filesystem")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=16M tmpfs {mnt} && cp {two_models / 'ab.duckdb'} {mnt}/ && "
              f"(dd if=/dev/zero of={mnt}/fill bs=4k 2>/dev/null; true) && "
              f"{sys.executable} -m onnx_nfi remove a --db {mnt}/ab.duckdb; echo rc=$?; "
              f"rm {mnt}/fill && {sys.executable} -c 'import duckdb; print(duckdb.connect(\"{mnt}/ab.duckdb\")"
              f".execute(\"SELECT count(*) FROM neurons\").fetchone()[0])'")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    assert run.stderr.strip() == (f"Error: cannot write {mnt}/ab.duckdb (No space left on device); free disk space (or raise "
                        "the file-size limit) and run the command again: the database is unchanged"), run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "rc=2"
    assert int(lines[1]) == counts(two_models / "ab.duckdb")[1]
