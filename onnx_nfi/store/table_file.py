"""A table of results written to a Parquet or CSV file (chosen by the file's suffix) with DuckDB's
own writers, for scripts that read results without onnx-nfi (``query`` over a folder)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from onnx_nfi.errors import OutputError
from onnx_nfi.store.duckdb_store import Frame, quoted_path

#: File suffixes and the DuckDB ``COPY`` options that write them.
TABLE_FORMATS = {".parquet": "FORMAT parquet", ".csv": "FORMAT csv, HEADER"}


def check_table_path(path: str | Path) -> Path:
    """The path, if a table can be written there (checked before the work, not after it)."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_FORMATS:
        raise OutputError(f"name the table file *.parquet or *.csv (got {path.name})")
    if not path.parent.exists():
        raise OutputError(f"folder {path.parent} does not exist; create it first or choose another --out")
    return path


def write_table(frame: Frame, path: str | Path) -> Path:
    """Write equal-length numpy columns to ``path`` (replaced if it exists)."""
    path = check_table_path(path)
    con = duckdb.connect()
    try:
        con.register("frame", dict(frame))
        con.execute(f"COPY (SELECT * FROM frame) TO '{quoted_path(path)}' ({TABLE_FORMATS[path.suffix.lower()]})")
    except (duckdb.Error, OSError) as exc:
        raise OutputError(f"cannot write {path}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()
    return path
