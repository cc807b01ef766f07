"""Train and export the planted-selectivity model: models/planted_selectivity.{onnx,json}.

A small CNN whose selectivities are known by construction, so the selectivity indexes of
onnx-nfi can be checked end to end on a real trained network (see models/PLANTED.md):

* conv1 channel 0 is a frozen luminance-only edge filter (a Sobel-x kernel times the luma
  weights). With a normalisation whose mean and std are equal across channels, its input is
  a function of luma only, so its response to an image and to that image's grey version are
  equal: its CSI_color must be 0.
* The data (tests/planted_data.py) has three classes that differ only in colour (equal luma)
  and three that differ only in shape, so the network must grow colour-selective units to
  separate the first group and class-selective units overall.

Run with a torch virtualenv (torch is never a dependency of onnx_nfi itself):
    /work/torchvenv2/bin/python models/train_planted.py
Deterministic (fixed seeds, one thread; two runs give byte-identical ONNX). About 20 s on two CPU cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from planted_data import CLASSES, COLOR_CLASSES, SHAPE_CLASSES, SIZE, make_dataset  # noqa: E402

SEED = 0
LUMA = (0.299, 0.587, 0.114)
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
MEAN = 127.5
STD = 127.5
EPOCHS = 6
BATCH = 64


class PlantedNet(nn.Module):
    """Four 3x3 conv + ReLU layers (16, 32, 64, 64 channels), max-pools, GAP, linear head."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        widths = (3, 16, 32, 64, 64)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(widths, widths[1:]))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if k < len(self.convs) - 1:
                x = self.pool(x)
        return self.head(x.mean(dim=(2, 3)))


def plant_luminance_edge(conv: nn.Conv2d) -> None:
    """Set and freeze channel 0 of ``conv``: Sobel-x ⊗ luma weights, zero bias.

    Freezing one channel of a tensor: gradient hooks zero its slice, and the optimiser has no
    weight decay, so Adam's moments for that slice stay 0 and its update is exactly 0.
    """
    planted = torch.tensor(SOBEL_X)[None, :, :] * torch.tensor(LUMA)[:, None, None]
    with torch.no_grad():
        conv.weight[0] = planted
        conv.bias[0] = 0.0

    def zero_first(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[0] = 0
        return grad

    conv.weight.register_hook(zero_first)
    conv.bias.register_hook(zero_first)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` -> NCHW float, ``(pixel − 127.5) / 127.5`` on every channel."""
    x = (images.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def train() -> tuple[PlantedNet, float]:
    """Train on 6 x 1000 seeded images; return the model and its held-out accuracy (6 x 200)."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    train_images, train_labels = make_dataset(1000, seed=SEED)
    test_images, test_labels = make_dataset(200, seed=SEED + 1)
    x, y = to_input(train_images), torch.from_numpy(train_labels)

    model = PlantedNet(len(CLASSES))
    plant_luminance_edge(model.convs[0])
    planted = model.convs[0].weight[0].detach().clone()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}: loss {total / len(y):.4f}")

    if not torch.equal(model.convs[0].weight[0], planted) or model.convs[0].bias[0].item() != 0.0:
        raise RuntimeError("the planted luminance-edge filter changed during training")
    model.eval()
    with torch.no_grad():
        predicted = model(to_input(test_images)).argmax(dim=1).numpy()
    return model, float(np.mean(predicted == test_labels))


def export(model: PlantedNet, onnx_path: Path) -> None:
    """ONNX opset 17, NCHW float32 input ``input`` with a dynamic batch axis, output ``logits``."""
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        model,
        (dummy,),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def sidecar() -> dict:
    """Preprocessing in the project's JSON format, plus what was planted."""
    return {
        "layout": "NCHW",
        "channel_order": "RGB",
        "input_size": [SIZE, SIZE],
        "resize": {"mode": "none"},
        "crop": {"mode": "none"},
        "pixel_scale": 1.0,
        "mean": [MEAN] * 3,
        "std": [STD] * 3,
        "planted": {
            "luminance_edge_layer_conv_index": 0,
            "luminance_edge_unit": 0,
            "classes": list(CLASSES),
            "color_classes": list(COLOR_CLASSES),
            "shape_classes": list(SHAPE_CLASSES),
            "generator": "tests/planted_data.py",
            "seed": SEED,
        },
    }


def main() -> None:
    started = time.time()
    model, accuracy = train()
    onnx_path = HERE / "planted_selectivity.onnx"
    export(model, onnx_path)
    (HERE / "planted_selectivity.json").write_text(json.dumps(sidecar(), indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.4f}; {onnx_path.name} {onnx_path.stat().st_size} bytes; "
          f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
