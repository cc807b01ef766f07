"""Verbs that compute before they write keep their work when the database is locked: ``index``,
``probe --force`` and ``match`` wait for the lock (``--lock-timeout``); ``index``, if it stays
locked, saves the indexes and names the command that writes them, which ends with the same tables
as an unhindered run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import invoke, query
from tables import assert_same_analysis
from test_checkpoint import CONFIG, MODEL, images, reference  # noqa: F401  (fixtures)

from onnx_nfi import api
from onnx_nfi.config import IndexConfig
from onnx_nfi.errors import ResultsNotWritten

#: The index options of the analysis ``reference`` made (CONFIG's batch size and provider).
INDEX_CONFIG = IndexConfig(batch_size=CONFIG.batch_size, provider=CONFIG.provider)

#: Holds a database's lock for ARGV[2] seconds.
LOCKER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def locking(db: Path, seconds: float, lockers: list[subprocess.Popen], at: str = "index"):  # noqa: ANN201
    """A progress callback that has another process lock ``db`` for ``seconds`` once phase ``at`` runs."""

    def progress(phase: str, done: int, total: int) -> None:
        if phase == at and not lockers:
            lockers.append(subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)],
                                            stdout=subprocess.PIPE, text=True))
            assert lockers[0].stdout is not None and lockers[0].stdout.readline().strip() == "locked"

    return progress


def test_index_waits_for_a_lock_released_in_time(reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shutil.copy(reference, db)
    lockers: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        summary = api.index(MODEL, db=db, config=replace(INDEX_CONFIG, lock_timeout=60), progress=locking(db, 2, lockers))
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    assert lockers and time.monotonic() - started >= 2, "the lock was never taken"
    assert summary.model == MODEL
    assert_same_analysis(db, reference, MODEL)


def test_index_keeps_its_indexes_when_the_lock_outlasts_the_wait(reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shutil.copy(reference, db)
    api.sql(f"UPDATE neurons SET color_selectivity = NULL, class_selectivity = NULL WHERE model = '{MODEL}'", db=db,
            write=True)
    lockers: list[subprocess.Popen] = []
    try:
        with pytest.raises(ResultsNotWritten) as caught:
            api.index(MODEL, db=db, config=replace(INDEX_CONFIG, lock_timeout=1), progress=locking(db, 600, lockers))
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    saved = Path(f"{db}.{MODEL}.indexes.npz")
    assert caught.value.command == f"onnx-nfi index {MODEL} --db {db} --saved {saved}" and saved.is_file()
    assert str(caught.value) == (
        f"the indexes of {MODEL} were computed but could not be written to {db} (database {db} is still locked by "
        f"another process after 1 s; close it or raise --lock-timeout); they are saved in {saved}: write them with "
        f"'{caught.value.command}'"
    )
    written = invoke(*caught.value.command.split()[1:], "--silent")
    assert written.exit_code == 0, written.output
    assert not saved.exists(), "the written indexes were left behind"
    assert_same_analysis(db, reference, MODEL)
    again = invoke("index", MODEL, "--db", db, "--saved", saved)
    assert again.exit_code == 2 and again.output.strip() == (
        f"Error: {saved} is not indexes saved by 'onnx-nfi index' (or it is damaged); run the index command again "
        "without --saved"
    )


def test_match_waits_for_a_lock_released_in_time(reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shutil.copy(reference, db)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = invoke("match", MODEL, MODEL, "--db", db, "--lock-timeout", "60")
    finally:
        locker.kill()
        locker.wait()
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started > 1
    assert query(db, "SELECT count(*) FROM neuron_matches WHERE model_a = ?", [MODEL])[0][0] > 0


def test_probe_force_waits_for_a_lock_taken_while_it_scores(reference: Path, images: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shutil.copy(reference, db)
    lockers: list[subprocess.Popen] = []
    try:
        summary = api.set_probe(images, db=db, size=20, force=True, lock_timeout=60,
                                progress=locking(db, 2, lockers, "probe"))
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    assert lockers, "the lock was never taken"
    assert summary.changed and summary.recomputed == (MODEL,)
    assert query(db, "SELECT count(*) FROM probe_images") == [(summary.images,)] and summary.images >= 18
