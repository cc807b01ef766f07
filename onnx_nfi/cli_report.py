"""``onnx-nfi`` commands for the report verbs; registered on ``onnx_nfi.cli.app`` when imported.

Each command reads what it needs from the database (``onnx_nfi.report.queries``), renders it
(``onnx_nfi.report.pictures``) and prints where the PNG went. matplotlib is imported inside the
commands so that ``--help`` and the other verbs stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from onnx_nfi.cli import DB_OPTION, app, out, user_errors
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.schema import INDEX_COLUMNS

OUTPUT = typer.Option(..., "-o", "--output", help="PNG file to write.")


@app.command("nf")
@user_errors
def nf_cmd(
    model: str = typer.Argument(..., help="Model name in the database."),
    layer: str = typer.Argument(..., help="Layer alias (conv3) or tensor name."),
    unit: int | None = typer.Argument(None, help="Unit (channel) number; leave out with --grid."),
    output: Path = OUTPUT,
    db: Path = DB_OPTION,
    grid: bool = typer.Option(False, "--grid", help="All NFs of the layer in a labelled grid."),
    scale: int | None = typer.Option(
        None, "--scale", min=1, help="Enlargement factor of a single NF (default: to >= 256 px)."
    ),
    order_by: str = typer.Option(
        "unit", "--order-by", help="Grid order: unit or any neurons column (e.g. color_selectivity)."
    ),
    desc: bool | None = typer.Option(
        None, "--desc/--asc", help="Grid order direction (default: ascending units, descending columns)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Show only the first K neurons of the grid."),
) -> None:
    """Draw one neuron's NF enlarged, or with --grid a layer's NFs in a labelled grid."""
    from onnx_nfi.report import pictures, queries

    if grid == (unit is not None):
        raise typer.BadParameter("give either a UNIT or --grid", param_hint="UNIT")
    with Store.open(db, read_only=True) as store:
        if grid:
            data = queries.layer_nfs(store, model, layer, order_by=order_by, descending=desc, limit=limit)
        else:
            _, nf = queries.neuron_nf(store, model, layer, unit)  # type: ignore[arg-type]
    if grid:
        title = f"{data.ref.model} / {data.ref.alias} ({data.ref.layer}): NFs" + (
            f" by {data.column}" if data.column else ""
        )
        picture = pictures.grid(_tiles(data), title)
    else:
        picture = pictures.nf_picture(nf, scale)
    out.print(f"Wrote {pictures.write_png(output, picture.image)}", highlight=False)


@app.command("top")
@user_errors
def top_cmd(
    model: str = typer.Argument(..., help="Model name in the database."),
    layer: str = typer.Argument(..., help="Layer alias (conv3) or tensor name."),
    by: str = typer.Option(..., "--by", help="Neurons column to rank by, e.g. color_selectivity or class_selectivity."),
    k: int = typer.Option(16, "-k", "--top", min=1, help="How many neurons."),
    asc: bool = typer.Option(False, "--asc", help="The least selective instead of the most."),
    output: Path = OUTPUT,
    db: Path = DB_OPTION,
) -> None:
    """Draw the NFs of a layer's most selective neurons with their values."""
    from onnx_nfi.report import pictures, queries

    with Store.open(db, read_only=True) as store:
        data = queries.layer_nfs(store, model, layer, order_by=by, descending=not asc, limit=k, only_valued=True)
    which = "lowest" if asc else "highest"
    title = f"{data.ref.model} / {data.ref.alias}: the {len(data.neurons)} neurons with the {which} {data.column}"
    picture = pictures.grid(_tiles(data), title)
    out.print(f"Wrote {pictures.write_png(output, picture.image)}", highlight=False)


@app.command("card")
@user_errors
def card_cmd(
    model: str = typer.Argument(..., help="Model name in the database."),
    layer: str = typer.Argument(..., help="Layer alias (conv3) or tensor name."),
    unit: int = typer.Argument(..., help="Unit (channel) number."),
    output: Path = OUTPUT,
    db: Path = DB_OPTION,
    top: int = typer.Option(20, "--top", min=1, help="How many top images to show."),
) -> None:
    """Draw a neuron card: the NF beside its top image crops with rank, label and a_j/a_1 (paper's figure 1)."""
    from onnx_nfi.report import pictures, queries

    with Store.open(db, read_only=True) as store:
        c = queries.neuron_card(store, model, layer, unit, top)
    crops = [pictures.Tile(x.crop, (f"#{x.rank}  {x.relative:.2f}", x.label or "(no label)")) for x in c.crops]
    header = [f"{c.ref.model} / {c.ref.alias} ({c.ref.layer}) / unit {c.unit}", _card_values(c.values)]
    header.append(
        f"top {len(c.crops)} crops (receptive field in the image as fed to the network); under each: rank, a/a1, label"
    )
    picture = pictures.card(c.nf, crops, header)
    out.print(f"Wrote {pictures.write_png(output, picture.image)}", highlight=False)


@app.command("summary")
@user_errors
def summary_cmd(
    models: list[str] | None = typer.Argument(None, help="Model names (default: every model in the database)."),
    output: Path = OUTPUT,
    db: Path = DB_OPTION,
    indexes: str = typer.Option(
        ",".join(INDEX_COLUMNS), "--indexes", help="Comma-separated neurons columns, one panel each."
    ),
) -> None:
    """Draw each index's per-layer distribution against relative depth, models overlaid."""
    from onnx_nfi.report import pictures, queries

    names = [i.strip() for i in indexes.split(",") if i.strip()]
    if not names:
        raise typer.BadParameter("name at least one index column", param_hint="--indexes")
    with Store.open(db, read_only=True) as store:
        data = queries.selectivity_by_depth(store, models or [], names)
    panels = [
        pictures.Panel(index, tuple(pictures.Series(d.model, d.relative_depth, d.values) for d in dists))
        for index, dists in data.indexes.items()
    ]
    for index in data.missing:
        out.print(
            f"Note: {index} has no value in any model; left out (compute it with onnx-nfi index).", highlight=False
        )
    footnote = f"not computed for any of these models: {', '.join(data.missing)}" if data.missing else ""
    picture = pictures.selectivity_plot(panels, footnote=footnote)
    out.print(f"Wrote {pictures.write_png(output, picture.image)}", highlight=False)


def _tiles(data: Any) -> list[Any]:
    """Grid tiles of a ``LayerNFs``: unit number, and the ordering column's value, under each."""
    from onnx_nfi.report import pictures

    tiles = []
    for n in data.neurons:
        caption = [f"unit {n.unit}" + (" (dead)" if n.nf is None else "")]
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
