"""A neuron in words: its top colour and concept label with their evidence (docs/method.md, Concept
labels), e.g. ``red · dog (f 0.62, ×38, p 3e-40)``. ``describe`` reads one neuron; the text is made
by ``description_text`` everywhere it is shown (CLI, cards, the browser), so it reads the same."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_nfi.errors import NotFoundError
from onnx_nfi.names import INDEX_COLUMNS, parse_neuron
from onnx_nfi.refs import NeuronRef
from onnx_nfi.store.descriptions import neuron_description
from onnx_nfi.store.duckdb_store import Store
from onnx_nfi.store.neuron_ref import missing_neuron, resolve_neuron

#: What a neuron without a top colour or concept label is described as.
NO_DESCRIPTION = "no colour or concept label"


def p_text(p: float) -> str:
    """A p-value in one significant digit: ``3e-40``, ``0.004`` (``<1e-300`` below double's range)."""
    if p <= 0:
        return "<1e-300"
    return f"{p:.0e}".replace("e-0", "e-") if p < 0.001 else f"{p:.1g}"


def description_text(row: dict[str, Any]) -> str:
    """``top colour · concept (f share, ×enrichment, p corrected)`` from a description row; either part
    may be missing (``NO_DESCRIPTION`` when both are)."""
    parts = [row["top_color"]] if row.get("top_color") else []
    if row.get("concept"):
        stats = []
        if _given(row.get("concept_share")):
            stats.append(f"f {row['concept_share']:.2f}")
        if _given(row.get("concept_enrichment")):
            e = float(row["concept_enrichment"])
            stats.append(f"×{e:.0f}" if e >= 10 else f"×{e:.1f}")
        if _given(row.get("concept_p")):
            stats.append(f"p {p_text(float(row['concept_p']))}")
        parts.append(f"{row['concept']} ({', '.join(stats)})" if stats else row["concept"])
    return " · ".join(parts) or NO_DESCRIPTION


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Description:
    """One neuron described: its name, the text, and the values behind it (None where not computed)."""

    neuron: str  # MODEL:ALIAS:UNIT
    text: str
    top_color: str | None
    top_color_share: float | None
    concept: str | None
    concept_share: float | None
    concept_enrichment: float | None
    concept_p: float | None
    top_class: str | None
    top_class_frequency: float | None
    indexes: dict[str, float | None]


def describe(db: str | Path, neuron: str) -> Description:
    """The description of ``MODEL:LAYER:UNIT`` (LAYER: alias or tensor name) and its indexes."""
    model, layer, unit = parse_neuron(neuron)
    with Store.open(db, read_only=True) as store:
        row = neuron_description(store, model, layer, unit) if store.has_table("concept_labels") else None
        if row is None:
            layer_row = resolve_neuron(store, NeuronRef(model, layer, unit))  # names the missing model, layer or unit
            if not store.has_table("concept_labels"):
                raise NotFoundError(f"{db} has no concept labels yet; compute them with: onnx-nfi index {model} --indexes concepts")
            raise missing_neuron(NeuronRef(model, layer, unit), layer_row)
    value = {k: (float(v) if _given(v) and not isinstance(v, str) else (v if _given(v) else None)) for k, v in row.items()}
    return Description(
        neuron=str(NeuronRef(row['model'], row['alias'], int(row['unit']))), text=description_text(row),
        top_color=value["top_color"], top_color_share=value["top_color_share"], concept=value["concept"],
        concept_share=value["concept_share"], concept_enrichment=value["concept_enrichment"],
        concept_p=value["concept_p"], top_class=value["top_class"], top_class_frequency=value["top_class_frequency"],
        indexes={c: value[c] for c in INDEX_COLUMNS},
    )
