"""Fitting a receptive field ``(r, j, o)`` to measured windows, and comparing two sets of windows
exactly: how the tests check the analytic walk (rf_walk.py) against the probe (rf_probe.py)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from onnx_nfi.graph.receptive_field import ReceptiveField, global_field
from onnx_nfi.graph.rf_probe import Windows

_MAX_DENOMINATOR = 8  # fractional jumps the fit considers (Resize ×2…×8 below the input's resolution)


def fit_receptive_field(windows: Windows, input_hw: tuple[int, int]) -> ReceptiveField:
    """The ``(r, j, o)`` per axis whose clipped windows reproduce ``windows`` (tightest cover if none does)."""
    if len(windows[0]) == 1 and len(windows[1]) == 1 and _whole(windows, input_hw):
        return global_field(input_hw)
    (ry, jy, oy), (rx, jx, ox) = (_fit_axis(w, extent) for w, extent in zip(windows, input_hw))
    return ReceptiveField(size=(ry, rx), stride=(jy, jx), offset=(oy, ox))


def compare_windows(analytic: Windows, measured: Windows) -> list[str]:
    """Differences of exact per-index windows, e.g. ``GraphTrace.windows`` against ``measure_windows``."""
    problems = []
    for axis, a, m in zip("yx", analytic, measured):
        for i in np.flatnonzero((a != m).any(axis=1)):
            problems.append(f"{axis}[{i}]: analytic [{a[i, 0]}, {a[i, 1]}) vs measured [{m[i, 0]}, {m[i, 1]})")
    return problems


def _fit_axis(windows: np.ndarray, extent: int) -> tuple[int, int | Fraction, int | Fraction]:
    """Tightest linear cover of one axis' measured windows.

    Every candidate ``j`` gives a cover (offset and size from the starts and ends the image border
    did not clip); the best covers the fewest pixels outside the measured windows, then has the
    smallest ``r``, then the simplest ``j``. Pixels a layer never reads at the border only shrink
    windows, so they do not move the cover away from §3's field.
    """
    n = len(windows)
    i = np.arange(n, dtype=np.int64)
    hit = windows[:, 1] > windows[:, 0]
    start, end = windows[:, 0].astype(np.int64), windows[:, 1].astype(np.int64) - 1
    free_start, free_end = hit & (start > 0), hit & (end < extent - 1)
    estimate = _slope(i, start, free_start) or _slope(i, end, free_end) or Fraction(extent, n)
    best = None
    for q in range(1, _MAX_DENOMINATOR + 1):
        for p in range(max(0, int((estimate - 1) * q)), int((estimate + 1) * q) + 2):
            # offset O / q: the largest with i·j + o at or before every unclipped start; else all starts clip
            big_o = int((q * start[free_start] - p * i[free_start]).min()) if free_start.any() else int(-(p * i).max())
            starts = (p * i + big_o) // q
            ends_at = free_end if free_end.any() else hit
            ends = end[ends_at] if free_end.any() else np.full(int(hit.sum()), extent - 1)
            r = max(int((ends - starts[ends_at]).max()) + 1, 1) if ends_at.any() else 1
            covered = np.clip(starts + r, 0, extent) - np.clip(starts, 0, extent)
            excess = int(covered.sum() - (windows[:, 1] - windows[:, 0]).sum())
            key = (excess, r, q, abs(Fraction(p, q) - estimate))
            if best is None or key < best[0]:
                best = (key, r, Fraction(p, q), Fraction(big_o, q))
    _, r, j, o = best
    return r, _num(j), _num(o)


def _slope(i: np.ndarray, values: np.ndarray, mask: np.ndarray) -> Fraction | None:
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return None
    a, b = idx[0], idx[-1]
    return Fraction(int(values[b] - values[a]), int(b - a))


def _whole(windows: Windows, input_hw: tuple[int, int]) -> bool:
    return all(tuple(w[0]) == (0, extent) for w, extent in zip(windows, input_hw))


def _num(value: Fraction) -> int | Fraction:
    return int(value) if value.denominator == 1 else value
