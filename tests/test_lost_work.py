"""Verbs that compute before they write keep their work when the database is locked: ``index``,
``probe --force`` and ``match`` wait for the lock (``--lock-timeout``) and, if it stays locked, save
their results and name the command that writes them, which ends with the same tables as an
unhindered run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


#: Holds a read-only connection to ARGV[1] for ARGV[2] seconds: other readers may open the file, no writer can.
READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextmanager
def lockers_ended() -> Iterator[list[subprocess.Popen]]:
    """A list for the lock holders that ``locking`` starts, each ended on the way out."""
    lockers: list[subprocess.Popen] = []
    try:
        yield lockers
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()


def table(db: Path, sql: str) -> list[tuple]:
    return sorted(query(db, sql))


def test_probe_force_keeps_the_profiles_when_the_lock_outlasts_the_wait(
    reference: Path, images: Path, tmp_path: Path
) -> None:
    db, unhindered = tmp_path / "nfi.duckdb", tmp_path / "unhindered.duckdb"
    shutil.copy(reference, db)
    shutil.copy(reference, unhindered)
    before = table(db, "SELECT sha256 FROM probe_images")
    with lockers_ended() as lockers, pytest.raises(ResultsNotWritten) as caught:
        api.set_probe(images, db=db, size=20, force=True, lock_timeout=1, progress=locking(db, 600, lockers, "probe"))
    saved = Path(f"{db}.probe.npz")
    assert caught.value.command == f"onnx-nfi probe --db {db} --saved {saved}" and saved.is_file()
    assert str(caught.value) == (
        f"the response profiles over the new probe set were computed but could not be written to {db} (database {db} "
        f"is still locked by another process after 1 s; close it or raise --lock-timeout); they are saved in {saved}: "
        f"write them with '{caught.value.command}'"
    )
    assert table(db, "SELECT sha256 FROM probe_images") == before, "the database changed although the write failed"
    written = invoke(*caught.value.command.split()[1:], "--silent")
    assert written.exit_code == 0, written.output
    assert not saved.exists(), "the written profiles were left behind"
    api.set_probe(images, db=unhindered, size=20, force=True)
    probe_sql = "SELECT probe_index, sha256 FROM probe_images"
    assert table(db, probe_sql) == table(unhindered, probe_sql) != before
    vectors_sql = "SELECT n.layer, n.unit, r.vector FROM response_vectors r JOIN neurons n USING (neuron_id)"
    assert table(db, vectors_sql) == table(unhindered, vectors_sql)
    again = invoke("probe", "--db", db, "--saved", saved)
    assert again.exit_code == 2 and again.output.strip() == (
        f"Error: {saved} is not a probe set saved by 'onnx-nfi probe' (or it is damaged); run 'onnx-nfi probe DIR "
        "--force' again"
    )


def test_match_reads_then_computes_unlocked_and_keeps_matches_it_cannot_write(reference: Path, tmp_path: Path) -> None:
    db, unhindered = tmp_path / "nfi.duckdb", tmp_path / "unhindered.duckdb"
    shutil.copy(reference, db)
    shutil.copy(reference, unhindered)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), "600"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "locked"
        refused = invoke("match", MODEL, MODEL, "--db", db, "--lock-timeout", "1")
    finally:
        reader.kill()
        reader.wait()
    saved = Path(f"{db}.{MODEL}.{MODEL}.matches.npz")
    command = f"onnx-nfi match {MODEL} {MODEL} --db {db} --saved {saved}"
    assert refused.exit_code == 2 and saved.is_file()
    assert refused.output.strip() == (
        f"Error: the matches of {MODEL} in {MODEL} were computed but could not be written to {db} (database {db} is "
        f"still locked by another process after 1 s; close it or raise --lock-timeout); they are saved in {saved}: "
        f"write them with '{command}'"
    )
    assert query(db, "SELECT count(*) FROM neuron_matches") == [(0,)]
    replaced = tmp_path / "replaced.duckdb"
    shutil.copy(db, replaced)
    api.sql(f"UPDATE models SET sha256 = 'another file' WHERE model = '{MODEL}'", db=replaced, write=True)
    stale = invoke("match", MODEL, MODEL, "--db", replaced, "--saved", saved)
    assert stale.exit_code == 2 and stale.output.strip() == (
        f"Error: {saved} holds matches of other models (or other versions of them) than {MODEL} in {MODEL} as stored "
        "now; run the match command again without --saved"
    )
    assert query(replaced, "SELECT count(*) FROM neuron_matches") == [(0,)] and saved.is_file()
    written = invoke(*command.split()[1:])
    assert written.exit_code == 0, written.output
    assert not saved.exists(), "the written matches were left behind"
    plain = invoke("match", MODEL, MODEL, "--db", unhindered)
    assert written.output.replace(str(db), "DB") == plain.output.replace(str(unhindered), "DB")
    rows = "SELECT model_a, layer_a, unit_a, model_b, layer_b, unit_b, score, one_to_one FROM neuron_matches"
    assert table(db, rows) == table(unhindered, rows) and len(table(db, rows)) > 0


def test_match_after_an_import_without_profiles_says_what_happened_and_what_to_run(
    reference: Path, images: Path, tmp_path: Path
) -> None:
    db = tmp_path / "other.duckdb"
    api.set_probe(images, db=db, size=5)  # an empty database with another probe set than the reference's
    imported = invoke("import", reference, "--db", db)
    assert imported.exit_code == 0, imported.output
    refused = invoke("match", MODEL, MODEL, "--db", db)
    folder = images  # the five probe images span the class folders of ``images``
    command = f"onnx-nfi probe {folder} --size 5 --force --db {db}"
    assert refused.exit_code == 2 and refused.output.strip() == (
        f"Error: model '{MODEL}' has no response profiles: it was imported from a database with another probe set, "
        f"and 'import' leaves them out then; score every model on this database's probe set with '{command}'"
    )
    done = invoke(*command.split()[1:], "--silent")
    assert done.exit_code == 0, done.output
    assert invoke("match", MODEL, MODEL, "--db", db).exit_code == 0


def test_probe_without_a_folder_or_a_saved_file_says_what_it_needs(tmp_path: Path) -> None:
    result = invoke("probe", "--db", tmp_path / "nfi.duckdb")
    assert result.exit_code == 2 and result.output.strip() == (
        "Error: name the image folder to draw the probe set from (or pass --saved FILE)"
    )
