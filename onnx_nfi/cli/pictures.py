"""``onnx-nfi nf``, ``top``, ``card`` and ``summary``: pictures drawn from the database.

A layer grid is drawn a page at a time (``--page``, ``--per-page``), so every NF keeps a tile
large enough to see, however many units the layer has.

Each parses its options, makes one ``onnx_nfi.api`` call and prints where the PNG went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnx_nfi.cli.common import DEFAULT_DB, Db, ImageRoot, ModelName, Png, app, neuron_arguments, say, user_errors, wrote
from onnx_nfi.config import parse_list
from onnx_nfi.names import INDEX_COLUMNS

Neuron = Annotated[str, typer.Argument(
    help="The neuron as MODEL:LAYER:UNIT (LAYER: alias such as conv3, or tensor name), or the model name "
         "followed by LAYER and UNIT.", metavar="NEURON")]
Layer = Annotated[str | None, typer.Argument(
    metavar="LAYER", help="Layer alias (conv3) or tensor name, when NEURON is a model name.")]
Layer1 = Annotated[str, typer.Argument(metavar="LAYER", help="Layer alias (conv3) or tensor name.")]
IncludeWeak = Annotated[bool, typer.Option(
    "--include-weak", help="Rank weak units too (too little evidence: few active top images or a faint maximum).")]


@app.command("nf")
@user_errors
def nf_cmd(
    neuron: Neuron,
    layer: Layer = None,
    unit: Annotated[int | None, typer.Argument(metavar="UNIT",
        help="Unit (channel) number; leave out with --grid.")] = None,
    output: Png = ...,  # type: ignore[assignment]
    db: Db = Path(DEFAULT_DB),
    grid: Annotated[bool, typer.Option("--grid", help="The layer's NFs in a labelled grid, a page at a time (--page, --per-page).")] = False,
    scale: Annotated[int | None, typer.Option(
        "--scale", metavar="FACTOR", min=1, help="Enlargement factor of a single NF (default: to >= 256 px).")] = None,
    order_by: Annotated[str, typer.Option(
        "--order-by", metavar="COLUMN",
            help="Grid order: unit or any neurons column (e.g. color_selectivity).")] = "unit",
    desc: Annotated[bool | None, typer.Option(
        "--desc/--asc", help="Grid order direction (default: ascending units, descending columns).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", metavar="K",
        min=1, help="Show only the first K neurons of the grid.")] = None,
    page: Annotated[int | None, typer.Option("--page", metavar="N",
        min=1, help="Which page of the grid to draw (default 1).")] = None,
    per_page: Annotated[int | None, typer.Option(
        "--per-page", metavar="N",
            min=1, help="NFs on one page of the grid (default 256: a 1,280-unit layer is 5 pages).")] = None,
    include_weak: IncludeWeak = False,
) -> None:
    """Draw one neuron's NF enlarged, or with --grid a page of a layer's NFs in a labelled grid (NEURON: MODEL:LAYER)."""
    from onnx_nfi import api

    model, layer_name, unit = neuron_arguments(neuron, layer, unit, unit_needed=not grid)
    if grid == (unit is not None):
        raise typer.BadParameter("give either a UNIT or --grid", param_hint="UNIT")
    if not grid:
        if page is not None or per_page is not None:
            raise typer.BadParameter("pages are for --grid; a single NF is one picture", param_hint="--page")
        wrote(api.nf(f"{model}:{layer_name}:{unit}", output, db=db, scale=scale).path)
        return
    drawn = api.grid(
        model, layer_name, output, db=db, order_by=order_by, descending=desc, limit=limit, page=page or 1, per_page=per_page,
        include_weak=include_weak,
    )
    wrote(drawn.path)
    if drawn.pages > 1:
        following = f"; --page {drawn.page + 1} draws the next" if drawn.page < drawn.pages else ""
        say(f"Page {drawn.page} of {drawn.pages}{following}.")


@app.command("top")
@user_errors
def top_cmd(
    model: ModelName,
    layer: Layer1,
    by: Annotated[str, typer.Option(
        "--by", metavar="COLUMN", help=f"Neurons column to rank by: an index ({', '.join(INDEX_COLUMNS)}; color is short for "
                     "color_selectivity) or another neurons column.")],
    k: Annotated[int, typer.Option("-k", "--top", metavar="K", min=1, help="How many neurons to draw.")] = 16,
    asc: Annotated[bool, typer.Option("--asc", help="The least selective instead of the most.")] = False,
    output: Png = ...,  # type: ignore[assignment]
    db: Db = Path(DEFAULT_DB),
    include_weak: IncludeWeak = False,
) -> None:
    """Draw the NFs of a layer's most selective neurons with their values."""
    from onnx_nfi import api

    wrote(api.top(model, layer, by, output, db=db, k=k, lowest=asc, include_weak=include_weak).path)


@app.command("card")
@user_errors
def card_cmd(
    neuron: Neuron,
    layer: Layer = None,
    unit: Annotated[int | None, typer.Argument(metavar="UNIT",
        help="Unit (channel) number, when NEURON is a model name.")] = None,
    output: Png = ...,  # type: ignore[assignment]
    db: Db = Path(DEFAULT_DB),
    top: Annotated[int, typer.Option("--top", metavar="K", min=1, help="How many top images to show.")] = 20,
    image_root: ImageRoot = None,
) -> None:
    """Draw a neuron card: the NF beside its top image crops with rank, label and a_j/a_1 (paper's figure 1)."""
    from onnx_nfi import api

    model, layer_name, number = neuron_arguments(neuron, layer, unit, unit_needed=True)
    if number is None:
        raise typer.BadParameter("name the unit: MODEL:LAYER:UNIT", param_hint="NEURON")
    wrote(api.card(f"{model}:{layer_name}:{number}", output, db=db, top=top, image_root=image_root).path)


@app.command("summary")
@user_errors
def summary_cmd(
    models: Annotated[list[str] | None, typer.Argument(metavar="MODEL...",
        help="Model names (default: every model in the database).")] = None,
    output: Png = ...,  # type: ignore[assignment]
    db: Db = Path(DEFAULT_DB),
    indexes: Annotated[str, typer.Option(
        "--indexes", metavar="COLUMNS",
            help="Comma-separated neurons columns, one panel each.")] = ",".join(INDEX_COLUMNS),
    names: Annotated[bool, typer.Option(
        "--names", help="Draw instead, per layer, the share of live neurons with each top colour and with a concept "
                        "label, one panel per model (colour names: --indexes color_names when analysing).")] = False,
) -> None:
    """Draw each index's per-layer distribution against relative depth, models overlaid (--names: colours and concepts)."""
    from onnx_nfi import api

    columns = parse_list(indexes)
    if not columns and not names:
        raise typer.BadParameter("name at least one index column", param_hint="--indexes")
    drawn = api.summary(output, models or (), columns, db=db, names=names)
    for index in drawn.missing:
        say(f"Note: {index} has no value in any model; left out (compute it with onnx-nfi index).")
    wrote(drawn.path)
