"""Preprocessing as explicit, stored data.

A run is only reproducible if the exact pixels fed to the network are known, so preprocessing is
a plain record (``Preprocessing``) that is read from JSON, written into the database, and applied
in two steps:

1. ``to_display``: decode result (BGR uint8 from OpenCV) -> resized, cropped RGB uint8 image of the
   network's input size. This is "the image as fed to the network before normalisation" of
   docs/method.md §4: NF crops and grey images are cut from it.
2. ``to_tensor``: a batch of such RGB images (uint8 or float, 0-255) -> the model's input tensor,
   ``x = (pixel * pixel_scale - mean) / std`` per channel in ``channel_order``, in ``layout``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnx_nfi.errors import PreprocessError
from onnx_nfi.names import PRESETS

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "bicubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}
_REQUIRED_KEYS = ("layout", "channel_order", "input_size", "resize", "crop", "pixel_scale", "mean", "std")
#: Keys of ``resize`` and ``crop`` the product honours; any other is refused, never ignored.
_RESIZE_KEYS = frozenset({"mode", "size", "height", "width", "interpolation", "library"})
_CROP_KEYS = frozenset({"mode", "height", "width"})
#: ``resize.library``: OpenCV (default) or Pillow's resampling, for models trained on Pillow-resized images.
_LIBRARIES = ("opencv", "pillow")
#: The import names people type for those libraries, read as the library they name.
_LIBRARY_ALIASES = {"cv2": "opencv", "pil": "pillow"}
#: Top-level keys that name classes: only ``--labels predicted`` uses class names (from a names file).
_CLASS_NAME_KEYS = ("class_names", "classes", "labels")
#: Largest plausible |normalised input|: 255 for the raw preset; mean/std in 0-1 units with pixel_scale 1 give ~1100.
_MAX_PLAUSIBLE_INPUT = 300.0


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the network's input; see the module docstring for the formula."""

    layout: str  # "NCHW" | "NHWC"
    channel_order: str  # "RGB" | "BGR"
    input_size: tuple[int, int]  # (height, width) fed to the network
    resize: dict[str, Any]  # {"mode": "shorter_side", "size": s} | {"mode": "exact", "height", "width"} | {"mode": "none"}
    crop: dict[str, Any]  # {"mode": "center", "height", "width"} | {"mode": "none"}
    pixel_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: str = "float32"
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        """The stored form: the documented keys plus ``dtype``, ``name`` and any extra keys."""
        data = asdict(self)
        extra = data.pop("extra")
        return json.dumps({**extra, **data}, sort_keys=True)

    def warnings(self) -> tuple[str, ...]:
        """What is implausible about this preprocessing (an analysis still runs, but the user should know)."""
        found = []
        scale = np.float64(self.pixel_scale)
        lo = [(0.0 - m) / s for m, s in zip(self.mean, self.std)]
        hi = [(255.0 * scale - m) / s for m, s in zip(self.mean, self.std)]
        extreme = max(abs(v) for v in lo + hi)
        spread = min(abs(h - low) for h, low in zip(hi, lo))
        if extreme > _MAX_PLAUSIBLE_INPUT or spread < 0.05:
            found.append(
                f"preprocessing {self.name} maps pixels 0..255 to {min(lo):.4g}..{max(hi):.4g} "
                f"(pixel_scale {self.pixel_scale:g}, mean {list(self.mean)}, std {list(self.std)}); "
                "networks expect roughly -3..3 or 0..255: are mean/std in the units of pixel·pixel_scale?"
            )
        named = [k for k in _CLASS_NAME_KEYS if k in self.extra]
        if named:
            found.append(
                f"preprocessing key {named[0]!r} is not used; class names come from --labels predicted:NAMES.txt"
            )
        return tuple(found)

    def to_display(self, bgr: np.ndarray) -> np.ndarray:
        """Resize and crop a decoded BGR image to the RGB uint8 image of ``input_size``.

        An image that already has the input size is returned pixel for pixel (no resampling),
        so synthetic test images and pre-cropped datasets are fed exactly.
        """
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        elif bgr.shape[2] == 4:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
        height, width = self.input_size
        if bgr.shape[:2] != (height, width):
            bgr = self._crop(self._resize(bgr))
            if bgr.shape[:2] != (height, width):
                # resize/crop settings that do not land on the input size: force it, as the network needs it
                bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def to_tensor(self, rgb: np.ndarray) -> np.ndarray:
        """Normalise a batch ``[B, H, W, 3]`` of RGB images (0-255, uint8 or float) into the input tensor."""
        x = rgb.astype(np.float32, copy=False)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x * np.float32(self.pixel_scale) - mean) / std
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.dtype(self.dtype))

    def input_frame(self, original_hw: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(scale_y, scale_x, shift_y, shift_x)``: a point of an ``original_hw`` image (pixel-edge
        coordinates) lands at ``point · scale − shift`` in the network's input, through the same
        resize, crop and forced resize as ``to_display``."""
        height, width = self.input_size
        if tuple(original_hw) == (height, width):
            return 1.0, 1.0, 0.0, 0.0
        h, w = self._resized_hw(*original_hw)
        top, left, crop_h, crop_w = self._crop_box(h, w)
        fy, fx = height / crop_h, width / crop_w  # 1 unless the crop misses the input size
        return h / original_hw[0] * fy, w / original_hw[1] * fx, top * fy, left * fx

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size ``resize`` gives an ``h``×``w`` image."""
        mode = self.resize.get("mode", "none")
        if mode == "shorter_side":
            size = int(self.resize["size"])
            scale = size / min(h, w)
            new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
            return (size, new_w) if h <= w else (new_h, size)
        if mode == "exact":
            return int(self.resize["height"]), int(self.resize["width"])
        return h, w

    def _resize(self, img: np.ndarray) -> np.ndarray:
        interp = _INTERPOLATION[self.resize.get("interpolation", "bilinear")]
        h, w = img.shape[:2]
        new_h, new_w = self._resized_hw(h, w)
        if (new_h, new_w) == (h, w):
            return img
        if self.resize.get("library", "opencv") == "pillow":
            return _pillow_resize(img, (new_w, new_h), self.resize.get("interpolation", "bilinear"))
        return cv2.resize(img, (new_w, new_h), interpolation=interp)

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` kept of an ``h``×``w`` image: the centre crop, or all of it
        (no crop, or an image smaller than the crop)."""
        if self.crop.get("mode", "none") != "center":
            return 0, 0, h, w
        ch, cw = int(self.crop["height"]), int(self.crop["width"])
        if h < ch or w < cw:
            return 0, 0, h, w
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _crop(self, img: np.ndarray) -> np.ndarray:
        top, left, ch, cw = self._crop_box(*img.shape[:2])
        return img[top : top + ch, left : left + cw]


def _pillow_resize(img: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Pillow's resampling (antialiased when shrinking, unlike OpenCV's bilinear), as torchvision's
    PIL-based transforms apply it."""
    from PIL import Image

    methods = {"bilinear": Image.BILINEAR, "area": Image.BOX, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
    return np.asarray(Image.fromarray(img).resize(size, methods[interpolation]))


def preset(name: str, input_size: tuple[int, int], layout: str, dtype: str = "float32") -> Preprocessing:
    """A named preset at the model's input size: resize shorter side to 256/224 of it, centre crop."""
    if name not in PRESETS:
        raise PreprocessError(
            f"unknown preprocessing preset {name!r}; use one of {', '.join(PRESETS)} or a JSON file"
        )
    p = PRESETS[name]
    h, w = input_size
    short = round(min(h, w) * 256 / 224)
    # the preset's channel order refers to the normalisation (caffe means are BGR-ordered)
    mean = tuple(p["mean"])
    std = tuple(p["std"])
    return Preprocessing(
        layout=layout,
        channel_order=p["channel_order"],
        input_size=(h, w),
        resize={"mode": "shorter_side", "size": short, "interpolation": "bilinear"},
        crop={"mode": "center", "height": h, "width": w},
        pixel_scale=float(p["pixel_scale"]),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        dtype=dtype,
        name=name,
    )


def from_dict(data: dict[str, Any], source: str, dtype: str = "float32") -> Preprocessing:
    """Validate a preprocessing mapping (the JSON file format) into a ``Preprocessing``."""
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise PreprocessError(
            f"preprocessing {source} is missing key(s) {', '.join(missing)}; "
            f"it needs {', '.join(_REQUIRED_KEYS)}"
        )
    try:
        layout = str(data["layout"]).upper()
        order = str(data["channel_order"]).upper()
        h, w = (int(v) for v in data["input_size"])
        mean = tuple(float(v) for v in data["mean"])
        std = tuple(float(v) for v in data["std"])
        resize, crop = dict(data["resize"]), dict(data["crop"])
        if isinstance(resize.get("library"), str):
            resize["library"] = _LIBRARY_ALIASES.get(resize["library"].lower(), resize["library"].lower())
        pixel_scale = float(data["pixel_scale"])
    except (TypeError, ValueError) as exc:
        raise PreprocessError(f"preprocessing {source} has a malformed value ({exc}); see README 'Preprocessing'") from exc
    problems = []
    if layout not in ("NCHW", "NHWC"):
        problems.append("layout must be NCHW or NHWC")
    if order not in ("RGB", "BGR"):
        problems.append("channel_order must be RGB or BGR")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        problems.append("mean and std need 3 values each, std non-zero")
    if resize.get("mode", "none") not in ("shorter_side", "exact", "none"):
        problems.append("resize.mode must be shorter_side, exact or none")
    if resize.get("mode") == "shorter_side" and "size" not in resize:
        problems.append("resize.size is required with mode shorter_side")
    if resize.get("mode") == "exact" and not {"height", "width"} <= resize.keys():
        problems.append("resize.height and resize.width are required with mode exact")
    if resize.get("interpolation", "bilinear") not in _INTERPOLATION:
        problems.append(f"resize.interpolation must be one of {', '.join(_INTERPOLATION)}")
    if resize.get("library", "opencv") not in _LIBRARIES:
        problems.append(f"resize.library must be one of {', '.join(_LIBRARIES)}")
    unknown = sorted(set(resize) - _RESIZE_KEYS) + sorted(f"crop.{k}" for k in set(crop) - _CROP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (not honoured; remove them)")
    if crop.get("mode", "none") not in ("center", "none"):
        problems.append("crop.mode must be center or none")
    if crop.get("mode") == "center" and not {"height", "width"} <= crop.keys():
        problems.append("crop.height and crop.width are required with mode center")
    if problems:
        raise PreprocessError(f"preprocessing {source}: {'; '.join(problems)}")
    extra = {k: v for k, v in data.items() if k not in _REQUIRED_KEYS and k not in ("dtype", "name")}
    return Preprocessing(
        layout=layout,
        channel_order=order,
        input_size=(h, w),
        resize=resize,
        crop=crop,
        pixel_scale=pixel_scale,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        dtype=str(data.get("dtype", dtype)),
        name=str(data.get("name", Path(source).name)),
        extra=extra,
    )


def load_file(path: str | Path, dtype: str = "float32") -> Preprocessing:
    """Read a preprocessing JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PreprocessError(f"preprocessing file {path} does not exist; pass a .json file or a preset name") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PreprocessError(f"preprocessing file {path} is not valid JSON ({exc}); fix it or pass a preset name") from None
    if not isinstance(data, dict):
        raise PreprocessError(f"preprocessing file {path} must hold a JSON object")
    return from_dict(data, str(path), dtype)


def resolve(
    spec: str | None, model_path: Path, input_size: tuple[int, int], layout: str, dtype: str
) -> Preprocessing:
    """Pick the preprocessing for a model: a preset name, a JSON file, the sidecar, or torchvision.

    The sidecar ``MODEL.json`` beside ``MODEL.onnx`` wins when no spec is given, because the
    exporter knows best how its model was trained.
    """
    if spec:
        if spec in PRESETS:
            return preset(spec, input_size, layout, dtype)
        if spec.endswith(".json") or Path(spec).exists():
            return _checked(load_file(spec, dtype), input_size, layout)
        raise PreprocessError(f"unknown preprocessing {spec!r}; use one of {', '.join(PRESETS)} or a .json file")
    sidecar = model_path.with_suffix(".json")
    if sidecar.exists():
        return _checked(load_file(sidecar, dtype), input_size, layout)
    return preset("torchvision", input_size, layout, dtype)


def _checked(pre: Preprocessing, input_size: tuple[int, int], layout: str) -> Preprocessing:
    if pre.layout != layout:
        raise PreprocessError(f"preprocessing says layout {pre.layout} but the model's input is {layout}; fix 'layout'")
    if any(s > 0 for s in input_size) and tuple(pre.input_size) != tuple(input_size):
        raise PreprocessError(
            f"preprocessing input_size {list(pre.input_size)} differs from the model's {list(input_size)}; fix 'input_size'"
        )
    return pre
