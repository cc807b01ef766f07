"""The picture verbs: read a database (or a search result), draw, write a PNG.

``onnx-nfi nf/top/card/summary`` call the first ones: each opens the store read-only, makes one
``queries`` call and lays the result out with ``pictures``. ``similar_png`` and ``match_png`` draw
search results. Each returns a :class:`Drawn`: the path written with where each NF (or crop, or
the heat map's matrix) landed and which page it is, so a caller or a test can find every tile;
``summary_png`` returns the path and the indexes it left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_nfi.errors import NotFoundError
from onnx_nfi.neurons.evidence import MIN_ACTIVE_TOP, MIN_MAX_FRACTION
from onnx_nfi.report import pictures, queries
from onnx_nfi.report.class_evidence import class_evidence
from onnx_nfi.report.names_plot import names_by_depth_plot
from onnx_nfi.search.records import MatchResult, SimilarResult
from onnx_nfi.store.color_names import names_by_depth
from onnx_nfi.store.duckdb_store import DEFAULT_DB, Store

#: Where a picture verb reads: the database file, or a store the caller already holds open (so a run of
#: pictures, as the demo draws, opens the file once).
Database = str | Path | Store

#: The one-line reason under a grid that shows weak units (docs/method.md §14).
WEAK_NOTE = (
    f"(weak): too little evidence: fewer than {MIN_ACTIVE_TOP} active top images or a largest activation "
    f"below {100 * MIN_MAX_FRACTION:g} % of the layer's median; its indexes are not to be trusted"
)
#: NFs on one page of a layer grid: 16 x 16 tiles of 96 px, a sheet a screen shows at full size.
PER_PAGE = 256


@dataclass(frozen=True)
class Drawn:
    """A picture written: where it went, where each NF tile is in it, and which page of how many."""

    path: Path
    boxes: tuple[pictures.Box, ...]  # (y0, x0, y1, x1) of each NF in the order drawn (a card: its crops
    # after its NF; a heat map: its matrix)
    units: tuple[int, ...]  # the unit of each NF box
    page: int = 1
    pages: int = 1


def nf_png(
    model: str, layer: str, unit: int, output: str | Path, *, db: Database = DEFAULT_DB, scale: int | None = None
) -> Drawn:
    """One neuron's NF, enlarged (nearest neighbour) under a title naming it and its indexes."""
    with reading(db) as store:
        ref, nf, values = queries.neuron_nf(store, model, layer, unit)
    header = [
        queries.neuron_name(ref, unit),
        f"layer {ref.layer}, NF {nf.shape[0]}x{nf.shape[1]} px",
        _card_values(values),
    ]
    picture = pictures.nf_picture(nf, header, scale)
    return Drawn(pictures.write_png(output, picture.image), picture.boxes, (unit,))


def grid_png(
    model: str,
    layer: str,
    output: str | Path,
    *,
    db: Database = DEFAULT_DB,
    order_by: str = "unit",
    descending: bool | None = None,
    limit: int | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
    include_weak: bool = False,
) -> Drawn:
    """Page ``page`` of a layer's NFs in a labelled grid, ``per_page`` at most, ordered by unit or by
    any neurons column (weak units left out unless ``include_weak``); the caption says which units
    (or ranks) of how many the page holds."""
    with reading(db) as store:
        data = queries.layer_nfs(
            store, model, layer, order_by=order_by, descending=descending, limit=limit,
            window=((page - 1) * per_page, per_page), include_weak=include_weak,
        )
    pages = max(1, math.ceil(data.total / per_page))
    if page > pages:
        raise NotFoundError(
            f"there is no page {page}: {data.ref.layer_ref} has {data.total:,} NFs to show, "
            f"{pages} page{'s' if pages > 1 else ''} of {per_page}; choose --page {pages} or lower"
        )
    title = f"{data.ref.layer_ref} ({data.ref.layer}): NFs" + (f" by {data.column}" if data.column else "")
    caption = (f"page {page} of {pages}: " if pages > 1 else "") + _span(data)
    return _write_grid(output, data, title, caption, page, pages)


def top_png(
    model: str, layer: str, by: str, output: str | Path, *, db: Database = DEFAULT_DB, k: int = 16, lowest: bool = False,
    include_weak: bool = False,
) -> Drawn:
    """The NFs of a layer's ``k`` most (or least) selective neurons by column ``by``, with their values
    (weak units left out unless ``include_weak``: docs/method.md §14)."""
    with reading(db) as store:
        column = queries.check_column(store, by, "--by", numeric=True)  # named as top's option, not the grid's
        data = queries.layer_nfs(
            store, model, layer, order_by=column, descending=not lowest, limit=k, only_valued=True, include_weak=include_weak
        )
    which = "lowest" if lowest else "highest"
    title = f"{data.ref.layer_ref}: the {len(data.neurons)} neurons with the {which} {data.column}"
    return _write_grid(output, data, title, _span(data))


def card_png(
    model: str, layer: str, unit: int, output: str | Path, *, db: Database = DEFAULT_DB, top: int = 20,
    image_root: str | Path | None = None,
) -> Drawn:
    """A neuron card (the paper's figure 1): the NF beside its top crops with rank, a/a1 and label;
    ``boxes`` holds the NF's box, then the crops'."""
    with reading(db) as store:
        c = queries.neuron_card(store, model, layer, unit, top, image_root)
    ratio = "a" if c.dead else "a/a1"
    crops = [pictures.Tile(x.crop, (f"#{x.rank}  {x.activation if c.dead else x.relative:.2f}", x.label or "(no label)"))
             for x in c.crops]
    values = c.values
    evidence = class_evidence(values.get("top_class"), values.get("top_class_frequency"),
                              values.get("class_selectivity"), c.concept)
    if evidence:  # the class columns are said in words instead
        values = {k: v for k, v in values.items() if k not in ("top_class", "top_class_frequency", "class_selectivity")}
    header = [
        f"{queries.neuron_name(c.ref, c.unit)} ({c.ref.layer})" + (" — DEAD UNIT" if c.dead else ""),
        *(["dead unit: it never fired on the analysed images, so it has no NF; its stored top list as it is"] if c.dead else []),
        *([f"WEAK, too little evidence: {c.weak}"] if c.weak else []),
        *([c.description] if c.description else []),
        *evidence,
        *([_card_values(values)] if values or not evidence else []),
        *([_saturation_line(c.saturated_top)] if c.saturated_top and c.saturated_top > 1 else []),
        f"top {len(c.crops)} crops (receptive field in the image as fed to the network); under each: rank, {ratio}, label",
    ]
    picture = pictures.card(c.nf, crops, header)
    return Drawn(pictures.write_png(output, picture.image), picture.boxes, (unit,))


def summary_png(
    models: Sequence[str], indexes: Sequence[str], output: str | Path, *, db: Database = DEFAULT_DB
) -> tuple[Path, list[str]]:
    """Per-layer distributions of each index against relative depth, models overlaid; and the indexes left out."""
    with reading(db) as store:
        image, missing = summary_picture(store, models, indexes)
    return pictures.write_png(output, image), missing


def summary_picture(store: Store, models: Sequence[str], indexes: Sequence[str]) -> tuple[Any, list[str]]:
    """The picture of :func:`summary_png` (RGB array) read through an open store, and the indexes left out."""
    data = queries.selectivity_by_depth(store, list(models), list(indexes))
    panels = [
        pictures.Panel(index, tuple(pictures.Series(d.model, d.relative_depth, d.values) for d in dists))
        for index, dists in data.indexes.items()
    ]
    footnote = f"not computed for any of these models: {', '.join(data.missing)}" if data.missing else ""
    return pictures.selectivity_plot(panels, footnote=footnote).image, list(data.missing)


def names_png(models: Sequence[str], output: str | Path, *, db: Database = DEFAULT_DB) -> Path:
    """``summary --names``: per layer of each model, the share of live neurons with each top colour
    and with a concept label, against relative depth; every model in the database when ``models`` is empty."""
    with reading(db) as store:
        for model in models:
            store.model_row(model)  # NotFoundError names the models there are
        layers = names_by_depth(store, list(models))
    if not layers:
        raise NotFoundError(f"{store.path} holds no analysed model; run 'onnx-nfi analyze' first")
    return pictures.write_png(output, names_by_depth_plot(layers).image)


@contextmanager
def reading(db: Database) -> Iterator[Store]:
    """``db`` opened read-only for one picture, or the store the caller holds (left open)."""
    if isinstance(db, Store):
        yield db
        return
    with Store.open(db, read_only=True) as store:
        yield store


def similar_png(result: SimilarResult, output: str | Path) -> Drawn:
    """The query neuron's NF beside its nearest neighbours' NFs, each with its score."""
    q = result.query
    tiles = [pictures.Tile(q.nf, ("query", q.model, f"{q.alias}:{q.unit}"))] + [
        pictures.Tile(h.nf, (f"{result.by} {h.score:.3f}", h.model, f"{h.alias}:{h.unit}")) for h in result.hits
    ]
    title = f"{q.name} and its nearest neurons by {result.by}"
    picture = pictures.grid(tiles, title)
    return Drawn(pictures.write_png(output, picture.image), picture.boxes, (q.unit, *(h.unit for h in result.hits)))


def match_png(result: MatchResult, output: str | Path) -> Drawn:
    """Mean best correlation of A's layers (rows) in B's layers (columns), in depth order, with a red
    dot on each row's best layer (``LayerBest.best_alias``, the one ``match`` reports)."""
    a, b = result.model_a, result.model_b
    marks = [(i, result.aliases_b.index(row.best_alias)) for i, row in enumerate(result.layers) if row.best_alias]
    picture = pictures.heat_map(
        result.heat, result.aliases_a, result.aliases_b,
        (f"{a} layer", f"{b} layer", "mean best correlation (Pearson, probe set)"),
        f"Mean best correlation of {a} neurons in {b} layers\nred dot: the {b} layer that matches each {a} layer best",
        marks,
    )
    return Drawn(pictures.write_png(output, picture.image), picture.boxes, ())


def _saturation_line(tied: int) -> str:
    """Why a saturated neuron's top images are in the order they are (docs/method.md §2)."""
    return (
        f"saturated: {tied} top images share the largest activation; "
        "they are ranked, and their crops placed, by the pre-activation maximum"
    )


def _write_grid(output: str | Path, data: queries.LayerNFs, title: str, caption: str, page: int = 1, pages: int = 1) -> Drawn:
    if any(n.weak for n in data.neurons):
        caption += f" · {WEAK_NOTE}"
    picture = pictures.grid(_tiles(data), title, caption)
    units = tuple(n.unit for n in data.neurons)
    return Drawn(pictures.write_png(output, picture.image), picture.boxes, units, page, pages)


def _span(data: queries.LayerNFs) -> str:
    """Which part of the ordering a grid shows: ``units 256-511 of 1,024`` or ``ranks 1-16 of 640 by …``."""
    first, last = data.neurons[0], data.neurons[-1]
    if data.column is None:
        shown = f"unit {first.unit}" if first is last else f"units {first.unit}-{last.unit}"
        return f"{shown} of {data.available:,}"
    a, b = data.first + 1, data.first + len(data.neurons)
    shown = f"rank {a}" if a == b else f"ranks {a}-{b}"
    text = f"{shown} of {data.available:,} by {data.column}, {'highest' if data.descending else 'lowest'} first"
    if data.weak_left_out:
        text += f"; {data.weak_left_out:,} weak unit{'s' if data.weak_left_out > 1 else ''} left out (--include-weak)"
    return text


def _tiles(data: queries.LayerNFs) -> list[pictures.Tile]:
    """Grid tiles: unit number with how many top images tie at its largest activation (if several), and the ordering column's value."""
    tiles = []
    for n in data.neurons:
        tied = f" ({n.saturated_top} tied)" if n.saturated_top and n.saturated_top > 1 else ""
        caption = [f"unit {n.unit}" + (" (dead)" if n.nf is None else " (weak)" if n.weak else tied)]
        if data.column:
            caption.append(_value(n.value))
        tiles.append(pictures.Tile(n.nf, tuple(caption)))
    return tiles


def _card_values(values: dict[str, Any]) -> str:
    """``color: 0.280   class: 0.739 …``; no-break spaces inside an item, so a wrapped line breaks between items."""
    if not values:
        return "no selectivity index computed yet"
    names = {k: k.replace("_selectivity", "").replace("_", "\u00a0") for k in values}
    return "   ".join(f"{names[k]}:\u00a0{_value(v)}".replace(" ", "\u00a0") for k, v in values.items())


def _value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)
