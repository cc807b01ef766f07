"""What the receptive-field walk (rf_walk.py) reads off nodes, and its algebra of window states:
the Resize/Upsample index map, joins of branches and reshapes (node values: ``node_values``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction

import onnx
from onnx import shape_inference

from onnx_nfi.graph.receptive_field import POOLED, STRONG, Global, Local, State

log = logging.getLogger("onnx_nfi.graph.rf_walk")


def join(states: Sequence[State]) -> State:
    """Join of branches: union of the local windows; pooled summaries are ignored next to them."""
    locals_ = [s for s in states if isinstance(s, Local)]
    globals_ = [s for s in states if isinstance(s, Global)]
    if any(not g.pooled for g in globals_):
        return STRONG
    if not locals_:
        return POOLED if globals_ else None
    first = locals_[0]
    if any(s.axes != first.axes for s in locals_[1:]):
        log.warning("Joining tensors whose image axes differ: receptive field taken as global.")
        return STRONG
    sizes = {n for s in locals_ for n in (s.y.n, s.x.n)} - {1}
    if any(s.y.n not in (1, first.y.n) or s.x.n not in (1, first.x.n) for s in locals_) and len(sizes) > 1:
        log.warning("Joining tensors of different image sizes (sizes unknown to shape inference): receptive field taken as global.")
        return STRONG
    y, x = first.y, first.x
    for other in locals_[1:]:
        y, x = y.union(other.y), x.union(other.x)
    return Local(first.axes, y, x)


def globalise(state: State) -> State:
    """After Flatten/Gemm/MatMul: a local tensor becomes global; a pooled one stays a summary."""
    return STRONG if isinstance(state, Local) else state


def same_axis(in_shape: Sequence[int], out_shape: Sequence[int], axis: int) -> int | None:
    """Where ``axis`` lands after a row-major reshape, if its extent and strides are unchanged."""
    before, size, after = math.prod(in_shape[:axis]), in_shape[axis], math.prod(in_shape[axis + 1 :])
    for b, dim in enumerate(out_shape):
        if dim == size and math.prod(out_shape[:b]) == before and math.prod(out_shape[b + 1 :]) == after:
            return b
    return None


def inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with shapes inferred, or as it is when inference fails."""
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # a model ORT runs may still trip strict checks; sizes then come from the formulas
        log.warning("Shape inference failed (%s); receptive fields use computed sizes.", err)
        return model


def resize_sources(
    mode: str, coord: str, nearest: str, scale: Fraction, n_in: int, n_out: int
) -> tuple[list[int], list[int]]:
    """First and last source index each of ``n_out`` output indices of a Resize/Upsample reads along
    one axis, by the ONNX formulas for the coordinate transformation ``coord`` and ``mode``."""
    lo, hi = [], []
    for i in range(n_out):
        if coord == "half_pixel" or (coord == "pytorch_half_pixel" and n_out > 1):
            x = (i + Fraction(1, 2)) / scale - Fraction(1, 2)
        elif coord == "align_corners":
            x = Fraction(i * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        elif coord == "tf_half_pixel_for_nn":
            x = (i + Fraction(1, 2)) / scale
        elif coord == "asymmetric":
            x = i / scale
        else:
            x = Fraction(0)
        if mode == "nearest":
            rounders = {
                "round_prefer_floor": lambda v: math.ceil(v - Fraction(1, 2)),
                "round_prefer_ceil": lambda v: math.floor(v + Fraction(1, 2)),
                "floor": math.floor,
                "ceil": math.ceil,
            }
            first = last = rounders[nearest](x)
        else:  # linear / cubic: neighbours with a non-zero weight
            x = min(max(x, Fraction(0)), Fraction(n_in - 1))
            reach = 1 if mode == "linear" else 2
            first = math.floor(x) if x.denominator == 1 else math.floor(x) - (reach - 1)
            last = math.floor(x) if x.denominator == 1 else math.floor(x) + reach
        lo.append(min(max(first, 0), n_in - 1))
        hi.append(min(max(last, 0), n_in - 1))
    return lo, hi
