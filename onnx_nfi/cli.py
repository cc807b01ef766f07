"""``onnx-nfi``: a thin typer layer over ``onnx_nfi.api``.

Each command parses options, makes one API call, renders the result, and turns ``NfiError``
into one ``Error: …`` line on stderr with exit code 2.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from onnx_nfi import api
from onnx_nfi.config import HELP, AnalyzeConfig, parse_indexes
from onnx_nfi.errors import NfiError
from onnx_nfi.store.duckdb_store import DEFAULT_DB

app = typer.Typer(
    help="Index the neurons of any ONNX CNN by the images that excite them (Rafegas et al., PRL 2020).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)
#: stdout; not a terminal (pipes, tests): wide, so tensor names and paths are never cut or wrapped
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 400)


def wrote(path: object, stream: Console = out) -> None:
    """The one line every picture or export command ends with."""
    stream.print(f"Wrote {path}", highlight=False)
F = TypeVar("F", bound=Callable[..., Any])

DB_OPTION = typer.Option(DEFAULT_DB, "--db", help="DuckDB database file.")


def user_errors(fn: F) -> F:
    """Print library errors as one line and exit 2; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NfiError as exc:
            console.print(f"[red]Error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("Interrupted; nothing was written.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class ProgressBars:
    """Rich progress bars for the library's ``progress(phase, done, total)`` callback."""

    LABELS = {"scan": "Scanning images", "nf": "Neuron features", "index": "Selectivity indexes", "probe": "Probe images"}

    def __init__(self, silent: bool = False) -> None:
        silent = silent or not console.is_terminal  # no live bars in logs and pipes
        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=silent,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.progress.live.is_started:
            self.progress.live.transient = True  # an error line should not sit under a half-drawn bar
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(self.LABELS.get(phase, phase), total=total, rate="")
        task = self.tasks[phase]
        elapsed = self.progress.tasks[task].elapsed or 0
        rate = f"{done / elapsed:6.1f} it/s" if elapsed > 0 and done else ""
        if phase == "scan" and rate:
            rate = rate.replace("it/s", "img/s")
        self.progress.update(task, completed=done, total=total, rate=rate)


@app.command()
@user_errors
def analyze(
    model: Path = typer.Argument(..., help="ONNX model file."),
    images: Path = typer.Argument(..., help="Image folder (recursive; sub-folders name classes)."),
    db: Path = DB_OPTION,
    name: str = typer.Option(None, "--name", help="Model name in the database (default: file stem)."),
    layers: list[str] = typer.Option(None, "--layers", help=HELP["layers"]),
    top_n: int = typer.Option(AnalyzeConfig.top_n, "--top-n", min=1, help=HELP["top_n"]),
    batch_size: int = typer.Option(AnalyzeConfig.batch_size, "--batch-size", min=1, help=HELP["batch_size"]),
    preprocess: str = typer.Option(None, "--preprocess", help=HELP["preprocess"]),
    labels: str = typer.Option(AnalyzeConfig.labels, "--labels", help=HELP["labels"]),
    provider: str = typer.Option(AnalyzeConfig.provider, "--provider", help=HELP["provider"]),
    nf: bool = typer.Option(AnalyzeConfig.nf, "--nf/--no-nf", help=HELP["nf"]),
    nf_max_size: int = typer.Option(AnalyzeConfig.nf_max_size, "--nf-max-size", min=0, help=HELP["nf_max_size"]),
    indexes: str = typer.Option(",".join(AnalyzeConfig.indexes), "--indexes", help=HELP["indexes"]),
    color_mode: str = typer.Option(AnalyzeConfig.color_mode, "--color-mode", help=HELP["color_mode"]),
    rho: float = typer.Option(AnalyzeConfig.rho, "--rho", min=0.0, max=1.0, help=HELP["rho"]),
    silent: bool = typer.Option(False, "--silent", help="No progress bars."),
) -> None:
    """Scan IMAGES with MODEL and index every neuron of every conv layer into the database."""
    _check_color_mode(color_mode)
    config = AnalyzeConfig(
        top_n=top_n, batch_size=batch_size, provider=provider, preprocess=preprocess, labels=labels,
        layers=tuple(layers or ()), nf=nf, nf_max_size=nf_max_size, indexes=parse_indexes(indexes),
        color_mode=color_mode, rho=rho,
    )
    with ProgressBars(silent) as bars:
        summary = api.analyze(model, images, db=db, name=name, config=config, progress=bars)
    print_summary(summary)


def print_summary(s: api.AnalysisSummary) -> None:
    """The closing summary of an analysis."""
    out.print(
        f"Analysed [bold]{s.model}[/bold]: {s.layers} layers, {s.neurons} neurons ({s.dead} dead) "
        f"over {s.images_seen} images ({s.images_skipped} skipped) on {s.provider}.",
        highlight=False,
    )
    rate = s.images_seen / s.scan_seconds if s.scan_seconds else 0
    out.print(
        f"Preprocessing: {s.preprocessing}; labels: {s.label_source}. Scan {s.scan_seconds:.1f} s ({rate:.1f} img/s), "
        f"NF {s.nf_seconds:.1f} s, indexes {s.index_seconds:.1f} s, total {s.total_seconds:.1f} s.",
        highlight=False,
    )
    out.print(f"Results: {s.db} (run {s.run_id})", highlight=False)


@app.command("index")
@user_errors
def index_cmd(
    model: str = typer.Argument(..., help="Model name in the database."),
    db: Path = DB_OPTION,
    indexes: str = typer.Option(",".join(AnalyzeConfig.indexes), "--indexes", help=HELP["indexes"]),
    color_mode: str = typer.Option(AnalyzeConfig.color_mode, "--color-mode", help=HELP["color_mode"]),
    rho: float = typer.Option(AnalyzeConfig.rho, "--rho", min=0.0, max=1.0, help=HELP["rho"]),
    batch_size: int = typer.Option(AnalyzeConfig.batch_size, "--batch-size", min=1, help=HELP["batch_size"]),
    provider: str = typer.Option(AnalyzeConfig.provider, "--provider", help=HELP["provider"]),
    silent: bool = typer.Option(False, "--silent", help="No progress bars."),
) -> None:
    """(Re)compute selectivity indexes of a model already in the database, without a new scan."""
    _check_color_mode(color_mode)
    config = AnalyzeConfig(indexes=parse_indexes(indexes), color_mode=color_mode, rho=rho, batch_size=batch_size, provider=provider)
    with ProgressBars(silent) as bars:
        s = api.index(model, db, config=config, progress=bars)
    out.print(f"Indexed {s.model}: {', '.join(s.indexes) or 'nothing'} for {s.neurons} neurons in {s.layers} layers ({s.seconds:.1f} s).")


def _check_color_mode(mode: str) -> None:
    if mode not in ("image", "region"):
        raise typer.BadParameter("use image or region", param_hint="--color-mode")


@app.command("layers")
@user_errors
def layers_cmd(
    model: Path = typer.Argument(..., help="ONNX model file."),
    preprocess: str = typer.Option(None, "--preprocess", help=HELP["preprocess"]),
    verify_rf: bool = typer.Option(False, "--verify-rf", help="Also measure each RF empirically and report differences."),
) -> None:
    """List the conv layers: alias, tensor, op chain, channels, output size, receptive field."""
    infos = api.layers(model, preprocess=preprocess)
    mismatches = api.verify_receptive_fields(model, preprocess=preprocess) if verify_rf else None
    table = Table("alias", "tensor", "ops", "channels", "output", "rf size", "rf stride", "rf offset", box=None)
    for info in infos:
        rf = info.rf
        table.add_row(
            info.layer.alias, info.layer.tensor, info.layer.op_type, str(info.layer.channels),
            f"{info.layer.height}x{info.layer.width}",
            "global" if rf.is_global else f"{rf.size[0]}x{rf.size[1]}",
            f"{rf.stride[0]}x{rf.stride[1]}", f"{rf.offset[0]},{rf.offset[1]}",
        )
    out.print(table)
    if mismatches is not None:
        if mismatches:
            for layer, problems in mismatches.items():
                out.print(f"RF mismatch in {layer}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
            raise typer.Exit(1)
        out.print(f"Receptive fields verified empirically for all {len(infos)} layers.")


@app.command("sql")
@user_errors
def sql_cmd(
    query: str = typer.Argument(..., help="SQL to run, e.g. \"SELECT * FROM layer_summary\"."),
    db: Path = DB_OPTION,
    fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet (parquet needs -o)."),
    output: Path = typer.Option(None, "-o", "--output", help="Write to this file instead of stdout."),
    write: bool = typer.Option(False, "--write", help="Open the database writable (default read-only)."),
) -> None:
    """Run SQL against the database (tables: models, images, layers, neurons, top_activations, …)."""
    if fmt not in api.SQL_FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(api.SQL_FORMATS)}", param_hint="--format")
    if fmt == "parquet":
        if output is None:
            raise typer.BadParameter("parquet output needs a file: -o result.parquet", param_hint="--format")
        wrote(api.export_parquet(query, output, db))
        return
    columns, rows = api.sql(query, db, write=write)
    text = render_rows(columns, rows, fmt)
    if output:
        output.write_text(text if fmt != "table" else _plain_table(columns, rows))
    elif fmt == "table":
        table = Table(*columns, box=None)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        out.print(table)
    else:
        sys.stdout.write(text)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} values]"
    return "NULL" if value is None else str(value)


def _plain_table(columns: list[str], rows: list[tuple]) -> str:
    return "\t".join(columns) + "\n" + "".join("\t".join(_cell(v) for v in r) + "\n" for r in rows)


def render_rows(columns: list[str], rows: list[tuple], fmt: str) -> str:
    """csv / json text of query rows (json: a list of objects)."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=1) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"
DEMO_QUERIES = (
    ("Most colour-selective neurons of Lite0's conv20",
     "SELECT unit, round(color_selectivity, 3) AS color, round(active_fraction, 2) AS active, top_class "
     "FROM neurons n JOIN layers l USING (model, layer) WHERE model = 'efficientnet_lite0' AND alias = 'conv20' "
     "AND active_fraction > 0.2 ORDER BY color_selectivity DESC LIMIT 5"),
    ("Colour and class selectivity by relative depth, both models",
     "SELECT model, alias, round(relative_depth, 2) AS depth, round(color_selectivity_median, 3) AS color, "
     "round(class_selectivity_median, 3) AS class FROM layer_summary WHERE alias IN ('conv1', 'conv10', 'conv25', 'conv40', 'conv49', 'conv52') "
     "ORDER BY model, depth"),
)


@app.command()
@user_errors
def demo(
    output: Path = typer.Option(Path("demo-output"), "-o", "--output", help="Folder for the images, database and pictures."),
    silent: bool = typer.Option(False, "--silent", help="No progress bars."),
) -> None:
    """Analyse the bundled EfficientNet-Lite0 and MobileNetV2 on the bundled demo photos and draw the results."""
    from onnx_nfi.data.demo_images import build_demo_images
    from onnx_nfi.report import render

    output.mkdir(parents=True, exist_ok=True)
    images = build_demo_images(output / "images")
    db = output / "nfi.duckdb"
    pictures = output / "pictures"
    pictures.mkdir(exist_ok=True)
    for model in ("efficientnet_lite0", "mobilenetv2_deepsort"):
        out.print(f"[bold]Analysing {model}[/bold] on {images}", highlight=False)
        with ProgressBars(silent) as bars:
            print_summary(api.analyze(BUNDLED_MODELS / f"{model}.onnx", images, db=db, progress=bars))
    written = [render.grid_png("efficientnet_lite0", layer, pictures / f"lite0_{layer}_nfs.png", db, limit=64)
               for layer in ("conv1", "conv40")]
    unit = _most_class_selective(db, "efficientnet_lite0", "conv40")
    written.append(render.card_png("efficientnet_lite0", "conv40", unit, pictures / "lite0_conv40_card.png", db))
    written.append(render.summary_png(["efficientnet_lite0", "mobilenetv2_deepsort"],
                                      ["color_selectivity", "class_selectivity"], pictures / "selectivity.png", db)[0])
    for path in written:
        wrote(path)
    from onnx_nfi import search

    matched = search.match(db, "efficientnet_lite0", "mobilenetv2_deepsort", pictures / "match.png")
    out.print(
        f"Wrote {matched.picture}: mean best correlation of a Lite0 neuron with a MobileNetV2 neuron {matched.mean_best:.3f}",
        highlight=False,
    )
    from onnx_nfi.report.site.build import build_report

    with ProgressBars(silent) as bars:
        site = build_report(output / "report", db, progress=bars)
    out.print(f"\nResults: {db.resolve()}\nPictures: {pictures.resolve()}", highlight=False)
    out.print(f"Neuron browser: file://{(site.output / 'index.html').resolve()} (or: onnx-nfi serve --db {db})\nTry:",
              highlight=False)
    for title, query in DEMO_QUERIES:
        out.print(f"  # {title}\n  onnx-nfi sql --db {db} \"{query}\"", highlight=False)
    for title, query in DEMO_QUERIES[:1]:
        columns, rows = api.sql(query, db)
        out.print(f"\n{title}:", highlight=False)
        table = Table(*columns, box=None)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        out.print(table)


def _most_class_selective(db: Path, model: str, layer: str) -> int:
    """The unit whose top images are most dominated by one class: a good neuron card."""
    from onnx_nfi.store.duckdb_store import Store

    with Store.open(db, read_only=True) as store:
        rows = store.rows(
            "SELECT unit FROM neurons n JOIN layers l USING (model, layer) WHERE model = ? AND alias = ? AND NOT dead "
            "ORDER BY top_class_frequency DESC NULLS LAST, unit LIMIT 1",
            [model, layer],
        )
    return int(rows[0]["unit"])


def main() -> None:
    """Console-script entry point."""
    app(prog_name="onnx-nfi")


# Commands of the picture and search verbs live beside this module; importing them registers them.
from onnx_nfi import cli_report, cli_search, cli_site  # noqa: E402,F401  (after ``app`` exists)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
