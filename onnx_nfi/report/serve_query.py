"""``serve``'s query page (upload an image, draw a box, see the neurons that fire on it) and its
where-maps (a neuron's map over one of its top images, drawn on demand).

Uploads are the raw bytes of one image in a POST body: read in chunks up to ``MAX_UPLOAD_BYTES``
(a longer body is refused with 413 before it is all read), decoded in memory with the pixel limit
checked from the header first, and never written anywhere. A file name is only shown, never used as
a path; one holding a path is refused. Each model's ``QueryModel`` (its inference session) is made on
first use and kept for the next requests; inference runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_nfi.config import DEFAULT_MAX_PIXELS
from onnx_nfi.data.images import stored_image_path
from onnx_nfi.data.one_image import decode_image, read_image
from onnx_nfi.errors import ConfigError, ImageError, ImageTooLargeError, NfiError, NotFoundError
from onnx_nfi.names import parse_neuron
from onnx_nfi.report.query_pictures import draw_where, png_bytes
from onnx_nfi.report.site import pages
from onnx_nfi.report.site import data as q
from onnx_nfi.neurons.region import Box
from onnx_nfi.search.query import QueryModel, check_box
from onnx_nfi.store.neuron_scores import top_image_paths

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

#: Largest upload body accepted (bytes).
MAX_UPLOAD_BYTES = 32 * 2**20
#: Neurons shown unless the form asks for another number, and the most it may ask for.
DEFAULT_K, MAX_K = 24, 200


class QueryPages:
    """The query page and where-maps of one served database; ``database`` is serve's ``_Database``."""

    def __init__(self, database: Any, image_root: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.database, self.image_root, self.max_pixels = database, image_root, max_pixels
        self._engines: dict[str, QueryModel] = {}
        self._lock = threading.Lock()

    def routes(self) -> list[Route]:
        """The routes to mount at the root, before the ``/{model}/...`` ones."""
        from starlette.routing import Route

        return [Route("/query", self.page, methods=["GET", "POST"]), Route("/where", self.where)]

    def engine(self, model: str) -> QueryModel:
        """The model's query engine, made once (its session) and reused by every later request."""
        with self._lock:
            if model not in self._engines:
                with self.database.store() as store:  # CPU: requests share the session from several threads
                    self._engines[model] = QueryModel(store, model, provider="cpu")
            return self._engines[model]

    async def page(self, request: Request) -> Response:
        """GET: the upload form. POST: the result tiles for the image in the body (4xx: why not)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import HTMLResponse

        with self.database.store() as store:
            models = store.models()
        if request.method == "GET":
            return HTMLResponse(pages.render(
                "query.html", depth=0, models=models, k=DEFAULT_K, max_mb=MAX_UPLOAD_BYTES // 2**20,
                max_mp=f"{self.max_pixels / 1e6:g}", live=True, db_name=self.database.path.name,
            ))
        params = request.query_params
        try:
            name = _file_name(params.get("name", "upload"))
            model = params.get("model", "")
            if model not in models:
                raise NotFoundError(f"no model {model!r} in {self.database.path.name}")
            box = _box(params.get("box", ""))
            k = _k(params.get("k", ""))
            data = await _body(request)
            context = await run_in_threadpool(self._ask, model, data, name, box, k)
            status = 200
        except NfiError as exc:
            context, status = {"error": str(exc)}, _status(exc)
        html = pages.environment().get_template("query_results.html").render(**{"error": None, **context})
        return HTMLResponse(html, status_code=status)

    def _ask(self, model: str, data: bytes, name: str, box: Box | None, k: int) -> dict[str, Any]:
        """One query: decode in memory, one forward pass, the tiles' values."""
        started = time.perf_counter()
        bgr = decode_image(data, name, self.max_pixels)
        check_box(box, bgr.shape[:2])
        engine = self.engine(model)
        hits = engine.ask(engine.see(bgr), box, k)
        tiles = []
        for h in hits:
            link = q.link(h.model, h.alias, h.unit, h.relative)
            tiles.append({"page": link.page, "nf": link.nf, "neuron": h.neuron, "alias": h.alias, "unit": h.unit,
                          "relative": h.relative, "percentile": h.percentile})
        shown = ",".join(f"{v:g}" for v in box) if box else ""
        return {"model": model, "name": name, "box": shown, "hits": tiles, "seconds": time.perf_counter() - started}

    async def where(self, request: Request) -> Response:
        """``/where?neuron=M:L:U&image=ID``: the neuron's map over one of its top images (PNG)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response as Raw

        neuron = request.query_params.get("neuron", "")
        image = request.query_params.get("image", "")
        if not (image.isascii() and image.isdigit()):
            raise NotFoundError("give image=ID, the id of one of the neuron's top images")
        png = await run_in_threadpool(self._where_png, neuron, int(image))
        return Raw(png, media_type="image/png")

    def _where_png(self, neuron: str, image_id: int) -> bytes:
        model, layer, unit = parse_neuron(neuron)
        engine = self.engine(model)
        item = engine.layer(layer)
        with self.database.store() as store:
            paths = top_image_paths(store, model, item.layer.tensor, unit)
        if image_id not in paths:
            raise NotFoundError(f"image {image_id} is not among the top images of {neuron}")
        path = stored_image_path(paths[image_id], self.image_root)
        drawn = draw_where(engine, engine.see(read_image(path, self.max_pixels)), layer, unit, path.name)
        return png_bytes(drawn.image)


def _status(exc: NfiError) -> int:
    """The HTTP status of a refused query."""
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, ImageError):
        return 415
    return 404 if isinstance(exc, NotFoundError) else 400


async def _body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes ``MAX_UPLOAD_BYTES``."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise ImageTooLargeError(f"the upload is {int(declared) / 2**20:.1f} MB, above the {MAX_UPLOAD_BYTES // 2**20} MB limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise ImageTooLargeError(f"the upload is above the {MAX_UPLOAD_BYTES // 2**20} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _file_name(name: str) -> str:
    """The uploaded file's name, for display only; a name with a path in it is refused."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise ConfigError(f"file name {name[:80]!r} is not a plain file name; upload a file named like photo.jpg")
    return name


def _box(text: str) -> Box | None:
    """``X0,Y0,X1,Y1`` from the form (empty: the whole image)."""
    text = text.strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"box {text[:80]!r}: write X0,Y0,X1,Y1 in the image's pixels, or leave it empty")
    return values  # type: ignore[return-value]


def _k(text: str) -> int:
    text = text.strip()
    return min(max(int(text), 1), MAX_K) if text.isascii() and text.isdigit() else DEFAULT_K
