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

from onnx_nfi.report.class_evidence import class_evidence
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

    from onnx_nfi.report.site.sprites import Sprite

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
    env.filters.update(fmt=_fmt, short=_short, when=_when, href=href, rel=relative)
    env.globals.update(bars=_bars, class_evidence=class_evidence)
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


def layer_page(data: LayerData, nf_pngs: dict[int, bytes] | None = None, sprite: Sprite | None = None, **common: Any) -> str:
    """A layer's unit grid (sortable, filterable) and its index distributions.

    With ``nf_pngs`` the NFs are inlined as ``data:`` URLs (``serve``: one response instead of one
    request per unit, which a browser sends at most six at a time); with ``sprite`` (the static report)
    cells of the layer's ``nf.png``; else they are ``nf/UNIT.png`` files.
    """
    import base64

    classes = sorted({u.top_class for u in data.units if u.top_class is not None})
    sources = {u: "data:image/png;base64," + base64.b64encode(png).decode() for u, png in (nf_pngs or {}).items()}
    concepts = sorted({u.concept for u in data.units if u.concept is not None})
    colors = sorted({u.top_color for u in data.units if u.top_color is not None})
    return render("layer.html", depth=2, d=data, classes=classes, concepts=concepts, colors=colors, sources=sources,
                  sprite=sprite, **common)


def neuron_page(
    data: LayerData, unit: Unit, crops: Sequence[Crop], classes: Sequence[tuple[str, float]],
    same: Sequence[Link], other: Sequence[Link], matches: Sequence[Link], **common: Any,
) -> str:
    """One neuron: NF, top crops, class distribution, indexes within the layer, similar and matched neurons."""
    here = f"{href(data.model_slug)}/{href(data.row.slug)}/{unit.unit}/"
    return render(
        "neuron.html", depth=3, d=data, u=unit, here=here, crops=crops, crop_frame=_crop_frame(data), classes=classes,
        same=same, other=other, matches=matches, stats=STAT_COLUMNS, **common,
    )


def relative(target: str, here: str) -> str:
    """``target`` (a path from the site's root) as a link from the page in folder ``here`` (from the root,
    ending in ``/``; ``""`` for the root): ``../31/index.html`` rather than ``../../../MODEL/LAYER/31/index.html``.

    Links and crops make up most of a neuron page's bytes, and there is one page per neuron; the
    result still resolves the same from ``file://`` and under ``serve``, where the layout is the same.
    """
    base, parts = here.split("/")[:-1], target.split("/")
    k = 0
    while k < len(base) and k < len(parts) - 1 and base[k] == parts[k]:
        k += 1
    return "../" * (len(base) - k) + "/".join(parts[k:])


#: Side of a crop and of its location picture on a neuron page, CSS pixels.
CROP_PX = 96
#: Size of a layer's index distribution pictures (``LAYER/hist/INDEX.svg``), SVG units: bars, then a line of labels.
HIST_W, HIST_H, HIST_LABELS = 220, 48, 14


def _crop_frame(data: LayerData) -> str:
    """The CSS variables that place every crop of a neuron page: each crop is a window onto its display image,
    scaled so the RF window fills the box; a crop itself carries only its corner (``--x``, ``--y``, image pixels).

    No crop file is written: every crop of every neuron is a view of one of the model's display
    images, so the report holds each image once; and the sizes are stated once per page, not per crop.
    """
    (ch, cw), (ih, iw) = data.canvas, data.image_size
    s, t = CROP_PX / max(ch, cw), CROP_PX / max(ih, iw)
    return (f"--s:{s:.5g};--t:{t:.5g};--cw:{cw * s:.2f}px;--ch:{ch * s:.2f}px;--iws:{iw * s:.2f}px;--ihs:{ih * s:.2f}px;"
            f"--iwt:{iw * t:.2f}px;--iht:{ih * t:.2f}px;--cwt:{cw * t:.2f}px;--cht:{ch * t:.2f}px")


def hist_svg(h: Histogram) -> str:
    """A layer's distribution of one index as a standalone SVG file, shared by all its neuron pages
    (each page draws its neuron's marker over it)."""
    w, hh = HIST_W, HIST_H
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {hh + HIST_LABELS}" width="{w}" height="{hh + HIST_LABELS}">'
        f'<g fill="#9db7e8">{_bars(h, w, hh)}</g><g font-size="12" fill="#667085" font-family="sans-serif">'
        f'<text x="0" y="{hh + 12}">{_fmt(h.low)}</text><text x="{w}" y="{hh + 12}" text-anchor="end">{_fmt(h.high)}</text>'
        "</g></svg>\n"
    )


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
