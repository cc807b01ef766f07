"""``onnx-nfi query`` and ``onnx-nfi where``: put a new image to an analysed model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from onnx_nfi.cli.common import (
    DEFAULT_DB, Db, MaxPixels, ProgressBars, Provider, Silent, app, console, layer_patterns, out, print_table, say,
    user_errors, wrote,
)
from onnx_nfi.config import DEFAULT_MAX_PIXELS

ModelFile = Annotated[Path | None, typer.Option(
    "--model-file", metavar="FILE", help="The analysed .onnx file, when it moved (checked against the stored hash).")]
QueriedLayers = layer_patterns("Only neurons of these layers")
ImagePixels = Annotated[int, typer.Option("--max-pixels", metavar="PIXELS", help=(
    "Largest image in pixels, read from the file header before decoding; a larger one is refused."))]


@app.command("query")
@user_errors
def query_cmd(
    image: Annotated[Path, typer.Argument(metavar="IMAGE",
        help="An image file, or a folder of images (then give --out).")],
    model: Annotated[str, typer.Option("--model", metavar="MODEL", help="Model name in the database.")],
    box: Annotated[str | None, typer.Option(
        "--box", metavar="X0,Y0,X1,Y1",
            help="Only this region: X0,Y0,X1,Y1 in the image's pixels (default: the whole image).")] = None,
    layers: QueriedLayers = None,
    k: Annotated[int, typer.Option("-k", metavar="K",
        min=1, help="How many neurons (per layer with --per-layer).")] = 20,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="The best k of each layer, not overall.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per neuron on stdout.")] = False,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", metavar="FILE",
            help="Draw the image, its box and the top neurons' NFs and response maps (PNG).")] = None,
    table: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="For a folder: the table of each image's top k (.parquet or .csv).")] = None,
    model_file: ModelFile = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    provider: Provider = "auto",
    db: Db = Path(DEFAULT_DB),
    silent: Silent = False,
) -> None:
    """Which neurons of MODEL fire on IMAGE (or on --box of it), by response relative to their top-1 score."""
    from onnx_nfi import api
    from onnx_nfi.config import parse_list

    chosen = parse_list(layers)
    if image.is_dir():
        if table is None:
            raise typer.BadParameter("a folder's results go to a table: give --out FILE.parquet or FILE.csv", param_hint="--out")
        if box or output or as_json:
            raise typer.BadParameter("--box, -o and --json are for one image; a folder's results go to --out")
        with ProgressBars(silent) as bars:
            s = api.query_folder(image, model, table, db=db, layers=chosen, k=k, per_layer=per_layer,
                                 model_file=model_file, max_pixels=max_pixels, provider=provider, progress=bars)
        say(f"{s.rows} rows for {s.images} image(s); {len(s.skipped)} skipped.")
        for path, reason in s.skipped:
            console.print(f"  skipped {path}: {reason}", highlight=False, markup=False)
        wrote(s.output)
        return
    if table is not None:
        raise typer.BadParameter("--out writes the table of a folder of images; for one image use --json or -o", param_hint="--out")
    result = api.query(image, model, db=db, box=_box(box), layers=chosen, k=k, per_layer=per_layer, picture=output,
                       model_file=model_file, max_pixels=max_pixels, provider=provider)
    if as_json:
        for h in result.hits:
            out.print(json.dumps(h.as_dict()), highlight=False, markup=False, soft_wrap=True)
    else:
        say(f"Neurons of {model} firing on {image.name}" + (f" in box {box}" if box else "") + ", by relative response:")
        print_table(
            ["neuron", "response", "relative", "top-N %", "rank", "cell"],
            [(h.neuron, f"{h.response:.4g}", f"{h.relative:.3f}", f"{h.percentile:.0f}", str(h.rank), f"{h.cell[0]},{h.cell[1]}")
             for h in result.hits],
        )
    if result.picture is not None:
        wrote(result.picture, console if as_json else out)


@app.command("where")
@user_errors
def where_cmd(
    neuron: Annotated[str, typer.Argument(metavar="NEURON",
        help="MODEL:LAYER:UNIT (LAYER: alias such as conv3, or tensor name).")],
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The image file.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="PNG file to write.")],
    model_file: ModelFile = None,
    max_pixels: ImagePixels = DEFAULT_MAX_PIXELS,
    provider: Provider = "auto",
    db: Db = Path(DEFAULT_DB),
) -> None:
    """Where on IMAGE a neuron fires: its activation map over the image, the field of its maximum outlined."""
    from onnx_nfi import api

    result = api.where(neuron, image, output, db=db, model_file=model_file, max_pixels=max_pixels, provider=provider)
    say(f"{result.neuron}: largest response {result.response:.4g} at map cell {result.cell[0]},{result.cell[1]}.")
    wrote(result.picture)


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    """``X0,Y0,X1,Y1`` as four numbers."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise typer.BadParameter(f"write X0,Y0,X1,Y1 in the image's pixels, e.g. 10,20,110,120 (got {text!r})", param_hint="--box")
    return values  # type: ignore[return-value]
