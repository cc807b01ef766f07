"""``onnx-nfi report`` and ``onnx-nfi serve``: the neuron browser.

Jinja2, Starlette and uvicorn are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from onnx_nfi.cli.common import DEFAULT_DB, Db, ImageRoot, ProgressBars, Silent, app, console, say, user_errors
from onnx_nfi.config import DEFAULT_MAX_PIXELS


@app.command("report")
@user_errors
def report_cmd(
    output: Path = typer.Option(..., "-o", "--output", metavar="FOLDER",
        help="Folder of the site (created; rebuilt in place)."),
    db: Db = Path(DEFAULT_DB),
    models: list[str] = typer.Option(None, "--models", metavar="MODELS", help="Models to (re)build (default: all)."),
    force: bool = typer.Option(False, "--force", help="Rewrite every model's pages, even those up to date."),
    image_root: ImageRoot = None,
    silent: Silent = False,
) -> None:
    """Write the neuron browser as a static site: open OUTPUT/index.html in a browser, no server needed."""
    from onnx_nfi import api

    with ProgressBars(silent) as bars:
        s = api.build_report(output, models or None, db=db, force=force, progress=bars, image_root=image_root)
    say(
        f"Report: {len(s.written)} model(s) written, {len(s.kept)} up to date; {s.files} files, "
        f"{s.bytes / 2**20:.1f} MiB in {s.seconds:.1f} s.\nOpen: file://{(s.output / 'index.html').resolve()}",
    )


@app.command("serve")
@user_errors
def serve_cmd(
    db: Db = Path(DEFAULT_DB),
    port: int = typer.Option(8000, "--port", metavar="PORT", min=1, max=65535, help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS",
        help="Address to listen on (another than 127.0.0.1 only when needed)."),
    image_root: ImageRoot = None,
    sql_timeout: float = typer.Option(
        5.0, "--sql-timeout", min=0.1, metavar="SECONDS", help="Seconds a query of the SQL page may run before it is stopped."),
    max_pixels: Annotated[int, typer.Option("--max-pixels", metavar="PIXELS",
        help="Largest image the query page decodes (pixels).")] = DEFAULT_MAX_PIXELS,
) -> None:
    """Serve the neuron browser from the live database, with similar-neuron search and read-only SQL."""
    from onnx_nfi import api

    def started(serving: api.Serving) -> None:
        if serving.warning:
            console.print(f"[yellow]Warning:[/yellow] {escape(serving.warning)}", highlight=False)
        say(f"Serving {serving.db} on {serving.url} (Ctrl-C stops)")

    api.serve(db=db, host=host, port=port, image_root=image_root, max_pixels=max_pixels, sql_timeout=sql_timeout,
              on_start=started)
