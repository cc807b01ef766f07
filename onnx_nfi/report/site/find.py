"""The browser's word search (``find``): the static build's page with its client-side index, and the
rows ``serve`` shows. Both read the same words the same way as ``onnx-nfi find``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from onnx_nfi.report.site import pages
from onnx_nfi.report.site.data import href, slug
from onnx_nfi.search.find import FindResult
from onnx_nfi.search.word_index import word_index
from onnx_nfi.store.duckdb_store import Store

#: The page and the client-side index at the site's root (names in ``names.SITE_NAMES``).
PAGE, INDEX = "find.html", "find-index.js"
#: Neurons a search lists.
SHOWN = 50


class Writer(Protocol):
    def write(self, relative: str, data: str | bytes) -> None: ...


def folder(model: str, alias: str) -> str:
    """A layer's folder relative to the site's root, as links write it."""
    return f"{href(slug(model))}/{href(slug(alias))}"


def write_static(store: Store, writer: Writer, models: Sequence[str], common: dict[str, Any]) -> None:
    """``find.html`` and its index of every described neuron of ``models`` (rewritten on every build)."""
    index = word_index(store, list(models), folder)
    writer.write(INDEX, "window.NFI_FIND = " + json.dumps(index, ensure_ascii=False, separators=(",", ":")) + ";\n")
    writer.write(PAGE, pages.render(PAGE, depth=0, query="", hits=[], error=None, **common))


def live_page(query: str, result: FindResult | None, error: str | None, common: dict[str, Any]) -> str:
    """``serve``'s ``/find`` page: the found neurons (links from the root), or the error line."""
    hits = [
        {"neuron": h.neuron, "url": f"/{folder(h.model, h.alias)}/{h.unit}/index.html", "score": h.score,
         "description": h.description}
        for h in (result.hits if result else ())
    ]
    return pages.render(PAGE, depth=0, query=query, hits=hits, error=error, **common)
