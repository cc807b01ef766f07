"""Helpers shared by the CLI-level tests: run a command, read the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from typer.testing import CliRunner, Result

from onnx_nfi.cli import app


def invoke(*args: object) -> Result:
    """Run ``onnx-nfi ARGS`` in-process, wide enough that no table cell is cut."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of a read-only query (the file stays unlocked afterwards)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def scalar(db: Path, sql: str, params: list | None = None) -> Any:
    """The single value of a query."""
    return query(db, sql, params)[0][0]
