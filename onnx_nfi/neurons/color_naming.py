"""The 11 basic colour terms of every pixel: the parametric colour-naming model of Benavente,
Vanrell & Baldrich (JOSA A 25(10), 2008), with its fitted parameters (``color_naming_tse.json``
beside this file; citation in ``COLOR_NAMING_NOTICE.md``).

A neuron's colour names (``neurons.color_names``) weigh these memberships by its activation map;
this module only names pixels. The formulas are in docs/method.md, "Colour names".
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

#: The terms in the model's order: the last axis of ``color_memberships``.
COLOR_TERMS = ("red", "orange", "brown", "yellow", "green", "blue", "purple", "pink", "black", "grey", "white")
#: How many of the terms are chromatic (the first ones); the rest split the achromatic share.
CHROMATIC = 8
#: The terms a neuron seeing no colour ends up with.
ACHROMATIC_TERMS = COLOR_TERMS[CHROMATIC:]

_PARAMETERS = Path(__file__).with_name("color_naming_tse.json")
#: sRGB (D65) -> XYZ, and the white point the Lab conversion divides by.
_RGB_TO_XYZ = np.array([[0.412424, 0.357579, 0.180464], [0.212656, 0.715158, 0.0721856], [0.0193324, 0.119193, 0.950444]])
_WHITE = np.array([0.9505, 1.0, 1.0891])
_EPS = 0.008856


@lru_cache(maxsize=1)
def parameters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chromatic ``[8, 10, levels]``, achromatic sigmoids ``[4, 2]``, lightness thresholds), read once."""
    data = json.loads(_PARAMETERS.read_text())
    return np.asarray(data["chromatic"], np.float64), np.asarray(data["achromatic_sigmoids"], np.float64), \
        np.asarray(data["lightness_thresholds"], np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or 0-255 float) sRGB ``[..., 3]`` -> CIELab ``[..., 3]`` (float64), white (0.9505, 1, 1.0891)."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _EPS, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    y = t[..., 1]
    lightness = np.where(y > _EPS, 116.0 * np.cbrt(y) - 16.0, 903.3 * y)
    return np.stack([lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def _chromatic(ab: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Memberships ``[P, 8]`` of (a, b) points ``[P, 2]`` to the chromatic terms with parameters ``p``
    ``[8, 10]`` of one lightness level; 0 for a term whose ``beta_e`` is 0 (absent at that level)."""
    tx, ty, ax, ay, bx, by, be, ex, ey, angle = p.T
    da, db = ab[:, :1] - tx, ab[:, 1:] - ty
    r1 = da * np.cos(ay) + db * np.sin(ay)
    r2 = -da * np.sin(ax) + db * np.cos(ax)
    e1 = da * np.cos(angle) + db * np.sin(angle)
    e2 = -da * np.sin(angle) + db * np.cos(angle)
    ex, ey = np.where(ex == 0, 1.0, ex), np.where(ey == 0, 1.0, ey)
    mu = _sigmoid(by * r1) * _sigmoid(bx * r2) * _sigmoid(be * ((e1 / ex) ** 2 + (e2 / ey) ** 2 - 1.0))
    return np.where(be == 0, 0.0, mu)


def color_memberships(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB ``[..., 3]`` -> float64 ``[..., 11]`` memberships to ``COLOR_TERMS`` summing to 1.

    Each chromatic term is a product of two oriented sigmoids and an elliptic one in the (a, b)
    plane, with parameters of the pixel's lightness level; what the eight leave is split into
    black, grey and white by sigmoids of lightness.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"colours must be RGB [..., 3], got shape {rgb.shape}")
    chromatic, achromatic, thresholds = parameters()
    lab = srgb_to_lab(rgb).reshape(-1, 3)
    lightness = lab[:, 0]
    level = np.clip(np.searchsorted(thresholds, lightness, side="left") - 1, 0, chromatic.shape[2] - 1)
    mu = np.zeros((lab.shape[0], CHROMATIC))
    for lv in np.unique(level):  # one set of parameters per lightness level: no per-pixel trigonometry
        at = level == lv
        mu[at] = _chromatic(lab[at, 1:], chromatic[:, :, lv])
    rest = np.maximum(0.0, 1.0 - mu.sum(axis=1))

    def s(row: int) -> np.ndarray:
        return _sigmoid(achromatic[row, 1] * (lightness - achromatic[row, 0]))

    out = np.concatenate([mu, np.stack([rest * s(0), rest * s(1) * s(2), rest * s(3)], axis=1)], axis=1)
    out /= out.sum(axis=1, keepdims=True)
    return out.reshape(*rgb.shape[:-1], len(COLOR_TERMS))
