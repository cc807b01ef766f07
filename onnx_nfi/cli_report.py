"""``onnx-nfi`` picture commands; registered on ``onnx_nfi.cli.app`` when imported.

Each parses its options, makes one ``onnx_nfi.report.render`` call and prints where the PNG went.
The rendering modules (matplotlib) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from onnx_nfi.cli import DB_OPTION, app, out, user_errors, wrote
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
    from onnx_nfi.report import render

    if grid == (unit is not None):
        raise typer.BadParameter("give either a UNIT or --grid", param_hint="UNIT")
    if grid:
        path = render.grid_png(model, layer, output, db, order_by=order_by, descending=desc, limit=limit)
    else:
        path = render.nf_png(model, layer, unit, output, db, scale)  # type: ignore[arg-type]
    wrote(path)


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
    from onnx_nfi.report import render

    wrote(render.top_png(model, layer, by, output, db, k=k, lowest=asc))


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
    from onnx_nfi.report import render

    wrote(render.card_png(model, layer, unit, output, db, top=top))


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
    from onnx_nfi.report import render

    names = [i.strip() for i in indexes.split(",") if i.strip()]
    if not names:
        raise typer.BadParameter("name at least one index column", param_hint="--indexes")
    path, missing = render.summary_png(models or [], names, output, db)
    for index in missing:
        out.print(f"Note: {index} has no value in any model; left out (compute it with onnx-nfi index).", highlight=False)
    wrote(path)
