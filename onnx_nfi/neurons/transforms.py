"""Region transforms and the orientation, symmetry and shape indexes (docs/method.md §7).

Unlike the colour test, these indexes change only the receptive-field window of each top image:
rotating or shuffling the whole image would also move what the neuron sees *around* its window
in layers whose window is clipped by the image border. Every transform therefore returns a
float32 copy of an RGB image ``[H, W, 3]`` in which only ``window`` (clipped to the image;
``(y0, x0, y1, x1)``, end exclusive, as in ``color.py``) differs.

**Decision** on what fills the window: the transforms use only the window's own pixels. Where a
rotation or a diagonal mirror of a non-square window maps a window pixel onto a source point
outside the window, the value is taken from the window mirrored at its edge
(``cv2.BORDER_REFLECT_101``), never from the surrounding image, so the transformed content is
exactly "the region, transformed" and never a blank that would itself change the response.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from onnx_nfi.neurons.color import Window, clip_window, response_ratio

#: Rotation angles of the orientation index, degrees counter-clockwise (15° steps, 0° left out).
ANGLES: tuple[int, ...] = tuple(range(15, 360, 15))
#: Mirror axes of the symmetry index, degrees counter-clockwise from the horizontal.
AXES: tuple[int, ...] = (0, 45, 90, 135)

_WARP_FLAGS = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def rotate_region(image: np.ndarray, window: Window, angle_deg: float) -> np.ndarray:
    """Rotate the window's content by ``angle_deg`` (counter-clockwise on screen) about its centre.

    The centre is that of the *unclipped* window, i.e. the neuron's receptive-field centre, so a
    window cut by the image border still turns about the point the neuron is centred on.
    Bilinear interpolation; rotations that map the pixel grid onto itself (0°, 360°, and 90°
    steps of a square window) are exact.
    """
    theta = math.radians(angle_deg)
    # Snap the 1e-16 residues of cos/sin at multiples of 90° so those rotations stay exact.
    cos, sin = round(math.cos(theta), 12), round(math.sin(theta), 12)
    # dst -> src map of a counter-clockwise rotation in y-down pixel coordinates.
    return _warp_region(image, window, np.array([[cos, -sin], [sin, cos]]))


def mirror_region(image: np.ndarray, window: Window, axis_deg: int) -> np.ndarray:
    """Mirror the window's content about a line through its centre at ``axis_deg`` (one of ``AXES``).

    0° is the horizontal axis (top and bottom swap), 90° the vertical axis (left and right
    swap), 45° the diagonal running up and to the right on screen, 135° the other diagonal.
    The line passes through the unclipped window's centre, as in ``rotate_region``; mirroring
    twice restores a window that lies inside the image (for diagonals: a square one) exactly.
    """
    if axis_deg not in AXES:
        raise ValueError(f"mirror axis must be one of {AXES}, got {axis_deg}")
    phi = math.radians(2 * axis_deg)
    # Reflection about a line at angle axis_deg on screen (y axis pointing down); it is its own inverse.
    reflection = np.array([[math.cos(phi), -math.sin(phi)], [-math.sin(phi), -math.cos(phi)]])
    return _warp_region(image, window, np.round(reflection, 12))


def shuffle_region(image: np.ndarray, window: Window, rng: np.random.Generator) -> np.ndarray:
    """Permute the window's pixels (whole RGB triplets) at random, destroying shape, keeping colour."""
    out = np.array(image, dtype=np.float32)
    y0, x0, y1, x1 = clip_window(window, out.shape[0], out.shape[1])
    region = out[y0:y1, x0:x1].reshape(-1, out.shape[2])
    out[y0:y1, x0:x1] = region[rng.permutation(region.shape[0])].reshape(y1 - y0, x1 - x0, -1)
    return out


def orientation_index(
    activations: np.ndarray, rotated_activations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per angle ``1 − S_θ`` clipped to [0, 1] (``[U, A]``) and its mean over angles (``[U]``).

    ``rotated_activations[u, k, j]`` is neuron ``u`` read at ``p_j`` on top image ``j`` with
    its window rotated by ``ANGLES[k]``. NaN for dead neurons.
    """
    per_angle = np.clip(1.0 - response_ratio(activations, rotated_activations), 0.0, 1.0)
    return per_angle, per_angle.mean(axis=1)


def symmetry_index(
    activations: np.ndarray, mirrored_activations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per axis ``S_axis`` clipped to [0, 1] (``[U, 4]``, high = survives mirroring) and the mean."""
    per_axis = np.clip(response_ratio(activations, mirrored_activations), 0.0, 1.0)
    return per_axis, per_axis.mean(axis=1)


def shape_index(activations: np.ndarray, shuffled_activations: np.ndarray) -> np.ndarray:
    """``1 − S`` per neuron (``[U, N]`` in, ``[U]`` out), not clipped; NaN for dead neurons."""
    return 1.0 - response_ratio(activations, shuffled_activations)


def _warp_region(image: np.ndarray, window: Window, linear: np.ndarray) -> np.ndarray:
    """Resample the clipped window with the dst -> src map ``src = c + linear @ (dst − c)``.

    ``c`` is the unclipped window's centre in pixel-centre coordinates. Only the window's own
    pixels are resampled (see the module docstring for the border rule).
    """
    out = np.array(image, dtype=np.float32)
    y0, x0, y1, x1 = clip_window(window, out.shape[0], out.shape[1])
    if y1 <= y0 or x1 <= x0:
        return out
    wy0, wx0, wy1, wx1 = window
    # Centre relative to the clipped crop's origin.
    cy = (wy0 + wy1 - 1) / 2.0 - y0
    cx = (wx0 + wx1 - 1) / 2.0 - x0
    centre = np.array([cx, cy])
    matrix = np.hstack([linear, (centre - linear @ centre)[:, None]])
    crop = np.ascontiguousarray(out[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = cv2.warpAffine(
        crop, matrix, (x1 - x0, y1 - y0), flags=_WARP_FLAGS, borderMode=cv2.BORDER_REFLECT_101
    )
    return out
