"""What every ``onnx-nfi`` command shares: the app, the consoles, the options, progress bars and the
translation of library errors into one ``Error: …`` line.

Command modules import this one and ``onnx_nfi.api`` (inside their functions: the library's
imports are heavy and ``--help`` should not pay for them), never each other.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from onnx_nfi.config import HELP, AnalyzeConfig
from onnx_nfi.errors import Interrupted, NfiError
from onnx_nfi.names import DEFAULT_DB  # noqa: F401  (the commands take it from here)

F = TypeVar("F", bound=Callable[..., Any])


def plain_help(params: list[Any]) -> list[Any]:
    """Help that shows what the user types: a flag (``--silent``, ``--help``) takes no value, so it shows
    none (typer writes ``<bool>``); an option given no metavar shows its name in capitals, not a Python
    type; and an argument's name is its metavar, so no Python type follows it (typer writes ``<list[str]>``)."""
    for param in params:
        if isinstance(param, TyperOption) and param.metavar is None:  # a value's name, when not given one
            param.metavar = "" if param.is_flag else param.name.upper()
        elif isinstance(param, TyperArgument) and not isinstance(param, _NamedArgument):
            param.__class__ = _NamedArgument
    return params


class _NamedArgument(TyperArgument):
    """An argument shown by its name alone (see ``plain_help``)."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None


class Command(TyperCommand):
    """Every ``onnx-nfi`` command: its help as ``plain_help`` writes it."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return plain_help(super().get_params(ctx))


class Group(TyperGroup):
    """The ``onnx-nfi`` group: ``--version`` and ``--help`` as ``plain_help`` writes them."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return plain_help(super().get_params(ctx))


class App(typer.Typer):
    """The typer app whose commands are all :class:`Command`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:  # type: ignore[override]
        return super().command(*args, cls=kwargs.pop("cls", Command), **kwargs)


app = App(
    help="Index the neurons of any ONNX CNN by the images that excite them (Rafegas et al., PRL 2020).",
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)
#: stdout; not a terminal (pipes, tests): wide, so tensor names and paths are never cut or wrapped
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 400)

# ---- options shared by several commands: declared once, help from config.HELP ------------------
Db = Annotated[Path, typer.Option("--db", metavar="FILE", help="DuckDB database file.")]
Silent = Annotated[bool, typer.Option("--silent", help="No progress bars.")]
BatchSize = Annotated[int, typer.Option("--batch-size", metavar="N", help=HELP["batch_size"])]
Provider = Annotated[str, typer.Option("--provider", metavar="PROVIDER", help=HELP["provider"])]
Preprocess = Annotated[str | None, typer.Option("--preprocess", metavar="PRESET|FILE", help=HELP["preprocess"])]
Indexes = Annotated[str, typer.Option("--indexes", metavar="INDEXES", help=HELP["indexes"])]
ColorMode = Annotated[str, typer.Option("--color-mode", metavar="MODE", help=HELP["color_mode"])]
Rho = Annotated[float, typer.Option("--rho", metavar="RHO", help=HELP["rho"])]
Seed = Annotated[int, typer.Option("--seed", metavar="SEED", help=HELP["seed"])]
LockTimeout = Annotated[float, typer.Option("--lock-timeout", metavar="SECONDS", help=HELP["lock_timeout"])]
Threads = Annotated[int, typer.Option("--threads", metavar="N", help=HELP["threads"])]
LayerPatterns = Annotated[list[str] | None, typer.Option("--layers", metavar="LAYERS", help=HELP["layers"])]
InputSize = Annotated[str | None, typer.Option("--input-size", metavar="H,W", help=HELP["input_size"])]
ImageInput = Annotated[str | None, typer.Option("--input", metavar="NAME", help=HELP["input"])]
MaxPixels = Annotated[int, typer.Option("--max-pixels", metavar="PIXELS", help=HELP["max_pixels"])]
Png = Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="PNG file to write.")]
ModelName = Annotated[str, typer.Argument(metavar="MODEL", help="Model name in the database.")]
#: ``--image-root`` of the commands that write a database (analyze, merge) ...
StoredImageRoot = Annotated[Path | None, typer.Option(
    "--image-root", metavar="FOLDER",
    help="Store image paths relative to this folder, so the database can move with the images.")]
#: ... and of those that read images again
ImageRoot = Annotated[Path | None, typer.Option(
    "--image-root", metavar="FOLDER",
    help="Where the images are now, when the database stores their paths relative to a folder (analyze --image-root).")]


def layer_patterns(what: str) -> Any:
    """``--layers`` of a command that reads stored layers: ``what`` says what it does with them."""
    return Annotated[list[str] | None, typer.Option("--layers", metavar="LAYERS", help=(
        f"{what}: aliases (conv3), tensor names or globs (conv1*), comma-separated or repeated; default every stored layer."
    ))]


DEFAULT_INDEXES = ",".join(AnalyzeConfig.indexes)


def say(text: str, *, markup: bool = False) -> None:
    """A command's result on stdout, as written: rich's automatic colouring of numbers and paths off,
    and brackets in paths and names kept (``markup``: the caller escaped every value in ``text``)."""
    out.print(text, highlight=False, markup=markup)


def warn(warnings: Iterable[str]) -> None:
    """What a command's summary says the user should know, one ``Warning:`` line each."""
    for warning in warnings:
        say(f"Warning: {warning}")


def wrote(path: object, stream: Console = out) -> None:
    """The one line every picture or export command ends with."""
    stream.print(f"Wrote {path}", highlight=False, markup=False)


#: What a stopped command other than analyze / merge (which say more) can truly claim: each of them
#: changes the database in one transaction, and FAISS files behind it are repaired by the next search.
INTERRUPTED = "Interrupted; the database holds all of this command's changes or none of them (each is one transaction)."


def user_errors(fn: F) -> F:
    """Print library errors as one line and exit 2; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NfiError as exc:
            console.print(f"[red]Error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except (KeyboardInterrupt, RuntimeError) as exc:  # an Interrupted says what was written
            if isinstance(exc, RuntimeError) and str(exc) != "Query interrupted":  # DuckDB's form of a Ctrl-C
                raise
            console.print(str(exc) if isinstance(exc, Interrupted) and str(exc) else INTERRUPTED, markup=False, highlight=False)
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler stopping a job) handled as Ctrl-C by the commands that keep their
    work on Ctrl-C: the scan state is saved, the message says what was written, the exit code is 143."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Interrupted("", signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ProgressBars:
    """Rich progress bars for the library's ``progress(phase, done, total)`` callback."""

    LABELS = {
        "scan": "Scanning images", "nf": "Neuron features", "index": "Selectivity indexes", "probe": "Probe images",
        "images": "Top images", "similar": "Similar neurons", "pages": "Neuron pages",
        "write": "Writing results", "query": "Query images",
    }

    def __init__(self, silent: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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
        self.first_done: dict[str, int] = {}  # a resumed scan starts past 0: its rate counts from there

    def __enter__(self) -> ProgressBars:
        self.progress.__enter__()
        # a moving bar from the first moment (loading the runtime and the model, planning: seconds)
        self.tasks["start"] = self.progress.add_task("Starting", total=None, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.progress.live.is_started:
            self.progress.live.transient = True  # an error line should not sit under a half-drawn bar
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase == "lock":  # a line, not a bar: it must be seen even without bars (logs, --silent)
            if phase not in self.tasks:
                self.tasks[phase] = None
                console.print(
                    f"The database is locked by another process; waiting up to {total} s for it (--lock-timeout).",
                    highlight=False,
                )
            return
        if "start" in self.tasks:
            self.progress.remove_task(self.tasks.pop("start"))
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(self.LABELS.get(phase, phase), total=total, rate="")
            self.first_done[phase] = done
        task = self.tasks[phase]
        elapsed = next(t for t in self.progress.tasks if t.id == task).elapsed or 0
        here = done - self.first_done[phase]  # only what this process did in ``elapsed``
        rate = f"{here / elapsed:6.1f} it/s" if elapsed > 0 and here else ""
        if phase == "scan" and rate:
            rate = rate.replace("it/s", "img/s")
        self.progress.update(task, completed=done, total=total, rate=rate)


# ---- tables ----------------------------------------------------------------------------------


def print_table(columns: list[str], rows: list[tuple], stream: Console = out) -> None:
    """Rows as an aligned table; every cell is literal text (a value like ``[red]x[/red]`` is not markup)."""
    from onnx_nfi.store.user_sql import cell_text  # here: --help need not import it

    table = Table(box=None)
    for c in columns:
        table.add_column(Text(c))
    for row in rows:
        table.add_row(*(Text(cell_text(v)) for v in row))
    stream.print(table)


def plain_table(columns: list[str], rows: list[tuple]) -> str:
    """Rows as tab-separated text (``sql -o FILE`` in table format)."""
    from onnx_nfi.store.user_sql import cell_text

    return "\t".join(columns) + "\n" + "".join("\t".join(cell_text(v) for v in r) + "\n" for r in rows)


def render_rows(columns: list[str], rows: list[tuple], fmt: str) -> str:
    """csv / json text of query rows (json: a list of objects)."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=1) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def version_callback(value: bool) -> None:
    """``--version``: print the installed version and stop."""
    if value:
        from onnx_nfi import __version__

        say(f"onnx-nfi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Index the neurons of any ONNX CNN by the images that excite them (Rafegas et al., PRL 2020)."""


def neuron_arguments(first: str, layer: str | None, unit: int | None, *, unit_needed: bool) -> tuple[str, str, int | None]:
    """(model, layer, unit) from ``MODEL:LAYER:UNIT`` (``MODEL:LAYER`` where no unit is wanted) or
    from the three words ``MODEL LAYER UNIT``: a neuron is named the same way in every command."""
    from onnx_nfi.names import parse_neuron

    if layer is not None:
        return first, layer, unit
    if ":" not in first:
        raise typer.BadParameter("name the neuron MODEL:LAYER:UNIT (or give MODEL LAYER UNIT)", param_hint="NEURON")
    if unit_needed or first.rsplit(":", 1)[-1].isdigit() and first.count(":") >= 2:
        model, layer_name, number = parse_neuron(first)
        return model, layer_name, number
    model, layer_name = first.split(":", 1)
    return model, layer_name, None
