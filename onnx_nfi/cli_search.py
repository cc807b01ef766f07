"""``onnx-nfi`` commands for the search verbs; registered on ``onnx_nfi.cli.app`` when imported.

Each is a translator over ``onnx_nfi.search``: parse, one call, render.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer
from rich.table import Table

from onnx_nfi import search
from onnx_nfi.cli import DB_OPTION, ProgressBars, app, console, out, render_rows, user_errors, wrote
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.neurons.similarity import KINDS
from onnx_nfi.store.schema import INDEX_COLUMNS

FORMATS = ("table", "json", "csv")


@app.command("similar")
@user_errors
def similar_cmd(
    neuron: str = typer.Argument(..., help="The query neuron, MODEL:LAYER:UNIT (LAYER: alias such as conv3, or tensor name)."),
    by: str = typer.Option("response", "--by", help="Vector compared: response (profile over the probe set), nf or indexes."),
    k: int = typer.Option(10, "-k", min=1, help="How many neighbours."),
    models: list[str] = typer.Option(None, "--models", help="Only neurons of these models (repeat the option)."),
    layers: list[str] = typer.Option(None, "--layers", help="Only these layers: aliases, tensor names or globs."),
    other_models: bool = typer.Option(False, "--other-models", help="Leave out the query's own model."),
    fmt: str = typer.Option("table", "--format", help="table, json or csv."),
    output: Path = typer.Option(None, "-o", "--output", help="Also draw the query NF beside its neighbours' NFs (PNG)."),
    db: Path = DB_OPTION,
) -> None:
    """The neurons most similar to one neuron, across layers and models."""
    if by not in KINDS:
        raise typer.BadParameter(f"use one of {', '.join(KINDS)}", param_hint="--by")
    if fmt not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    result = search.similar(db, neuron, by=by, k=k, models=models or (), layers=layers or (), other_models=other_models)
    shown = [c for c in INDEX_COLUMNS if any(h.indexes[c] is not None for h in result.hits)]
    if fmt == "table":
        table = Table("model", "layer", "unit", "score", "top_class", *shown, box=None)
        for h in result.hits:
            table.add_row(h.model, h.alias, str(h.unit), f"{h.score:.4f}", h.top_class or "", *(_num(h.indexes[c]) for c in shown))
        out.print(f"Neurons most similar to {result.query.name} by {by}:", highlight=False)
        out.print(table)
    else:
        columns = ["model", "layer", "alias", "unit", "neuron_id", "score", "top_class", *INDEX_COLUMNS]
        rows = [
            (h.model, h.layer, h.alias, h.unit, h.neuron_id, h.score, h.top_class, *(h.indexes[c] for c in INDEX_COLUMNS))
            for h in result.hits
        ]
        sys.stdout.write(render_rows(columns, rows, fmt))
    if output is not None:
        from onnx_nfi.report import pictures

        tiles = [pictures.Tile(result.query.nf, ("query", result.query.model, f"{result.query.alias}:{result.query.unit}"))] + [
            pictures.Tile(h.nf, (f"{by} {h.score:.3f}", h.model, f"{h.alias}:{h.unit}")) for h in result.hits
        ]
        picture = pictures.grid(tiles, f"{result.query.name} and its nearest neurons by {by}", columns=min(len(tiles), 6))
        path = pictures.write_png(output, picture.image)
        wrote(path, out if fmt == "table" else console)  # json/csv on stdout stay parseable


@app.command("match")
@user_errors
def match_cmd(
    model_a: str = typer.Argument(..., help="Model whose neurons are matched."),
    model_b: str = typer.Argument(..., help="Model they are matched in."),
    output: Path = typer.Option(None, "-o", "--output", help="Heat map of mean best correlation, layer by layer (PNG)."),
    db: Path = DB_OPTION,
) -> None:
    """Match every neuron of MODEL_A to MODEL_B by response correlation (results in neuron_matches)."""
    result = search.match(db, model_a, model_b, output)
    table = Table(f"{model_a} layer", "neurons", f"best {model_b} layer", "mean best corr", "mean one-to-one", box=None)
    for row in result.layers:
        table.add_row(
            row.alias, str(row.neurons), row.best_alias or "-", _num(row.mean_best), _num(row.mean_one_to_one)
        )
    out.print(table)
    out.print(
        f"Mean best correlation of {model_a}'s neurons in {model_b}: {result.mean_best:.3f}. Stored "
        f"{result.best_rows} best matches and {result.one_to_one_rows} one-to-one pairs in neuron_matches.",
        highlight=False,
    )
    if result.picture is not None:
        wrote(result.picture)


@app.command("remove")
@user_errors
def remove_cmd(
    model: str = typer.Argument(..., help="Model name in the database."),
    db: Path = DB_OPTION,
) -> None:
    """Delete a model's rows everywhere and its vectors from the search indexes."""
    summary = search.remove(db, model)
    out.print(f"Removed {summary.model} ({summary.neurons} neurons) from {db}.", highlight=False)


@app.command("probe")
@user_errors
def probe_cmd(
    images: Path = typer.Argument(..., help="Image folder to draw the probe set from."),
    size: int = typer.Option(AnalyzeConfig.probe_size, "--size", min=1, help="Most images in the probe set (evenly spaced over the sorted files)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing probe set and recompute every model's response profiles."),
    batch_size: int = typer.Option(AnalyzeConfig.batch_size, "--batch-size", min=1, help="Images per forward pass when recomputing."),
    provider: str = typer.Option(AnalyzeConfig.provider, "--provider", help="onnxruntime provider when recomputing."),
    silent: bool = typer.Option(False, "--silent", help="No progress bars."),
    db: Path = DB_OPTION,
) -> None:
    """Set the database's probe set: the images on which every model's response profiles are measured."""
    with ProgressBars(silent) as bars:
        summary = search.set_probe(db, images, size=size, force=force, batch_size=batch_size, provider=provider, progress=bars)
    if not summary.changed:
        out.print(f"The probe set of {db} already is these {summary.images} images; nothing changed.", highlight=False)
        return
    redone = f"; recomputed the response profiles of {', '.join(summary.recomputed)}" if summary.recomputed else ""
    out.print(f"Probe set of {db}: {summary.images} images{redone}.", highlight=False)


def _num(value: float | None) -> str:
    return "NULL" if value is None or math.isnan(value) else f"{value:.3f}"
