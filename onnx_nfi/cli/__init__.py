"""``onnx-nfi``: a thin typer layer over ``onnx_nfi.api``.

Each command parses options, makes one API call, renders the result, and turns ``NfiError``
into one ``Error: …`` line on stderr with exit code 2. ``common`` holds what commands share;
each other module is one group of commands, registered on ``app`` when imported here.
"""

from __future__ import annotations

from onnx_nfi.cli import analysis, database, pictures, query, relevance, search, site, words  # noqa: F401  (registers the commands)
from onnx_nfi.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app(prog_name="onnx-nfi")


__all__ = ["app", "main"]
