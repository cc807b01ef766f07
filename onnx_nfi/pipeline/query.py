"""``onnx-nfi query`` and ``onnx-nfi where``: a new image put to a stored model (docs/method.md
§12); the engine is ``onnx_nfi.search.query``, the pictures ``report.query_pictures``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_nfi.config import DEFAULT_MAX_PIXELS
from onnx_nfi.data.images import list_images
from onnx_nfi.data.one_image import read_image
from onnx_nfi.errors import ConfigError, ImageError, NotFoundError
from onnx_nfi.names import DEFAULT_DB, parse_neuron
from onnx_nfi.neurons.region import Box
from onnx_nfi.progress import Progress
from onnx_nfi.report import pictures
from onnx_nfi.report.queries import neuron_nf
from onnx_nfi.report.query_pictures import Shown, draw_where, heat, query_picture, upsample
from onnx_nfi.search.query import Hit, QueryModel, Seen, check_box, field_window
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.table_file import check_table_path, write_table


@dataclass(frozen=True)
class QueryResult:
    """The neurons that fire on ``image`` (or its ``box``), best first, and the picture if drawn."""

    model: str
    image: Path
    box: Box | None
    hits: tuple[Hit, ...]
    picture: Path | None = None


@dataclass(frozen=True)
class WhereResult:
    """A where-map: the neuron's largest response on the image, its cell and the picture's tiles
    (overlay, map, colour scale) as ``(y0, x0, y1, x1)`` boxes; the map is coloured ``vmin``..``vmax``."""

    neuron: str
    response: float
    cell: tuple[int, int]
    vmin: float
    vmax: float
    picture: Path
    boxes: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class QueryTable:
    """``query`` over a folder: the table written, its rows, and the images that could not be read."""

    output: Path
    images: int
    rows: int
    skipped: tuple[tuple[Path, str], ...]


def query(
    image: str | Path, model: str, *, db: str | Path = DEFAULT_DB, box: Box | None = None, layers: Sequence[str] = (),
    k: int = 20, per_layer: bool = False, picture: str | Path | None = None, model_file: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, provider: str = "auto",
) -> QueryResult:
    """The ``k`` neurons of ``model`` (of ``layers``; ``per_layer``: ``k`` per layer) that respond most
    to ``image``, or to ``box`` (``x0, y0, x1, y1`` original pixels), relative to their top-1 score."""
    if k < 1:
        raise ConfigError(f"-k {k}: ask for at least one neuron")
    if picture is not None:
        pictures.check_png(picture)
    bgr = read_image(image, max_pixels)
    check_box(box, bgr.shape[:2])
    with Store.open(db, read_only=True) as store:
        engine = QueryModel(store, model, model_file=model_file, layers=layers, provider=provider)
        seen = engine.see(bgr)
        hits = tuple(engine.ask(seen, box, k, per_layer))
        drawn = _draw_query(store, engine, seen, box, hits, picture, Path(image).name) if picture else None
    return QueryResult(model, Path(image), box, hits, drawn)


def _draw_query(
    store: Store, engine: QueryModel, seen: Seen, box: Box | None, hits: Sequence[Hit], output: str | Path, name: str
) -> Path:
    """The query picture: the image, then each hit's NF and response map (0 to its top-1 score)."""
    neurons = []
    for h in hits:
        item = engine.layer(h.layer)
        try:
            nf = neuron_nf(store, h.model, h.layer, h.unit)[1]
        except NotFoundError:  # analysed with --no-nf
            nf = None
        values = seen.maps[h.layer][h.unit]
        coloured = heat(upsample(values, seen.display.shape[:2]), 0.0, float(item.scores.top1[h.unit]))
        y0, x0, y1, x1 = field_window(item.rf, *h.cell, engine.pre.input_size)
        lines = (f"{h.alias} unit {h.unit}", f"relative {h.relative:.2f}, top-N {h.percentile:.0f}%")
        neurons.append(Shown(nf, coloured, (x0, y0, x1, y1), lines))
    where = "whole image" if box is None else f"box {', '.join(f'{v:g}' for v in box)}"
    picture = query_picture(
        seen.display, seen.to_input(box) if box else None, neurons, f"{engine.model}: neurons firing on {name}",
        f"{where}; ranked by response / top-1 score. Per neuron: NF, response map (0 to top-1); "
        "the map over the image, the image in the field of the response",
    )
    return pictures.write_png(output, picture.image)


def query_folder(
    folder: str | Path, model: str, output: str | Path, *, db: str | Path = DEFAULT_DB, layers: Sequence[str] = (),
    k: int = 20, per_layer: bool = False, model_file: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, provider: str = "auto", progress: Progress | None = None,
) -> QueryTable:
    """``query`` over every image of ``folder``: the top-``k`` neurons of each, one row per (image,
    neuron), written to ``output`` (``.parquet`` or ``.csv``)."""
    check_table_path(output)
    if k < 1:
        raise ConfigError(f"-k {k}: ask for at least one neuron")
    found = list_images(folder, labels="none", max_pixels=max_pixels)
    skipped = list(found.rejected)
    rows: list[tuple[str, Hit]] = []
    read = 0
    with Store.open(db, read_only=True) as store:
        engine = QueryModel(store, model, model_file=model_file, layers=layers, provider=provider)
        for done, file in enumerate(found.files, 1):
            try:
                seen = engine.see(read_image(file.path, max_pixels))
            except ImageError as exc:
                skipped.append((file.path, str(exc)))
                continue
            read += 1
            rows += [(str(file.path), h) for h in engine.ask(seen, None, k, per_layer)]
            if progress:
                progress("query", done, len(found.files))
    write_table(_table(rows), output)
    return QueryTable(Path(output), read, len(rows), tuple(skipped))


def _table(rows: Sequence[tuple[str, Hit]]) -> dict[str, np.ndarray]:
    """The batch table's columns: image, the hit's place among the image's hits, and its values."""
    order, previous = [], None
    for path, _ in rows:  # rows come image by image, best first
        order.append(order[-1] + 1 if path == previous else 1)
        previous = path
    return {
        "image": np.array([p for p, _ in rows], dtype=object), "place": np.array(order, np.int32),
        "neuron": np.array([h.neuron for _, h in rows], dtype=object),
        "layer": np.array([h.alias for _, h in rows], dtype=object), "unit": np.array([h.unit for _, h in rows], np.int32),
        "response": np.array([h.response for _, h in rows], np.float32),
        "relative": np.array([h.relative for _, h in rows], np.float64),
        "percentile": np.array([h.percentile for _, h in rows], np.float64),
        "cell_y": np.array([h.cell[0] for _, h in rows], np.int32), "cell_x": np.array([h.cell[1] for _, h in rows], np.int32),
    }


def where(
    neuron: str, image: str | Path, output: str | Path, *, db: str | Path = DEFAULT_DB,
    model_file: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, provider: str = "auto",
) -> WhereResult:
    """``onnx-nfi where``: the neuron's activation map over ``image``, drawn to ``output``."""
    model, layer, unit = parse_neuron(neuron)
    pictures.check_png(output)
    bgr = read_image(image, max_pixels)
    with Store.open(db, read_only=True) as store:
        engine = QueryModel(store, model, model_file=model_file, layers=[layer], provider=provider)
    drawn = draw_where(engine, engine.see(bgr), layer, unit, Path(image).name)
    path = pictures.write_png(output, drawn.image)
    return WhereResult(drawn.neuron, drawn.response, drawn.cell, drawn.vmin, drawn.vmax, path, drawn.boxes)
