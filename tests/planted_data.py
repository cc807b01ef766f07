"""Synthetic images of the planted-selectivity model (models/train_planted.py), numpy + cv2 only.

Each 32x32 RGB image shows one filled shape on a uniform grey background. Six classes:

* colour classes — ``red_disc``, ``green_disc``, ``blue_disc``: the same disc, differing ONLY in
  colour. The three colours (and the grey of the shape classes) have exactly the same Rec. 601
  luma, 100, in integer arithmetic (``299 R + 587 G + 114 B = 100 000``), and shapes are drawn
  without anti-aliasing, so the grey versions of these images carry no trace of the class.
* shape classes — ``grey_disc``, ``grey_square``, ``grey_cross``: the same grey (100, 100, 100),
  differing ONLY in shape.

Position, size and background level are random but seeded, so a seed fixes every pixel; the
tests reuse this module without torch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = 32
SHAPE_LUMA = 100
#: RGB colours whose luma is exactly SHAPE_LUMA (found by exhaustive integer search).
COLORS = {
    "red": (249, 41, 13),
    "green": (6, 164, 17),
    "blue": (86, 78, 250),
    "grey": (SHAPE_LUMA, SHAPE_LUMA, SHAPE_LUMA),
}
COLOR_CLASSES = ("red_disc", "green_disc", "blue_disc")
SHAPE_CLASSES = ("grey_disc", "grey_square", "grey_cross")
CLASSES = COLOR_CLASSES + SHAPE_CLASSES


def make_image(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One RGB uint8 image ``[size, size, 3]`` of class ``CLASSES[label]``.

    The background level is drawn away from the shape's luma (dark or bright) so that every
    shape has a luminance edge for the planted edge neuron to respond to.
    """
    colour_name, shape = CLASSES[label].split("_")
    background = int(rng.integers(10, 61) if rng.random() < 0.5 else rng.integers(150, 221))
    image = np.full((size, size, 3), background, dtype=np.uint8)
    half = int(rng.integers(size // 6, size // 3 + 1))
    cy, cx = (int(v) for v in rng.integers(half + 1, size - half - 1, size=2))
    colour = COLORS[colour_name]
    if shape == "disc":
        cv2.circle(image, (cx, cy), half, colour, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "square":
        cv2.rectangle(image, (cx - half, cy - half), (cx + half, cy + half), colour, thickness=-1)
    else:  # cross: two bars a third of the size wide
        arm = max(half // 3, 1)
        cv2.rectangle(image, (cx - half, cy - arm), (cx + half, cy + arm), colour, thickness=-1)
        cv2.rectangle(image, (cx - arm, cy - half), (cx + arm, cy + half), colour, thickness=-1)
    return image


def make_dataset(n_per_class: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [n, size, size, 3], labels int64 [n])``, classes interleaved, fully seeded."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(CLASSES), dtype=np.int64), n_per_class)
    images = np.stack([make_image(int(label), rng, size) for label in labels])
    return images, labels


def write_image_folder(root: Path, n_per_class: int, seed: int) -> list[Path]:
    """Write the dataset as lossless PNGs in ImageFolder layout ``root/<class>/<i>.png``."""
    images, labels = make_dataset(n_per_class, seed)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = Path(root) / CLASSES[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image[:, :, ::-1])
        paths.append(path)
    return paths
