"""The brute-force reference of the scan, shared by the tests that compare against it."""

from __future__ import annotations

import numpy as np
import onnx

#: Activations after which a layer is ranked and located by its pre-activation (ALGORITHMS.md §2),
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
    then by image index (ALGORITHMS.md §2).
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
