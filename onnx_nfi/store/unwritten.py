"""Results a verb computed but could not write (a lock held past ``--lock-timeout``, a full disk,
Ctrl-C while waiting), kept in a file beside the database so that the computation is not lost:
the verb's ``--saved FILE`` writes them later (``index``, ``probe --force``, ``match``).

A kept file is an uncompressed ``.npz``: named arrays (text columns as JSON, since NumPy would need
pickle for them) and a JSON header ``meta`` naming what it holds and the content hashes of the
models it belongs to, so that results of a model since replaced are refused.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np

from onnx_nfi.errors import NfiError, ResultsNotWritten, StateError
from onnx_nfi.files import atomic_write
from onnx_nfi.progress import Progress, phase
from onnx_nfi.store.duckdb_store import lock_wait

T = TypeVar("T")


def kept_path(db: str | Path, name: str) -> Path:
    """Where results named ``name`` (e.g. ``MODEL.indexes``) are kept: beside the database."""
    return Path(f"{db}.{name}.npz")


def save_kept(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """Write ``meta`` and ``arrays`` to ``path`` atomically (a crash leaves the previous file or the new one)."""
    stored: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for key, values in arrays.items():
        values = np.asarray(values)
        if values.dtype == object:
            stored[f"{key}.json"] = np.frombuffer(json.dumps(values.tolist()).encode(), np.uint8)
        else:
            stored[key] = values
    try:
        with atomic_write(path) as fh:
            np.savez(fh, **stored)
    except OSError as exc:
        raise StateError(f"cannot save the results to {path} ({exc.strerror or exc})") from None


def load_kept(path: Path, read: Callable[[dict[str, Any], dict[str, np.ndarray]], T], damaged: str) -> T:
    """``read(meta, arrays)`` of the file ``save_kept`` wrote; a file that is not one (or lacks what
    ``read`` looks up) raises StateError with ``damaged``."""
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            arrays = {key: data[key] for key in data.files if key != "meta" and not key.endswith(".json")}
            for key in data.files:
                if key.endswith(".json"):
                    arrays[key[:-5]] = np.array(json.loads(data[key].tobytes()), dtype=object)
        return read(meta, arrays)
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, json.JSONDecodeError):
        raise StateError(damaged) from None


def write_or_keep(
    write: Callable[[], None], keep: Callable[[Path], None], *, what: str, db: str | Path, path: Path, command: str,
    lock_timeout: float, progress: Progress | None = None,
) -> None:
    """``write()``, waiting up to ``lock_timeout`` s for a database another process holds; if the
    write cannot happen, ``keep(path)`` and raise ResultsNotWritten saying where ``what`` is and
    the ``command`` that writes it (when even that fails, the write's own error)."""
    try:
        with lock_wait(lock_timeout, phase(progress, "lock")):
            write()
    except (NfiError, duckdb.Error, OSError) as exc:
        try:
            keep(path)
        except StateError:
            if isinstance(exc, NfiError):  # e.g. a full disk: its own line says what to do, and nothing was kept
                raise exc from None
            raise
        raise ResultsNotWritten(
            f"{what} were computed but could not be written to {db} ({str(exc).strip().splitlines()[0]}); they are "
            f"saved in {path}: write them with '{command}'",
            str(path), command,
        ) from None
