"""Ctrl-C (SIGINT) and SIGTERM at seeded points of every phase of ``onnx-nfi analyze`` (scan, NFs,
indexes, the database write, the FAISS sync after it): whatever the message says was or was not
written is checked against the database, the state file and the FAISS files, and a saved
checkpoint finishes, with the command the message names, to the tables of an uninterrupted run.

The command runs in a subprocess on a pseudo-terminal, so it draws its real progress bars; a phase
is reached by watching them for the phase's label (indexes, the lock wait) or by watching the files
the run makes (the checkpoint during the scan, the finished scan's before the NFs, the database
file when the write opens it, the FAISS folder when the sync starts), then waiting a seeded delay
before the signal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import random
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, query
from conftest import ROOT, TINY
from tables import assert_same_analysis
from test_checkpoint import MODEL, images, reference  # noqa: F401  (fixtures)

from onnx_nfi import api
from onnx_nfi.errors import Interrupted
from onnx_nfi.names import VECTOR_TABLES
from onnx_nfi.scan.state import read_header
from onnx_nfi.signals import future_result

pytestmark = pytest.mark.slow

#: the options of test_checkpoint's uninterrupted ``reference`` run (over its ``images``), with bars
OPTIONS = ("--batch-size", "4", "--checkpoint-every", "8", "--provider", "cpu")
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Z0-9])")


@dataclass(frozen=True)
class Stopped:
    """An interrupted command: exit code, its terminal output (escape codes removed) and stdout."""

    returncode: int
    terminal: str
    stdout: str

    @property
    def message(self) -> str:
        lines = [line.strip() for line in re.split(r"[\r\n]", self.terminal) if "Interrupted" in line]
        assert len(lines) == 1, self.terminal[-3000:]
        return lines[0]


def stopped_run(images: Path, db: Path, reached: Callable[[str], bool], delay: float, signum: int) -> Stopped:
    """``onnx-nfi analyze`` on a pseudo-terminal, sent ``signum`` ``delay`` s after ``reached(output so far)``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm", "COLUMNS": "250"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnx_nfi", "analyze", str(TINY), str(images), "--db", str(db), *OPTIONS],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, text=True,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # the pty must be read as it fills, or the command blocks on its bars
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not reached(text := ANSI.sub("", b"".join(chunks).decode(errors="replace"))):
            assert proc.poll() is None, f"the command ended before the phase was reached: {text[-2000:]}"
            assert time.monotonic() < deadline, "the phase was never reached"
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signum)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        os.close(master)
    return Stopped(proc.returncode, ANSI.sub("", b"".join(chunks).decode(errors="replace")), stdout)


def model_rows(db: Path) -> int:
    return query(db, "SELECT count(*) FROM models WHERE model = ?", [MODEL])[0][0] if db.exists() else 0


def assert_faiss_in_step(db: Path) -> None:
    """Every FAISS index beside ``db`` holds exactly its vector table's neuron ids (the id list saved with it)."""
    for kind, table in VECTOR_TABLES.items():
        ids = np.sort(np.array([r[0] for r in query(db, f"SELECT neuron_id FROM {table}")], np.int64))
        held = db.with_name(db.name + ".faiss") / f"{kind}.ids.npy"
        assert (db.with_name(db.name + ".faiss") / f"{kind}.index").is_file(), kind
        assert np.array_equal(np.load(held), ids), kind


def check_message(stop: Stopped, db: Path, images: Path, reference: Path, signum: int) -> str:
    """Check what the message says against the files, finish the run as it says, return its kind."""
    assert stop.returncode == 128 + signum, stop.terminal[-3000:]
    assert "Traceback" not in stop.terminal and "Traceback" not in stop.stdout
    message = stop.message
    state = api.state_path(MODEL, db=db)
    nothing = f"Interrupted; nothing was written to {db}"
    resume = ": run the same command with --resume to continue."
    command = f"onnx-nfi merge {state} --db {db}"
    if message == f"{nothing}.":
        assert model_rows(db) == 0
        return "nothing"
    if message in (f"{nothing}; the scan so far is saved in {state}{resume}",
                   f"{nothing}; the finished scan is saved in {state}{resume}"):
        assert model_rows(db) == 0
        assert read_header(state)["complete"] == ("finished" in message)
        finished = invoke("analyze", TINY, images, "--db", db, *OPTIONS, "--silent", "--resume")
        assert finished.exit_code == 0, finished.output
        assert_same_analysis(db, reference, MODEL)
        return "finished scan" if "finished" in message else "partial scan"
    if message == (f"Interrupted; the analysis of {MODEL} finished but could not be written to {db} (interrupted); "
                   f"it is saved in {state}: write it with '{command}'."):
        assert model_rows(db) == 0
        written = invoke(*command.split()[1:], "--silent")
        assert written.exit_code == 0, written.output
        assert_same_analysis(db, reference, MODEL)
        return "not written"
    found = re.fullmatch(
        rf"Interrupted after the analysis of {MODEL} was written to {re.escape(str(db.resolve()))} \(run (\d+)\)"
        r"(; its search indexes are in step|; the next search brings its search indexes in step)?\.", message,
    )
    assert found, message
    assert query(db, "SELECT run_id FROM models WHERE model = ?", [MODEL]) == [(int(found.group(1)),)]
    assert not state.exists(), "the checkpoint outlived the commit"
    assert_same_analysis(db, reference, MODEL)
    if found.group(2) != "; its search indexes are in step":
        assert invoke("similar", f"{MODEL}:conv3:0", "--db", db).exit_code == 0  # the next search brings them in step
    assert_faiss_in_step(db)
    return "written"


RNG = random.Random(2024)
#: (phase, signal, seconds after the phase is reached): two signals per phase, several delays in the write
POINTS = [
    # the tiny model scans its 82 photos in well under a second: signals follow the first checkpoint closely
    ("scan", signal.SIGINT, RNG.uniform(0, 0.05)), ("scan", signal.SIGTERM, RNG.uniform(0, 0.05)),
    ("nf", signal.SIGINT, RNG.uniform(0, 0.01)), ("nf", signal.SIGTERM, RNG.uniform(0, 0.01)),
    ("index", signal.SIGINT, 0.0), ("index", signal.SIGTERM, 0.0),
    *[("write", sig, delay) for sig, delay in zip(
        (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM), (0.0, RNG.uniform(0, 0.02),
                                                                      RNG.uniform(0.02, 0.1), RNG.uniform(0.1, 0.4))
    )],
    ("sync", signal.SIGINT, 0.0), ("sync", signal.SIGTERM, 0.0),
    ("lock", signal.SIGINT, RNG.uniform(0, 0.5)), ("lock", signal.SIGTERM, RNG.uniform(0, 0.5)),
]
#: What each stop may find: the aimed-at phase, or (on a busy machine, where the signal lands late) a later one;
#: check_message has checked that the message is true either way.
EXPECTED = {
    "scan": {"partial scan", "finished scan", "not written", "written"},
    "nf": {"finished scan", "not written", "written"},
    "index": {"finished scan", "not written", "written"},
    "write": {"not written", "written"}, "sync": {"written"}, "lock": {"not written"},
}


#: Holds a database's lock (retrying while the run holds it for a moment).
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


def locked_at_the_write(db: Path, lockers: list[subprocess.Popen]) -> Callable[[str], bool]:
    """Another process takes the database's lock once the scan starts; reached when the run, done, waits for it."""
    api.sql("SELECT 1", write=True, db=db)  # an existing database, so the run gets past its start-up check

    def reached(text: str) -> bool:
        if "Scanning images" in text and not lockers:
            lockers.append(subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdout=subprocess.PIPE, text=True))
            assert lockers[0].stdout is not None and lockers[0].stdout.readline().strip() == "locked"
        return "The database is locked by another process; waiting" in text

    return reached


def trigger(phase: str, db: Path) -> Callable[[str], bool]:
    """When ``phase`` has been reached: from the bars' labels or from the files the run makes."""
    state, faiss = api.state_path(MODEL, db=db), db.with_name(db.name + ".faiss")
    return {
        "scan": lambda text: state.exists(),  # the first checkpoint: 8 images scanned
        "nf": lambda text: state.exists() and read_header(state)["complete"],  # the scan is done: the NFs begin
        "index": lambda text: "Selectivity indexes" in text,
        "write": lambda text: db.exists(),  # the write creates the database as it opens it
        "sync": lambda text: faiss.exists(),
    }[phase]


@pytest.mark.parametrize(
    ("phase", "signum", "delay"), POINTS, ids=[f"{p}-{signal.Signals(s).name}-{d:.3f}s" for p, s, d in POINTS]
)
def test_message_after_a_signal_is_true(
    phase: str, signum: int, delay: float, images: Path, reference: Path, tmp_path: Path
) -> None:
    db = tmp_path / "nfi.duckdb"
    lockers: list[subprocess.Popen] = []
    try:
        reached = locked_at_the_write(db, lockers) if phase == "lock" else trigger(phase, db)
        stop = stopped_run(images, db, reached, delay, signum)
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    assert check_message(stop, db, images, reference, signum) in EXPECTED[phase], stop.message


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (a descriptor closed while we look is skipped)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if Path(os.readlink(f"/proc/{pid}/fd/{fd}")) == path.resolve():
                return True
        except FileNotFoundError:
            continue
    return False


def test_ctrl_c_during_a_query_is_one_line(tmp_path: Path) -> None:
    # DuckDB turns a Ctrl-C during a query into RuntimeError('Query interrupted'), or (as often, on
    # this VM) lets the query finish first, after which the Ctrl-C arrives: either way, one line
    db = tmp_path / "nfi.duckdb"
    api.sql("SELECT 1", write=True, db=db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnx_nfi", "sql", "SELECT count(*) FROM range(1000000000) t(x) WHERE x % 7 = 3",
         "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 120
        while not has_open(proc.pid, db):  # the database is open: the query runs
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(1.0)  # past the connection, into the query (seconds long)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == (
        "Interrupted; the database holds all of this command's changes or none of them (each is one transaction)."
    ) and out == ""


class _LockLostFuture(Future):
    """A future whose wait was cut by a signal while ``Condition.wait`` took its lock back: Python then
    raises "cannot release un-acquired lock" with the interrupt as its context (seen on SIGTERM in the
    NF phase's decoding)."""

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__()
        self.interrupt = interrupt

    def result(self, timeout: float | None = None) -> object:
        try:
            raise self.interrupt
        except BaseException:
            raise RuntimeError("cannot release un-acquired lock")  # noqa: B904 (the context is the point)


def test_an_interrupt_cut_into_a_wait_stays_an_interrupt() -> None:
    sigterm = Interrupted("", signal.SIGTERM)
    with pytest.raises(Interrupted) as caught:
        future_result(_LockLostFuture(sigterm))
    assert caught.value is sigterm and caught.value.exit_code == 143
    with pytest.raises(RuntimeError, match="un-acquired"):  # without an interrupt behind it, the error is the error
        future_result(_LockLostFuture(ValueError("other")))
    done = Future()
    done.set_result(7)
    assert future_result(done) == 7
