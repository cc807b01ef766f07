"""Storage and output safety: a busy database is waited for, killed index writes leave nothing,
SQL output is literal, export paths are quoted, bad options fail before work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import invoke, query, scalar
from conftest import TINY
from test_errors import ANALYZE_FAST, assert_clean_error

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ConfigError, ResultsNotWritten
from onnx_nfi.signals import signals_wait
from onnx_nfi.store.vectors import index_dir, sync_after_commit, sync_indexes

FAST = AnalyzeConfig(top_n=3, nf=False, indexes=())

HOLD = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(float(sys.argv[2])); c.close()"


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the database's write lock for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def analyze_locked_at_write(db: Path, photo_dir: Path, hold_s: float, timeout: float) -> tuple[list, subprocess.Popen | None]:
    """Analyse into ``db`` while another process takes the lock as soon as the scan ends."""
    calls: list[tuple[str, int, int]] = []
    holder: list[subprocess.Popen] = []

    def progress(phase: str, done: int, total: int) -> None:
        calls.append((phase, done, total))
        if phase == "scan" and done == total and not holder:
            holder.append(hold_lock(db, hold_s))

    try:
        api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=3, nf=False, indexes=(), lock_timeout=timeout),
                    progress=progress)
    finally:
        for h in holder:
            h.kill()
            h.wait()
    return calls, holder[0] if holder else None


def test_write_waits_for_a_lock_held_by_another_process(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    started = time.monotonic()
    calls, holder = analyze_locked_at_write(db, photo_dir, hold_s=2.5, timeout=60)
    assert holder is not None
    waits = [c for c in calls if c[0] == "lock"]
    assert waits and waits[0][2] == 60  # the waiting is reported, with the timeout
    assert time.monotonic() - started >= 2.5
    assert scalar(db, "SELECT count(*) FROM neurons") == 608


def test_write_gives_up_after_the_lock_timeout(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    with pytest.raises(ResultsNotWritten, match=r"still locked by another process after 1 s; close it or raise --lock-timeout") as err:
        analyze_locked_at_write(db, photo_dir, hold_s=60, timeout=1)
    assert Path(err.value.state).is_file() and "onnx-nfi merge" in err.value.command  # kept, with the command that writes it


def test_waiting_message_is_printed_once_even_without_bars() -> None:
    script = (
        "from onnx_nfi.cli.common import ProgressBars\n"
        "with ProgressBars(silent=True) as bars:\n"
        "    bars('lock', 0, 60); bars('lock', 1, 60)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.stderr.count("The database is locked by another process; waiting up to 60 s for it (--lock-timeout).") == 1


def test_killed_index_write_leaves_no_temporary_for_good(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=FAST)
    folder = index_dir(db)
    script = (
        "import sys, time; from pathlib import Path; from onnx_nfi.files import atomic_write\n"
        "with atomic_write(Path(sys.argv[1]) / 'response.index') as f:\n"
        "    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    live = list(folder.glob("*.tmp"))
    assert len(live) == 1
    sync_indexes(db)
    assert list(folder.glob("*.tmp")) == live  # a live writer's temporary is left alone
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    sync_indexes(db)
    assert list(folder.glob("*.tmp")) == []
    assert invoke("similar", "tiny_lite0:conv3:0", "--db", db).exit_code == 0


def test_sql_table_prints_markup_literally(tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.sql("SELECT 1", write=True, db=db)  # creates the schema
    result = invoke("sql", "SELECT '[red]red[/red]' AS a, '[c]' AS b, '[/i]' AS c", "--db", db)
    assert result.exit_code == 0, result.output
    assert "[red]red[/red]" in result.stdout and "[c]" in result.stdout and "[/i]" in result.stdout


def test_parquet_export_to_a_path_with_a_quote(tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    api.sql("SELECT 1", write=True, db=db)
    target = tmp_path / "it's here" / "o'k.parquet"
    target.parent.mkdir()
    api.export_parquet("SELECT 42 AS answer, 'a''b' AS text", target, db=db)
    assert query(db, f"SELECT * FROM read_parquet('{target.as_posix().replace(chr(39), chr(39) * 2)}')") == [(42, "a'b")]


@pytest.mark.parametrize(("option", "value", "hint"), [
    ("top_n", 0, "--top-n must be an integer >= 1"),
    ("batch_size", -1, "--batch-size must be an integer >= 1"),
    ("max_pixels", 0, "--max-pixels must be an integer >= 1"),
    ("lock_timeout", -1, "--lock-timeout must be a number of seconds >= 0"),
    ("input_size", "0,5", "--input-size must be two positive sizes"),
    ("seed", -1, "--seed must be an integer >= 0"),
])
def test_bad_config_raises_before_any_work(option: str, value: object, hint: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=hint):
        api.analyze(TINY, tmp_path / "no_images", db=tmp_path / "x.duckdb", config=AnalyzeConfig(**{option: value}))
    assert not (tmp_path / "x.duckdb").exists()


def test_top_n_zero_through_the_cli(tmp_path: Path, photo_dir: Path) -> None:
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", tmp_path / "x.duckdb", *ANALYZE_FAST, "--top-n", "0"),
                       "--top-n must be an integer >= 1")


def test_search_indexes_locked_after_the_commit_are_left_to_the_next_search(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    holder: list[subprocess.Popen] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "write" and done == total and not holder:  # committed: another process takes the lock
            holder.append(hold_lock(db, 60))

    try:
        summary = api.analyze(TINY, photo_dir, db=db, config=AnalyzeConfig(top_n=3, nf=False, indexes=(), lock_timeout=1),
                              progress=progress)
    finally:
        for h in holder:
            h.kill()
            h.wait()
    assert holder and scalar(db, "SELECT count(*) FROM neurons") == 608  # written, and the command says so
    assert any(w.startswith("the search indexes are not in step yet (database") and w.endswith(
        "the next search brings them in step") for w in summary.warnings), summary.warnings
    assert invoke("similar", "tiny_lite0:conv3:0", "--db", db).exit_code == 0
    assert sync_indexes(db)["nf"] == 0 and sync_indexes(db)["response"] > 0


def test_commands_after_their_commit_warn_when_the_search_indexes_cannot_follow(tmp_path: Path, photo_dir: Path) -> None:
    """remove, import, index and probe bring FAISS in step after their commit through one helper:
    another process holding the database then is a warning (the change stands), never an error."""
    db = tmp_path / "nfi.duckdb"
    api.analyze(TINY, photo_dir, db=db, config=FAST)
    holder = hold_lock(db, 60)
    try:
        late = sync_after_commit(db)
    finally:
        holder.kill()
        holder.wait()
    assert len(late) == 1 and late[0].startswith("the search indexes are not in step yet (database"), late
    assert sync_after_commit(db) == ()


def test_names_and_paths_with_brackets_are_printed_as_they_are(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "[old]" / "nfi.duckdb"
    db.parent.mkdir()
    result = invoke("analyze", TINY, photo_dir, "--db", db, "--name", "net[v2]", "--silent", *ANALYZE_FAST)
    assert result.exit_code == 0, result.output
    assert "Analysed net[v2]: 9 layers" in result.stdout and f"Results: {db.resolve()} (run 0)" in result.stdout
    result = invoke("remove", "net[v2]", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Removed net[v2] (608 neurons) from {db}.")


@pytest.mark.parametrize(("name", "hint"), [
    ("net:v2", "cannot be empty or contain ':' (neurons are named MODEL:LAYER:UNIT)"),
    ("static", "is taken by the neuron browser's own pages"),
    ("search", "is taken by the neuron browser's own pages"),
])
def test_model_names_the_neurons_or_the_browser_cannot_address_are_refused(
    name: str, hint: str, tmp_path: Path, photo_dir: Path
) -> None:
    db = tmp_path / "nfi.duckdb"
    assert_clean_error(invoke("analyze", TINY, photo_dir, "--db", db, "--name", name, *ANALYZE_FAST), hint)
    assert not db.exists()


def test_a_signal_inside_signals_wait_acts_after_the_block() -> None:
    """What the scan state saves run inside: a Ctrl-C there (it tore the zip being written) is
    acted on once the block is done."""
    finished: list[bool] = []
    with pytest.raises(KeyboardInterrupt), signals_wait():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal has arrived by now and was held
        finished.append(True)
    assert finished == [True]
