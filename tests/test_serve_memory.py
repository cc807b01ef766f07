"""The SQL box's memory ceiling: a query building one huge value answers 400 with one line at once,
and neither the server nor the query's process grows past the ceiling; a query stopped at the time
limit leaves no process behind."""

from __future__ import annotations

import html
from pathlib import Path

from test_serve import RUNAWAY, Server, served_db, sql_path  # noqa: F401  (served_db: the fixture)

from onnx_nfi.store.sql_child import SQL_ADDRESS_SPACE


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a process's resident memory (VmHWM), MB."""
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_a_100m_value_is_refused_by_the_memory_ceiling_and_the_server_stays_small(served_db: Path) -> None:  # noqa: F811
    server = Server(served_db, "--sql-timeout", "300")
    try:
        status, _, body = server.get(sql_path("SELECT range(100000000)"))
        assert status == 400
        error = html.unescape(body.decode()).split('id="error"', 1)[1].split("<", 1)[0]
        assert "the query needs more than the SQL box's 1GB of memory; ask for fewer or smaller values" in error
        assert peak_rss_mb(server.proc.pid) < 600  # before: ~4-10 GB while DuckDB built the list
        status, _, body = server.get(sql_path("SELECT count(*) AS n FROM range(5000000)"))
        assert status == 200 and b"5000000" in body  # big work that stays small still answers
        assert children(server.proc.pid) == []
    finally:
        server.stop()
    assert SQL_ADDRESS_SPACE <= 2 * 2**30


def test_a_query_stopped_at_the_time_limit_leaves_no_process(served_db: Path) -> None:  # noqa: F811
    server = Server(served_db, "--sql-timeout", "2")
    try:
        status, _, body = server.get(sql_path(RUNAWAY))
        assert status == 400 and b"ran longer than 2 s" in body
        assert children(server.proc.pid) == []
    finally:
        server.stop()
