"""What the neuron browser's pages show, read from the database one model or one layer at a time.

Both the static build and ``serve`` read through these functions, so a page shows the same data
whichever way it was made. Reads are per layer (numpy columns), never per neuron, so building all
pages of a model costs a few queries per layer however many neurons it has.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from onnx_nfi.errors import NotFoundError
from onnx_nfi.neurons.nf import crop_geometry
from onnx_nfi.report.queries import stored_layer
from onnx_nfi.search.describe import description_text
from onnx_nfi.search.similar import nearest_by_model
from onnx_nfi.store import neuron_table, site_reads
from onnx_nfi.store.descriptions import layer_descriptions
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.relevance import RELEVANCE_COLUMNS
from onnx_nfi.names import INDEX_COLUMNS

#: Per-neuron statistics a layer grid can be sorted by, besides the indexes.
STAT_COLUMNS = ("max_activation", "mean_activation", "active_fraction", "top_class_frequency")
#: Per-neuron values shown with their layer's distribution: the indexes, and relevance where measured.
MEASURED = (*INDEX_COLUMNS, *RELEVANCE_COLUMNS)
#: Bins of the index histograms.
BINS = 20


def slug(name: str) -> str:
    """A file and URL path segment for a model or layer name: percent-encoded, never ``.`` or ``..``.

    Pages find models and layers by looking their slug up among the names in the database, so a
    slug is never used as a path by itself.
    """
    text = quote(name, safe="")
    return "%2E" + text[1:] if text.startswith(".") else text


def href(segment: str) -> str:
    """A slug as it appears inside a link (its ``%`` escaped once more, so the file name is found)."""
    return quote(segment, safe="")


@dataclass(frozen=True)
class ModelOverview:
    """One model on the index page."""

    model: str
    slug: str
    layers: int
    neurons: int
    dead: int
    images: int
    path: str
    analyzed_at: Any
    run: dict[str, Any]
    input: str = ""  # "224×224 NCHW"
    preprocessing: str = ""  # one line: resize, crop, channel order, normalisation


@dataclass(frozen=True)
class LayerRow:
    """One row of a model page: the layer's geometry and the medians / p90 of its indexes."""

    model: str
    layer: str
    alias: str
    slug: str
    op_type: str
    depth: int
    relative_depth: float
    channels: int
    height: int
    width: int
    rf: str
    neurons: int
    dead: int
    summary: dict[str, tuple[float | None, float | None]]  # index -> (median, p90)


@dataclass(frozen=True)
class Histogram:
    """An index's distribution over one layer: ``BINS`` counts between ``low`` and ``high``."""

    low: float
    high: float
    counts: tuple[int, ...]
    sorted_values: np.ndarray = field(repr=False, compare=False)

    def percentile(self, value: float) -> float:
        """Share of the layer's neurons (with a value) at or below ``value``, in percent."""
        return 100.0 * float(np.searchsorted(self.sorted_values, value, side="right")) / max(len(self.sorted_values), 1)

    def position(self, value: float) -> float:
        """Where ``value`` lies between ``low`` and ``high``, 0-1 (for the marker in the picture)."""
        return 0.5 if self.high <= self.low else min(max((value - self.low) / (self.high - self.low), 0.0), 1.0)


@dataclass(frozen=True)
class Unit:
    """One neuron of a layer grid: statistics and index values (None where not computed)."""

    unit: int
    neuron_id: int
    dead: bool
    has_nf: bool
    top_class: str | None
    values: dict[str, float | None]  # STAT_COLUMNS and the layer's index columns
    #: top colour and concept label in words (``search.describe``), and the two for the grid's filters
    description: str = ""
    concept: str | None = None
    top_color: str | None = None
    #: why the unit has too little evidence (docs/method.md §14); None when not weak
    weak: str | None = None


@dataclass(frozen=True)
class Crop:
    """One top image of a neuron, and where its receptive-field window lies in the display image."""

    rank: int
    image_id: int
    label: str | None
    activation: float
    name: str  # the image's file name
    y0: int
    x0: int


@dataclass(frozen=True)
class Link:
    """A neuron shown as a link to its page: ``score`` is a similarity or a match correlation."""

    model: str
    alias: str
    unit: int
    score: float
    model_slug: str
    layer_slug: str
    extra: str = ""
    #: False when the neuron has no stored NF (never fired): the link shows no thumbnail rather than a broken one
    has_nf: bool = True

    @property
    def page(self) -> str:
        """The neuron page, relative to the site's root."""
        return f"{href(self.model_slug)}/{href(self.layer_slug)}/{self.unit}/index.html"

    @property
    def nf(self) -> str:
        """The neuron's NF thumbnail, relative to the site's root."""
        return f"{href(self.model_slug)}/{href(self.layer_slug)}/nf/{self.unit}.png"


@dataclass(frozen=True)
class LayerData:
    """Everything the pages of one layer need."""

    row: LayerRow
    model_slug: str
    columns: tuple[str, ...]  # sortable numeric columns, stats first
    indexes: tuple[str, ...]  # index columns with at least one value in the layer
    units: tuple[Unit, ...]
    histograms: dict[str, Histogram]
    canvas: tuple[int, int]  # the crop (receptive-field window) size in display pixels
    image_size: tuple[int, int]  # the display image (network input) size


# ---- the index and model pages -------------------------------------------------------------------


def model_overviews(store: Store, models: Sequence[str] | None = None) -> list[ModelOverview]:
    """The models of the database (or ``models``) with counts and the run that made them."""
    wanted = list(models) if models is not None else store.models()
    for m in wanted:
        store.model_row(m)  # NotFoundError names the models that exist
    out = []
    for m in wanted:
        row = store.model_row(m)
        neurons, dead, images = site_reads.model_counts(store, m)
        out.append(ModelOverview(
            model=m, slug=slug(m), layers=int(row["n_layers"] or 0), neurons=neurons,
            dead=dead, images=images, path=Path(str(row["path"])).name, analyzed_at=row["analyzed_at"],
            run=site_reads.run_summary(store, row["run_id"]), input=f"{row['input_height']}×{row['input_width']} {row['layout']}",
            preprocessing=preprocessing_text(row["preprocessing"]),
        ))
    return out


def preprocessing_text(stored: Any) -> str:
    """A model's stored preprocessing in one line, in the order it is applied."""
    pre = json.loads(stored) if isinstance(stored, str) else dict(stored or {})
    resize, crop = pre.get("resize") or {}, pre.get("crop") or {}
    steps = []
    if resize.get("mode") == "shorter_side":
        steps.append(f"shorter side to {resize['size']} ({resize.get('interpolation', 'bilinear')})")
    elif resize.get("mode") == "exact":
        steps.append(f"resize to {resize['height']}×{resize['width']} ({resize.get('interpolation', 'bilinear')})")
    if crop.get("mode") == "center":
        steps.append(f"centre crop {crop['height']}×{crop['width']}")
    scale = pre.get("pixel_scale", 1.0)
    steps.append(f"{pre.get('channel_order', 'RGB')} (x{'' if scale == 1 else f' × {scale:g}'} − {_per_channel(pre.get('mean'))}) "
                 f"/ {_per_channel(pre.get('std'))}")
    return ", ".join(steps)


def _per_channel(values: Any) -> str:
    return "/".join(f"{float(v):g}" for v in values or ())


def fingerprint(store: Store, model: str) -> str:
    """What identifies what the pages of ``model`` show: they are rewritten only when this changes.
    Besides the analysis (run, neurons), ``index`` re-runs (a new ``runs`` row, values changed in
    place), the probe set (``probe`` recomputes the response profiles behind similar neurons) and
    the stored matches (their rows, not only their number) count."""
    row = store.model_row(model)
    extra = site_reads.fingerprint_parts(store, model)
    return "|".join(str(v) for v in (
        row["run_id"], row["analyzed_at"], row["sha256"], extra["n"], extra["last"], extra["last_run"], extra["probe"],
        extra["matches"],
    ))


def layer_rows(store: Store, model: str) -> list[LayerRow]:
    """The model's layers in depth order with counts and the median / p90 of every index."""
    return [_layer_row(r) for r in site_reads.layers_with_summary(store, model, INDEX_COLUMNS)]


def _layer_row(r: dict[str, Any]) -> LayerRow:
    rf = "global" if r["rf_global"] else f"{r['rf_size_y']}×{r['rf_size_x']} /{r['rf_stride_y']}"
    return LayerRow(
        model=r["model"], layer=r["layer"], alias=r["alias"], slug=slug(r["alias"]), op_type=r["op_type"],
        depth=int(r["depth"]), relative_depth=float(r["relative_depth"]), channels=int(r["channels"]),
        height=int(r["height"]), width=int(r["width"]), rf=rf, neurons=int(r["neurons"]), dead=int(r["dead"]),
        summary={c: (_num(r[f"{c}_median"]), _num(r[f"{c}_p90"])) for c in INDEX_COLUMNS},
    )


def model_indexes(rows: Sequence[LayerRow]) -> tuple[str, ...]:
    """Index columns with a value in at least one layer (the others are left out of the tables)."""
    return tuple(c for c in INDEX_COLUMNS if any(r.summary[c][0] is not None for r in rows))


def find_layer(rows: Sequence[LayerRow], layer_slug: str) -> LayerRow:
    """The layer whose slug is ``layer_slug`` (how ``serve`` maps a URL to a layer)."""
    for r in rows:
        if r.slug == layer_slug:
            return r
    raise NotFoundError(f"no layer {layer_slug!r}")


# ---- a layer's pages -------------------------------------------------------------------------------


def layer_data(store: Store, row: LayerRow) -> LayerData:
    """A layer's units with statistics and indexes, and the distribution of every index it has."""
    cols = site_reads.layer_unit_columns(store, row.model, row.layer, (*STAT_COLUMNS, *MEASURED))
    values = {c: _float_column(cols[c]) for c in (*STAT_COLUMNS, *MEASURED)}
    indexes = tuple(c for c in MEASURED if np.isfinite(values[c]).any())
    shown = (*STAT_COLUMNS, *indexes)
    has_nf = np.asarray(cols["has_nf"], bool)
    words = {int(r["unit"]): r for r in layer_descriptions(store, row.model, row.layer)}
    units = tuple(
        Unit(
            unit=int(cols["unit"][k]), neuron_id=int(cols["neuron_id"][k]), dead=bool(cols["dead"][k]),
            has_nf=bool(has_nf[k]), top_class=_text(cols["top_class"][k]), weak=_text(cols["weak"][k]),
            values={c: _num(values[c][k]) for c in shown},
            **_words(words.get(int(cols["unit"][k]))),
        )
        for k in range(len(cols["unit"]))
    )
    ref = stored_layer(store, row.model, row.layer)
    geometry = crop_geometry(ref.rf, ref.input_size, 0)
    return LayerData(
        row=row, model_slug=slug(row.model), columns=shown, indexes=indexes, units=units,
        histograms={c: histogram(values[c]) for c in indexes},
        canvas=tuple(geometry.canvas), image_size=ref.input_size,
    )


def _words(row: dict[str, Any] | None) -> dict[str, Any]:
    """A unit's description fields from its description row (none before concepts were computed)."""
    if row is None:
        return {}
    return {"description": description_text(row), "concept": row["concept"], "top_color": row["top_color"]}


def histogram(values: np.ndarray) -> Histogram:
    """``BINS`` equal bins over the finite values (over 0-1 when they all lie there, as indexes do)."""
    finite = np.sort(values[np.isfinite(values)])
    low, high = (0.0, 1.0) if finite.size == 0 or (finite[0] >= 0 and finite[-1] <= 1) else (float(finite[0]), float(finite[-1]))
    counts, _ = np.histogram(finite, bins=BINS, range=(low, high if high > low else low + 1))
    return Histogram(low, high, tuple(int(c) for c in counts), finite)


def layer_crops(store: Store, data: LayerData, top: int, units: Sequence[int] | None = None) -> dict[int, list[Crop]]:
    """Each unit's ``top`` best images with the window its crop is cut from (display-image pixels)."""
    ref = stored_layer(store, data.row.model, data.row.layer)
    geometry = crop_geometry(ref.rf, ref.input_size, 0)
    cols = site_reads.layer_top_images(store, data.row.model, data.row.layer, top, units)
    if not len(cols["unit"]):
        return {}
    ys, xs = geometry.starts(cols["y"].astype(np.int64), cols["x"].astype(np.int64))
    out: dict[int, list[Crop]] = defaultdict(list)
    for k in range(len(cols["unit"])):
        out[int(cols["unit"][k])].append(Crop(
            rank=int(cols["rank"][k]), image_id=int(cols["image_id"][k]), label=_text(cols["label"][k]),
            activation=float(cols["activation"][k]), name=Path(str(cols["path"][k])).name, y0=int(ys[k]), x0=int(xs[k]),
        ))
    return out


def layer_classes(store: Store, model: str, layer: str, units: Sequence[int] | None = None) -> dict[int, list[tuple[str, float]]]:
    """Each unit's class distribution over its top images, most frequent first."""
    cols = site_reads.layer_class_frequencies(store, model, layer, units)
    out: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for u, label, f in zip(cols["unit"], cols["label"], cols["frequency"]):
        out[int(u)].append((str(label), float(f)))
    return out


def link(model: str, alias: str, unit: int, score: float, extra: str = "") -> Link:
    """A link to a neuron's page."""
    return Link(model, alias, unit, score, slug(model), slug(alias), extra)


class NeuronNames:
    """Every neuron id's model, layer alias, unit and whether it has an NF, read once: turns search hits into links."""

    def __init__(self, store: Store) -> None:
        cols = neuron_table.neuron_names(store)
        self._by_id = {
            int(i): (str(m), str(a), int(u), bool(f))
            for i, m, a, u, f in zip(cols["neuron_id"], cols["model"], cols["alias"], cols["unit"], cols["has_nf"])
        }
        self._slugs: dict[str, str] = {}

    def link(self, neuron_id: int, score: float, extra: str = "") -> Link:
        model, alias, unit, has_nf = self._by_id[neuron_id]
        return Link(model, alias, unit, score, self._slug(model), self._slug(alias), extra, has_nf)

    def _slug(self, name: str) -> str:
        if name not in self._slugs:
            self._slugs[name] = slug(name)
        return self._slugs[name]


def similar_links(
    store: Store, names: NeuronNames, model: str, others: Sequence[str], k: int
) -> dict[int, tuple[list[Link], list[Link]]]:
    """Each neuron's ``k`` most similar neurons (response profiles) in its own model and in ``others``."""
    hits = nearest_by_model(store, [model, *others], k=k)
    ids = neuron_table.model_neuron_ids(store, model)
    out = {}
    for i in ids.tolist():
        same, other = hits.get(i, ([], []))
        out[i] = ([names.link(h, s) for h, s in same], [names.link(h, s) for h, s in other])
    return out


def layer_matches(
    store: Store, model: str, layer: str, names: NeuronNames, models: Sequence[str], limit: int
) -> dict[int, list[Link]]:
    """Each unit's ``neuron_matches`` partners (either side) among ``models``: best matches first, then the
    strongest one-to-one pairs, ``limit`` at most."""
    rows = site_reads.layer_match_rows(store, model, layer, models, limit)
    out: dict[int, list[Link]] = defaultdict(list)
    for r in rows:
        out[int(r["unit"])].append(names.link(int(r["neuron_id"]), float(r["score"]), "one-to-one" if r["one_to_one"] else "best"))
    return out


# ---- internals ---------------------------------------------------------------------------------------


def _float_column(column: np.ndarray) -> np.ndarray:
    """A numeric column as float64 with NULLs as NaN."""
    if np.ma.isMaskedArray(column):
        return np.ma.filled(column.astype(np.float64), np.nan)
    return np.asarray(column, np.float64)


def _num(value: Any) -> float | None:
    if value is None or np.ma.is_masked(value):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _text(value: Any) -> str | None:
    return None if value is None or np.ma.is_masked(value) else str(value)
