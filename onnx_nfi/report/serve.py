"""``onnx-nfi serve``: the neuron browser's pages from the live database, plus search and a read-only SQL box.

A Starlette application (run by uvicorn) renders the same templates as the static build, at the
same relative layout (``/MODEL/LAYER/UNIT/``), so every link works in both. Every database call
runs on a worker thread (:mod:`onnx_nfi.report.serve_db`), so a slow query never blocks another
page; pictures and layer pages are made once per database state and sent with ETags.

Safety: the database is opened read-only with external access off and its configuration locked;
URL segments are looked up among the names in the database (never used as paths); images are
served only by id from the ``images`` table; error pages show no host path.

Adding a page: write ``async def handler(request) -> Response`` in its own module (the served
database is ``request.app.state.database``; run database work with ``await database.run(fn, ...)``)
and add one line ``Route("/path", handler)`` to :data:`ROUTES` below. Routes in ``ROUTES`` are
matched before the ``/MODEL/...`` pages, so any path shape works.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from onnx_nfi.config import DEFAULT_MAX_PIXELS
from onnx_nfi.errors import NfiError, NotFoundError, SearchError
from onnx_nfi.report import serve_pages as sp
from onnx_nfi.report import serve_query
from onnx_nfi.report.serve_find import find_page
from onnx_nfi.report.serve_db import DatabaseBusy, ServedDatabase, ServerStopping, etag
from onnx_nfi.report.serve_sql import SQL_TIMEOUT_S, SqlRefused, sql_page
from onnx_nfi.report.site import pages

if TYPE_CHECKING:
    import uvicorn

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Seconds uvicorn waits for open requests after SIGTERM / Ctrl-C (running queries are interrupted at once).
GRACEFUL_S = 0.5


def _database(request: Request) -> ServedDatabase:
    return request.app.state.database


def _common(request: Request) -> dict[str, Any]:
    return {"live": True, "db_name": _database(request).path.name}


def _unit(request: Request, key: str = "unit") -> int:
    """An integer path segment; one beyond any stored id is simply not found (never a database error)."""
    value = request.path_params[key]
    if not 0 <= value < 2**31:
        raise NotFoundError(f"no {key} {value} in this database")
    return value


def picture(request: Request, content: bytes, media_type: str, tag: str | None = None) -> Response:
    """A picture with its ETag: 304 when the browser already holds this exact content."""
    tag = tag or etag(content)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    sent = {t.strip() for t in request.headers.get("if-none-match", "").split(",")}
    if tag in sent or "*" in sent:
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


async def index(request: Request) -> Response:
    html = await _database(request).run(sp.index_html, _database(request), _common(request))
    return HTMLResponse(html)


async def selectivity(request: Request) -> Response:
    png, tag = await _database(request).run(sp.selectivity_png, _database(request))
    return picture(request, png, "image/png", tag)


async def model_page(request: Request) -> Response:
    db = _database(request)
    return HTMLResponse(await db.run(sp.model_html, db, request.path_params["model"], _common(request)))


async def layer_page(request: Request) -> Response:
    db, p = _database(request), request.path_params
    return HTMLResponse(await db.run(sp.layer_html, db, p["model"], p["layer"], _common(request)))


async def neuron_page(request: Request) -> Response:
    db, p = _database(request), request.path_params
    return HTMLResponse(await db.run(sp.neuron_html, db, p["model"], p["layer"], _unit(request), _common(request)))


async def neuron_redirect(request: Request) -> Response:
    return RedirectResponse(request.url.path + "/", status_code=308)


async def image(request: Request) -> Response:
    db = _database(request)
    jpeg, tag = await db.run(sp.display_jpeg, db, request.path_params["model"], _unit(request, "image"))
    return picture(request, jpeg, "image/jpeg", tag)


async def nf(request: Request) -> Response:
    db, p, unit = _database(request), request.path_params, _unit(request)
    key = sp.nf_key(p["model"], p["layer"])
    layer_pngs, one = db.fresh(key), db.fresh(key + (str(unit),))  # made before: no thread, no cursor
    if layer_pngs is not None:
        png, tag = sp.pick_nf(layer_pngs, unit)
    elif one is not None:
        png, tag = one
    else:
        png, tag = await db.run(sp.nf_png, db, p["model"], p["layer"], unit)
    return picture(request, png, "image/png", tag)


async def hist(request: Request) -> Response:
    db, p = _database(request), request.path_params
    svg, tag = await db.run(sp.hist_svg, db, p["model"], p["layer"], p["index"])
    return picture(request, svg, "image/svg+xml", tag)


async def search(request: Request) -> Response:
    db = _database(request)
    html, ok = await db.run(sp.search_html, db, dict(request.query_params), _common(request))
    return HTMLResponse(html, status_code=200 if ok else 400)


async def sql(request: Request) -> Response:
    html, ok = await sql_page(request, _database(request), _common(request))
    return HTMLResponse(html, status_code=200 if ok else 400)


#: Site-wide pages, matched first. A new page adds one line here (see the module's docstring).
ROUTES: list[BaseRoute] = [
    Route("/", index), Route("/index.html", index), Route("/selectivity.png", selectivity),
    Route("/search", search),
    Route("/sql", sql),
    Route("/find", find_page),
    Mount("/static", app=StaticFiles(directory=pages.STATIC), name="static"),
]
#: The ``/MODEL/LAYER/UNIT/`` pages, laid out as the static report's files.
MODEL_ROUTES: list[BaseRoute] = [
    Route("/{model}/", model_page), Route("/{model}/index.html", model_page),
    Route("/{model}/images/{image:int}.jpg", image),
    Route("/{model}/{layer}/", layer_page), Route("/{model}/{layer}/index.html", layer_page),
    Route("/{model}/{layer}/nf/{unit:int}.png", nf), Route("/{model}/{layer}/hist/{index}.svg", hist),
    Route("/{model}/{layer}/{unit:int}", neuron_redirect),
    Route("/{model}/{layer}/{unit:int}/", neuron_page), Route("/{model}/{layer}/{unit:int}/index.html", neuron_page),
]


def status_of(exc: Exception) -> int:
    """The HTTP status of an error: 404 not found, 400 a bad request, 503 retry later, 500 our fault."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, (DatabaseBusy, ServerStopping)):
        return 503
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, (SearchError, SqlRefused)):
        return 400
    return 500


async def error_page(request: Request, exc: Exception) -> Response:
    """Every error as a page with its status and one line, without host paths or tracebacks."""
    status = status_of(exc)
    if isinstance(exc, NfiError):
        message = str(exc)
    elif status == 404:
        message = "This page does not exist."
    elif isinstance(exc, HTTPException):
        message = exc.detail
    else:
        message = "The server failed on this page; the command line shows more (onnx-nfi card, sql)."
    db = _database(request)
    message = message.replace(str(db.path.parent.resolve()), "…").replace(str(db.path.parent), "…")
    depth = request.url.path.count("/") - 1  # folders below the root, so its relative links reach the root
    title = {404: "Not found", 503: "Busy", 400: "Bad request"}.get(status, "Error")
    html = pages.render("error.html", depth=depth, message=message, title=title, **_common(request))
    headers = {"Retry-After": "2"} if status == 503 else None
    return HTMLResponse(html, status_code=status, headers=headers)


def create_app(
    db: str | Path, image_root: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, *,
    sql_timeout: float = SQL_TIMEOUT_S,
) -> Starlette:
    """The web application serving ``db`` (opened here, so a bad path fails before serving);
    SQL box queries are interrupted after ``sql_timeout`` seconds; ``max_pixels``: the largest image
    the query page decodes."""
    database = ServedDatabase(Path(db), image_root)
    queries = serve_query.QueryPages(database, image_root, max_pixels)  # its model sessions live with the app
    app = Starlette(
        routes=[*ROUTES, *queries.routes(), *MODEL_ROUTES],
        exception_handlers={NfiError: error_page, 404: error_page, 405: error_page, Exception: error_page},
    )
    app.state.database = database
    app.state.sql_timeout = sql_timeout
    return app


def server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for ``app`` that, on SIGTERM or Ctrl-C, interrupts running queries at once."""
    import uvicorn

    database: ServedDatabase = app.state.database

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            database.stop()
            super().handle_exit(sig, frame)

    return _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACEFUL_S))


def warning_for(host: str) -> str | None:
    """What to tell the user before serving on a non-local address."""
    if host in LOCAL_HOSTS:
        return None
    return (f"serving on {host}: anyone who can reach this machine can browse the database, its images "
            "and run read-only SQL on it")
