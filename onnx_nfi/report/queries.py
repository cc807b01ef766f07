"""What the pictures need, read from the database as numpy arrays and frozen records.

Every function takes an open ``Store`` (read-only is enough) and resolves the user's names the
same way: the model by its name in the database, the layer by alias or tensor name, and fails
with a ``NotFoundError`` that names what exists. A neuron is written ``MODEL:LAYER:UNIT`` in
messages, as everywhere in onnx-nfi.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_nfi.data.display import display_image
from onnx_nfi.data.images import stored_image_path
from onnx_nfi.data.preprocess import from_dict
from onnx_nfi.errors import NotFoundError, StoreError
from onnx_nfi.graph.receptive_field import ReceptiveField
from onnx_nfi.neurons.nf import GREY, crop_geometry
from onnx_nfi.refs import LayerRef, NeuronRef
from onnx_nfi.search.describe import description_text
from onnx_nfi.store.descriptions import neuron_description
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.neuron_reads import (
    neuron_column_types,
    neuron_row,
    ranked_counts,
    ranked_nfs,
    top_image_rows,
    values_by_layer,
)
from onnx_nfi.store.neuron_ref import missing_neuron
from onnx_nfi.store.nf_storage import decode
from onnx_nfi.store.relevance import RELEVANCE_COLUMNS
from onnx_nfi.store.schema import INDEX_COLUMNS

#: Columns shown in a card's header when they have a value.
CARD_COLUMNS = (*INDEX_COLUMNS, "top_class", "top_class_frequency", "population_code", *RELEVANCE_COLUMNS)


@dataclass(frozen=True)
class StoredLayer:
    """A stored layer, resolved from the user's alias or tensor name."""

    model: str
    layer: str  # tensor name
    alias: str
    channels: int
    rf: ReceptiveField
    input_size: tuple[int, int]

    @property
    def layer_ref(self) -> LayerRef:
        """The layer as every message names it, ``MODEL:ALIAS``."""
        return LayerRef(self.model, self.alias)


@dataclass(frozen=True)
class NeuronNF:
    """One neuron's NF and, when the tiles are ordered by a column, that column's value."""

    unit: int
    nf: np.ndarray | None  # uint8 [h, w, 3] RGB; None when dead or never computed
    value: Any = None
    #: top images sharing the largest activation (``neurons.saturated_top``); None when dead or not stored
    saturated_top: int | None = None
    #: why the unit has too little evidence (``neurons.weak_reason``, docs/method.md §14); None when not weak
    weak: str | None = None


@dataclass(frozen=True)
class LayerNFs:
    """NFs of (some of) a layer's neurons, in the order asked for."""

    ref: StoredLayer
    column: str | None  # the ordering column, None when ordered by unit
    descending: bool
    neurons: tuple[NeuronNF, ...]
    first: int  # position of ``neurons[0]`` in the whole ordering (0 = its first)
    total: int  # neurons in the whole ordering (after ``limit``)
    available: int  # neurons of the layer the ordering draws from (before ``limit``)
    weak_left_out: int = 0  # weak units left out of a ranking (docs/method.md §14)


@dataclass(frozen=True)
class CardCrop:
    """One of a neuron's top images: its crop as the network saw it, and why it is there."""

    rank: int
    image_id: int
    label: str | None
    activation: float
    relative: float  # a_j / a_1 (NaN when a_1 <= 0: a dead unit)
    crop: np.ndarray  # uint8 [h, w, 3] RGB; out-of-image pixels grey 127


@dataclass(frozen=True)
class NeuronCard:
    """Everything a neuron card shows."""

    ref: StoredLayer
    unit: int
    nf: np.ndarray | None  # None for a dead unit
    crops: tuple[CardCrop, ...]
    values: dict[str, Any]  # non-NULL index columns, in CARD_COLUMNS order
    #: top images sharing the largest activation, ranked and placed by the pre-activation (docs/method.md §2)
    saturated_top: int | None = None
    #: top colour and concept label in words (``search.describe``); None before they were computed
    description: str | None = None
    #: why the unit has too little evidence (docs/method.md §14); None when not weak
    weak: str | None = None
    #: the unit never fired: no NF, its stored top list shown as it is
    dead: bool = False
    #: the concept label (docs/method.md §10); None where there is none
    concept: str | None = None


@dataclass(frozen=True)
class IndexDistribution:
    """One index's values per layer for one model, layers in depth order (NULLs dropped)."""

    model: str
    aliases: tuple[str, ...]
    relative_depth: np.ndarray
    values: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class SelectivityByDepth:
    """Per index, every model's per-layer distributions; indexes with no value at all are ``missing``."""

    indexes: dict[str, tuple[IndexDistribution, ...]]
    missing: tuple[str, ...]


def neuron_name(ref: StoredLayer, unit: int) -> str:
    """How messages and titles name a neuron: ``MODEL:LAYER:UNIT`` (the layer by alias)."""
    return str(NeuronRef(ref.model, ref.alias, unit))


def stored_layer(store: Store, model: str, layer: str) -> StoredLayer:
    """Resolve a layer (alias or tensor name) with its receptive field and the model's input size."""
    model_row = store.model_row(model)
    row = store.resolve_layer(model, layer)
    rf = ReceptiveField(
        size=(row["rf_size_y"], row["rf_size_x"]),
        stride=(row["rf_stride_y"], row["rf_stride_x"]),
        offset=(row["rf_offset_y"], row["rf_offset_x"]),
        is_global=bool(row["rf_global"]),
    )
    return StoredLayer(
        model,
        row["layer"],
        row["alias"],
        int(row["channels"]),
        rf,
        (model_row["input_height"], model_row["input_width"]),
    )


def neuron_nf(store: Store, model: str, layer: str, unit: int) -> tuple[StoredLayer, np.ndarray, dict[str, Any]]:
    """One neuron's stored NF and its index values (as a card shows them); a dead neuron (or one
    analysed with ``--no-nf``) is an error that says so."""
    ref = stored_layer(store, model, layer)
    row = _neuron_row(store, ref, unit)
    return ref, _nf_of(row, ref, unit), _values(row)


def layer_nfs(
    store: Store,
    model: str,
    layer: str,
    *,
    order_by: str = "unit",
    descending: bool | None = None,
    limit: int | None = None,
    only_valued: bool = False,
    window: tuple[int, int] | None = None,
    include_weak: bool = False,
) -> LayerNFs:
    """A layer's NFs ordered by unit or by any scalar ``neurons`` column (NULLs last).

    ``descending`` defaults to ascending for ``unit`` and descending for a column (the most
    selective first). ``only_valued`` drops neurons whose column is NULL. ``limit`` keeps the
    first neurons of the ordering; ``window`` = (start, count) reads only that part of it (a page).
    An ordering by a column leaves weak units out unless ``include_weak`` (docs/method.md §14).
    """
    ref = stored_layer(store, model, layer)
    column = None if order_by == "unit" else check_column(store, order_by, "--order-by")
    if descending is None:
        descending = column is not None
    available, left_out = ranked_counts(store, ref.model, ref.layer, column, only_valued=only_valued,
                                        include_weak=include_weak)
    total = min(available, limit) if limit else available
    start, count = window or (0, total)
    data = ranked_nfs(store, ref.model, ref.layer, column, descending=descending, only_valued=only_valued,
                      include_weak=include_weak, start=start, count=min(count, total - start))
    neurons = tuple(
        NeuronNF(
            int(data["unit"][k]),
            decode(data["nf"][k], data["nf_height"][k], data["nf_width"][k]),
            _plain(data["value"][k]) if column else None,
            _plain(data["saturated_top"][k]),
            _plain(data["weak"][k]),
        )
        for k in range(len(data["unit"]))
    )
    if only_valued and column and not available:
        _refuse_empty(ref, column, left_out)
    return LayerNFs(ref, column, descending, neurons, start, total, available, left_out)


def _refuse_empty(ref: StoredLayer, column: str, weak: int) -> None:
    """The error of a ranking with nothing to rank: no value at all, or only weak units' values."""
    if weak:
        raise NotFoundError(
            f"every neuron of {ref.layer_ref} with a {column} value is flagged weak (too little evidence); "
            "add --include-weak to rank them anyway"
        )
    raise NotFoundError(
        f"no neuron of {ref.layer_ref} has a {column} value; "
        f"compute it with: onnx-nfi index {ref.model} --indexes …"
    )


def neuron_card(
    store: Store, model: str, layer: str, unit: int, top: int = 20, image_root: str | Path | None = None
) -> NeuronCard:
    """A neuron's NF, its ``top`` crops (cut from its top images as the network saw them) and indexes;
    ``image_root`` is where images stored relative to their root (``analyze --image-root``) are now."""
    ref = stored_layer(store, model, layer)
    row = _neuron_row(store, ref, unit)
    dead = bool(row["dead"])
    nf = None if dead else _nf_of(row, ref, unit)  # a dead unit's stored top list is still shown
    pre = from_dict(store.model_row(model)["preprocessing"], f"stored preprocessing of {model}")
    tops = top_image_rows(store, ref.model, ref.layer, unit, top)
    geometry = crop_geometry(ref.rf, ref.input_size, 0)
    ys, xs = geometry.starts(np.array([t["y"] for t in tops], np.int64), np.array([t["x"] for t in tops], np.int64))
    best = float(tops[0]["activation"]) if tops and float(tops[0]["activation"]) > 0 else float("nan")
    crops = tuple(
        CardCrop(
            rank=int(t["rank"]),
            image_id=int(t["image_id"]),
            label=t["label"],
            activation=float(t["activation"]),
            relative=float(t["activation"]) / best,
            crop=cut_crop(display_image(stored_image_path(t["path"], image_root), pre, t["sha256"]), int(y), int(x),
                          geometry.canvas),
        )
        for t, y, x in zip(tops, ys, xs)
    )
    words = neuron_description(store, ref.model, ref.layer, unit) if store.has_table("concept_labels") else None
    return NeuronCard(
        ref, unit, nf, crops, _values(row), _plain(row["saturated_top"]), description_text(words) if words else None,
        weak=row.get("weak_reason") if row.get("weak") else None, dead=dead, concept=row.get("concept"),
    )


def cut_crop(image: np.ndarray, y0: int, x0: int, size: tuple[int, int]) -> np.ndarray:
    """The ``size`` window at ``(y0, x0)`` of ``image``; parts outside the image are grey 127 (§4)."""
    h, w = image.shape[:2]
    out = np.full((*size, 3), int(GREY), np.uint8)
    ya, yb, xa, xb = max(y0, 0), min(y0 + size[0], h), max(x0, 0), min(x0 + size[1], w)
    if ya < yb and xa < xb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return out


def selectivity_by_depth(store: Store, models: Sequence[str], indexes: Sequence[str]) -> SelectivityByDepth:
    """Each index's non-NULL values per layer of each model (all models when ``models`` is empty)."""
    models = list(models) or store.models()
    if not models:
        raise NotFoundError(f"{store.path} holds no model yet; run 'onnx-nfi analyze' first")
    for m in models:
        store.model_row(m)
    columns = [check_column(store, i, "--indexes", numeric=True) for i in indexes]
    layers = {m: store.layer_rows(m) for m in models}
    found: dict[str, tuple[IndexDistribution, ...]] = {}
    for column in dict.fromkeys(columns):
        per_model = []
        for m in models:
            data = values_by_layer(store, m, column)
            values = data["v"].astype(np.float64)
            keep = np.isfinite(values)
            by_layer = tuple(values[keep & (data["layer"] == row["layer"])] for row in layers[m])
            if any(v.size for v in by_layer):
                per_model.append(
                    IndexDistribution(
                        m,
                        tuple(r["alias"] for r in layers[m]),
                        np.array([r["relative_depth"] for r in layers[m]], np.float64),
                        by_layer,
                    )
                )
        if per_model:
            found[column] = tuple(per_model)
    missing = tuple(c for c in dict.fromkeys(columns) if c not in found)
    if not found:
        raise NotFoundError(
            f"no value of {', '.join(missing)} for {', '.join(models)}; "
            "compute indexes with: onnx-nfi index MODEL --indexes …"
        )
    return SelectivityByDepth(found, missing)


def check_column(store: Store, name: str, option: str, numeric: bool = False) -> str:
    """A ``neurons`` column the user named (``color`` is short for ``color_selectivity``); arrays are refused."""
    types = neuron_column_types(store)
    usable = {c: t for c, t in types.items() if not t.endswith("]") and (not numeric or _is_numeric(t))}
    for candidate in (name, f"{name}_selectivity"):
        if candidate in usable:
            return candidate
    kind = "numeric neurons column" if numeric else "neurons column"
    raise StoreError(f"{option}: {name!r} is not a {kind}; use one of: {', '.join(usable)}")


# ---- internals -------------------------------------------------------------------------------


def _is_numeric(duck_type: str) -> bool:
    return duck_type in (
        "FLOAT",
        "DOUBLE",
        "INTEGER",
        "BIGINT",
        "SMALLINT",
        "TINYINT",
        "HUGEINT",
    ) or duck_type.startswith("DECIMAL")


def _neuron_row(store: Store, ref: StoredLayer, unit: int) -> dict[str, Any]:
    row = neuron_row(store, ref.model, ref.layer, unit)
    if row is None:
        raise missing_neuron(NeuronRef(ref.model, ref.layer, unit), {"alias": ref.alias, "channels": ref.channels})
    return row


def _values(row: dict[str, Any]) -> dict[str, Any]:
    """A neuron's non-NULL ``CARD_COLUMNS``, in that order."""
    return {c: _plain(row[c]) for c in CARD_COLUMNS if row.get(c) is not None}


def _nf_of(row: dict[str, Any], ref: StoredLayer, unit: int) -> np.ndarray:
    nf = decode(row["nf"], row["nf_height"], row["nf_width"])
    if nf is not None:
        return nf
    if row["dead"]:
        raise NotFoundError(
            f"neuron is dead: {neuron_name(ref, unit)} never fired on the analysed images, so it has no NF"
        )
    raise NotFoundError(
        f"no NF stored for {neuron_name(ref, unit)}; the model was analysed with --no-nf, analyse it again with --nf"
    )


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, NULL / NaN as None."""
    if value is None or np.ma.is_masked(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


