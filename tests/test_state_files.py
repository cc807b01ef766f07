"""Damaged and inconsistent scan state files: cut short, bit-flipped, empty, or holding a batch twice.
Each is refused in one line, by ``analyze --resume`` and by ``merge``, and a refused resume leaves
the database file byte for byte as it was."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke
from conftest import TINY
from test_checkpoint import CONFIG, MODEL, OPTIONS, images  # noqa: F401  (fixture)

from onnx_nfi import api


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
    state = api.state_path(db, MODEL)
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
