"""``onnx-nfi sql``, ``probe`` and ``remove``: the commands that read or change the database itself."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from onnx_nfi.cli.common import (
    BatchSize,
    DEFAULT_DB,
    Db,
    LockTimeout,
    ModelName,
    ProgressBars,
    Provider,
    Silent,
    app,
    plain_table,
    print_table,
    render_rows,
    say,
    sigterm_as_ctrl_c,
    user_errors,
    warn,
    wrote,
)
from onnx_nfi.config import AnalyzeConfig

#: Output formats of ``sql`` (parquet is written by DuckDB itself, to a file).
SQL_FORMATS = ("table", "csv", "json", "parquet")


@app.command("sql")
@user_errors
def sql_cmd(
    query: Annotated[str, typer.Argument(metavar="SQL", help="SQL to run, e.g. \"SELECT * FROM layer_summary\".")],
    db: Db = Path(DEFAULT_DB),
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT",
        help="table, csv, json or parquet (parquet needs -o).")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE",
        help="Write to this file instead of stdout.")] = None,
    write: Annotated[bool, typer.Option("--write", help="Open the database writable (default read-only).")] = False,
) -> None:
    """Run SQL against the database (tables: models, images, layers, neurons, top_activations, …)."""
    from onnx_nfi import api

    if fmt not in SQL_FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(SQL_FORMATS)}", param_hint="--format")
    if fmt == "parquet":
        if output is None:
            raise typer.BadParameter("parquet output needs a file: -o result.parquet", param_hint="--format")
        wrote(api.export_parquet(query, output, db=db))
        return
    columns, rows = api.sql(query, db=db, write=write)
    if output:
        output.write_text(plain_table(columns, rows) if fmt == "table" else render_rows(columns, rows, fmt))
    elif fmt == "table":
        print_table(columns, rows)
    else:
        sys.stdout.write(render_rows(columns, rows, fmt))


@app.command("remove")
@user_errors
def remove_cmd(
    model: ModelName,
    db: Db = Path(DEFAULT_DB),
    compact: Annotated[bool, typer.Option("--compact", help="Also rewrite the file to free the space.")] = False,
) -> None:
    """Delete a model's rows everywhere and its vectors from the search indexes."""
    from onnx_nfi import api

    summary = api.remove(model, db=db)
    say(f"Removed {summary.model} ({summary.neurons} neurons) from {db}.")
    warn(summary.warnings)
    if compact:
        compact_and_say(db)
    else:
        say("The file keeps its size until 'onnx-nfi compact' (or remove --compact) rewrites it.")


@app.command("compact")
@user_errors
def compact_cmd(db: Db = Path(DEFAULT_DB)) -> None:
    """Rewrite the database file without the space that removed or replaced rows left behind."""
    compact_and_say(db)


def compact_and_say(db: Path) -> None:
    """Compact ``db`` and print the sizes before and after; SIGTERM stops it as Ctrl-C does, so the
    copy it was making (as large as the database) is removed."""
    from onnx_nfi import api

    with sigterm_as_ctrl_c():
        s = api.compact(db=db)
    say(
        f"Compacted {s.db}: {s.bytes_before / 2**20:.1f} MiB -> {s.bytes_after / 2**20:.1f} MiB "
        f"({max(s.freed, 0) / 2**20:.1f} MiB freed).",
    )


@app.command("import")
@user_errors
def import_cmd(
    other: Annotated[Path, typer.Argument(metavar="DATABASE",
        help="Another onnx-nfi database (e.g. made on another machine).")],
    db: Db = Path(DEFAULT_DB),
    models: Annotated[list[str] | None, typer.Option("--model", metavar="MODEL",
        help="Import only these models (repeatable).")] = None,
) -> None:
    """Copy models analysed in another database into this one (neuron ids and search indexes kept in step)."""
    from onnx_nfi import api

    s = api.import_db(other, models or (), db=db)
    note = "" if s.responses else " (response profiles left out: the databases' probe sets differ)"
    say(f"Imported {', '.join(s.models)} ({s.neurons} neurons) from {other} into {db}{note}.")
    warn(s.warnings)


@app.command("probe")
@user_errors
def probe_cmd(
    images: Annotated[Path | None, typer.Argument(metavar="IMAGES", help="Image folder to draw the probe set from.")] = None,
    size: Annotated[int, typer.Option(
        "--size", metavar="N",
            help="Most images in the probe set (evenly spaced over the sorted files).")] = AnalyzeConfig.probe_size,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing probe set and recompute every model's response profiles.")] = False,
    batch_size: BatchSize = AnalyzeConfig.batch_size,
    provider: Provider = AnalyzeConfig.provider,
    lock_timeout: LockTimeout = AnalyzeConfig.lock_timeout,
    silent: Silent = False,
    db: Db = Path(DEFAULT_DB),
    saved: Annotated[Path | None, typer.Option(
        "--saved", metavar="FILE", help="Write a probe set an earlier probe --force kept when it could not write it.")] = None,
) -> None:
    """Set the database's probe set: the images on which every model's response profiles are measured."""
    from onnx_nfi import api

    with ProgressBars(silent) as bars:
        summary = api.set_probe(images, db=db, size=size, force=force, batch_size=batch_size, provider=provider,
                                progress=bars, lock_timeout=lock_timeout, saved=saved)
    if not summary.changed:
        say(f"The probe set of {db} already is these {summary.images} images; nothing changed.")
        return
    redone = f"; recomputed the response profiles of {', '.join(summary.recomputed)}" if summary.recomputed else ""
    say(f"Probe set of {db}: {summary.images} images{redone}.")
    warn(summary.warnings)
