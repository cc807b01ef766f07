"""Colour selectivity index and grey conversion (docs/method.md §5).

Windows are ``(y0, x0, y1, x1)`` in input pixels with the end **exclusive** (numpy slice
convention: the window holds ``y1 - y0`` rows), and may extend beyond the image; they are clipped.
"""

from __future__ import annotations

import numpy as np

#: Rec. 601 luma weights (R, G, B). They sum to 1, so a grey image is a fixed point of ``to_grey``.
LUMA = (0.299, 0.587, 0.114)

Window = tuple[int, int, int, int]


def response_ratio(activations: np.ndarray, transformed: np.ndarray) -> np.ndarray:
    """``S = Σ a'_j / Σ a_j`` over the images with ``a_j > 0``, per neuron; NaN for dead neurons.

    The shared core of the colour, orientation, symmetry and shape indexes. Images with
    ``a_j <= 0`` are left out on both sides, as the indexes are defined over the images that
    actually excite the neuron. ``transformed`` may have extra axes between the unit and image
    axes (``[U, ..., N]``, e.g. one per angle); the result then has shape ``[U, ...]``.
    """
    a = np.asarray(activations, dtype=np.float64)
    t = np.asarray(transformed, dtype=np.float64)
    if a.ndim != 2 or t.shape[0] != a.shape[0] or t.shape[-1] != a.shape[1]:
        raise ValueError(f"activations {a.shape} must be [U, N] and transformed {t.shape} [U, ..., N]")
    positive = a > 0
    denominator = np.where(positive, a, 0.0).sum(axis=1)
    extra_axes = (slice(None),) + (None,) * (t.ndim - 2) + (slice(None),)
    numerator = np.where(positive[extra_axes], t, 0.0).sum(axis=-1)
    shape = (a.shape[0],) + (1,) * (t.ndim - 2)
    denominator = denominator.reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def color_selectivity(activations: np.ndarray, grey_activations: np.ndarray) -> np.ndarray:
    """``CSI_color = 1 − Σ a'_j / Σ a_j`` per neuron (``[U, N]`` in, ``[U]`` out); NaN if dead.

    Not clipped: a negative value means the grey images excite the neuron more, which is
    information worth keeping (docs/method.md §5).
    """
    return 1.0 - response_ratio(activations, grey_activations)


def to_grey(images: np.ndarray) -> np.ndarray:
    """RGB images ``[..., 3]`` (uint8 or float, 0-255) -> float32 luma copied to 3 channels.

    The luma is kept as float, not rounded to uint8: rounding would add up to half a grey level
    of change that has nothing to do with colour, and bias ``CSI_color`` of neurons that are
    sensitive to small intensity differences.
    """
    rgb = np.asarray(images)
    if rgb.shape[-1] != 3:
        raise ValueError(f"images must be RGB [..., 3], got shape {rgb.shape}")
    luma = rgb.astype(np.float32) @ np.asarray(LUMA, dtype=np.float32)
    return np.repeat(luma[..., None], 3, axis=-1)


def clip_window(window: Window, height: int, width: int) -> Window:
    """The part of a window that lies inside an image of ``height x width`` (may be empty)."""
    y0, x0, y1, x1 = (int(v) for v in window)
    y0, x0 = min(max(y0, 0), height), min(max(x0, 0), width)
    return y0, x0, max(min(y1, height), y0), max(min(x1, width), x0)


def grey_region(image: np.ndarray, window: Window) -> np.ndarray:
    """A float32 copy of an RGB image ``[H, W, 3]`` with only ``window`` (clipped) turned grey.

    This is the paper's form of the colour test; ``to_grey`` on the whole image gives the same
    activation at the window's output position when the receptive field is exact (§5).
    """
    out = np.array(image, dtype=np.float32)
    y0, x0, y1, x1 = clip_window(window, out.shape[0], out.shape[1])
    out[y0:y1, x0:x1] = to_grey(out[y0:y1, x0:x1])
    return out
