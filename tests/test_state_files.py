"""Damaged and inconsistent scan state files: cut short, bit-flipped, empty, or holding a batch twice.
Each is refused in one line, by ``analyze --resume`` and by ``merge``, and a refused resume leaves
the database file byte for byte as it was. Two runs into one state file: the second is refused."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke
from conftest import ROOT, TINY
from test_checkpoint import CONFIG, MODEL, OPTIONS, images  # noqa: F401  (fixture)

from onnx_nfi import api
from onnx_nfi.scan.state import read_header


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, Path]:
    """A database holding another model and the checkpoint of an analysis stopped by Ctrl-C after 30 images."""
    folder = tmp_path_factory.mktemp("stopped")
    db = folder / "nfi.duckdb"
    api.analyze(TINY, images, db=db, name="other", config=CONFIG)

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "scan" and done >= 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.analyze(TINY, images, db=db, config=CONFIG, progress=interrupt)
    state = api.state_path(MODEL, db=db)
    assert state.is_file()
    return db, state


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def refused_resume(images: Path, db: Path, state: Path) -> str:
    """The output of ``analyze --resume`` from ``state``, which must be refused (exit 2) without touching ``db``."""
    before = fingerprint(db)
    result = invoke("analyze", TINY, images, "--db", db, "--checkpoint", state, "--resume", *OPTIONS)
    assert result.exit_code == 2, result.output
    assert fingerprint(db) == before, "a refused --resume changed the database file"
    return result.output


def test_cut_flipped_and_empty_states_are_refused_in_one_line(
    images: Path, stopped: tuple[Path, Path], tmp_path: Path
) -> None:
    db, good = stopped
    data = good.read_bytes()
    rng = random.Random(7)
    damaged = {"empty": b"", "cut-10": data[:10], "cut-half": data[: len(data) // 2], "cut-last": data[:-1]}
    for k in range(12):  # single bit flips anywhere: zip records, array headers, meta, array data
        at = rng.randrange(len(data))
        damaged[f"flip-{at}"] = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    refusals = {
        "Error: {} is not an onnx-nfi scan state file; pass a file written by 'onnx-nfi analyze'",
        "Error: {} is damaged (cut short or changed on disk); delete it and run the analysis again without --resume",
    }
    for name, content in damaged.items():
        state = tmp_path / f"{name}.state"
        state.write_bytes(content)
        output = refused_resume(images, db, state)
        lines = output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in output and "Aborted" not in output, (name, output)
        # a flip the reader cannot see (in the zip's comment-free padding, or a header byte it ignores)
        # would pass, but then the file is still this run's checkpoint: refused for another reason, in one line
        assert lines[0] in {r.format(state) for r in refusals} or lines[0].startswith(f"Error: {state} is"), (name, output)
        merged = invoke("merge", state, "--db", tmp_path / "m.duckdb", "--silent")
        assert merged.exit_code == 2 and len(merged.output.strip().splitlines()) == 1, (name, merged.output)
        assert "Traceback" not in merged.output and "Aborted" not in merged.output, (name, merged.output)


def rewritten(source: Path, target: Path, change: dict[str, np.ndarray]) -> Path:
    """``source`` with some arrays replaced, written as the product writes it (an uncompressed .npz)."""
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    with open(target, "wb") as fh:  # a file object: given a path, NumPy would add ".npz"
        np.savez(fh, **{**arrays, **change})
    return target


def test_a_state_holding_a_batch_twice_is_refused(images: Path, stopped: tuple[Path, Path], tmp_path: Path) -> None:
    db, good = stopped
    with np.load(good) as data:
        count, ids, positions = int(data["L0.moments.count"]), data["L2.topn.ids"].copy(), data["positions"]
    assert count == positions.size == 32  # the batches absorbed when the Ctrl-C came: 30 images rounded up to 4s
    twice = rewritten(good, tmp_path / "count.state", {"L0.moments.count": np.asarray(count + 4)})
    assert refused_resume(images, db, twice).strip() == (
        f"Error: {twice} is inconsistent (layer conv1 took 36 images but 32 are listed); delete it and run the "
        "analysis again without --resume"
    )
    ids[5, 1] = ids[5, 0]
    doubled = rewritten(good, tmp_path / "ids.state", {"L2.topn.ids": ids})
    assert refused_resume(images, db, doubled).strip() == (
        f"Error: {doubled} is inconsistent (a neuron of layer conv3 lists an image twice in its top images); delete "
        "it and run the analysis again without --resume"
    )
    listed = rewritten(good, tmp_path / "listed.state", {"positions": np.concatenate([positions[:-1], positions[:1]])})
    assert "is inconsistent (an image is listed twice)" in refused_resume(images, db, listed)


def test_merge_of_an_unfinished_checkpoint_says_to_resume_it(stopped: tuple[Path, Path], tmp_path: Path) -> None:
    _, state = stopped
    result = invoke("merge", state, "--db", tmp_path / "m.duckdb", "--silent")
    assert (result.exit_code, result.output.strip()) == (2, (
        f"Error: {state} is the checkpoint of an unfinished analysis, not a finished scan; continue it with the same "
        "'onnx-nfi analyze' command plus --resume, which writes the database when done"
    ))
    assert not (tmp_path / "m.duckdb").exists()


def test_resume_of_another_run_leaves_the_database_file_as_it_was(
    images: Path, stopped: tuple[Path, Path], tmp_path: Path
) -> None:
    db, state = stopped
    copy = tmp_path / "copy.state"
    shutil.copy(state, copy)
    before = fingerprint(db)
    result = invoke("analyze", TINY, images, "--db", db, "--checkpoint", copy, "--resume", "--top-n", "50", *OPTIONS)
    assert result.exit_code == 2 and "made by another run: the analysis options differ (--top-n 100 -> 50)" in result.output
    assert fingerprint(db) == before


#: Holds a database's lock until killed (retrying while a run holds it for a moment).
LOCKER = """
import sys, time, duckdb
while True:
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.01)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_into_the_same_state_file_is_refused(images: Path, tmp_path: Path) -> None:
    """The first run, its scan done, waits for a database another process took once it had started; meanwhile
    a second run of the same model into the same checkpoint file (another database) is refused in one line."""
    first_db, second_db, state = tmp_path / "first.duckdb", tmp_path / "second.duckdb", tmp_path / "shared.state"
    many = tmp_path / "images"
    for copy in "abc":  # a scan long enough for the locker to start during it
        shutil.copytree(images, many / copy)
    images = many
    api.sql("SELECT 1", write=True, db=first_db)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "onnx_nfi", "analyze", str(TINY), str(images), "--db", str(first_db),
         "--checkpoint", str(state), "--lock-timeout", "120", *OPTIONS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    locker = None
    try:
        deadline = time.monotonic() + 120
        while not (state.is_file() and read_header(state)["complete"]):  # scanned: then it waits for the lock
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            if state.is_file() and locker is None:  # the first checkpoint: past the start-up check
                locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(first_db)], stdout=subprocess.PIPE, text=True)
                assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            time.sleep(0.01)
        assert locker is not None
        second = invoke("analyze", TINY, images, "--db", second_db, "--checkpoint", state, *OPTIONS)
        assert (second.exit_code, second.output.strip()) == (2, (
            f"Error: another onnx-nfi run is using the scan state {state} (same model and database); wait for it "
            "to end, or give this run another --checkpoint FILE or --name"
        ))
        assert not second_db.exists()
        assert first.poll() is None, "the first run was disturbed"
    finally:
        if locker is not None:
            locker.kill()
            locker.wait()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert not state.exists() and not Path(f"{state}.lock").exists()
