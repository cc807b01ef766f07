"""The SQL box of ``serve``: a user's query run with a bounded result, and the schema shown beside it.

A query is run through DuckDB's relation API so that a ``LIMIT`` is pushed into it (a huge result
is never materialised) and list, array and map columns longer than a few values are summarised
inside DuckDB as ``[N values]`` (a 100M-element list is never converted to Python objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

#: Values of a list column shown before it is summarised as ``[N values]``.
LIST_VALUES = 8
#: Tables the SQL page shows first (the rest follow in name order).
MAIN_TABLES = ("models", "layers", "neurons", "top_activations", "images", "class_frequencies", "runs")


@dataclass(frozen=True)
class SqlResult:
    """The first rows of a query's result; ``truncated`` when it had more."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    truncated: bool


def cell_text(value: Any, digits: int = 4) -> str:
    """One result value as a table shows it (the CLI's tables, ``serve``'s SQL box): floats to
    ``digits`` significant digits, a list longer than ``LIST_VALUES`` as ``[N values]``, NULL for None."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, list) and len(value) > LIST_VALUES:
        return f"[{len(value)} values]"
    return "NULL" if value is None else str(value)


class EmptyQuery(ValueError):
    """The text holds no SQL statement (only blanks, comments or semicolons)."""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _summarised(column: str, type_id: str) -> str:
    """A column as the result table shows it: long lists as ``[N values]``, computed by DuckDB."""
    c = _quoted(column)
    if type_id in ("list", "array", "map"):
        return f"if(len({c}) > {LIST_VALUES}, '[' || len({c}) || ' values]', {c}::VARCHAR) AS {c}"
    return c


def run_user_query(con: duckdb.DuckDBPyConnection, text: str, max_rows: int) -> SqlResult | None:
    """The first ``max_rows`` rows of ``text`` (None when its last statement returns no rows).

    Raises ``duckdb.Error`` for a query DuckDB refuses, ``duckdb.InterruptException`` when the
    connection is interrupted (the timeout of the SQL box), EmptyQuery when there is no statement.
    """
    if not con.extract_statements(text):
        raise EmptyQuery(text)
    relation = con.sql(text)
    if relation is None:
        return None
    columns = tuple(relation.columns)
    shown = relation.project(", ".join(_summarised(c, t.id) for c, t in zip(columns, relation.types)))
    rows = shown.limit(max_rows + 1).fetchall()
    return SqlResult(columns, tuple(rows[:max_rows]), len(rows) > max_rows)


def schema(con: duckdb.DuckDBPyConnection) -> list[tuple[str, list[str]]]:
    """(table, column names) of every table and view of the database, the main tables first."""
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    order = {name: k for k, name in enumerate(MAIN_TABLES)}
    return sorted(tables.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
