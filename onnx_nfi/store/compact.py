"""Rewrite a database file without the space its deleted rows left behind.

DuckDB reuses freed blocks but never shrinks its file: after ``remove`` or a re-analysis the file
keeps its largest size. ``compact`` copies every table and view into a fresh file beside it
(``COPY FROM DATABASE``), then renames it over the original, so a failure at any point leaves the
original intact (a compact killed outright leaves its copy, which the next command that opens the
database deletes). The FAISS folder beside the database (``<db>.faiss``) is keyed by neuron ids,
which the copy keeps, so it stays valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from onnx_nfi.errors import StoreError
from onnx_nfi.files import fsync_folder, temporary_beside
from onnx_nfi.store.duckdb_store import Store, quoted_path


@dataclass(frozen=True)
class CompactSummary:
    """What ``compact`` did: the file's size before and after, in bytes."""

    db: Path
    bytes_before: int
    bytes_after: int

    @property
    def freed(self) -> int:
        return self.bytes_before - self.bytes_after


def compact(db: str | Path) -> CompactSummary:
    """Rewrite ``db`` into a fresh file and put it in place; returns the sizes."""
    db = Path(db)
    if not db.is_file():
        raise StoreError(f"database {db} does not exist; pass the --db file to compact")
    fresh = temporary_beside(db)  # a killed compact's copy is swept at the next open (``Store.open``)
    before = db.stat().st_size + _wal_size(db)
    try:
        with Store.open(db) as store:
            name = store._con.execute("SELECT current_database()").fetchone()[0]
            store._con.execute("CHECKPOINT")
            store._con.execute(f"ATTACH '{quoted_path(fresh)}' AS nfi_compact")
            try:
                store._con.execute(f'COPY FROM DATABASE "{name}" TO nfi_compact')
            finally:
                store._con.execute("DETACH nfi_compact")
        os.replace(fresh, db)
        fsync_folder(db.parent)
    except OSError as exc:
        raise StoreError(f"cannot compact {db}: {exc.strerror or exc}; free some disk space and try again") from None
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise StoreError(f"cannot compact {db}: {first}; the database is unchanged (free disk space and retry)") from None
    finally:
        fresh.unlink(missing_ok=True)
        Path(f"{fresh}.wal").unlink(missing_ok=True)
    return CompactSummary(db, before, db.stat().st_size + _wal_size(db))


def _wal_size(db: Path) -> int:
    wal = Path(f"{db}.wal")
    return wal.stat().st_size if wal.exists() else 0
