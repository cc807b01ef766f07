"""Receptive fields and the window state every tensor carries (docs/method.md §3).

``ReceptiveField`` is a layer's ``(size, stride, offset)`` per image axis; ``AxisWindows`` the
exact per-index windows of one axis behind it; ``Local`` / ``Global`` a tensor's state. How the
graph is walked to compute them, and the decisions taken on the way, are in ``rf_walk.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

import numpy as np

from onnx_nfi.errors import LayerError

Number = Union[int, Fraction]
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class ReceptiveField:
    """Window of every output position in input pixels; fields are ``(y, x)`` pairs.

    ``stride`` and ``offset`` are ints except after upsampling below the input's resolution,
    where they are ``Fraction`` s and ``window()`` floors the start. A global field has
    ``size`` = the image, ``stride`` = ``offset`` = 0, so every position's window is the image.
    """

    size: tuple[int, int]
    stride: tuple[Number, Number]
    offset: tuple[Number, Number]
    is_global: bool = False

    def window(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` half-open window in input pixel coordinates, NOT clipped to the image."""
        y0 = math.floor(y * self.stride[0] + self.offset[0])
        x0 = math.floor(x * self.stride[1] + self.offset[1])
        return y0, x0, y0 + self.size[0], x0 + self.size[1]


def global_field(input_hw: tuple[int, int]) -> ReceptiveField:
    """The receptive field of a tensor that depends on the whole image."""
    return ReceptiveField(size=tuple(input_hw), stride=(0, 0), offset=(0, 0), is_global=True)


def clipped_windows(
    rf: ReceptiveField, input_hw: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, an ``(n, 2)`` int array of half-open windows clipped to the image; empty → ``(0, 0)``.

    Windows are products of a y and an x interval, so two fields agree at every output position
    exactly when these per-axis arrays agree.
    """
    out = []
    for axis in (0, 1):
        n, extent = out_hw[axis], input_hw[axis]
        starts = np.array([math.floor(i * rf.stride[axis] + rf.offset[axis]) for i in range(n)], dtype=np.int64)
        lo = np.clip(starts, 0, extent)
        hi = np.clip(starts + rf.size[axis], 0, extent)
        empty = hi <= lo
        out.append(np.stack([np.where(empty, 0, lo), np.where(empty, 0, hi)], axis=1))
    return out[0], out[1]


# ----------------------------------------------------------------------------------- tensor states
_EMPTY = 2**40  # seen spans of an index that reads no pixel: lo = +_EMPTY, hi = −_EMPTY


@dataclass(frozen=True, eq=False)
class AxisWindows:
    """Along one image axis, per output index, exact pixel spans (inclusive, numpy int arrays).

    ``lo``/``hi``: the unclipped window — taps on padding extend it geometrically, as in §3 —
    whose tightest linear cover with jump ``j`` is the receptive field. ``seen_lo``/``seen_hi``:
    the span of input pixels that really influence the index (clipped to the image, minus pixels
    dropped by a floor-rounded layer, dilation holes at the border; reflect padding included).
    """

    j: Fraction
    lo: np.ndarray
    hi: np.ndarray
    seen_lo: np.ndarray
    seen_hi: np.ndarray

    @classmethod
    def identity(cls, n: int) -> AxisWindows:
        i = np.arange(n, dtype=np.int64)
        return cls(Fraction(1), i, i, i, i)

    @property
    def n(self) -> int:
        return len(self.lo)

    def gather(self, taps: np.ndarray, reads: np.ndarray, j: Fraction) -> AxisWindows:
        """Output ``i`` sits on positions ``taps[i]`` and reads ``reads[i]`` (−1: padding, nothing).

        ``taps`` outside the tensor extend the window by the jump, as if the image went on.
        """
        valid = reads >= 0
        r = np.where(valid, reads, 0)
        lo = np.minimum(self._extended(self.lo, taps).min(1), np.where(valid, self.lo[r], _EMPTY).min(1))
        hi = np.maximum(self._extended(self.hi, taps).max(1), np.where(valid, self.hi[r], -_EMPTY).max(1))
        seen_lo = np.where(valid, self.seen_lo[r], _EMPTY).min(1)
        seen_hi = np.where(valid, self.seen_hi[r], -_EMPTY).max(1)
        return AxisWindows(j, lo, hi, seen_lo, seen_hi)

    def window_op(self, k: int, s: int, d: int, pad_begin: int, n_out: int) -> AxisWindows:
        """Conv/pool: output ``i`` reads inputs ``i·s − p + t·d``, ``t = 0…k−1`` (§3 update)."""
        taps = np.arange(n_out)[:, None] * s - pad_begin + np.arange(k)[None, :] * d
        return self.gather(taps, np.where((taps >= 0) & (taps < self.n), taps, -1), self.j * s)

    def index_map(self, src_lo: Sequence[int], src_hi: Sequence[int]) -> AxisWindows:
        """Output ``i`` reads source indices ``src_lo[i]…src_hi[i]`` (resize, depth-to-space…)."""
        src_lo, src_hi = np.asarray(src_lo, np.int64), np.asarray(src_hi, np.int64)
        width = int((src_hi - src_lo).max()) + 1
        taps = np.minimum(src_lo[:, None] + np.arange(width)[None, :], src_hi[:, None])
        return self.gather(taps, taps, self.j * Fraction(self.n, len(src_lo)))

    def shift(self, first: int, step: int, n_out: int, mode: str = "constant") -> AxisWindows:
        """Output ``i`` is input ``first + i·step`` (Slice, Split; Pad with ``first = −pad`` and its mode)."""
        taps = (first + np.arange(n_out) * step)[:, None]
        n = self.n
        if mode == "reflect":
            reads = np.where(taps < 0, -taps, np.where(taps >= n, 2 * (n - 1) - taps, taps))
        elif mode == "edge":
            reads = np.clip(taps, 0, n - 1)
        elif mode == "wrap":
            reads = taps % n
        else:
            reads = np.where((taps >= 0) & (taps < n), taps, -1)
        return self.gather(taps, reads, self.j * step)

    def union(self, other: AxisWindows) -> AxisWindows:
        """Windows of a join: the span of both (numpy broadcasting handles a length-1 axis)."""
        j = self.j if self.n >= other.n else other.j
        return AxisWindows(
            j,
            np.minimum(self.lo, other.lo),
            np.maximum(self.hi, other.hi),
            np.minimum(self.seen_lo, other.seen_lo),
            np.maximum(self.seen_hi, other.seen_hi),
        )

    def field(self) -> tuple[int, Number, Number]:
        """``(r, j, o)``: the tightest linear cover of the unclipped windows (exactly §3 where that is linear)."""
        return tight_cover(self.lo, self.hi, self.j)

    def seen(self) -> np.ndarray:
        """``(n, 2)`` half-open spans of influencing pixels; ``(0, 0)`` for an index that reads none."""
        empty = self.seen_lo > self.seen_hi
        return np.stack([np.where(empty, 0, self.seen_lo), np.where(empty, 0, self.seen_hi + 1)], axis=1)

    def _extended(self, values: np.ndarray, taps: np.ndarray) -> np.ndarray:
        """``values`` at ``taps``, continued past both ends as the image would go on.

        With ``j = p/q``, ``q`` indices further on the window moves by exactly ``p`` pixels, so a
        tap beyond an end repeats the pattern of the nearest in-range period (for ``q = 1``: the
        straight line of slope ``j``).
        """
        n, p, q = self.n, self.j.numerator, self.j.denominator
        back = np.maximum(-taps + q - 1, 0) // q  # periods to step forward from a tap before 0
        ahead = np.maximum(taps - (n - 1) + q - 1, 0) // q  # periods to step back from one past the end
        inside = values[np.clip(taps + back * q - ahead * q, 0, n - 1)]
        return inside - back * p + ahead * p


def tight_cover(lo: np.ndarray, hi: np.ndarray, j: Fraction) -> tuple[int, Number, Number]:
    """Smallest ``(r, j, o)`` with ``floor(i·j + o) ≤ lo[i]`` and ``floor(i·j + o) + r − 1 ≥ hi[i]``."""
    p, q = j.numerator, j.denominator
    i = np.arange(len(lo), dtype=np.int64)
    big_o = int((q * lo - p * i).min())
    r = int((hi - (p * i + big_o) // q).max()) + 1
    return r, as_number(j), as_number(Fraction(big_o, q))


@dataclass(frozen=True)
class Local:
    """A tensor whose positions see bounded windows; ``axes`` are its tensor axes of image y and x."""

    axes: tuple[int, int]
    y: AxisWindows
    x: AxisWindows

    def with_axes(self, axes: tuple[int, int]) -> Local:
        return Local(axes, self.y, self.x)

    def map_axes(self, fn) -> Local:
        """Apply ``fn(tensor_axis, windows)`` to the windows of image y and of image x."""
        return Local(self.axes, fn(self.axes[0], self.y), fn(self.axes[1], self.x))


@dataclass(frozen=True)
class Global:
    """A tensor that depends on the whole image. ``pooled``: only through global pooling (a gate)."""

    pooled: bool


State = Union[Local, Global, None]  # None: does not depend on the input image (weights, shapes)
STRONG = Global(pooled=False)
POOLED = Global(pooled=True)


@dataclass(frozen=True)
class GraphTrace:
    """Every tensor's state after one walk of the graph, for the analytic RF and the probe."""

    states: dict[str, State]
    summaries: tuple[str, ...]  # outputs of global poolings of local tensors (SE squeezes)
    input_hw: tuple[int, int]

    def state(self, name: str) -> State:
        if name not in self.states:
            raise LayerError(f"Tensor {name!r} is not in the model; list the layers with `onnx-nfi layers`.")
        return self.states[name]

    def spatial_axes(self, name: str) -> tuple[int, int] | None:
        """Tensor axes holding image y and x, or None for a global tensor."""
        state = self.state(name)
        return state.axes if isinstance(state, Local) else None

    def windows(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Exact clipped windows per axis (``(n, 2)`` half-open, ``(0, 0)`` if none): the pixels
        that really influence each index; a global tensor has one index seeing the whole image."""
        state = self.state(name)
        if isinstance(state, Local):
            return state.y.seen(), state.x.seen()
        h, w = self.input_hw
        return np.array([[0, h]]), np.array([[0, w]])

    def out_hw(self, name: str) -> tuple[int, int]:
        state = self.state(name)
        return (state.y.n, state.x.n) if isinstance(state, Local) else (1, 1)

    def receptive_field(self, name: str) -> ReceptiveField:
        state = self.state(name)
        if state is None:
            raise LayerError(f"Tensor {name!r} does not depend on the input image; it has no receptive field.")
        if isinstance(state, Global):
            return global_field(self.input_hw)
        (ry, jy, oy), (rx, jx, ox) = state.y.field(), state.x.field()
        return ReceptiveField(size=(ry, rx), stride=(jy, jx), offset=(oy, ox))


def as_number(value: Fraction) -> Number:
    """A Fraction as an int when it is one (strides and offsets print as plain numbers)."""
    return int(value) if value.denominator == 1 else value
