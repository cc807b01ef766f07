"""Export timm architectures (random weights) with both PyTorch exporters and check how onnx-nfi reads them.

Needs torch and timm (not dependencies of onnx-nfi): ``pip install torch timm onnxscript`` in a separate
environment with onnx-nfi importable, then ``python models/try_exporters.py [ARCH ...]``. Per architecture
and exporter it prints one markdown row: layers found, how many are read after an activation and in which
forms, the warning about activations left out, and the empirical receptive-field check
(``onnx-nfi layers --verify-rf``). README.md, "Models tried", holds the table of the last run.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import timm
import torch

from onnx_nfi import api

ARCHS = ("resnet18", "convnext_atto", "mixnet_s", "tf_mixnet_s", "mobilenetv3_small_100", "efficientnet_b0",
         "tf_efficientnet_lite0")
SIZE = 128
#: TorchScript exports at an older opset, where HardSwish (14) and Gelu (20) are not ops yet.
OLD_OPSET = {"mobilenetv3_small_100": 13, "convnext_atto": 13}


def export(arch: str, dynamo: bool, path: Path, opset: int = 17) -> None:
    """The model at ``SIZE``×``SIZE`` with a dynamic batch, by the TorchScript (``opset``) or dynamo (18) exporter."""
    model = timm.create_model(arch, pretrained=False).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    if dynamo:
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, input_names=["input"],
                          dynamic_shapes={"x": {0: torch.export.Dim("N")}})
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          dynamic_axes={"input": {0: "N"}})


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_NOT_ACTIVATIONS = {"Conv", "BatchNormalization", "InstanceNormalization", "Add", "Sub", "Mul", "Div", "Slice", "Concat"}


def _activation(chain: tuple[str, ...]) -> str | None:
    """The activation a layer is read after (``Sigmoid>Mul`` for a gate), or None."""
    ops = [op for op in chain if op not in _NOT_ACTIVATIONS or op == "Mul"]
    for k, op in enumerate(ops):
        if op == "Mul" and k and ops[k - 1] in ("Sigmoid", "HardSigmoid"):
            return f"{ops[k - 1]}>Mul"
    acts = [op for op in ops if op != "Mul"]
    return acts[-1] if acts else None


def row(arch: str, dynamo: bool, opset: int = 17) -> str:
    """One markdown row for ``arch`` by one exporter."""
    exporter = "dynamo (opset 18)" if dynamo else f"TorchScript (opset {opset})"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.onnx"
        try:
            export(arch, dynamo, path, opset)
        except Exception as exc:  # an export failure is a fact about the exporter, not about onnx-nfi
            return f"| {arch} | {exporter} | export failed: {type(exc).__name__} | | | |"
        handler = _Warnings()
        logging.getLogger("onnx_nfi").addHandler(handler)
        try:
            infos = api.layers(path)
            verified = api.verify_receptive_fields(path)
        except Exception as exc:
            return f"| {arch} | {exporter} | {type(exc).__name__}: {exc} | | | |"
        finally:
            logging.getLogger("onnx_nfi").removeHandler(handler)
    forms = Counter(form for form in (_activation(i.layer.op_chain) for i in infos) if form)
    after = sum(forms.values())
    left = next((m.split(": ", 1)[1].split(" (docs")[0] for m in handler.messages if "do not include" in m), "none")
    rf = "all agree" if not verified.mismatches else f"{len(verified.mismatches)} differ"
    shown = ", ".join(f"{k} {v}" for k, v in forms.most_common())
    return f"| {arch} | {exporter} | {len(infos)} | {after} ({shown}) | {left} | {rf} |"


def main(archs: list[str]) -> None:
    print("| architecture | exporter | layers | read after an activation (last op) | activations left out | RF probe |")
    print("|---|---|---|---|---|---|")
    for arch in archs:
        for dynamo in (False, True):
            print(row(arch, dynamo), flush=True)
        if arch in OLD_OPSET:
            print(row(arch, False, OLD_OPSET[arch]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(ARCHS))
