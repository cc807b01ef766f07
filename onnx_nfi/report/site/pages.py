"""The neuron browser's HTML, shared by the static build and ``serve``: one Jinja2 environment, autoescaped.

Pages link to each other with relative URLs laid out as ``MODEL/LAYER/UNIT/index.html``, so the
same HTML works opened from ``file://`` and served under ``/MODEL/LAYER/UNIT/``. Every piece of
text from the database (model, layer, tensor, class and file names) goes through the template
engine's escaping; nothing is marked safe.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_nfi.report.site.data import (
    STAT_COLUMNS,
    Crop,
    Histogram,
    LayerData,
    LayerRow,
    Link,
    ModelOverview,
    Unit,
    href,
    model_indexes,
)

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup

STATIC = Path(__file__).parent / "static"
#: Crops shown on a neuron page (the best ones; the database keeps top-N).
CROPS = 16
#: Similar neurons listed per scope on a neuron page.
SIMILAR = 10


@functools.lru_cache(maxsize=4096)
def _bars(h: Histogram, width: int, height: int) -> Markup:
    """A histogram's bars as SVG rectangles, drawn once per layer and index however many neuron
    pages show them (numbers only, so nothing needs escaping)."""
    from markupsafe import Markup

    n, top = len(h.counts), max(max(h.counts, default=0), 1)
    return Markup("".join(
        f'<rect x="{round(k * width / n, 2)}" y="{round(height - c * height / top, 2)}" width="{round(width / n - 1, 2)}" '
        f'height="{round(c * height / top, 2)}"><title>{c}</title></rect>'
        for k, c in enumerate(h.counts)
    ))


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment, made once so templates compile once (autoescape on for every
    template, undefined names are errors)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("onnx_nfi.report.site", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=_fmt, short=_short, when=_when, href=href)
    env.globals["bars"] = _bars
    return env


def render(template: str, *, depth: int, live: bool, db_name: str, built_at: str = "", **context: Any) -> str:
    """One page; ``depth`` is how many folders below the site's root it lives (for relative links)."""
    return environment().get_template(template).render(
        root="../" * depth, live=live, db_name=db_name, built_at=built_at, **context
    )


def index_page(models: Sequence[ModelOverview], picture: str | None, **common: Any) -> str:
    """The models of the site and the selectivity-by-depth picture."""
    return render("index.html", depth=0, models=models, picture=picture, **common)


def model_page(model: ModelOverview, layers: Sequence[LayerRow], **common: Any) -> str:
    """A model's layers table."""
    return render("model.html", depth=1, model=model, layers=layers, indexes=model_indexes(layers), **common)


def layer_page(data: LayerData, **common: Any) -> str:
    """A layer's unit grid (sortable, filterable) and its index distributions."""
    classes = sorted({u.top_class for u in data.units if u.top_class is not None})
    concepts = sorted({u.concept for u in data.units if u.concept is not None})
    colors = sorted({u.top_color for u in data.units if u.top_color is not None})
    return render("layer.html", depth=2, d=data, classes=classes, concepts=concepts, colors=colors, **common)


def neuron_page(
    data: LayerData, unit: Unit, crops: Sequence[Crop], classes: Sequence[tuple[str, float]],
    same: Sequence[Link], other: Sequence[Link], matches: Sequence[Link], **common: Any,
) -> str:
    """One neuron: NF, top crops, class distribution, indexes within the layer, similar and matched neurons."""
    return render(
        "neuron.html", depth=3, d=data, u=unit, crops=[_crop_view(data, c) for c in crops], classes=classes, same=same, other=other,
        matches=matches, stats=STAT_COLUMNS, **common,
    )


#: Side of a crop and of its location picture on a neuron page, CSS pixels.
CROP_PX = 96


def _crop_view(data: LayerData, crop: Crop) -> dict[str, Any]:
    """A crop as a window onto its display image: the image scaled and shifted so the RF window fills the box.

    No crop file is written: every crop of every neuron is a view of one of the model's display
    images, so the report holds each image once.
    """
    (ch, cw), (ih, iw) = data.canvas, data.image_size
    s, t = CROP_PX / max(ch, cw), CROP_PX / max(ih, iw)
    return {
        "c": crop,
        "window": f"width:{cw * s:.2f}px;height:{ch * s:.2f}px",
        "image": f"width:{iw * s:.2f}px;height:{ih * s:.2f}px;left:{-crop.x0 * s:.2f}px;top:{-crop.y0 * s:.2f}px",
        "where": f"width:{iw * t:.2f}px;height:{ih * t:.2f}px",
        "box": f"left:{crop.x0 * t:.2f}px;top:{crop.y0 * t:.2f}px;width:{cw * t:.2f}px;height:{ch * t:.2f}px",
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _short(column: str) -> str:
    """``color_selectivity`` -> ``color``; other columns with spaces."""
    return column.removesuffix("_selectivity").replace("_", " ")


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "—" if value is None else str(value)
