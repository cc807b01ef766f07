"""A ``--ray`` run stopped by SIGTERM says what it kept and exits 143 as Ctrl-C does (Ray's own SIGTERM
handler would end it at once), and the progress actor killed mid-scan does not end the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import query
from conftest import ROOT, TINY

from onnx_nfi import api
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.pipeline.distributed import TALLY
from onnx_nfi.scan.state import read_header

ray = pytest.importorskip("ray", reason="the ray extra is part of the dev install (make test)")
pytestmark = pytest.mark.slow

MODEL = "tiny_lite0"


def test_sigterm_to_a_ray_run_exits_143_naming_what_it_kept(photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "nfi.duckdb"
    state = api.state_path(MODEL, db=db)
    # the cluster's scan is saved: NFs next
    proc, err = _sigterm_when(lambda _: state.is_file() and read_header(state)["complete"], db, photo_dir, 0.02)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "Interrupted" in line]
    kept = (f"Interrupted; nothing was written to {db}; the finished scan is saved in {state}: "
            f"write it with 'onnx-nfi merge {state} --db {db}'.")
    # the signal may also land while the finished analysis waits to write: then the state is named too
    written_later = (f"Interrupted; the analysis of {MODEL} finished but could not be written to {db} (interrupted); "
                     f"it is saved in {state}: write it with 'onnx-nfi merge {state} --db {db}'.")
    assert lines in ([kept], [written_later]) or (
        len(lines) == 1 and lines[0].startswith(f"Interrupted after the analysis of {MODEL}")), err
    if lines in ([kept], [written_later]):
        assert state.is_file() and not (db.exists() and query(db, "SELECT count(*) FROM models") != [(0,)])


@pytest.fixture()
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_killed_progress_actor_does_not_end_the_run(local_ray: None, photo_dir: Path, tmp_path: Path) -> None:
    killed: list[str] = []
    errors: list[str] = []

    def kill_the_progress_actor(phase: str, done: int, total: int) -> None:
        if phase != "scan" or killed:
            return
        for name in [n for n in ray.util.list_named_actors() if n.startswith(TALLY)]:
            try:
                actor = ray.get_actor(name)
            except ValueError as exc:  # registered asynchronously: look again at the next report
                errors.append(str(exc)[:200])
                continue
            ray.kill(actor)
            killed.append(name)

    images = tmp_path / "images"  # the photos four times over (links): a scan long enough to meet the actor
    for path in sorted(photo_dir.rglob("*.jpg")):
        for k in range(4):
            link = images / path.parent.name / f"{k}-{path.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    db = tmp_path / "nfi.duckdb"
    summary = api.analyze(TINY, images, db=db, config=AnalyzeConfig(batch_size=4, provider="cpu", indexes=("class",)),
                          ray="local", progress=kill_the_progress_actor)
    assert killed, ("the progress actor was never seen", errors[:3], len(errors))
    assert summary.images_seen == query(db, "SELECT count(*) FROM images")[0][0] > 0


def _children(pid: int) -> list[str]:
    """Names of the processes whose parent is ``pid`` (Ray's head processes while ``ray.init`` starts them)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if int(rest[1]) == pid:
            names.append(name)
    return names


def test_sigterm_while_ray_starts_exits_143_with_one_line(photo_dir: Path, tmp_path: Path) -> None:
    """SIGTERM as soon as ``ray.init`` has started Ray's first process (it is still connecting):
    Ray's own handler would exit 15 without a word; the run says it was interrupted and exits 143."""
    db = tmp_path / "nfi.duckdb"
    # the head node's first process: ray.init has begun and not returned
    proc, err = _sigterm_when(lambda pid: bool(_children(pid)), db, photo_dir, 0.005)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "Interrupted" in line] == [f"Interrupted; nothing was written to {db}."], err
    assert not db.exists() or query(db, "SELECT count(*) FROM models") == [(0,)]


def _sigterm_when(
    ready: Callable[[int], bool], db: Path, photo_dir: Path, poll: float
) -> tuple[subprocess.Popen[str], str]:
    """``analyze --ray local`` into ``db``, sent SIGTERM once ``ready(its pid)``; the ended process and its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnx_nfi", "analyze", str(TINY), str(photo_dir), "--db", str(db), "--ray", "local",
         "--batch-size", "4", "--provider", "cpu", "--silent"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(poll)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, err
