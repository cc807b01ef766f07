"""One run at a time per scan state file: two analyses of one model into one state file would save
over each other's checkpoints (and race on its temporary file); the second is refused at once.

The lock is an advisory ``flock`` on ``STATE.lock`` beside the state (the state itself is replaced
by rename at every save, so a lock on it would not last). The kernel drops it when the process
ends, however it ends, so a killed run never leaves a stale lock; the file is removed on exit.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnx_nfi.errors import StateError


def lock_path(state: Path) -> Path:
    """The lock file of a state file."""
    return state.with_name(state.name + ".lock")


@contextmanager
def run_lock(state: Path) -> Iterator[None]:
    """Hold the run lock of ``state`` inside; another process holding it: StateError, one line."""
    path = lock_path(state)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot create the lock file {path} ({exc.strerror or exc}); pass --checkpoint FILE "
                             "in a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"another onnx-nfi run is using the scan state {state} (same model and database); wait for it "
                "to end, or give this run another --checkpoint FILE or --name"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder removed as we opened it
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
