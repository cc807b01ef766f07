"""The picture verbs: read a database (or a search result), draw, write a PNG.

``onnx-nfi nf/top/card/summary`` call the first four: each opens the store read-only, makes one
``queries`` call, lays the result out with ``pictures`` and returns the path written (``summary``
also returns the indexes it left out). ``similar_png`` and ``match_png`` draw search results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnx_nfi.report import pictures, queries
from onnx_nfi.search.records import MatchResult, SimilarResult
from onnx_nfi.store.duckdb_store import DEFAULT_DB, Store


def nf_png(model: str, layer: str, unit: int, output: str | Path, db: str | Path = DEFAULT_DB, scale: int | None = None) -> Path:
    """One neuron's NF, enlarged (nearest neighbour) for viewing."""
    with Store.open(db, read_only=True) as store:
        _, nf = queries.neuron_nf(store, model, layer, unit)
    return pictures.write_png(output, pictures.nf_picture(nf, scale).image)


def grid_png(
    model: str,
    layer: str,
    output: str | Path,
    db: str | Path = DEFAULT_DB,
    *,
    order_by: str = "unit",
    descending: bool | None = None,
    limit: int | None = None,
) -> Path:
    """A layer's NFs in a labelled grid, ordered by unit or by any neurons column."""
    with Store.open(db, read_only=True) as store:
        data = queries.layer_nfs(store, model, layer, order_by=order_by, descending=descending, limit=limit)
    title = f"{data.ref.model} / {data.ref.alias} ({data.ref.layer}): NFs" + (f" by {data.column}" if data.column else "")
    return pictures.write_png(output, pictures.grid(_tiles(data), title).image)


def top_png(
    model: str, layer: str, by: str, output: str | Path, db: str | Path = DEFAULT_DB, *, k: int = 16, lowest: bool = False
) -> Path:
    """The NFs of a layer's ``k`` most (or least) selective neurons by column ``by``, with their values."""
    with Store.open(db, read_only=True) as store:
        data = queries.layer_nfs(store, model, layer, order_by=by, descending=not lowest, limit=k, only_valued=True)
    which = "lowest" if lowest else "highest"
    title = f"{data.ref.model} / {data.ref.alias}: the {len(data.neurons)} neurons with the {which} {data.column}"
    return pictures.write_png(output, pictures.grid(_tiles(data), title).image)


def card_png(
    model: str, layer: str, unit: int, output: str | Path, db: str | Path = DEFAULT_DB, *, top: int = 20,
    image_root: str | Path | None = None,
) -> Path:
    """A neuron card (the paper's figure 1): the NF beside its top crops with rank, a/a1 and label."""
    with Store.open(db, read_only=True) as store:
        c = queries.neuron_card(store, model, layer, unit, top, image_root)
    crops = [pictures.Tile(x.crop, (f"#{x.rank}  {x.relative:.2f}", x.label or "(no label)")) for x in c.crops]
    header = [
        f"{c.ref.model} / {c.ref.alias} ({c.ref.layer}) / unit {c.unit}",
        _card_values(c.values),
        *([_saturation_line(c.saturated_top)] if c.saturated_top and c.saturated_top > 1 else []),
        f"top {len(c.crops)} crops (receptive field in the image as fed to the network); under each: rank, a/a1, label",
    ]
    return pictures.write_png(output, pictures.card(c.nf, crops, header).image)


def summary_png(
    models: Sequence[str], indexes: Sequence[str], output: str | Path, db: str | Path = DEFAULT_DB
) -> tuple[Path, list[str]]:
    """Per-layer distributions of each index against relative depth, models overlaid; and the indexes left out."""
    with Store.open(db, read_only=True) as store:
        data = queries.selectivity_by_depth(store, list(models), list(indexes))
    panels = [
        pictures.Panel(index, tuple(pictures.Series(d.model, d.relative_depth, d.values) for d in dists))
        for index, dists in data.indexes.items()
    ]
    footnote = f"not computed for any of these models: {', '.join(data.missing)}" if data.missing else ""
    return pictures.write_png(output, pictures.selectivity_plot(panels, footnote=footnote).image), list(data.missing)


def similar_png(result: SimilarResult, output: str | Path) -> Path:
    """The query neuron's NF beside its nearest neighbours' NFs, each with its score."""
    q = result.query
    tiles = [pictures.Tile(q.nf, ("query", q.model, f"{q.alias}:{q.unit}"))] + [
        pictures.Tile(h.nf, (f"{result.by} {h.score:.3f}", h.model, f"{h.alias}:{h.unit}")) for h in result.hits
    ]
    title = f"{q.name} and its nearest neurons by {result.by}"
    return pictures.write_png(output, pictures.grid(tiles, title, columns=min(len(tiles), 6)).image)


def match_png(result: MatchResult, output: str | Path) -> Path:
    """Mean best correlation of A's layers (rows) in B's layers (columns), in depth order."""
    a, b = result.model_a, result.model_b
    picture = pictures.heat_map(
        result.heat, result.aliases_a, result.aliases_b, f"{a} layer", f"{b} layer",
        f"Mean best correlation of {a} neurons in {b} layers", "mean best correlation (Pearson, probe set)",
    )
    return pictures.write_png(output, picture.image)


def _saturation_line(tied: int) -> str:
    """Why a saturated neuron's top images are in the order they are (docs/method.md §2)."""
    return (
        f"saturated: {tied} top images share the largest activation; "
        "they are ranked, and their crops placed, by the pre-activation maximum"
    )


def _tiles(data: queries.LayerNFs) -> list[pictures.Tile]:
    """Grid tiles: unit number with how many top images tie at its largest activation (if several), and the ordering column's value."""
    tiles = []
    for n in data.neurons:
        tied = f" ({n.saturated_top} tied)" if n.saturated_top and n.saturated_top > 1 else ""
        caption = [f"unit {n.unit}" + (" (dead)" if n.nf is None else tied)]
        if data.column:
            caption.append(_value(n.value))
        tiles.append(pictures.Tile(n.nf, tuple(caption)))
    return tiles


def _card_values(values: dict[str, Any]) -> str:
    if not values:
        return "no selectivity index computed yet"
    return "   ".join(f"{k.replace('_selectivity', '').replace('_', ' ')}: {_value(v)}" for k, v in values.items())


def _value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)
