"""The brute-force reference of the scan, shared by the tests that compare against it."""

from __future__ import annotations

import numpy as np


def reference_topn(maps: list[np.ndarray], top_n: int) -> dict[str, np.ndarray]:
    """From full maps ``[C, H, W]`` of each image in order: numpy max, first row-major argmax, stable top-N.

    Ties in the top-N go to the lower image index (``argsort(kind="stable")``), as docs/method.md §2 says.
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


def reference_inputs(model_path, images_dir) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``images_dir`` as the model's sidecar preprocessing describes them, decoded and
    normalised here with OpenCV and numpy alone: (RGB uint8 ``[I, H, W, 3]``, input tensor).

    Follows the preprocessing file format (docs in the README): shorter side scaled to ``resize.size``
    (bilinear), centre crop, ``(pixel · pixel_scale − mean) / std`` in RGB order, NCHW. Files are
    taken in sorted path order, the order that gives image ids.
    """
    import json
    from pathlib import Path

    import cv2

    spec = json.loads(Path(model_path).with_suffix(".json").read_text())
    assert spec["resize"]["mode"] == "shorter_side" and spec["crop"]["mode"] == "center" and spec["layout"] == "NCHW"
    size, (ch, cw) = spec["resize"]["size"], (spec["crop"]["height"], spec["crop"]["width"])
    rgb = []
    for path in sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        new = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
        if new != (h, w):
            bgr = cv2.resize(bgr, (new[1], new[0]), interpolation=cv2.INTER_LINEAR)
        top, left = (bgr.shape[0] - ch) // 2, (bgr.shape[1] - cw) // 2
        rgb.append(bgr[top : top + ch, left : left + cw, ::-1])
    images = np.stack(rgb)
    x = (images.astype(np.float32) * np.float32(spec["pixel_scale"]) - np.float32(spec["mean"])) / np.float32(spec["std"])
    return images, np.ascontiguousarray(x.transpose(0, 3, 1, 2))
