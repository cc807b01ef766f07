"""The database behind ``serve``: one read-only connection shared by worker threads, held only while used.

Why this shape:

- DuckDB runs queries of different cursors of one connection concurrently, so a page and its
  pictures are answered in parallel from one connection (opened read-only, external access off,
  configuration locked: neither the pages nor the SQL box can write the file or read others);
- a read-only connection still locks the file against writers, so it is closed once no request
  has used it for ``IDLE_CLOSE`` seconds, letting ``analyze`` or ``merge`` write in between; while
  a writer holds the file, requests answer 503 (:class:`DatabaseBusy`);
- everything derived from the database (NF and display pictures, layer data, pages) is kept per
  database *state* (the file's size and modification time when the connection was opened) and
  dropped when the state changes;
- work runs on daemon threads, so a query DuckDB cannot interrupt never keeps the process alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from onnx_nfi.errors import StoreError
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.sql_child import READ_ONLY_CONFIG

T = TypeVar("T")
#: Seconds without a request after which the connection is closed (so writers can take the file).
IDLE_CLOSE = 1.0
#: Worker threads answering requests at once.
THREADS = 8
#: Entries kept per database state: layers (data, pages, NF sets: up to a few MB each) and single pictures.
MEMO_ENTRIES, PICTURE_ENTRIES = 128, 4096


class DatabaseBusy(StoreError):
    """Another process is writing the database (HTTP 503: retry shortly)."""


class ServerStopping(StoreError):
    """The server is shutting down (HTTP 503)."""


class Memo:
    """Values computed at most once each (concurrent askers of one key wait for the first), LRU-bounded."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Any, threading.Lock] = {}

    def get(self, key: Any, compute: Callable[[], T]) -> T:
        """The value of ``key``, computed by ``compute`` when absent."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._data:
                    return self._data[key]
            try:
                value = compute()
            finally:
                with self._lock:
                    self._computing.pop(key, None)
            with self._lock:
                self._data[key] = value
                while len(self._data) > self._entries:
                    self._data.popitem(last=False)
        return value

    def peek(self, key: Any) -> Any:
        """The value of ``key`` if it is held (None otherwise); nothing is computed."""
        with self._lock:
            return self._data.get(key)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def etag(content: bytes) -> str:
    """A strong entity tag of a response body."""
    return '"' + hashlib.blake2b(content, digest_size=12).hexdigest() + '"'


class ServedDatabase:
    """The served database: a shared read-only connection, its cursors, and what is derived from it."""

    def __init__(self, path: Path, image_root: str | Path | None = None) -> None:
        self.path = path
        self.image_root = image_root
        self.memo = Memo(MEMO_ENTRIES)
        self.pictures = Memo(PICTURE_ENTRIES)
        self.stopping = False
        self._lock = threading.Lock()
        self._con: Any = None
        self._users = 0
        self._state: tuple[int, ...] | None = None
        self._timer: threading.Timer | None = None
        self._stores: set[Store] = set()
        self._slots: asyncio.Semaphore | None = None
        with self.store() as store:  # fail at start-up, not at the first request
            if not store.has_table("models"):
                raise StoreError(f"{path.name} is not an onnx-nfi database (no 'models' table); pass another --db")

    def _file_state(self) -> tuple[int, ...]:
        """Size and modification time of the database and its write-ahead log."""
        state: list[int] = []
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                s = p.stat()
                state += [s.st_size, s.st_mtime_ns]
            except FileNotFoundError:
                state += [-1, -1]
        return tuple(state)

    def fresh(self, key: Any) -> Any:
        """What the memo holds for ``key`` if the file is unchanged since it was made (None otherwise).

        Cheap enough for the event loop (two ``stat`` calls): a picture already made is sent
        without a worker thread or a cursor, which is most of what a 1,280-NF layer page asks for.
        """
        if self._state is None or self._file_state() != self._state:
            return None
        return self.memo.peek(key) or self.pictures.peek(key)

    def _open(self) -> None:
        """Open the shared connection (under ``_lock``); a changed file drops everything derived."""
        import duckdb

        if not self.path.exists():
            raise StoreError(f"database {self.path.name} does not exist; pass --db")
        try:
            self._con = duckdb.connect(str(self.path), read_only=True, config=READ_ONLY_CONFIG)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise DatabaseBusy("the database is being written; retry shortly") from None
            reason = str(exc).splitlines()[0].replace(str(self.path), self.path.name).rstrip("!.")
            raise StoreError(f"cannot open {self.path.name}: {reason}; pass another --db") from None
        state = self._file_state()
        if state != self._state:
            self.memo.clear()
            self.pictures.clear()
            self._state = state

    @contextmanager
    def store(self) -> Iterator[Store]:
        """A cursor of the shared connection as a Store (closed after use; the connection when idle)."""
        with self._lock:
            if self.stopping:
                raise ServerStopping("the server is stopping")
            if self._con is None:
                self._open()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._users += 1
            cursor = self._con.cursor()
            store = Store(cursor, self.path)
            self._stores.add(store)
        try:
            yield store
        finally:
            with self._lock:
                self._stores.discard(store)
                self._users -= 1
                if self._users == 0:
                    self._timer = threading.Timer(IDLE_CLOSE, self._close_if_idle)
                    self._timer.daemon = True
                    self._timer.start()
            cursor.close()

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._users == 0 and self._con is not None:
                self._con.close()
                self._con = None

    def stop(self) -> None:
        """Refuse new work and interrupt every running query (the server is shutting down)."""
        with self._lock:
            self.stopping = True
            for store in self._stores:
                store.interrupt()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(store, *args)`` on a worker thread with a cursor of its own."""

        def call() -> T:
            with self.store() as store:
                return work(store, *args)

        return await self.in_thread(call)

    async def in_thread(self, call: Callable[[], T]) -> T:
        """``call()`` on a daemon thread, at most ``THREADS`` at once; the event loop stays free."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(THREADS)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return  # the request went away meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def work() -> None:
            value, error = None, None
            try:
                value = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                error = exc
            try:
                loop.call_soon_threadsafe(settle, value, error)
            except RuntimeError:
                pass  # the server stopped meanwhile: nobody waits for this answer

        async with self._slots:
            threading.Thread(target=work, name="serve-worker", daemon=True).start()
            return await future
