"""``serve``'s SQL box: a read-only query with a time limit, a row limit, a memory ceiling, and cancellation.

The query runs in a child process of its own (:mod:`onnx_nfi.store.sql_child`, address space
capped) while the request waits on the event loop, checking every ``POLL_S``: past
``SQL_TIMEOUT_S`` seconds, when the browser has gone away, or when the server is stopping, the
child is killed, and with it whatever the query had built (a single function call building a huge
value cannot be interrupted inside DuckDB). At most ``SQL_ROWS`` rows are fetched (the limit is
pushed into the query, so a huge result is never built) and long lists are summarised inside DuckDB.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from starlette.requests import Request

from onnx_nfi.errors import NfiError
from onnx_nfi.report.serve_db import DatabaseBusy, ServedDatabase
from onnx_nfi.report.site import pages
from onnx_nfi.store.example_queries import SQL_PAGE_EXAMPLE
from onnx_nfi.store.sql_child import SQL_MEMORY_LIMIT, read_answer
from onnx_nfi.store.user_sql import SqlResult, cell_text

#: Seconds a SQL box query may run before it is interrupted (``serve --sql-timeout``).
SQL_TIMEOUT_S = 5.0
#: Rows a SQL box query shows at most.
SQL_ROWS = 500
#: How often a running query's deadline and client are checked, seconds.
POLL_S = 0.1
#: Seconds a killed query's process is waited for before the page answers without it.
ABANDON_S = 1.0


class SqlRefused(NfiError):
    """A query DuckDB refused, or one stopped at the time limit (HTTP 400)."""


async def run_sql(request: Request, db: ServedDatabase, text: str) -> SqlResult | None:
    """The first rows of ``text``, answered by a child process (:mod:`onnx_nfi.store.sql_child`);
    SqlRefused when DuckDB refuses it, it needs too much memory or runs past the time limit."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onnx_nfi.store.sql_child", str(db.path), str(SQL_ROWS),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    task = asyncio.ensure_future(child.communicate(text.encode()))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.app.state.sql_timeout
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_S)
            if task.done():
                break
            if loop.time() > deadline:
                timeout = request.app.state.sql_timeout
                raise SqlRefused(f"the query ran longer than {timeout:g} s and was stopped; add a LIMIT or a WHERE clause")
            if db.stopping or await request.is_disconnected():
                raise SqlRefused("the query was cancelled")
    finally:
        if child.returncode is None:
            child.kill()  # the query's memory goes with it
        await asyncio.wait({task}, timeout=ABANDON_S)
    return _answer(task.result()[0], child.returncode)


def _answer(output: bytes, returncode: int | None) -> SqlResult | None:
    """The child's pickled Answer as a result, or the error it names."""
    if returncode != 0 or not output:  # killed by the kernel or a C-level allocation failure
        raise SqlRefused(
            f"the query ended without an answer (exit {returncode}), most likely out of the SQL box's "
            f"{SQL_MEMORY_LIMIT} of memory; ask for fewer or smaller values (a LIMIT, an aggregate)"
        )
    answer = read_answer(output)
    if answer.kind == "busy":
        raise DatabaseBusy(answer.error)
    if answer.error:
        raise SqlRefused(answer.error)
    return answer.result  # type: ignore[return-value]


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
        columns=result.columns if result else (), rows=[tuple(cell_text(v, 6) for v in r) for r in result.rows] if result else (),
        truncated=bool(result and result.truncated), answered=bool(query) and error is None and result is None,
        error=error, **common,
    )
    return html, error is None
