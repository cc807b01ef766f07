"""``serve``'s ``/find``: neurons by words, searched server-side on the served read-only connection."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from onnx_nfi.errors import NfiError
from onnx_nfi.report.site import find
from onnx_nfi.store.duckdb_store import Store

if TYPE_CHECKING:
    from starlette.routing import Route


def find_route(store: Callable[[], AbstractContextManager[Store]], common: dict[str, Any]) -> Route:
    """The ``/find?q=WORDS`` route; ``store()`` opens the served database (read-only, safe)."""
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    from onnx_nfi.search.find import find_in

    async def find_page(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        result = error = None
        if query:
            try:
                with store() as opened:
                    result = find_in(opened, query, k=find.SHOWN)
            except NfiError as exc:
                error = str(exc)
        return HTMLResponse(find.live_page(query, result, error, common))

    return Route("/find", find_page)

