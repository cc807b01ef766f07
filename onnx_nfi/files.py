"""Content hashes of files (models and images are recognised by content, not by path), reads that
cannot block, and atomic writes that leave no temporary behind for good."""

from __future__ import annotations

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
# behind; the PID in its name tells a later writer that nobody is writing it any more.

_TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` (fsynced) only when the block ends without error."""
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


def sweep_orphans(folder: Path) -> list[Path]:
    """Delete the temporaries of writers that are gone (their PID no longer runs); returns them."""
    removed = []
    for tmp in folder.glob(f"*{_TMP_SUFFIX}") if folder.is_dir() else ():
        parts = tmp.name[: -len(_TMP_SUFFIX)].split(".")
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        if pid is not None and pid_alive(pid):
            continue  # a writer at work (another process, or this one)
        tmp.unlink(missing_ok=True)
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
