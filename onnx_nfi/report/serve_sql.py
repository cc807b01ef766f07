"""``serve``'s SQL box: a read-only query with a time limit, a row limit, and cancellation.

The query runs on a worker thread with a cursor of its own while the request waits on the event
loop, checking every ``POLL_S``: past ``SQL_TIMEOUT_S`` seconds, when the browser has gone away,
or when the server is stopping, DuckDB is interrupted (``interrupt()`` on that cursor). At most
``SQL_ROWS`` rows are fetched (the limit is pushed into the query, so a huge result is never
built) and long lists are summarised inside DuckDB. A query DuckDB cannot interrupt at once (a
single function call building a huge value) is abandoned after ``ABANDON_S`` more seconds: the
page answers and the thread finishes on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from onnx_nfi.errors import NfiError
from onnx_nfi.report.serve_db import ServedDatabase
from onnx_nfi.report.site import pages
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.example_queries import SQL_PAGE_EXAMPLE
from onnx_nfi.store.user_sql import EmptyQuery, SqlResult

#: Seconds a SQL box query may run before it is interrupted (``serve --sql-timeout``).
SQL_TIMEOUT_S = 5.0
#: Rows a SQL box query shows at most.
SQL_ROWS = 500
#: How often a running query's deadline and client are checked, seconds.
POLL_S = 0.1
#: Seconds an interrupted query is waited for before the page answers without it.
ABANDON_S = 1.0


class SqlRefused(NfiError):
    """A query DuckDB refused, or one stopped at the time limit (HTTP 400)."""


async def run_sql(request: Request, db: ServedDatabase, text: str) -> SqlResult | None:
    """The first rows of ``text``; SqlRefused when DuckDB refuses it or it runs past the time limit."""
    import duckdb

    running: dict[str, Any] = {}

    def work(store: Store) -> SqlResult | None:
        running["store"] = store
        return store.user_query(text, SQL_ROWS)

    timeout = request.app.state.sql_timeout
    task = asyncio.ensure_future(db.run(work))
    loop = asyncio.get_running_loop()
    deadline, stop, why = loop.time() + timeout, None, ""
    while not task.done():
        await asyncio.wait({task}, timeout=POLL_S)
        if task.done():
            break
        if stop is None:
            if loop.time() > deadline:
                why = f"the query ran longer than {timeout:g} s and was stopped; add a LIMIT or a WHERE clause"
            elif db.stopping or await request.is_disconnected():
                why = "the query was cancelled"
            stop = loop.time() + ABANDON_S if why else None
        if stop is not None:
            if "store" in running:
                db.interrupt(running["store"])
            if loop.time() > stop:
                task.cancel()
                raise SqlRefused(why)
    try:
        return task.result()
    except duckdb.InterruptException:
        raise SqlRefused(why or "the query was cancelled") from None
    except EmptyQuery:
        raise SqlRefused("the query holds no SQL statement; write one (see the example)") from None
    except duckdb.Error as exc:
        raise SqlRefused(str(exc).splitlines()[0]) from None


async def sql_page(request: Request, db: ServedDatabase, common: dict[str, Any]) -> tuple[str, bool]:
    """The SQL page (with the result of ``?q=``) and whether the query was answered."""
    query = request.query_params.get("q", "").strip()
    result, error = None, None
    if query:
        try:
            result = await run_sql(request, db, query)
        except SqlRefused as exc:
            error = str(exc).replace(str(db.path), db.path.name)
    tables = await db.run(lambda store: db.memo.get(("schema",), store.table_columns))
    html = pages.render(
        "sql.html", depth=0, query=query, example=SQL_PAGE_EXAMPLE, tables=tables, timeout=request.app.state.sql_timeout, limit=SQL_ROWS,
        columns=result.columns if result else (), rows=[tuple(map(_cell, r)) for r in result.rows] if result else (),
        truncated=bool(result and result.truncated), answered=bool(query) and error is None and result is None,
        error=error, **common,
    )
    return html, error is None


def _cell(value: Any) -> Any:
    """A result value as the table shows it."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else value
