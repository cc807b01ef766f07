"""Non-finite activations (NaN, ±Inf) refused at the batch where they appear, with the layer named.

A ``Log`` or a division in the graph can make a layer's maxima NaN or infinite on some images; top-N
ranking, moments and every index are meaningless then. The policy is to refuse the run, naming the
layer and its first such unit, as soon as a batch shows them (not after hours of scanning).
"""

from __future__ import annotations

import numpy as np

from onnx_nfi.errors import ModelError
from onnx_nfi.graph.layers import Layer


def non_finite(layer: Layer, bad_units: np.ndarray) -> ModelError:
    """The one-line error for ``layer``, whose units ``bad_units`` gave NaN or ±Inf."""
    return ModelError(
        f"layer {layer.alias} ({layer.tensor}) gives non-finite activations (NaN or Inf) in "
        f"{bad_units.size} of {layer.channels} units (first: unit {int(bad_units[0])}); the model computes them "
        f"(e.g. a Log or a division before it): fix the model or leave the layer out with --layers"
    )


def check_batch(layer: Layer, maxima: np.ndarray) -> None:
    """Raise for a batch's per-unit maxima ``[B, C]`` of ``layer`` that are not all finite."""
    if not np.isfinite(maxima).all():
        raise non_finite(layer, np.flatnonzero(~np.isfinite(maxima).all(axis=0)))
