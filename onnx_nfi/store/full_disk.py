"""A full disk (or a file-size limit) met while writing the database: one line, nothing half-written.

DuckDB reports a write it could not make as an error at commit ("Could not write file ...: No space
left on device"), and our own files (the FAISS index beside the database) as an ``OSError``; both
would end a command in a traceback. The transaction has been rolled back by then, so the database
holds what it held before; a database file the failed command had only just created is removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from onnx_nfi.errors import DiskFullError

#: errno values of a write the filesystem refused for lack of room (or a size limit)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
#: the same, as DuckDB words them (lower case) and as the one line says them
_FULL_WORDS = {"no space left": "No space left on device", "file too large": "File too large",
               "disk quota exceeded": "Disk quota exceeded"}


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for lack of room."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return isinstance(exc, duckdb.Error) and any(w in str(exc).lower() for w in _FULL_WORDS)


@contextmanager
def disk_full_as_error(path: Path) -> Iterator[None]:
    """Turn a refused write to the database at ``path`` into DiskFullError (removing a just-created file)."""
    created = not path.exists()
    try:
        yield
    except (duckdb.Error, OSError) as exc:
        if not is_disk_full(exc):
            raise
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) else _reason(str(exc))
        if created:
            for leftover in (path, path.with_name(path.name + ".wal")):
                leftover.unlink(missing_ok=True)
        raise DiskFullError(
            f"cannot write {path} ({reason}); free disk space (or raise the file-size limit) and run the command "
            f"again: {'nothing was created' if created else 'the database is unchanged'}"
        ) from None


def _reason(text: str) -> str:
    """DuckDB's cause of a failed write ("No space left on device"), without the file path."""
    return next(said for word, said in _FULL_WORDS.items() if word in text.lower())
