"""Content hashes of files (models and images are recognised by content, not by path), reads that
cannot block, and atomic writes that leave no temporary behind for good."""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (model files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class NotARegularFile(OSError):
    """A path that is a FIFO, socket, device or folder where a file was expected."""


def read_regular(path: str | Path) -> bytes:
    """The bytes of ``path``, which must be a regular file. It is opened with O_NONBLOCK (a FIFO put
    in an image's place would otherwise wait forever for a writer, and no signal would end the
    wait) and checked with fstat on the open file, so nothing can be swapped in between."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(f"{path} is not a regular file (a FIFO, socket, device or folder)")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


# ---- atomic writes ---------------------------------------------------------------------------
#
# A file is written to ``NAME.PID.RANDOM.tmp`` beside its target and renamed over it, so readers
# never see half a file. A process killed mid-write (SIGKILL, power loss) leaves its temporary
# behind (with any side files its writer adds, such as DuckDB's ``.wal``); the PID in its name
# tells a later writer or reader that nobody is writing it any more, and ``sweep_orphans`` deletes it.

_TMP_SUFFIX = ".tmp"


def temporary_beside(path: Path) -> Path:
    """A fresh temporary name beside ``path`` for a writer that creates the file itself (DuckDB's
    ``ATTACH``), named so that ``sweep_orphans`` recognises it once its process is gone."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX)
    os.close(fd)
    os.unlink(tmp)
    return Path(tmp)


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the block ends without error: written to a
    temporary, fsynced, renamed over ``path``, and the folder fsynced so the rename survives a power
    cut. On any error or signal the temporary goes and the previous file stays."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames and deletions in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_orphans(folder: Path, target: str | None = None) -> list[Path]:
    """Delete the temporaries (and their side files) of writers that are gone (their PID no longer
    runs), of ``target`` only when given; returns them. A file that cannot be deleted (a read-only
    folder) is left: whoever can write there sweeps it."""
    if not folder.is_dir():
        return []
    pattern = f"{glob.escape(target)}.*{_TMP_SUFFIX}*" if target else f"*{_TMP_SUFFIX}*"
    removed = []
    for tmp in folder.glob(pattern):
        stem, dot, _side = tmp.name.rpartition(_TMP_SUFFIX)
        parts = stem.split(".")
        if not dot or len(parts) < 3 or not parts[-2].isdigit() or pid_alive(int(parts[-2])):
            continue  # not ours, or a writer at work (another process, or this one)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a temporary named by it belongs to a writer at work)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
