"""SIGINT and SIGTERM sent to the whole process group of ``onnx-nfi analyze`` (as a terminal's Ctrl-C
reaches every process it started) at seeded points of the scan, then ``--resume``: each resumed run
must equal the uninterrupted one table for table, in a database that already holds another model.

The command runs in its own session (``start_new_session``); a watcher thread in it picks the moment
from the main thread's stack, so the signals land where a double count could arise: while the
statistics take a batch (``TopN.update``/``Moments.update``), in the per-batch bookkeeping, while a
state file is written, while the scan waits for a batch (a boundary), or after a seeded delay. The
state each stop leaves is checked with NumPy alone (every image once, every layer's count equal to
the images listed, no image twice in a neuron's top list) before the run is resumed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import query
from conftest import ROOT, TINY
from tables import assert_same_analysis

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig

pytestmark = pytest.mark.slow

MODEL = "tiny_lite0"
#: no NFs and only the class index (what is checked is the scan); batches of 4
CONFIG = AnalyzeConfig(batch_size=4, provider="cpu", nf=False, indexes=("class",), checkpoint_every=8)
OPTIONS = ("--batch-size", "4", "--provider", "cpu", "--no-nf", "--indexes", "class", "--silent")

#: Runs the CLI in the main thread; a thread signals the whole process group at the TARGET-th time the
#: main thread is seen, inside ``scan``, in a frame named FRAME (FRAME "delay": TARGET s after the scan starts).
DRIVER = """
import os, signal, sys, threading, time
frame_name, target, signum = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
main_id = threading.main_thread().ident
sys.setswitchinterval(1e-5)  # the watcher looks at the main thread often

def names():
    frame = sys._current_frames().get(main_id)
    while frame is not None:
        yield frame.f_code.co_name
        frame = frame.f_back

def watch():
    seen, scan_started = 0, None
    while True:
        found = set(names())
        if scan_started is None and "scan" in found:
            scan_started = time.monotonic()
        if frame_name == "delay":
            hit = scan_started is not None and time.monotonic() - scan_started >= target
        else:
            seen += frame_name in found and "scan" in found  # counted inside the scan only
            hit = seen >= target
        if hit:
            os.killpg(os.getpgrp(), signum)
            return
        time.sleep(0.0002)

threading.Thread(target=watch, daemon=True).start()
sys.argv = ["onnx-nfi", *sys.argv[4:]]
from onnx_nfi.cli import main
main()
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """The photos twice (162 images): more than the scan's statistics take in one update."""
    folder = tmp_path_factory.mktemp("resume") / "images"
    shutil.copytree(photo_dir, folder / "a")
    shutil.copytree(photo_dir, folder / "b")
    return folder


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """A database that already holds another model."""
    db = tmp_path_factory.mktemp("seeded") / "seeded.duckdb"
    api.analyze(TINY, photo_dir, db=db, name="other", config=CONFIG)
    return db


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, seeded: Path, images: Path) -> Path:
    """The uninterrupted analysis, into a copy of the seeded database."""
    db = tmp_path_factory.mktemp("reference") / "ref.duckdb"
    shutil.copy(seeded, db)
    api.analyze(TINY, images, db=db, config=CONFIG)
    return db


def assert_state_consistent(state: Path) -> None:
    """What the state file holds, read with NumPy alone: each image once, every layer's moment count equal
    to the images listed, and no image twice (nor one not listed) in any neuron's top list."""
    with np.load(state) as data:
        positions = data["positions"]
        assert np.unique(positions).size == positions.size, "an image listed twice"
        layers = sorted({key.split(".")[0] for key in data.files if key.startswith("L")})
        for layer in layers:
            assert int(data[f"{layer}.moments.count"]) == positions.size, (layer, "moments count")
            ids = data[f"{layer}.topn.ids"]
            for row in ids:
                real = row[row >= 0]
                assert np.unique(real).size == real.size, (layer, "an image twice in a top list")
                assert set(real.tolist()) <= set(positions.tolist()), (layer, "an image not listed")


RNG = random.Random(23)
#: (frame to aim at, how many sightings or seconds, signal, --checkpoint-every): 1000 saves only at the stop.
#: Eight points keep the test near a minute on a busy machine (each is an analysis and a resume).
POINTS = [
    ("update", RNG.randint(1, 12), signal.SIGINT, 1000), ("update", RNG.randint(1, 12), signal.SIGTERM, 1000),
    ("update", RNG.randint(12, 40), signal.SIGINT, 8),
    ("absorb", RNG.randint(1, 30), signal.SIGINT, 1000), ("absorb", RNG.randint(1, 30), signal.SIGTERM, 8),
    ("save_state", RNG.randint(1, 6), signal.SIGTERM, 8), ("result", RNG.randint(5, 60), signal.SIGINT, 1000),
    ("delay", RNG.uniform(0, 0.4), signal.SIGTERM, 8),
]


def test_group_signals_at_seeded_points_then_resume_equals_uninterrupted(
    images: Path, seeded: Path, reference: Path, tmp_path: Path
) -> None:
    stopped = 0
    for k, (frame, target, signum, every) in enumerate(POINTS):
        where = (frame, target, signal.Signals(signum).name, every)
        db = tmp_path / f"run{k}.duckdb"
        shutil.copy(seeded, db)
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, frame, str(target), str(int(signum)), "analyze", str(TINY), str(images),
             "--db", str(db), "--checkpoint-every", str(every), "--checkpoint-seconds", "1000", *OPTIONS],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
            start_new_session=True, check=False,
        )
        assert "Traceback" not in proc.stderr, (where, proc.stderr[-3000:])
        state = api.state_path(MODEL, db=db)
        if proc.returncode != 0:  # stopped before its results were written
            assert proc.returncode == 128 + signum, (where, proc.returncode, proc.stderr[-3000:])
            assert proc.stderr.strip().startswith("Interrupted; nothing was written to"), (where, proc.stderr)
            assert query(db, "SELECT count(*) FROM models WHERE model = ?", [MODEL]) == [(0,)], where
            stopped += 1
            if state.exists():
                assert_state_consistent(state)
            api.analyze(TINY, images, db=db, config=CONFIG, resume=True)  # no state: starts over, says so
        assert not state.exists(), where
        assert query(db, "SELECT count(*) FROM top_activations WHERE model = ? GROUP BY layer, unit, image_id "
                         "HAVING count(*) > 1", [MODEL]) == [], where
        assert query(db, "SELECT r.images_seen, (SELECT count(*) FROM images i WHERE i.model = r.model) "
                         "FROM runs r WHERE r.model = ?", [MODEL]) == [(162, 162)], where
        assert_same_analysis(db, reference, MODEL)
        assert_same_analysis(db, reference, "other")
    assert stopped >= len(POINTS) - 2, "the signals came too late to test the scan"
