"""``onnx-nfi serve``: the neuron browser's pages from the live database, plus search and a read-only SQL box.

A Starlette application (run by uvicorn) renders the same templates as the static build, at the
same relative layout (``/MODEL/LAYER/UNIT/``), so every link works in both. Safety:

- the database is opened read-only and with DuckDB's external access disabled and its
  configuration locked, so neither the pages nor the SQL box can write it or read other files;
- URL segments are looked up among the names in the database (never used as paths); images are
  served only by id from the ``images`` table, static assets through Starlette's ``StaticFiles``;
- connections are opened one at a time (a lock), as DuckDB refuses two differently configured
  connections to one file.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_nfi.config import DEFAULT_MAX_PIXELS
from onnx_nfi.errors import NfiError, NotFoundError, StoreError
from onnx_nfi.report import serve_query
from onnx_nfi.report.site import build, pages
from onnx_nfi.report.site import data as q
from onnx_nfi.store.duckdb_store import Store

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

#: DuckDB settings of every connection ``serve`` opens.
SAFE_CONFIG = {"enable_external_access": False, "lock_configuration": True}
#: Rows a SQL box query shows at most.
SQL_ROWS = 500
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SCOPES = (("all", "all models"), ("same", "its own model"), ("other", "other models"))


class _Database:
    """The served database: safe read-only connections, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self.store():  # fail at start-up, not at the first request
            pass

    @contextmanager
    def store(self) -> Iterator[Store]:
        import duckdb

        with self._lock:
            if not self.path.exists():
                raise StoreError(f"database {self.path} does not exist; pass --db")
            try:
                con = duckdb.connect(str(self.path), read_only=True, config=SAFE_CONFIG)
            except duckdb.Error as exc:
                raise StoreError(f"cannot open {self.path}: {str(exc).splitlines()[0]}") from None
            try:
                yield Store(con, self.path)
            finally:
                con.close()

    def similar(self, neuron: str, by: str, scope: str, k: int) -> list[q.Link]:
        """``onnx_nfi.search.similar`` on this database (its own connection, so never inside ``store()``)."""
        from onnx_nfi.search import parse_neuron, similar

        model = parse_neuron(neuron)[0]
        if scope not in dict(SCOPES):
            raise NotFoundError(f"unknown scope {scope!r}; use {', '.join(dict(SCOPES))}")
        with self._lock:
            result = similar(
                self.path, neuron, by=by, k=k, models=(model,) if scope == "same" else (), other_models=scope == "other"
            )
        return [q.link(h.model, h.alias, h.unit, h.score) for h in result.hits]

    def similar_or_none(self, neuron: str, scope: str, k: int) -> list[q.Link]:
        """Response-profile neighbours for a neuron page; none when the neuron has no profile."""
        from onnx_nfi.search import SearchError

        try:
            return self.similar(neuron, "response", scope, k)
        except SearchError:
            return []


def create_app(db: str | Path, image_root: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Starlette:
    """The web application serving ``db`` (``max_pixels``: the largest image the query page decodes)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, RedirectResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    database = _Database(Path(db))
    common = {"live": True, "db_name": Path(db).name}

    def page(html: str) -> Response:
        return HTMLResponse(html)

    def model_of(store: Store, model_slug: str) -> str:
        for m in store.models():
            if q.slug(m) == model_slug:
                return m
        raise NotFoundError(f"no model {model_slug!r} in {database.path.name}")

    def layer_of(store: Store, request: Request) -> q.LayerRow:
        model = model_of(store, request.path_params["model"])
        return q.find_layer(q.layer_rows(store, model), request.path_params["layer"])

    async def index(request: Request) -> Response:
        with database.store() as store:
            overviews = q.model_overviews(store)
        return page(pages.index_page(overviews, "selectivity.png" if overviews else None, **common))

    async def selectivity(request: Request) -> Response:
        from starlette.responses import Response as Raw

        with database.store() as store:
            models = store.models()
        with tempfile.TemporaryDirectory(prefix="onnx-nfi-serve-") as folder:  # drawn per request, then gone
            png = build.summary_png_bytes(database.path, models, Path(folder))
        if png is None:
            raise NotFoundError("no selectivity index has been computed yet")
        return Raw(png, media_type="image/png")

    async def model_page(request: Request) -> Response:
        with database.store() as store:
            model = model_of(store, request.path_params["model"])
            html = pages.model_page(q.model_overviews(store, [model])[0], q.layer_rows(store, model), **common)
        return page(html)

    async def image(request: Request) -> Response:
        from starlette.responses import Response as Raw

        with database.store() as store:
            model = model_of(store, request.path_params["model"])
            found = list(build.display_jpegs(store, model, pages.CROPS, [request.path_params["image"]], image_root))
        if not found:
            raise NotFoundError("no such image among the top images")
        return Raw(found[0][1], media_type="image/jpeg")

    async def layer_page(request: Request) -> Response:
        with database.store() as store:
            html = pages.layer_page(q.layer_data(store, layer_of(store, request)), **common)
        return page(html)

    async def nf(request: Request) -> Response:
        from starlette.responses import Response as Raw

        unit = request.path_params["unit"]
        with database.store() as store:
            row = layer_of(store, request)
            found = list(build.nf_pngs(store, row.model, row.layer, [unit]))
        if not found:
            raise NotFoundError(f"no NF for unit {unit}")
        return Raw(found[0][1], media_type="image/png")

    async def neuron_redirect(request: Request) -> Response:
        return RedirectResponse(request.url.path + "/", status_code=308)

    async def neuron_page(request: Request) -> Response:
        unit = request.path_params["unit"]
        with database.store() as store:
            row = layer_of(store, request)
            others = [m for m in store.models() if m != row.model]
        name = f"{row.model}:{row.alias}:{unit}"
        same = database.similar_or_none(name, "same", pages.SIMILAR)
        other = database.similar_or_none(name, "other", pages.SIMILAR) if others else []
        with database.store() as store:
            layer = q.layer_data(store, row)
            chosen = [u for u in layer.units if u.unit == unit]
            if not chosen:
                raise NotFoundError(f"layer {row.alias} has units 0-{row.channels - 1}")
            matches = q.layer_matches(store, row.model, row.layer, q.NeuronNames(store), others, pages.SIMILAR)
            html = pages.neuron_page(
                layer, chosen[0], q.layer_crops(store, layer, pages.CROPS, [unit]).get(unit, []),
                q.layer_classes(store, row.model, row.layer, [unit]).get(unit, []),
                same, other, matches.get(unit, []), **common,
            )
        return page(html)

    async def search(request: Request) -> Response:
        params = request.query_params
        neuron, klass = params.get("neuron", "").strip(), params.get("class", "").strip()
        by, scope = params.get("by", "response"), params.get("scope", "all")
        k = _int(params.get("k", ""), pages.SIMILAR, 1, 100)
        similar = by_class = error = None
        try:
            if neuron:
                similar = database.similar(neuron, by, scope, k)
        except NfiError as exc:
            error = str(exc)
        with database.store() as store:
            classes = [r["top_class"] for r in store.rows(
                "SELECT DISTINCT top_class FROM neurons WHERE top_class IS NOT NULL ORDER BY top_class")]
            if klass:
                by_class = _by_class(store, klass)
        from onnx_nfi.names import VECTOR_KINDS as KINDS

        return page(pages.render(
            "search.html", depth=0, neuron=neuron, by=by, scope=scope, k=k, kinds=KINDS, scopes=SCOPES,
            similar=similar, klass=klass, classes=classes, by_class=by_class, error=error, **common,
        ))

    async def sql(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        columns: list[str] = []
        rows: list[tuple[Any, ...]] = []
        error, truncated = None, False
        if query:
            import duckdb

            with database.store() as store:
                try:
                    cursor = store.con.execute(query)
                    if cursor.description:
                        columns = [d[0] for d in cursor.description]
                        rows = [tuple(_cell(v) for v in r) for r in cursor.fetchmany(SQL_ROWS + 1)]
                        truncated = len(rows) > SQL_ROWS
                        rows = rows[:SQL_ROWS]
                except duckdb.Error as exc:
                    error = str(exc).splitlines()[0]
        return page(pages.render(
            "sql.html", depth=0, query=query, columns=columns, rows=rows, truncated=truncated, error=error, **common
        ))

    async def not_found(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, NfiError) else "This page does not exist."
        status = getattr(exc, "status_code", 404) if isinstance(exc, HTTPException) else 404
        depth = request.url.path.count("/") - 1  # folders below the root, so its relative links reach the root
        return HTMLResponse(pages.render("error.html", depth=depth, message=message, **common), status_code=status)

    model_routes = [
        Route("/{model}/", model_page), Route("/{model}/index.html", model_page),
        Route("/{model}/images/{image:int}.jpg", image),
        Route("/{model}/{layer}/", layer_page), Route("/{model}/{layer}/index.html", layer_page),
        Route("/{model}/{layer}/nf/{unit:int}.png", nf),
        Route("/{model}/{layer}/{unit:int}", neuron_redirect),
        Route("/{model}/{layer}/{unit:int}/", neuron_page), Route("/{model}/{layer}/{unit:int}/index.html", neuron_page),
    ]
    return Starlette(
        routes=[
            Route("/", index), Route("/index.html", index), Route("/selectivity.png", selectivity),
            Route("/search", search), Route("/sql", sql),
            *serve_query.QueryPages(database, image_root, max_pixels).routes(),
            Mount("/static", app=StaticFiles(directory=pages.STATIC), name="static"),
            *model_routes,
        ],
        exception_handlers={NfiError: not_found, 404: not_found, 405: not_found},
    )


def _by_class(store: Store, label: str, limit: int = 100) -> list[q.Link]:
    """Neurons whose top class is ``label``, most dominated by it first."""
    rows = store.rows(
        "SELECT n.model, l.alias, n.unit, n.top_class_frequency FROM neurons n JOIN layers l USING (model, layer) "
        "WHERE n.top_class = ? ORDER BY n.top_class_frequency DESC, n.model, l.depth, n.unit LIMIT ?",
        [label, limit],
    )
    return [q.link(r["model"], r["alias"], int(r["unit"]), float(r["top_class_frequency"] or 0)) for r in rows]


def _int(text: str, default: int, low: int, high: int) -> int:
    text = text.strip()
    return min(max(int(text), low), high) if text.isascii() and text.isdigit() else default


def _cell(value: Any) -> Any:
    """A SQL result value as the table shows it (long arrays summarised)."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} values]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else value


def warning_for(host: str) -> str | None:
    """What to tell the user before serving on a non-local address."""
    if host in LOCAL_HOSTS:
        return None
    return (f"serving on {host}: anyone who can reach this machine can browse the database, its images "
            "and run read-only SQL on it")

