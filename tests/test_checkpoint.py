"""Checkpoints, resume, shards and merge, and the rescue of a failed database write: each ends with
the same tables as one uninterrupted run computed here (tests/tables.py)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from cli_helpers import invoke
from conftest import ROOT, TINY
from tables import assert_same_analysis

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.errors import ConfigError, ResultsNotWritten, StateError
from onnx_nfi.scan.state import read_header

#: small batches and frequent checkpoints, so 81 photos give many points to stop at
CONFIG = AnalyzeConfig(batch_size=4, checkpoint_every=8, provider="cpu")
OPTIONS = ("--batch-size", "4", "--checkpoint-every", "8", "--provider", "cpu", "--silent")
MODEL = "tiny_lite0"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The photos plus one unreadable file, so skipped images travel through checkpoints and shards too."""
    folder = tmp_path_factory.mktemp("ckpt") / "images"
    shutil.copytree(photo_dir, folder)
    (next(p for p in folder.iterdir() if p.is_dir()) / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """One uninterrupted analysis."""
    db = tmp_path_factory.mktemp("ref") / "ref.duckdb"
    api.analyze(TINY, images, db=db, config=CONFIG)
    return db


#: Runs an analysis and SIGKILLs itself at the first progress report of PHASE with done >= AT.
KILLER = """
import os, signal, sys
from pathlib import Path
from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

model, images, db, phase, at, resume = sys.argv[1:7]

def progress(name, done, total):
    if name == phase and done >= int(at):
        os.kill(os.getpid(), signal.SIGKILL)

api.analyze(model, images, db=db, config=AnalyzeConfig(batch_size=4, checkpoint_every=8, provider="cpu"),
            progress=progress, resume=resume == "1")
"""


def _run_killed(images: Path, db: Path, phase: str, at: int, resume: bool) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(TINY), str(images), str(db), phase, str(at), "1" if resume else "0"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr
    return proc.returncode


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(images: Path, reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    state = api.state_path(MODEL, db=db)
    rng = random.Random(13)
    first, second = sorted(rng.sample(range(10, 80), 2))
    # two kills during the scan, one in the NF pass, one in the index pass, each resumed from the last checkpoint
    points = [("scan", first), ("scan", second), ("nf", rng.randint(1, 9)), ("index", 1)]  # index steps: decoding, then its passes
    for k, (phase, at) in enumerate(points):
        assert _run_killed(images, db, phase, at, resume=k > 0) == -signal.SIGKILL, (phase, at)
        assert state.is_file(), f"no checkpoint after a kill at {phase} {at}"
        assert not db.exists(), "a killed run wrote the database"
    api.analyze(TINY, images, db=db, config=CONFIG, resume=True)
    assert not state.exists(), "the checkpoint outlived the commit"
    assert_same_analysis(db, reference, MODEL)


def test_ctrl_c_saves_then_resume_equals_uninterrupted(images: Path, reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "scan" and done >= 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.analyze(TINY, images, db=db, config=CONFIG, progress=interrupt)
    state = api.state_path(MODEL, db=db)
    assert state.is_file() and not db.exists()
    # how often it saves and how long it waits for a lock may change on resume: not what it computes
    api.analyze(TINY, images, db=db, config=replace(CONFIG, checkpoint_every=20, lock_timeout=5), resume=True)
    assert_same_analysis(db, reference, MODEL)


def test_cli_ctrl_c_says_how_to_resume(images: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    state = api.state_path(MODEL, db=db)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from onnx_nfi.cli import main; main()", "analyze", str(TINY), str(images), "--db", str(db), *OPTIONS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (f"Interrupted; nothing was written to {db}; the scan so far is saved in {state}: run the same command "
            "with --resume to continue.") in err
    assert "Traceback" not in err
    assert not db.exists()


def test_resume_of_another_run_is_refused_saying_what_differs(images: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    shard = invoke("analyze", TINY, images, "--db", db, "--shard", "1/3", *OPTIONS)
    assert shard.exit_code == 0, shard.output
    state = api.state_path(MODEL, api.parse_shard("1/3"), db=db)
    changed = invoke("analyze", TINY, images, "--db", db, "--shard", "1/3", "--resume", "--top-n", "50", *OPTIONS)
    assert changed.exit_code == 2
    assert changed.output.strip().splitlines() == [(
        f"Error: cannot resume from {state}, made by another run: the analysis options differ (--top-n 100 -> 50); "
        "rerun with the same model, options and images, or without --resume to start over"
    )]
    (images / "extra.png").write_bytes((next(images.rglob("*.jpg"))).read_bytes())
    try:
        listed = invoke("analyze", TINY, images, "--db", db, "--shard", "1/3", "--resume", *OPTIONS)
    finally:
        (images / "extra.png").unlink()
    assert listed.exit_code == 2 and "made by another run: the image list differs;" in listed.output
    other = invoke("analyze", TINY, images, "--db", db, "--shard", "2/3", "--resume", "--checkpoint", state, *OPTIONS)
    assert other.exit_code == 2 and "the shard differs (1/3 -> 2/3);" in other.output, other.output
    missing = invoke("analyze", TINY, images, "--db", db, "--resume", *OPTIONS)  # a scheduler's rerun: starts over
    assert missing.exit_code == 0, missing.output
    assert (f"Warning: no scan state at {api.state_path(MODEL, db=db)} to resume from: the analysis started from the "
            "beginning") in missing.output.splitlines()


def test_three_shards_merged_equal_one_run(images: Path, reference: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    states = []
    for i in (3, 1):  # any order, any machine
        shard = invoke("analyze", TINY, images, "--db", db, "--shard", f"{i}/3", *OPTIONS)
        assert shard.exit_code == 0, shard.output
        states.append(api.state_path(MODEL, api.parse_shard(f"{i}/3"), db=db))
        assert f"State: {states[-1].resolve()}" in shard.output
    summary = api.analyze(TINY, images, db=db, config=CONFIG, shard="2/3")  # the API's twin of --shard
    assert isinstance(summary, api.ShardSummary)
    states.append(summary.state)
    assert summary.state == api.state_path(MODEL, api.parse_shard("2/3"), db=db).resolve()
    first, last = api.parse_shard("2/3").bounds(sum(1 for p in images.rglob("*") if p.is_file()))
    assert (summary.shard, summary.images_seen + summary.images_skipped) == ("2/3", last - first)
    assert not db.exists(), "a shard wrote the database"
    incomplete = invoke("merge", states[0], states[1], "--db", db, "--silent")
    assert incomplete.exit_code == 2
    assert "not shards 1..3 of 3 exactly once (missing 2/3)" in incomplete.output
    merged = invoke("merge", *states, "--db", db, "--silent")
    assert merged.exit_code == 0, merged.output
    assert "Analysed tiny_lite0: 9 layers, 608 neurons" in merged.output
    assert_same_analysis(db, reference, MODEL)


def test_a_shard_of_a_ray_run_is_refused_before_any_work(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give one of them"):
        api.analyze(TINY, images, db=tmp_path / "nfi.duckdb", shard="1/2", ray="local")
    assert list(tmp_path.iterdir()) == []


LOCKER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_locked_database_at_write_keeps_the_analysis_and_names_the_command(
    images: Path, reference: Path, tmp_path: Path
) -> None:
    db = tmp_path / "nfi.duckdb"
    lockers: list[subprocess.Popen] = []

    def lock_during_indexes(phase: str, done: int, total: int) -> None:
        if phase == "index" and not lockers:  # after the start-up check, before the write
            lockers.append(subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdout=subprocess.PIPE, text=True))
            assert lockers[0].stdout.readline().strip() == "locked"

    try:
        with pytest.raises(ResultsNotWritten) as caught:  # the lock outlasts a short wait
            api.analyze(TINY, images, db=db, config=replace(CONFIG, lock_timeout=1), progress=lock_during_indexes)
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    state = api.state_path(MODEL, db=db)
    assert caught.value.command == f"onnx-nfi merge {state} --db {db}"
    assert "locked by another process" in str(caught.value) and state.is_file()
    written = invoke(*caught.value.command.split()[1:], "--silent")
    assert written.exit_code == 0, written.output
    assert not state.exists(), "the written state was left behind"
    assert_same_analysis(db, reference, MODEL)


def test_merging_a_state_of_another_version_or_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.state"
    bogus.write_bytes(b"nonsense")
    result = invoke("merge", bogus, "--db", tmp_path / "nfi.duckdb")
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {bogus} is not an onnx-nfi scan state file; pass a file written by 'onnx-nfi analyze'"
    with pytest.raises(StateError):
        api.merge([], db=tmp_path / "nfi.duckdb")


def _responses(db: Path, model: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT n.layer, n.unit, r.vector FROM response_vectors r JOIN neurons n USING (neuron_id) "
            "WHERE n.model = ? ORDER BY n.layer, n.unit", [model],
        ).fetchall()
    finally:
        con.close()


def test_a_merge_whose_write_fails_keeps_the_shards_probe_scores_with_their_probe_list(
    images: Path, photo_dir: Path, tmp_path: Path
) -> None:
    """The database already has a probe set (10 photos) unlike the shards' own (every image): the
    state a failed merge saves lists the probe images its scores belong to, so writing it later gives
    the response profiles an unhindered merge gives."""
    config = replace(CONFIG, lock_timeout=1)  # the merge's write waits 1 s for the lock below, then saves the state
    shards = [api.analyze(TINY, images, db=tmp_path / "s.duckdb", config=config, shard=f"{i}/2").state for i in (1, 2)]
    shard_probe = read_header(shards[0])["probe_sha256"]
    seeded = tmp_path / "seeded.duckdb"
    assert invoke("probe", photo_dir, "--db", seeded, "--size", 10, "--silent").exit_code == 0
    clean, db = tmp_path / "clean.duckdb", tmp_path / "nfi.duckdb"
    shutil.copy(seeded, clean)
    shutil.copy(seeded, db)
    api.merge(shards, db=clean)
    lockers: list[subprocess.Popen] = []

    def lock_during_indexes(phase: str, done: int, total: int) -> None:
        if phase == "index" and not lockers:
            lockers.append(subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdout=subprocess.PIPE, text=True))
            assert lockers[0].stdout.readline().strip() == "locked"

    try:
        with pytest.raises(ResultsNotWritten) as caught:
            api.merge(shards, db=db, progress=lock_during_indexes)
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    saved = Path(caught.value.state)
    assert read_header(saved)["probe_sha256"] == shard_probe and len(shard_probe) != 10
    written = invoke(*caught.value.command.split()[1:], "--silent")
    assert written.exit_code == 0, written.output
    assert not saved.exists(), "the written state was left behind"
    assert all(s.exists() for s in shards), "shard states are the user's: merge keeps them"
    rescued, unhindered = _responses(db, MODEL), _responses(clean, MODEL)
    assert len(rescued) > 500 and {len(v) for _, _, v in rescued} == {10}  # live neurons, over the 10 probe images
    assert rescued == unhindered


def test_unsaveable_state_and_empty_index_list_are_refused_before_any_work(
    images: Path, reference: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder" / "run.state"
    result = invoke("analyze", TINY, images, "--db", tmp_path / "nfi.duckdb", "--checkpoint", missing, *OPTIONS)
    assert (result.exit_code, result.output) == (
        2, f"Error: the folder of the scan state {missing} does not exist; create it or pass --checkpoint FILE\n"
    )
    result = invoke("analyze", TINY, images, "--db", tmp_path / "nfi.duckdb", "--shard", "1/2", "--image-root", images,
                    *OPTIONS)
    assert result.exit_code == 2 and "give --image-root to 'onnx-nfi merge'" in result.output
    assert list(tmp_path.iterdir()) == [], "a refused run left files"
    result = invoke("index", MODEL, "--db", reference, "--indexes", "none")
    assert result.exit_code == 2 and result.output.startswith("Error: index recomputes the indexes named by --indexes")
