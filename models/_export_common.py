"""Shared steps of the three export scripts in this folder (run with a torch virtualenv, never by onnx_nfi).

Every bundled model goes through the same path so that the files are alike: the dynamo exporter at
one pinned opset with a dynamic batch axis, one self-contained file (no external data), Conv outputs
renamed after the PyTorch module that produced them (so a layer's stable name in the database says
where it sits in the network), and a check against PyTorch with onnx.checker and onnxruntime.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 18
MODELS_DIR = Path(__file__).resolve().parent


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """Export ``module`` with a dynamic batch axis as one ONNX file with embedded weights.

    The example batch has 2 images because torch.export specialises a dimension of size 1 to a constant.
    """
    module.eval()
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    model = program.model_proto
    _rename_layer_outputs(model)
    _strip_provenance(model)
    onnx.save_model(model, str(path), save_as_external_data=False)
    stored = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"{path} still refers to external data for {external[:3]}")


def _rename_layer_outputs(model: onnx.ModelProto) -> None:
    """Name each Conv output after its weight's module path, and its activation ``<module>.act``.

    The exporter's names (``getitem_12``, ``hardtanh_7``) carry no meaning; ``_blocks.3._expand_conv``
    does. Graph inputs and outputs keep their names.
    """
    fixed = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    consumers = collections.Counter(name for node in model.graph.node for name in node.input)
    renames: dict[str, str] = {}
    producer_of = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1].endswith(".weight"):
            renames[node.output[0]] = node.input[1][: -len(".weight")]
        elif node.op_type in ("Clip", "Relu") and node.input[0] in renames and consumers[node.input[0]] == 1:
            if producer_of[node.input[0]].op_type == "Conv":
                renames[node.output[0]] = renames[node.input[0]] + ".act"
    renames = {old: new for old, new in renames.items() if old not in fixed}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for info in model.graph.value_info:
        info.name = renames.get(info.name, info.name)


def _strip_provenance(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata (stack traces with local paths, FX nodes).

    It makes the bytes depend on where the script ran, so SHA256SUMS could not be reproduced.
    """
    graph = model.graph
    for item in [*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        del item.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""
    del graph.metadata_props[:]
    del model.metadata_props[:]


def check_against_torch(path: Path, module: torch.nn.Module, batch: np.ndarray, atol: float = 1e-4) -> np.ndarray:
    """Run onnx.checker and onnxruntime on ``batch``; fail if any output differs from PyTorch by more than ``atol``."""
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(batch)).numpy()
    diff = float(np.max(np.abs(got - want)))
    print(f"  onnxruntime vs torch on a batch of {len(batch)}: max |diff| = {diff:.2e} (shape {list(got.shape)})")
    if got.shape != want.shape or diff > atol:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {diff:.2e} > {atol:.0e}")
    return got


def describe(path: Path) -> dict[str, Any]:
    """Print and return what the README and the report state about an exported file."""
    model = onnx.load(str(path))
    ops = collections.Counter(node.op_type for node in model.graph.node)
    info = {
        "file": path.name,
        "bytes": path.stat().st_size,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ops": dict(sorted(ops.items())),
        "conv": ops.get("Conv", 0),
        "input": _shape(model.graph.input[0]),
        "output": _shape(model.graph.output[0]),
    }
    print(f"  {json.dumps(info)}")
    return info


def _shape(value: onnx.ValueInfoProto) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
    return f"{value.name}[{','.join(dims)}]"


def write_sidecar(path: Path, spec: dict[str, Any]) -> None:
    """Write the preprocessing JSON that onnx_nfi reads beside ``MODEL.onnx``."""
    path.write_text(json.dumps(spec, indent=2) + "\n")


def imagenet_samples() -> list[tuple[Path, int]]:
    """The 20 ImageNet validation JPEGs shipped in foolbox's data folder, with the class index from their names.

    Located through the installed distribution's file list, so foolbox itself is never imported.
    """
    found = []
    for entry in importlib.metadata.files("foolbox") or []:
        match = re.search(r"data/imagenet_\d+_(\d+)\.jpg$", str(entry))
        if match:
            found.append((Path(str(entry.locate())), int(match.group(1))))
    if not found:
        raise RuntimeError("foolbox==3.3.4 (installed with --no-deps) is needed for its ImageNet sample JPEGs")
    return sorted(found)


def prepare(image_path: Path, spec: dict[str, Any]) -> np.ndarray:
    """Read one image and apply a sidecar's preprocessing, the way onnx_nfi.data.preprocess does: CHW float32."""
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    resize, crop = spec["resize"], spec["crop"]
    h, w = bgr.shape[:2]
    if resize["mode"] == "shorter_side":
        size = int(resize["size"])
        scale = size / min(h, w)
        new_h, new_w = (size, max(size, round(w * scale))) if h <= w else (max(size, round(h * scale)), size)
    else:
        new_h, new_w = int(resize["height"]), int(resize["width"])
    if resize.get("interpolation", "bilinear") != "bilinear":
        raise ValueError("these export checks only implement bilinear resizing")
    img = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_h, new_w) != (h, w) else bgr
    if crop["mode"] == "center":
        ch, cw = int(crop["height"]), int(crop["width"])
        top, left = (new_h - ch) // 2, (new_w - cw) // 2
        img = img[top : top + ch, left : left + cw]
    rgb = img[:, :, ::-1].astype(np.float32)
    if spec["channel_order"] == "BGR":
        rgb = rgb[:, :, ::-1]
    x = (rgb * np.float32(spec["pixel_scale"]) - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
