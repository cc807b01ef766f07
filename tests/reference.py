"""The brute-force reference of the scan, shared by the tests that compare against it."""

from __future__ import annotations

import numpy as np
import onnx

#: Activations after which a layer is ranked and located by its pre-activation (docs/method.md §2),
#: as far as the test graphs use them; written out here independently of the code under test.
RISING = {"Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "Elu", "Selu", "Gelu", "Softplus", "Tanh"}


def pre_activation_of(model: onnx.ModelProto, tensor: str) -> str | None:
    """The tensor entering the activation that produces ``tensor`` (``x`` of ``x·Sigmoid(x)``), if any."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(tensor)
    if node is None:
        return None
    if node.op_type in RISING:
        return node.input[0]
    if node.op_type == "Mul":
        for x, g in (node.input, reversed(node.input)):
            gate = producer.get(g)
            if gate is not None and gate.op_type in ("Sigmoid", "HardSigmoid") and list(gate.input) == [x]:
                return x
    return None


def reference_topn(maps: list[np.ndarray], top_n: int, pre_maps: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """From full maps ``[C, H, W]`` of each image in order: numpy max, first row-major argmax, top-N.

    Without ``pre_maps``, ties in the top-N go to the lower image index (``argsort(kind="stable")``).
    With them (the activation's input maps), the location is the pre-activation map's first
    row-major argmax and equal scores are ordered by the pre-activation maximum, descending,
    then by image index (docs/method.md §2).
    """
    full = np.stack(maps)  # [I, C, H, W]
    n_img, c, h, w = full.shape
    score = full.reshape(n_img, c, h * w).max(axis=2)  # [I, C]
    located = full if pre_maps is None else np.stack(pre_maps)
    flat = located.reshape(n_img, c, h * w)
    loc = flat.argmax(axis=2)  # numpy: first occurrence
    if pre_maps is None:
        order = np.argsort(-score, axis=0, kind="stable")[:top_n]
    else:
        key = flat.max(axis=2)
        image = np.broadcast_to(np.arange(n_img)[:, None], score.shape)
        order = np.lexsort((image, -key, -score), axis=0)[:top_n]
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
