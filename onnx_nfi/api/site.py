"""The neuron browser's verbs: ``onnx-nfi report`` (the static site: ``build_report`` is its twin, named
so because ``onnx_nfi.report`` is a package) and ``onnx-nfi serve`` (the live one).

``serve`` is a thin call into ``onnx_nfi.report.serve``; the web stack (Starlette, uvicorn) is
imported only when it runs, so importing the API does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnx_nfi.config import DEFAULT_MAX_PIXELS
from onnx_nfi.errors import Interrupted
from onnx_nfi.names import DEFAULT_DB
from onnx_nfi.report.site.build import ReportSummary, build_report

__all__ = ["ReportSummary", "Serving", "build_report", "serve"]


@dataclass(frozen=True)
class Serving:
    """What ``serve`` tells its caller once the database is open and before it listens: the address,
    and what to warn the user about (a non-local host), if anything."""

    url: str
    db: Path
    warning: str | None = None


def serve(
    *, db: str | Path = DEFAULT_DB, host: str = "127.0.0.1", port: int = 8000, image_root: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, sql_timeout: float = 5.0, on_start: Callable[[Serving], None] | None = None,
) -> None:
    """``onnx-nfi serve``: serve the neuron browser of ``db`` on ``host:port`` until Ctrl-C or SIGTERM
    (then Interrupted says the database was only read). ``sql_timeout``: seconds a query of the SQL page
    may run; ``max_pixels``: the largest image the query page decodes; ``on_start`` hears where it serves."""
    from onnx_nfi.report import serve as served

    app = served.create_app(db, image_root, max_pixels, sql_timeout=sql_timeout)  # a bad database fails here
    if on_start:
        on_start(Serving(f"http://{host}:{port}/", Path(db), served.warning_for(host)))
    try:
        served.server(app, host, port).run()
    except KeyboardInterrupt as exc:  # uvicorn raises the Ctrl-C again once it has stopped
        raise Interrupted.of(exc, f"Stopped serving {db} (it was only read).") from None
