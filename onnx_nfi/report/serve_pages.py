"""What ``serve``'s pages and pictures are made of, run on worker threads with a cursor of their own.

Each function takes the cursor (``store``) first and the served database (for its memo), so
that everything costly is made once per database state: the model and layer lists, a layer's
data and grid page, its NF pictures (all of a layer's at once: a layer page asks for all of
them), display images, and the selectivity chart.
"""

from __future__ import annotations

from typing import Any

from onnx_nfi.errors import NotFoundError
from onnx_nfi.refs import NeuronRef
from onnx_nfi.report.serve_db import ServedDatabase, etag
from onnx_nfi.report.site import build, pages
from onnx_nfi.report.site import data as q
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.neuron_ref import missing_neuron

#: Similar-neuron scopes of the search page.
SCOPES = (("all", "all models"), ("same", "its own model"), ("other", "other models"))
#: Neurons listed for a class on the search page.
BY_CLASS = 100


def model_name(store: Store, db: ServedDatabase, model_slug: str) -> str:
    """The model whose URL segment is ``model_slug``."""
    for m in db.memo.get(("models",), store.models):
        if q.slug(m) == model_slug:
            return m
    raise NotFoundError(f"no model {model_slug!r} in {db.path.name}")


def layer_row(store: Store, db: ServedDatabase, model_slug: str, layer_slug: str) -> q.LayerRow:
    """The layer whose URL segments are ``model_slug`` / ``layer_slug``."""
    model = model_name(store, db, model_slug)
    return q.find_layer(db.memo.get(("layers", model), lambda: q.layer_rows(store, model)), layer_slug)


def _layer_data(store: Store, db: ServedDatabase, row: q.LayerRow) -> q.LayerData:
    return db.memo.get(("layer-data", row.model, row.layer), lambda: q.layer_data(store, row))


def index_html(store: Store, db: ServedDatabase, common: dict[str, Any]) -> str:
    overviews = q.model_overviews(store)
    return pages.index_page(overviews, "selectivity.png" if overviews else None, **common)


def selectivity_png(store: Store, db: ServedDatabase) -> tuple[bytes, str]:
    """The selectivity-by-depth chart, drawn once per database state."""

    def draw() -> tuple[bytes, str] | None:
        png = build.summary_png_bytes(store, store.models())
        return None if png is None else (png, etag(png))

    found = db.memo.get(("selectivity",), draw)
    if found is None:
        raise NotFoundError("no selectivity index has been computed yet")
    return found


def model_html(store: Store, db: ServedDatabase, model_slug: str, common: dict[str, Any]) -> str:
    model = model_name(store, db, model_slug)
    rows = db.memo.get(("layers", model), lambda: q.layer_rows(store, model))
    return pages.model_page(q.model_overviews(store, [model])[0], rows, **common)


def layer_html(store: Store, db: ServedDatabase, model_slug: str, layer_slug: str, common: dict[str, Any]) -> str:
    """A layer's grid page with its NFs inlined (made once per database state)."""
    row = layer_row(store, db, model_slug, layer_slug)

    def render() -> str:
        pngs = db.memo.get(nf_key(model_slug, layer_slug), lambda: _layer_nfs(store, row))
        return pages.layer_page(_layer_data(store, db, row), {u: png for u, (png, _) in pngs.items()}, **common)

    return db.memo.get(("layer-page", row.model, row.layer), render)


def neuron_html(store: Store, db: ServedDatabase, model_slug: str, layer_slug: str, unit: int, common: dict[str, Any]) -> str:
    """A neuron's page: its layer's data (kept), its crops, classes, similar and matched neurons."""

    row = layer_row(store, db, model_slug, layer_slug)
    layer = _layer_data(store, db, row)
    chosen = [u for u in layer.units if u.unit == unit]
    if not chosen:
        raise missing_neuron(NeuronRef(row.model, row.alias, unit), {"alias": row.alias, "channels": row.channels})
    others = [m for m in db.memo.get(("models",), store.models) if m != row.model]
    name = str(NeuronRef(row.model, row.alias, unit))
    same = _similar_links(store, db, name, "same")
    other = _similar_links(store, db, name, "other") if others else []
    names = db.memo.get(("names",), lambda: q.NeuronNames(store))
    matches = db.memo.get(("matches", row.model, row.layer),
                          lambda: q.layer_matches(store, row.model, row.layer, names, others, pages.SIMILAR))
    return pages.neuron_page(
        layer, chosen[0], q.layer_crops(store, layer, pages.CROPS, [unit]).get(unit, []),
        q.layer_classes(store, row.model, row.layer, [unit]).get(unit, []),
        same, other, matches.get(unit, []), **common,
    )


def _similar_links(store: Store, db: ServedDatabase, neuron: str, scope: str, by: str = "response", k: int = pages.SIMILAR) -> list[q.Link]:
    """Nearest neurons of ``neuron`` in ``scope``; none when it has no ``by`` vector (neuron pages)."""
    from onnx_nfi.search import SearchError

    try:
        return similar(store, db, neuron, by, scope, k)
    except SearchError:
        return []


def similar(store: Store, db: ServedDatabase, neuron: str, by: str, scope: str, k: int) -> list[q.Link]:
    """``onnx_nfi.search.similar`` on the served database's cursor."""
    from onnx_nfi.names import parse_neuron
    from onnx_nfi.search.similar import Searcher, similar_in

    model = parse_neuron(neuron)[0]
    if scope not in dict(SCOPES):
        raise NotFoundError(f"unknown scope {scope!r}; use {', '.join(dict(SCOPES))}")
    result = similar_in(store, db.path, [neuron], by=by, k=k, models=(model,) if scope == "same" else (),
                        other_models=scope == "other", kept=db.memo.get(("searcher",), lambda: Searcher(store, db.path)))[0]
    return [q.link(h.model, h.alias, h.unit, h.score) for h in result.hits]


def search_html(store: Store, db: ServedDatabase, params: dict[str, str], common: dict[str, Any]) -> tuple[str, bool]:
    """The search page and whether the request was good (a bad neuron name or kind answers 400)."""
    from onnx_nfi.errors import NfiError
    from onnx_nfi.names import VECTOR_KINDS

    neuron, klass = params.get("neuron", "").strip(), params.get("class", "").strip()
    by, scope = params.get("by", "response"), params.get("scope", "all")
    k = _int(params.get("k", ""), pages.SIMILAR, 1, 100)
    hits = error = None
    try:
        if neuron:
            hits = similar(store, db, neuron, by, scope, k)
    except NfiError as exc:
        error = str(exc).replace(str(db.path), db.path.name)
    by_class = [q.link(*r) for r in store.neurons_of_class(klass, BY_CLASS)] if klass else None
    html = pages.render(
        "search.html", depth=0, neuron=neuron, by=by, scope=scope, k=k, kinds=VECTOR_KINDS, scopes=SCOPES,
        similar=hits, klass=klass, classes=db.memo.get(("classes",), store.top_classes), by_class=by_class,
        error=error, **common,
    )
    return html, error is None


def display_jpeg(store: Store, db: ServedDatabase, model_slug: str, image_id: int) -> tuple[bytes, str]:
    """A display image among the model's top images (JPEG and its ETag), read and encoded once."""
    model = model_name(store, db, model_slug)

    def encode() -> tuple[bytes, str] | None:
        found = list(build.display_jpegs(store, model, pages.CROPS, [image_id], db.image_root))
        return (found[0][1], etag(found[0][1])) if found else None

    jpeg = db.pictures.get(("image", model, image_id), encode)
    if jpeg is None:
        raise NotFoundError("no such image among the top images")
    return jpeg


def nf_png(store: Store, db: ServedDatabase, model_slug: str, layer_slug: str, unit: int) -> tuple[bytes, str]:
    """A unit's NF picture (PNG and its ETag): from its layer's set when a layer page made it, else alone
    (a neuron page's links show NFs of many layers; encoding each of those layers whole would be waste)."""
    layer_pngs = db.memo.peek(nf_key(model_slug, layer_slug))
    if layer_pngs is not None:
        return pick_nf(layer_pngs, unit)

    def encode() -> tuple[bytes, str] | None:
        row = layer_row(store, db, model_slug, layer_slug)
        found = list(build.nf_pngs(store, row.model, row.layer, [unit]))
        return _tagged(found[0][1]) if found else None

    png = db.pictures.get(nf_key(model_slug, layer_slug) + (str(unit),), encode)
    if png is None:
        raise NotFoundError(f"no NF for unit {unit}")
    return png


def _layer_nfs(store: Store, row: q.LayerRow) -> dict[int, tuple[bytes, str]]:
    """Every NF picture of a layer with its ETag, by unit."""
    return {u: _tagged(png) for u, png in build.nf_pngs(store, row.model, row.layer)}


def nf_key(model_slug: str, layer_slug: str) -> tuple[str, ...]:
    """The memo key of a layer's NF pictures (by URL segments, so a request finds them without the database)."""
    return ("nfs", model_slug, layer_slug)


def pick_nf(pngs: dict[int, tuple[bytes, str]], unit: int) -> tuple[bytes, str]:
    """One unit's NF among its layer's."""
    if unit not in pngs:
        raise NotFoundError(f"no NF for unit {unit}")
    return pngs[unit]


def hist_svg(store: Store, db: ServedDatabase, model_slug: str, layer_slug: str, index: str) -> tuple[bytes, str]:
    """A layer's distribution of one index (the picture neuron pages draw their marker over)."""
    row = layer_row(store, db, model_slug, layer_slug)
    histograms = _layer_data(store, db, row).histograms
    if index not in histograms:
        raise NotFoundError(f"layer {row.alias} has no {index} values")
    return db.pictures.get(("hist", row.model, row.layer, index), lambda: _tagged(pages.hist_svg(histograms[index]).encode()))


def _tagged(content: bytes) -> tuple[bytes, str]:
    return content, etag(content)


def _int(text: str, default: int, low: int, high: int) -> int:
    text = text.strip()
    return min(max(int(text), low), high) if text.isascii() and text.isdigit() else default
