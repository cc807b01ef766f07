"""Result records of the search verbs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_nfi.names import VECTORS
from onnx_nfi.refs import NeuronRef

#: Why a neuron has no vector of a kind, for the error that says so.
MISSING_REASON = {v.name: v.missing for v in VECTORS.values()}


@dataclass(frozen=True)
class Neuron:
    """A neuron as search results show it; ``score`` is its similarity to the query (1 for the query)."""

    model: str
    layer: str
    alias: str
    unit: int
    neuron_id: int
    score: float
    top_class: str | None
    indexes: dict[str, float | None]
    nf: np.ndarray | None  # uint8 H x W x 3 RGB, as stored; None for dead or no NF

    @property
    def name(self) -> str:
        """``MODEL:ALIAS:UNIT``, the form every command takes."""
        return str(NeuronRef(self.model, self.alias, self.unit))


@dataclass(frozen=True)
class SimilarResult:
    """The query neuron and its nearest neighbours, best first."""

    query: Neuron
    by: str
    hits: tuple[Neuron, ...]


@dataclass(frozen=True)
class LayerBest:
    """For one layer of A: the layer of B that explains it best, and how well."""

    layer: str
    alias: str
    neurons: int  # neurons with a response vector
    best_layer: str | None
    best_alias: str | None
    mean_best: float  # NaN when the layer has no vectors
    mean_one_to_one: float


@dataclass(frozen=True)
class MatchResult:
    """``match``: the heat map of mean best correlation (A layers x B layers, depth order) and a summary."""

    model_a: str
    model_b: str
    aliases_a: tuple[str, ...]
    aliases_b: tuple[str, ...]
    heat: np.ndarray  # float32 [La, Lb]; NaN where a layer has no response vectors
    layers: tuple[LayerBest, ...]
    mean_best: float  # over all neurons of A, best over all of B
    best_rows: int
    one_to_one_rows: int
    picture: Path | None = None
