"""One SQL box query in a process of its own, with a ceiling on its memory.

DuckDB cannot bound every query from inside: ``SELECT range(100000000)`` builds one 100M-element
value outside its buffer manager (``memory_limit`` does not stop it: ~10 GB and minutes, and an
interrupt is not honoured until the value is built). In a child process the address space is
capped (``RLIMIT_AS``), so such a value fails at once with DuckDB's out-of-memory error, and a
query past its time limit is ended by killing the child: the server itself never grows.

Run as ``python -m onnx_nfi.store.sql_child DB MAX_ROWS`` with the query on stdin; the answer is
a pickled ``(result, error, kind)`` on stdout (:func:`read_answer`).
"""

from __future__ import annotations

import pickle
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

#: DuckDB settings of every read-only connection ``serve`` opens: no file but the database, fixed config.
READ_ONLY_CONFIG = {"enable_external_access": False, "lock_configuration": True}
#: Address space a SQL box query may use (the Python interpreter and DuckDB take ~0.8 GiB of it).
SQL_ADDRESS_SPACE = 2 * 2**30
#: DuckDB's own budget inside it (joins and aggregates beyond it are refused, not swapped).
SQL_MEMORY_LIMIT = "1GB"
SQL_THREADS = 2


@dataclass(frozen=True)
class Answer:
    """The child's verdict: ``result`` (a SqlResult or None), or ``error`` of kind memory/busy/empty/refused."""

    result: object = None
    error: str = ""
    kind: str = ""


def _die_with_parent() -> None:
    """Ask Linux to kill this child when the server dies (PR_SET_PDEATHSIG), so none outlives it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the time limit still ends it
        pass


def answer(db: Path, text: str, max_rows: int) -> Answer:
    """Run ``text`` on a read-only connection to ``db`` (inside the memory ceiling already set)."""
    import duckdb

    from onnx_nfi.store.user_sql import EmptyQuery, run_user_query

    config = {**READ_ONLY_CONFIG, "memory_limit": SQL_MEMORY_LIMIT, "threads": SQL_THREADS}
    try:
        con = duckdb.connect(str(db), read_only=True, config=config)
    except duckdb.Error as exc:
        busy = "lock" in str(exc).lower()
        return Answer(error="the database is being written; retry shortly" if busy else str(exc).splitlines()[0],
                      kind="busy" if busy else "refused")
    try:
        return Answer(result=run_user_query(con, text, max_rows))
    except EmptyQuery:
        return Answer(error="the query holds no SQL statement; write one (see the example)", kind="empty")
    except (duckdb.OutOfMemoryException, MemoryError):
        return Answer(error=f"the query needs more than the SQL box's {SQL_MEMORY_LIMIT} of memory; "
                            "ask for fewer or smaller values (a LIMIT, an aggregate)", kind="memory")
    except duckdb.Error as exc:
        return Answer(error=str(exc).splitlines()[0], kind="refused")
    finally:
        con.close()


def read_answer(output: bytes) -> Answer:
    """The Answer a child wrote to its stdout."""
    result, error, kind = pickle.loads(output)
    return Answer(result, error, kind)


def main() -> None:
    """Cap the address space, answer the query read from stdin, write the pickled Answer to stdout."""
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_AS, (SQL_ADDRESS_SPACE, SQL_ADDRESS_SPACE))
    db, max_rows = Path(sys.argv[1]), int(sys.argv[2])
    reply = answer(db, sys.stdin.read(), max_rows)
    sys.stdout.buffer.write(pickle.dumps((reply.result, reply.error, reply.kind)))  # not Answer: __main__.Answer here


if __name__ == "__main__":
    main()
