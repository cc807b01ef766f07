"""``serve``'s ``/find``: neurons by words, searched server-side on a cursor of the served database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnx_nfi.errors import NfiError
from onnx_nfi.report.site import find
from onnx_nfi.store.duckdb_store import Store

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response


def find_html(store: Store, query: str, common: dict[str, Any]) -> tuple[str, bool]:
    """The find page for ``query`` and whether the request was good (unknown words answer 400)."""
    from onnx_nfi.search.find import find_in

    result = error = None
    if query:
        try:
            result = find_in(store, query, k=find.SHOWN)
        except NfiError as exc:
            error = str(exc)
    return find.live_page(query, result, error, common), error is None


async def find_page(request: Request) -> Response:
    """``/find?q=WORDS``."""
    from starlette.responses import HTMLResponse

    database = request.app.state.database
    common = {"live": True, "db_name": database.path.name}
    html, ok = await database.run(find_html, request.query_params.get("q", "").strip(), common)
    return HTMLResponse(html, status_code=200 if ok else 400)
