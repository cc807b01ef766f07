"""The 11 basic colour terms of every pixel: the parametric colour-naming model of Benavente,
Vanrell & Baldrich (JOSA A 25(10), 2008), with its fitted parameters (``color_naming_tse.json``
beside this file; citation in ``COLOR_NAMING_NOTICE.md``).

A neuron's colour names (``neurons.color_names``) weigh these memberships by its activation map;
this module only names pixels. The formulas are in docs/method.md, "Colour names".
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from onnx_nfi.jit import compiled

#: The terms in the model's order: the last axis of ``color_memberships``.
COLOR_TERMS = ("red", "orange", "brown", "yellow", "green", "blue", "purple", "pink", "black", "grey", "white")
#: How many of the terms are chromatic (the first ones); the rest split the achromatic share.
CHROMATIC = 8
#: The terms a neuron seeing no colour ends up with.
ACHROMATIC_TERMS = COLOR_TERMS[CHROMATIC:]

_PARAMETERS = Path(__file__).with_name("color_naming_tse.json")
#: sRGB (D65) -> XYZ, and the white point the Lab conversion divides by.
_RGB_TO_XYZ = np.array([
    [0.412424, 0.357579, 0.180464], [0.212656, 0.715158, 0.0721856], [0.0193324, 0.119193, 0.950444],
])
_WHITE = np.array([0.9505, 1.0, 1.0891])
_EPS = 0.008856


@lru_cache(maxsize=1)
def parameters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chromatic ``[8, levels, 13]``: per term and lightness level tx, ty, cos/sin alpha_y, cos/sin
    alpha_x, beta_x, beta_y, beta_e, ex, ey (0 read as 1), cos/sin angle_e; achromatic sigmoids
    ``[4, 2]``; lightness thresholds), read once."""
    data = json.loads(_PARAMETERS.read_text())
    tx, ty, ax, ay, bx, by, be, ex, ey, angle = np.asarray(data["chromatic"], np.float64).transpose(1, 0, 2)
    table = np.stack([tx, ty, np.cos(ay), np.sin(ay), np.cos(ax), np.sin(ax), bx, by, be,
                      np.where(ex == 0, 1.0, ex), np.where(ey == 0, 1.0, ey), np.cos(angle), np.sin(angle)], axis=-1)
    return np.ascontiguousarray(table), np.asarray(data["achromatic_sigmoids"], np.float64), \
        np.asarray(data["lightness_thresholds"], np.float64)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or 0-255 float) sRGB ``[..., 3]`` -> CIELab ``[..., 3]`` (float64), white (0.9505, 1, 1.0891)."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _EPS, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    y = t[..., 1]
    lightness = np.where(y > _EPS, 116.0 * np.cbrt(y) - 16.0, 903.3 * y)
    return np.stack([lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def color_memberships(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB ``[..., 3]`` -> float64 ``[..., 11]`` memberships to ``COLOR_TERMS`` summing to 1.

    Each chromatic term is a product of two oriented sigmoids and an elliptic one in the (a, b)
    plane, with parameters of the colour's lightness level; what the eight leave is split into
    black, grey and white by sigmoids of lightness.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"colours must be RGB [..., 3], got shape {rgb.shape}")
    lab = srgb_to_lab(rgb).reshape(-1, 3)
    out = np.empty((lab.shape[0], len(COLOR_TERMS)))
    _name_colours(lab, *parameters(), out)
    return out.reshape(*rgb.shape[:-1], len(COLOR_TERMS))


@compiled()
def _sig(z: float) -> float:
    """1 / (1 + e^-z); e^-z overflows to infinity for very negative z, giving 0 as it should."""
    return 1.0 / (1.0 + math.exp(-z))


@compiled(boundscheck=False)
def _name_colours(
    lab: np.ndarray, table: np.ndarray, achromatic: np.ndarray, thresholds: np.ndarray, out: np.ndarray
) -> None:
    """The model colour by colour (a compiled loop: the parameters change with each colour's lightness
    level, which NumPy could only follow with a gather of every parameter per colour)."""
    for p in range(lab.shape[0]):
        lightness, a, b = lab[p, 0], lab[p, 1], lab[p, 2]
        level = 0
        for k in range(thresholds.shape[0] - 1):
            if thresholds[k] < lightness <= thresholds[k + 1]:
                level = k
        total = 0.0
        for k in range(CHROMATIC):
            t = table[k, level]
            if t[8] == 0.0:
                out[p, k] = 0.0  # no such term at this lightness level
                continue
            da, db = a - t[0], b - t[1]
            r1 = da * t[2] + db * t[3]
            r2 = -da * t[5] + db * t[4]
            e1 = (da * t[11] + db * t[12]) / t[9]
            e2 = (-da * t[12] + db * t[11]) / t[10]
            mu = _sig(t[7] * r1) * _sig(t[6] * r2) * _sig(t[8] * (e1 * e1 + e2 * e2 - 1.0))
            out[p, k] = mu
            total += mu
        rest = max(0.0, 1.0 - total)
        s0 = _sig(achromatic[0, 1] * (lightness - achromatic[0, 0]))
        s1 = _sig(achromatic[1, 1] * (lightness - achromatic[1, 0]))
        s2 = _sig(achromatic[2, 1] * (lightness - achromatic[2, 0]))
        s3 = _sig(achromatic[3, 1] * (lightness - achromatic[3, 0]))
        out[p, CHROMATIC] = rest * s0
        out[p, CHROMATIC + 1] = rest * s1 * s2
        out[p, CHROMATIC + 2] = rest * s3
        norm = total + out[p, CHROMATIC] + out[p, CHROMATIC + 1] + out[p, CHROMATIC + 2]
        for k in range(CHROMATIC + 3):
            out[p, k] /= norm
