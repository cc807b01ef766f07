"""DuckDB access: open with clear errors, write a model's results atomically, read them back.

Tables are filled from dicts of numpy columns (DuckDB scans them without copies through Python
objects); NaN in float columns becomes NULL, which is how undefined indexes are stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from onnx_nfi.errors import NotFoundError, StoreError
from onnx_nfi.files import sweep_orphans
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.signals import current_hold, signals_wait
from onnx_nfi.store.full_disk import disk_full_as_error
from onnx_nfi.store.nf_storage import convert_float_nfs
from onnx_nfi.store.schema import SCHEMA_VERSION, added_columns_sql, layer_summary_sql, tables_sql
from onnx_nfi.store.user_sql import schema

#: Tables whose rows belong to one model (replaced together).
MODEL_TABLES = ("models", "images", "layers", "neurons", "top_activations", "class_frequencies")
#: Tables whose rows belong to one neuron, by ``neuron_id`` (deleted with their model's neurons; ``import``
#: copies them with new neuron ids).
NEURON_TABLES = ("concept_labels", "color_names")
#: Per-neuron tables whose rows also name a ``runs`` row (relevance): deleted with their neurons too;
#: ``import`` maps their run ids as well (``store.relevance.import_relevance``).
NEURON_RUN_TABLES = ("relevance", "relevance_classes")

Frame = Mapping[str, np.ndarray]

#: (seconds to wait for another process's lock, callback(waited, timeout) while waiting); see lock_wait.
_LOCK_WAIT: ContextVar[tuple[float, Callable[[int, int], None] | None]] = ContextVar("lock_wait", default=(0.0, None))
#: Seconds between two attempts to open a locked database.
_LOCK_POLL = 0.5


@contextmanager
def lock_wait(timeout: float, on_wait: Callable[[int, int], None] | None = None) -> Iterator[None]:
    """Inside, opening a database another process holds waits up to ``timeout`` seconds, calling
    ``on_wait(waited_s, timeout_s)`` while it waits, before refusing. Outside, it refuses at once:
    waiting is for finished work about to be written, not for a run that has not started."""
    token = _LOCK_WAIT.set((float(timeout), on_wait))
    try:
        yield
    finally:
        _LOCK_WAIT.reset(token)


@contextmanager
def _accesses_whole() -> Iterator[None]:
    """Inside a SignalHold (``analyze``, ``merge``), every database access runs whole: DuckDB turns a
    signal handler's exception raised during a query into ``RuntimeError('Query interrupted')``, and
    the Ctrl-C would be lost in a traceback. A signal inside is acted on when the access ends, or by
    the SignalHold itself once it holds (the write)."""
    if current_hold() is None:
        yield
        return
    with signals_wait():
        yield


def _is_lock_error(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    timeout, on_wait = _LOCK_WAIT.get()
    started = time.monotonic()
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            waited = time.monotonic() - started
            if not _is_lock_error(exc) or waited >= timeout:
                if _is_lock_error(exc) and timeout > 0:
                    raise StoreError(
                        f"database {path} is still locked by another process after {timeout:g} s; close it "
                        "or raise --lock-timeout"
                    ) from None
                _raise_open_error(path, exc)
            if on_wait is not None:
                on_wait(int(waited), round(timeout))
            hold = current_hold()
            if hold is not None:
                hold.deliver()  # a signal held while waiting for the lock stops the wait: nothing began
            time.sleep(min(_LOCK_POLL, max(0.0, timeout - waited)))


def _raise_open_error(path: Path, exc: duckdb.Error) -> None:
    """The one-line error of a database that cannot be opened."""
    if isinstance(exc, duckdb.IOException):
        text = str(exc)
        if "lock" in text.lower():
            raise StoreError(f"database {path} is locked by another process; close it or use another --db") from None
        if "not a valid" in text.lower() or "database file" in text.lower() or "header" in text.lower():
            raise StoreError(f"{path} is not a DuckDB database; pass another --db path") from None
        raise StoreError(f"cannot open database {path}: {text.splitlines()[0]}; pass another --db file") from None
    raise StoreError(f"cannot open database {path}: {str(exc).splitlines()[0]}; pass another --db file") from None


def quoted_path(path: Path) -> str:
    """A path for single quotes in SQL text (COPY and ATTACH take no parameters): quotes doubled."""
    return path.as_posix().replace("'", "''")


def check_writable(path: str | Path) -> None:
    """Fail early (before a long scan) when the database cannot be written."""
    path = Path(path)
    if path.exists():
        _connect(path, read_only=False).close()
    elif not path.parent.exists():
        raise StoreError(f"folder {path.parent} for database {path} does not exist; create it first")


class Store:
    """An open database; use ``with Store.open(path) as store``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self._con = con
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, path: str | Path = DEFAULT_DB, read_only: bool = False, *, any_duckdb: bool = False) -> Iterator[Store]:
        """Open (creating the schema when writable) and always close; ``any_duckdb``: read-only, a DuckDB
        file without our tables is accepted too (a look that must leave the file as it was)."""
        path = Path(path)
        if read_only and not path.exists():
            raise StoreError(f"database {path} does not exist; run 'onnx-nfi analyze' first or pass --db")
        sweep_orphans(path.parent, path.name)  # the copy a killed ``compact`` left (as large as the database)
        with _accesses_whole(), disk_full_as_error(path):
            con = _connect(path, read_only)
            store = cls(con, path)
            try:
                if not read_only:
                    store._ensure_schema()
                elif not any_duckdb and not store.has_table("models"):
                    raise StoreError(f"{path} is not an onnx-nfi database (no 'models' table)")
                yield store
            finally:
                con.close()

    def has_table(self, name: str) -> bool:
        """Whether the table exists (``response_vectors`` appears with the first probe set)."""
        return bool(self._con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()[0])

    def _ensure_schema(self) -> None:
        self._con.execute(tables_sql())
        self._con.execute(added_columns_sql())
        convert_float_nfs(self._con)
        self._con.execute(layer_summary_sql())
        self._con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: a failure inside rolls every statement back."""
        self._con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def insert(self, table: str, frame: Frame) -> None:
        """Append the rows of a dict of equal-length numpy columns (column names must exist)."""
        columns = ", ".join(frame)
        self._con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM frame")

    def delete_model(self, model: str) -> None:
        """Remove every row of ``model`` (inside the caller's transaction)."""
        for table in (*NEURON_TABLES, *NEURON_RUN_TABLES):
            self._con.execute(f"DELETE FROM {table} WHERE neuron_id IN (SELECT neuron_id FROM neurons WHERE model = ?)", [model])
        for table in MODEL_TABLES:
            self._con.execute(f"DELETE FROM {table} WHERE model = ?", [model])

    def update_neurons(self, model: str, frame: Frame) -> None:
        """Set columns of existing neurons from a frame keyed by ``layer`` and ``unit``."""
        columns = [c for c in frame if c not in ("layer", "unit")]
        assignments = ", ".join(f"{c} = frame.{c}" for c in columns)
        self._con.execute(
            f"UPDATE neurons SET {assignments} FROM frame "
            "WHERE neurons.model = ? AND neurons.layer = frame.layer AND neurons.unit = frame.unit",
            [model],
        )

    def next_id(self, table: str, column: str) -> int:
        """One past the largest id ever stored in ``table.column`` (ids are never reused)."""
        key = f"next_{table}_{column}"
        stored = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        current = self._con.execute(f"SELECT coalesce(max({column}) + 1, 0) FROM {table}").fetchone()[0]
        return max(int(current), int(stored[0]) if stored else 0)

    def reserve_ids(self, table: str, column: str, count: int) -> int:
        """First of ``count`` fresh ids; remembered in ``meta`` so deleted ids stay retired."""
        first = self.next_id(table, column)
        self._con.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [f"next_{table}_{column}", str(first + count)]
        )
        return first

    def replace_matches(self, model_a: str, model_b: str, frames: Sequence[Frame]) -> None:
        """``neuron_matches`` of the ordered pair (``model_a``, ``model_b``) replaced by the rows of
        ``frames``, in one transaction (a failure leaves the earlier matches)."""
        with self.transaction():
            self._con.execute("DELETE FROM neuron_matches WHERE model_a = ? AND model_b = ?", [model_a, model_b])
            for frame in frames:
                if len(next(iter(frame.values()))):
                    self.insert("neuron_matches", frame)

    def interrupt(self) -> None:
        """Stop the query running on this connection (``serve`` shutting down)."""
        self._con.interrupt()

    # ---- reads -------------------------------------------------------------------------------

    def image_records(self, model: str) -> list[dict[str, Any]]:
        """The model's images as ``image_id``, ``path``, ``label``, ``sha256`` (what ``index`` reads again)."""
        return self.rows("SELECT image_id, path, label, sha256 FROM images WHERE model = ?", [model])

    def live_neurons(self, model: str) -> int:
        """How many of the model's neurons are not dead."""
        return int(self._con.execute("SELECT count(*) FROM neurons WHERE model = ? AND NOT dead", [model]).fetchone()[0])

    def response_profiles(self, model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per layer with any (depth order): the units and their response vectors ``[n, P]`` (float32)."""
        if not self.has_table("response_vectors"):
            return {}
        cols = self._con.execute(
            "SELECT n.layer, n.unit, r.vector FROM neurons n JOIN response_vectors r USING (neuron_id) "
            "JOIN layers l USING (model, layer) WHERE n.model = ? ORDER BY l.depth, n.unit", [model]
        ).fetchnumpy()
        layers = np.asarray(cols["layer"], dtype=object)
        blocks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for layer in dict.fromkeys(layers):
            mask = layers == layer
            blocks[layer] = (np.asarray(cols["unit"][mask], np.int32), np.stack(cols["vector"][mask]).astype(np.float32))
        return blocks

    def most_class_dominated_unit(self, model: str, alias: str) -> int:
        """The live unit of layer ``alias`` whose top images are most dominated by one class (lowest unit on ties)."""
        rows = self.rows(
            "SELECT unit FROM neurons n JOIN layers l USING (model, layer) WHERE model = ? AND alias = ? AND NOT dead "
            "ORDER BY top_class_frequency DESC NULLS LAST, unit LIMIT 1",
            [model, alias],
        )
        return int(rows[0]["unit"])

    def table_columns(self) -> list[tuple[str, list[str]]]:
        """(table, column names) of every table and view, the main tables first (beside the SQL box)."""
        return schema(self._con)


    def models(self) -> list[str]:
        """Model names in the database."""
        return [r[0] for r in self._con.execute("SELECT model FROM models ORDER BY model").fetchall()]

    def top_classes(self) -> list[str]:
        """The distinct top classes of the neurons (the browser's class search offers them)."""
        return [r[0] for r in self._con.execute(
            "SELECT DISTINCT top_class FROM neurons WHERE top_class IS NOT NULL ORDER BY top_class").fetchall()]

    def neurons_of_class(self, label: str, limit: int) -> list[tuple[str, str, int, float]]:
        """(model, layer alias, unit, share) of neurons whose top class is ``label``, most dominated first."""
        rows = self._con.execute(
            "SELECT n.model, l.alias, n.unit, coalesce(n.top_class_frequency, 0) FROM neurons n JOIN layers l "
            "USING (model, layer) WHERE n.top_class = ? ORDER BY n.top_class_frequency DESC, n.model, l.depth, n.unit "
            "LIMIT ?", [label, limit]).fetchall()
        return [(m, a, int(u), float(f)) for m, a, u, f in rows]

    def model_row(self, model: str) -> dict[str, Any]:
        """The ``models`` row of ``model``, with the analysis's image input (``image_input``, from its
        run's parameters); NotFoundError names the models that exist."""
        cur = self._con.execute(
            "SELECT m.*, r.params ->> 'input' AS image_input FROM models m LEFT JOIN runs r ON r.run_id = m.run_id "
            "WHERE m.model = ?",
            [model],
        )
        row = cur.fetchone()
        if row is None:
            known = ", ".join(self.models()) or "none yet"
            raise NotFoundError(f"model {model!r} is not in {self.path} (models: {known})")
        names = [d[0] for d in cur.description]
        data = dict(zip(names, row))
        data["preprocessing"] = json.loads(data["preprocessing"])
        return data

    def layer_rows(self, model: str) -> list[dict[str, Any]]:
        """The model's layers in depth order."""
        return self.rows("SELECT * FROM layers WHERE model = ? ORDER BY depth", [model])

    def resolve_layer(self, model: str, name: str) -> dict[str, Any]:
        """A layer by tensor name or alias."""
        rows = self.rows("SELECT * FROM layers WHERE model = ? AND (layer = ? OR alias = ?)", [model, name, name])
        if not rows:
            self.model_row(model)
            raise NotFoundError(
                f"layer {name!r} is not in model {model!r}; list them with: onnx-nfi sql \"SELECT alias, layer FROM layers WHERE model = '{model}'\""
            )
        return rows[0]

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """A user's SQL: column names and rows; a DuckDB error becomes one line saying what went wrong."""
        try:
            cur = self._con.execute(sql)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            hint = " (the database is opened read-only; pass --write to modify it)" if "read-only" in first.lower() else ""
            raise StoreError(f"SQL error: {first}{hint}") from None
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()

    def export_parquet(self, sql: str, target: str | Path) -> Path:
        """Write a query's result to a Parquet file with DuckDB's own writer."""
        target = Path(target)
        try:
            self._con.execute(f"COPY ({sql}) TO '{quoted_path(target)}' (FORMAT parquet)")
        except duckdb.Error as exc:
            raise StoreError(f"SQL error: {str(exc).strip().splitlines()[0]}") from None
        return target

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Query results as dicts."""
        cur = self._con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def columns(self, sql: str, params: list[Any] | None = None) -> dict[str, np.ndarray]:
        """Query results as numpy columns (fast path for large reads)."""
        return {k: np.asarray(v) for k, v in self._con.execute(sql, params or []).fetchnumpy().items()}
