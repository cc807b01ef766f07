"""The brute-force reference of the scan, shared by the tests that compare against it."""

from __future__ import annotations

import numpy as np


def reference_topn(maps: list[np.ndarray], top_n: int) -> dict[str, np.ndarray]:
    """From full maps ``[C, H, W]`` of each image in order: numpy max, first row-major argmax, stable top-N.

    Ties in the top-N go to the lower image index (``argsort(kind="stable")``), as ALGORITHMS.md §2 says.
    """
    full = np.stack(maps)  # [I, C, H, W]
    n_img, c, h, w = full.shape
    flat = full.reshape(n_img, c, h * w)
    score = flat.max(axis=2)  # [I, C]
    loc = flat.argmax(axis=2)  # numpy: first occurrence
    order = np.argsort(-score, axis=0, kind="stable")[:top_n]
    return {
        "ids": order.T,
        "scores": np.take_along_axis(score, order, 0).T,
        "ys": (np.take_along_axis(loc, order, 0) // w).T,
        "xs": (np.take_along_axis(loc, order, 0) % w).T,
        "mean": score.mean(axis=0),
        "std": score.std(axis=0),
        "active": (score > 0).mean(axis=0),
    }
