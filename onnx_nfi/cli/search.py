"""``onnx-nfi similar`` and ``match``: search across layers and models."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from onnx_nfi.cli.common import (
    DEFAULT_DB,
    Db,
    LockTimeout,
    app,
    console,
    layer_patterns,
    out,
    print_table,
    render_rows,
    say,
    user_errors,
    wrote,
)
from onnx_nfi.config import AnalyzeConfig
from onnx_nfi.names import INDEX_COLUMNS, VECTOR_KINDS, VECTORS

FORMATS = ("table", "json", "csv")
#: The layers ``similar`` looks for neighbours in.
NeighbourLayers = layer_patterns("Only neighbours in these layers")


@app.command("similar")
@user_errors
def similar_cmd(
    neuron: Annotated[str, typer.Argument(metavar="NEURON", 
        help="The query neuron, MODEL:LAYER:UNIT (LAYER: alias such as conv3, or tensor name).")],
    by: Annotated[str, typer.Option(
        "--by", metavar="KIND", help=f"Vector compared: {', '.join(f'{v.name} ({v.help})' for v in VECTORS.values())}.")] = "response",
    k: Annotated[int, typer.Option("-k", metavar="K", min=1, help="How many neighbours.")] = 10,
    models: Annotated[list[str] | None, typer.Option(
        "--models", metavar="MODELS", help="Only neighbours in these models (comma-separated or repeated).")] = None,
    layers: NeighbourLayers = None,
    other_models: Annotated[bool, typer.Option("--other-models", help="Leave out the query's own model.")] = False,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="table, json or csv.")] = "table",
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", metavar="FILE", help="Also draw the query NF beside its neighbours' NFs (PNG).")] = None,
    db: Db = Path(DEFAULT_DB),
    include_weak: Annotated[bool, typer.Option(
        "--include-weak", help="Weak units (too little evidence) as hits too.")] = False,
) -> None:
    """The neurons most similar to one neuron, across layers and models."""
    from onnx_nfi import api
    from onnx_nfi.config import parse_list

    if by not in VECTOR_KINDS:
        raise typer.BadParameter(f"use one of {', '.join(VECTOR_KINDS)}", param_hint="--by")
    if fmt not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    result = api.similar(neuron, db=db, by=by, k=k, models=parse_list(models), layers=parse_list(layers),
                         other_models=other_models, picture=output,
                         include_weak=include_weak)
    if fmt == "table":
        shown = [c for c in INDEX_COLUMNS if any(h.indexes[c] is not None for h in result.hits)]
        say(f"Neurons most similar to {result.query.name} by {by}:")
        print_table(
            ["model", "layer", "unit", "score", "top_class", *shown],
            [(h.model, h.alias, str(h.unit), f"{h.score:.4f}", h.top_class or "", *(_num(h.indexes[c]) for c in shown))
             for h in result.hits],
        )
    else:
        columns = ["model", "layer", "alias", "unit", "neuron_id", "score", "top_class", *INDEX_COLUMNS]
        rows = [
            (h.model, h.layer, h.alias, h.unit, h.neuron_id, h.score, h.top_class, *(h.indexes[c] for c in INDEX_COLUMNS))
            for h in result.hits
        ]
        sys.stdout.write(render_rows(columns, rows, fmt))
    if output is not None:
        wrote(output, out if fmt == "table" else console)  # json/csv on stdout stay parseable


@app.command("match")
@user_errors
def match_cmd(
    model_a: Annotated[str, typer.Argument(metavar="MODEL_A", help="Model whose neurons are matched.")],
    model_b: Annotated[str, typer.Argument(metavar="MODEL_B", help="Model they are matched in.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", metavar="FILE", help="Heat map of mean best correlation, layer by layer (PNG).")] = None,
    db: Db = Path(DEFAULT_DB),
    lock_timeout: LockTimeout = AnalyzeConfig.lock_timeout,
    saved: Annotated[Path | None, typer.Option(
        "--saved", metavar="FILE", help="Write the matches an earlier match kept when it could not write them.")] = None,
) -> None:
    """Match every neuron of MODEL_A to MODEL_B by response correlation (results in neuron_matches)."""
    from onnx_nfi import api

    result = api.match(model_a, model_b, output, db=db, lock_timeout=lock_timeout, saved=saved)
    print_table(
        [f"{model_a} layer", "neurons", f"best {model_b} layer", "mean best corr", "mean one-to-one"],
        [(row.alias, str(row.neurons), row.best_alias or "-", _num(row.mean_best), _num(row.mean_one_to_one))
         for row in result.layers],
    )
    say(
        f"Mean best correlation of {model_a}'s neurons in {model_b}: {result.mean_best:.3f}. Stored "
        f"{result.best_rows} best matches and {result.one_to_one_rows} one-to-one pairs in neuron_matches.",
    )
    if result.picture is not None:
        wrote(result.picture)


def _num(value: float | None) -> str:
    return "NULL" if value is None or math.isnan(value) else f"{value:.3f}"
